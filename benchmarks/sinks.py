"""Scenario 7: the event pipeline and the file sink under load.

Throughput: in a fresh interpreter, the pipeline exactly as the guard builds
it (``runtime.start``: context, aggregation, redaction, numbering, bounded
queue, writer thread) with a ``file://`` sink.  Distinct ``exec-denied``
events (nothing to aggregate) are emitted in bursts that fit the queue, and
``flush`` waits for the writer: the whole pipeline's events per second, and
the cost per ``emit`` on the emitting thread (what a cell pays).  The judged
figure is the file sink's own rate: processed events through
``FileSink.emit`` in the writer's batches (serialising and ``write(2)``).

Flood: a cell in the extension-only kernel, and one in the launcher kernel,
makes one million refused ``os.system`` calls, each an ``exec-denied`` event;
the kernel's resident memory (and, under the launcher, the supervisor's, the
custodian of its record) is sampled throughout.  Identical events are
aggregated, and the queues are bounded, so memory must stay flat.

Custodian: a forked process sends serialised events as the kernel's writer
does; this process, as the supervisor under the launcher, checks each batch,
queues it and writes it to a file sink: the judged rate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

if __package__:
    from .kernels import BenchKernel
    from .stats import all_met, median, rounded

TARGET_EVENTS_PER_S = 100_000
TARGET_CUSTODIAN_EVENTS_PER_S = 250_000
TARGET_EMIT_US = 5.0
TARGET_WRITER_US = 20.0
TARGET_DISTINCT = 200_000
TARGET_FLOOD_MB = 50.0

FLOOD = r'''
import os as _os, time as _time
def _bench_flood(n):
    refused = 0
    t = _time.perf_counter()
    for _ in range(n):
        try:
            _os.system("true")
        except PermissionError:
            refused += 1
    return refused, _time.perf_counter() - t
'''


# -- throughput (child) -----------------------------------------------------------

def child(total: int, burst: int) -> Dict[str, Any]:
    """Emit ``total`` distinct events in bursts through the guard's pipeline; measure."""
    root = tempfile.mkdtemp(prefix="kg-bench-sink-")
    try:
        return _measure(root, total, burst)
    finally:  # its files are hundreds of MB: a run that failed half way must not leave them
        shutil.rmtree(root, ignore_errors=True)


def _measure(root: str, total: int, burst: int) -> Dict[str, Any]:
    """:func:`child`'s work, its files in ``root``."""
    path = os.path.join(root, "events.jsonl")
    os.environ["KERNEL_GUARD_SINKS"] = f"file://{path}"
    os.environ["XDG_STATE_HOME"] = os.path.join(root, "state")
    from kernel_guard import runtime
    from kernel_guard.events.schema import make_event

    rt = runtime.start(kernel_id="bench")
    pipeline = rt.pipeline
    pipeline.flush()
    before = os.path.getsize(path) if os.path.exists(path) else 0

    def event(i: int) -> dict:
        return make_event("exec-denied", outcome="failure", layer="audit", technique="os.system",
                          reason=f"refused starting a program (os.system: job-{i})",
                          process={"executable": "/bin/sh", "args": ["sh", "-c", f"job-{i}"],
                                   "command_line": f"job-{i}"})

    emit_seconds = 0.0
    started = time.perf_counter()
    sent = 0
    while sent < total:
        events = [event(sent + i) for i in range(min(burst, total - sent))]
        # the emitting thread's own CPU time: the writer thread runs meanwhile, and the
        # wall time of the loop would count its turns with the GIL as the caller's cost
        t = time.thread_time()
        for e in events:
            pipeline.emit(e)
        emit_seconds += time.thread_time() - t
        sent += len(events)
        pipeline.flush(timeout=60)
    elapsed = time.perf_counter() - started
    with open(path, "rb") as fh:
        fh.seek(before)
        written = sum(1 for line in fh if b'"exec-denied"' in line)
    size = os.path.getsize(path) - before
    stats = pipeline.stats()
    pipeline.close()
    os.unlink(path)
    sample = [event(3 * total + i) for i in range(min(total, 20_000))]  # new text: nothing to aggregate
    return {"events": total, "written": written, "dropped": stats["dropped"], "seconds": elapsed,
            "emit_us": emit_seconds / total * 1e6, "bytes_per_event": size / max(1, written),
            "writer_us": _writer_us(root, [event(total + i) for i in range(len(sample))], rt),
            "sink_events_per_s": _sink_rate(root, sample, rt),
            "custodian_events_per_s": _custodian_rate(root, [event(2 * total + i) for i in range(min(total, 50_000))],
                                                      rt)}


