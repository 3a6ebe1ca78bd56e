"""The witness: records the supervisor's loss when the supervisor cannot.

Forked by the supervisor before it has any thread, it holds the read end of
a pipe whose write end only the supervisor has.  A clean stop writes
``stopped`` before the supervisor exits; anything else (SIGKILL, a crash)
closes the pipe without it, and the witness writes ``supervisor-lost`` with
the same sinks, from outside the kernel, marked ``recorded_by: witness``.
It hardens itself as the supervisor does (non-dumpable, no exec) and shares
its process group, which the kernel's filter keeps out of the notebook's
reach.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Callable

__all__ = ["start_witness"]


def start_witness(args: argparse.Namespace, harden: Callable[[], None]) -> tuple[int, int]:
    """Fork the witness; return its pid and the pipe end the supervisor keeps."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.close(args.fd)  # the kernel must see the supervisor's end close when it dies
        if args.events_fd is not None:
            os.close(args.events_fd)  # and its events socket: then it writes its own record
        try:
            code = _witness(read_end, args, harden)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(read_end)
    return pid, write_end


def _witness(read_end: int, args: argparse.Namespace, harden: Callable[[], None]) -> int:
    """Wait for the supervisor to end; unless it ended cleanly, record the loss."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    supervisor_pid = os.getppid()
    harden()
    said = b""
    while chunk := os.read(read_end, 64):
        said += chunk
    if said == b"stopped":
        return 0
    from .. import runtime
    from ..events.schema import make_event

    rt = runtime.start(kernel_id=args.kernel_id, author="witness")
    rt.emit(make_event("supervisor-lost", outcome="failure", layer="supervisor",
                       reason=f"the exec supervisor (pid {supervisor_pid}) ended without stopping cleanly "
                              "(killed or crashed); recorded by its witness. Exec stays blocked for good "
                              "(ENOSYS; the filter refuses any new listener), but attempts are no longer "
                              "recorded from outside the kernel",
                       supervisor_pid=supervisor_pid, kernel_pid=args.kernel_pid, recorded_by="witness",
                       process={"pid": os.getpid()}))
    rt.pipeline.close(timeout=5.0)
    return 0
