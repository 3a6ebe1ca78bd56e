"""Paths as the kernel will resolve them: relative to a directory fd, or to the working folder.

CPython's audit events for ``os.rename``/``os.replace``, ``os.link``,
``os.symlink``, ``os.mkdir``, ``os.remove``/``os.unlink``, ``os.rmdir``,
``os.chmod``, ``os.chown`` and ``os.utime`` carry their ``dir_fd`` arguments
(-1 when none was given).  A relative path is then relative to the folder that
fd names, which ``/proc/self/fd/N`` tells: :func:`resolve_at`.

The ``open`` event that ``os.open`` raises carries (path, None, flags) and no
``dir_fd``.  :func:`open_folders` lists every folder the process holds open, so
the policy can judge a relative path against each of them as well as against
the working folder.

Both answers describe the file descriptor table at the time of the event.
Another thread that replaces the fd (``os.dup2``) or opens a new folder between
the check and the system call is not seen: the in-process layer cannot make the
two one step.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["fd_path", "open_folders", "resolve_at"]

_FD_DIR = "/proc/self/fd"


def fd_path(fd: Any) -> str | None:
    """The absolute path that the open descriptor ``fd`` names, or None (not an
    open descriptor, not a file-system object, or a deleted file)."""
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
        return None
    try:
        target = os.readlink(f"{_FD_DIR}/{fd}")
    except OSError:
        return None
    if not target.startswith("/") or target.endswith(" (deleted)"):
        return None  # "socket:[…]", "pipe:[…]", "anon_inode:…", or unlinked
    return target


def resolve_at(path: str | bytes, dir_fd: Any) -> str | None:
    """``path`` made absolute as an ``*at()`` system call does: relative to the folder
    ``dir_fd`` names when one was given (an int >= 0), else to the working folder.

    No lexical clean-up (``a/../b`` stays): through a symlinked ``a`` the kernel
    does not arrive where ``os.path.normpath`` says, so resolving is left to
    ``realpath``.  None when ``dir_fd`` names no folder: the caller fails closed.
    """
    text = os.fsdecode(path)
    if text.startswith("/"):
        return text
    if isinstance(dir_fd, int) and not isinstance(dir_fd, bool) and dir_fd >= 0:
        folder = fd_path(dir_fd)
        return None if folder is None else os.path.join(folder, text)
    return os.path.join(os.getcwd(), text)


def open_folders() -> list[str]:
    """The working folder and every folder this process holds open as a descriptor:
    where a relative ``os.open`` path may be resolved, since its event has no ``dir_fd``."""
    folders = []
    try:
        folders.append(os.getcwd())
    except OSError:  # a deleted working folder: relative paths fail there anyway
        pass
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return folders
    for name in names:
        target = fd_path(int(name)) if name.isdigit() else None
        if target is not None and target not in folders and os.path.isdir(target):
            folders.append(target)
    return folders