def _finished(events: List[dict], rt: Any) -> List[tuple]:
    """(event, line) for each event, through the caller's and the writer's processors."""
    pipeline = rt.pipeline
    out = []
    for event in events:
        for processor in pipeline._on_caller:
            event = processor(event)
        finished = pipeline._finish(event) if event is not None else None
        if finished is not None:
            out.append(finished)
    return out


def _writer_us(root: str, events: List[dict], rt: Any) -> float:
    """Microseconds per distinct event of the writer thread's part: redaction, the chain and
    serialisation (``_finish_batch``) and the file sink's write, in the writer's batches."""
    from kernel_guard.events.sinks.file import FileSink

    pipeline = rt.pipeline
    for processor in pipeline._on_caller:  # the caller's part is not the writer's
        events = [e for e in map(processor, events) if e is not None]
    sink = FileSink(os.path.join(root, "writer-only.jsonl"))
    try:
        started = time.perf_counter()
        for i in range(0, len(events), 1024):
            sink.emit_lines(pipeline._finish_batch(events[i:i + 1024])[1])
        return (time.perf_counter() - started) / len(events) * 1e6
    finally:
        sink.close()
        os.unlink(sink.path)


def _custodian_rate(root: str, events: List[dict], rt: Any) -> float:
    """Events per second into the custodian's file sink: a forked process sends them as
    the kernel's writer does (CustodianSink); this process checks each batch, queues it
    and writes it, as the supervisor does under the launcher (two processes, two GILs)."""
    import socket

    from kernel_guard.events.pipeline import EventPipeline
    from kernel_guard.events.processors import Sequence
    from kernel_guard.events.sinks.file import FileSink
    from kernel_guard.launch.custodian import Custodian
    from kernel_guard.launch.custodian_sink import CustodianSink

    lines = [line for _, line in _finished(events, rt)]
    path = os.path.join(root, "custodian.jsonl")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pipe = EventPipeline([FileSink(path)], [Sequence()], spool_dir="")
    custodian = Custodian(theirs, pipe, lambda: None, pipe.emit)
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:  # the kernel's side
        theirs.close()
        os.read(go_r, 1)
        sender = CustodianSink(ours, lambda: [])
        for i in range(0, len(lines), 1024):  # the kernel writer's batch size
            sender.emit_lines(lines[i:i + 1024])
        os._exit(0)
    ours.close()
    custodian.start()
    started = time.perf_counter()
    os.write(go_w, b"x")
    deadline = time.monotonic() + 60
    while custodian.counts["received"] < len(lines) and time.monotonic() < deadline:
        time.sleep(0.002)  # each look takes the GIL from the custodian: not too often
    pipe.flush(timeout=60)
    rate = len(lines) / (time.perf_counter() - started)
    os.waitpid(child, 0)
    custodian.stop()
    pipe.close()
    with open(path, "rb") as fh:
        written = sum(1 for line in fh if b'"exec-denied"' in line)
    os.unlink(path)
    return rate if written == len(lines) else 0.0


def _sink_rate(root: str, events: List[dict], rt: Any) -> float:
    """Events per second ``FileSink.emit`` writes: the writer thread's part (JSON + write(2))."""
    from kernel_guard.events.sinks.file import FileSink

    events = [event for event, _ in _finished(events, rt)]  # as they reach the sink
    sink = FileSink(os.path.join(root, "sink-only.jsonl"))
    best = 0.0
    try:
        for _ in range(3):
            started = time.perf_counter()
            for i in range(0, len(events), 1024):  # the writer's batch size
                sink.emit(events[i:i + 1024])
            best = max(best, len(events) / (time.perf_counter() - started))
    finally:
        sink.close()
        os.unlink(sink.path)
    return best


# -- the parent -------------------------------------------------------------------

