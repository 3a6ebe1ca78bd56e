"""The spool: events for a sink that is down survive kernel kills and are sent, in order, later."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from kernel_guard import testing
from kernel_guard.events.aggregate import Aggregate
from kernel_guard.events.pipeline import EventPipeline
from kernel_guard.events.processors import Sequence
from kernel_guard.events.schema import make_event
from kernel_guard.events.sinks import open_sink
from kernel_guard.events.spool import Spool
from kernel_guard.testing import MemorySink, read_events

from sink_helpers import HttpCollector, LoggedKernel, Rsyslogd, dedupe, free_port, wait_until, without_streams


def _lines(*texts: str) -> list:
    return [json.dumps({"n": t}).encode() + b"\n" for t in texts]


def _drain(spool: Spool) -> list:
    out = []
    while (item := spool.read(64)) is not None:
        lines, token = item
        out += [json.loads(line)["n"] for line in lines]
        spool.ack(token)
    return out


def test_spool_sends_in_order_across_segments_and_resumes_from_the_acknowledged_offset(tmp_path):
    """Lines come back in append order across segments; after a reopen only unacknowledged ones return."""
    spool = Spool(str(tmp_path), segment_bytes=40)
    for i in range(10):
        assert spool.append(_lines(f"e{i}")) == 0
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".jsonl")]) > 1
    lines, token = spool.read(12)  # one line
    spool.ack(token)
    spool.close()
    again = Spool(str(tmp_path), segment_bytes=40)
    assert _drain(again) == [f"e{i}" for i in range(1, 10)]
    again.close()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".jsonl")] == []


def test_live_spools_keep_their_own_segments_and_adopt_those_left_behind(tmp_path):
    """A second process's spool does not take segments a live one holds, but adopts them once it is gone."""
    first, second = Spool(str(tmp_path)), Spool(str(tmp_path))
    first.append(_lines("from-first"))
    second.append(_lines("from-second"))
    assert _drain(second) == ["from-second"]
    first.close()  # like an exit (or SIGKILL): the lock goes with the process
    second.scan(force=True)
    assert _drain(second) == ["from-first"]
    second.close()


def test_spool_cap_counts_what_is_not_kept_and_records_it(tmp_path):
    """Past spool_max_bytes events are refused, counted, and an events-dropped event names the sink."""
    port = free_port()  # nothing listens: the sink stays down
    memory = MemorySink()
    pipe = EventPipeline([memory, open_sink(f"http://127.0.0.1:{port}/x")], [Aggregate(0), Sequence()],
                         spool_dir=str(tmp_path), spool_max_bytes=20_000)
    for i in range(200):
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=f"attempt {i}"))
    pipe.close(timeout=1.0)
    dropped = [e for e in memory.events if e["event"]["action"] == "events-dropped"]
    lost = pipe.stats()["spool"][f"http://127.0.0.1:{port}/x"]["lost"]
    assert 100 < lost < 200
    # the last report can itself find the spool full: it is counted, reported to the other sinks
    assert lost - 2 <= sum(e["kernel_guard"]["dropped"] for e in dropped) <= lost
    assert all(e["kernel_guard"]["sink"] == f"http://127.0.0.1:{port}/x" for e in dropped)


def test_torn_line_left_by_a_crash_is_skipped_and_counted(tmp_path):
    """A half-written last line in a dead process's segment is not sent, and is counted as lost."""
    name = "00000000000000000001-1-abcdef.jsonl"
    (tmp_path / name).write_bytes(b'{"n": "whole"}\n{"n": "to')
    spool = Spool(str(tmp_path))
    assert _drain(spool) == ["whole"]
    assert spool.lost_torn == 1
    spool.close()


def test_forked_child_events_for_a_network_sink_are_sent_by_the_parent(tmp_path):
    """A forked child spools its event (it has no sender thread); the parent sends it once the child is gone."""
    receiver = HttpCollector().start()
    try:
        pipe = EventPipeline([open_sink(receiver.url)], [Aggregate(0), Sequence()], spool_dir=str(tmp_path))
        pid = os.fork()
        if pid == 0:
            pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason="from the child"))
            os._exit(0)
        os.waitpid(pid, 0)
        wait_until(lambda: without_streams(receiver.snapshot()), 10, "the child's event")
        pipe.close()
    finally:
        receiver.stop()
    [event] = without_streams(receiver.snapshot())
    assert event["event"]["reason"] == "from the child" and event["event"]["sequence"] == 2  # its stream's second


