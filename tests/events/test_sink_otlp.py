"""The OTLP sink against a local collector stub that checks every request's OTLP/HTTP JSON strictly."""

from __future__ import annotations

import datetime
import gzip
import http.server
import json
import os
import ssl
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional

import pytest

from conftest import GuardedKernel
from launcher_support import NOTEBOOK_USER, unprivileged_root
from kernel_guard.config import ENV_PROBLEMS, KernelGuard
from kernel_guard.events.aggregate import Aggregate
from kernel_guard.events.pipeline import EventPipeline
from kernel_guard.events.processors import Sequence
from kernel_guard.events.schema import make_event
from kernel_guard.events.sinks import SinkOptions, open_sink, validate_sink_url
from kernel_guard.events.sinks.otlp import any_value, unix_nano
from kernel_guard.exceptions import ConfigError
from kernel_guard.testing import MemorySink
from sink_helpers import free_port, wait_until, without_streams
from traitlets import TraitError

ANY_VALUE_KEYS = {"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue", "bytesValue"}
RECORD_KEYS = {"timeUnixNano", "observedTimeUnixNano", "severityNumber", "severityText", "body", "attributes",
               "droppedAttributesCount", "flags", "traceId", "spanId", "eventName"}
#: attribute key -> dotted field of the event it must equal
MAPPED = ("event.action", "event.outcome", "event.id", "event.sequence", "kernel_guard.layer",
          "kernel_guard.kernel_id", "kernel_guard.stream", "user.name", "process.pid")


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _decimal(value: Any, what: str) -> int:
    """An int64/fixed64 in OTLP JSON: a string of decimal digits."""
    _check(isinstance(value, str) and value.lstrip("-").isdigit(), f"{what} must be a decimal string: {value!r}")
    return int(value)


def _any_value(value: Any, what: str) -> Any:
    """Check one AnyValue and return the Python value it stands for."""
    _check(isinstance(value, dict) and len(value) == 1 and set(value) <= ANY_VALUE_KEYS,
           f"{what} must be an AnyValue with one key: {value!r}")
    [(kind, inner)] = value.items()
    if kind == "stringValue":
        _check(isinstance(inner, str), f"{what}.stringValue must be a string")
        return inner
    if kind == "intValue":
        return _decimal(inner, f"{what}.intValue")
    if kind == "boolValue":
        _check(isinstance(inner, bool), f"{what}.boolValue must be a boolean")
        return inner
    if kind == "doubleValue":
        _check(isinstance(inner, (int, float)) and not isinstance(inner, bool), f"{what}.doubleValue")
        return inner
    if kind == "arrayValue":
        return [_any_value(v, f"{what}[]") for v in inner["values"]]
    if kind == "kvlistValue":
        return _key_values(inner["values"], what)
    raise ValueError(f"{what}: bytesValue is not expected from kernel_guard")


def _key_values(items: Any, what: str) -> Dict[str, Any]:
    """Check a list of KeyValue; return it as a dict (keys unique)."""
    _check(isinstance(items, list), f"{what} must be a list of KeyValue")
    out: Dict[str, Any] = {}
    for item in items:
        _check(isinstance(item, dict) and set(item) == {"key", "value"} and isinstance(item["key"], str),
               f"{what}: a KeyValue is {{key, value}}: {item!r}")
        _check(item["key"] not in out, f"{what}: duplicate key {item['key']}")
        out[item["key"]] = _any_value(item["value"], f"{what}.{item['key']}")
    return out


def _json_keys(value: Any) -> List[str]:
    """Every object key in a JSON document (the field names, not attribute keys, which are values)."""
    if isinstance(value, dict):
        return [k for k in value] + [k for v in value.values() for k in _json_keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in _json_keys(v)]
    return []


def expected_nanos(timestamp: str) -> int:
    """@timestamp in nanoseconds since the epoch, computed independently of the sink."""
    when = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (when - epoch) // datetime.timedelta(microseconds=1) * 1000


