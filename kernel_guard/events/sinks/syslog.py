"""``syslog+udp://``, ``syslog+tcp://``, ``syslog+unix://``: RFC 5424 messages with the event as JSON.

Each event becomes one message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - {"@timestamp": ...}

PRI is facility * 8 + severity: refusals are warnings, audit-mode records
of what would have been refused are notices, the pipeline's own errors are
errors, everything else (cell executions, starts) is info.  MSGID is the
event's action, PROCID the kernel's pid; the message is the event's JSON in
plain ASCII (non-ASCII characters escaped), so it needs no BOM and parses
as JSON as is.

Framing: one datagram per message over UDP and Unix sockets, octet counting
(``LEN SP MSG``, RFC 6587) over TCP.  Plain TCP syslog has no
acknowledgements, so a send counts as delivered only once the connection is
still seen open ``confirm_after`` seconds later; a collector that restarts
in between gets those messages again (consumers de-duplicate by
``event.id``).  UDP can lose messages without anyone knowing: use TCP for
evidence.
"""

from __future__ import annotations

import errno
import json
import select
import socket
from typing import List, Optional
from urllib.parse import unquote, urlsplit

from ...exceptions import SinkError
from ..schema import Event
from . import SCHEMES, Sink, SinkOptions, describe_url

__all__ = ["FACILITIES", "SyslogSink", "format_message", "severity"]

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "solaris-cron": 15, **{f"local{i}": 16 + i for i in range(8)},
}
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6
_PIPELINE_ERRORS = frozenset({"sink-error", "guard-error"})
_DEFAULT_PORT = 514
_CONNECT_TIMEOUT = 5.0  # seconds
_SEND_TIMEOUT = 10.0  # seconds for one batch to leave over TCP


def severity(event: Event) -> int:
    """Syslog severity of an event: refusals warn, audit-mode records are notices."""
    ev = event.get("event", {})
    action = ev.get("action")
    if action in _PIPELINE_ERRORS:
        return ERR
    if action == "cell-executed":
        return INFO  # a cell that raised is the user's business, not the guard's
    outcome = ev.get("outcome")
    if outcome == "failure":
        return WARNING
    if outcome == "unknown":
        return NOTICE
    return INFO


