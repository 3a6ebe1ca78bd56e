"""Floods and broken sinks: memory stays bounded, repeats are aggregated, the kernel keeps answering."""

from __future__ import annotations

import time

import pytest

from kernel_guard import testing
from kernel_guard.events.aggregate import Aggregate
from kernel_guard.events.schema import make_event
from kernel_guard.testing import read_events

from sink_helpers import LoggedKernel, wait_until

FLOOD = """
import os, threading
flood = {"refused": 0}
def _flood():
    for _ in range(1_000_000):
        try:
            os.system("true")
        except PermissionError:
            flood["refused"] += 1
flooder = threading.Thread(target=_flood)
flooder.start()
"""


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_aggregate_passes_the_first_in_full_and_counts_repeats_per_interval():
    """The first occurrence passes, repeats are counted into one summary per interval, a quiet key starts afresh."""
    clock = _Clock()
    aggregate = Aggregate(interval=5.0, clock=clock)

    def denied(command: str) -> dict:
        return make_event("exec-denied", outcome="failure", layer="audit", reason=f"refused {command}",
                          process={"args": ["sh", "-c", command]})

    first = denied("ls")
    assert aggregate(first) is first
    assert all(aggregate(denied("ls")) is None for _ in range(99))
    other = denied("id")
    assert aggregate(other) is other  # a different command is a different attempt
    cell = make_event("cell-executed", outcome="success", layer="ipython")
    assert aggregate(cell) is cell and aggregate(dict(cell)) is not None  # never aggregated
    assert aggregate.expire() == []  # the interval has not ended
    clock.now = 5.0
    [summary] = aggregate.expire()
    assert summary["event"]["action"] == "events-aggregated" and summary["event"]["outcome"] == "failure"
    assert summary["kernel_guard"]["aggregated"]["count"] == 99
    assert summary["kernel_guard"]["aggregated"]["first_event_id"] == first["event"]["id"]
    assert summary["process"]["args"] == ["sh", "-c", "ls"]
    clock.now = 10.0
    assert aggregate.expire() == []  # quiet for an interval: forgotten
    again = denied("ls")
    assert aggregate(again) is again


def test_each_key_is_summarised_when_its_own_interval_ends():
    """Keys started at different times, and a key renewed by its summary, end at their own
    times: each summary comes when its interval ends, none early, none missed."""
    clock = _Clock()
    aggregate = Aggregate(interval=5.0, clock=clock)

    def denied(command: str) -> dict:
        return make_event("exec-denied", outcome="failure", layer="audit", reason=f"refused {command}")

    def summarised() -> list:
        return sorted(s["kernel_guard"]["aggregated"]["original_reason"] for s in aggregate.expire())

    aggregate(denied("a")), aggregate(denied("a"))  # a: started at 0, one repeat
    clock.now = 3.0
    aggregate(denied("b")), aggregate(denied("b")), aggregate(denied("b"))  # b: started at 3
    clock.now = 4.9
    assert summarised() == []
    clock.now = 5.0
    aggregate(denied("a"))
    assert summarised() == ["refused a"]  # a renewed: its next interval ends at 10
    clock.now = 7.9
    aggregate(denied("a"))
    assert summarised() == []
    clock.now = 8.0
    assert summarised() == ["refused b"]
    clock.now = 9.9
    assert summarised() == []
    clock.now = 10.0
    assert summarised() == ["refused a"]
    aggregate(denied("c")), aggregate(denied("c"))
    assert [s["kernel_guard"]["aggregated"]["count"] for s in aggregate.expire(force=True)] == [1]


@pytest.mark.timeout(300)
def test_million_refused_calls_keep_memory_bounded_and_the_kernel_answering(tmp_path):
    """A million refused os.system calls: RSS grows little, cells answer within a second, counts add up."""
    events_file = tmp_path / "events.jsonl"
    env = {"KERNEL_GUARD_SINKS": f"file://{events_file}", "XDG_STATE_HOME": str(tmp_path / "state")}
    with LoggedKernel(argv=testing.plain_kernel_argv("--ext=kernel_guard"), env=env,
                      stderr_path=str(tmp_path / "kernel.stderr")) as kernel:
        kernel.timed("x = 1")
        before = kernel.process.memory_info().rss
        peak = before
        kernel.timed(FLOOD)
        latencies = []
        started = time.monotonic()
        while kernel.execute("print(flooder.is_alive())").stdout.strip() == "True":
            latencies.append(kernel.timed("x += 1"))
            peak = max(peak, kernel.process.memory_info().rss)
            time.sleep(0.2)
            assert time.monotonic() - started < 240, "the flood did not finish"
        assert kernel.execute("print(flood['refused'])").stdout.strip() == "1000000"
        after = kernel.process.memory_info().rss
    growth_mb = (max(peak, after) - before) / 2**20
    assert growth_mb < 64, f"RSS grew by {growth_mb:.1f} MiB"
    assert latencies and max(latencies) < 1.0, latencies
    events = read_events(str(events_file))
    denied = [e for e in events if e["event"]["action"] == "exec-denied"]
    summaries = [e for e in events if e["event"]["action"] == "events-aggregated"]
    assert len(denied) >= 1 and summaries
    assert all(s["kernel_guard"]["aggregated"]["action"] == "exec-denied" for s in summaries)
    assert len(denied) + sum(s["kernel_guard"]["aggregated"]["count"] for s in summaries) == 1_000_000
    assert not [e for e in events if e["event"]["action"] == "events-dropped"]


def test_full_or_unwritable_file_sink_is_reported_and_the_kernel_keeps_running(tmp_path):
    """A device (/dev/full) and an unwritable path as file sinks each give a clear stderr line and event;
    cells still run (a disk that fills while written: tests/events/test_rotation.py)."""
    ok_file = tmp_path / "ok.jsonl"
    (tmp_path / "not-a-dir").write_text("")
    unwritable = tmp_path / "not-a-dir" / "events.jsonl"
    env = {"KERNEL_GUARD_SINKS": f"file:///dev/full,file://{unwritable},file://{ok_file}",
           "XDG_STATE_HOME": str(tmp_path / "state")}
    with LoggedKernel(argv=testing.plain_kernel_argv("--ext=kernel_guard"), env=env,
                      stderr_path=str(tmp_path / "kernel.stderr")) as kernel:
        for i in range(3):
            assert kernel.execute(f"y = {i}").status == "ok"
        errors = wait_until(lambda: [e for e in read_events(str(ok_file)) if e["event"]["action"] == "sink-error"]
                            if len([e for e in read_events(str(ok_file))
                                    if e["event"]["action"] == "sink-error"]) >= 2 else None,
                            10, "sink-error events in the working sink")
        assert kernel.execute("print(y)").stdout.strip() == "2"
        stderr = kernel.stderr_text()
    by_sink = {e["kernel_guard"]["sink"]: e["event"]["reason"] for e in errors}
    assert "not a regular file" in by_sink["file:///dev/full"]
    assert f"cannot write events to {unwritable}" in by_sink[f"file://{unwritable}"]
    assert "cannot write events to /dev/full: it is not a regular file" in stderr
    assert f"cannot write events to {unwritable}" in stderr
    cells = [e for e in read_events(str(ok_file)) if e["event"]["action"] == "cell-executed"]
    assert len(cells) >= 4
