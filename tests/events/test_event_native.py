"""The event path's native parts are its Python code's own: making an event
(events/_event.c), adding the context (events/_context.c), and preparing and linking
a batch for the chain (events/_chain.c).

Each is held to the Python code it stands for, on every shape of argument and event
the fuzzing below makes, errors included: the same dicts, keys in the same order.
"""

from __future__ import annotations

import copy
import datetime
import random
import time

import pytest

from kernel_guard.events import schema, streams
from kernel_guard.events.processors import AddContext
from kernel_guard.events.schema import KernelContext, Shared, make_event
from kernel_guard.events.streams import GENESIS, StreamChain


def test_the_native_parts_are_built() -> None:
    # the README's set-up builds them; without them each is the Python code, slower
    assert schema.make_event is not schema._python_make_event
    assert schema.timestamp is not schema._python_timestamp
    assert AddContext.__call__ is not AddContext._add
    assert streams._native() is not None


def _shape(event: dict) -> object:
    """An event without what is new in each (its id, its time): keys in order, values."""
    out = copy.deepcopy(event)
    out.pop("@timestamp", None)
    if isinstance(out.get("event"), dict):
        out["event"].pop("id", None)
    return [(key, list(value.items()) if isinstance(value, dict) else value) for key, value in out.items()]


def _made(fn, args: tuple, kwargs: dict) -> tuple:  # noqa: ANN001
    try:
        return ("ok", _shape(fn(*args, **kwargs)))
    except Exception as exc:  # the same error, or the same event
        return ("raised", type(exc), str(exc).replace("_python_make_event", "make_event"))


NAMED = ["outcome", "layer", "reason", "process", "file", "kind"]
VALUES = [None, "", "text", 0, 3, [], ["a"], {}, {"k": "v"}, ("t",), Shared(x="y")]
ACTIONS = ["exec-denied", "cell-executed", "not-a-known-action", "", 7]


def _call(rng: random.Random) -> tuple:
    """Arguments for make_event: mostly right, sometimes missing, doubled or odd."""
    args: tuple = (rng.choice(ACTIONS),)
    roll = rng.random()
    if roll < 0.05:
        args = ()
    elif roll < 0.1:
        args = args + ("extra",)
    kwargs = {}
    for name in NAMED + ["technique", "target", "execution_count", "code"]:
        if rng.random() < (0.9 if name in ("outcome", "layer") else 0.4):
            kwargs[name] = rng.choice(VALUES)
    if rng.random() < 0.05:
        kwargs["action"] = "by-name"
    return args, kwargs


def test_make_event_builds_what_the_python_code_builds() -> None:
    """20,000 calls of every shape: the same event (keys in the same order), or the same error."""
    rng = random.Random(1)
    for _ in range(20_000):
        args, kwargs = _call(rng)
        assert _made(make_event, args, kwargs) == _made(schema._python_make_event, args, kwargs), (args, kwargs)


def test_keyword_names_built_at_run_time_are_the_same_names() -> None:
    """Names from a ** mapping need not be the interned ones: "reason" is still the reason."""
    names = {"".join(["rea", "son"]): "why", "".join(["out", "come"]): "failure", "layer": "audit",
             "".join(["tech", "nique"]): "os.system"}
    event = make_event("exec-denied", **names)
    assert event["event"]["reason"] == "why" and event["event"]["outcome"] == "failure"
    assert event["kernel_guard"] == {"layer": "audit", "technique": "os.system"}


@pytest.mark.parametrize("stamp", [schema.timestamp, schema._python_timestamp], ids=["native", "python"])
def test_timestamps_are_rfc3339_utc_now(stamp) -> None:  # noqa: ANN001
    before = time.time()
    text = stamp()
    after = time.time()
    when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert before - 1e-6 <= when.timestamp() <= after + 1e-6
    assert len(text) == 27


