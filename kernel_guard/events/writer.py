"""The event pipeline's writer thread: it drains the queue, runs the deferred processors
(redaction, the chain), and writes each batch to the local sinks and the network sinks'
spools, counting what a sink could not keep.

:class:`EventPipeline` (:mod:`.pipeline`) is the caller's side: it queues; this is the
other side of the queue.  Network sinks are sent from their spools by
:class:`~kernel_guard.events.workers.SinkWorker`; losses are reported by
:class:`~kernel_guard.events.losses.LossReports`.  See docs/architecture.md.
"""

from __future__ import annotations

import threading
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .losses import LossReports
from .processors import Processor
from .schema import Event, make_event, new_event_id, to_json_line, writable_part
from .sinks import Sink

__all__: list[str] = []

_META = ("events-dropped", "sink-error", "sink-recovered")
#: the pipeline's reports of its own losses: a full spool still takes them (a little room is kept)
_REPORTS = frozenset({"events-dropped", "sink-error", "sink-recovered"})


_BATCH = 1024


#: the writer's tick (s): routine events are written within it
_TICK = 0.1


class _Deferred:
    """An event to be built on the writer thread (see ``emit_later``)."""

    __slots__ = ("build", "sequence")

    def __init__(self, build: Callable[[], Event], sequence: Optional[int]) -> None:
        self.build = build
        self.sequence = sequence  # reserved when it was queued


