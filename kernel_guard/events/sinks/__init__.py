"""Sinks: where events go.

A sink is three methods, like httpx's transports::

    emit(events)  write a batch (a list of events, oldest first); may raise
    flush()       push out anything buffered
    close()       release the connection or file

The pipeline calls them from its writer thread (or, in a forked child, from
the emitting thread), so a sink needs no locking of its own.  A sink that
talks to the network sets ``spooled = True``: the pipeline then gives it a
spool and a sender thread of its own (see :mod:`kernel_guard.events.pipeline`),
and ``emit`` may block and raise as the network does; it may also offer
``emit_lines(lines)`` to take the spool's JSON lines without decoding them.
:func:`open_sink` maps a URL scheme to a sink class; new schemes register in
``SCHEMES``.

The layers, the path of an event and of an exec, who may write what: docs/architecture.md.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ...exceptions import ConfigError, SinkError
from ..json_codec import loads
from ..schema import Event

__all__ = ["SCHEMES", "Sink", "SinkOptions", "describe_url", "file_path", "line_runs", "open_sink", "split_url",
           "validate_sink_url"]

#: what the path of a ``file:///`` URL may hold for ``urlsplit`` to read it as scheme
#: "file", no host, that path, and ``unquote`` to leave the path as it is: no "%",
#: "?", "#", space or control character.  Such a URL (every sink URL of the examples)
#: is read without ``urllib.parse``, which imports ``re`` and ``enum`` (0.5 MB for every
#: kernel's supervisor, docs/launcher.md "Memory"); tests/events/test_sink_urls.py
#: compares the two readings
_PLAIN_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-~+")


class _PlainFileURL:
    """What ``urlsplit`` makes of ``file:///`` and a plain path."""

    __slots__ = ("path",)
    scheme, netloc, query, fragment, hostname, port = "file", "", "", "", None, None

    def __init__(self, path: str) -> None:
        self.path = path


def split_url(url: str) -> Any:
    """``urllib.parse.urlsplit(url)``; a plain file URL's parts without importing it."""
    if url.startswith("file:///") and _PLAIN_PATH.issuperset(url[7:]):
        return _PlainFileURL(url[7:])
    from urllib.parse import urlsplit

    return urlsplit(url)


def file_path(url: str) -> str:
    """The path a ``file://`` URL names (``unquote`` of its path, as ``urlsplit`` reads it)."""
    parts = split_url(url)
    if parts.__class__ is _PlainFileURL:
        return parts.path
    from urllib.parse import unquote

    return unquote(parts.path)


class SinkOptions:
    """Settings of the network sinks (from ``KernelGuard``; see docs/sinks.md).

    A plain class, not a dataclass: the supervisor imports it, and importing
    ``dataclasses`` (with ``inspect``) costs a process 1.6 MB."""

    #: each setting -> its default
    DEFAULTS: Dict[str, Any] = {
        "syslog_facility": "user",
        "syslog_app_name": "kernel_guard",
        "syslog_max_message_bytes": 8192,
        "http_format": "ndjson",
        "http_gzip": False,
        "http_headers_file": "",
        "http_headers_env": "",
        "http_ca_bundle": "",
        "http_timeout": 10.0,
        "unsafe_http_skip_tls_verify": False,
    }
    __slots__ = tuple(DEFAULTS)

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.DEFAULTS))
        if unknown:
            raise TypeError(f"SinkOptions has no setting {unknown[0]!r}")
        for name, default in self.DEFAULTS.items():
            setattr(self, name, values.get(name, default))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.DEFAULTS)

    def __repr__(self) -> str:
        return "SinkOptions(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.DEFAULTS) + ")"


def line_runs(lines: List[bytes], limit: int) -> Iterator[Tuple[int, int]]:
    """``(start, stop)`` of consecutive runs of ``lines`` of at most ``limit`` bytes
    each, filled in order (a longer line is a run alone): for one write or message
    per run.  The sizes are summed and searched in C, not line by line in Python."""
    ends = list(accumulate(map(len, lines)))
    start = done = 0
    while start < len(lines):
        stop = max(bisect_right(ends, done + limit, start), start + 1)
        yield start, stop
        start, done = stop, ends[stop - 1]


