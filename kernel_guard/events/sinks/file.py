"""``file:///abs/path.jsonl``: one JSON line per event, appended."""

from __future__ import annotations

import errno
import os
from typing import List
from urllib.parse import unquote, urlsplit

from ...exceptions import SinkError
from ..schema import Event, to_json_line
from . import Sink

# Whole lines per write(2): O_APPEND makes each write land at the end as one
# piece, so kernels sharing a file never interleave lines.
_CHUNK = 256 * 1024


class FileSink(Sink):
    """Append events as JSON lines to a local file (created with mode 0600)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = "file://" + path
        try:
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            # O_NOFOLLOW: in a shared folder another user's symlink must not redirect the record
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            why = ("it is a symbolic link, which the file sink does not follow" if exc.errno == errno.ELOOP
                   else exc.strerror)
            raise SinkError(
                f"cannot write events to {path}: {why}. "
                "Choose a writable path in KERNEL_GUARD_SINKS or c.KernelGuard.sinks."
            ) from exc
        owner = os.fstat(self._fd).st_uid
        if owner not in (os.geteuid(), 0):
            os.close(self._fd)
            raise SinkError(f"cannot write events to {path}: it belongs to uid {owner}, another user, who could "
                            "read, truncate or delete this kernel's events. Choose a file of your own or root's.")

    @classmethod
    def from_url(cls, url: str) -> "FileSink":
        """Open ``file:///abs/path``."""
        return cls(unquote(urlsplit(url).path))

    def emit(self, events: List[Event]) -> None:
        """Append the batch in as few writes as whole lines allow."""
        self.emit_lines([to_json_line(event) for event in events])

    def emit_lines(self, lines: List[bytes]) -> None:
        """Append serialised events in as few writes as whole lines allow."""
        buf: list[bytes] = []
        size = 0
        for line in lines:
            if size + len(line) > _CHUNK and buf:
                self._write(b"".join(buf))
                buf, size = [], 0
            buf.append(line)
            size += len(line)
        if buf:
            self._write(b"".join(buf))

    def _write(self, data: bytes) -> None:
        """One write(2); a short write only happens on a full disk.  Then the torn line
        is ended, so the next event starts a line of its own instead of joining it."""
        written = os.write(self._fd, data)
        if written != len(data):
            try:
                os.write(self._fd, b"\n")
            except OSError:
                pass
            raise SinkError(f"short write to {self.path}: {errno.errorcode.get(errno.ENOSPC)} (disk full?); "
                            "the torn line was ended")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
