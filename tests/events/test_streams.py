"""Streams, their hash chain and `kernel-guard verify`: a record written by the pipeline is whole;
each way of cutting or changing it afterwards is named, and the exit status says so."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from kernel_guard.events.aggregate import Aggregate
from kernel_guard.events.pipeline import EventPipeline
from kernel_guard.events.processors import Redact, Sequence
from kernel_guard.events.schema import Shared, make_event
from kernel_guard.events.sinks.file import FileSink
from kernel_guard.events.streams import StreamChain


def _pipeline(path: Path, interval: float = 0) -> EventPipeline:
    """What the runtime builds, writing to one file."""
    return EventPipeline([FileSink(str(path))], [Aggregate(interval), Sequence(), Redact(), StreamChain()],
                         spool_dir="")


def _record(path: Path, refusals: int = 5) -> list[str]:
    pipe = _pipeline(path)
    for i in range(refusals):
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=f"refused {i}"))
    pipe.close()
    return path.read_text().splitlines()


def _verify(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    script = os.path.join(os.path.dirname(sys.executable), "kernel-guard")
    return subprocess.run([script, "verify", *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_a_written_stream_opens_closes_and_verifies_whole(tmp_path: Path) -> None:
    lines = _record(tmp_path / "e.jsonl")
    events = [json.loads(line) for line in lines]
    assert [e["event"]["action"] for e in events] == ["stream-started", *["exec-denied"] * 5, "stream-ended"]
    assert [e["event"]["sequence"] for e in events] == list(range(1, 8))
    assert len({e["kernel_guard"]["stream"] for e in events}) == 1
    out = _verify(str(tmp_path / "e.jsonl"))
    assert out.returncode == 0 and "the record is whole" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("tamper,expected", [
    ("edit", "event 3 changed after it was written"),
    ("delete", "event 3 missing"),
    ("swap", "comes after a later one"),
    ("truncate", "no stream-ended"),
    ("cut the start", "no stream-started"),
    ("duplicate", "appear more than once"),
])
def test_each_change_to_the_record_is_named(tmp_path: Path, tamper: str, expected: str) -> None:
    """Edited, removed, reordered, cut short or replayed: verify says which and exits 1."""
    path = tmp_path / "e.jsonl"
    lines = _record(path)
    if tamper == "edit":
        lines[2] = lines[2].replace("refused 1", "nothing to see")
    elif tamper == "delete":
        del lines[2]
    elif tamper == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif tamper == "truncate":
        lines = lines[:4]
    elif tamper == "cut the start":
        lines = lines[1:]
    else:
        lines.insert(4, lines[3])
    path.write_text("\n".join(lines) + "\n")
    out = _verify(str(path))
    assert out.returncode == 1, out.stdout
    assert expected in out.stdout and "NOT whole" in out.stdout, out.stdout


def test_an_edit_that_also_rewrites_the_hash_breaks_the_next_link(tmp_path: Path) -> None:
    """Recomputing an edited event's own hash is not enough: the next event names the old one."""
    from kernel_guard.events.streams import chain_hash

    path = tmp_path / "e.jsonl"
    lines = _record(path)
    event = json.loads(lines[2])
    event["event"]["reason"] = "nothing to see"
    event["kernel_guard"]["chain"]["hash"] = chain_hash(event)
    lines[2] = json.dumps(event)
    path.write_text("\n".join(lines) + "\n")
    out = _verify(str(path), "--format", "json")
    report = json.loads(out.stdout)
    assert out.returncode == 1 and not report["whole"]
    (stream,) = report["streams"]
    assert stream["broken_links"] == [4] and stream["altered"] == []


def test_collector_prefixes_and_standard_input_are_read(tmp_path: Path) -> None:
    """As rsyslog writes them (a syslog prefix before the JSON) and from stdin."""
    lines = _record(tmp_path / "e.jsonl")
    prefixed = "".join(f"Nov 29 10:00:00 host kernel_guard[42]: {line}\n" for line in lines)
    out = _verify("-", stdin=prefixed)
    assert out.returncode == 0, out.stdout + out.stderr
    out = _verify("--allow-open", "-", stdin=prefixed.rsplit("\n", 2)[0] + "\n")  # the end cut off
    assert out.returncode == 0, out.stdout


#: what a caller's bug can put where the processors write: no dict
ODD_PARTS = [None, 0, "", "text", 2.5, True, ["a"], (1,)]