def _field(event: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        event = event.get(part) if isinstance(event, dict) else None  # type: ignore[assignment]
    return event


def check_request(body: Any) -> List[dict]:
    """Validate an ExportLogsServiceRequest strictly; return the events its bodies carry."""
    _check(isinstance(body, dict) and set(body) == {"resourceLogs"}, "the request is {resourceLogs}")
    _check(all("_" not in key for key in _json_keys(body)), "field names must be lowerCamelCase")
    events = []
    for resource_logs in body["resourceLogs"]:
        _check(set(resource_logs) == {"resource", "scopeLogs"}, f"ResourceLogs keys: {set(resource_logs)}")
        resource = _key_values(resource_logs["resource"]["attributes"], "resource")
        _check(resource.get("service.name") == "kernel_guard" and resource.get("host.name"), f"resource {resource}")
        for scope_logs in resource_logs["scopeLogs"]:
            scope = scope_logs["scope"]
            _check(scope.get("name") == "kernel_guard" and isinstance(scope.get("version"), str), f"scope {scope}")
            for record in scope_logs["logRecords"]:
                events.append(_check_record(record))
    return events


def _check_record(record: Any) -> dict:
    """One LogRecord: types, times, severity, body and attributes consistent with the event."""
    _check(isinstance(record, dict) and set(record) <= RECORD_KEYS, f"LogRecord keys: {record!r}"[:300])
    event = json.loads(_any_value(record["body"], "body"))  # the body is the event's JSON line
    _check(_decimal(record["timeUnixNano"], "timeUnixNano") == expected_nanos(event["@timestamp"]),
           f"timeUnixNano {record['timeUnixNano']} is not @timestamp {event['@timestamp']}")
    observed = _decimal(record["observedTimeUnixNano"], "observedTimeUnixNano")
    _check(abs(observed - time.time_ns()) < 120e9, "observedTimeUnixNano is the send time")
    failed = event["event"]["outcome"] == "failure"
    _check(record["severityNumber"] == (13 if failed else 9) and type(record["severityNumber"]) is int,
           f"severityNumber {record['severityNumber']!r}")
    _check(record["severityText"] == ("WARN" if failed else "INFO"), f"severityText {record['severityText']!r}")
    attributes = _key_values(record["attributes"], "attributes")
    wanted = {name: _field(event, name) for name in MAPPED if _field(event, name) is not None}
    _check(attributes == wanted, f"attributes {attributes} != {wanted}")
    return event


class OtlpCollector:
    """A threaded OTLP/HTTP receiver: ``mode`` is ok, 503, 400, 413 or partial; bad requests are recorded."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.port = free_port()
        self.mode = "ok"
        self.requests: List[Dict[str, Any]] = []
        self.events: List[dict] = []
        self.errors: List[str] = []
        self._lock = threading.Lock()
        handler = self._handler()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handler(self) -> type:
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                try:
                    _check(self.path == "/v1/logs", f"path {self.path}")
                    _check(self.headers.get("Content-Type") == "application/json", "Content-Type")
                    events = check_request(json.loads(raw))
                except (ValueError, KeyError, TypeError) as exc:
                    collector.errors.append(str(exc))
                    return self._answer(400, {"code": 3, "message": f"stub: {exc}"})
                mode = collector.mode
                if mode == "413" and len(events) > 8:
                    return self._answer(413, {"code": 8, "message": "stub: more than 8 records"})
                with collector._lock:
                    collector.requests.append({"mode": mode, "count": len(events), "at": time.monotonic(),
                                               "headers": dict(self.headers)})
                    if mode in ("ok", "partial", "413"):
                        collector.events.extend(events)
                if mode == "503":
                    return self._answer(503, {"code": 14, "message": "stub: overloaded"}, retry_after="2")
                if mode == "400":
                    return self._answer(400, {"code": 3, "message": "stub says the records are malformed"})
                if mode == "partial":
                    return self._answer(200, {"partialSuccess": {"rejectedLogRecords": "2",
                                                                 "errorMessage": "stub dropped two old records"}})
                return self._answer(200, {})

            def _answer(self, status: int, body: dict, retry_after: str = "") -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def url(self, scheme: str = "otlp+http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/v1/logs"

    def ids(self) -> List[str]:
        with self._lock:
            return [e["event"]["id"] for e in self.events]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def collector():
    """A running OTLP collector stub, stopped after the test (which must not have sent it a bad request)."""
    receiver = OtlpCollector()
    yield receiver
    receiver.stop()
    assert receiver.errors == []


def _pipeline(url: str, tmp_path, sinks=(), start: bool = True, **options) -> EventPipeline:
    sink = open_sink(url, SinkOptions(**options))
    return EventPipeline([*sinks, sink], [Aggregate(0), Sequence()], spool_dir=str(tmp_path / "spool"), start=start)


def _varied(i: int) -> dict:
    """Events of several shapes: refusals and routine ones, user and pid, odd characters."""
    if i % 3 == 0:
        event = make_event("exec-denied", outcome="failure", layer="audit", reason=f"refused {i} \u2028 \"q\" é",
                           process={"pid": 4242, "executable": "/bin/sh", "args": ["sh", "-c", "ls"]},
                           kernel_id="k-1")
    else:
        event = make_event("cell-executed", outcome="success", layer="ipython", execution_count=i)
    event["user"] = {"name": "alice"}
    return event


def test_a_batch_arrives_as_valid_otlp_log_records(collector, tmp_path):
    """Every event arrives once as a LogRecord whose times, severity, attributes and body match it (gzip'd too)."""
    headers = tmp_path / "headers"
    headers.write_text("Authorization: Bearer s3cret-token\n")
    memory = MemorySink()
    pipe = _pipeline(collector.url(), tmp_path, sinks=[memory], http_headers_file=str(headers), http_gzip=True)
    for i in range(300):
        pipe.emit(_varied(i))
    assert pipe.flush(10)
    pipe.close()
    assert collector.ids() == [e["event"]["id"] for e in memory.events]
    assert collector.events == memory.events  # the body parses back to the very event
    assert collector.requests[0]["headers"]["Authorization"] == "Bearer s3cret-token"
    assert collector.requests[0]["headers"]["Content-Encoding"] == "gzip"
    assert pipe.stats()["sinks"][pipe.sinks[-1].url] == "ok"


def test_a_503_is_retried_after_its_retry_after_and_nothing_is_lost_or_doubled(collector, tmp_path):
    """While the collector answers 503 (Retry-After: 2) events wait; afterwards each arrives exactly once."""
    memory = MemorySink()
    pipe = _pipeline(collector.url(), tmp_path, sinks=[memory])
    collector.mode = "503"
    for i in range(50):
        pipe.emit(_varied(i))
    wait_until(lambda: len(collector.requests) >= 2, 15, "a retry after the first 503")
    first, second = collector.requests[:2]
    assert second["at"] - first["at"] >= 1.9  # Retry-After, not the 0.5 s first backoff
    collector.mode = "ok"
    url = pipe.sinks[-1].url
    wait_until(lambda: pipe.stats()["spool"][url]["state"] == "ok", 30, "delivery once the collector recovered")
    assert pipe.flush(10)
    pipe.close()
    delivered = collector.ids()
    assert len(delivered) == len(set(delivered))
    assert {e["event"]["id"] for e in memory.events} == set(delivered)
    actions = [e["event"]["action"] for e in memory.events]
    assert "sink-error" in actions and "sink-recovered" in actions
    assert "503" in next(e for e in memory.events if e["event"]["action"] == "sink-error")["event"]["reason"]


def test_a_400_is_permanent_and_reported_as_a_loss_with_the_collectors_message(collector, tmp_path):
    """A 400 is not retried: the batch is counted as lost, with the collector's Status.message, and later events flow."""
    memory = MemorySink()
    pipe = _pipeline(collector.url(), tmp_path, sinks=[memory], start=False)
    collector.mode = "400"
    for i in range(10):
        pipe.emit(_varied(i))
    pipe.start()  # the ten (and the stream's start) in one request
    [dropped] = wait_until(lambda: [e for e in memory.events if e["event"]["action"] == "events-dropped"], 10,
                           "the events-dropped report")
    assert "stub says the records are malformed" in dropped["event"]["reason"]
    assert "400" in dropped["event"]["reason"]
    assert dropped["kernel_guard"]["dropped"] == 11 and dropped["kernel_guard"]["rejected"] is True
    collector.mode = "ok"
    pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason="after"))
    assert pipe.flush(10)
    pipe.close()
    # the refused events were not sent again (the loss report may have arrived, or been refused too)
    assert [e["event"].get("reason") for e in collector.events if e["kernel_guard"]["layer"] != "pipeline"] == ["after"]
    assert [r["mode"] for r in collector.requests].count("400") <= 2  # the batch, perhaps its loss report
    assert sum(e["event"]["action"] == "events-dropped" for e in memory.events) == 1  # no report about the report


