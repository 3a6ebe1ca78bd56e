"""The HTTP sink against a local collector that can be down, slow, or answer 500/429."""

from __future__ import annotations

import ssl
import statistics
import subprocess

import pytest

from kernel_guard import testing
from kernel_guard.config import KernelGuard, _apply_untrusted
from kernel_guard.events.aggregate import Aggregate
from kernel_guard.events.pipeline import EventPipeline
from kernel_guard.events.processors import Sequence
from kernel_guard.events.schema import make_event
from kernel_guard.events.sinks import SinkOptions, open_sink
from kernel_guard.testing import MemorySink, read_events

from sink_helpers import HttpCollector, LoggedKernel, dedupe, wait_until, without_streams


@pytest.fixture
def collector():
    """A running local collector, taken down after the test."""
    receiver = HttpCollector().start()
    yield receiver
    receiver.stop()


def _pipeline(url: str, tmp_path, sinks=(), start: bool = True, **options) -> EventPipeline:
    sink = open_sink(url, SinkOptions(**options))
    return EventPipeline([*sinks, sink], [Aggregate(0), Sequence()], spool_dir=str(tmp_path / "spool"), start=start)


def test_batches_carry_headers_from_file_and_env_gzip_and_json_array(collector, tmp_path, monkeypatch):
    """Headers come from the configured file and variable, bodies may be gzip'd NDJSON or a JSON array."""
    headers = tmp_path / "headers"
    headers.write_text("# collector token\nAuthorization: Bearer s3cret-token\n")
    monkeypatch.setenv("KG_TEST_HEADERS", "X-Tenant: team-a\\nX-Source: kernel")
    for fmt in ("ndjson", "json"):
        pipe = _pipeline(collector.url + f"?fmt={fmt}", tmp_path / fmt, http_headers_file=str(headers),
                         http_headers_env="KG_TEST_HEADERS", http_gzip=True, http_format=fmt)
        for i in range(3):
            pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=f"{fmt} {i}"))
        assert pipe.flush(10)
        assert "s3cret" not in repr(pipe.stats())
        pipe.close()
    first, second = collector.requests[0], collector.requests[-1]
    assert first["headers"]["Authorization"] == "Bearer s3cret-token"
    assert first["headers"]["X-Tenant"] == "team-a" and first["headers"]["X-Source"] == "kernel"
    assert first["headers"]["Content-Encoding"] == "gzip"
    assert first["headers"]["Content-Type"] == "application/x-ndjson"
    assert second["headers"]["Content-Type"] == "application/json" and second["path"] == "/ingest?fmt=json"
    reasons = [e["event"]["reason"] for e in without_streams(collector.snapshot())]
    assert reasons == ["ndjson 0", "ndjson 1", "ndjson 2", "json 0", "json 1", "json 2"]


def test_bad_headers_file_is_reported_without_echoing_it_and_events_wait_until_fixed(collector, tmp_path):
    """A malformed headers file gives a sink-error naming the line, never its content; events wait, then arrive."""
    headers = tmp_path / "headers"
    headers.write_text("Bearer s3cret-token\n")
    memory = MemorySink()
    pipe = _pipeline(collector.url, tmp_path, sinks=[memory], http_headers_file=str(headers))
    pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason="waiting"))
    [error] = wait_until(lambda: [e for e in memory.events if e["event"]["action"] == "sink-error"], 10,
                         "the sink-error event")
    assert "line 1" in error["event"]["reason"] and "s3cret" not in repr(memory.events)
    assert collector.requests == []
    headers.write_text("Authorization: Bearer s3cret-token\n")
    wait_until(lambda: "waiting" in [e["event"].get("reason") for e in collector.snapshot()], 15,
               "delivery once the file is fixed")
    pipe.close()
    assert collector.requests[0]["headers"]["Authorization"] == "Bearer s3cret-token"


def test_credentials_in_the_url_are_sent_but_never_shown(collector, tmp_path):
    """user:password in the URL becomes Basic auth, and the sink's printed URL has neither."""
    url = collector.url.replace("http://", "http://ingest:pa55word@")
    pipe = _pipeline(url, tmp_path)
    pipe.emit(make_event("exec-denied", outcome="failure", layer="audit"))
    assert pipe.flush(10)
    pipe.close()
    assert collector.requests[0]["headers"]["Authorization"].startswith("Basic ")
    assert "pa55word" not in repr(pipe.stats()) and "ingest:" not in repr(pipe.stats())