def test_an_event_with_parts_of_another_kind_is_written_chained_and_noted(tmp_path: Path) -> None:
    """emit() never raises: an event whose event, kernel_guard or process part is no dict
    is still numbered, chained and written, with what was replaced noted on it."""
    import random

    rng = random.Random(27)
    path = tmp_path / "e.jsonl"
    pipe = _pipeline(path)
    sent = 0
    for i in range(600):
        event = make_event("exec-denied", outcome="failure", layer="audit", reason=f"refused {i}",
                           process={"args": ["sh", "-c", str(i)]})
        for part in ("event", "kernel_guard", "process"):
            if rng.random() < 0.3:
                event[part] = rng.choice(ODD_PARTS)
        pipe.emit(event)  # raises nothing
        sent += 1
    pipe.emit(["not", "an", "event"])  # type: ignore[arg-type]
    pipe.emit(Shared(event=Shared(action="shared"), kernel_guard=None))  # nothing in it can be written to
    pipe.close()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    noted = [e for e in events if "processor_error" in e["kernel_guard"]]
    assert 100 < len(noted) < sent
    assert all(isinstance(e[part], dict) for e in events for part in ("event", "kernel_guard"))
    assert any("replaced, being no dict: event (" in e["kernel_guard"]["processor_error"] for e in noted)
    assert any("no mapping was emitted: list" in e["event"].get("reason", "") for e in noted)
    counted = sum(e["kernel_guard"].get("aggregated", {}).get("count", 0) for e in events)
    assert any(e["event"].get("action") == "shared" for e in noted)
    assert len(events) - 2 + counted == sent + 2  # each one written or counted (and the stream's two ends)
    out = _verify(str(path))
    assert out.returncode == 0 and "the record is whole" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("field,value", [("kernel_guard", 7), ("kernel_guard", ["x"]), ("chain", "x"),
                                         ("chain", {"hash": []}), ("id", ["x"]), ("recorded_by", {"a": 1}),
                                         ("heads", ["x"]), ("process", "x")])
def test_a_damaged_line_is_reported_not_a_crash(tmp_path: Path, field: str, value: object) -> None:
    """A line whose parts are of another kind (damaged, or forged by hand): verify names the
    damage and exits 1, or judges the rest whole; it never stops with a traceback."""
    path = tmp_path / "e.jsonl"
    lines = _record(path)
    event = json.loads(lines[2])
    if field in ("kernel_guard", "process"):
        event[field] = value
    elif field == "id":
        event["event"]["id"] = value
    elif field == "chain":
        event["kernel_guard"]["chain"] = value
    else:
        event["kernel_guard"][field] = value
    lines[2] = json.dumps(event)
    path.write_text("\n".join(lines) + "\n")
    out = _verify(str(path))
    assert out.returncode == 1 and "NOT whole" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_an_unreadable_file_is_named_with_status_2(tmp_path: Path) -> None:
    out = _verify(str(tmp_path / "missing.jsonl"))
    assert out.returncode == 2 and "missing.jsonl" in out.stderr


_both_workers: Any = None


def _hold_both_workers(barrier: Any) -> None:
    global _both_workers
    _both_workers = barrier


def _refuse_many(n: int) -> int:
    from kernel_guard.events import pipeline

    if _both_workers is not None:  # a task waits for the other worker's: neither takes every task
        _both_workers.wait(timeout=60)
    for _ in range(n):
        pipeline.emit(make_event("exec-denied", outcome="failure", layer="audit", reason="the same refusal"))
    return n


@contextlib.contextmanager
def _as_process_pipeline(path: Path, interval: float) -> Iterator[None]:
    """A file pipeline as this process's own for the block (repeats counted over ``interval``)."""
    from kernel_guard.events import pipeline as pipeline_module

    pipe = _pipeline(path, interval=interval)
    previous = pipeline_module.get_pipeline()
    pipeline_module.set_pipeline(pipe)
    try:
        yield
    finally:
        pipe.close()
        pipeline_module._current = previous


def test_fork_children_are_streams_of_their_own_and_flush_their_counts(tmp_path: Path) -> None:
    """Refusals in Pool(2) workers: each worker's stream names its parent's, ends, and counts every repeat."""
    path = tmp_path / "e.jsonl"
    with _as_process_pipeline(path, interval=60):  # repeats are only counted, summaries at exit
        fork = multiprocessing.get_context("fork")
        # a worker that started late took no task under load, and wrote no stream
        with fork.Pool(2, initializer=_hold_both_workers, initargs=(fork.Barrier(2),)) as pool:
            assert sum(pool.map(_refuse_many, [500] * 4, chunksize=1)) == 2000
            pool.close()
            pool.join()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    (parent,) = [e["kernel_guard"]["stream"] for e in events
                 if e["event"]["action"] == "stream-started" and not e["kernel_guard"]["parent_stream"]]
    children = {e["kernel_guard"]["stream"] for e in events if e["kernel_guard"].get("parent_stream") == parent}
    assert len(children) == 2
    refusals = sum(1 for e in events if e["event"]["action"] == "exec-denied") + \
        sum(e["kernel_guard"]["aggregated"]["count"] for e in events if e["event"]["action"] == "events-aggregated")
    assert refusals == 2000, refusals
    out = _verify(str(path))
    assert out.returncode == 0, out.stdout


