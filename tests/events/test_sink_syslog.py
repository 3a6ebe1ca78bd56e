"""The syslog sinks against a real rsyslogd on loopback."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from kernel_guard import testing
from kernel_guard.events.aggregate import Aggregate
from kernel_guard.events.pipeline import EventPipeline
from kernel_guard.events.processors import Sequence
from kernel_guard.events.schema import make_event, validate_event
from kernel_guard.events.sinks import SinkOptions, open_sink, validate_sink_url
from kernel_guard.events.sinks.syslog import FACILITIES, format_message
from kernel_guard.exceptions import ConfigError

from sink_helpers import LoggedKernel, Rsyslogd, dedupe, wait_until

RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,6}Z) (?P<host>[!-~]{1,255}) "
    r"(?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) - (?P<msg>\{.*\})$"
)


@pytest.fixture
def rsyslog(tmp_path):
    """A running rsyslogd, stopped (and killed if need be) after the test."""
    daemon = Rsyslogd(str(tmp_path / "rsyslog"))
    daemon.start()
    yield daemon
    daemon.stop()


def _pipeline(url: str, tmp_path, **options) -> EventPipeline:
    sink = open_sink(url, SinkOptions(**options))
    return EventPipeline([sink], [Aggregate(0), Sequence()], spool_dir=str(tmp_path / "spool"))


def test_message_format_is_rfc5424_with_the_event_as_json():
    """format_message yields an RFC 5424 header (PRI from facility and severity) and the event's JSON."""
    denied = make_event("exec-denied", outcome="failure", layer="audit", reason="refused é",
                        process={"pid": 42, "args": ["sh", "-c", "ls"]})
    denied["host"] = {"hostname": "jupyter-alice"}
    text = format_message(denied, facility=FACILITIES["local3"], app_name="kg").decode("ascii")
    match = RFC5424.match(text)
    assert match, text
    assert int(match["pri"]) == 19 * 8 + 4  # local3.warning
    assert (match["host"], match["app"], match["procid"], match["msgid"]) == ("jupyter-alice", "kg", "42", "exec-denied")
    assert json.loads(match["msg"]) == json.loads(json.dumps(denied))  # category and type: tuples in process
    cell = make_event("cell-executed", outcome="failure", layer="ipython")
    assert RFC5424.match(format_message(cell).decode())["pri"] == str(1 * 8 + 6)  # user.info, even for a failed cell
    recorded = make_event("exec-attempt", outcome="unknown", layer="audit")
    assert RFC5424.match(format_message(recorded).decode())["pri"] == str(1 * 8 + 5)  # audit mode: notice
    huge = make_event("cell-executed", outcome="success", layer="ipython", code="x" * 50_000)
    small = format_message(huge, max_bytes=8192)
    assert len(small) <= 8192
    assert json.loads(RFC5424.match(small.decode())["msg"])["kernel_guard"]["truncated"] is True


def test_kernel_events_reach_rsyslog_over_tcp_as_rfc5424(rsyslog, tmp_path):
    """A guarded kernel's events arrive at rsyslogd over TCP, parsed as RFC 5424 with the JSON payload."""
    env = {"KERNEL_GUARD_SINKS": f"syslog+tcp://127.0.0.1:{rsyslog.port}", "XDG_STATE_HOME": str(tmp_path / "state")}
    with LoggedKernel(argv=testing.plain_kernel_argv("--ext=kernel_guard"), env=env,
                      stderr_path=str(tmp_path / "kernel.stderr")) as kernel:
        result = kernel.execute("import os\ntry:\n    os.system('id')\nexcept PermissionError:\n    print('refused')")
        assert "refused" in result.stdout
        wait_until(lambda: {"exec-denied", "cell-executed"} <= {f[5] for f in rsyslog.lines()}, 20,
                   "the kernel's events at rsyslogd")
    by_action = {fields[5]: fields for fields in rsyslog.lines()}
    version, facility, sev, app, procid, msgid, msg = by_action["exec-denied"]
    assert (version, facility, sev, app, msgid) == ("1", "user", "warning", "kernel_guard", "exec-denied")
    event = json.loads(msg)
    assert validate_event(event) == []
    assert event["process"]["args"] == ["sh", "-c", "id"] and str(event["process"]["pid"]) == procid
    assert by_action["cell-executed"][2] == "info"


def test_udp_and_unix_socket_deliver_with_configured_facility_and_app_name(rsyslog, tmp_path):
    """syslog+udp and syslog+unix messages arrive with the configured facility and APP-NAME."""
    urls = [f"syslog+udp://127.0.0.1:{rsyslog.port}", f"syslog+unix://{rsyslog.unix}"]
    for url in urls:
        pipe = _pipeline(url, tmp_path / url.split(":")[0], syslog_facility="local5", syslog_app_name="kg-test")
        pipe.emit(make_event("env-denied", outcome="failure", layer="audit", reason=url))
        assert pipe.flush(10)
        pipe.close()
    got = wait_until(lambda: [f for f in rsyslog.lines() if f[5] == "env-denied"] if len(
        [f for f in rsyslog.lines() if f[5] == "env-denied"]) == 2 else None, 15, "both messages")
    assert {json.loads(f[6])["event"]["reason"] for f in got} == set(urls)
    assert all(f[1] == "local5" and f[3] == "kg-test" and f[2] == "warning" for f in got)


def test_rsyslog_restart_mid_run_loses_nothing_over_tcp(rsyslog, tmp_path):
    """Events emitted steadily while rsyslogd stops and starts again all arrive (after de-duplication), in order."""
    pipe = _pipeline(f"syslog+tcp://127.0.0.1:{rsyslog.port}", tmp_path)
    sent: list = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            event = make_event("exec-denied", outcome="failure", layer="audit", reason=f"attempt {len(sent)}")
            sent.append(event["event"]["id"])
            pipe.emit(event)
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: len(rsyslog.lines()) > 50, 15, "messages before the restart")
        rsyslog.stop()
        time.sleep(1.5)  # events keep coming while the collector is away
        rsyslog.start()
        time.sleep(1.0)
    finally:
        stop.set()
        producer.join()
    expected = set(sent)
    wait_until(lambda: expected <= {e["event"]["id"] for e in rsyslog.events()}, 30,
               "every event after the restart")
    pipe.close()
    received = dedupe(rsyslog.events())
    sequences = [e["event"]["sequence"] for e in received]
    assert sequences == sorted(sequences), "events arrived out of order"
    assert len(received) >= len(sent) > 100


def test_malformed_syslog_urls_are_rejected_with_what_to_write():
    """A syslog URL without a host, or a Unix socket path that is not absolute, is refused naming the right form."""
    for url, hint in (("syslog+tcp://", "syslog+tcp://host:port"), ("syslog+udp://:514", "syslog+udp://host:port"),
                      ("syslog+unix://dev/log", "syslog+unix:///dev/log"),
                      ("syslog+tcp://collector:tcp", "syslog+tcp://host:port")):
        with pytest.raises(ConfigError, match=re.escape(hint)):
            validate_sink_url(url)
    assert validate_sink_url("syslog+unix:///dev/log") == "syslog+unix:///dev/log"
