"""What /proc tells of a process: its stat fields, its status lines, its seccomp listeners.

Read by the launcher, the supervisor, its custodian and ``kernel-guard status``;
a module of its own so that the supervisor reads them without importing the
filter builder.  Every reader answers empty once the process is gone.
"""

from __future__ import annotations

import os

__all__ = ["LISTENER_LINK", "listener_fds", "proc_stat", "proc_status"]

#: readlink(/proc/PID/fd/N) of a seccomp listener
LISTENER_LINK = "anon_inode:seccomp notify"


def proc_stat(pid: int | str = "self") -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (the state first, then the
    parent's pid ...; proc(5)'s field N is item N-3); empty once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def proc_status(pid: int | str = "self") -> dict[str, str]:
    """Seccomp-related and identity lines of /proc/PID/status (``Seccomp``, ``NoNewPrivs``,
    ``Tgid``, ``Uid`` ...); empty once the process is gone."""
    wanted = ("Seccomp", "Seccomp_filters", "NoNewPrivs", "PPid", "State", "Name", "Tgid", "Uid")
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in wanted:
                    out[key] = value.strip()
    except OSError:
        pass
    return out


def listener_fds(pid: int | str = "self") -> list[int]:
    """Open seccomp listener fds of a process (the kernel must hold none)."""
    found = []
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"{base}/{name}") == LISTENER_LINK:
                found.append(int(name))
        except OSError:
            continue
    return found