def test_spool_survives_sigkill_and_the_next_kernel_start_delivers_it(tmp_path):
    """Events spooled while the collector was down survive SIGKILL of the kernel; the next start sends them in order."""
    receiver = HttpCollector()  # not started yet: down
    events_file = tmp_path / "events.jsonl"
    env = {"KERNEL_GUARD_SINKS": f"{receiver.url},file://{events_file}", "XDG_STATE_HOME": str(tmp_path / "state")}
    argv = testing.plain_kernel_argv("--ext=kernel_guard")
    first = LoggedKernel(argv=argv, env=env, stderr_path=str(tmp_path / "first.stderr"))
    first.start()
    try:
        for i in range(5):
            first.execute(f"x = {i}")
        first.execute("import os\ntry:\n    os.system('id')\nexcept PermissionError:\n    pass")
        spool_root = tmp_path / "state" / "kernel_guard" / "spool"

        def spooled_ids() -> set:
            ids = set()
            for folder in spool_root.iterdir():
                for segment in folder.glob("*.jsonl"):
                    ids |= {json.loads(line)["event"]["id"] for line in segment.read_text().splitlines()}
            return ids

        written = wait_until(lambda: (w := read_events(str(events_file))) and {e["event"]["id"] for e in w}
                             <= spooled_ids() and len(w) >= 8 and w, 15, "the events in the spool")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.shutdown()
    killed_pid = written[0]["process"]["pid"]
    receiver.start()
    try:
        with LoggedKernel(argv=argv, env=env, stderr_path=str(tmp_path / "second.stderr")):
            expected = {e["event"]["id"] for e in written}
            wait_until(lambda: expected <= receiver.ids(), 30, "the killed kernel's events from the next start")
    finally:
        receiver.stop()
    from_killed = [e for e in dedupe(receiver.snapshot()) if e["process"]["pid"] == killed_pid]
    sequences = [e["event"]["sequence"] for e in from_killed]
    assert sequences == list(range(1, len(sequences) + 1))  # in order, and no gap
    assert {"kernel-started", "cell-executed", "exec-denied"} <= {e["event"]["action"] for e in from_killed}


def test_syslog_http_and_file_sinks_lose_nothing_while_collectors_go_down_and_come_back(tmp_path):
    """With syslog+tcp, http and file sinks, collectors that go down and come back receive every event."""
    rsyslog = Rsyslogd(str(tmp_path / "rsyslog")).start()
    receiver = HttpCollector().start()
    events_file = tmp_path / "events.jsonl"
    sinks = f"syslog+tcp://127.0.0.1:{rsyslog.port},{receiver.url},file://{events_file}"
    env = {"KERNEL_GUARD_SINKS": sinks, "XDG_STATE_HOME": str(tmp_path / "state")}
    try:
        with LoggedKernel(argv=testing.plain_kernel_argv("--ext=kernel_guard"), env=env,
                          stderr_path=str(tmp_path / "kernel.stderr")) as kernel:
            kernel.execute("import os\nx = 0")
            rsyslog.stop()
            receiver.stop()
            for _ in range(10):
                assert kernel.timed("x += 1") < 1.0
            kernel.execute("try:\n    os.system('id')\nexcept PermissionError:\n    pass")
            rsyslog.start()
            receiver.start()
            for _ in range(5):
                kernel.execute("x += 1")
            expected = {e["event"]["id"] for e in read_events(str(events_file))}
            wait_until(lambda: expected <= receiver.ids(), 30, "every event at the HTTP collector")
            wait_until(lambda: expected <= {e["event"]["id"] for e in rsyslog.events()}, 30,
                       "every event at rsyslogd")
        written = read_events(str(events_file))
        actions = [e["event"]["action"] for e in written]
        assert actions.count("cell-executed") == 17 and "exec-denied" in actions
        assert {"sink-error", "sink-recovered"} <= set(actions)
    finally:
        receiver.stop()
        rsyslog.stop()


# -- what a spool refuses and what it reports ----------------------------------------------

def _segments(folder) -> list:
    return sorted(n for n in os.listdir(folder) if n.endswith(".jsonl"))


def _left_behind(folder, *texts: str) -> str:
    """A segment of a process that is gone: written, closed (lock released)."""
    spool = Spool(str(folder))
    spool.append(_lines(*texts))
    spool.close()
    (name,) = _segments(folder)
    return name


def test_a_spool_folder_of_another_user_or_open_to_others_is_refused(tmp_path):
    """In a shared folder a second user could delete or add to the events: the pipeline says why
    and keeps them in memory."""
    from kernel_guard.events.spool import SpoolRefused, open_spool

    open_to_group = tmp_path / "group"
    open_to_group.mkdir()
    os.chmod(open_to_group, 0o770)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 1000, 100)
    link = tmp_path / "link"
    link.symlink_to(foreign)
    for folder, why in ((open_to_group, "may be written by other users"), (foreign, "belongs to uid 1000"),
                        (link, "is not a folder")):
        try:
            Spool(str(folder))
        except SpoolRefused as exc:
            assert why in str(exc) and str(folder) in str(exc)
        else:
            raise AssertionError(f"{folder} was accepted")
    own = open_spool(str(tmp_path / "own"), "https://collector.example/x", 1 << 20)
    assert isinstance(own, Spool)  # a folder of its own is fine: created 0700
    own.close()
    # the sinks' folders are made inside the spool root: a root others may write is refused too
    pipe = EventPipeline([MemorySink()], [Sequence()], spool_dir=str(open_to_group), start=False)
    pipe.set_sinks([open_sink("http://127.0.0.1:9/x")])
    errors = [e for e in pipe._queue if isinstance(e, dict) and e["event"]["action"] == "sink-error"]
    assert errors and "lies in a folder another user may change" in errors[0]["event"]["reason"]
    assert "kept in memory only" in errors[0]["event"]["reason"]
    pipe.close(timeout=0.5)


