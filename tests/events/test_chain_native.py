"""The writer's native chain (kernel_guard.events._chain): built, byte for byte what the
Python chain writes, and hashing with the interpreter's lock released."""

from __future__ import annotations

import copy
import random
import threading
import time

import pytest

from kernel_guard.events import streams
from kernel_guard.events.schema import make_event
from kernel_guard.events.streams import GENESIS, StreamChain, hash_matches
from test_streams import _pipeline, _verify


ODD = ['"chain":{"prev":"' + "0" * 64 + '"}', "line\u2028break", "next\x85line", "lone \udcff surrogate",
       "ünïcödé ✓", "plain", 'quote " and \\ backslash', ""]


def _events(seed: int, count: int, odd: list[str] = ODD) -> list[dict]:
    """Events of two streams, in runs, with the content that takes the Python way too."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        guard = {"stream": rng.choice(["a" * 24, "b" * 24]), "technique": rng.choice(odd)}
        if rng.random() < 0.05:
            guard["nested"] = {"chain": {"prev": "0" * 64}}  # the marker twice: the Python way
        event = make_event("exec-denied", outcome="failure", layer="audit", reason=rng.choice(odd) + str(i),
                           process={"args": ["sh", "-c", rng.choice(odd)]}, **guard)
        event["event"]["sequence"] = i + 1
        events.append(event)
    return events


def _native_lines(events: list[dict]) -> tuple[list[bytes], StreamChain]:
    chain = StreamChain()
    return chain.link(events, [chain.prepare(e) for e in events]), chain


def test_the_native_chain_is_built() -> None:
    # the README's set-up builds it; without it the writer hashes each event holding the lock
    assert streams._native() is not None


@pytest.mark.parametrize("seed", range(5))
def test_lines_are_byte_for_byte_the_python_chains(seed: int) -> None:
    """Same events, same order: the native runs and the Python way write the same lines,
    and leave the same heads (each stream's last number and hash)."""
    events = _events(seed, 400)
    copies = copy.deepcopy(events)  # the ids and times are random: the same events twice
    native, native_chain = _native_lines(events)
    python_chain = StreamChain()
    python = [python_chain.serialise(e) for e in copies]
    assert native == python
    assert native_chain.heads == python_chain.heads
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in native)


def test_each_event_dict_names_its_own_link() -> None:
    """After linking, an event's chain object is what its line holds, and the hash matches
    (text that only the copying path can write, a lone surrogate, left out: that path
    chains a copy)."""
    events = _events(7, 50, [text for text in ODD if "\udcff" not in text])
    lines, _ = _native_lines(events)
    prev = {}
    for event, line in zip(events, lines):
        chain = event["kernel_guard"]["chain"]
        stream = event["kernel_guard"]["stream"]
        assert chain["prev"] == prev.get(stream, GENESIS)
        assert ('"hash":"' + chain["hash"] + '"').encode() in line
        assert hash_matches(event)
        prev[stream] = chain["hash"]


def test_bad_input_is_refused_where_it_enters() -> None:
    link = streams._native().link
    with pytest.raises(ValueError, match="64 characters"):
        link([b"{}"], "abc", GENESIS)
    with pytest.raises(TypeError, match="body 1 is str"):
        link([b'{"chain":{"prev":"' + GENESIS.encode() + b'"}}', "text"], GENESIS, GENESIS)
    assert link([b'{"no":"chain"}'], GENESIS, GENESIS) == ([], [])


def test_the_hashing_lets_other_threads_run() -> None:
    """A large run is hashed without the interpreter's lock: a thread counting meanwhile
    gets turns (holding the lock, it would get none until the call returned)."""
    link = streams._native().link
    body = b'{"kernel_guard":{"chain":{"prev":"' + GENESIS.encode() + b'"},"pad":"' + b"x" * (1 << 20) + b'"}}'
    bodies = [body] * 300  # about 300 MB to hash: a few tenths of a second
    counted, running, stop = [0], threading.Event(), threading.Event()

    def count() -> None:
        running.set()
        while not stop.is_set():
            counted[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    running.wait()
    time.sleep(0.01)
    before = counted[0]
    lines, digests = link(bodies, GENESIS, GENESIS)
    during = counted[0] - before
    stop.set()
    thread.join()
    assert len(lines) == len(digests) == 300
    assert during > 10_000


def test_a_failing_link_loses_nothing_and_the_record_verifies(tmp_path, monkeypatch) -> None:
    """A bug in the batch's linking: each event of the batch is written the Python way
    instead, and the record is still whole."""
    def broken(self, events, bodies):
        raise RuntimeError("a bug in linking")

    monkeypatch.setattr(StreamChain, "link", broken)
    path = tmp_path / "events.jsonl"
    pipe = _pipeline(path)
    for i in range(20):
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=f"refused {i}"))
    pipe.close()
    lines = path.read_text().splitlines()
    assert sum('"exec-denied"' in line for line in lines) == 20
    result = _verify(str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_link_failing_midway_leaves_no_gap(tmp_path, monkeypatch) -> None:
    """A bug after the batch's first run was linked (a line break to escape ends a run):
    the batch is written the Python way from the heads as they were before it, so the
    record verifies."""
    real, calls = StreamChain._link_run, []

    def fails_second(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bug in linking")
        return real(self, *args)

    monkeypatch.setattr(StreamChain, "_link_run", fails_second)
    path = tmp_path / "events.jsonl"
    pipe = _pipeline(path)
    for i in range(20):
        reason = "line\u2028break" if i == 10 else f"refused {i}"
        pipe.emit(make_event("exec-denied", outcome="failure", layer="audit", reason=reason))
    pipe.close()
    assert len(calls) >= 2
    lines = path.read_text().splitlines()
    assert sum('"exec-denied"' in line for line in lines) == 20
    result = _verify(str(path))
    assert result.returncode == 0, result.stdout + result.stderr