def test_a_413_splits_the_batch_until_the_collector_takes_it(collector, tmp_path):
    """A collector taking at most 8 records per request still gets every event, once and in order."""
    memory = MemorySink()
    pipe = _pipeline(collector.url(), tmp_path, sinks=[memory], start=False)
    collector.mode = "413"
    for i in range(50):
        pipe.emit(_varied(i))
    pipe.start()
    assert pipe.flush(10)
    pipe.close()
    assert collector.ids() == [e["event"]["id"] for e in memory.events]
    assert max(r["count"] for r in collector.requests) <= 8


def test_partial_success_is_reported_as_a_counted_loss(collector, tmp_path):
    """A 200 with partialSuccess.rejectedLogRecords = 2 yields events-dropped naming 2 and the errorMessage."""
    memory = MemorySink()
    pipe = _pipeline(collector.url(), tmp_path, sinks=[memory], start=False)
    collector.mode = "partial"
    for i in range(5):
        pipe.emit(_varied(i))
    pipe.start()  # the five (and the stream's start) in one request
    [dropped] = wait_until(lambda: [e for e in memory.events if e["event"]["action"] == "events-dropped"], 10,
                           "the events-dropped report")
    collector.mode = "ok"
    pipe.close()
    assert dropped["kernel_guard"]["dropped"] == 2
    assert "stub dropped two old records" in dropped["event"]["reason"] and "2 of 6" in dropped["event"]["reason"]
    assert pipe.stats()["spool"][pipe.sinks[-1].url]["rejected"] == 2


