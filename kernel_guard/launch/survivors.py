"""Nothing of the kernel outlives it unnoticed: the processes left under its filter.

A cell can start a process that leaves the kernel's session and parentage
(``fork``, ``setsid``, ``fork`` again): it keeps the kernel's filter and
Landlock domain, and keeps the supervisor's listener in use after the kernel
has gone.  Which processes are the kernel's is a fact the kernel fixes, not
a guess from pids or sessions: the launcher puts itself in an *outer*
Landlock domain with the signal scope before it starts the supervisor, and
the kernel's own domain is nested inside it.  A process in a scoped domain
can signal only the processes of its domain and of the domains nested in it,
so from the supervisor, ``kill(pid, 0)`` succeeds exactly for the kernel, the
processes it started (whatever their session or parent) and the supervisor's
own witness; another kernel of the same user is in a domain of its own and
answers ``EPERM``.

They are asked to end first (SIGTERM) and killed (SIGKILL) only if they have
not within a few seconds: a resource tracker (loky's, as joblib uses it, or
multiprocessing's) ignores SIGTERM and removes the semaphores and shared-memory
folders its workers used once they have ended, as it would after a plain
kernel's end; killed with them, it leaves those in ``/dev/shm``.

Without the signal scope (Landlock ABI < 6) there is no such fact: the
supervisor then says that processes remain, without naming them, and stays
until they end.
"""

from __future__ import annotations

import os
import _signal  # the C module: signal.py makes enums of every constant (its import and enum's: 0.25 MB)
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any

from .exec_decision import exe_of, recordable
from .procfs import proc_stat

__all__ = ["describe", "end", "find", "running"]


def find(exclude: set[int]) -> list[int]:
    """The live (not zombie) processes this process may signal, less ``exclude``.
    Meaningful only inside a signal-scoped Landlock domain (see the module's text)."""
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and int(name) not in exclude and running(int(name))]


def running(pid: int) -> bool:
    """Whether ``pid`` lives (not a zombie) and this process may signal it."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    stat = proc_stat(pid)
    return bool(stat) and stat[0] not in (b"Z", b"X")


def describe(pid: int) -> dict[str, Any]:
    """ECS ``process`` fields of a survivor, read before it is ended."""
    out: dict[str, Any] = {"pid": pid}
    executable = exe_of(pid)
    if executable is not None:
        out["executable"] = recordable(executable)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = [os.fsdecode(a) for a in fh.read(8192).split(b"\0") if a]
        if args:
            from ..events.processors import redact_argv

            out["args"] = redact_argv([recordable(a) or "" for a in args[:64]])
    except OSError:
        pass
    stat = proc_stat(pid)
    if len(stat) > 3:
        out["parent"] = {"pid": int(stat[1])}
        out["session_leader"] = int(stat[3]) == pid
    return out


def end(pids: list[int], signum: int = _signal.SIGKILL) -> list[int]:
    """Send ``signum`` to each; return the pids that could not be signalled."""
    failed = []
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
        except OSError:
            failed.append(pid)
    return failed
