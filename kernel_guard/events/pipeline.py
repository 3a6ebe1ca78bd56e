"""The event pipeline: light processors on the emitting thread, sinks on their own threads.

    source -> emit(event) -> context, aggregation, numbering -> bounded queue
           -> writer thread: redaction -+-> local sinks (file, stderr, logging)
                                        +-> spool -> sender thread -> syslog
                                        +-> spool -> sender thread -> HTTP

Processors marked ``deferred`` (redaction) and every one after them run on
the writer thread, in queue order, just before the batch is written: the
caller pays for context, aggregation and numbering only.

``emit`` never blocks and never raises: a full queue counts the event as
dropped, and the writer records the count as an ``events-dropped`` event of
its own.  Processors may swallow an event (the aggregator counts repeats
instead of passing them on); its interval summaries are fed back in after it.

Sinks that can fail on the network (``Sink.spooled``) never run on the
writer thread: the writer appends their events to the sink's spool (a
directory, see :mod:`kernel_guard.events.spool`) and a sender thread per sink
(:mod:`kernel_guard.events.workers`) sends from there, acknowledges what the sink accepted, and retries the rest with
backoff and jitter.  A collector that is down or slow therefore delays
neither the cell nor the file sink, and what it has not taken survives a
kill of the kernel.  A sink that fails is reported once per distinct error
(stderr line and a ``sink-error`` event) and its recovery once
(``sink-recovered``); events a sink could not keep are counted and recorded
as ``events-dropped``.

In a forked child the threads do not exist, so the child writes
synchronously: local sinks directly, network sinks into a spool segment of
its own, which the parent (or the next kernel) sends when the child is gone.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections import deque
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, Deque, Dict, Iterable, List, Optional

    from .workers import SinkWorker

from .losses import LossReports, stderr_line as _stderr_line
from .processors import Processor, Sequence
from .schema import Event, make_event, to_json_line
from .sinks import Sink
from .writer import _Deferred, _FlushMarker, _Lines, _build, _run_processors, _Writer

__all__ = ["EventPipeline", "emit", "get_pipeline", "set_pipeline"]


#: queued events that wake the writer before its tick
_WAKE_AT = 256


class EventPipeline(_Writer):
    """Process, queue and write events without blocking the caller."""

    def __init__(
        self,
        sinks: Iterable[Sink],
        processors: Iterable[Processor] = (),
        queue_size: int = 10_000,
        spool_dir: Optional[str] = None,
        spool_max_bytes: int = 64 << 20,
        start: bool = True,
    ) -> None:
        """``spool_dir``: root of the network sinks' spools (None: the default, "": in memory).
        ``start=False`` opens the sinks and spools but starts no thread until :meth:`start`
        (the launcher applies its Landlock domain in between, which covers only threads
        that exist later)."""
        self.sinks: List[Sink] = list(sinks)
        self.processors: List[Processor] = list(processors)
        split = next((i for i, p in enumerate(self.processors) if getattr(p, "deferred", False)),
                     len(self.processors))
        self._on_caller = self.processors[:split]
        self._on_writer = self.processors[split:]
        # the last writer processor may also serialise (the chain: one serialisation
        # both hashed and written); else each event is serialised as it is
        self._serialise: Callable[[Event], bytes] = to_json_line
        self._chain: Any = None  # its batch form (prepare, link): the writer's batches
        if self._on_writer and hasattr(self._on_writer[-1], "serialise"):
            chain = self._on_writer.pop()
            self._serialise = chain.serialise
            self._chain = chain if hasattr(chain, "link") else None
        # reserves numbers for events built later (emit_later)
        self._numbering = next((p for p in self._on_caller if isinstance(p, Sequence)), None)
        self._finishing = threading.Lock()
        self.queue_size = queue_size
        self.dropped = 0
        self.written = 0
        #: the record of what was not kept, and why (:mod:`.losses`)
        self.losses = LossReports(self.emit)
        self._queue: Deque[Any] = deque()
        self._wake = threading.Event()
        self._order = threading.RLock()
        self._closed = False
        self._closing = False  # close() is running in this process
        self._signal_after_close: Optional[int] = None  # a signal that came meanwhile
        self._ended = False
        self._stream_pending = False  # a forked child's stream opens with its first event
        self._sync = False
        self._pid = os.getpid()
        self._spool_root = _default_spool_root() if spool_dir is None else spool_dir
        self._spool_max_bytes = spool_max_bytes
        self._workers: Dict[str, SinkWorker] = {}
        self._direct: List[Sink] = []
        self._thread: Optional[threading.Thread] = None
        _register_fork_handler(self)
        self._stream_started()
        self.set_sinks(self.sinks)
        if start:
            self.start()

    def set_sinks(self, sinks: Iterable[Sink]) -> None:
        """Write to ``sinks`` (each network sink through a spool of its own).  Before
        :meth:`start` only: the launcher decides late whether the kernel writes its
        own record or hands it to the custodian."""
        if self._thread is not None:
            raise RuntimeError("the pipeline's sinks are set before it starts")
        self.sinks = list(sinks)
        root = self._spool_root
        self._workers = _spool_workers(self, root)
        self._direct = [s for s in self.sinks if s.url not in self._workers]
        if root and self._workers:
            _report_memory_spools(self, root)

    # -- streams ---------------------------------------------------------
    @property
    def sink_errors(self) -> Dict[str, str]:
        """sink url -> its current error (absent once it works)."""
        return self.losses.sink_errors

    def _stream_started(self) -> None:
        """Open this process's stream (its first number), naming the parent's in a forked child."""
        if self._numbering is None:
            return
        parent = self._numbering.parent
        self.emit(make_event("stream-started", outcome="success", layer="pipeline", parent_stream=parent,
                             reason=f"events of process {os.getpid()} begin"
                                    + (f" (forked from stream {parent})" if parent else "")))

    def _open_pending_stream(self) -> None:
        """A forked child's first event: its stream opens before it (number 1), once
        whichever of its threads comes first."""
        with self._order:
            if self._stream_pending:
                self._stream_pending = False
                self._stream_started()
                _flush_on_sigterm(self)

    def _stream_ended(self, reason: str) -> None:
        """Close this process's stream: its last event, naming its own number.  A forked
        child that said nothing has no stream to close."""
        if self._numbering is None or self._ended:
            return
        self._ended = True
        if self._stream_pending:
            return
        self.emit(make_event("stream-ended", outcome="success", layer="pipeline", reason=reason))

    # -- emitting ---------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Process and enqueue one event; never blocks, never raises."""
        if self._stream_pending:
            self._open_pending_stream()
        with self._order:  # aggregating and queueing in one step: the queue is in emit order
            event = _run_processors(self._on_caller, event)
            if event is not None:
                self._enqueue(event)

    def emit_later(self, build: Callable[[], Event]) -> None:
        """Queue ``build``; the writer thread calls it and emits the event it returns.

        For routine events whose building would delay the caller (every
        cell's ``cell-executed``): the event takes its place in the queue now,
        so events stay in order.  ``build`` must not depend on state that
        changes meanwhile (the context is applied when it is built).
        """
        if self._closed or self._sync or self._thread is None:
            self.emit(_build(build))
            return
        if self._stream_pending:
            self._open_pending_stream()
        with self._order:
            sequence = self._numbering.reserve() if self._numbering is not None else None
            if len(self._queue) >= self.queue_size:
                self.dropped += 1
                return
            self._queue.append(_Deferred(build, sequence))

    def forward(self, lines: List[bytes]) -> bool:
        """Queue events another process serialised (the custodian's intake): written
        as they are, in order with this process's own; False when the queue is full
        (the caller waits: it must not drop what it has taken).  After shutdown the
        sinks are gone: the lines go to stderr (the server log), as events do."""
        if self._closed:
            for line in lines:
                _stderr_line(line.rstrip(b"\n").decode("utf-8", "replace"))
            return True
        with self._order:
            if len(self._queue) >= self.queue_size:
                return False
            self._queue.append(_Lines(lines))
        self._wake.set()
        return True

    def _process(self, event: Event, start: int) -> Optional[Event]:
        """Run the caller's processors from index ``start``; None if one swallowed the event."""
        return _run_processors(self._on_caller[start:] if start else self._on_caller, event)

    def _enqueue(self, event: Event) -> None:
        if self._closed:
            # after shutdown the sinks are gone: the server log still gets it
            finished = self._finish(event)
            if finished is not None:
                _stderr_line(finished[1][:-1].decode("utf-8", "replace"))
            return
        if self._sync:
            finished = self._finish(event)
            if finished is not None:
                self._write([finished[0]], [finished[1]])
            return
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            return
        self._queue.append(event)
        # Refusals are written at once; routine events (every cell) ride the
        # writer's next tick, at most _TICK s later: waking a thread for each
        # cell costs the cell a GIL hand-off (~0.3 ms measured).
        if not self._wake.is_set() and (
                event["event"].get("outcome") == "failure" or len(self._queue) >= _WAKE_AT):
            self._wake.set()

    # -- control ----------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything emitted so far is written and sent; False on timeout.

        A network sink that is failing is not waited for: its events are in
        its spool, and waiting would only delay the caller.
        """
        deadline = time.monotonic() + timeout
        self._expire_aggregates(force=True)
        if self._sync or self._thread is None or not self._thread.is_alive():
            self._drain()
            self._flush_sinks()
            written = True
        else:
            marker = _FlushMarker()
            self._queue.append(marker)
            self._wake.set()
            written = marker.done.wait(timeout)
        if self._sync:
            return written
        return all([worker.wait_sent(deadline) for worker in self._workers.values()]) and written

    def close(self, timeout: float = 5.0) -> None:
        """Flush within ``timeout`` seconds, stop the threads, close the sinks.

        What a network sink has not taken by then stays in its spool, and
        the next kernel start sends it.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        self.start()  # what was queued before the threads started is written too
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._report_losses(force=True)
        self._stream_ended(f"process {os.getpid()} closed its event stream")
        self.flush(max(0.0, deadline - time.monotonic()))
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers.values():
            worker.stop(deadline)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                pass
        if self._signal_after_close is not None:
            _deliver_again(self._signal_after_close)

    def stats(self) -> dict:
        """Counts for ``kernel-guard status``."""
        aggregated = sum(getattr(p, "aggregated", 0) for p in self.processors)
        return {
            "queued": len(self._queue), "written": self.written, "dropped": self.dropped,
            "aggregated": aggregated,
            "sinks": {s.url: self.sink_errors.get(s.url, "ok") for s in self.sinks},
            "lost": {url: n for url, n in dict(self.losses.lost).items() if n},
            "spool": {url: w.stats() for url, w in self._workers.items()},
            "writer_alive": bool(self._thread and self._thread.is_alive()) or self._sync,
        }


