"""The aggregation key read natively (events/_aggregate_key.c) is aggregate._key's own,
and the aggregator's native call answers as its Python code does.

Every emitted event is keyed on the emitting thread, so the key is read in C where
the module is built; these tests hold the two readings to each other on every
shape a part of an event can have, errors included.  The same for the call
itself: whether the event passes, is counted, or starts a slot.
"""

from __future__ import annotations

import random
import threading

import pytest

from kernel_guard.events import aggregate
from kernel_guard.events.aggregate import NEVER_AGGREGATED, Aggregate, _key
from kernel_guard.events.schema import Shared, make_event


class Mapping(dict):
    """A dict whose .get is its own: only the Python reading knows what it returns."""

    def get(self, key, default=None):  # noqa: ANN001, ANN201
        return "mine:" + str(key)


class Items(list):
    """A list subclass that iterates its own way."""

    def __iter__(self):  # noqa: ANN204
        return iter(["other"])


class Loud:
    """A truthy part with no .get: the Python reading raises AttributeError."""


def _native():
    assert aggregate._key_of is not _key, "the native key module is not built (setup.py builds it)"
    return aggregate._key_of


def _reading(fn, event):  # noqa: ANN001, ANN202
    try:
        return ("ok", fn(event))
    except Exception as exc:  # the same error, or the same tuple
        return ("raised", type(exc))


PART_VALUES = [None, {}, Shared(), 0, "", [], False, Loud(), [1], Mapping(a=1), Mapping()]
LEAF_VALUES = [None, "x", "", 0, 7, 2.5, ("t",), ["a", "b"], Items(["a"]), {"k": "v"}, Shared(n="s")]


def _random_part(rng: random.Random, fields: tuple) -> object:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(PART_VALUES)
    kind = rng.choice([dict, dict, dict, Shared, Mapping])
    values = {name: rng.choice(LEAF_VALUES) for name in fields if rng.random() < 0.7}
    return kind(values)


FIELDS = {
    "event": ("action", "outcome", "reason", "id"),
    "kernel_guard": ("kernel_id", "notebook", "execution_count", "cell_id", "layer", "technique", "target"),
    "process": ("pid", "executable", "args", "command_line"),
    "file": ("path", "name"),
    "user": ("name",),
}


def test_a_real_event_keys_the_same_and_natively() -> None:
    native = _native()
    event = make_event("exec-denied", outcome="failure", layer="audit", technique="os.system",
                       reason="refused", process={"executable": "/bin/sh", "args": ["sh", "-c", "ls"],
                                                  "command_line": "ls"}, file={"path": "/tmp/x"})
    event["user"] = Shared({"name": "alice"})
    key = native(event)
    assert key == _key(event)
    assert key[0] == "alice" and key[13] == ("sh", "-c", "ls") and key[15] == "/tmp/x"


def test_every_shape_of_every_part_reads_as_python_reads_it() -> None:
    native = _native()
    rng = random.Random(27)
    for _ in range(20_000):
        event = {part: _random_part(rng, fields) for part, fields in FIELDS.items() if rng.random() < 0.85}
        if rng.random() < 0.05:
            event = rng.choice([Mapping(event), Shared(event)])
        assert _reading(native, event) == _reading(_key, event), event


def test_an_error_inside_a_lookup_is_raised_as_python_raises_it() -> None:
    native = _native()

    class Angry(str):
        def __hash__(self) -> int:
            return hash("event")

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing")

    event = {Angry("x"): 1}
    assert _reading(native, event) == _reading(_key, event) == ("raised", RuntimeError)
    with pytest.raises(TypeError):
        native()  # one event, no more and no less


def test_aggregation_counts_repeats_with_the_native_key() -> None:
    _native()
    agg = Aggregate(interval=60)
    first = make_event("exec-denied", outcome="failure", layer="audit", reason="r",
                       process={"args": ["sh", "-c", "x"]})
    again = make_event("exec-denied", outcome="failure", layer="audit", reason="r",
                       process={"args": ["sh", "-c", "x"]})
    other = make_event("exec-denied", outcome="failure", layer="audit", reason="r",
                       process={"args": ["sh", "-c", "y"]})
    assert agg(first) is first
    assert agg(again) is None
    assert agg(other) is other
    assert agg.aggregated == 1


# -- the aggregator's call ----------------------------------------------------------

class Action(str):
    """An action of a str subclass: only the Python code compares it exactly."""


ACTIONS = ["exec-denied", "exec-denied", "network-denied", "cell-executed", "kernel-started", None, 5,
           Action("exec-denied"), Action("cell-executed")]


def _native_call() -> type:
    assert aggregate._StepBase is not object, "the native aggregation module is not built (setup.py builds it)"
    return Aggregate


