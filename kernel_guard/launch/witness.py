"""The witness: records the supervisor's loss when the supervisor cannot.

It holds the read end of a pipe whose write end only the supervisor has.  A
clean stop writes ``stopped`` before the supervisor exits; anything else
(SIGKILL, a crash) closes the pipe without it, and the loss is recorded as
``supervisor-lost`` with the same sinks and settings (those the launcher
handed over), from outside the kernel, marked ``recorded_by: witness``.  It
shares the supervisor's process group, which the kernel's filter keeps out of
the notebook's reach.

Two forms, the first wherever the package was built with a C compiler:

* **the witness program** (``kernel-guard-witness``, ``witness.c``): started
  by the supervisor before it hardens itself (:func:`spawn_program`), it makes
  itself non-dumpable, loads the filter the launcher compiled for it (no exec
  but ``execveat`` of the interpreter it was handed) and sleeps on the pipe: a
  few pages of memory.  On a loss it replaces itself, same pid, with the
  recorder: this module's :func:`main`, which hardens itself as the supervisor
  does and writes the record.
* **a fork of the supervisor** (:func:`fork_witness`), hardened from its first
  instruction (the supervisor forks it once non-dumpable and under its own
  filter), which writes the record itself.  Its memory is the supervisor's at
  the fork, kept small for it: an interpreter with the few modules the
  supervisor's start needs; but every page the supervisor writes afterwards
  becomes a private copy of the witness's (about 4.5 MB).
"""

from __future__ import annotations

import os
import _signal  # the C module: signal.py makes enums of every constant (its import and enum's: 0.25 MB)
import sys
from types import SimpleNamespace

# typing only for the type checker: the supervisor imports this before its witness is
# forked, and every module imported then stays in the witness's memory too
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

__all__ = ["PROGRAM", "fork_witness", "main", "program", "read_options", "spawn_program"]

#: the witness program, built next to this module (optional, like the native modules)
PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel-guard-witness")


def program() -> Optional[str]:
    """The witness program's path, or None where it was not built."""
    return PROGRAM if os.access(PROGRAM, os.X_OK) else None


# -- the witness program ------------------------------------------------------------

def spawn_program(args: SimpleNamespace, handed: dict[str, Any], handover_text: str) -> Optional[tuple[int, int]]:
    """Start the witness program (exec must still work: before the supervisor hardens);
    its pid and the pipe end the supervisor keeps, or None when there is no program,
    no filter handed over for it, or it cannot be started (the supervisor then forks one)."""
    path, (number, _, code) = program(), str(handed.get("witness_filter") or "").partition(" ")
    if path is None or number in ("", "error") or not code:
        return None
    from .handover import ENV
    from .hardening import WITNESS_EXEC_AT

    try:
        # the interpreter the OS runs as this process, not a path the notebook could shape
        interpreter = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    # dup2 onto itself clears close-on-exec in the child only; the kernel's sockets stay here
    actions = [(os.POSIX_SPAWN_DUP2, read_end, read_end), (os.POSIX_SPAWN_DUP2, interpreter, interpreter)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in (args.fd, args.events_fd) if fd is not None]
    argv = [path, str(read_end), str(interpreter), str(WITNESS_EXEC_AT), code, "--", *recorder_argv(args)]
    try:
        pid = os.posix_spawn(path, argv, {**os.environ, ENV: handover_text}, file_actions=actions)
    except OSError:
        os.close(write_end)
        return None
    finally:
        os.close(read_end)
        os.close(interpreter)
    return pid, write_end


def recorder_argv(args: SimpleNamespace) -> list[str]:
    """The command line the witness program starts on a loss (pure, for tests)."""
    argv = [sys.executable, "-I", "-m", "kernel_guard.launch.witness",
            "--supervisor-pid", str(os.getpid()), "--kernel-pid", str(args.kernel_pid)]
    if args.kernel_id:
        argv += ["--kernel-id", args.kernel_id]
    if args.spool_dir is not None:
        argv += ["--spool-dir", args.spool_dir]
    return argv


