"""``otlp+http://`` and ``otlp+https://``: events as OpenTelemetry log records.

OTLP/HTTP with the JSON encoding: each batch is one ``ExportLogsServiceRequest``
POSTed as ``application/json`` (default path ``/v1/logs``), written by hand so
that no OpenTelemetry SDK is needed.  Each event becomes one ``LogRecord``:
its JSON line is the body (a string, so nothing of it is lost or reshaped),
and the fields a query starts from (action, outcome, layer, kernel, user ...)
are attributes.  The JSON follows OTLP's mapping of protobuf: lowerCamelCase
keys, 64-bit integers (times, ``intValue``) as decimal strings, enums
(``severityNumber``) as numbers.

Delivery is the HTTP sink's (spool, retries with backoff, TLS, headers,
timeouts), with OTLP's answers:

- 200: delivered; a ``partialSuccess`` with ``rejectedLogRecords > 0`` counts
  those records as lost, reported with the collector's ``errorMessage``;
- 408, 429, 5xx: retried (``Retry-After`` honoured);
- 413: the batch is split in halves (a single record still refused is lost);
- any other 4xx: permanent, as OTLP says (the request is not to be sent
  again): the batch is counted as lost with the collector's ``Status.message``.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import socket
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlsplit

from ..._version import __version__
from ...exceptions import SinkError
from ..schema import Event, to_json_line
from . import SCHEMES, Sink, SinkOptions, describe_url
from .http import HttpSink

try:
    import orjson
except ImportError:  # the standard library is the fallback (as in schema.py)
    orjson = None  # type: ignore[assignment]

__all__ = ["OtlpSink", "any_value", "attributes", "log_record", "unix_nano"]

#: OTLP's default path for logs (used when the URL has none)
DEFAULT_PATH = "/v1/logs"
#: SeverityNumber values (logs data model): refusals and other failures are WARN
SEVERITY_INFO, SEVERITY_WARN = 9, 13
#: event fields copied into each record's attributes (dotted ECS paths)
ATTRIBUTE_FIELDS = (
    "event.action", "event.outcome", "event.id", "event.sequence", "kernel_guard.layer",
    "kernel_guard.kernel_id", "kernel_guard.stream", "user.name", "process.pid",
)
_RETRYABLE = frozenset({408, 429, *range(500, 600)})
_SPLIT = 413
_MESSAGE_MAX = 300  # characters of a collector's error message kept in our events
#: a LogRecord, and whether its event is this sink's own loss report
_Record = Tuple[Dict[str, Any], bool]
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)\Z")


def unix_nano(timestamp: Any) -> Optional[int]:
    """Nanoseconds since the epoch of an RFC 3339 ``@timestamp``; None if it is not one.

    Integer arithmetic throughout: a float would lose the microseconds.
    """
    if not isinstance(timestamp, str):
        return None
    match = _TIMESTAMP.match(timestamp)
    if match is None:
        return None
    seconds, fraction, zone = match.groups()
    try:
        when = datetime.datetime.fromisoformat(seconds + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    nanos = int(when.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))
    return nanos if nanos >= 0 else None  # fixed64: before 1970 is not representable


def _int_value(value: int) -> Dict[str, Any]:
    """intValue (int64, a decimal string in OTLP JSON); a larger integer as its digits in a string."""
    if -(1 << 63) <= value < (1 << 63):
        return {"intValue": str(value)}
    return {"stringValue": str(value)}


def any_value(value: Any) -> Optional[Dict[str, Any]]:
    """OTLP's AnyValue (JSON form) for a JSON value; None for null."""
    if isinstance(value, bool):  # before int: bool is an int in Python
        return {"boolValue": value}
    if isinstance(value, int):
        return _int_value(value)
    if isinstance(value, float):
        # proto3 JSON spells the non-finite doubles as strings (plain JSON has no NaN)
        return {"doubleValue": value if math.isfinite(value) else _NON_FINITE[str(value)]}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (list, tuple)):  # an event's category and type are shared tuples
        # a null keeps its place as an empty AnyValue, so indices still match
        return {"arrayValue": {"values": [any_value(v) or {} for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": attributes(value.items())}}
    return None


def attributes(pairs: Iterable[Tuple[str, Any]]) -> List[Dict[str, Any]]:
    """KeyValue list for ``(key, value)`` pairs, leaving out nulls."""
    out = []
    for key, value in pairs:
        converted = any_value(value)
        if converted is not None:
            out.append({"key": str(key), "value": converted})
    return out


#: (attribute key, object, field) split once: this runs for every event sent
_PATHS = tuple((name, *name.split(".", 1)) for name in ATTRIBUTE_FIELDS)


def _field(event: Event, path: Tuple[str, ...]) -> Any:
    """The value at ``path`` (keys of nested objects) in the event, or None."""
    value: Any = event
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _key_attributes(event: Event) -> List[Dict[str, Any]]:
    """The attributes of ATTRIBUTE_FIELDS present in the event (inlined: the sink's hot loop)."""
    out = []
    for name, outer, inner in _PATHS:
        section = event.get(outer)
        value = section.get(inner) if type(section) is dict else None
        if type(value) is str:
            converted: Optional[Dict[str, Any]] = {"stringValue": value}
        elif type(value) is int:
            converted = _int_value(value)
        else:
            converted = any_value(value)
        if converted is not None:
            out.append({"key": name, "value": converted})
    return out


def log_record(event: Event, line: str, observed: int) -> Dict[str, Any]:
    """The LogRecord for one event; ``line`` is its JSON text, ``observed`` the send time (ns)."""
    failed = _field(event, ("event", "outcome")) == "failure"
    record: Dict[str, Any] = {}
    when = unix_nano(event.get("@timestamp"))
    if when is not None:  # left out (0, "unknown" in OTLP) rather than invented
        record["timeUnixNano"] = str(when)
    record.update({
        "observedTimeUnixNano": str(observed),
        "severityNumber": SEVERITY_WARN if failed else SEVERITY_INFO,
        "severityText": "WARN" if failed else "INFO",
        "body": {"stringValue": line},
        "attributes": _key_attributes(event),
    })
    return record


def _resource() -> Dict[str, Any]:
    """Who sends: the service and the host (one per process, as OTLP expects)."""
    return {"attributes": attributes([
        ("service.name", "kernel_guard"), ("service.version", __version__),
        ("host.name", socket.gethostname()), ("os.type", "linux"),
    ])}


def _loads(line: bytes) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(line)
        except ValueError:  # e.g. an escaped lone surrogate, which the standard library reads
            pass
    return json.loads(line)


def _collector_message(answer: bytes) -> str:
    """The message in a collector's answer (``Status.message``, else its text), printable and short."""
    text = answer.decode("utf-8", "replace").strip()
    try:
        status = json.loads(text)
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            text = status["message"]
    except ValueError:
        pass
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return (text[:_MESSAGE_MAX] + "...") if len(text) > _MESSAGE_MAX else (text or "no message")


def _partial_success(answer: bytes) -> Tuple[int, str]:
    """``(rejectedLogRecords, errorMessage)`` of a 200 answer; (0, "") when there is none."""
    try:
        partial = json.loads(answer).get("partialSuccess") or {}
        rejected = int(partial.get("rejectedLogRecords") or 0)  # int64: a string, or a number
    except (ValueError, TypeError, AttributeError):
        return 0, ""  # an empty or non-JSON body is a plain success
    message = partial.get("errorMessage")
    return max(0, rejected), _collector_message(message.encode()) if isinstance(message, str) else ""


class OtlpSink(HttpSink):
    """POST batches of events as OTLP/HTTP JSON log records."""

    retry_after_statuses = _RETRYABLE

    def __init__(self, url: str, options: Optional[SinkOptions] = None) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("otlp+http", "otlp+https"):
            raise SinkError(f"sink {describe_url(url)} is not an otlp+http:// or otlp+https:// URL")
        super().__init__(url[len("otlp+"):], options)  # the transport is plain HTTP(S)
        self.url = describe_url(url)  # keeps otlp+: its spool is not a plain HTTP sink's
        parts = urlsplit(url)
        if parts.path in ("", "/"):
            self._target = DEFAULT_PATH + (f"?{parts.query}" if parts.query else "")
        self._json_array = True  # Content-Type: application/json (http_format does not apply)
        self._scope = {"name": "kernel_guard", "version": __version__}
        self._resource = _resource()

    def emit_lines(self, lines: List[bytes]) -> None:
        """Send the spool's JSON lines as one OTLP request (or report why some never will be)."""
        records: List[_Record] = []
        observed = time.time_ns()
        for raw in lines:
            try:
                event = _loads(raw)
                line = raw.decode("utf-8").rstrip("\n")
            except ValueError:
                self.reject(1, "a spool line is not JSON (a damaged segment)")
                continue
            if not isinstance(event, dict):
                self.reject(1, "a spool line is not an event object")
                continue
            records.append((log_record(event, line, observed), _about_self(event, self.url)))
        self._deliver(records)

    def _deliver(self, records: List[_Record]) -> None:
        """POST ``records``; split on 413, raise on a retryable answer, count the rest as lost."""
        if not records:
            return
        self.retry_after = None
        status, reason, answer = self.post(self.request_body([record for record, _ in records]))
        # This sink's own loss reports are not counted as lost again: a collector
        # that refuses everything must not keep a report about itself going forever.
        countable = sum(1 for _, own in records if not own)
        if 200 <= status < 300:
            rejected, message = _partial_success(answer)
            if rejected and countable:
                self.reject(min(rejected, countable), f"the collector rejected {rejected} of "
                            f"{len(records)} log records: {message or 'no message'}")
            return
        if status == _SPLIT and len(records) > 1:  # too large: halves, down to the record it cannot take
            half = len(records) // 2
            self._deliver(records[:half])
            self._deliver(records[half:])
            return
        message = _collector_message(answer)
        if status in _RETRYABLE or not 400 <= status < 500:
            raise SinkError(f"collector {self.url} answered {status} {reason}: {message}")
        if countable:
            self.reject(countable, f"the collector answered {status} {reason}: {message} "
                        "(OTLP: such a request is not sent again; check the URL, headers and collector)")

    def request_body(self, records: List[Dict[str, Any]]) -> bytes:
        """The ExportLogsServiceRequest for ``records``, as JSON bytes."""
        request = {"resourceLogs": [{
            "resource": self._resource,
            "scopeLogs": [{"scope": self._scope, "logRecords": records}],
        }]}
        return to_json_line(request)[:-1]


def _about_self(event: Event, url: str) -> bool:
    """Whether ``event`` is the pipeline's report about sink ``url`` itself."""
    return (_field(event, ("kernel_guard", "sink")) == url
            and _field(event, ("event", "action")) in ("events-dropped", "sink-error", "sink-recovered"))


def _open(url: str, options: Optional[SinkOptions] = None) -> Sink:
    return OtlpSink(url, options)


for _scheme in ("otlp+http", "otlp+https"):
    SCHEMES[_scheme] = _open
