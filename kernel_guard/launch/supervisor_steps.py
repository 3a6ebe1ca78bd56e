"""The launcher's side of the supervisor: start it, hand it the record, watch it.

Step 2 of the launch (:mod:`.launcher`): the outer signal-scoped domain the
supervisor shares with the kernel, the supervisor's process (spawned early, its
start overlapping the warm-up), the kernel's record handed to it as custodian,
the spool it may use, and the callbacks that report its loss, stall and
resumption on stderr and in the record.  The handle itself is
:mod:`.supervisor_handle`; the supervisor process, :mod:`.supervisor`.
See docs/architecture.md.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

__all__: list[str] = []


def _outer_domain() -> bool:
    """A signal-scoped Landlock domain around the kernel and its supervisor (the
    kernel's own domain nests inside it): from the supervisor, the processes it can
    signal are then exactly the kernel's, so those a cell leaves running when the
    kernel ends can be found and ended (survivors.py).  False where it cannot be."""
    from . import landlock, seccomp_filter

    try:
        seccomp_filter.set_no_new_privs()  # Landlock needs it; the filter will too
        return landlock.restrict_outer()
    except OSError:
        return False


def _spawn_supervisor(guard: Any, kernel_id: Optional[str], profile: Any, scoped: bool = False,
                      private: Any = None) -> Any:
    """Start the supervisor's process in step 1, once the environment is scrubbed and
    before the kernel's domain and the guard's threads exist: its interpreter starts
    while the warm-up runs; step 2 waits until it is ready.
    Returns the pending handle, or the exception that prevented the start (raised in step 2)."""
    from . import handover, supervisor_handle

    env = dict(os.environ)
    env["KERNEL_GUARD_SINKS"] = ",".join(guard.sinks)
    env["KERNEL_GUARD_MODE"] = guard.mode
    # the record's settings as this process's guard took them (trusted sources, validated:
    # a command line's list arrives as text, "a,b", and must not be read as one sink; a
    # value the guard refused, and reported, is not handed on), its own filter and the
    # numbers of the calls it answers, compiled here where libseccomp is loaded anyway;
    # in its environment, which only it can read (handover.py)
    env[handover.ENV] = handover.hand_over(guard)
    try:
        return supervisor_handle.spawn(profile.mode, kernel_id, profile.name, env, _supervisor_spool(guard, profile),
                                       scoped, private)
    except Exception as exc:
        return exc


def _hand_record_to_custodian(rt: Any, pending: Any) -> bool:
    """The kernel's sinks: the custodian (its supervisor) when one was started, else
    its own, opened now, before the Landlock domain (their files may lie outside it).
    True when the custodian keeps the record."""
    from .. import runtime
    from .custodian_sink import CustodianSink

    def own_sinks() -> list:
        sinks, failures = runtime.guard_sinks(rt.guard)
        runtime.report_sink_failures(rt.pipeline, failures)
        return sinks

    events = getattr(pending, "events", None)
    if events is not None:
        rt.pipeline.set_sinks([CustodianSink(events, own_sinks)])
        return True
    rt.pipeline.set_sinks(own_sinks())
    return False


def _supervisor_spool(guard: Any, profile: Any) -> Optional[str]:
    """The spool root the supervisor may use: the configured one when it lies outside
    the kernel's writable roots, else ``""`` (memory only: a spool the kernel could
    write, it could empty)."""
    root = guard.spool_dir
    networked = any(url.split(":", 1)[0] not in ("file", "stderr", "logging") for url in guard.sinks)
    if not root or profile.landlock is None or not networked:
        return root
    writable, _ = profile.landlock.expand(os.path.expanduser("~"), os.getcwd(), sys.executable)
    real = os.path.realpath(root)
    for folder in writable:
        top = os.path.realpath(folder)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            print(f"kernel_guard: the spool folder {root} lies in the kernel's writable roots: the supervisor "
                  "keeps undelivered events in memory (set KernelGuard.spool_dir to a folder outside them)",
                  file=sys.stderr)
            return ""
    return root


def _start_supervisor(pending: Any, timeout: float) -> Any:
    """Step 2: the supervisor spawned in step 1, once it is ready."""
    from . import supervisor_handle

    if isinstance(pending, BaseException):
        raise pending
    return supervisor_handle.wait_ready(pending, timeout)


def _allow_supervisor_to_read(pid: int) -> None:
    """Under Yama ptrace_scope=1 only ancestors may read a process's memory; the
    supervisor is our child.  PR_SET_PTRACER names it, here and in every Python-level
    fork (children of native forks stay unreadable there: recorded as such)."""
    from . import seccomp_filter

    if not seccomp_filter.allow_ptracer(pid):
        return  # no Yama: nothing to do
    prctl = seccomp_filter._libc().prctl  # looked up now: no ctypes events in the child
    os.register_at_fork(after_in_child=lambda: prctl(seccomp_filter.PR_SET_PTRACER, pid, 0, 0, 0))


def _on_supervisor_lost(handle: Any) -> None:
    from .. import runtime, status
    from ..events import pipeline
    from ..events.schema import make_event

    reason = (f"the exec supervisor (pid {handle.pid}) {handle.lost_reason}: exec stays blocked for good "
              "(ENOSYS; the filter refuses any new listener), but attempts are no longer recorded from "
              "outside the kernel")
    status.note_supervisor_lost(reason)
    pipeline._stderr_line(f"kernel_guard: {reason}")
    runtime.emit(make_event("supervisor-lost", outcome="failure", layer="supervisor", reason=reason,
                            supervisor_pid=handle.pid, exit_status=handle.exit_status))


def _on_supervisor_stalled(handle: Any, seconds: float) -> None:
    from .. import runtime
    from ..events import pipeline
    from ..events.schema import make_event

    reason = (f"the exec supervisor (pid {handle.pid}) has been stopped for {seconds:.0f} s: every exec waits "
              "until it resumes (none is let through), and this kernel's events queue behind it")
    pipeline._stderr_line(f"kernel_guard: {reason}")
    runtime.emit(make_event("supervisor-stalled", outcome="failure", layer="supervisor", reason=reason,
                            supervisor_pid=handle.pid, stopped_s=round(seconds, 1)))


def _on_supervisor_resumed(handle: Any, seconds: float) -> None:
    from .. import runtime
    from ..events import pipeline
    from ..events.schema import make_event

    reason = f"the exec supervisor (pid {handle.pid}) runs again after {seconds:.1f} s stopped"
    pipeline._stderr_line(f"kernel_guard: {reason}")
    runtime.emit(make_event("supervisor-resumed", outcome="success", layer="supervisor", reason=reason,
                            supervisor_pid=handle.pid, stopped_s=round(seconds, 1)))


def _exclude_from_children(kernel: Any, pid: int) -> None:
    """ipykernel terminates its process-group children at shutdown; the supervisor
    leaves by itself when the kernel exits (PDEATHSIG, listener hang-up)."""
    original = kernel._process_children

    def _process_children() -> list:
        return [p for p in original() if p.pid != pid]

    kernel._process_children = _process_children
