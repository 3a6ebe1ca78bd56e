"""The exec supervisor's process: its start, its hardening, its witness, its record.

The launcher starts it (``python -m kernel_guard.launch.supervisor``) while exec
still works, before the seccomp filter is loaded, and hands it the filter's
user-notification listener over an AF_UNIX socket (SCM_RIGHTS); the kernel
keeps no copy (:mod:`.supervisor_handle` is the kernel's side).  Its loop
(:mod:`.supervisor_loop`) answers every notified call and records it; it
also keeps the kernel's record as its custodian (:mod:`.custodian`), with the
settings the launcher handed over (:mod:`.handover`).

It leaves the kernel's session and process group, ignores SIGINT and
terminal signals, makes itself non-dumpable and loads its own small filter
(no exec, no ptrace): the kernel can neither write its memory nor, through it,
start a program.  If it dies all the same, notified calls fail with ENOSYS and
no new listener can be attached: exec stays blocked, and its witness
(:mod:`.witness`) records the loss.  See docs/architecture.md.

The order of :func:`main` keeps memory low (docs/launcher.md, "Memory"): the
witness program (:mod:`.witness`; a few pages) is started while exec still
works, before the hardening.  Where it was not built, a Python witness is
forked once the process is hardened (it inherits the filter and non-dumpable
state) and before the event pipeline, the custodian and the notification loop
are imported, with the collector's view of the heap frozen (``gc.freeze``),
so it shares the little the supervisor had and copies none of what it builds
after.
"""

from __future__ import annotations

import gc
import os
import _signal  # the C module: signal.py makes enums of every constant (its import and enum's: 0.25 MB)
import sys
from types import SimpleNamespace

# typing only for the type checker: the supervisor imports this before its witness is
# forked, and every module imported then stays in the witness's memory too
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

__all__ = ["main", "start_runtime"]


def _serve(args: SimpleNamespace, handed: dict[str, Any], syscalls: dict[tuple[int, int], tuple[str, str]],
           witness: int, witness_form: str) -> int:
    """Open the record, hand-shake, receive the listener, serve until the kernel is gone."""
    from _socket import socket

    from ..events.json_codec import dumps, loads
    from ..events.schema import make_event
    from ..events.sinks.file import reopen_all
    from .supervisor_loop import Supervisor

    control = socket(fileno=args.fd)
    rt = start_runtime(args, handed, "supervisor")
    rt.layers["supervisor"] = args.mode
    custodian = _start_custodian(args, rt)
    # the kernel's filter sends signals aimed at any of these to us (any tid names its process)
    tids = sorted(int(t) for t in os.listdir("/proc/self/task"))
    control.send(b"ready " + dumps({"tids": tids, "witness": witness}).encode())
    try:
        msg, fds = _receive_fds(control, 65536)
        allowed = frozenset(loads(msg).get("allowed", ())) if msg.startswith(b"{") else frozenset()
    except (OSError, ValueError, AttributeError):
        fds, allowed = [], frozenset()
    if not fds:
        return 4
    control.send(b"listening")
    sup = Supervisor(fds[0], control, args.mode, args.kernel_pid, rt.emit, syscalls, allowed, witness, args.scoped,
                     witness_form)
    # From here SIGTERM only wakes the loop, which ends and records why: a SIGTERM
    # raised as an exception could land between the loop's end and the record.
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal.signal(_signal.SIGTERM, lambda *_: None)
    # logrotate's postrotate: the record's files are opened anew before the next write
    _signal.signal(_signal.SIGHUP, lambda *_: reopen_all())
    _signal.set_wakeup_fd(stop_w, warn_on_full_buffer=False)
    why = sup.run(stop_r)  # an exception here is a loss: the witness records it
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    if custodian is not None:
        custodian.stop()
    folder = {}
    if args.private_folder is not None:
        # only once no process of the kernel remains: one still running may be using it
        folder["private_ipython_dir"] = (args.private_folder.remove() if sup.filter_unused(_UNUSED_WAIT)
                                       else "left: processes of the kernel remain")
    rt.emit(make_event("supervisor-stopped", outcome="success", layer="supervisor",
                       reason=f"exec supervisor stopped: {why}",
                       counts={**sup.all_counts(), **(custodian.counts if custodian else {})},
                       supervisor_pid=os.getpid(), kernel_pid=args.kernel_pid,
                       process={"pid": os.getpid()}, **folder))
    rt.pipeline.close(timeout=3.0)
    return 0