def _random_event(rng: random.Random) -> object:
    roll = rng.random()
    if roll < 0.03:
        return rng.choice([Mapping(event={"action": "exec-denied"}), Shared(event={"action": "x"})])
    ev: object = {"action": rng.choice(ACTIONS), "outcome": "failure", "reason": f"r{rng.randrange(6)}"}
    if rng.random() < 0.1:
        ev = rng.choice([None, {}, Shared(ev), 0, "", Loud(), Mapping(ev)])
    event: dict = {"event": ev} if rng.random() < 0.95 else {}
    if rng.random() < 0.9:
        event["process"] = {"args": rng.choice([["sh", "-c", f"x{rng.randrange(4)}"], ["a", ["unhashable"]],
                                                Items(["a"])])}
    return event


def _outcome(fn, event):  # noqa: ANN001, ANN202
    try:
        result = fn(event)
    except Exception as exc:
        return ("raised", type(exc))
    return ("passed",) if result is event else ("counted",) if result is None else ("other", result)


def test_the_native_call_answers_as_the_python_code_on_every_shape() -> None:
    cls = _native_call()
    rng = random.Random(2027)
    for max_keys in (4, 4096):
        native, python = cls(60, max_keys=max_keys, clock=lambda: 1.0), cls(60, max_keys=max_keys, clock=lambda: 1.0)
        for _ in range(20_000):
            event = _random_event(rng)
            assert _outcome(native, event) == _outcome(python._call, event), event
        assert native.aggregated == python.aggregated > 0
        assert list(native._slots) == list(python._slots)
        summaries = [[(s["kernel_guard"]["aggregated"]["count"], s["event"]["reason"]) for s in agg.expire(force=True)]
                     for agg in (native, python)]
        assert summaries[0] == summaries[1] and summaries[0]


def test_a_full_table_passes_new_keys_on_and_still_counts_the_tracked_ones() -> None:
    agg = _native_call()(60, max_keys=2)
    first, second, third = ({"event": {"action": "exec-denied", "reason": f"r{i}"}} for i in range(3))
    assert agg(first) is first and agg(second) is second
    assert agg(third) is third and agg(dict(third)) is not None  # no room: never counted, always written
    assert agg(dict(first)) is None and agg.aggregated == 1
    assert len(agg._slots) == 2


def test_no_interval_and_actions_recorded_one_by_one_pass_on_untracked() -> None:
    cls = _native_call()
    off = cls(0)
    event = {"event": {"action": "exec-denied"}}
    assert off(event) is event and off(event) is event and not off._slots
    agg = cls(60)
    for action in NEVER_AGGREGATED:
        event = {"event": {"action": action}}
        assert agg(event) is event and agg(event) is event
    assert not agg._slots and agg.aggregated == 0


def test_the_native_call_reads_the_table_while_expire_walks_it() -> None:
    """Emitting (the caller's thread) and expiring (the writer's) at once: nothing raises, and
    every event is either passed on or counted once."""
    agg = _native_call()(1e-9, max_keys=64)
    sent, passed, errors = 40_000, [0], []

    def expire() -> None:
        while not stop.is_set():
            try:
                agg.expire()
            except Exception as exc:  # pragma: no cover - the failure this test looks for
                errors.append(exc)

    stop = threading.Event()
    thread = threading.Thread(target=expire)
    thread.start()
    try:
        for i in range(sent):
            event = {"event": {"action": "exec-denied", "reason": f"r{i % 200}"}}
            passed[0] += agg(event) is event
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert passed[0] + agg.aggregated == sent


def test_the_native_base_refuses_what_it_cannot_use() -> None:
    base = aggregate._StepBase
    with pytest.raises(TypeError):
        base({"exec-denied"}, _key)  # a set can change under the call: a frozenset only
    with pytest.raises(TypeError):
        base(frozenset(), 1)
    with pytest.raises(RuntimeError, match="not called"):
        base.__new__(base)({"event": {}})
    agg = Aggregate(60)
    with pytest.raises(TypeError):
        agg()
    with pytest.raises(TypeError):
        agg({}, {})


@pytest.mark.parametrize("part", [None, 0, ""])
def test_repeats_of_an_event_with_an_odd_part_are_still_summarised(part: object) -> None:
    """A caller's bug (an ``event`` or ``kernel_guard`` part that is no dict) must not make
    the summary fail: its count would be lost, and every later summary with it."""
    agg = Aggregate(60)
    for name in ("event", "kernel_guard"):
        event = {name: part, "process": {"args": ["sh", "-c", name]}}
        assert agg(event) is event
        assert agg(dict(event)) is None and agg(dict(event)) is None
    summaries = agg.expire(force=True)
    assert [s["kernel_guard"]["aggregated"]["count"] for s in summaries] == [2, 2]
    assert all(s["event"]["action"] == "events-aggregated" for s in summaries)


def test_a_key_that_resets_the_aggregator_while_it_is_compared_does_no_harm() -> None:
    """A field whose comparison runs code (here: the aggregator's reset, which replaces its
    table) while the native call reads the table: the call holds what it reads."""
    agg = _native_call()(60)

    class Resetting:
        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            agg.reset()
            return False

    events = [{"event": {"action": "exec-denied", "reason": Resetting()}} for _ in range(3)]
    assert [agg(event) is event for event in events] == [True, True, True]
    assert agg.aggregated == 0