def test_https_needs_the_collectors_ca(tmp_path):
    """otlp+https refuses a self-signed collector by default and delivers with its CA bundle."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    receiver = OtlpCollector(tls=context)
    try:
        refusing = _pipeline(receiver.url("otlp+https"), tmp_path / "default")
        refusing.emit(make_event("exec-denied", outcome="failure", layer="audit"))
        url = refusing.sinks[0].url
        wait_until(lambda: refusing.stats()["sinks"][url] != "ok", 10, "a TLS error")
        assert "CERTIFICATE_VERIFY_FAILED" in refusing.stats()["sinks"][url]
        refusing.close(timeout=0.5)
        trusting = _pipeline(receiver.url("otlp+https"), tmp_path / "ca", http_ca_bundle=str(cert))
        trusting.emit(make_event("exec-denied", outcome="failure", layer="audit", reason="over tls"))
        assert trusting.flush(10)
        trusting.close()
        assert [e["event"]["reason"] for e in without_streams(receiver.events)] == ["over tls"]
        assert receiver.errors == []
    finally:
        receiver.stop()


@pytest.mark.parametrize("timestamp,nanos", [
    ("2026-11-22T05:00:00.123456Z", 1795323600123456000),
    ("2026-11-22T06:00:00.5+01:00", 1795323600500000000),
    ("2026-11-22T05:00:00.123456789Z", 1795323600123456789),
    ("2026-11-22T05:00:00Z", 1795323600000000000),
    ("1969-12-31T23:59:59Z", None),  # fixed64 cannot say it: left out, not wrapped
    ("2026-13-01T00:00:00Z", None),
    ("yesterday", None),
    (1795323600, None),
])
def test_timestamps_become_exact_unix_nanoseconds(timestamp, nanos):
    """@timestamp converts to nanoseconds without float rounding; what is not RFC 3339 gives None."""
    assert unix_nano(timestamp) == nanos


def test_values_take_otlp_json_forms():
    """int64 as decimal strings, bigger ints as text, non-finite doubles as strings, nulls keep array places."""
    assert any_value(True) == {"boolValue": True}
    assert any_value(-5) == {"intValue": "-5"}
    assert any_value(1 << 64) == {"stringValue": str(1 << 64)}
    assert any_value(float("nan")) == {"doubleValue": "NaN"} and any_value(0.5) == {"doubleValue": 0.5}
    assert any_value(["a", None, {"k": 1}]) == {"arrayValue": {"values": [
        {"stringValue": "a"}, {}, {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "1"}}]}}]}}
    assert any_value(None) is None


@pytest.mark.parametrize("url,message", [
    ("otlp+http://collector/v1/logs", r"needs a port .* write otlp\+http://host:4318/v1/logs"),
    ("otlp+https://:4318/v1/logs", r"needs a host: write otlp\+https://host:4318/v1/logs"),
    ("otlp+http://collector:0/v1/logs", "port 0"),
    ("otlp+http://collector:99999/v1/logs", "invalid port"),
    ("otlp://collector:4318", r"write otlp\+http://host:4318/v1/logs .*gRPC is not supported"),
    ("otlp+grpc://collector:4317", "gRPC is not supported"),
])
def test_bad_otlp_urls_are_rejected_with_the_fix(url, message):
    """Malformed otlp URLs fail validation with a message saying what to write."""
    with pytest.raises(ConfigError, match=message):
        validate_sink_url(url)


def test_otlp_urls_in_the_settings_are_checked_and_a_good_one_opens(monkeypatch):
    """KERNEL_GUARD_SINKS takes otlp URLs; a bad one is named with the variable, a bad trait with its name."""
    good = "otlp+https://ingest:t0ken@collector:4318/v1/logs"
    monkeypatch.setenv("KERNEL_GUARD_SINKS", f"{good},otlp+http://collector/v1/logs")
    ENV_PROBLEMS.clear()
    assert KernelGuard().sinks == [good]
    [problem] = ENV_PROBLEMS
    assert problem["setting"] == "KERNEL_GUARD_SINKS" and "needs a port" in problem["reason"]
    ENV_PROBLEMS.clear()
    with pytest.raises(TraitError, match=r"KernelGuard.sinks: sink otlp\+http:// needs a host"):
        KernelGuard(sinks=["otlp+http://:4318/v1/logs"])
    sink = open_sink(good)
    assert repr(sink) == "<OtlpSink otlp+https://collector:4318/v1/logs>"  # no credentials shown
    assert open_sink("otlp+http://collector:4318")._target == "/v1/logs"  # OTLP's default path


def test_a_kernel_as_the_notebook_user_sends_its_cells_and_refusals(collector):
    """A real kernel (uid 1000) with KERNEL_GUARD_SINKS at the stub delivers cell-executed and exec-denied."""
    with unprivileged_root() as root:
        events_file = os.path.join(root, "k", "events", "events.jsonl")  # GuardedKernel's file sink
        kernel = GuardedKernel(os.path.join(root, "k"), user=NOTEBOOK_USER,
                               env={"KERNEL_GUARD_SINKS": f"{collector.url()},file://{events_file}"})
        kernel.start()
        try:
            assert kernel.execute("x = 6 * 7").status == "ok"
            refused = kernel.execute('import os; os.system("true")')
            assert refused.status == "error"

            def arrived() -> List[dict]:
                with collector._lock:
                    return [e for e in collector.events if e["event"]["action"] in ("cell-executed", "exec-denied")]

            wait_until(lambda: {"cell-executed", "exec-denied"} <= {e["event"]["action"] for e in arrived()}, 20,
                       "the kernel's cell-executed and exec-denied records at the collector")
        finally:
            kernel.shutdown()
    denied = next(e for e in arrived() if e["event"]["action"] == "exec-denied")
    assert denied["event"]["outcome"] == "failure" and denied["user"]["name"] == "alice"
    assert any(e["kernel_guard"].get("execution_count") == 1 for e in arrived())