@pytest.mark.parametrize("new_id", [schema.new_event_id, schema._python_new_event_id], ids=["native", "python"])
def test_ids_are_unique_v4_uuids_across_threads_and_forks(new_id) -> None:  # noqa: ANN001
    import os
    import threading
    import uuid

    new_id()  # the parent's block is read before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, "".join(new_id() for _ in range(300)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        child = fh.read().decode()
    os.waitpid(pid, 0)
    parent = "".join(new_id() for _ in range(300))
    cut = lambda text: {text[i:i + 36] for i in range(0, len(text), 36)}  # noqa: E731
    assert len(cut(child)) == len(cut(parent)) == 300 and not cut(child) & cut(parent)
    found: list = []
    threads = [threading.Thread(target=lambda: found.extend(new_id() for _ in range(5000))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 20_000
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122
               for i in found)


# -- the context ---------------------------------------------------------------------

class Odd(dict):
    """A dict subclass as a part: only the Python code knows what a store into it does."""


PARTS = [None, {}, {"pid": 5}, {"executable": "/bin/sh"}, Shared(), Odd(), "text", 0, ["list"]]
GUARDS = [None, {}, {"mode": "audit"}, {"execution_count": 9}, {"cell_id": "mine", "kernel_id": "theirs"},
          Shared(), Odd(layer="x"), "text"]


def _event(rng: random.Random) -> object:
    if rng.random() < 0.03:
        return rng.choice(["not an event", ["x"], None, Odd()])
    event = make_event("exec-denied", outcome="failure", layer="audit")
    for part, choices in (("process", PARTS), ("kernel_guard", GUARDS)):
        roll = rng.random()
        if roll < 0.4:
            event[part] = copy.copy(rng.choice(choices))
        elif roll < 0.5:
            event.pop(part, None)
    if rng.random() < 0.1:
        event["user"] = {"name": "given"}
    if rng.random() < 0.1:
        event["host"] = None
    return event


def _context(rng: random.Random) -> KernelContext:
    context = KernelContext(kernel_id=rng.choice([None, "", "k1"]), mode=rng.choice(["enforce", "audit"]))
    context.user = rng.choice(["alice", "bob"])
    context.hostname = rng.choice(["h1", "h2"])
    context.notebook = rng.choice([None, "", "nb.ipynb"])
    context.author = rng.choice([None, "supervisor"])
    context.execution_count = rng.choice([None, 0, 4])
    context.cell_id = rng.choice([None, "", "c1"])
    return context


def _added(fn, event: object) -> tuple:  # noqa: ANN001
    try:
        out = fn(event)
    except Exception as exc:
        return ("raised", type(exc))
    return ("ok", _shape(out) if isinstance(out, dict) else out, _shape(event) if isinstance(event, dict) else event)


def test_the_context_is_added_as_the_python_code_adds_it() -> None:
    """20,000 events of every shape through a context whose values change: the same
    event, or the same error, from the native call and from ``_add``."""
    rng = random.Random(2)
    context = _context(rng)
    add = AddContext(context)
    for i in range(20_000):
        if i % 50 == 0:  # a new cell, user or kernel: the next events say so
            new = _context(rng)
            for name in ("user", "hostname", "notebook", "author", "execution_count", "cell_id", "kernel_id", "mode"):
                setattr(context, name, getattr(new, name))
        event = _event(rng)
        twin = copy.deepcopy(event)
        if isinstance(event, dict):  # what is shared stays shared in the twin (a deep copy makes dicts)
            twin.update({k: v for k, v in event.items() if isinstance(v, Shared)})
        assert _added(add, event) == _added(add._add, twin), event


def test_the_shared_user_follows_the_context() -> None:
    context = KernelContext(kernel_id="k")
    add = AddContext(context)
    first = add(make_event("exec-denied", outcome="failure", layer="audit"))
    again = add(make_event("exec-denied", outcome="failure", layer="audit"))
    assert first["user"] is again["user"] and type(first["user"]) is Shared
    context.user = "".join(["some", "one"])  # equal text, another object: the same shared part
    context.user = "someone"
    assert add(make_event("exec-denied", outcome="failure", layer="audit"))["user"] == {"name": "someone"}
    assert first["user"] != {"name": "someone"}


def test_a_context_stamp_without_its_init_says_so() -> None:
    stamp = AddContext.__new__(AddContext)
    with pytest.raises(RuntimeError, match="__init__ was not called"):
        stamp({})


# -- the chain's batch ----------------------------------------------------------------

def test_prepared_bodies_are_the_python_codes() -> None:
    """Native and Python preparing: the same body (or None) and the same chain object put
    in, for events with a stream, without one, with an empty one, of another shape, and
    with what orjson refuses."""
    chain = StreamChain()
    native = chain.preparer()
    assert native != streams._prepared_body
    cases = [{"kernel_guard": {"stream": "s" * 24}, "event": {"id": "1"}},
             {"kernel_guard": {"stream": ""}}, {"kernel_guard": {}}, {"kernel_guard": None}, {},
             {"kernel_guard": Odd(stream="s")}, Odd(kernel_guard={"stream": "s"}),
             {"kernel_guard": {"stream": "s"}, "bad": "lone \udcff surrogate"},
             {"kernel_guard": {"stream": "s"}, "big": 1 << 70}]
    for case in cases:
        twin = copy.deepcopy(case)
        assert native(case) == streams._prepared_body(twin), case
        assert case == twin


def test_link_run_refuses_bad_input_where_it_enters() -> None:
    link_run = streams._native().link_run
    events = [{"kernel_guard": {"stream": "s", "chain": {"prev": GENESIS}}}]
    bodies = [b'{"kernel_guard":{"chain":{"prev":"' + GENESIS.encode() + b'"},"stream":"s"}}']
    with pytest.raises(IndexError, match="start 1"):
        link_run(events, bodies, 1, GENESIS, GENESIS)
    with pytest.raises(ValueError, match="64 ASCII"):
        link_run(events, bodies, 0, "abc", GENESIS)
    with pytest.raises(TypeError):
        link_run(tuple(events), bodies, 0, GENESIS, GENESIS)
    lines, digests = link_run(events, bodies, 0, GENESIS, GENESIS)
    assert len(lines) == len(digests) == 1 and events[0]["kernel_guard"]["chain"]["hash"] == digests[0]
    # an event with no chain object (not prepared): nothing linked, the caller takes it
    assert link_run([{"kernel_guard": {"stream": "s"}}], bodies, 0, GENESIS, GENESIS) == ([], [])


def test_runs_end_where_the_stream_changes() -> None:
    """A batch of two interleaved streams: each run is linked on its own, and each stream's
    events chain to their own stream's previous event."""
    chain = StreamChain()
    events = []
    for i in range(12):
        event = make_event("exec-denied", outcome="failure", layer="audit", reason=f"r{i}",
                           stream="a" * 24 if (i // 3) % 2 == 0 else "b" * 24)
        event["event"]["sequence"] = i + 1
        events.append(event)
    prepare = chain.preparer()
    lines = chain.link(events, [prepare(e) for e in events])
    assert len(lines) == 12
    last: dict = {}
    for event in events:
        link = event["kernel_guard"]["chain"]
        stream = event["kernel_guard"]["stream"]
        assert link["prev"] == last.get(stream, GENESIS) and streams.hash_matches(event)
        last[stream] = link["hash"]


def test_a_chain_module_older_than_the_code_is_not_used(monkeypatch) -> None:
    """A build not redone since the code changed (no Preparer, no link_run): the Python
    way, rather than a writer thread that dies on the first batch."""
    import sys
    import types

    import kernel_guard.events

    stale = types.ModuleType("kernel_guard.events._chain")
    stale.link = streams._native().link
    monkeypatch.setitem(sys.modules, "kernel_guard.events._chain", stale)
    monkeypatch.setattr(kernel_guard.events, "_chain", stale)
    monkeypatch.setattr(streams, "_native_module", None)
    assert streams._native() is None
    chain = StreamChain()
    events = [make_event("exec-denied", outcome="failure", layer="audit", reason=f"r{i}", stream="s" * 24)
              for i in range(3)]
    bodies = [chain.prepare(e) for e in events]
    assert bodies == [None] * 3
    lines = chain.link(events, bodies)
    assert len(lines) == 3 and all(streams.hash_matches(e) for e in events)
