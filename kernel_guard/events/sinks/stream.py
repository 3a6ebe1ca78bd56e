"""``stderr://``: JSON lines on the kernel process's real standard error.

Jupyter servers copy a kernel's stderr into their log, and Kubernetes ships
that log, so this is the sink that works everywhere with no set-up.  ipykernel
redirects fd 2 into the notebook once the kernel runs; we write to the copy it
keeps of the original, so events never appear in a user's output area.
"""

from __future__ import annotations

import os
import sys
from typing import List

from ..schema import Event, to_json_line
from . import Sink


def _real_stderr_fd() -> int:
    """The fd of the process's original stderr, even under ipykernel."""
    original = getattr(sys.stderr, "_original_stdstream_copy", None)
    return original if isinstance(original, int) and original >= 0 else 2


class StderrSink(Sink):
    """Write each event as one line to the real stderr."""

    url = "stderr://"

    def __init__(self) -> None:
        self._fd = os.dup(_real_stderr_fd())
        os.set_inheritable(self._fd, False)

    def emit(self, events: List[Event]) -> None:
        self.emit_lines([to_json_line(e) for e in events])

    def emit_lines(self, lines: List[bytes]) -> None:
        data = b"".join(lines)
        while data:
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
