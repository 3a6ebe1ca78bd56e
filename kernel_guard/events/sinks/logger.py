"""``logging://logger.name``: hand events to Python's logging.

Refusals go out at WARNING, everything else at INFO; the record carries the
event as ``record.kernel_guard_event`` for structured handlers.
"""

from __future__ import annotations

import logging
from typing import List
from urllib.parse import urlsplit

from ..schema import Event, to_json
from . import Sink


class LoggingSink(Sink):
    """Log each event's JSON line to a named logger."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name or "kernel_guard")
        self.url = f"logging://{self.logger.name}"

    @classmethod
    def from_url(cls, url: str) -> "LoggingSink":
        """``logging://a.b`` names logger ``a.b``."""
        parts = urlsplit(url)
        return cls((parts.netloc + parts.path).strip("/").replace("/", "."))

    def emit(self, events: List[Event]) -> None:
        for event in events:
            level = logging.WARNING if event["event"].get("outcome") == "failure" else logging.INFO
            self.logger.log(level, "%s", to_json(event), extra={"kernel_guard_event": event})