def test_an_offset_inside_a_line_is_reported_and_the_line_sent_again(tmp_path):
    name = _left_behind(tmp_path, "first", "second")
    (tmp_path / (name[:-6] + ".ack")).write_text("5")  # inside the first line
    spool = Spool(str(tmp_path))
    assert _drain(spool) == ["first", "second"]
    (problem,) = spool.problems
    assert name in problem and "inside a line" in problem
    spool.close()


def test_an_emptied_segment_is_reported_not_passed_over(tmp_path):
    name = _left_behind(tmp_path, "first", "second", "third")
    (tmp_path / (name[:-6] + ".ack")).write_text("18 1")  # one line (18 bytes) delivered
    os.truncate(tmp_path / name, 0)  # the rest removed by someone
    spool = Spool(str(tmp_path))
    assert _drain(spool) == []
    (problem,) = spool.problems
    assert name in problem and "2 were removed before they were delivered" in problem
    assert spool.causes == {"a spool segment was emptied or cut": 2}
    spool.close()


def test_a_full_spool_still_takes_the_report_that_it_is_full(tmp_path):
    """The collector is down and the spool is full: the events-dropped report is spooled anyway
    (in a little room kept for reports), with the true cause, and is delivered later."""
    pipe = EventPipeline([open_sink("http://127.0.0.1:9/ingest")], [Sequence()], spool_dir=str(tmp_path),
                         spool_max_bytes=4096)
    for i in range(100):
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=f"refused {i:03d}"))
    pipe.flush(timeout=2)
    pipe._report_losses(force=True)
    (worker,) = pipe._workers.values()
    # a loaded machine may take longer than one flush to spool: wait for the report, up to a deadline
    deadline = time.monotonic() + 30
    while True:
        pipe.flush(timeout=2)
        spooled = []
        for segment in _segments(worker.spool.directory):
            with open(os.path.join(worker.spool.directory, segment), "rb") as fh:
                spooled += [json.loads(line) for line in fh if line.endswith(b"\n")]
        reports = [e for e in spooled if e["event"]["action"] == "events-dropped"]
        if reports or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reports, "the report was lost to the full spool"
    assert "the spool is full (4096 bytes undelivered)" in reports[0]["event"]["reason"]
    pipe.close(timeout=0.5)


def _numbered(n: int) -> list:
    return [json.dumps({"event": {"action": "x", "sequence": i}}).encode() + b"\n" for i in range(n)]


def test_an_emptied_segment_of_its_own_is_reported_with_its_count(tmp_path) -> None:
    """A segment emptied by someone else while its events wait: the next read reports exactly the
    undelivered events it lost, as a problem naming the file and as a cause of loss."""
    spool = Spool(str(tmp_path / "s"))
    assert spool.append(_numbered(66)) == 0
    batch = spool.read(max_bytes=1000)
    assert batch is not None
    delivered = len(batch[0])
    (segment,) = [n for n in os.listdir(tmp_path / "s") if n.endswith(".jsonl")]
    os.truncate(tmp_path / "s" / segment, 0)
    assert spool.read() is None
    assert spool.causes == {"a spool segment was emptied or cut": 66 - delivered}
    assert any(f"{66 - delivered} undelivered events were removed" in p for p in spool.problems)
    spool.close()


ABANDON = """
import json, os, sys
from kernel_guard.events.spool import Spool
spool = Spool(sys.argv[1])
spool.append([json.dumps({"n": i}).encode() + b"\\n" for i in range(66)])
os._exit(0)  # killed: no close, the segment stays for the next process
"""


def test_an_emptied_segment_left_by_a_killed_process_is_reported_with_its_count(tmp_path) -> None:
    """A process appends 66 events and dies; the segment is emptied before anyone sends it; the
    next process that adopts it reports that 66 events were removed (not nothing, not 1)."""
    folder = str(tmp_path / "s")
    done = subprocess.run([sys.executable, "-c", ABANDON, folder], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (segment,) = [n for n in os.listdir(folder) if n.endswith(".jsonl")]
    os.truncate(os.path.join(folder, segment), 0)
    spool = Spool(folder)
    assert spool.causes == {"a spool segment was emptied or cut": 66}
    assert any("0 of the 66 events written to it were delivered and 0 still wait in it: 66 were removed" in p
               for p in spool.problems)
    spool.close()