CAPACITY = r'''
import os as _os, time as _time
def _bench_distinct(n, tag):
    refused = 0
    t = _time.perf_counter()
    for i in range(n):
        try:
            _os.system(f"kgcap-{tag}-{i}")
        except PermissionError:
            refused += 1
    return refused, _time.perf_counter() - t
'''


def capacity(kernel: BenchKernel, events: int) -> Dict[str, Any]:
    """A cell refusing ``events`` distinct commands as fast as it can: how many of the
    refusals the kernel's writer wrote (none may be dropped), and at what rate."""
    kernel.execute(CAPACITY)
    tag = os.urandom(4).hex()
    start = os.path.getsize(kernel.workspace.sink)
    refused, seconds = kernel.value("", f"_bench_distinct({events}, {tag!r})", timeout=900)
    needle = f"kgcap-{tag}-".encode()
    written = dropped = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the writer may still be writing when the cell ends
        written, dropped = _count_capacity(kernel.workspace.sink, start, needle)
        if written + dropped >= refused:
            break
        time.sleep(0.5)
    return {"events": events, "refused": refused, "written": written, "dropped": dropped,
            "seconds": rounded(seconds, 3), "refusals_per_s": rounded(refused / seconds, 0)}


def _count_capacity(path: str, start: int, needle: bytes) -> tuple:
    """(refusals written, events the pipeline reported dropped) in the record after ``start``."""
    written = dropped = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        for line in fh:
            if b'"events-dropped"' in line:
                dropped += json.loads(line).get("kernel_guard", {}).get("dropped", 0)
            elif needle in line and b'"exec-denied"' in line:
                written += 1
    return written, dropped


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _supervisor_of(pid: int) -> int:
    """The launcher kernel's supervisor (its child running kernel_guard.launch.supervisor), or 0."""
    import psutil

    for child in psutil.Process(pid).children():
        if "kernel_guard.launch.supervisor" in " ".join(child.cmdline()):
            return child.pid
    return 0


