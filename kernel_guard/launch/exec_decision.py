"""Where an exec is decided: the supervisor's answer to ``execve``/``execveat`` and
to each new program image's first call.

The rule (DESIGN.md): never *allow* on the strength of a path read from the
kernel's memory.  So:

* **enforce, no allowlist**: every exec is refused (``EPERM``; ``ENOENT`` where
  the path names nothing, as the OS would answer, so that ``execvp`` goes on
  along ``PATH``);
* **enforce, with the kernel's Landlock allowlist**: an exec whose path reads
  as an allowed program is let *continue*; the kernel's own Landlock domain
  then decides on the file it really opens.  Files Landlock does not check
  (memfds on the kernel's internal mount) cannot be executed at all: every
  memfd is created sealed non-executable (:mod:`.memfd`);
* **the image gate**: the ELF loader must be executable for the allowed
  programs to start, so a path changed after our reading could start the
  loader with a program of its choosing; every new image's first call
  (``brk(NULL)``) comes here, and the image runs only if ``/proc/PID/exe``
  (fixed by the kernel at exec) is an allowed program;
* **the record names what ran**: an exec let through is recorded when its
  image reaches the gate, with the image the kernel started; one whose image
  never reaches it (the exec failed, or a program that never asks for its
  break) is recorded after :data:`CONFIRM_WITHIN` seconds, saying so;
* **audit profile**: every exec continues and is recorded (not a boundary).
"""

from __future__ import annotations

import errno
import os
import _signal  # the C module: signal.py makes enums of every constant (its import and enum's: 0.25 MB)
import time
from collections import OrderedDict
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Optional

from .notifications import (AT_EMPTY_PATH, AT_FDCWD, EXEC_SYSCALLS, Notification, TargetMemory, id_valid,
                            respond, signed)

__all__ = ["CONFIRM_WITHIN", "ExecDecider", "caller", "exe_of", "read_exec", "recordable", "target_path"]

_MAX_PATH = 4096
_MAX_ARG = 1024
_MAX_ARGS = 64
#: seconds within which an exec let through should reach the image gate
CONFIRM_WITHIN = 2.0
#: execs let through and not yet confirmed, at most (the oldest is recorded first)
_MAX_PENDING = 1024


def _fd_path(pid: int, fd: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}" if fd != AT_FDCWD else f"/proc/{pid}/cwd")
    except OSError:
        return None


def target_path(pid: int, path: Optional[str]) -> Optional[str]:
    """``path`` as the task sees it: ``/proc/self`` is the task's, not ours."""
    if path and path.startswith(("/proc/self/", "/proc/thread-self/")):
        return f"/proc/{pid}/" + path.split("/", 3)[3]
    return path


def _absolute(pid: int, path: Optional[str], dirfd: int) -> Optional[str]:
    """A path read from the task, made absolute against the folder ``dirfd`` names
    there (or its working folder), as the system call resolves it."""
    if not path or path.startswith("/"):
        return target_path(pid, path)
    base = _fd_path(pid, dirfd)
    return os.path.join(base, path) if base else path


def read_exec(notif: Notification) -> dict[str, Any]:
    """Path, argv and syscall of an exec notification, as far as they can be read."""
    syscall, abi, psize = EXEC_SYSCALLS.get((notif.arch, notif.nr), (f"syscall {notif.nr}", hex(notif.arch), 8))
    info: dict[str, Any] = {"syscall": syscall, "abi": abi, "executable": None, "args": [],
                            "readable": False}
    if syscall not in ("execve", "execveat"):
        return info
    if syscall == "execve":
        dirfd, path_ptr, argv_ptr, flags = AT_FDCWD, notif.args[0], notif.args[1], 0
    else:
        dirfd, path_ptr, argv_ptr = signed(notif.args[0], 4), notif.args[1], notif.args[2]
        flags = notif.args[4]
    try:
        with TargetMemory(notif.pid, psize) as mem:
            raw_path = mem.string(path_ptr, _MAX_PATH)
            argv = [mem.string(p, _MAX_ARG) or b"" for p in mem.pointers(argv_ptr, _MAX_ARGS)]
    except OSError as exc:
        info["unreadable"] = f"reading /proc/{notif.pid}/mem: {exc.strerror}"
        return info
    path = os.fsdecode(raw_path) if raw_path is not None else None
    if syscall == "execveat" and (flags & AT_EMPTY_PATH) and not path:
        path = _fd_path(notif.pid, dirfd)  # fexecve(fd): the program is the open file
        info["by_fd"] = True
    else:
        path = _absolute(notif.pid, path, dirfd)
    info.update(executable=path, args=[os.fsdecode(a) for a in argv], readable=True)
    return info