_OPTIONS = {"--supervisor-pid": int, "--kernel-pid": int, "--kernel-id": str, "--spool-dir": str}


def _parse(argv: list[str]) -> SimpleNamespace:
    """The recorder's command line (:func:`recorder_argv`); ValueError says what is wrong."""
    args = SimpleNamespace(supervisor_pid=None, kernel_pid=None, kernel_id=None, spool_dir=None)
    read_options(argv, _OPTIONS, args)
    if args.supervisor_pid is None or args.kernel_pid is None:
        raise ValueError("--supervisor-pid and --kernel-pid are required")
    return args


def read_options(argv: list[str], options: dict[str, Any], args: SimpleNamespace, flags: tuple = ()) -> None:
    """Set on ``args`` each ``--name value`` of ``argv`` (converted by ``options[--name]``) and
    each flag (True); ValueError names an unknown option or one without its value.
    (Not argparse: it and gettext would stay in the supervisor's memory for its whole life.)"""
    words = iter(argv)
    for word in words:
        if word in flags:
            setattr(args, word[2:].replace("-", "_"), True)
            continue
        convert, value = options.get(word), next(words, None)
        if convert is None or value is None:
            raise ValueError(f"unknown option, or no value after it: {word!r}")
        setattr(args, word[2:].replace("-", "_"), convert(value))


def main(argv: Optional[list[str]] = None) -> int:
    """The recorder, ``python -m kernel_guard.launch.witness`` (the witness program
    becomes it on a loss): hardened as the supervisor is, it records the loss."""
    from . import handover, hardening

    hardening.prctl(hardening.PR_SET_DUMPABLE, 0)
    handed = handover.received(os.environ.pop(handover.ENV, ""))
    try:
        hardening.harden(handed.get("filter", ""))
    except (OSError, ValueError) as exc:
        # the witness program's filter stays (no exec but of a descriptor closed at
        # this exec): the loss is still worth its record
        print(f"kernel_guard witness: recording without the supervisor's filter: {exc}", file=sys.stderr)
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"python -m kernel_guard.launch.witness (started by kernel-guard-witness): {exc}", file=sys.stderr)
        return 2
    _record_loss(args.supervisor_pid, args, handed)
    return 0


# -- the forked witness ---------------------------------------------------------------

def fork_witness(args: SimpleNamespace, handed: dict[str, Any]) -> tuple[int, int]:
    """Fork the witness; return its pid and the pipe end the supervisor keeps.
    ``handed``: what the launcher handed the supervisor (its record's settings)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.close(args.fd)  # the kernel must see the supervisor's end close when it dies
        if args.events_fd is not None:
            os.close(args.events_fd)  # and its events socket: then it writes its own record
        try:
            code = _witness(read_end, args, handed)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(read_end)
    return pid, write_end


def _witness(read_end: int, args: SimpleNamespace, handed: dict[str, Any]) -> int:
    """Wait for the supervisor to end; unless it ended cleanly, record the loss."""
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    supervisor_pid = os.getppid()
    said = b""
    while chunk := os.read(read_end, 64):
        said += chunk
    if said == b"stopped":
        return 0
    _record_loss(supervisor_pid, args, handed)
    return 0


def _record_loss(supervisor_pid: int, args: SimpleNamespace, handed: dict[str, Any]) -> None:
    """``supervisor-lost``, through the sinks the supervisor used."""
    from ..events.schema import make_event
    from .supervisor import start_runtime

    rt = start_runtime(args, handed, "witness")
    rt.emit(make_event("supervisor-lost", outcome="failure", layer="supervisor",
                       reason=f"the exec supervisor (pid {supervisor_pid}) ended without stopping cleanly "
                              "(killed or crashed); recorded by its witness. Exec stays blocked for good "
                              "(ENOSYS; the filter refuses any new listener), but attempts are no longer "
                              "recorded from outside the kernel",
                       supervisor_pid=supervisor_pid, kernel_pid=args.kernel_pid, recorded_by="witness",
                       process={"pid": os.getpid()}))
    rt.pipeline.close(timeout=5.0)


if __name__ == "__main__":
    sys.exit(main())