def test_a_forked_child_that_records_nothing_writes_no_stream(tmp_path: Path) -> None:
    """Pool workers that only compute record nothing: no stream of theirs in the record (no
    start and end with nothing between), and verify finds it whole; a child that refuses
    something opens its stream with that first event (number 1 is its stream-started)."""
    path = tmp_path / "e.jsonl"
    with _as_process_pipeline(path, interval=0):
        with multiprocessing.get_context("fork").Pool(2) as pool:
            assert pool.map(abs, range(-8, 0)) == list(range(8, 0, -1))
            pool.close()
            pool.join()
        from kernel_guard.events import pipeline as pipeline_module

        assert pipeline_module.get_pipeline().flush()
        quiet = [json.loads(line) for line in path.read_text().splitlines()]
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.map(_refuse_many, [3]) == [3]
            pool.close()
            pool.join()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({e["kernel_guard"]["stream"] for e in quiet}) == 1, quiet
    (child,) = {e["kernel_guard"]["stream"] for e in events} - {quiet[0]["kernel_guard"]["stream"]}
    own = [(e["event"]["sequence"], e["event"]["action"]) for e in events if e["kernel_guard"]["stream"] == child]
    assert own == [(1, "stream-started"), (2, "exec-denied"), (3, "exec-denied"), (4, "exec-denied"),
                   (5, "stream-ended")]
    out = _verify(str(path))
    assert out.returncode == 0 and "the record is whole" in out.stdout, out.stdout + out.stderr


def _sigterm_action(n: int) -> str:
    """In a pool worker: SIGTERM's action after recording ``n`` refusals."""
    import signal

    _refuse_many(n)
    return "default" if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else "flush first"


def test_a_forked_child_takes_sigterm_only_once_it_has_recorded_something(tmp_path: Path) -> None:
    """A worker that recorded nothing keeps SIGTERM's default action: a Python handler
    runs only when the main thread next checks, and a SIGTERM that came just before
    the worker blocked on the pool's queue lock was never handled (``with Pool`` then
    hung at its end). One that recorded something flushes first (the test below)."""
    path = tmp_path / "e.jsonl"
    with _as_process_pipeline(path, interval=0):
        for n, expected in ((0, "default"), (2, "flush first")):
            with multiprocessing.get_context("fork").Pool(1) as pool:
                assert pool.map(_sigterm_action, [n]) == [expected]
                pool.close()
                pool.join()


def _refuse_then_wait(n: int) -> int:
    _refuse_many(n)
    time.sleep(30)  # still at work when the pool is terminated
    return n


@pytest.mark.parametrize("how", ["with Pool (terminates on exit)", "terminate() mid-work"])
def test_terminated_pool_workers_lose_nothing_they_counted(tmp_path: Path, how: str) -> None:
    """Pool.terminate() SIGTERMs its workers: each first writes what it counted and ends its stream,
    so every refusal is in the record and verify finds it whole."""
    path = tmp_path / "e.jsonl"
    with _as_process_pipeline(path, interval=60):  # repeats are only counted, summaries at the end
        if how.startswith("with"):
            with multiprocessing.get_context("fork").Pool(2) as pool:
                assert sum(pool.map(_refuse_many, [500] * 4)) == 2000
        else:
            pool = multiprocessing.get_context("fork").Pool(2)
            pool.map_async(_refuse_then_wait, [1000, 1000])
            time.sleep(3)  # both workers counted their refusals and wait
            pool.terminate()
            pool.join()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    refusals = sum(1 for e in events if e["event"]["action"] == "exec-denied") + \
        sum(e["kernel_guard"]["aggregated"]["count"] for e in events if e["event"]["action"] == "events-aggregated")
    assert refusals == 2000, refusals
    out = _verify(str(path))
    assert out.returncode == 0, out.stdout


SIGTERM_WHILE_CLOSING = """
import os, signal, sys
from kernel_guard.events import pipeline as pipeline_module
from kernel_guard.events.aggregate import Aggregate
from kernel_guard.events.pipeline import EventPipeline
from kernel_guard.events.processors import Redact, Sequence
from kernel_guard.events.schema import make_event
from kernel_guard.events.sinks.file import FileSink
from kernel_guard.events.streams import StreamChain

aggregate = Aggregate(60)
pipe = EventPipeline([FileSink(sys.argv[1])], [aggregate, Sequence(), Redact(), StreamChain()], spool_dir="")
pipeline_module._flush_on_sigterm(pipe)
for _ in range(100):
    pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason="the same refusal"))
summary = aggregate._summary

def terminated_meanwhile(*args):  # as Pool.terminate() does, while the exit's close holds the lock
    os.kill(os.getpid(), signal.SIGTERM)
    return summary(*args)

aggregate._summary = terminated_meanwhile
pipe.close()
print("survived the signal")
"""


