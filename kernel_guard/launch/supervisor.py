"""The exec supervisor: a separate process that answers the kernel's exec attempts.

The launcher starts it (``python -m kernel_guard.launch.supervisor``) while exec
still works, before the seccomp filter is loaded, and hands it the filter's
user-notification listener over an AF_UNIX socket (SCM_RIGHTS); the kernel
keeps no copy.  For each notification the supervisor:

1. receives it into a zeroed ``seccomp_notif`` buffer (``SECCOMP_IOCTL_NOTIF_RECV``);
2. reads the attempted path and argv from ``/proc/<pid>/mem`` and checks with
   ``SECCOMP_IOCTL_NOTIF_ID_VALID`` that the target is still the same task, so
   what it records is not from a recycled pid;
3. answers: ``EPERM`` under an enforce profile, unless the program is one the
   kernel's own Landlock domain allows: then CONTINUE, because Landlock, not
   what was read (a path in the target's memory can change before the kernel
   uses it), makes the decision; CONTINUE under the ``audit`` profile (record
   only; not a security boundary);
4. records an ``exec-denied`` (``exec-allowed``, ``exec-attempt``) event
   through its own sinks, so code in the kernel cannot suppress it.

Where it lets allowed programs run, every new image's first call
(``brk(NULL)``, made by the ELF loader before it maps anything) comes here too:
the image runs only when ``/proc/PID/exe`` is an allowed program, so a path
changed after step 2 cannot start the loader with a program of its choosing
(:meth:`Supervisor.check_image`).

It leaves the kernel's session and process group (no group signal or
terminal of the kernel's reaches it), ignores SIGINT and terminal signals,
exits on SIGTERM, when the kernel dies (``PR_SET_PDEATHSIG``) and when the
listener reports that no process uses the filter any more.  It makes itself
non-dumpable and loads its own small filter (no exec, no ptrace): the kernel
can neither write its memory nor, through it, start a program.  The kernel
cannot signal it either: the launcher scopes the kernel's signals with
Landlock (ABI 6+), and the kernel's filter sends every signal, pidfd or
rlimit call aimed at the supervisor's threads, ``kill(-1)``, every
``pidfd_send_signal`` and every request for a new seccomp listener here, where
it is refused and recorded (:meth:`Supervisor.refuse_other`).  If it dies all the same,
notified syscalls fail with ENOSYS and no new listener can be attached: exec
stays blocked for good, and the kernel records the loss.

The first half of this module is the supervisor process; the second half is
the kernel-side handle (start, hand over the listener, query, watch).
Kernel-side state lives here, not in :mod:`kernel_guard.launch.launcher`,
which only runs the steps.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

__all__ = ["SupervisorHandle", "current", "main", "start"]

# <linux/seccomp.h>
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x80082102  # the legacy value, accepted by every kernel
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
NOTIF_SIZE = 80                      # struct seccomp_notif
_NOTIF_HEAD = struct.Struct("=QIIiIQ")  # id, pid, flags, nr, arch, instruction_pointer
_NOTIF_ARGS = struct.Struct("=6Q")      # args[6] at offset 32
_RESP = struct.Struct("=QqiI")          # id, val, error, flags

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4

# audit architectures (<linux/audit.h>)
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
X32_SYSCALL_BIT = 0x40000000
#: (audit arch, nr) -> (syscall, ABI, pointer size)
EXEC_SYSCALLS = {
    (AUDIT_ARCH_X86_64, 59): ("execve", "x86_64", 8),
    (AUDIT_ARCH_X86_64, 322): ("execveat", "x86_64", 8),
    (AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 520): ("execve", "x32", 4),
    (AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 545): ("execveat", "x32", 4),
    (AUDIT_ARCH_I386, 11): ("execve", "i386", 4),
    (AUDIT_ARCH_I386, 358): ("execveat", "i386", 4),
    (AUDIT_ARCH_AARCH64, 221): ("execve", "aarch64", 8),
    (AUDIT_ARCH_AARCH64, 281): ("execveat", "aarch64", 8),
    (AUDIT_ARCH_ARM, 11): ("execve", "arm", 4),
    (AUDIT_ARCH_ARM, 387): ("execveat", "arm", 4),
}
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000

_MAX_PATH = 4096
_MAX_ARG = 1024
_MAX_ARGS = 64
_PAGE = 4096


# ---------------------------------------------------------------------------
# The supervisor process
# ---------------------------------------------------------------------------

class Notification:
    """One received ``seccomp_notif``."""

    __slots__ = ("id", "pid", "flags", "nr", "arch", "args")

    def __init__(self, buf: bytes) -> None:
        self.id, self.pid, self.flags, self.nr, self.arch, _ip = _NOTIF_HEAD.unpack_from(buf)
        self.args = _NOTIF_ARGS.unpack_from(buf, 32)


def receive(listener: int) -> Optional[Notification]:
    """Receive one notification (None if the target went away meanwhile)."""
    buf = bytearray(NOTIF_SIZE)  # must be zeroed before every receive
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    return Notification(bytes(buf))


def id_valid(listener: int, notif_id: int) -> bool:
    """Whether the notification's task is still waiting (its pid not recycled)."""
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notif_id))
        return True
    except OSError:
        return False