#: seconds to wait, once the loop has ended, for the last process of the kernel to be reaped
#: (after SIGTERM, where no signal scope keeps the kernel's death signal from reaching us)
_UNUSED_WAIT = 2.0


def start_runtime(args: SimpleNamespace, handed: dict[str, Any], author: str) -> Any:
    """The record of the supervisor (or its witness): the settings the launcher handed
    over, with a spool the kernel cannot reach."""
    from .. import runtime
    from .handover import take_settings

    settings = take_settings(handed, args.spool_dir)
    if settings is not None:
        return runtime.start(kernel_id=args.kernel_id, author=author, settings=settings)
    return runtime.start(_own_config(handed, args.spool_dir), kernel_id=args.kernel_id, author=author)


def _own_config(handed: dict[str, Any], spool_dir: Optional[str]) -> Any:
    """Void settings read as trusted configuration: traitlets checks each value,
    reports those it refuses and keeps their strict defaults (the environment's)."""
    from traitlets.config import Config

    config = Config()
    settings = handed.get("settings")
    config.KernelGuard = Config(settings if isinstance(settings, dict) else {})
    if spool_dir is not None:
        config.KernelGuard.spool_dir = spool_dir
    return config


def _receive_fds(control: Any, size: int) -> tuple[bytes, list[int]]:
    """A message and the descriptors it carries (SCM_RIGHTS), as ``socket.recv_fds``
    gives them, without ``socket.py``."""
    import struct

    from _socket import CMSG_LEN, SCM_RIGHTS, SOL_SOCKET

    msg, ancillary, _flags, _addr = control.recvmsg(size, CMSG_LEN(4))
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4]))
    return msg, fds


def _start_custodian(args: SimpleNamespace, rt: Any) -> Any:
    """Take the kernel's events from the socket it writes them to (custodian of the record)."""
    if args.events_fd is None:
        return None
    from _socket import socket

    from .custodian import Custodian

    numbering = rt.pipeline._numbering
    custodian = Custodian(socket(fileno=args.events_fd), rt.pipeline,
                          lambda: numbering.stream if numbering else None, rt.emit)
    custodian.start()
    return custodian


def _unhardened(args: SimpleNamespace, handed: dict[str, Any], why: str) -> int:
    """Say why it will not serve; keep what the kernel sent until the launcher has heard
    it and closed the control socket (then the kernel writes its own record)."""
    rt = start_runtime(args, handed, "supervisor")
    custodian = _start_custodian(args, rt)
    os.write(args.fd, why.encode())
    try:
        while os.read(args.fd, 4096):
            pass
    except OSError:
        pass
    if custodian is not None:
        custodian.stop()
    rt.pipeline.close(timeout=3.0)
    return 5


def _leave_kernel_session() -> None:
    """A session and process group of our own: no group signal of the kernel's
    (``killpg``, ``kill(0)``) reaches us, and no terminal the kernel controls can
    make us its foreground group (terminal signals bypass Landlock's scope)."""
    os.setsid()
    for signum in (_signal.SIGHUP, _signal.SIGQUIT, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU):
        _signal.signal(signum, _signal.SIG_IGN)


#: the supervisor's options (:func:`.supervisor_handle.supervisor_argv` writes them), each
#: followed by its value: --fd, the socket to the kernel (SOCK_SEQPACKET); --mode, enforce
#: (always EPERM) or audit (CONTINUE, not a security boundary); --profile, its name for
#: events; --events-fd, the socket on which the kernel hands its events to this custodian;
#: --spool-dir, a spool root outside the kernel's writable roots ('' keeps spools in memory).
#: The one flag, --scoped: started inside the launcher's outer signal-scoped domain.
_OPTIONS: dict[str, Callable[[str], Any]] = {
    "--fd": int, "--kernel-pid": int, "--mode": str, "--kernel-id": str, "--profile": str,
    "--events-fd": int, "--spool-dir": str, "--private-folder": str,
}