def _header_field(value: object, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters, or ``-``."""
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(value or ""))[:limit]
    return text or "-"


def format_message(event: Event, facility: int = 1, app_name: str = "kernel_guard",
                   max_bytes: int = 8192) -> bytes:
    """One RFC 5424 message (without framing) for an event."""
    ev = event.get("event", {})
    header = "<%d>1 %s %s %s %s %s -" % (
        facility * 8 + severity(event),
        _header_field(event.get("@timestamp"), 32),
        _header_field((event.get("host") or {}).get("hostname"), 255),
        _header_field(app_name, 48),
        _header_field((event.get("process") or {}).get("pid"), 128),
        _header_field(ev.get("action"), 32),
    )
    body = _json(event)
    if len(header) + 1 + len(body) > max_bytes:
        body = _json(_shrunk(event, max(256, max_bytes - len(header) - 1)))
    return (header + " " + body).encode("ascii")


def _json(event: Event) -> str:
    return json.dumps(event, ensure_ascii=True, separators=(",", ":"), default=repr)


def _shrunk(event: Event, limit: int) -> Event:
    """The event with long strings cut (marked ``kernel_guard.truncated``) to fit ``limit``."""
    def cut(node: object, keep: int) -> object:
        if isinstance(node, str) and len(node) > keep:
            return node[:keep] + "…"
        if isinstance(node, dict):
            return {k: cut(v, keep) for k, v in node.items()}
        if isinstance(node, (list, tuple)):  # an event's category and type are shared tuples
            return [cut(v, keep) for v in node[:32]]
        return node

    for keep in (1024, 256, 64, 16):
        small = cut(event, keep)
        assert isinstance(small, dict)
        small.setdefault("kernel_guard", {})["truncated"] = True
        if len(_json(small)) <= limit:
            return small
    ev = event.get("event", {})
    return {"@timestamp": event.get("@timestamp"), "ecs": event.get("ecs"),
            "event": {k: ev.get(k) for k in ("kind", "action", "outcome", "id", "sequence")},
            "kernel_guard": {"layer": (event.get("kernel_guard") or {}).get("layer"), "truncated": True}}


class SyslogSink(Sink):
    """Send events to a syslog collector over UDP, TCP or a Unix socket."""

    spooled = True

    def __init__(self, url: str, options: Optional[SinkOptions] = None) -> None:
        options = options or SinkOptions()
        parts = urlsplit(url)
        self.transport = parts.scheme.split("+", 1)[1]
        self.url = describe_url(url)
        if self.transport == "unix":
            self.address: object = unquote(parts.path)
        else:
            self.address = (parts.hostname or "localhost", parts.port or _DEFAULT_PORT)
        if options.syslog_facility not in FACILITIES:
            raise SinkError(f"unknown syslog facility {options.syslog_facility!r}: use one of "
                            + ", ".join(FACILITIES))
        self.facility = FACILITIES[options.syslog_facility]
        self.app_name = options.syslog_app_name
        limit = 65000 if self.transport == "udp" else 1 << 20
        self.max_bytes = max(480, min(options.syslog_max_message_bytes, limit))
        self.confirm_after = 1.0 if self.transport == "tcp" else 0.0
        self._sock: Optional[socket.socket] = None
        self._stream = self.transport == "tcp"

    @classmethod
    def from_url(cls, url: str, options: Optional[SinkOptions] = None) -> "SyslogSink":
        return cls(url, options)

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            if self.transport == "unix":
                sock = self._unix_socket()
            else:
                host, port = self.address  # type: ignore[misc]
                kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
                info = socket.getaddrinfo(host, port, 0, kind)[0]
                sock = socket.socket(info[0], kind)
                sock.settimeout(_CONNECT_TIMEOUT)
                try:
                    # connected UDP too: the kernel then reports "port unreachable" to us
                    sock.connect(info[4])
                except OSError:
                    sock.close()
                    raise
                sock.settimeout(_SEND_TIMEOUT)
        except OSError as exc:
            raise SinkError(f"cannot connect to syslog collector {self.url}: {exc.strerror or exc}") from exc
        self._sock = sock
        return sock

    def _unix_socket(self) -> socket.socket:
        """A datagram socket to ``/dev/log`` (rsyslog, journald), else a stream one."""
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind)
            try:
                sock.connect(str(self.address))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EPROTOTYPE and kind == socket.SOCK_DGRAM:  # a stream socket
                    continue
                raise
            self._stream = kind == socket.SOCK_STREAM
            sock.settimeout(_SEND_TIMEOUT)
            return sock
        raise OSError("no usable socket type")

    def emit(self, events: List[Event]) -> None:
        """Send a batch; on any socket error drop the connection and raise (the spool retries)."""
        messages = [format_message(e, self.facility, self.app_name, self.max_bytes) for e in events]
        if self._sock is not None and self._stream:
            self.check()  # a collector that closed since the last batch would swallow this one
        sock = self._connect()
        try:
            if self._stream:
                sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))
            else:
                for message in messages:
                    sock.send(message)
        except OSError as exc:
            self._drop()
            raise SinkError(f"sending to syslog collector {self.url} failed: {exc.strerror or exc}") from exc

    def check(self) -> None:
        """Raise if the TCP collector has closed or reset the connection."""
        sock = self._sock
        if not self._stream:
            return
        if sock is None:
            raise SinkError(f"connection to syslog collector {self.url} was lost")
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                raise ConnectionResetError("the collector closed the connection")
        except (OSError, ValueError) as exc:
            self._drop()
            raise SinkError(f"connection to syslog collector {self.url} was lost: {exc}") from exc

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def close(self) -> None:
        self._drop()

    def after_fork(self) -> None:
        """The child sends nothing itself; close its copy of the socket."""
        self._drop()


def _open(url: str, options: Optional[SinkOptions] = None) -> Sink:
    return SyslogSink(url, options)


for _scheme in ("syslog+udp", "syslog+tcp", "syslog+unix"):
    SCHEMES[_scheme] = _open
