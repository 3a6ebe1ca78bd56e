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
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SinkError(
                f"cannot write events to {path}: {exc.strerror}. "
                "Choose a writable path in KERNEL_GUARD_SINKS or c.KernelGuard.sinks."
            ) from exc

    @classmethod
    def from_url(cls, url: str) -> "FileSink":
        """Open ``file:///abs/path``."""
        return cls(unquote(urlsplit(url).path))

    def emit(self, events: List[Event]) -> None:
        """Append the batch in as few writes as whole lines allow."""
        buf: list[bytes] = []
        size = 0
        for event in events:
            line = to_json_line(event)
            if size + len(line) > _CHUNK and buf:
                self._write(b"".join(buf))
                buf, size = [], 0
            buf.append(line)
            size += len(line)
        if buf:
            self._write(b"".join(buf))

    def _write(self, data: bytes) -> None:
        """One write(2); a short write only happens on a full disk."""
        written = os.write(self._fd, data)
        if written != len(data):
            raise SinkError(f"short write to {self.path}: {errno.errorcode.get(errno.ENOSPC)} (disk full?)")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
