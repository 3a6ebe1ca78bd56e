"""What a killed kernel leaves behind, removed by its supervisor: the private IPython folder.

The launcher gives each kernel a new IPython folder (:mod:`.start_folders`) that
the kernel removes at exit.  A kernel ended by SIGKILL (a restart that timed out,
the OOM killer) runs no exit handler, and the folder stayed in the temporary
folder.  The supervisor outlives the kernel and removes it instead, but decides
nothing on a path: the launcher opens the folder and its parent as soon as it
makes the folder, before any notebook code runs, and hands both descriptors over.

The supervisor removes only when no process uses the kernel's filter any more
(the listener hung up: the kernel and everything it started are gone), and only
the folder it was given, still under its name where it was made (same device and
inode): one a cell moved away or replaced is left alone.  It walks the folder
through descriptors, never following a link (``O_NOFOLLOW``, ``dir_fd``), so a
link planted inside removes the link, not what it names; and it removes no more
than the kernel itself could have (same uid; what a cell moved into the folder,
it could have removed).  Deeper than :data:`MAX_DEPTH` it stops and says so.
"""

from __future__ import annotations

import os

__all__ = ["MAX_DEPTH", "PrivateFolder", "parse"]

#: folders deeper than this are left (IPython's profile is three deep)
MAX_DEPTH = 32

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PrivateFolder:
    """The kernel's private IPython folder as descriptors: its parent's, its own, and its name."""

    def __init__(self, parent_fd: int, folder_fd: int, name: str) -> None:
        self.parent_fd, self.folder_fd, self.name = parent_fd, folder_fd, name

    @classmethod
    def hold(cls, path: str) -> "PrivateFolder":
        """Open a folder just made (and its parent), before any notebook code runs."""
        parent_fd = os.open(os.path.dirname(path) or ".", _DIRECTORY)
        try:
            folder_fd = os.open(os.path.basename(path), _DIRECTORY, dir_fd=parent_fd)
        except OSError:
            os.close(parent_fd)
            raise
        return cls(parent_fd, folder_fd, os.path.basename(path))

    def option(self) -> str:
        """The value of the supervisor's ``--private-folder`` option (:func:`parse` reads it)."""
        return f"{self.parent_fd},{self.folder_fd},{self.name}"

    def close(self) -> None:
        for fd in (self.parent_fd, self.folder_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def remove(self) -> str:
        """Remove the folder if it is still where it was made; say what was done."""
        try:
            held = os.fstat(self.folder_fd)
            if held.st_nlink == 0:
                return "removed by the kernel"
            try:
                named = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                return "left: moved away by the kernel"
            if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
                return "left: replaced under its name by the kernel"
            too_deep = _empty(self.folder_fd, 1)
            if too_deep:
                return f"left: folders deeper than {MAX_DEPTH} levels"
            os.rmdir(self.name, dir_fd=self.parent_fd)
        except OSError as exc:
            return f"left: {exc.strerror or exc}"
        finally:
            self.close()
        return "removed"


def _empty(folder_fd: int, depth: int) -> bool:
    """Remove what the folder open at ``folder_fd`` holds; True when something lay too deep."""
    too_deep = False
    with os.scandir(folder_fd) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in names:
        if not is_dir:
            os.unlink(name, dir_fd=folder_fd)
            continue
        if depth >= MAX_DEPTH:
            too_deep = True
            continue
        inner = os.open(name, _DIRECTORY, dir_fd=folder_fd)
        try:
            inner_too_deep = _empty(inner, depth + 1)
        finally:
            os.close(inner)
        too_deep = too_deep or inner_too_deep
        if not inner_too_deep:
            os.rmdir(name, dir_fd=folder_fd)
    return too_deep


def parse(value: str) -> PrivateFolder:
    """``PARENT_FD,FOLDER_FD,NAME`` as :meth:`PrivateFolder.option` wrote it; ValueError if not."""
    parent, _, rest = value.partition(",")
    folder, _, name = rest.partition(",")
    if not (parent.isdigit() and folder.isdigit()) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"--private-folder wants PARENT_FD,FOLDER_FD,NAME, not {value!r}")
    return PrivateFolder(int(parent), int(folder), name)