class Sink:
    """Base class; subclasses implement :meth:`emit`."""

    #: the URL the sink was opened from, with any credentials removed
    url = ""
    #: network sink: written from a spool by a sender thread of its own
    spooled = False
    #: seconds a send must stay unchallenged by :meth:`check` before it counts as delivered
    confirm_after = 0.0

    def emit(self, events: List[Event]) -> None:
        """Write a batch of events, oldest first."""
        raise NotImplementedError

    def emit_lines(self, lines: List[bytes]) -> None:
        """Write events already serialised as JSON lines (the custodian forwards the
        kernel's as they came).  Default: parse and :meth:`emit`."""
        self.emit([loads(line) for line in lines])

    def flush(self) -> None:
        """Push out anything buffered (default: nothing is)."""

    def close(self) -> None:
        """Release files and connections (default: nothing to release)."""

    def after_fork(self) -> None:
        """Reset locks or buffers in a forked child (default: nothing to reset)."""

    def check(self) -> None:
        """Raise if what was sent may not have arrived (default: sends are final)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def _file(url: str, options: Optional[SinkOptions] = None) -> Sink:
    from .file import FileSink

    return FileSink.from_url(url)


def _stderr(url: str, options: Optional[SinkOptions] = None) -> Sink:
    from .stream import StderrSink

    return StderrSink()


def _logging(url: str, options: Optional[SinkOptions] = None) -> Sink:
    from .logger import LoggingSink

    return LoggingSink.from_url(url)


def _network(module: str) -> Callable[..., Sink]:
    """A factory that imports the network sink's module on first use.

    Their modules import ssl and http.client (about 50 ms): a kernel, and the
    supervisor, writing to a file must not start slower for sinks it never opens.
    """

    def factory(url: str, options: Optional[SinkOptions] = None) -> Sink:
        import importlib

        try:
            importlib.import_module(f".{module}", __name__)  # replaces this entry in SCHEMES
        except ImportError as exc:
            raise SinkError(f"sink {describe_url(url)} cannot be used: {exc} "
                            "(the Python installation lacks a module it needs, such as ssl)") from exc
        opener = SCHEMES[split_url(url).scheme]
        if opener is factory:
            raise SinkError(f"sink {describe_url(url)}: kernel_guard.events.sinks.{module} did not register its scheme")
        return opener(url) if options is None else opener(url, options)

    return factory


#: URL scheme -> factory ``(url, options=None)``.  syslog, http and otlp register
#: their own openers here when their modules are imported.
SCHEMES: Dict[str, Callable[..., Sink]] = {
    "file": _file,
    "stderr": _stderr,
    "logging": _logging,
    **{scheme: _network("syslog") for scheme in ("syslog+udp", "syslog+tcp", "syslog+unix")},
    **{scheme: _network("http") for scheme in ("http", "https")},
    **{scheme: _network("otlp") for scheme in ("otlp+http", "otlp+https")},
}

#: OTLP's other spellings, which kernel_guard does not speak: what to write instead
_OTLP_HINT = ("write otlp+http://host:4318/v1/logs or otlp+https://host:4318/v1/logs "
              "(OTLP/HTTP with JSON; gRPC is not supported)")


def describe_url(url: str) -> str:
    """The URL without user info or query (never log credentials)."""
    parts = split_url(url)
    netloc = parts.hostname or ""
    try:
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:  # not a number: leave it out rather than fail while reporting
        pass
    return f"{parts.scheme}://{netloc}{parts.path}"


def _check_url_text(url: str) -> None:
    """A URL is UTF-8 text without control characters: a byte that is not UTF-8 (the
    environment hands it over as a lone surrogate) or a NUL would fail later, in the
    spool's name or the socket call, where it could take the guard down with it."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"sink URL {url[:100]!r} holds a byte that is not UTF-8 text: write the URL in "
                          "UTF-8, with anything else percent-encoded (%FF)") from None
    bad = next((c for c in url if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ConfigError(f"sink URL {url[:100]!r} holds the control character {bad!r}: "
                          "remove it (percent-encode it in a path)")


def validate_sink_url(url: str) -> str:
    """Check a sink URL's form; return it, or raise ConfigError naming the fix (never
    anything else: a URL the parser cannot even split is a ConfigError too)."""
    if not isinstance(url, str):
        raise ConfigError(f"a sink URL must be text, not {type(url).__name__} {url!r}"[:200])
    _check_url_text(url)
    try:
        parts = split_url(url)
    except ValueError as exc:
        raise ConfigError(f"sink URL {url[:100]!r} cannot be parsed ({exc}): write scheme://host:port/path, "
                          "e.g. syslog+tcp://[::1]:514") from None
    try:
        parts.port  # raises ValueError on a port that is not a number or out of range
    except ValueError:
        raise ConfigError(f"sink {parts.scheme}://{parts.hostname or ''} has an invalid port: "
                          f"write {parts.scheme}://host:port") from None
    scheme = parts.scheme
    if scheme.startswith("otlp") and scheme not in SCHEMES:
        raise ConfigError(f"unknown sink scheme {scheme}:// in {describe_url(url)!r}: {_OTLP_HINT}")
    if scheme not in SCHEMES:
        known = ", ".join(sorted(f"{s}://" for s in SCHEMES))
        raise ConfigError(
            f"unknown sink scheme in {describe_url(url) or url!r}: use one of {known}"
        )
    if scheme == "file":
        if not parts.path.startswith("/") or parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"file sink {url!r} needs an absolute path: write file:///abs/path/events.jsonl"
            )
    if scheme in ("syslog+udp", "syslog+tcp", "http", "https", "otlp+http", "otlp+https"):
        example = f"{scheme}://host:4318/v1/logs" if scheme.startswith("otlp") else (
            f"{scheme}://host:port" + ("/path" if scheme.startswith("http") else ""))
        if parts.port == 0:
            raise ConfigError(f"sink {scheme}://{parts.hostname or ''}:0 has port 0, which no collector "
                              f"listens on: write {example}")
        if not parts.hostname:
            raise ConfigError(f"sink {scheme}:// needs a host: write {example}")
        if scheme.startswith("otlp") and parts.port is None:
            # no silent default: OTLP/HTTP collectors listen on 4318, a URL's default is 80/443
            raise ConfigError(f"sink {describe_url(url)} needs a port (an OpenTelemetry Collector "
                              f"listens on 4318): write {example}")
    if scheme == "syslog+unix" and (not parts.path.startswith("/") or parts.netloc not in ("", "localhost")):
        raise ConfigError("syslog+unix:// needs an absolute socket path: write syslog+unix:///dev/log")
    return url


def open_sink(url: str, options: Optional[SinkOptions] = None) -> Sink:
    """Open the sink for a URL (raises SinkError when it cannot be used)."""
    validate_sink_url(url)
    factory = SCHEMES[split_url(url).scheme]
    return factory(url) if options is None else factory(url, options)
