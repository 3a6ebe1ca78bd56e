"""The supervisor's records of the non-exec calls it refuses.

The kernel's filter sends these here only when they are aimed at what must
stay out of the notebook's reach (see ``seccomp_filter.supervisor_rules``):

* a signal, pidfd, rlimit or ``F_SETOWN`` aimed at the supervisor or its
  witness (``signal-denied``);
* a change of their scheduling: nice value, CPU affinity, scheduling policy,
  I/O priority (``sched-denied``), also by process group or by user, which
  would reach them too;
* a new seccomp listener (``listener-denied``): with one, the kernel could
  answer its own exec attempts;
* truncation by path (``truncate-denied``), which Landlock leaves alone.

Every one is refused with ``EPERM`` in every mode, the audit profile too.
What is read from the caller's memory only names the target in the record.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Optional

from .exec_decision import caller, recordable, target_path
from .notifications import NARROW_ABIS, AT_FDCWD, Notification, TargetMemory, signed

__all__ = ["protection_event", "scheduling_event", "truncation_event"]

#: where each protected syscall names its signal (argument index)
_SIGNAL_ARG = {"kill": 1, "tkill": 1, "tgkill": 2, "rt_sigqueueinfo": 1, "rt_tgsigqueueinfo": 2,
               "pidfd_send_signal": 1}
#: scheduling calls: (index of "which", or None when the target is argument 0)
SCHEDULING_SYSCALLS = {"setpriority": 0, "ioprio_set": 0, "sched_setaffinity": None,
                       "sched_setscheduler": None, "sched_setparam": None, "sched_setattr": None}
#: setpriority's and ioprio_set's "which": process, process group, user
_WHICH = {"setpriority": {0: "process", 1: "process group", 2: "user"},
          "ioprio_set": {1: "process", 2: "process group", 3: "user"}}
_SCHED_WHAT = {"setpriority": "changing the nice value of", "ioprio_set": "changing the I/O priority of",
               "sched_setaffinity": "changing the CPU affinity of",
               "sched_setscheduler": "changing the scheduling policy of",
               "sched_setparam": "changing the scheduling priority of",
               "sched_setattr": "changing the scheduling attributes of"}


def _comm(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return None


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


def _common(syscall: str, abi: str, kernel_pid: int, mode: str) -> dict[str, Any]:
    return {"technique": syscall, "syscall": syscall, "abi": abi, "mode": mode,
            "supervisor_pid": os.getpid(), "kernel_pid": kernel_pid}


def protection_event(notif: Notification, syscall: str, abi: str, kernel_pid: int, mode: str) -> dict:
    """``signal-denied``, ``sched-denied`` or ``listener-denied`` for a refused notification."""
    from ..events.schema import make_event

    if syscall in SCHEDULING_SYSCALLS:
        return scheduling_event(notif, syscall, abi, kernel_pid, mode)
    process = caller(notif.pid, name=_comm(notif.pid))
    fields = _common(syscall, abi, kernel_pid, mode)
    if syscall == "seccomp":
        return make_event("listener-denied", outcome="failure", layer="seccomp", process=process, **fields,
                          reason="a new seccomp notification listener was refused: with one, the kernel "
                                 "could answer its own exec attempts")
    arg0 = signed(notif.args[0], 4)
    if syscall == "pidfd_send_signal":
        target = _pidfd_target(notif.pid, arg0)
    elif syscall == "fcntl":
        target = signed(notif.args[2], 4)  # fcntl(fd, F_SETOWN, pid)
    else:
        target = arg0
    fields["target_pid"] = target
    if syscall in _SIGNAL_ARG:
        fields["signal"] = signed(notif.args[_SIGNAL_ARG[syscall]], 4)
    what = {"prlimit64": "changing the resource limits of", "pidfd_open": "opening a pidfd for",
            "fcntl": "F_SETOWN, directing SIGIO at"}.get(syscall, f"signal {fields.get('signal')} to")
    whom = "every process" if target == -1 else f"pid {target}"
    return make_event("signal-denied", outcome="failure", layer="seccomp", process=process, **fields,
                      reason=f"{syscall}: {what} {whom} refused: the exec supervisor and the processes "
                             "outside the kernel are out of the notebook's reach")


def scheduling_event(notif: Notification, syscall: str, abi: str, kernel_pid: int, mode: str) -> dict:
    """``sched-denied``: a change of the supervisor's (or witness's) scheduling."""
    from ..events.schema import make_event

    fields = _common(syscall, abi, kernel_pid, mode)
    which_arg = SCHEDULING_SYSCALLS[syscall]
    if which_arg is None:
        kind, target = "process", signed(notif.args[0], 4)
    else:
        kind = _WHICH[syscall].get(signed(notif.args[0], 4), "?")
        target = signed(notif.args[1], 4)
    fields.update(target_pid=target, target_kind=kind)
    whom = {"user": "every process of the user" if target == 0 else f"every process of uid {target}",
            "process group": f"process group {target}"}.get(kind, f"pid {target}")
    return make_event("sched-denied", outcome="failure", layer="seccomp",
                      process=caller(notif.pid, name=_comm(notif.pid)), **fields,
                      reason=f"{syscall}: {_SCHED_WHAT[syscall]} {whom} refused: it would reach the exec "
                             "supervisor, whose scheduling is out of the notebook's reach (change your own "
                             "process's with pid 0 instead)")


#: where each truncating call names its path (and folder fd, or None)
_TRUNCATE_PATH = {"truncate": (0, None), "truncate64": (0, None), "open": (0, None), "openat": (1, 0)}


def truncation_event(notif: Notification, syscall: str, abi: str, kernel_pid: int, mode: str) -> dict:
    """``truncate-denied`` for a file truncated by its path (the path as read, best effort)."""
    from ..events.schema import make_event
    from .exec_decision import _absolute

    path_arg, dir_arg = _TRUNCATE_PATH.get(syscall, (0, None))
    path = None
    try:
        with TargetMemory(notif.pid, 4 if abi in NARROW_ABIS else 8) as mem:
            raw = mem.string(notif.args[path_arg], 4096)
        dirfd = signed(notif.args[dir_arg], 4) if dir_arg is not None else AT_FDCWD
        path = _absolute(notif.pid, os.fsdecode(raw) if raw else None, dirfd)
    except OSError:
        pass
    path = recordable(target_path(notif.pid, path))
    how = "truncate(2)" if syscall.startswith("truncate") else f"{syscall} with O_TRUNC and no write access"
    return make_event("truncate-denied", outcome="failure", layer="seccomp", process=caller(notif.pid),
                      file={"path": path or "<unreadable>"}, technique=how, syscall=syscall, abi=abi, mode=mode,
                      supervisor_pid=os.getpid(), kernel_pid=kernel_pid,
                      reason=f"truncating {path or 'a file'} by its path ({how}) refused: open the file for "
                             "writing and truncate that (Landlock confines it to the writable roots)")