def _spool_workers(pipeline: EventPipeline, root: str) -> Dict[str, SinkWorker]:
    """A spool and a sender thread for each network sink of ``pipeline``: imported only
    where one needs them (not by a supervisor that writes to files)."""
    spooled = [sink for sink in pipeline.sinks if getattr(sink, "spooled", False)]
    if not spooled:
        return {}
    from .spool import open_spool
    from .workers import SinkWorker

    return {sink.url: SinkWorker(pipeline, sink, open_spool(root, sink.url, pipeline._spool_max_bytes))
            for sink in spooled}


def _default_spool_root() -> str:
    from .spool import default_spool_root

    return default_spool_root()


def _report_memory_spools(pipeline: EventPipeline, root: str) -> None:
    """Say (stderr and a ``sink-error`` event) which network sinks could not get a
    spool under ``root`` and keep their events in memory only."""
    from .spool import MemorySpool

    for url, worker in pipeline._workers.items():
        if isinstance(worker.spool, MemorySpool):
            why = worker.spool.refused or f"the spool directory under {root} is not usable"
            reason = (f"{why}: events for {url} are kept in memory only until delivered "
                      "(lost if the process is killed)")
            _stderr_line(f"kernel_guard: {reason}.")
            pipeline.emit(make_event("sink-error", outcome="failure", layer="pipeline", reason=reason, sink=url))


