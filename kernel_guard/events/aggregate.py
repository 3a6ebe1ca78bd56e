"""Aggregation: a flood of identical events becomes one event per interval with a count.

User code can raise the same audited event a million times (a loop of
refused ``os.system`` calls, a ``socket.connect`` retry loop).  Writing each
one would fill the queue, the spool and the collector, and cost the kernel
memory and time.  :class:`Aggregate` is a processor: the first occurrence of
an event passes through in full; identical ones after it, within
``interval`` seconds, are only counted; when the interval ends, one
``events-aggregated`` event carries the count (``kernel_guard.aggregated``),
the first occurrence's id and the fields of the first repeat (the key's fields
are the first occurrence's).  A key that stays quiet for a whole
interval is forgotten, so its next occurrence is again recorded in full.

"Identical" means the same action, outcome, layer, technique, reason,
process (executable, arguments), file path and target, from the same cell of
the same kernel, notebook and user: what an analyst would call the same
attempt repeated.  Events that are contracts one by one (every
``cell-executed``, ``kernel-started`` ...) are never aggregated.

Memory is bounded by ``max_keys`` tracked keys; beyond that, new keys pass
through unaggregated (the pipeline's bounded queue still protects memory).
"""

from __future__ import annotations

import threading
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, Dict, List, Optional, Tuple

from .json_codec import loads
from .schema import Event, Shared, new_event_id, timestamp, to_json, writable_part

__all__ = ["NEVER_AGGREGATED", "Aggregate"]

#: actions that are recorded one by one whatever their rate
NEVER_AGGREGATED = frozenset({
    "cell-executed", "kernel-started", "kernel-stopped", "guard-loaded", "guard-error",
    "config-ignored", "events-dropped", "events-aggregated", "sink-error", "sink-recovered",
})

if TYPE_CHECKING:
    Key = Tuple[Any, ...]


class _Slot:
    """One key's current interval: the first occurrence's id, and the first repeat, which
    the summary is made from.  Not the first occurrence itself: that one is written in
    full, and holding every distinct event for an interval (thousands of them in a flood
    of distinct refusals) was most of what the garbage collector had to walk."""

    __slots__ = ("first_id", "sample", "started", "count", "first_ts", "last_ts")

    def __init__(self, first_id: Any, started: float) -> None:
        self.first_id = first_id
        self.sample: Optional[Event] = None
        self.started = started
        self.count = 0
        self.first_ts = ""
        self.last_ts = ""


def _key(event: Event) -> Key:
    """What makes two events the same attempt (cheap: no serialisation)."""
    ev = event.get("event") or {}
    guard = event.get("kernel_guard") or {}
    proc = event.get("process") or {}
    file = event.get("file") or {}
    args = proc.get("args")
    # a flood is one cell's loop: the same attempt from another cell, kernel,
    # notebook, user or process is a new attempt and is recorded in full
    return (
        (event.get("user") or {}).get("name"), guard.get("kernel_id"), guard.get("notebook"),
        guard.get("execution_count"), guard.get("cell_id"), proc.get("pid"),
        ev.get("action"), ev.get("outcome"), ev.get("reason"),
        guard.get("layer"), guard.get("technique"), guard.get("target"),
        proc.get("executable"), tuple(args) if isinstance(args, list) else args,
        proc.get("command_line"), file.get("path") if isinstance(file, dict) else None,
    )


def _key_maker() -> "Callable[[Event], Key]":
    """:func:`_key`, read natively where :mod:`._aggregate_key` is built (the same tuple at
    under half the cost; any part it does not read exactly as ``_key`` does goes to ``_key``)."""
    try:
        from ._aggregate_key import KeyMaker
    except ImportError:
        return _key
    return KeyMaker((dict, Shared), _key)


_key_of = _key_maker()


def _step_base() -> type:
    """The native base of :class:`Aggregate` (:mod:`._aggregate_key`'s ``Step``), whose
    call answers natively what needs no slot (an action recorded one by one; a new key
    when the table is full) and hands the rest to :meth:`Aggregate._count`; ``object``
    where it is not built."""
    try:
        from ._aggregate_key import Step
    except ImportError:
        return object
    return Step


