"""The witness: records the supervisor's loss when the supervisor cannot.

Forked by the supervisor before it has any thread, it holds the read end of
a pipe whose write end only the supervisor has.  A clean stop writes
``stopped`` before the supervisor exits; anything else (SIGKILL, a crash)
closes the pipe without it, and the witness writes ``supervisor-lost`` with
the same sinks and settings (those the launcher handed over), from outside the
kernel, marked ``recorded_by: witness``.  It shares its process group, which
the kernel's filter keeps out of the notebook's reach.

It is hardened from its first instruction: the supervisor forks it once it is
non-dumpable and under its own filter (no exec, no ptrace), and both are
inherited across fork.  Its memory is the supervisor's at the fork, kept small
for it: an interpreter with the few modules the supervisor's start needs, not
its pipeline, custodian or loop; while it waits it touches none of it, and what
it needs to write the record is imported only once the supervisor is lost
(docs/launcher.md, "Memory").
"""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

# typing only for the type checker: the supervisor imports this before its witness is
# forked, and every module imported then stays in the witness's memory too
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["start_witness"]


def start_witness(args: SimpleNamespace, handed: dict[str, Any]) -> tuple[int, int]:
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
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
