"""What the pipeline could not keep, and why: reported, never passed over in silence.

Events lost to a full queue, a failing local sink, a network sink's full or
damaged spool, or a collector that refused them for good are counted here and
reported as ``events-dropped`` (at most every few seconds per sink, each with
its causes and counts); a sink that fails or recovers, and a spool segment
found cut short or emptied, as ``sink-error`` / ``sink-recovered`` and a line
on the process's stderr.  The reports go through the same pipeline, so a
report about a sink reaches the others (and a full spool keeps room for it).
"""

from __future__ import annotations

import os
import sys
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, Dict, Tuple

from .schema import Event, make_event

__all__ = ["LossReports", "stderr_line"]

REPORT_EVERY = 5.0  # seconds between events-dropped reports per sink


def stderr_line(text: str) -> None:
    """A line on the process's real stderr (the server log), never raising."""
    try:
        fd = getattr(sys.stderr, "_original_stdstream_copy", None)
        # backslashreplace: a byte that is not UTF-8 (a lone surrogate) in a URL must not raise here
        os.write(fd if isinstance(fd, int) and fd >= 0 else 2, (text + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


class LossReports:
    """Counts of what each sink did not keep, and the reports about them."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self.emit = emit
        self.sink_errors: Dict[str, str] = {}  # sink url -> its current error
        self.lost: Dict[str, int] = {}  # sink url -> events it could not keep
        self._queue_reported = 0
        self._lost_reported: Dict[str, Tuple[int, float]] = {}
        self._causes_reported: Dict[str, Dict[str, int]] = {}
        self._rejected_reported: Dict[str, Tuple[int, float]] = {}
        self._failing_since: Dict[str, float] = {}

    def count(self, url: str, n: int) -> None:
        """``n`` events a local sink could not write."""
        self.lost[url] = self.lost.get(url, 0) + n

    def queue_full(self, dropped: int, queue_size: int) -> None:
        """How many events a full queue cost since the last report."""
        new = dropped - self._queue_reported
        if new > 0:
            self._queue_reported += new
            self.emit(make_event("events-dropped", outcome="failure", layer="pipeline",
                                 reason=f"{new} events dropped: the event queue ({queue_size}) was full",
                                 dropped=new, dropped_total=dropped))

    def report(self, workers: Dict[str, Any], force: bool = False) -> None:
        """Per sink, at most every few seconds: events not kept (by cause), spool
        problems, events a collector refused for good."""
        now = time.monotonic()
        for worker in workers.values():
            self.lost[worker.sink.url] = worker.lost + worker.spool.lost_torn
            self._spool_problems(worker)
        for url, total in list(self.lost.items()):
            reported, when = self._lost_reported.get(url, (0, 0.0))
            if total <= reported or (not force and now - when < REPORT_EVERY):
                continue
            self._lost_reported[url] = (total, now)
            worker = workers.get(url)
            why = self._causes_since(worker) if worker else "it could not be written (see the sink-error event)"
            self.emit(make_event("events-dropped", outcome="failure", layer="pipeline", sink=url,
                                 reason=f"{total - reported} events not kept for sink {url}: {why}",
                                 dropped=total - reported, dropped_total=total))
        for worker in workers.values():
            self._rejected(worker, now, force)

    def _causes_since(self, worker: Any) -> str:
        """Why a network sink's events were not kept since the last report, by cause."""
        causes = dict(getattr(worker.spool, "causes", {}))
        previous = self._causes_reported.setdefault(worker.sink.url, {})
        new = {cause: n - previous.get(cause, 0) for cause, n in causes.items() if n > previous.get(cause, 0)}
        previous.update(causes)
        return "; ".join(f"{n}: {cause}" for cause, n in new.items()) or "its spool could not keep them"

    def _spool_problems(self, worker: Any) -> None:
        """A spool segment found cut, emptied or with a wrong offset: stderr and a sink-error naming it."""
        problems = getattr(worker.spool, "problems", None)
        while problems:
            problem = problems.popleft()
            stderr_line(f"kernel_guard: {problem}")
            self.emit(make_event("sink-error", outcome="failure", layer="pipeline", sink=worker.sink.url,
                                 reason=problem))

    def _rejected(self, worker: Any, now: float, force: bool) -> None:
        """Events a collector refused for good, with its reason."""
        url, total = worker.sink.url, worker.rejected
        reported, when = self._rejected_reported.get(url, (0, 0.0))
        if total <= reported or (not force and now - when < REPORT_EVERY):
            return
        self._rejected_reported[url] = (total, now)
        self.emit(make_event("events-dropped", outcome="failure", layer="pipeline", sink=url,
                             reason=f"{total - reported} events refused for good by sink {url}: "
                                    f"{worker.rejected_reason}",
                             dropped=total - reported, dropped_total=total, rejected=True))

    def sink_failed(self, sink: Any, exc: BaseException, spooled: bool) -> None:
        """Tell stderr and the sinks, once per distinct error."""
        message = f"{type(exc).__name__}: {exc}"
        self._failing_since.setdefault(sink.url, time.monotonic())
        if self.sink_errors.get(sink.url) == message:
            return
        self.sink_errors[sink.url] = message
        kept = ("events wait in its spool and are re-sent when it recovers" if spooled
                else "events are not written there until it works again")
        stderr_line(f"kernel_guard: sink {sink.url} failed ({message}); {kept}; "
                    "other sinks and the kernel continue.")
        self.emit(make_event("sink-error", outcome="failure", layer="pipeline", reason=message, sink=sink.url))

    def sink_ok(self, sink: Any) -> None:
        """Record once that a failed sink works again."""
        if sink.url not in self.sink_errors:
            return
        self.sink_errors.pop(sink.url, None)
        since = self._failing_since.pop(sink.url, time.monotonic())
        seconds = round(time.monotonic() - since, 3)
        stderr_line(f"kernel_guard: sink {sink.url} works again after {seconds} s.")
        self.emit(make_event("sink-recovered", outcome="success", layer="pipeline",
                             reason=f"sink {sink.url} works again after {seconds} s", sink=sink.url, down_s=seconds))
