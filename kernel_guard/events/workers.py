"""Network sinks' workers: each network sink gets a spool and a sender thread of its own.

The pipeline's writer never waits on the network: it appends a network sink's
lines to that sink's spool (:mod:`.spool`) through :meth:`SinkWorker.accept`;
the worker's thread sends from the spool in batches, acknowledges what the sink
took (after ``confirm_after`` seconds for a sink whose sends can be challenged),
and retries with backoff while the sink fails.  Losses and failures are
reported through the pipeline (:mod:`.losses`).
"""

from __future__ import annotations

import json
import random
import threading
import time
import weakref
from collections import deque
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Deque, Dict, List, Tuple

from .losses import stderr_line as _stderr_line
from .schema import Event
from .sinks import Sink
from .spool import MemorySpool, Spool, Token

if TYPE_CHECKING:
    from .pipeline import EventPipeline

__all__ = ["SinkWorker"]

_BACKOFF_FIRST = 0.5  # seconds before the first retry of a failed send
_BACKOFF_MAX = 30.0  # seconds, the longest wait between retries


class SinkWorker:
    """One network sink: its spool and the thread that sends from it."""

    def __init__(self, pipeline: "EventPipeline", sink: Sink, spool: "Spool | MemorySpool") -> None:
        self.pipeline = weakref.proxy(pipeline)
        self.sink = sink
        self.spool = spool
        self.lost = 0  # events not kept: spool full, or unreadable lines
        self.rejected = 0  # events the collector refused for good (reported with its reason)
        self.rejected_reason = ""
        self.failing = False
        self.batch_bytes = int(getattr(sink, "batch_bytes", 512 * 1024))
        self.confirm_after = float(getattr(sink, "confirm_after", 0.0))
        self._pending: Deque[Tuple[float, Token]] = deque()  # sent, not yet confirmed
        self._attempt = 0
        self._retry_at = 0.0
        self._sending = False
        self._stop = False
        self._wake = threading.Event()  # new events
        self._poke = threading.Event()  # retry now (flush, close)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"kernel-guard-sender {sink.url}")

    def start(self) -> None:
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    # -- writer-thread side -------------------------------------------
    def accept(self, lines: List[bytes], reports: bool = False) -> None:
        """Append to the spool (never blocks on the network) and wake the sender."""
        self.lost += self.spool.append(lines, reports)
        if not self._wake.is_set():
            self._wake.set()

    # -- sender thread ------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            try:
                self._step()
            except Exception as exc:  # a bug here must not end delivery for good
                _stderr_line(f"kernel_guard: sender for {self.sink.url} hit {exc!r}; continuing.")
                time.sleep(0.5)
        try:
            self._confirm(force=True)
        except Exception:
            pass

    def _step(self) -> None:
        """Send one batch, or wait for events, a retry time or a confirmation."""
        now = time.monotonic()
        if now < self._retry_at:
            self._poke.wait(self._retry_at - now)
            if self._poke.is_set():
                self._poke.clear()
                self._retry_at = 0.0
            return
        if not self._confirm():
            return
        self.spool.scan()
        item = self.spool.read(self.batch_bytes)
        if item is None:
            wait = 0.5
            if self._pending:
                wait = max(0.01, self._pending[0][0] + self.confirm_after - now)
            self._wake.wait(wait)
            self._wake.clear()
            return
        lines, token = item
        emit_lines = getattr(self.sink, "emit_lines", None)
        events = None if emit_lines is not None else self._parse(lines)
        self._sending = True
        try:
            if emit_lines is not None:
                emit_lines(lines)  # the spool's lines are JSON already
            elif events:
                self.sink.emit(events)
        except Exception as exc:
            self._sending = False
            self._failed(exc)
            return
        self._sending = False
        self._succeeded()
        take_rejected = getattr(self.sink, "take_rejected", None)
        if take_rejected is not None:
            count, why = take_rejected()
            if count:
                self.rejected, self.rejected_reason = self.rejected + count, why
        if self.confirm_after > 0:
            self._pending.append((time.monotonic(), token))
        else:
            self.spool.ack(token)

    def _parse(self, lines: List[bytes]) -> List[Event]:
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                self.lost += 1  # cannot happen for lines we wrote; a damaged file
        return events

    def _confirm(self, force: bool = False) -> bool:
        """Acknowledge sends that the sink has not disowned for ``confirm_after`` seconds.

        For a stream without acknowledgements (syslog over TCP) a send only
        counts once the connection is seen alive a little later; a dead
        connection means those batches are sent again.
        """
        if not self._pending:
            return True
        now = time.monotonic()
        if not force and now - self._pending[0][0] < self.confirm_after:
            return True
        try:
            check = getattr(self.sink, "check", None)
            if check is not None:
                check()
        except Exception as exc:
            self._failed(exc)
            return False
        while self._pending and (force or now - self._pending[0][0] >= self.confirm_after):
            self.spool.ack(self._pending.popleft()[1])
        return True

    def _failed(self, exc: BaseException) -> None:
        """Send again later: unconfirmed batches too, after backoff with jitter."""
        self.spool.rewind()
        self._pending.clear()
        self.failing = True
        self._attempt += 1
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** min(self._attempt - 1, 10))
        delay = delay / 2 + random.uniform(0, delay / 2)
        hint = getattr(self.sink, "retry_after", None)
        if isinstance(hint, (int, float)) and hint > 0:
            delay = max(delay, min(float(hint), _BACKOFF_MAX * 2))
        self._retry_at = time.monotonic() + delay
        try:
            self.pipeline._sink_failed(self.sink, exc)
        except ReferenceError:
            pass

    def _succeeded(self) -> None:
        if not self.failing:
            return
        self.failing = False
        self._attempt = 0
        try:
            self.pipeline._sink_ok(self.sink)
        except ReferenceError:
            pass

    # -- control ------------------------------------------------------
    def wait_sent(self, deadline: float) -> bool:
        """Wait until the spool has nothing unsent (not while the sink is failing)."""
        self._wake.set()
        while time.monotonic() < deadline:
            if self.failing or self._stop:
                return False
            if not self._sending and not self.spool.unread():
                return True
            time.sleep(0.01)
        return not self.spool.unread()

    def stop(self, deadline: float) -> None:
        """Stop the sender by ``deadline``; the spool keeps what was not delivered."""
        self._stop = True
        self._wake.set()
        self._poke.set()
        self._thread.join(max(0.05, deadline - time.monotonic()))
        self.spool.close()

    def after_fork(self) -> None:
        """In a child: no sender thread; events go to a spool segment of the child's own."""
        self.spool.after_fork()
        self._pending.clear()
        self._wake = threading.Event()
        self._poke = threading.Event()

    def stats(self) -> Dict[str, Any]:
        return {"pending_bytes": self.spool.pending_bytes(), "lost": self.lost + self.spool.lost_torn,
                "rejected": self.rejected,
                "state": "retrying" if self.failing else "ok", "directory": self.spool.directory}
