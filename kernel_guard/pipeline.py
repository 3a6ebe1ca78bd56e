"""The event pipeline: processors on the emitting thread, sinks on a writer thread.

    source -> emit(event) -> processors -> bounded queue -> writer thread -> sinks

``emit`` never blocks and never raises: a full queue counts the event as
dropped, and the writer records the count as an ``events-dropped`` event of
its own.  A sink that fails is reported once (stderr line and a
``sink-error`` event to the other sinks) and retried with the next batch; the
kernel keeps going.  In a forked child the writer thread does not exist, so
the child writes synchronously: a refused exec after ``os.fork`` is still
recorded before the child exits.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections import deque
from typing import Iterable, List, Optional

from .events import Event, make_event, to_json
from .processors import Processor, Sequence
from .sinks import Sink

__all__ = ["EventPipeline", "emit", "get_pipeline", "set_pipeline"]

_BATCH = 1024


class _FlushMarker:
    """Placed in the queue; the writer sets it once everything before is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class EventPipeline:
    """Process, queue and write events without blocking the caller."""

    def __init__(
        self,
        sinks: Iterable[Sink],
        processors: Iterable[Processor] = (),
        queue_size: int = 10_000,
    ) -> None:
        self.sinks: List[Sink] = list(sinks)
        self.processors: List[Processor] = list(processors)
        self.queue_size = queue_size
        self.dropped = 0
        self.written = 0
        self.sink_errors: dict[str, str] = {}
        self._reported_dropped = 0
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._closed = False
        self._sync = False
        self._pid = os.getpid()
        self._thread: Optional[threading.Thread] = None
        self._start_writer()
        _register_fork_handler(self)

    # -- emitting ---------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Process and enqueue one event; never blocks, never raises."""
        try:
            for processor in self.processors:
                event = processor(event)
        except Exception as exc:  # a processor bug must not lose the event
            event.setdefault("kernel_guard", {})["processor_error"] = repr(exc)
        if self._closed:
            # after shutdown the sinks are gone: the server log still gets it
            _stderr_line(to_json(event))
            return
        if self._sync:
            self._write([event])
            return
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            return
        self._queue.append(event)
        if not self._wake.is_set():
            self._wake.set()

    # -- writing ----------------------------------------------------------
    def _start_writer(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kernel-guard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Writer loop: drain the queue in batches until closed."""
        while True:
            self._wake.wait(0.25)
            self._wake.clear()
            self._drain()
            if self._closed and not self._queue:
                return

    def _drain(self) -> None:
        """Write everything queued, honouring flush markers in order."""
        queue = self._queue
        while queue:
            batch: List[Event] = []
            while queue and len(batch) < _BATCH:
                item = queue.popleft()
                if isinstance(item, _FlushMarker):
                    self._write(batch)
                    batch = []
                    self._flush_sinks()
                    item.done.set()
                    continue
                batch.append(item)
            self._write(batch)
        self._report_dropped()

    def _report_dropped(self) -> None:
        """Record how many events a full queue cost since the last report."""
        lost = self.dropped - self._reported_dropped
        if lost > 0:
            self._reported_dropped += lost
            event = make_event(
                "events-dropped", outcome="failure", layer="pipeline",
                reason=f"{lost} events dropped: the event queue ({self.queue_size}) was full",
                dropped=lost, dropped_total=self.dropped,
            )
            for processor in self.processors:
                event = processor(event)
            self._write([event])

    def _write(self, batch: List[Event]) -> None:
        """Give a batch to every sink; a failing sink is reported, not fatal."""
        if not batch:
            return
        for sink in self.sinks:
            try:
                sink.emit(batch)
            except Exception as exc:
                self._sink_failed(sink, exc, batch)
            else:
                self.sink_errors.pop(sink.url, None)
        self.written += len(batch)

    def _sink_failed(self, sink: Sink, exc: Exception, batch: List[Event]) -> None:
        """Tell stderr and the other sinks, once per distinct error."""
        message = f"{type(exc).__name__}: {exc}"
        if self.sink_errors.get(sink.url) == message:
            return
        self.sink_errors[sink.url] = message
        _stderr_line(f"kernel_guard: sink {sink.url} failed ({message}); "
                     f"{len(batch)} events not written there; other sinks and the kernel continue.")
        event = make_event("sink-error", outcome="failure", layer="pipeline",
                           reason=message, sink=sink.url)
        for other in self.sinks:
            if other is not sink:
                try:
                    other.emit([event])
                except Exception:
                    pass

    def _flush_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.flush()
            except Exception as exc:
                self._sink_failed(sink, exc, [])

    # -- control ----------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything emitted so far is written; False on timeout."""
        if self._sync or self._thread is None or not self._thread.is_alive():
            self._drain()
            self._flush_sinks()
            return True
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush within ``timeout`` seconds, stop the writer, close the sinks."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                pass

    def _after_fork_in_child(self) -> None:
        """The writer thread is gone in the child: write synchronously there."""
        self._sync = True
        self._queue = deque()
        self._wake = threading.Event()
        self._pid = os.getpid()
        for processor in self.processors:
            if isinstance(processor, Sequence):
                processor.reset()
        for sink in self.sinks:
            sink.after_fork()

    def stats(self) -> dict:
        """Counts for ``kernel-guard status``."""
        return {
            "queued": len(self._queue), "written": self.written, "dropped": self.dropped,
            "sinks": {s.url: self.sink_errors.get(s.url, "ok") for s in self.sinks},
            "writer_alive": bool(self._thread and self._thread.is_alive()) or self._sync,
        }


def _stderr_line(text: str) -> None:
    """A line on the process's real stderr (the server log), never raising."""
    try:
        fd = getattr(sys.stderr, "_original_stdstream_copy", None)
        os.write(fd if isinstance(fd, int) and fd >= 0 else 2, (text + "\n").encode())
    except OSError:
        pass


_pipelines: "weakref.WeakSet[EventPipeline]" = weakref.WeakSet()
_fork_hook_registered = False


def _after_fork_in_child() -> None:
    for pipeline in list(_pipelines):
        pipeline._after_fork_in_child()


def _register_fork_handler(pipeline: EventPipeline) -> None:
    global _fork_hook_registered
    _pipelines.add(pipeline)
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True


# -- the process's pipeline --------------------------------------------------
_current: Optional[EventPipeline] = None
_early: deque = deque(maxlen=1000)  # events from before a pipeline exists


def get_pipeline() -> Optional[EventPipeline]:
    """The pipeline of this process, if the guard has been set up."""
    return _current


def set_pipeline(pipeline: EventPipeline) -> None:
    """Make ``pipeline`` the process's pipeline; hand it any early events."""
    global _current
    _current = pipeline
    while _early:
        pipeline.emit(_early.popleft())


def emit(event: Event) -> None:
    """Emit through the process's pipeline (kept until one exists)."""
    pipeline = _current
    if pipeline is None:
        _early.append(event)
    else:
        pipeline.emit(event)


@atexit.register
def _close_at_exit() -> None:
    if _current is not None:
        _current.close(timeout=3.0)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (used by tests and checks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