_pipelines: "weakref.WeakSet[EventPipeline]" = weakref.WeakSet()
_fork_hook_registered = False


def _after_fork_in_child() -> None:
    for pipeline in list(_pipelines):
        _continue_in_forked_child(pipeline)


def _continue_in_forked_child(pipeline: EventPipeline) -> None:
    """The threads are gone in the child: write synchronously there (a closed
    pipeline stays closed: its sinks are gone)."""
    if pipeline._closed:
        return
    pipeline._sync = True
    pipeline._closing, pipeline._signal_after_close = False, None
    # locks another thread held at the fork stay held in the child: new ones
    pipeline._order = threading.RLock()
    pipeline._finishing = threading.Lock()
    pipeline._queue = deque()
    pipeline._wake = threading.Event()
    pipeline._pid = os.getpid()
    pipeline._ended = False
    for processor in pipeline.processors:
        reset = getattr(processor, "reset", None)
        if reset is not None:
            reset()  # numbering, chain heads, aggregates: the child is a stream of its own
    for sink in pipeline.sinks:
        sink.after_fork()
    for worker in pipeline._workers.values():
        worker.after_fork()
    # opened by its first event: a worker that records nothing (most pool workers)
    # writes nothing, and its fork costs no synchronous write (0.5-1 ms measured)
    pipeline._stream_pending = True
    _close_in_forked_child(pipeline)


