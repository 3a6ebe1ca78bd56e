"""``file:///abs/path.jsonl``: one JSON line per event, appended.

Where a sink writes to a file: the path is opened without following a symlink,
without blocking (a FIFO with no reader must not hang a kernel's start), and
only when it names a regular file of this user's or root's.

Rotation as operators do it (logrotate's rename and create): at most a second
after the path names another file (or none), the sink opens the path anew, so
no event goes to a renamed or deleted file; ``SIGHUP`` to the writing process
(the exec supervisor under the launcher) asks the same at once
(:func:`reopen_all`).  ``copytruncate`` works without either, but loses the
lines written between its copy and its truncation (docs/operators-guide.md).

A full disk: a write that stops inside a line leaves a torn line; the next
write starts with a newline, so no event is glued to it; the error says how
many lines of the batch were kept (:attr:`SinkError.kept`), so losses are
counted exactly.
"""

from __future__ import annotations

import errno
import os
import stat
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import List

from ...exceptions import SinkError
from ..schema import Event, to_json_line
from . import Sink, file_path, line_runs

__all__ = ["FileSink", "reopen_all"]

# Whole lines per write(2): O_APPEND makes each write land at the end as one
# piece, so kernels sharing a file never interleave lines.
_CHUNK = 256 * 1024
#: seconds between looks at what the path names now
_LOOK_EVERY = 1.0
_generation = 0


def reopen_all() -> None:
    """Ask every file sink of this process to open its path anew before its next
    write (what a ``SIGHUP`` handler calls after logrotate renamed the file)."""
    global _generation
    _generation += 1


class FileSink(Sink):
    """Append events as JSON lines to a local file (created with mode 0600)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = "file://" + path
        self._fd = -1
        self._identity: tuple[int, int] = (0, 0)
        self._torn = False  # the last write stopped inside a line
        self._looked = time.monotonic()
        self._generation = _generation
        self._open()

    @classmethod
    def from_url(cls, url: str) -> "FileSink":
        """Open ``file:///abs/path``."""
        return cls(file_path(url))

    def _open(self) -> None:
        """Open (or create) the path: never following a link, never blocking, a regular file only."""
        path = self.path
        try:
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            # O_NOFOLLOW: in a shared folder another user's symlink must not redirect the record
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                         | os.O_NONBLOCK, 0o600)
        except ValueError as exc:  # a NUL (or %00) in the path: no file can have that name
            raise SinkError(f"cannot write events to {path!r}: {exc}. Remove it from the file sink's "
                            "path in KERNEL_GUARD_SINKS or c.KernelGuard.sinks.") from exc
        except OSError as exc:
            why = {errno.ELOOP: "it is a symbolic link, which the file sink does not follow",
                   errno.ENXIO: "it is a FIFO or socket, not a file"}.get(exc.errno or 0, exc.strerror)
            raise SinkError(f"cannot write events to {path}: {why}. "
                            "Choose a writable path in KERNEL_GUARD_SINKS or c.KernelGuard.sinks.") from exc
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "it is not a regular file (a FIFO, device or socket): the file sink writes files only"
        elif info.st_uid not in (os.geteuid(), 0):
            problem = (f"it belongs to uid {info.st_uid}, another user, who could read, truncate or delete "
                       "this kernel's events. Choose a file of your own or root's")
        if problem:
            os.close(fd)
            raise SinkError(f"cannot write events to {path}: {problem}.")
        os.set_blocking(fd, True)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)

    def _follow_rotation(self) -> None:
        """Open the path anew when it now names another file, or none (rotated away)."""
        now = time.monotonic()
        if self._generation == _generation and now - self._looked < _LOOK_EVERY:
            return
        self._looked, self._generation = now, _generation
        try:
            info = os.stat(self.path, follow_symlinks=False)
            same = (info.st_dev, info.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            self._torn = False  # a new file has no torn line
            self._open()

    def emit(self, events: List[Event]) -> None:
        """Append the batch in as few writes as whole lines allow."""
        self.emit_lines([to_json_line(event) for event in events])

    def emit_lines(self, lines: List[bytes]) -> None:
        """Append serialised events in as few writes as whole lines allow."""
        self._follow_rotation()
        kept = 0
        try:
            for start, stop in line_runs(lines, _CHUNK):
                kept += self._write(b"".join(lines[start:stop]), stop - start)
        except SinkError as exc:
            exc.kept += kept
            raise

    def _write(self, data: bytes, count: int) -> int:
        """One write(2) of ``count`` whole lines; returns ``count``, or raises a SinkError
        that says how many of them were kept (a short write only happens on a full disk)."""
        lead = b"\n" if self._torn else b""
        try:
            written = os.write(self._fd, lead + data)
        except OSError as exc:
            raise SinkError(f"cannot write to {self.path}: {exc.strerror}", kept=0) from exc
        if written == len(lead) + len(data):
            self._torn = False
            return count
        done = (lead + data)[:written]
        if written:
            self._torn = not done.endswith(b"\n")
        kept = done[len(lead):].count(b"\n") if written > len(lead) else 0
        raise SinkError(f"short write to {self.path}: {errno.errorcode.get(errno.ENOSPC)} (disk full?); "
                        f"{kept} of {count} lines kept, the next write starts a new line", kept=kept)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