def _parse(argv: list[str]) -> SimpleNamespace:
    """The command line the launcher wrote; ValueError says what is wrong with it."""
    from .witness import read_options

    args = SimpleNamespace(fd=None, kernel_pid=None, mode=None, kernel_id=None, profile="", events_fd=None,
                           spool_dir=None, scoped=False, private_folder=None)
    read_options(argv, _OPTIONS, args, flags=("--scoped",))
    if args.fd is None or args.kernel_pid is None or args.mode not in ("enforce", "audit"):
        raise ValueError("--fd, --kernel-pid and --mode (enforce or audit) are required")
    if args.private_folder is not None:
        from .leftovers import parse

        args.private_folder = parse(args.private_folder)
        try:
            for fd in (args.private_folder.parent_fd, args.private_folder.folder_fd):
                os.set_inheritable(fd, False)  # the witness program has no use for them
        except OSError as exc:
            raise ValueError(f"--private-folder: descriptor not open ({exc.strerror})") from None
    return args


def _keep_lean() -> None:
    """Leave out what the supervisor does not need, for memory (docs/launcher.md,
    "Memory"): it serialises and hashes only its own few events (the kernel's lines
    it forwards as they came), so the interpreter's C JSON codec (``json_codec``) and
    its own SHA-256 serve; orjson (which imports dataclasses, uuid ...) and OpenSSL would
    cost every kernel's supervisor 3 MB and 1.2 MB.  What ``urllib.parse`` imports
    for rare cases is loaded on first use: ``ipaddress`` (0.4 MB) to check a
    bracketed host (a sink URL such as ``http://[::1]:4318/``, never a file
    sink's), ``warnings`` for its deprecated functions."""
    from ..events import digest

    sys.modules.setdefault("orjson", None)  # None: ``import orjson`` fails, the fallback serves
    for name in ("ipaddress", "warnings"):
        if name not in sys.modules:
            sys.modules[name] = _OnFirstUse(name)
    digest.prefer_builtin()


class _OnFirstUse(type(sys)):
    """A module imported when one of its attributes is first read (PEP 562's
    ``__getattr__``), standing in for it in ``sys.modules`` until then."""

    def __getattr__(self, attribute: str) -> Any:
        name = self.__name__
        if sys.is_finalizing():  # no imports then: the C warnings machinery takes "absent" for its defaults
            raise AttributeError(attribute)
        if sys.modules.get(name) is self:
            del sys.modules[name]
        module = __import__(name)
        return getattr(module, attribute)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``python -m kernel_guard.launch.supervisor``."""
    from . import handover, hardening, witness as witnesses

    _keep_lean()
    gc.disable()  # until a fork: no collection leaves holes in pages a forked witness shares
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"python -m kernel_guard.launch.supervisor (started by kernel_guard.launch): {exc}", file=sys.stderr)
        return 2
    # die with the kernel where its signal reaches us (no signal scope); if it is
    # already gone, the prctl came too late
    hardening.prctl(hardening.PR_SET_PDEATHSIG, _signal.SIGTERM)
    if os.getppid() != args.kernel_pid:
        return 3
    _leave_kernel_session()
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # interrupts are for the kernel's cells
    _signal.signal(_signal.SIGTERM, lambda *_: sys.exit(0))
    handover_text = os.environ.pop(handover.ENV, "")
    handed = handover.received(handover_text)
    # the witness program is started while exec still works: before the hardening
    started = witnesses.spawn_program(args, handed, handover_text)
    try:
        syscalls = handover.take_syscalls(handed)
        hardening.harden(handed.get("filter", ""))  # before a forked witness, which inherits it
    except Exception as exc:  # tell the launcher why, rather than a traceback
        if started is not None:
            os.write(started[1], b"stopped")  # not a loss: it never served
        return _unhardened(args, handed, f"cannot harden the supervisor: {type(exc).__name__}: {exc}")
    form = "program"
    if started is None:
        # before any thread exists, and before what only the supervisor needs is built:
        # the collector leaves the shared pages alone from here (gc.freeze)
        gc.freeze()
        started, form = witnesses.fork_witness(args, handed), "fork"
    gc.enable()
    witness, witness_pipe = started
    code = _serve(args, handed, syscalls, witness, form)
    try:
        os.write(witness_pipe, b"stopped")  # a clean end: the witness has nothing to record
    except BrokenPipeError:
        pass  # it is gone already
    return code


if __name__ == "__main__":
    sys.exit(main())
