"""Sinks and the pipeline: file, stderr and logging sinks, errors, overflow, concurrent writers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from sink_helpers import without_streams

from kernel_guard.events.pipeline import EventPipeline
from kernel_guard.events.schema import make_event
from kernel_guard.events.sinks import open_sink, validate_sink_url
from kernel_guard.events.sinks.file import FileSink
from kernel_guard.exceptions import ConfigError, SinkError
from kernel_guard.testing import MemorySink, read_events


def _event(i: int = 0, **fields):
    return make_event("cell-executed", outcome="success", layer="ipython", execution_count=i, **fields)


def test_file_sink_appends_json_lines_and_creates_directories(tmp_path):
    """The file sink creates missing folders and appends one JSON object per line."""
    path = tmp_path / "a" / "b" / "events.jsonl"
    sink = open_sink(f"file://{path}")
    sink.emit([_event(1), _event(2)])
    sink.emit([_event(3)])
    sink.close()
    assert [e["kernel_guard"]["execution_count"] for e in read_events(str(path))] == [1, 2, 3]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_unwritable_file_sink_gives_a_clear_error(tmp_path):
    """A path that cannot be written names the path and the setting to change."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(SinkError, match=r"cannot write events to .*not-a-dir/events.jsonl.*KERNEL_GUARD_SINKS"):
        open_sink(f"file://{blocker}/events.jsonl")


@pytest.mark.parametrize("url,message", [
    ("ftp://host/x", "unknown sink scheme"),
    ("file://relative/events.jsonl", "absolute path"),
    ("events.jsonl", "unknown sink scheme"),
])
def test_bad_sink_urls_are_rejected_with_the_fix(url, message):
    """Unknown schemes and relative file paths are rejected with a message saying what to write."""
    with pytest.raises(ConfigError, match=message):
        validate_sink_url(url)


def test_logging_sink_uses_levels_by_outcome(caplog):
    """Refusals are logged at WARNING, other events at INFO, with the event attached."""
    sink = open_sink("logging://kg.test")
    with caplog.at_level(logging.INFO, logger="kg.test"):
        sink.emit([_event(1), make_event("exec-denied", outcome="failure", layer="audit")])
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.INFO, logging.WARNING]
    assert caplog.records[1].kernel_guard_event["event"]["action"] == "exec-denied"