def recordable(text: Optional[str]) -> Optional[str]:
    """Text read from a process as the record can hold it: bytes that are not UTF-8
    (surrogate-escaped by ``os.fsdecode``) become ``\\xNN``, so the line and the hash
    computed over it agree whatever bytes a cell put in a path or an argument."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _probe_of(info: dict[str, Any]) -> Optional[str]:
    """The library whose probe an exec's command line reads as (joblib's ``lscpu``,
    ``platform``'s ``uname -p`` ...), for the record's label and an ENOENT answer: both
    refuse, so a command line that only claims to be a probe gains nothing."""
    from ..audit.probes import probed_by

    argv = info.get("args") or []
    if not info.get("readable") or not argv:
        return None
    library = probed_by(info.get("executable") or argv[0], argv)
    return library.name if library is not None else None


def caller(pid: int, **fields: Any) -> dict[str, Any]:
    """ECS ``process`` fields of a notifying task, with its parent where /proc shows it."""
    from .procfs import proc_stat

    process: dict[str, Any] = {"pid": pid, **fields}
    stat = proc_stat(pid)
    if len(stat) > 1:
        process["parent"] = {"pid": int(stat[1])}
    return process


def _tgid(pid: int) -> Optional[int]:
    """The process (thread group) a task id belongs to."""
    from .procfs import proc_status

    tgid = proc_status(pid).get("Tgid", "")
    return int(tgid) if tgid.isdigit() else None


def exe_of(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


class _Pending:
    """An exec let through, waiting for its image at the gate."""

    __slots__ = ("info", "pid", "tgid", "before", "since")

    def __init__(self, info: dict[str, Any], pid: int, tgid: int, before: Optional[str]) -> None:
        self.info, self.pid, self.tgid, self.before = info, pid, tgid, before
        self.since = time.monotonic()


class ExecDecider:
    """Answers exec notifications and image gates; returns the events to record."""

    def __init__(self, listener: int, mode: str, kernel_pid: int, allowed: frozenset = frozenset()) -> None:
        self.listener = listener
        self.mode = mode
        self.kernel_pid = kernel_pid
        #: real paths the kernel's Landlock domain lets run; empty: every exec is refused
        self.allowed = allowed
        self.pending: "OrderedDict[int, _Pending]" = OrderedDict()  # by thread group
        self.counts = {"denied": 0, "allowed": 0, "not_found": 0, "probes": 0, "unreadable": 0, "unconfirmed": 0}

    # -- execve / execveat ---------------------------------------------------------

    def on_exec(self, notif: Notification) -> list[dict]:
        """Read (validated before and after), answer, and record or hold for the gate."""
        info: dict[str, Any] = {"syscall": f"syscall {notif.nr}", "readable": False}
        if id_valid(self.listener, notif.id):
            try:
                info = read_exec(notif)
            except Exception as exc:  # reading is best effort; the answer is not
                info["unreadable"] = repr(exc)
        if not id_valid(self.listener, notif.id):
            info = {**info, "executable": None, "args": [], "readable": False,
                    "unreadable": "the task exited before its exec could be read"}
        if not info.get("readable"):
            self.counts["unreadable"] += 1
        if self.mode == "audit":
            respond(self.listener, notif.id, allow=True)
            self.counts["allowed"] += 1
            return [self.event(notif.pid, info, "attempt")]
        if self.in_allowlist(info):
            held = self._hold(notif, info)
            respond(self.listener, notif.id, allow=True)
            self.counts["allowed"] += 1
            return held
        missing = self._missing(info)
        probe = None if missing else _probe_of(info)
        respond(self.listener, notif.id, allow=False, error=errno.ENOENT if missing or probe else errno.EPERM)
        verdict = "not-found" if missing else "probe" if probe else "denied"
        self.counts["not_found" if missing else "probes" if probe else "denied"] += 1
        return [self.event(notif.pid, info, verdict, library=probe)]

    def in_allowlist(self, info: dict[str, Any]) -> bool:
        """Whether to let an exec continue: only where the kernel's Landlock domain
        enforces the same allowlist, so that what we read (which the task can
        change) only shapes the record, never the decision."""
        exe = info.get("executable")
        if not self.allowed or not exe or not info.get("readable"):
            return False
        return os.path.realpath(exe) in self.allowed

    @staticmethod
    def _missing(info: dict[str, Any]) -> bool:
        """The path names nothing (as read): the OS would answer ENOENT.  Either
        answer refuses; this one lets ``execvp`` try the next ``PATH`` entry."""
        from ..audit.probes import missing_program

        exe = info.get("executable")
        if not info.get("readable") or info.get("by_fd") or not exe or not exe.startswith("/"):
            return False
        return not exe.startswith("/proc/") and missing_program(exe)

    def _hold(self, notif: Notification, info: dict[str, Any]) -> list[dict]:
        """Keep an exec let through until its image reaches the gate."""
        tgid = _tgid(notif.pid) or notif.pid
        out = []
        if tgid in self.pending:  # an earlier exec of this process never reached the gate
            out.append(self._unconfirmed(self.pending.pop(tgid)))
        while len(self.pending) >= _MAX_PENDING:
            out.append(self._unconfirmed(self.pending.popitem(last=False)[1]))
        self.pending[tgid] = _Pending(info, notif.pid, tgid, exe_of(tgid))
        return out

    # -- the image gate --------------------------------------------------------------

    def on_image(self, notif: Notification) -> list[dict]:
        """A new image's first call: run it when its executable is an allowed program;
        otherwise (the loader started as a program after a path changed under our
        reading) kill it before it maps anything."""
        exe = exe_of(notif.pid)
        if not id_valid(self.listener, notif.id):
            return []  # gone, or a recycled pid: nothing of it runs any more
        pending = self.pending.pop(notif.pid, None)
        if exe is not None and os.path.realpath(exe) in self.allowed:
            respond(self.listener, notif.id, allow=True)
            return [self.image_allowed(notif.pid, exe, pending)]
        try:
            os.kill(_tgid(notif.pid) or notif.pid, _signal.SIGKILL)  # outside the kernel's signal scope
        except OSError:
            pass
        respond(self.listener, notif.id, allow=False)
        self.counts["denied"] += 1
        return [self.image_denied(notif.pid, exe, pending)]

    def expire(self, now: Optional[float] = None) -> list[dict]:
        """Record the execs let through whose image has not reached the gate in time."""
        now = time.monotonic() if now is None else now
        out = []
        while self.pending:
            tgid, oldest = next(iter(self.pending.items()))
            if now - oldest.since < CONFIRM_WITHIN:
                break
            del self.pending[tgid]
            out.append(self._unconfirmed(oldest))
        return out

    def _unconfirmed(self, held: _Pending) -> dict:
        """An exec let through whose new image never asked for its break: the exec
        failed (Landlock refused the file it opened, or it vanished), or the program
        makes no such call.  Either way the kernel's domain decided; say what /proc shows."""
        self.counts["unconfirmed"] += 1
        now = exe_of(held.tgid)
        if now is not None and now != held.before:
            seen = f"the process now runs {recordable(now)}"
        elif now is not None:
            seen = f"the process still runs {recordable(now)}: the exec most likely failed"
        else:
            seen = "the process has ended"
        return self.event(held.pid, held.info, "unconfirmed", image=recordable(now), seen=seen)

    # -- events ----------------------------------------------------------------------

    def _fields(self, info: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {"technique": info.get("syscall"), "syscall": info.get("syscall"),
                                  "abi": info.get("abi"), "supervisor_pid": os.getpid(),
                                  "kernel_pid": self.kernel_pid, "mode": self.mode}
        if info.get("unreadable"):
            fields["unreadable"] = info["unreadable"]
        return fields

    def _process(self, pid: int, exe: str, args: list[str]) -> dict[str, Any]:
        from ..events.processors import redact_argv

        exe = recordable(exe) or ""
        args = redact_argv([recordable(a) or "" for a in args])
        return caller(pid, executable=exe, args=args, name=os.path.basename(exe), command_line=" ".join(args))

    def event(self, pid: int, info: dict[str, Any], verdict: str, image: Optional[str] = None,
              seen: str = "", library: Optional[str] = None) -> dict:
        """The record of one exec notification (``verdict``: attempt, denied, not-found, probe, unconfirmed)."""
        from ..events.schema import make_event

        exe = recordable(info.get("executable")) or "<unreadable>"
        process = self._process(pid, exe, info.get("args") or [])
        fields = self._fields(info)
        call = f"{info.get('syscall')} of {exe}"
        if verdict == "attempt":
            return make_event("exec-attempt", outcome="unknown", layer="seccomp", process=process, **fields,
                              reason=f"audit profile (not a security boundary): {call} recorded and allowed")
        if verdict == "not-found":
            return make_event("exec-not-found", outcome="unknown", layer="seccomp", process=process, **fields,
                              reason=f"{call}: no such file (answered ENOENT, as the system would; a PATH "
                                     "search goes on to the next folder)")
        if verdict == "probe":
            return make_event("library-probe", outcome="unknown", layer="seccomp", process=process, **fields,
                              library=library,
                              reason=f"{call}: the command line reads as {library}'s probe for a program (the "
                                     "process's claim); refused as if the program were not installed (ENOENT), "
                                     "so the library goes on without it")
        if verdict == "unconfirmed":
            return make_event("exec-allowed", outcome="unknown", layer="landlock", process=process, **fields,
                              image_confirmed=False, image=image,
                              reason=f"{call} let through to the kernel's Landlock domain, which decides on the "
                                     f"file it opens; no new image reached the gate within {CONFIRM_WITHIN:.0f} s "
                                     f"({seen})")
        return make_event("exec-denied", outcome="failure", layer="seccomp", process=process, **fields,
                          reason=f"{call} refused by the seccomp filter (EPERM from the supervisor)")

    def image_allowed(self, pid: int, exe: str, held: Optional[_Pending]) -> dict:
        """``exec-allowed``, naming the image the kernel started (``/proc/PID/exe``)."""
        from ..events.schema import make_event

        info = held.info if held else {"syscall": "execve", "args": []}
        fields = self._fields(info)
        requested = info.get("executable")
        if requested and os.path.realpath(requested) != os.path.realpath(exe):
            fields["requested"] = recordable(requested)
        process = self._process(pid, exe, info.get("args") or [])
        return make_event("exec-allowed", outcome="success", layer="landlock", process=process, **fields,
                          image_confirmed=True,
                          reason=f"{info.get('syscall')} started {exe}: one of the programs the kernel's "
                                 "Landlock domain lets run (the image confirmed by the kernel at its first call)")

    def image_denied(self, pid: int, exe: Optional[str], held: Optional[_Pending]) -> dict:
        """``exec-denied`` for an image the gate killed."""
        from ..events.schema import make_event

        shown = recordable(exe) or "<unreadable>"
        fields: dict[str, Any] = {}
        if held and held.info.get("executable"):
            fields["requested"] = recordable(held.info["executable"])
        process = caller(pid, executable=shown, name=os.path.basename(shown))
        return make_event("exec-denied", outcome="failure", layer="seccomp", process=process,
                          technique="loader started as a program", syscall="brk", supervisor_pid=os.getpid(),
                          kernel_pid=self.kernel_pid, mode=self.mode, image_confirmed=True, **fields,
                          reason=f"{shown} started as a program, not one the kernel may run (its exec path "
                                 "changed after the supervisor read it): killed before it loaded anything")