class _FlushMarker:
    """Placed in the queue; the writer sets it once everything before is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Lines:
    """Serialised events from another process, written as they are."""

    __slots__ = ("lines",)

    def __init__(self, lines: List[bytes]) -> None:
        self.lines = lines


def _about(event: Event, url: str) -> bool:
    """Whether ``event`` reports on sink ``url`` itself (not counted as its loss)."""
    return event["event"].get("action") in _META and event.get("kernel_guard", {}).get("sink") == url


def _build(build: Callable[[], Event]) -> Event:
    """The event ``build`` makes; a ``guard-error`` event in its place if it raises."""
    try:
        return build()
    except Exception as exc:  # a bug in building must not lose the record that something happened
        return make_event("guard-error", outcome="failure", layer="pipeline",
                          reason=f"an event could not be built: {exc!r}")


def _run_processors(processors: List[Processor], event: Event) -> Optional[Event]:
    """``event`` through ``processors``; None if one swallowed it; a failing one is noted, not fatal."""
    try:
        for processor in processors:
            event = processor(event)
            if event is None:
                return None
    except Exception as exc:  # a processor bug must not lose the event, nor make emit() raise
        return _after_error(processors, processors.index(processor), event, exc)
    return event


#: the parts of an event the processors write into
_WRITTEN_PARTS = ("event", "kernel_guard", "process")


def _after_error(processors: List[Processor], failed: int, event: Any, exc: Exception) -> Optional[Event]:
    """The processors from the one that raised on, over the event made writable: a part
    the processors write into that is no dict (what a caller's bug hands in) is
    replaced, and the error and what was replaced noted, so the event is still
    numbered, chained and written."""
    if type(event) is not dict:
        event = dict(event) if isinstance(event, dict) else make_event(
            "guard-error", outcome="failure", layer="pipeline",
            reason=f"an event that is no mapping was emitted: {type(event).__name__}")
    replaced = [f"{name} ({type(event[name]).__name__})" for name in _WRITTEN_PARTS
                if event.get(name) is not None and not isinstance(event[name], dict)]
    for name in _WRITTEN_PARTS:
        writable_part(event, name)
    note = repr(exc) + (f"; replaced, being no dict: {', '.join(replaced)}" if replaced else "")
    event["kernel_guard"].setdefault("processor_error", note)
    event["event"].setdefault("id", new_event_id())  # a replaced part's event is still one of its own
    for processor in processors[failed:]:  # the one that raised again too: each only adds what is missing
        try:
            event = processor(event)
        except Exception as again:
            event["kernel_guard"].setdefault("processor_error", repr(again))
            continue
        if event is None:
            return None
    return event


def _runs(batch: List[Event], lines: List[bytes]) -> List[Tuple[bool, List[bytes]]]:
    """Lines in order, cut into runs of reports and of other events (reports may use the room)."""
    runs: List[Tuple[bool, List[bytes]]] = []
    for event, line in zip(batch, lines):
        report = event["event"].get("action") in _REPORTS and event["kernel_guard"].get("layer") == "pipeline"
        if runs and runs[-1][0] == report:
            runs[-1][1].append(line)
        else:
            runs.append((report, [line]))
    return runs


class _Writer:
    """The writer thread's half of :class:`~kernel_guard.events.pipeline.EventPipeline`."""

    _queue: Deque[Any]
    _order: Any
    _wake: threading.Event
    _closed: bool
    _sync: bool
    _thread: Optional[threading.Thread]
    _on_writer: List[Processor]
    _serialise: Callable[[Event], bytes]
    _chain: Any
    _finishing: Any
    _direct: List[Sink]
    _workers: Dict[str, Any]
    losses: LossReports
    written: int
    dropped: int
    queue_size: int

    def _finish(self, event: Event) -> Optional[Tuple[Event, bytes]]:
        """Run the writer's processors (redaction) just before writing, then serialise
        the event (chained, when the last processor chains): (event, its line), or None."""
        with self._finishing:
            finished = _run_processors(self._on_writer, event)
            if finished is None:
                return None
            return finished, self._serialised(finished)

    def _expire_aggregates(self, force: bool = False) -> None:
        """Feed the aggregators' summaries of ended intervals back in after them."""
        for index, processor in enumerate(self._on_caller):
            expire = getattr(processor, "expire", None)
            if expire is None:
                continue
            try:
                summaries = expire(force=force)
            except Exception:
                continue
            for summary in summaries:
                with self._order:
                    summary = self._process(summary, index + 1)
                    if summary is not None:
                        self._enqueue(summary)

    def start(self) -> None:
        """Start the writer and the network senders (once)."""
        if self._thread is not None:
            return
        self._start_writer()
        for worker in self._workers.values():
            worker.start()

    def _start_writer(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kernel-guard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Writer loop: drain the queue in batches until closed."""
        while True:
            self._wake.wait(_TICK)
            self._wake.clear()
            self._expire_aggregates()
            self._drain()
            if self._closed and not self._queue:
                return

    def _drain(self) -> None:
        """Write everything queued, honouring flush markers in order."""
        queue = self._queue
        while queue:
            events: List[Event] = []
            while queue and len(events) < _BATCH:
                item = queue.popleft()
                if item.__class__ is dict:  # most items: an event, not a marker
                    events.append(item)
                    continue
                if isinstance(item, _FlushMarker):
                    self._write(*self._finish_batch(events))
                    events = []
                    self._flush_sinks()
                    item.done.set()
                    continue
                if isinstance(item, _Lines):
                    self._write(*self._finish_batch(events))
                    events = []
                    self._write_lines(item.lines)
                    continue
                if isinstance(item, _Deferred):
                    item = self._built(item)
                    if item is None:
                        continue
                events.append(item)
            self._write(*self._finish_batch(events))
        self._report_dropped()
        self._report_losses()

    def _built(self, deferred: _Deferred) -> Optional[Event]:
        """A deferred event, built now, with its reserved number, through the caller's processors."""
        event = _build(deferred.build)
        if deferred.sequence is not None:
            event["event"]["sequence"] = deferred.sequence
        with self._order:
            return self._process(event, 0)

    def _finish_batch(self, events: List[Event]) -> Tuple[List[Event], List[bytes]]:
        """:meth:`_finish` for a batch: each event through the writer's processors and
        serialised as it is taken (nothing a later event shares with it changes what is
        written after its hash), then the batch chained at once, natively where it can be
        (the hashing without the interpreter's lock: the cell runs meanwhile)."""
        chain = self._chain
        if chain is None or not events:
            finished = [f for f in map(self._finish, events) if f is not None]
            return [f[0] for f in finished], [f[1] for f in finished]
        done: List[Event] = []
        bodies: List[Optional[bytes]] = []
        on_writer, prepare = self._on_writer, chain.preparer()
        with self._finishing:
            for event in events:
                event = _run_processors(on_writer, event)
                if event is not None:
                    done.append(event)
                    bodies.append(prepare(event))
            try:
                return done, chain.link(done, bodies)
            except Exception:  # a bug in linking must not lose the events: each the Python way
                return done, [self._serialised(e) for e in done]

    def _serialised(self, event: Event) -> bytes:
        """One event's line by the serialiser; what it cannot write, noted and written plainly."""
        try:
            return self._serialise(event)
        except Exception as exc:  # a serialiser bug must not lose the event
            event.setdefault("kernel_guard", {})["processor_error"] = repr(exc)
            return to_json_line(event)

    def _report_dropped(self) -> None:
        self.losses.queue_full(self.dropped, self.queue_size)

    def _report_losses(self, force: bool = False) -> None:
        self.losses.report(self._workers, force)

    def _write(self, batch: List[Event], lines: Optional[List[bytes]] = None) -> None:
        """Give a batch (serialised once: ``lines``) to every local sink and every
        network sink's spool."""
        if not batch:
            return
        if lines is None:
            lines = [to_json_line(e) for e in batch]
        for sink in self._direct:
            try:
                sink.emit_lines(lines)
            except Exception as exc:
                lost = sum(1 for e in batch if not _about(e, sink.url)) - getattr(exc, "kept", 0)
                self.losses.count(sink.url, max(lost, 0))
                self._sink_failed(sink, exc)
            else:
                self._sink_ok(sink)
        if self._workers:
            for reports, run in _runs(batch, lines):
                for worker in self._workers.values():
                    worker.accept(run, reports)
        self.written += len(batch)

    def _write_lines(self, lines: List[bytes]) -> None:
        """Serialised events to every local sink and every network sink's spool."""
        for sink in self._direct:
            try:
                sink.emit_lines(lines)
            except Exception as exc:
                self.losses.count(sink.url, len(lines) - getattr(exc, "kept", 0))
                self._sink_failed(sink, exc)
            else:
                self._sink_ok(sink)
        for worker in self._workers.values():
            worker.accept(lines)
        self.written += len(lines)

    def _sink_failed(self, sink: Sink, exc: BaseException) -> None:
        self.losses.sink_failed(sink, exc, spooled=sink.url in self._workers)

    def _sink_ok(self, sink: Sink) -> None:
        self.losses.sink_ok(sink)

    def _flush_sinks(self) -> None:
        for sink in self._direct:
            try:
                sink.flush()
            except Exception as exc:
                self._sink_failed(sink, exc)