def test_a_sigterm_during_the_exits_close_waits_for_it_then_ends_the_process(tmp_path: Path) -> None:
    """A pool worker ending as Pool.terminate() signals it: the handler's close must not wait
    inside the close already running (it held the aggregates' lock: the worker hung); the
    first close writes everything, then the signal ends the process."""
    path = tmp_path / "e.jsonl"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_CLOSING, str(path)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == -signal.SIGTERM and "survived" not in proc.stdout, proc
    events = [json.loads(line) for line in path.read_text().splitlines()]
    counted = sum(1 for e in events if e["event"]["action"] == "exec-denied") + \
        sum(e["kernel_guard"]["aggregated"]["count"] for e in events if e["event"]["action"] == "events-aggregated")
    assert counted == 100 and events[-1]["event"]["action"] == "stream-ended"
    assert _verify(str(path)).returncode == 0


def test_every_kind_of_content_verifies_whole(tmp_path) -> None:
    """The line is the hashed serialisation with the hash spliced in: text that looks like
    the chain object, line separators, and what only the copying path can write (a lone
    surrogate, an integer key) all verify, and the events keep their content."""
    path = tmp_path / "events.jsonl"
    pipe = _pipeline(path)
    forged = '"chain":{"prev":"' + "0" * 64 + '"}'
    odd = [forged, "line\u2028separator\u2029and\x85next", "lone \udcff surrogate", "plain"]
    for text in odd:
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=text))
    pipe.emit(make_event("cell-executed", outcome="success", layer="ipython", user_expressions={1: "int key"}))
    pipe.close()
    lines = path.read_text().splitlines()
    reasons = [json.loads(line)["event"].get("reason") for line in lines]
    assert forged in reasons and "plain" in reasons
    assert any(r and r.startswith("line\u2028") for r in reasons)
    assert all(line.count('"hash":') == 1 for line in lines)
    result = _verify(str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _custodian_end_after(line: str) -> str:
    """The end a custodian writes for a stream whose last event it received is ``line``."""
    import socket

    from kernel_guard.launch.custodian import Custodian, _Stream
    from kernel_guard.events.schema import to_json

    event = json.loads(line)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        keeper = Custodian(theirs, None, lambda: None, lambda _e: None)
        state = _Stream(12345, None, {"kernel_guard": {}})
        state.sequence, state.hash = event["event"]["sequence"], event["kernel_guard"]["chain"]["hash"]
        return to_json(keeper._end_event(event["kernel_guard"]["stream"], state, gone=True))
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("order", ["custodian first", "own sinks first"])
def test_a_stream_continued_in_the_kernels_own_sinks_has_one_end(tmp_path, order: str) -> None:
    """The custodian stalled, the kernel wrote on in its own sinks and ended there; the
    custodian, seeing its process gone, wrote an end after the last line it had.  Read
    together, the two records hold one stream with one end: whole."""
    lines = _record(tmp_path / "all.jsonl")  # 1 start, 2-6 refusals, 7 end
    custodian = tmp_path / "custodian.jsonl"
    own = tmp_path / "own.jsonl"
    custodian.write_text("\n".join(lines[:3] + [_custodian_end_after(lines[2])]) + "\n")
    own.write_text("\n".join(lines[3:]) + "\n")
    files = [str(custodian), str(own)] if order == "custodian first" else [str(own), str(custodian)]
    together = _verify(*files)
    assert together.returncode == 0, together.stdout
    alone = _verify(str(custodian))
    assert alone.returncode == 3 and "CUT SHORT" in alone.stdout, alone.stdout
    # the kernel died in the stall, after its own sinks had event 5: cut short, not changed
    own.write_text("\n".join(lines[3:5]) + "\n")
    died = _verify(str(custodian), str(own))
    assert died.returncode == 3 and "CUT SHORT" in died.stdout and "NOT WHOLE" not in died.stdout, died.stdout


def test_a_child_forked_while_the_writer_finishes_an_event_still_writes(tmp_path) -> None:
    """The writer thread holds its lock while it redacts and serialises; a fork at that
    moment must not leave the child's copy of the lock held for ever."""
    import threading

    path = tmp_path / "events.jsonl"
    pipe = _pipeline(path)
    held, release = threading.Event(), threading.Event()

    def writer_busy() -> None:
        with pipe._finishing:
            held.set()
            release.wait(10)

    busy = threading.Thread(target=writer_busy)
    busy.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason="from the child"))
        pipe.close(timeout=2)
        os._exit(0)
    release.set()
    busy.join()
    deadline = time.monotonic() + 15
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    pipe.close()
    assert done[0] == pid, "the child hung on a lock held at the fork"
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert any(json.loads(line)["event"].get("reason") == "from the child" for line in path.read_text().splitlines())