def flood(kernel: BenchKernel, events: int) -> Dict[str, Any]:
    """Run the flood cell while sampling the kernel's RSS (and, under the launcher, the
    supervisor's: the custodian takes every event the kernel writes)."""
    kernel.execute(FLOOD)
    kernel.value("", "_bench_flood(1000)")  # warm-up
    pid = kernel.pid
    supervisor = _supervisor_of(pid)
    before = _rss_mb(pid)
    sup_before = _rss_mb(supervisor) if supervisor else 0.0
    samples: List[float] = []
    sup_samples: List[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                samples.append(_rss_mb(pid))
                if supervisor:
                    sup_samples.append(_rss_mb(supervisor))
            except OSError:
                return
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        refused, seconds = kernel.value("", f"_bench_flood({events})", timeout=600)
    finally:
        done.set()
        sampler.join()
    after = _rss_mb(pid)
    peak = max(samples + [after])
    out = {"events": events, "refused": refused, "seconds": rounded(seconds, 3),
           "events_per_s": rounded(events / seconds, 0), "rss_before_mb": rounded(before, 1),
           "rss_peak_mb": rounded(peak, 1), "rss_after_mb": rounded(after, 1),
           "growth_mb": rounded(peak - before, 1)}
    if supervisor:
        out["supervisor_growth_mb"] = rounded(max(sup_samples + [sup_before]) - sup_before, 1)
    return out


def run(repetitions: int, quick: bool, kernel: BenchKernel, launcher: "BenchKernel | None" = None) -> Dict[str, Any]:
    total, burst = (20_000, 5_000) if quick else (100_000, 5_000)
    runs = []
    for _ in range(repetitions):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(total), str(burst)],
                             capture_output=True, text=True, check=True, timeout=600)
        runs.append(json.loads(out.stdout))
    pipeline_rate = median([r["written"] / r["seconds"] for r in runs])
    rate = median([r["sink_events_per_s"] for r in runs])
    emit_us = median([r["emit_us"] for r in runs])
    custodian_rate = median([r["custodian_events_per_s"] for r in runs])
    writer_us = median([r["writer_us"] for r in runs])
    complete = all(r["written"] == r["events"] and r["dropped"] == 0 for r in runs)
    capacity_result = capacity(kernel, 50_000 if quick else TARGET_DISTINCT)
    flood_result = flood(kernel, 100_000 if quick else 1_000_000)
    flood_ok = flood_result["refused"] == flood_result["events"] and flood_result["growth_mb"] <= TARGET_FLOOD_MB
    launcher_flood = flood(launcher, 100_000 if quick else 1_000_000) if launcher is not None else None
    rows = [
        {"metric": "file sink (JSON + write), events/s", "config": "pipeline", "plain": None,
         "guarded": rounded(rate, 0), "ratio": None, "target": f">= {TARGET_EVENTS_PER_S}",
         "met": complete and rate >= TARGET_EVENTS_PER_S},
        {"metric": "custodian (socket, check, file), events/s", "config": "launcher", "plain": None,
         "guarded": rounded(custodian_rate, 0), "ratio": None, "target": f">= {TARGET_CUSTODIAN_EVENTS_PER_S}",
         "met": custodian_rate >= TARGET_CUSTODIAN_EVENTS_PER_S},
        {"metric": "whole pipeline (make_event to file), events/s", "config": "pipeline", "plain": None,
         "guarded": rounded(pipeline_rate, 0), "ratio": None, "target": f">= {TARGET_EVENTS_PER_S}",
         "met": complete and pipeline_rate >= TARGET_EVENTS_PER_S},
        {"metric": "emit() on the caller's thread (its CPU time), us/event", "config": "pipeline", "plain": None,
         "guarded": rounded(emit_us, 2), "ratio": None, "target": f"<= {TARGET_EMIT_US:g}",
         "met": emit_us <= TARGET_EMIT_US},
        {"metric": "writer: redaction, chain, serialisation, write, us/event", "config": "pipeline",
         "plain": None, "guarded": rounded(writer_us, 2), "ratio": None, "target": f"<= {TARGET_WRITER_US:g}",
         "met": writer_us <= TARGET_WRITER_US},
        {"metric": f"distinct refusals written of {capacity_result['refused']:,} (a cell refusing as fast "
                   "as it can)", "config": "extension", "plain": None, "guarded": capacity_result["written"],
         "ratio": None, "target": "all, none dropped",
         "met": capacity_result["written"] == capacity_result["refused"] == capacity_result["events"]
         and capacity_result["dropped"] == 0},
        {"metric": f"RSS growth, {flood_result['events']:,} refused calls, MB", "config": "extension",
         "plain": None, "guarded": flood_result["growth_mb"], "ratio": None,
         "target": f"<= {TARGET_FLOOD_MB:g} MB", "met": flood_ok},
    ]
    if launcher_flood is not None:
        for who, growth in (("kernel", launcher_flood["growth_mb"]),
                            ("supervisor", launcher_flood.get("supervisor_growth_mb", 0.0))):
            rows.append({"metric": f"RSS growth of the {who}, {launcher_flood['events']:,} refused calls, MB",
                         "config": "launcher", "plain": None, "guarded": growth, "ratio": None,
                         "target": f"<= {TARGET_FLOOD_MB:g} MB",
                         "met": launcher_flood["refused"] == launcher_flood["events"] and growth <= TARGET_FLOOD_MB})
    return {
        "title": "sinks",
        "unit": "events/s; MB",
        "repetitions": repetitions,
        "results": {"events_per_s": rounded(rate, 0), "pipeline_events_per_s": rounded(pipeline_rate, 0),
                    "emit_us": rounded(emit_us, 3), "custodian_events_per_s": rounded(custodian_rate, 0),
                    "writer_us": rounded(writer_us, 3), "capacity": capacity_result,
                    "complete": complete, "throughput_runs": runs, "flood": flood_result,
                    "launcher_flood": launcher_flood},
        "ratios": {},
        "target": f">= {TARGET_EVENTS_PER_S} events/s through the pipeline and the file sink; emit() <= "
                  f"{TARGET_EMIT_US:g} us; writer <= {TARGET_WRITER_US:g} us/event; custodian >= "
                  f"{TARGET_CUSTODIAN_EVENTS_PER_S} events/s; every distinct refusal written; "
                  f"RSS growth <= {TARGET_FLOOD_MB:g} MB under the flood",
        "met": all_met(rows),
        "rows": rows,
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        sys.exit("usage: sinks.py --child TOTAL BURST (run benchmarks/run.py instead)")