def test_https_verifies_certificates_unless_given_the_ca(tmp_path):
    """An HTTPS collector with a self-signed certificate is refused by default and accepted with its CA bundle."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    receiver = HttpCollector().start()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server = receiver._server
    assert server is not None
    server.socket = context.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{receiver.port}/ingest"
    try:
        refusing = _pipeline(url, tmp_path / "default")
        refusing.emit(make_event("exec-denied", outcome="failure", layer="audit"))
        wait_until(lambda: refusing.stats()["sinks"][refusing.sinks[0].url] != "ok", 10, "a TLS error")
        assert "CERTIFICATE_VERIFY_FAILED" in refusing.stats()["sinks"][refusing.sinks[0].url]
        assert receiver.events == []
        refusing.close(timeout=0.5)
        trusting = _pipeline(url, tmp_path / "ca", http_ca_bundle=str(cert))
        trusting.emit(make_event("exec-denied", outcome="failure", layer="audit"))
        assert trusting.flush(10)
        trusting.close()
        assert len(without_streams(receiver.events)) == 1
    finally:
        receiver.stop()


def test_skipping_tls_verification_from_a_user_config_file_is_ignored():
    """unsafe_http_skip_tls_verify from a user-writable config file is ignored and reported."""
    guard = KernelGuard()
    ignored: list = []
    _apply_untrusted(guard, "unsafe_http_skip_tls_verify", True, ignored, ["/home/alice/.ipython/x.py"])
    _apply_untrusted(guard, "http_ca_bundle", "/home/alice/ca.pem", ignored, ["/home/alice/.ipython/x.py"])
    assert guard.unsafe_http_skip_tls_verify is False and guard.http_ca_bundle == ""
    assert [i["setting"] for i in ignored] == ["KernelGuard.unsafe_http_skip_tls_verify", "KernelGuard.http_ca_bundle"]


def test_an_event_the_collector_refuses_alone_is_reported_with_its_answer(collector, tmp_path):
    """A 400 is narrowed down to the one event; it is reported as lost with the status, and the rest arrive."""
    memory = MemorySink()
    pipe = _pipeline(collector.url, tmp_path, sinks=[memory], start=False)
    collector.mode = "poison"
    for reason in ("a", "b", "poison", "c", "d"):
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=reason))
    pipe.start()
    [dropped] = wait_until(lambda: [e for e in memory.events if e["event"]["action"] == "events-dropped"], 10,
                           "the events-dropped report")
    assert pipe.flush(10)
    pipe.close()
    assert dropped["kernel_guard"]["dropped"] == 1 and dropped["kernel_guard"]["rejected"] is True
    assert "400 Bad Request" in dropped["event"]["reason"]
    assert [e["event"]["reason"] for e in collector.snapshot() if e["event"]["action"] == "exec-denied"] == [
        "a", "b", "c", "d"]


def test_collector_refusing_with_500_and_429_loses_nothing_and_never_blocks_local_sinks(collector, tmp_path):
    """While the collector answers 500 then 429, the file sink keeps up, and afterwards every event arrives once."""
    memory = MemorySink()
    pipe = _pipeline(collector.url, tmp_path, sinks=[memory])
    collector.mode = "500"
    for i in range(50):
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=f"a{i}"))
    wait_until(lambda: len(memory.events) >= 50, 5, "the local sink, unaffected")
    wait_until(lambda: len(collector.requests) >= 2, 30, "retries against the 500s")
    collector.mode = "429"
    for i in range(50):
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=f"b{i}"))
    wait_until(lambda: any(r["mode"] == "429" for r in collector.requests), 45, "a 429")
    collector.mode = "ok"
    expected = {e["event"]["id"] for e in memory.events if e["event"]["action"] == "exec-denied"}
    wait_until(lambda: expected <= collector.ids(), 60, "every event after the collector recovered")
    pipe.close()
    received = dedupe(collector.snapshot())
    assert [e["event"]["sequence"] for e in received] == sorted(e["event"]["sequence"] for e in received)
    actions = [e["event"]["action"] for e in received]
    assert "sink-error" in actions and "sink-recovered" in actions


def test_kernel_with_collector_down_then_slow_stays_fast_and_loses_nothing(tmp_path):
    """A kernel's cells stay fast while its collector is down or slow, and every event arrives once, in order."""
    receiver = HttpCollector().start()
    events_file = tmp_path / "events.jsonl"
    env = {"KERNEL_GUARD_SINKS": f"{receiver.url},file://{events_file}", "XDG_STATE_HOME": str(tmp_path / "state")}
    kernel = LoggedKernel(argv=testing.plain_kernel_argv("--ext=kernel_guard"), env=env,
                          stderr_path=str(tmp_path / "kernel.stderr"))
    kernel.start()
    try:
        kernel.timed("import os\nx = 0")
        normal = [kernel.timed("x += 1") for _ in range(15)]
        receiver.stop()  # down: connections refused
        down = [kernel.timed("x += 1") for _ in range(15)]
        refused = kernel.execute("try:\n    os.system('id')\nexcept PermissionError:\n    print('refused')")
        assert "refused" in refused.stdout
        receiver.start()
        receiver.mode, receiver.slow_seconds = "slow", 3.0  # seconds per request
        slow = [kernel.timed("x += 1") for _ in range(10)]
        receiver.mode = "ok"
        kernel.execute("x += 1")
        so_far = {e["event"]["id"] for e in read_events(str(events_file))}
        wait_until(lambda: so_far <= receiver.ids(), 45, "the collector to catch up after recovering")
    finally:
        kernel.shutdown()
    written = read_events(str(events_file))
    expected = {e["event"]["id"] for e in written}
    assert {"cell-executed", "exec-denied", "kernel-stopped"} <= {e["event"]["action"] for e in written}
    try:
        wait_until(lambda: expected <= receiver.ids(), 15, "the events of the kernel's shutdown")
    except AssertionError:
        # a kernel stopped before its sender finished leaves the rest in the
        # spool; the next kernel start delivers it (at-least-once, by design)
        successor = LoggedKernel(argv=testing.plain_kernel_argv("--ext=kernel_guard"), env=env,
                                 stderr_path=str(tmp_path / "kernel2.stderr"))
        successor.start()
        try:
            wait_until(lambda: expected <= receiver.ids(), 30, "the spooled shutdown events, by the next kernel")
        finally:
            successor.shutdown()
    receiver.stop()
    received = dedupe(receiver.snapshot())
    sequences = [e["event"]["sequence"] for e in received if e["process"]["pid"] == written[0]["process"]["pid"]]
    assert sequences == sorted(sequences)
    baseline = statistics.median(normal)
    assert statistics.median(down) < 5 * baseline + 0.05, (normal, down)
    assert statistics.median(slow) < 5 * baseline + 0.05, (normal, slow)
    assert max(down + slow) < 2.0, (down, slow)
