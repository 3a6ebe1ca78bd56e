"""``http://`` and ``https://``: batches of events POSTed to a collector.

The body is NDJSON (one event per line, ``application/x-ndjson``) or, with
``http_format = "json"``, one JSON array (``application/json``, what Fluent
Bit's ``http`` input reads); optionally gzip-compressed.  Any 2xx answer
means the batch was taken.  Anything else raises, and the pipeline's sender
keeps the batch in the spool and retries with backoff and jitter, honouring
``Retry-After`` on 429 and 503.  A batch the collector refuses as such (400,
413, 422) is split in halves to find the event it cannot take; a single
event it still refuses is counted as lost, so one bad event never blocks
the rest.

Headers (a bearer token, an API key) come from a file or an environment
variable named in the configuration, never from the URL into a log: the
sink's ``url`` is printed without user info or query.  The file is read
again on every new connection, so a rotated token is picked up.  TLS
certificates are verified unless the trusted configuration says
``unsafe_http_skip_tls_verify``.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import http.client
import os
import ssl
import time
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from ..._version import __version__
from ...exceptions import SinkError
from ..schema import Event, to_json_line
from . import SCHEMES, Sink, SinkOptions, describe_url

__all__ = ["HttpSink", "read_headers"]

_SPLIT_STATUSES = frozenset({400, 413, 422})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
#: the most of a collector's answer kept (for its error message)
_ANSWER_MAX = 64 * 1024


def read_headers(text: str, source: str) -> Dict[str, str]:
    """Parse ``Name: value`` lines (blank lines and ``#`` comments ignored)."""
    headers: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or any(c in name for c in " \t"):
            # never echo the line: it may hold a secret
            raise SinkError(f"{source}, line {number}: expected 'Name: value' (e.g. 'Authorization: Bearer ...')")
        headers[name] = value.strip()
    return headers


class HttpSink(Sink):
    """POST batches of events to an HTTP(S) collector."""

    spooled = True
    #: answers whose Retry-After header sets the wait before the next attempt
    retry_after_statuses = _RETRY_AFTER_STATUSES

    def __init__(self, url: str, options: Optional[SinkOptions] = None) -> None:
        self.options = options or SinkOptions()
        parts = urlsplit(url)
        self.url = describe_url(url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._tls else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._basic = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._basic = "Basic " + base64.b64encode(pair.encode()).decode()
        self._json_array = self.options.http_format == "json"
        self._conn: Optional[http.client.HTTPConnection] = None
        self._headers: Dict[str, str] = {}
        # A missing or malformed headers file or CA bundle is not raised here:
        # the sink opens, its events wait in the spool, and each attempt reports
        # the problem (sink-error) until it is fixed -- a secret mounted late
        # must not cost the kernel's events.
        self.retry_after: Optional[float] = None
        self.rejected = 0  # events the collector will never take (counted as lost)
        self.rejected_reason = ""

    @classmethod
    def from_url(cls, url: str, options: Optional[SinkOptions] = None) -> "HttpSink":
        return cls(url, options)

    def _ssl_context(self) -> ssl.SSLContext:
        cafile = self.options.http_ca_bundle or None
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(f"cannot load the CA bundle {cafile}: {exc}; "
                            "set c.KernelGuard.http_ca_bundle to a PEM file") from exc
        if self.options.unsafe_http_skip_tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _load_headers(self) -> Dict[str, str]:
        """Static headers, then the configured file and environment variable."""
        content = "application/json" if self._json_array else "application/x-ndjson"
        headers = {"Content-Type": content, "User-Agent": f"kernel_guard/{__version__}"}
        if self._basic:
            headers["Authorization"] = self._basic
        path = self.options.http_headers_file
        if path:
            try:
                with open(path, encoding="utf-8") as fh:
                    headers.update(read_headers(fh.read(), f"headers file {path}"))
            except OSError as exc:
                raise SinkError(f"cannot read the HTTP headers file {path}: {exc.strerror}; "
                                "check c.KernelGuard.http_headers_file") from exc
        name = self.options.http_headers_env
        if name:
            value = os.environ.get(name)
            if value is None:
                raise SinkError(f"environment variable {name} (c.KernelGuard.http_headers_env) is not set")
            headers.update(read_headers(value.replace("\\n", "\n"), f"environment variable {name}"))
        if self.options.http_gzip:
            headers["Content-Encoding"] = "gzip"
        return headers

    def _connection(self) -> http.client.HTTPConnection:
        """The keep-alive connection; headers and CAs are read again for each new one."""
        if self._conn is None:
            headers = self._load_headers()  # a rotated token is picked up here
            timeout = self.options.http_timeout
            if self._tls:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                         context=self._ssl_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._headers = headers
        return self._conn

    def body(self, lines: List[bytes]) -> bytes:
        """The request body for a batch of JSON lines, in the configured format (before gzip)."""
        if self._json_array:
            return b"[" + b",".join(line.rstrip(b"\n") for line in lines) + b"]"
        return b"".join(lines)

    def emit(self, events: List[Event]) -> None:
        """POST the batch; raise unless the collector took it (the spool retries)."""
        self.emit_lines([to_json_line(e) for e in events])

    def emit_lines(self, lines: List[bytes]) -> None:
        """POST JSON lines as they are in the spool (no decoding and encoding again)."""
        if not lines:
            return
        self.retry_after = None
        status, reason, _ = self.post(self.body(lines))
        if 200 <= status < 300:
            self.retry_after = None
            return
        if status in _SPLIT_STATUSES:
            if len(lines) > 1:
                half = len(lines) // 2
                self.emit_lines(lines[:half])
                self.emit_lines(lines[half:])
            else:  # one event it will never take: do not block the rest
                self.reject(1, f"the collector answered {status} {reason} to it alone")
            return
        raise SinkError(f"collector {self.url} answered {status} {reason}")

    def post(self, body: bytes) -> Tuple[int, str, bytes]:
        """POST ``body`` (gzip'd if configured); the answer's status, reason and (start of) body.

        Raises SinkError when no answer came (the connection is dropped then).
        """
        if self.options.http_gzip:
            body = gzip.compress(body, compresslevel=6)
        conn = self._connection()  # SinkError on a bad headers file or CA bundle
        try:
            conn.request("POST", self._target, body=body, headers=self._headers)
            response = conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise SinkError(f"POST to {self.url} failed: {what}") from exc
        if response.status in self.retry_after_statuses:
            self.retry_after = _retry_after(response.getheader("Retry-After"))
        if response.will_close:
            self._drop()
        return response.status, response.reason, answer[:_ANSWER_MAX]

    def reject(self, count: int, why: str) -> None:
        """Count events the collector will never take, and why (the sender reports them as lost)."""
        self.rejected += count
        self.rejected_reason = why

    def take_rejected(self) -> Tuple[int, str]:
        """Events refused for good since the last call, and the latest reason."""
        count, self.rejected = self.rejected, 0
        return count, self.rejected_reason

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def close(self) -> None:
        self._drop()

    def after_fork(self) -> None:
        self._conn = None  # the parent's connection is the parent's


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _open(url: str, options: Optional[SinkOptions] = None) -> Sink:
    return HttpSink(url, options)


for _scheme in ("http", "https"):
    SCHEMES[_scheme] = _open
