"""The aggregation key read natively (events/_aggregate_key.c) is aggregate._key's own.

Every emitted event is keyed on the emitting thread, so the key is read in C where
the module is built; these tests hold the two readings to each other on every
shape a part of an event can have, errors included.
"""

from __future__ import annotations

import random

import pytest

from kernel_guard.events import aggregate
from kernel_guard.events.aggregate import Aggregate, _key
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