_StepBase = _step_base()


class Aggregate(_StepBase):  # type: ignore[misc, valid-type]
    """Processor that counts repeats of an event instead of passing each one on.

    Called natively where :mod:`._aggregate_key` is built: the same answers as
    :meth:`_call`, which takes any event whose action it does not read exactly."""

    def __init__(self, interval: float = 5.0, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if _StepBase is not object:
            super().__init__(NEVER_AGGREGATED, _key_of)
        self.interval = interval  # natively: the base's slots, which each call reads
        self.max_keys = max_keys
        self.clock = clock
        self.aggregated = 0  # events counted rather than passed on, in total
        self._slots: Dict[Key, _Slot] = {}
        self._lock = threading.Lock()
        # no interval ends before this (monotonic s): the writer asks on every wake, and
        # a scan of thousands of keys under the lock each time held emit() up
        self._due = float("inf")

    def _call(self, event: Event) -> Optional[Event]:
        """The event itself, or None when it was counted into an aggregate."""
        if self.interval <= 0 or (event.get("event") or {}).get("action") in NEVER_AGGREGATED:
            return event
        return self._count(event, _key_of(event))

    if _StepBase is object:
        __call__ = _call

    def _count(self, event: Event, key: Key) -> Optional[Event]:
        """Count ``event`` under ``key``, or start tracking the key and pass it on."""
        with self._lock:
            try:
                slot = self._slots.get(key)  # hashes the key once (a hash() before it was a second time)
            except TypeError:  # an unhashable field: do not aggregate what we cannot compare
                return event
            if slot is None:
                if len(self._slots) < self.max_keys:
                    started = self.clock()
                    self._slots[key] = _Slot((event.get("event") or {}).get("id"), started)
                    if started + self.interval < self._due:
                        self._due = started + self.interval
                return event
            slot.count += 1
            self.aggregated += 1
            timestamp = event.get("@timestamp", "")
            if slot.count == 1:
                slot.first_ts, slot.sample = timestamp, event
            slot.last_ts = timestamp
            return None

    def expire(self, force: bool = False) -> List[Event]:
        """Aggregate events for every interval that has ended (all of them with ``force``)."""
        now = self.clock()
        out: List[Event] = []
        if not force and now < self._due:
            return out
        quiet = []
        with self._lock:
            # no copy of the items: a flush asks with thousands of keys tracked, and a list
            # of them was garbage for the collector to chase on the caller's thread
            for key, slot in self._slots.items():
                if not force and now - slot.started < self.interval:
                    continue
                if slot.count:
                    out.append(self._summary(slot, now))
                    slot.started, slot.count, slot.sample = now, 0, None
                elif not force:
                    quiet.append(key)
            for key in quiet:
                del self._slots[key]  # quiet for a whole interval: forget it
            self._due = min((slot.started for slot in self._slots.values()), default=float("inf")) + self.interval
        return out

    def reset(self) -> None:
        """Start empty (a forked child counts its own events)."""
        self._lock = threading.Lock()
        self._slots = {}
        self._due = float("inf")

    def _summary(self, slot: _Slot, now: float) -> Event:
        """One ``events-aggregated`` event standing for ``slot.count`` identical events:
        the first of them, its action and time its own, the count and the first
        occurrence's id added (the key's fields are the same in all of them)."""
        event: Event = loads(to_json(slot.sample))  # a deep, JSON-clean copy
        ev = writable_part(event, "event")  # a part of another kind would fail the summary, its count lost
        action = ev.get("action")
        seconds = round(now - slot.started, 3)
        ev.pop("sequence", None)
        ev.update(action="events-aggregated", id=new_event_id())
        original_reason = ev.get("reason")
        ev["reason"] = (f"{slot.count} more identical {action} events in {seconds} s, "
                        f"not recorded one by one (first: event {slot.first_id})")
        event["@timestamp"] = timestamp()
        writable_part(event, "kernel_guard")["aggregated"] = {
            "action": action, "count": slot.count, "first_event_id": slot.first_id,
            "first": slot.first_ts, "last": slot.last_ts, "interval_s": seconds,
            "original_reason": original_reason,
        }
        return event