def _close_in_forked_child(pipeline: EventPipeline) -> None:
    """multiprocessing's children leave by ``os._exit`` after its finalizers, not
    atexit: flush the child's aggregates and end its stream there too.  Its
    bootstrap clears the finalizers a fork inherited, then runs its after-fork
    hooks, which is where ours is registered."""
    multiprocessing_util = sys.modules.get("multiprocessing.util")
    if multiprocessing_util is not None:
        multiprocessing_util.register_after_fork(pipeline, _finalize_at_child_exit)


def _finalize_at_child_exit(pipeline: EventPipeline) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(pipeline, pipeline.close, kwargs={"timeout": 1.0}, exitpriority=-100)


def _flush_on_sigterm(pipeline: EventPipeline) -> None:
    """A forked child ended by SIGTERM (``Pool.terminate()``, which ``with Pool``
    calls) first writes what it counted and ends its stream, then dies of the same
    signal as it would have.  Only where SIGTERM still has its default action, and
    only once the child has recorded something (its stream opened): a Python
    handler runs when the main thread next checks for signals, and a SIGTERM that
    comes just before a worker blocks on the pool's queue lock is then never
    handled, where the default action ends the process at once (a fork ``Pool``
    that recorded nothing hung at its end, waiting for such a worker)."""
    import signal

    def flush_then_die(signum: int, _frame: Any) -> None:
        if pipeline._closing and not pipeline._closed:
            # it came while this process closes its pipeline (its exit): a second close
            # inside the first would wait for the locks the first holds; the first
            # finishes, then the signal is delivered again
            pipeline._signal_after_close = signum
            return
        try:
            pipeline.close(timeout=0.5)
        finally:
            _deliver_again(signum)

    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, flush_then_die)
    except ValueError:  # not the main thread: leave it as it is
        pass


def _deliver_again(signum: int) -> None:
    """End this process with ``signum`` as if no handler had taken it."""
    import signal

    try:
        signal.signal(signum, signal.SIG_DFL)
    except ValueError:  # not the main thread: the handler is ours, which delivers it then
        pass
    os.kill(os.getpid(), signum)


def _register_fork_handler(pipeline: EventPipeline) -> None:
    global _fork_hook_registered
    _pipelines.add(pipeline)
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True


# -- the process's pipeline --------------------------------------------------
_current: Optional[EventPipeline] = None
_early: Deque[Event] = deque(maxlen=1000)  # events from before a pipeline exists


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


def emit_later(build: Callable[[], Event]) -> None:
    """``EventPipeline.emit_later`` on the process's pipeline (built now if there is none yet)."""
    pipeline = _current
    if pipeline is None:
        _early.append(_build(build))
    else:
        pipeline.emit_later(build)


@atexit.register
def _close_at_exit() -> None:
    if _current is not None:
        _current.close(timeout=3.0)