def test_stderr_sink_writes_to_process_stderr(tmp_path):
    """stderr:// writes JSON lines to the process's standard error."""
    code = ("from kernel_guard.events.sinks import open_sink; from kernel_guard.events.schema import make_event\n"
            "open_sink('stderr://').emit([make_event('kernel-started', outcome='success', layer='launcher')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stderr.strip().splitlines()[-1])["event"]["action"] == "kernel-started"


class SlowSink(MemorySink):
    """A sink that takes a while per batch (a slow collector)."""

    def emit(self, events):
        time.sleep(0.05)
        super().emit(events)


def test_queue_overflow_is_counted_and_recorded():
    """When the queue is full, events are dropped, counted, and the count is itself recorded."""
    sink = SlowSink()
    pipe = EventPipeline([sink], queue_size=100)
    for i in range(5000):
        pipe.emit(_event(i))
    pipe.close(timeout=10)
    dropped_events = [e for e in sink.events if e["event"]["action"] == "events-dropped"]
    assert pipe.dropped > 0
    assert sum(e["kernel_guard"]["dropped"] for e in dropped_events) == pipe.dropped
    kept = [e for e in sink.events if e["event"]["action"] == "cell-executed"]
    assert len(kept) + pipe.dropped == 5000


def test_emit_never_blocks_on_a_slow_sink():
    """emit returns at once even when the sink is slow (writing is off the cell's path)."""
    pipe = EventPipeline([SlowSink()], queue_size=10_000)
    started = time.perf_counter()
    for i in range(2000):
        pipe.emit(_event(i))
    elapsed = time.perf_counter() - started
    pipe.close(timeout=10)
    assert elapsed < 1.0, f"2000 emits took {elapsed:.2f}s"


class BrokenSink(MemorySink):
    url = "broken://"

    def emit(self, events):
        raise OSError("collector unreachable")


def test_failing_sink_is_reported_and_others_continue(capfd):
    """A failing sink is reported once on stderr and to the other sinks; they keep receiving events."""
    good = MemorySink()
    pipe = EventPipeline([BrokenSink(), good])
    for i in range(3):
        pipe.emit(_event(i))
        pipe.flush()
    pipe.close()
    assert [e["event"]["action"] for e in good.events].count("sink-error") == 1
    assert len([e for e in good.events if e["event"]["action"] == "cell-executed"]) == 3
    assert "sink broken:// failed (OSError: collector unreachable)" in capfd.readouterr().err


def test_close_flushes_everything():
    """close() writes every queued event before returning."""
    sink = MemorySink()
    pipe = EventPipeline([sink])
    for i in range(1000):
        pipe.emit(_event(i))
    pipe.close()
    assert len(sink.events) == 1000


def test_events_from_forked_children_are_written(tmp_path):
    """A forked child (no writer thread there) writes its events synchronously before exiting."""
    path = tmp_path / "events.jsonl"
    pipe = EventPipeline([FileSink(str(path))])
    pid = os.fork()
    if pid == 0:
        pipe.emit(_event(99))
        os._exit(0)
    os.waitpid(pid, 0)
    pipe.close()
    assert [e["kernel_guard"]["execution_count"] for e in read_events(str(path))] == [99]


def test_concurrent_writers_never_interleave_lines(tmp_path):
    """Several processes and threads sharing one file write whole lines only."""
    path = tmp_path / "shared.jsonl"
    code = (
        "import sys, threading\n"
        "from kernel_guard.events.sinks.file import FileSink\nfrom kernel_guard.events.schema import make_event\n"
        "sink = FileSink(sys.argv[1])\n"
        "def work():\n"
        "    for i in range(50):\n"
        "        sink.emit([make_event('cell-executed', outcome='success', layer='ipython', code='x' * 5000,"
        " execution_count=i) for _ in range(10)])\n"
        "threads = [threading.Thread(target=work) for _ in range(2)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 2 * 50 * 10
    assert all(json.loads(line)["kernel_guard"]["code"] == "x" * 5000 for line in lines)


def test_unwritable_sink_in_a_kernel_is_reported_and_the_kernel_runs(make_kernel, tmp_path):
    """A kernel whose file sink cannot be opened says why on stderr, records it elsewhere, and keeps guarding."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    kernel = make_kernel(start=False)
    good = kernel.sink
    kernel.session.env["KERNEL_GUARD_SINKS"] = f"file://{blocker}/events.jsonl,file://{good}"
    kernel.start()
    kernel.execute("!ls")
    assert kernel.alive()
    assert "cannot write events to" in kernel.stderr() and "blocker/events.jsonl" in kernel.stderr()
    actions = [e["event"]["action"] for e in kernel.events()]
    assert "sink-error" in actions and "shell-refused" in actions


def test_writer_thread_is_named(tmp_path):
    """The writer thread is identifiable in thread dumps and py-spy."""
    pipe = EventPipeline([MemorySink()])
    assert "kernel-guard-writer" in [t.name for t in threading.enumerate()]
    pipe.close()


def test_redaction_and_numbering_happen_before_every_write_path(tmp_path, capfd):
    """Secrets are redacted and events numbered in order whether written by the writer thread, after close, or in a forked child."""
    from kernel_guard.events.processors import AddContext, Redact, Sequence
    from kernel_guard.events.schema import KernelContext

    secret = "ghp_" + "a" * 36
    sink = MemorySink()
    pipe = EventPipeline([sink], [AddContext(KernelContext()), Sequence(), Redact()])
    for i in range(50):
        pipe.emit(_event(i, code=f"token = '{secret}'  # {i}"))
        pipe.emit_later(lambda i=i: _event(i, code=f"secret={secret}"))  # built on the writer thread
    pipe.flush()
    own = without_streams(sink.events)
    assert [e["event"]["sequence"] for e in own] == list(range(2, 102))  # 1 opened the stream
    assert all(secret not in json.dumps(e) and "[REDACTED]" in e["kernel_guard"]["code"] for e in own)
    assert [e["kernel_guard"]["execution_count"] for e in own[:4]] == [0, 0, 1, 1]
    path = tmp_path / "child.jsonl"
    child = os.fork()
    if child == 0:  # the child writes synchronously, with its own numbering
        try:
            pipe.sinks.append(FileSink(str(path)))
            pipe._direct.append(pipe.sinks[-1])
            pipe.emit(_event(1, code=f"password={secret}"))
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    started, line = read_events(str(path))  # its stream opens with its first event
    assert (started["event"]["action"], started["event"]["sequence"]) == ("stream-started", 1)
    assert secret not in json.dumps(line) and line["event"]["sequence"] == 2
    pipe.close()
    pipe.emit(_event(2, code=f"api_key={secret}"))  # after close: to stderr, still redacted
    err = capfd.readouterr().err
    assert "api_key" in err and secret not in err


def test_network_sink_modules_load_only_when_used(tmp_path):
    """A kernel writing to a file never imports ssl/http.client; a missing module is a clear SinkError, not a crash."""
    code = ("import sys\nfrom kernel_guard import runtime\n"
            f"runtime.start(kernel_id='x')\n"
            "print('kernel_guard.events.sinks.http' in sys.modules, 'kernel_guard.events.sinks.syslog' in sys.modules)\n"
            "sys.modules['kernel_guard.events.sinks.http'] = None\n"
            "from kernel_guard.events.sinks import open_sink\n"
            "from kernel_guard.exceptions import SinkError\n"
            "try:\n    open_sink('https://collector.example:8443/x')\nexcept SinkError as e:\n    print('SinkError', 'collector.example' in str(e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "KERNEL_GUARD_SINKS": f"file://{tmp_path}/e.jsonl",
                              "XDG_STATE_HOME": str(tmp_path)})
    assert out.stdout.split() == ["False", "False", "SinkError", "True"], out.stderr


def test_file_sink_refuses_a_symlink_and_a_file_of_another_user(tmp_path) -> None:
    """In a shared folder, a link planted by someone else, or their file, is refused with the reason."""
    import os

    from kernel_guard.events.sinks.file import FileSink
    from kernel_guard.exceptions import SinkError

    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with pytest.raises(SinkError, match="symbolic link"):
        FileSink(str(link))
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("")
    os.chown(foreign, 4242, 4242)
    with pytest.raises(SinkError, match="belongs to uid 4242"):
        FileSink(str(foreign))


@pytest.mark.parametrize("sizes,limit,runs", [
    ([], 10, []),
    ([3, 3, 3], 10, [(0, 3)]),
    ([4, 4, 4], 8, [(0, 2), (2, 3)]),
    ([12, 2, 2], 10, [(0, 1), (1, 3)]),  # a line longer than the limit goes alone
    ([2, 12, 2], 10, [(0, 1), (1, 2), (2, 3)]),
    ([0, 10, 0, 1], 10, [(0, 3), (3, 4)]),
])
def test_line_runs_fill_each_write_in_order_up_to_the_limit(sizes, limit, runs) -> None:
    """Lines are cut into consecutive runs of at most the limit in bytes, each filled before the
    next starts, a longer line alone: what one write(2) of the file sink, or one message to the
    custodian, carries."""
    from kernel_guard.events.sinks import line_runs

    assert list(line_runs([b"x" * n for n in sizes], limit)) == runs


def test_lines_forwarded_after_the_pipeline_closed_reach_stderr_not_nowhere(capfd):
    """The custodian's intake after shutdown: taken (the custodian does not wait forever for
    a queue that will never take them) and shown on stderr, the server log, as events are."""
    from kernel_guard.events.pipeline import EventPipeline
    from kernel_guard.testing import MemorySink

    pipe = EventPipeline([MemorySink()], [], spool_dir="")
    pipe.close()
    assert pipe.forward([b'{"event":{"action":"late-line"}}\n']) is True
    assert '{"event":{"action":"late-line"}}' in capfd.readouterr().err