def respond(listener: int, notif_id: int, allow: bool) -> None:
    """EPERM, or CONTINUE (audit profile only); a vanished target is fine."""
    if allow:
        data = _RESP.pack(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
    else:
        data = _RESP.pack(notif_id, 0, -errno.EPERM, 0)
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, data)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


class TargetMemory:
    """Reads NUL-terminated strings and pointers from ``/proc/<pid>/mem``."""

    def __init__(self, pid: int, pointer_size: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        self.pointer_size = pointer_size

    def close(self) -> None:
        os.close(self.fd)

    def string(self, addr: int, limit: int) -> Optional[bytes]:
        """Read up to ``limit`` bytes or the first NUL, page by page."""
        if addr == 0:
            return None
        out = b""
        while len(out) < limit:
            chunk = min(_PAGE - (addr % _PAGE), limit - len(out))
            data = os.pread(self.fd, chunk, addr)
            if not data:
                break
            nul = data.find(b"\0")
            if nul >= 0:
                return out + data[:nul]
            out += data
            addr += len(data)
        return out

    def pointers(self, addr: int, count: int) -> list[int]:
        """A NULL-terminated array of pointers (at most ``count``)."""
        size = self.pointer_size
        data = os.pread(self.fd, size * count, addr) if addr else b""
        fmt = "=Q" if size == 8 else "=I"
        out = []
        for i in range(len(data) // size):
            (value,) = struct.unpack_from(fmt, data, i * size)
            if value == 0:
                break
            out.append(value)
        return out


def _fd_path(pid: int, fd: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}" if fd != AT_FDCWD else f"/proc/{pid}/cwd")
    except OSError:
        return None


def _absolute(pid: int, path: Optional[str], dirfd: int) -> Optional[str]:
    """A path read from the target, made absolute against the folder ``dirfd`` names
    there (or its working folder), as the system call resolves it."""
    if not path or path.startswith("/"):
        return path
    base = _fd_path(pid, dirfd)
    return os.path.join(base, path) if base else path


def _signed(value: int, size: int) -> int:
    bits = size * 8
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


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
        dirfd, path_ptr, argv_ptr = _signed(notif.args[0], 4), notif.args[1], notif.args[2]
        flags = notif.args[4]
    try:
        mem = TargetMemory(notif.pid, psize)
    except OSError as exc:
        info["unreadable"] = f"/proc/{notif.pid}/mem: {exc.strerror}"
        return info
    try:
        raw_path = mem.string(path_ptr, _MAX_PATH)
        argv = [mem.string(p, _MAX_ARG) or b"" for p in mem.pointers(argv_ptr, _MAX_ARGS)]
    except OSError as exc:
        info["unreadable"] = f"reading the target's memory: {exc.strerror}"
        return info
    finally:
        mem.close()
    path = os.fsdecode(raw_path) if raw_path is not None else None
    if syscall == "execveat" and (flags & AT_EMPTY_PATH) and not path:
        path = _fd_path(notif.pid, dirfd)  # fexecve(fd): the program is the open file
    else:
        path = _absolute(notif.pid, path, dirfd)
    info.update(executable=path, args=[os.fsdecode(a) for a in argv], readable=True)
    return info


#: where each protected syscall names its signal and target (argument indexes)
_SIGNAL_ARG = {"kill": 1, "tkill": 1, "tgkill": 2, "rt_sigqueueinfo": 1, "rt_tgsigqueueinfo": 2,
               "pidfd_send_signal": 1}


def other_syscall_table(names: tuple[str, ...]) -> dict[tuple[int, int], tuple[str, str]]:
    """(audit arch, nr) -> (syscall, ABI) for the non-exec syscalls ``names`` the
    launcher may send here, numbered by libseccomp for every ABI of this machine."""
    from .seccomp_filter import default_architectures, syscall_numbers

    table: dict[tuple[int, int], tuple[str, str]] = {}
    for arch_name in default_architectures():
        for name, (audit_arch, nr) in syscall_numbers(arch_name, names).items():
            table[(audit_arch, nr)] = (name, arch_name.rsplit("_ARCH_", 1)[-1].lower())
    return table


def _pidfd_target(pid: int, fd: int) -> Optional[int]:
    """The process a pidfd refers to (best effort): the caller's fdinfo for one from
    pidfd_open, the folder's name for an open ``/proc/PID``."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
            for line in fh:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
        head, _, name = os.readlink(f"/proc/{pid}/fd/{fd}").rpartition("/")
        return int(name) if head == "/proc" else None
    except (OSError, ValueError, IndexError):
        return None


def protection_event(notif: Notification, syscall: str, abi: str, kernel_pid: int, mode: str) -> dict:
    """``signal-denied`` or ``listener-denied`` for a refused non-exec notification."""
    from ..events.schema import make_event

    process = _caller(notif.pid, name=_comm(notif.pid))
    fields: dict[str, Any] = {"technique": syscall, "syscall": syscall, "abi": abi, "mode": mode,
                              "supervisor_pid": os.getpid(), "kernel_pid": kernel_pid}
    if syscall == "seccomp":
        return make_event("listener-denied", outcome="failure", layer="seccomp", process=process, **fields,
                          reason="a new seccomp notification listener was refused: with one, the kernel "
                                 "could answer its own exec attempts")
    arg0 = _signed(notif.args[0], 4)
    if syscall == "pidfd_send_signal":
        target = _pidfd_target(notif.pid, arg0)
    elif syscall == "fcntl":
        target = _signed(notif.args[2], 4)  # fcntl(fd, F_SETOWN, pid)
    else:
        target = arg0
    fields["target_pid"] = target
    if syscall in _SIGNAL_ARG:
        fields["signal"] = _signed(notif.args[_SIGNAL_ARG[syscall]], 4)
    what = {"prlimit64": "changing the resource limits of", "pidfd_open": "opening a pidfd for",
            "fcntl": "F_SETOWN, directing SIGIO at"}.get(syscall, f"signal {fields.get('signal')} to")
    whom = "every process" if target == -1 else f"pid {target}"
    return make_event("signal-denied", outcome="failure", layer="seccomp", process=process, **fields,
                      reason=f"{syscall}: {what} {whom} refused: the exec supervisor and the processes "
                             "outside the kernel are out of the notebook's reach")


#: where each truncating call names its path (and folder fd, or None)
_TRUNCATE_PATH = {"truncate": (0, None), "truncate64": (0, None), "open": (0, None), "openat": (1, 0)}


def truncation_event(notif: Notification, syscall: str, abi: str, kernel_pid: int, mode: str) -> dict:
    """``truncate-denied`` for a file truncated by its path (the path as read, best effort)."""
    from ..events.schema import make_event

    path_arg, dir_arg = _TRUNCATE_PATH.get(syscall, (0, None))
    path = None
    try:
        mem = TargetMemory(notif.pid, 4 if abi in ("x86", "x32", "arm") else 8)
        try:
            raw = mem.string(notif.args[path_arg], _MAX_PATH)
        finally:
            mem.close()
        dirfd = _signed(notif.args[dir_arg], 4) if dir_arg is not None else AT_FDCWD
        path = _absolute(notif.pid, os.fsdecode(raw) if raw else None, dirfd)
    except OSError:
        pass
    how = "truncate(2)" if syscall.startswith("truncate") else f"{syscall} with O_TRUNC and no write access"
    return make_event("truncate-denied", outcome="failure", layer="seccomp", process=_caller(notif.pid),
                      file={"path": path or "<unreadable>"}, technique=how, syscall=syscall, abi=abi, mode=mode,
                      supervisor_pid=os.getpid(), kernel_pid=kernel_pid,
                      reason=f"truncating {path or 'a file'} by its path ({how}) refused: open the file for "
                             "writing and truncate that (Landlock confines it to the writable roots)")


def _comm(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return None


class Supervisor:
    """The notification loop of the supervisor process."""

    def __init__(self, listener: int, control: socket.socket, mode: str, kernel_pid: int,
                 emit: Callable[[dict], None], allowed: frozenset = frozenset()) -> None:
        self.listener = listener
        #: real paths the kernel's Landlock domain lets run; empty: every exec is refused
        self.allowed = allowed
        self.control = control
        self.mode = mode
        self.kernel_pid = kernel_pid
        self.emit = emit
        self.counts = {"notifications": 0, "denied": 0, "allowed": 0, "unreadable": 0, "errors": 0,
                       "signals_denied": 0, "listeners_denied": 0, "truncations_denied": 0}
        self.started = time.time()
        from .seccomp_filter import IMAGE_GATE_SYSCALLS, PROTECTED_SYSCALLS, TRUNCATION_SYSCALLS

        self.image_gate, self.truncations = frozenset(IMAGE_GATE_SYSCALLS), frozenset(TRUNCATION_SYSCALLS)
        # every non-exec call the launcher's rules may send here (the opens only with
        # O_TRUNC and no write access, brk only with NULL), by (arch, nr)
        self.other_syscalls = other_syscall_table((*PROTECTED_SYSCALLS, *IMAGE_GATE_SYSCALLS, *TRUNCATION_SYSCALLS))

    def refuse_other(self, notif: Notification, syscall: str, abi: str) -> None:
        """A signal to a protected process, a new seccomp listener, a truncation by path:
        always EPERM, in every mode (the audit profile too), and recorded."""
        # read what the event names while the caller still waits: once answered, it moves on
        if syscall in self.truncations:
            event, counter = truncation_event(notif, syscall, abi, self.kernel_pid, self.mode), "truncations_denied"
        else:
            event = protection_event(notif, syscall, abi, self.kernel_pid, self.mode)
            counter = "listeners_denied" if syscall == "seccomp" else "signals_denied"
        respond(self.listener, notif.id, allow=False)
        self.counts[counter] += 1
        self.emit(event)

    def handle_one(self) -> None:
        """Receive, read, validate, answer, record."""
        notif = receive(self.listener)
        if notif is None:
            return
        self.counts["notifications"] += 1
        other = self.other_syscalls.get((notif.arch, notif.nr))
        if other is not None:
            syscall, abi = other
            if syscall in self.image_gate:
                self.check_image(notif)
            else:
                self.refuse_other(notif, syscall, abi)
            return
        # validate before opening /proc/<pid>/mem (the pid may already be recycled)
        # and after reading (the task may have died while we read)
        info: dict[str, Any] = {"syscall": f"syscall {notif.nr}", "readable": False}
        if id_valid(self.listener, notif.id):
            try:
                info = read_exec(notif)
            except Exception as exc:  # reading is best effort; the answer is not
                info["unreadable"] = repr(exc)
        still_there = id_valid(self.listener, notif.id)
        allow = self.mode == "audit" or self.in_allowlist(info)
        respond(self.listener, notif.id, allow)
        self.counts["allowed" if allow else "denied"] += 1
        if not still_there:
            info = {**info, "executable": None, "args": [], "readable": False,
                    "unreadable": "the task exited before its exec could be read"}
        if not info.get("readable"):
            self.counts["unreadable"] += 1
        self.emit(self.event(notif, info, allow))

    def check_image(self, notif: Notification) -> None:
        """A new program image's first call: let it run when its executable is an
        allowed program; otherwise (the ELF loader started as a program, after a
        path changed under our reading) kill it before it maps anything, and record."""
        try:
            exe = os.readlink(f"/proc/{notif.pid}/exe")
        except OSError:
            exe = None
        if not id_valid(self.listener, notif.id):
            return  # gone, or a recycled pid: nothing of it runs any more
        if exe is not None and os.path.realpath(exe) in self.allowed:
            respond(self.listener, notif.id, allow=True)
            return
        tgid = _tgid(notif.pid)
        try:
            os.kill(tgid or notif.pid, signal.SIGKILL)  # outside the kernel's signal scope
        except OSError:
            pass
        respond(self.listener, notif.id, allow=False)
        self.counts["denied"] += 1
        self.emit(self.image_event(notif, exe))

    def image_event(self, notif: Notification, exe: Optional[str]) -> dict:
        """``exec-denied`` for an image the gate killed."""
        from ..events.schema import make_event

        shown = exe or "<unreadable>"
        process = _caller(notif.pid, executable=shown, name=os.path.basename(shown))
        return make_event("exec-denied", outcome="failure", layer="seccomp", process=process,
                          technique="loader started as a program", syscall="brk", supervisor_pid=os.getpid(),
                          kernel_pid=self.kernel_pid, mode=self.mode,
                          reason=f"{shown} started as a program, not one the kernel may run (its exec path "
                                 "changed after the supervisor read it): killed before it loaded anything")

    def in_allowlist(self, info: dict[str, Any]) -> bool:
        """Whether to let an exec continue under an enforce profile: only when the
        kernel's Landlock domain enforces the same allowlist, so that what we read
        (which the target can change) only shapes the record, never the decision."""
        exe = info.get("executable")
        if not self.allowed or not exe or not info.get("readable"):
            return False
        return os.path.realpath(exe) in self.allowed

    def event(self, notif: Notification, info: dict[str, Any], allowed: bool) -> dict:
        from ..events.processors import redact_argv
        from ..events.schema import make_event

        exe = info.get("executable") or "<unreadable>"
        args = redact_argv(info.get("args") or [])
        process = _caller(notif.pid, executable=exe, args=args, name=os.path.basename(exe),
                          command_line=" ".join(args))
        fields: dict[str, Any] = {"technique": info.get("syscall"), "syscall": info.get("syscall"),
                                  "abi": info.get("abi"), "supervisor_pid": os.getpid(),
                                  "kernel_pid": self.kernel_pid, "mode": self.mode}
        if info.get("unreadable"):
            fields["unreadable"] = info["unreadable"]
        if allowed and self.mode != "audit":
            return make_event("exec-allowed", outcome="success", layer="landlock", process=process,
                              reason=f"{info.get('syscall')} of {exe} let through: the kernel's Landlock domain "
                                     "lets only its allowed programs run", **fields)
        if allowed:
            return make_event("exec-attempt", outcome="unknown", layer="seccomp", process=process,
                              reason=f"audit profile (not a security boundary): {info.get('syscall')} "
                                     f"of {exe} recorded and allowed", **fields)
        return make_event("exec-denied", outcome="failure", layer="seccomp", process=process,
                          reason=f"{info.get('syscall')} of {exe} refused by the seccomp filter "
                                 "(EPERM from the supervisor)", **fields)

    def answer_control(self) -> bool:
        """Answer a status query on the control socket; False once it is closed."""
        try:
            data = self.control.recv(4096)
        except OSError:
            return False
        if not data:
            return False
        try:
            request = json.loads(data)
        except ValueError:
            return True  # ignore garbage: the kernel side is not trusted
        if isinstance(request, dict) and request.get("op") == "status":
            from .. import runtime

            rt = runtime.current()
            reply = {"pid": os.getpid(), "mode": self.mode, "kernel_pid": self.kernel_pid,
                     "listener": True, "uptime_s": round(time.time() - self.started, 3),
                     "counts": dict(self.counts),
                     "pipeline": rt.pipeline.stats() if rt is not None else None,
                     "seccomp": _own_status()}
            try:
                self.control.send(json.dumps(reply).encode())
            except OSError:
                return False
        return True

    def run(self, stop_fd: Optional[int] = None) -> str:
        """Serve until the listener hangs up, or ``stop_fd`` (the signal wake-up
        pipe) becomes readable; return why the loop ended."""
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self.control.fileno(), select.POLLIN)
        if stop_fd is not None:
            poller.register(stop_fd, select.POLLIN)
        while True:
            for fd, ev in poller.poll(1000):
                if fd == stop_fd:
                    return "SIGTERM"
                if fd == self.listener:
                    if ev & select.POLLIN:
                        try:
                            self.handle_one()
                        except OSError as exc:
                            self.counts["errors"] += 1
                            if exc.errno not in (errno.ENOENT, errno.EINTR):
                                raise
                    elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        return "no process uses the filter any more"
                elif not self.answer_control():
                    # the kernel closed its end: keep serving the listener, which
                    # still protects it; only the listener's end ends the loop
                    poller.unregister(self.control.fileno())


def _caller(pid: int, **fields: Any) -> dict[str, Any]:
    """ECS ``process`` fields of a notifying task, with its parent where /proc shows it."""
    process: dict[str, Any] = {"pid": pid, **fields}
    ppid = _ppid(pid)
    if ppid:
        process["parent"] = {"pid": ppid}
    return process


def _tgid(pid: int) -> Optional[int]:
    """The process (thread group) a task id belongs to."""
    from .seccomp_filter import proc_status

    tgid = proc_status(pid).get("Tgid", "")
    return int(tgid) if tgid.isdigit() else None


def _ppid(pid: int) -> Optional[int]:
    from .seccomp_filter import proc_stat

    fields = proc_stat(pid)
    return int(fields[1]) if len(fields) > 1 else None


def _own_status() -> dict[str, str]:
    from .seccomp_filter import proc_status

    return proc_status()


def _leave_kernel_session() -> None:
    """A session and process group of our own: no group signal of the kernel's
    (``killpg``, ``kill(0)``) reaches us, and no terminal the kernel controls can
    make us its foreground group (terminal signals bypass Landlock's scope).
    We still end with the kernel: PDEATHSIG, and the listener's hang-up."""
    os.setsid()
    for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)


def _harden_self() -> None:
    """Non-dumpable (the kernel cannot open our memory or fds) and no exec of our own."""
    from . import seccomp_filter as sf

    sf.prctl(PR_SET_DUMPABLE, 0)
    sc = sf.bindings()
    filt = sc.SyscallFilter(int(sc.ALLOW))
    for arch in sf.default_architectures():
        arch_value = getattr(sc.Arch, sf._ARCH_NAMES[arch])
        if not filt.exist_arch(arch_value):
            filt.add_arch(arch_value)
    filt.set_attr(sc.Attr.ACT_BADARCH, int(sc.KILL_PROCESS))
    filt.set_attr(sc.Attr.CTL_TSYNC, 1)
    for name in ("execve", "execveat", "ptrace", "process_vm_writev", "pidfd_getfd"):
        filt.add_rule(int(sc.ERRNO(errno.EPERM)), name)
    filt.load()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernel_guard.launch.supervisor",
                                     description="Exec supervisor (started by kernel_guard.launch).")
    parser.add_argument("--fd", type=int, required=True, help="socket to the kernel (SOCK_SEQPACKET)")
    parser.add_argument("--kernel-pid", type=int, required=True)
    parser.add_argument("--mode", choices=["enforce", "audit"], required=True,
                        help="enforce: always EPERM; audit: CONTINUE (not a security boundary)")
    parser.add_argument("--kernel-id", default=None)
    parser.add_argument("--profile", default="", help="profile name, for events")
    parser.add_argument("--events-fd", type=int, default=None,
                        help="socket on which the kernel hands its events to this custodian (SOCK_SEQPACKET)")
    parser.add_argument("--spool-dir", default=None,
                        help="spool root outside the kernel's writable roots ('' keeps spools in memory)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``python -m kernel_guard.launch.supervisor``."""
    from . import seccomp_filter as sf

    args = _parse(sys.argv[1:] if argv is None else argv)
    # die with the kernel; if it is already gone, the prctl came too late
    sf.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != args.kernel_pid:
        return 3
    _leave_kernel_session()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are for the kernel's cells
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    witness, witness_pipe = _start_witness(args)  # before any thread exists
    code = _serve(args, socket.socket(fileno=args.fd), witness)
    try:
        os.write(witness_pipe, b"stopped")  # a clean end: the witness has nothing to record
    except BrokenPipeError:
        pass  # it could not harden itself and is gone
    return code


def _serve(args: argparse.Namespace, control: socket.socket, witness: int) -> int:
    """Harden, hand-shake, receive the listener, serve until the kernel is gone."""
    from .. import runtime
    from ..events.schema import make_event

    rt = runtime.start(_own_config(args), kernel_id=args.kernel_id)
    rt.layers["supervisor"] = args.mode
    custodian = _start_custodian(args, rt)
    try:
        _harden_self()
    except Exception as exc:  # tell the launcher why, rather than a traceback
        control.send(f"cannot harden the supervisor: {type(exc).__name__}: {exc}".encode())
        return 5
    # the kernel's filter sends signals aimed at any of these to us (any tid names its process)
    tids = sorted(int(t) for t in os.listdir("/proc/self/task"))
    control.send(b"ready " + json.dumps({"tids": tids, "witness": witness}).encode())
    try:
        msg, fds, _flags, _addr = socket.recv_fds(control, 65536, 1)
        allowed = frozenset(json.loads(msg).get("allowed", ())) if msg.startswith(b"{") else frozenset()
    except (OSError, ValueError, AttributeError):
        fds, allowed = [], frozenset()
    if not fds:
        return 4
    control.send(b"listening")
    sup = Supervisor(fds[0], control, args.mode, args.kernel_pid, rt.emit, allowed)
    # From here SIGTERM only wakes the loop, which ends and records why: the
    # kernel's death arrives twice (listener closed, PDEATHSIG), and a SIGTERM
    # raised as an exception could land between the loop's end and the record.
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.set_wakeup_fd(stop_w, warn_on_full_buffer=False)
    why = sup.run(stop_r)  # an exception here is a loss: the witness records it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if custodian is not None:
        custodian.stop()
    rt.emit(make_event("supervisor-stopped", outcome="success", layer="supervisor",
                       reason=f"exec supervisor stopped: {why}",
                       counts={**sup.counts, **(custodian.counts if custodian else {})},
                       supervisor_pid=os.getpid(), kernel_pid=args.kernel_pid,
                       process={"pid": os.getpid()}))
    rt.pipeline.close(timeout=3.0)
    return 0


def _own_config(args: argparse.Namespace) -> Any:
    """The supervisor's settings: the environment's, with a spool the kernel cannot reach."""
    from traitlets.config import Config

    config = Config()
    trusted = os.environ.pop("KERNEL_GUARD_TRUSTED_CONFIG", "")
    if trusted:
        try:
            config.KernelGuard = Config(json.loads(trusted))
        except ValueError:
            pass  # never from anyone but the launcher; without it, the environment's settings
    if args.spool_dir is not None:
        config.KernelGuard.spool_dir = args.spool_dir
    return config


def _start_custodian(args: argparse.Namespace, rt: Any) -> Any:
    """Take the kernel's events from the socket it writes them to (custodian of the record)."""
    if args.events_fd is None:
        return None
    from .custodian import Custodian

    numbering = rt.pipeline._numbering
    custodian = Custodian(socket.socket(fileno=args.events_fd), rt.pipeline,
                          lambda: numbering.stream if numbering else None, rt.emit)
    custodian.start()
    return custodian


def _start_witness(args: argparse.Namespace) -> tuple[int, int]:
    """Fork the witness: a process that records the supervisor's loss when the
    supervisor cannot (SIGKILL, a crash), with the same sinks, from outside the
    kernel.  Returns its pid and the pipe whose end it watches."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.close(args.fd)  # the kernel must see the supervisor's end close when it dies
        if args.events_fd is not None:
            os.close(args.events_fd)  # and its events socket: then it writes its own record
        try:
            code = _witness(read_end, args)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(read_end)
    return pid, write_end


def _witness(read_end: int, args: argparse.Namespace) -> int:
    """Wait for the supervisor to end; unless it ended cleanly, record the loss."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    supervisor_pid = os.getppid()
    _harden_self()
    said = b""
    while chunk := os.read(read_end, 64):
        said += chunk
    if said == b"stopped":
        return 0
    from .. import runtime
    from ..events.schema import make_event

    rt = runtime.start(kernel_id=args.kernel_id)
    rt.emit(make_event("supervisor-lost", outcome="failure", layer="supervisor",
                       reason=f"the exec supervisor (pid {supervisor_pid}) ended without stopping cleanly "
                              "(killed or crashed); recorded by its witness. Exec stays blocked for good "
                              "(ENOSYS; the filter refuses any new listener), but attempts are no longer "
                              "recorded from outside the kernel",
                       supervisor_pid=supervisor_pid, kernel_pid=args.kernel_pid, recorded_by="witness",
                       process={"pid": os.getpid()}))
    rt.pipeline.close(timeout=5.0)
    return 0


# ---------------------------------------------------------------------------
# The kernel side
# ---------------------------------------------------------------------------

class SupervisorHandle:
    """The kernel's view of its supervisor: pid, control socket, liveness."""

    def __init__(self, proc: subprocess.Popen, control: socket.socket, mode: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.control = control
        self.mode = mode
        self.exit_status: Optional[int] = None
        self.lost_reason: Optional[str] = None
        #: the supervisor's thread ids at start (a signal to any of them reaches it)
        self.tids: list[int] = [proc.pid]
        #: the witness that records the supervisor's loss (0: none)
        self.witness = 0
        #: the kernel's end of the socket its events go to the custodian on
        self.events: Optional[socket.socket] = None
        self._lock = threading.Lock()

    def expect(self, word: bytes, timeout: float) -> bytes:
        """Wait for a handshake word from the supervisor; return what follows it."""
        ready, _, _ = select.select([self.control], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the supervisor (pid {self.pid}) did not answer within {timeout:.0f}s")
        data = self.control.recv(4096)
        said, _, rest = data.partition(b" ")
        if said != word:
            text = data.decode("utf-8", "replace") if data else "nothing (it exited)"
            raise RuntimeError(f"the supervisor (pid {self.pid}) said {text!r}, expected {word.decode()!r}")
        return rest

    def send_listener(self, fd: int, allowed: Sequence[str] = (), timeout: float = 10.0) -> None:
        """Pass the listener over SCM_RIGHTS, with the programs the kernel's Landlock
        domain lets run, then close the kernel's copy."""
        try:
            socket.send_fds(self.control, [json.dumps({"allowed": list(allowed)}).encode()], [fd])
        finally:
            os.close(fd)
        self.expect(b"listening", timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """End a supervisor that will not be used.  The kernel cannot signal it once the
        signal scope is in force: closing the control socket ends one that waits for its
        listener (it hears EOF); one that never starts to wait is left to PDEATHSIG."""
        global _handle
        _stop_process(self.proc, self.control, timeout)
        self.exit_status = self.proc.returncode
        if _handle is self:
            _handle = None

    def alive(self) -> bool:
        """Whether the supervisor process exists and is not a zombie."""
        return self.exit_status is None and _stopped(self.pid) is not None

    def query(self, timeout: float = 2.0) -> Optional[dict]:
        """The supervisor's own report (counts, sinks), or None if it does not answer."""
        with self._lock:
            try:
                self.control.send(b'{"op": "status"}')
                ready, _, _ = select.select([self.control], [], [], timeout)
                if not ready:
                    return None
                return json.loads(self.control.recv(65536))
            except (OSError, ValueError):
                return None

    def watch(self, on_lost: Callable[["SupervisorHandle"], None]) -> threading.Thread:
        """A daemon thread that reaps the supervisor and reports its loss."""

        def wait() -> None:
            try:
                _pid, status = os.waitpid(self.pid, 0)
                self.exit_status = status
                if os.WIFSIGNALED(status):
                    self.lost_reason = f"killed by signal {os.WTERMSIG(status)}"
                else:
                    self.lost_reason = f"exited with status {os.WEXITSTATUS(status)}"
            except ChildProcessError:
                self.exit_status = -1
                self.lost_reason = "reaped by someone else"
            self.proc.returncode = self.exit_status
            on_lost(self)

        thread = threading.Thread(target=wait, name="kernel-guard-supervisor-watch", daemon=True)
        thread.start()
        return thread

    def watch_stalls(self, on_stall: Callable[["SupervisorHandle", float], None],
                     on_resume: Callable[["SupervisorHandle", float], None], after: float = 2.0) -> threading.Thread:
        """A daemon thread that reports a supervisor stopped (SIGSTOP, a debugger) for
        ``after`` seconds, and its resumption: while it is stopped every exec waits and
        the kernel's record queues behind it, with nothing else to show for it."""

        def look() -> None:
            since: Optional[float] = None
            reported = False
            while self.exit_status is None:
                stopped = _stopped(self.pid)
                if stopped is None:
                    return  # gone: the watch thread reports that
                now = time.monotonic()
                if stopped and since is None:
                    since = now
                elif stopped and not reported and now - since >= after:
                    reported = True
                    on_stall(self, now - since)
                elif not stopped and since is not None:
                    if reported:
                        on_resume(self, now - since)
                    since, reported = None, False
                time.sleep(0.5)

        thread = threading.Thread(target=look, name="kernel-guard-supervisor-stalls", daemon=True)
        thread.start()
        return thread


def _stopped(pid: int) -> Optional[bool]:
    """Whether a process is stopped (job control or tracing); None once it is gone (or a zombie)."""
    from .seccomp_filter import proc_stat

    fields = proc_stat(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return fields[0] in (b"T", b"t")


def _stop_process(proc: subprocess.Popen, control: socket.socket, timeout: float) -> None:
    control.close()
    try:
        proc.kill()
    except PermissionError:
        pass  # outside our Landlock signal scope: it leaves by itself
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


_handle: Optional[SupervisorHandle] = None


def current() -> Optional[SupervisorHandle]:
    """This kernel's supervisor handle, if the launcher started one."""
    return _handle


def supervisor_argv(fd: int, kernel_pid: int, mode: str, kernel_id: Optional[str], profile: str) -> list[str]:
    """The supervisor's command line (pure, for tests)."""
    argv = [sys.executable, "-I", "-m", "kernel_guard.launch.supervisor", "--fd", str(fd),
            "--kernel-pid", str(kernel_pid), "--mode", mode, "--profile", profile]
    if kernel_id:
        argv += ["--kernel-id", kernel_id]
    return argv


def spawn(mode: str, kernel_id: Optional[str], profile: str, env: dict[str, str],
          spool_dir: Optional[str] = None) -> SupervisorHandle:
    """Start the supervisor process (fork + exec, while exec still works); do not wait for it.

    ``env`` is the kernel's scrubbed environment plus the sinks
    (``KERNEL_GUARD_SINKS``); it is not on the command line, where a sink URL
    with a token would be visible to ``ps``.  :func:`wait_ready` completes the start.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    events, events_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {**env, "PYTHONSAFEPATH": "1"}
    argv = supervisor_argv(theirs.fileno(), os.getpid(), mode, kernel_id, profile)
    argv += ["--events-fd", str(events_theirs.fileno())]
    if spool_dir is not None:
        argv += ["--spool-dir", spool_dir]
    # cwd "/" and safe path: nothing from the notebook directory is imported
    try:
        proc = subprocess.Popen(argv, pass_fds=[theirs.fileno(), events_theirs.fileno()], env=env, cwd="/",
                                stdin=subprocess.DEVNULL, close_fds=True)
    finally:
        theirs.close()
        events_theirs.close()
    handle = SupervisorHandle(proc, ours, mode)
    handle.events = events
    return handle


def wait_ready(handle: SupervisorHandle, timeout: float = 30.0) -> SupervisorHandle:
    """Wait until a spawned supervisor is ready; kill it if it is not within ``timeout``."""
    global _handle
    try:
        ready = json.loads(handle.expect(b"ready", timeout))
        handle.tids = sorted({handle.pid, *(int(t) for t in ready["tids"])})
        handle.witness = int(ready["witness"])
    except Exception:
        _stop_process(handle.proc, handle.control, 5.0)
        raise
    _handle = handle
    return handle


def start(mode: str, kernel_id: Optional[str], profile: str, env: dict[str, str],
          timeout: float = 30.0) -> SupervisorHandle:
    """Start the supervisor and wait until it is ready (:func:`spawn`, then :func:`wait_ready`)."""
    return wait_ready(spawn(mode, kernel_id, profile, env), timeout)


if __name__ == "__main__":
    sys.exit(main())
