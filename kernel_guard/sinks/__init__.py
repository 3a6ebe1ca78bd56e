"""Sinks: where events go.

A sink is three methods, like httpx's transports::

    emit(events)  write a batch (a list of events, oldest first); may raise
    flush()       push out anything buffered
    close()       release the connection or file

The pipeline calls them from its writer thread (or, in a forked child, from
the emitting thread), so a sink needs no locking of its own.  :func:`open_sink`
maps a URL scheme to a sink class; new schemes register in ``SCHEMES``.
"""

from __future__ import annotations

from typing import Callable, Dict, List
from urllib.parse import urlsplit

from ..events import Event
from ..exceptions import ConfigError

__all__ = ["SCHEMES", "Sink", "describe_url", "open_sink", "validate_sink_url"]


class Sink:
    """Base class; subclasses implement :meth:`emit`."""

    #: the URL the sink was opened from, with any credentials removed
    url = ""

    def emit(self, events: List[Event]) -> None:
        """Write a batch of events, oldest first."""
        raise NotImplementedError

    def flush(self) -> None:
        """Push out anything buffered (default: nothing is)."""

    def close(self) -> None:
        """Release files and connections (default: nothing to release)."""

    def after_fork(self) -> None:
        """Reset locks or buffers in a forked child (default: nothing to reset)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def _file(url: str) -> Sink:
    from .file import FileSink

    return FileSink.from_url(url)


def _stderr(url: str) -> Sink:
    from .stream import StderrSink

    return StderrSink()


def _logging(url: str) -> Sink:
    from .logger import LoggingSink

    return LoggingSink.from_url(url)


#: URL scheme -> factory.  Later schemes (syslog, http) register here.
SCHEMES: Dict[str, Callable[[str], Sink]] = {
    "file": _file,
    "stderr": _stderr,
    "logging": _logging,
}


def _optional_schemes() -> None:
    """Register the network sinks when their modules are present."""
    try:
        from . import syslog, http  # noqa: F401  (they register themselves)
    except ImportError:
        pass


def describe_url(url: str) -> str:
    """The URL without user info or query (never log credentials)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def validate_sink_url(url: str) -> str:
    """Check a sink URL's form; return it, or raise ConfigError naming the fix."""
    _optional_schemes()
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        known = ", ".join(sorted(f"{s}://" for s in SCHEMES))
        raise ConfigError(
            f"unknown sink scheme in {describe_url(url) or url!r}: use one of {known}"
        )
    if scheme == "file":
        path = urlsplit(url).path
        if not path.startswith("/") or urlsplit(url).netloc not in ("", "localhost"):
            raise ConfigError(
                f"file sink {url!r} needs an absolute path: write file:///abs/path/events.jsonl"
            )
    return url


def open_sink(url: str) -> Sink:
    """Open the sink for a URL (raises SinkError when it cannot be used)."""
    validate_sink_url(url)
    return SCHEMES[urlsplit(url).scheme](url)
