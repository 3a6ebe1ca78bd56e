"""Streams: every event names the process stream it belongs to, its number in
it, and a hash chain over the stream.

A *stream* is what one process emits: a random id (``kernel_guard.stream``,
never the pid, which containers reuse), numbered 1, 2, 3 ...
(``event.sequence``), opened by ``stream-started`` and closed by
``stream-ended`` (with its last number).  A forked child starts a stream of
its own that names its parent's.

The chain: ``kernel_guard.chain.hash`` is the SHA-256 of the event's
canonical JSON (sorted keys, compact; ASCII as the standard library writes
it, or UTF-8 as orjson does: a reader accepts either) without that field, and the event
carries the previous event's hash in ``kernel_guard.chain.prev``.  Editing,
removing or reordering a written event breaks the chain; the custodian's
checkpoints (``chain-checkpoint``: each stream's last number and hash) show a
stream cut short.  The chain is not keyed: a process can forge its *own*
stream before it is written, and whoever can rewrite a whole file can rewrite
its chain.  What it proves is that records taken by a writer the notebook
cannot reach were not changed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

from .schema import Event

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is in the "fast" extra
    orjson = None  # type: ignore[assignment]

__all__ = ["GENESIS", "StreamChain", "canonical", "chain_hash", "hash_matches", "new_stream_id"]

#: ``chain.prev`` of a stream's first event
GENESIS = "0" * 64


def new_stream_id() -> str:
    """A random id for one process's stream."""
    return os.urandom(12).hex()


def canonical(event: Any) -> bytes:
    """The bytes the chain hashes, as any reader can rebuild them from the parsed JSON."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=repr).encode("ascii")


def _canonical_fast(event: Any) -> bytes:
    """The same data through orjson (sorted keys, compact, UTF-8): five times cheaper;
    a reader accepts either form (:func:`hash_matches`)."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS, default=repr)


def _digest(event: Any) -> str:
    if orjson is not None:
        try:
            return hashlib.sha256(_canonical_fast(event)).hexdigest()
        except TypeError:  # what orjson refuses (a lone surrogate, a huge int): the standard form
            pass
    return hashlib.sha256(canonical(event)).hexdigest()


def _copy(event: Event) -> Event:
    """A deep copy with JSON's types (what a reader of the line will parse)."""
    if orjson is not None:
        try:
            return orjson.loads(orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS))
        except TypeError:
            pass
    return json.loads(json.dumps(event, default=repr))


def _without_hash(event: Event) -> Event:
    guard = event.get("kernel_guard") or {}
    chain = dict(guard.get("chain") or {})
    chain.pop("hash", None)
    return {**event, "kernel_guard": {**guard, "chain": chain}}


def chain_hash(event: Event) -> str:
    """The hash a writer gives an event (computed without its ``chain.hash``)."""
    return _digest(_without_hash(event))


def hash_matches(event: Event) -> bool:
    """Whether an event's ``chain.hash`` matches its content, in either canonical form."""
    digest = ((event.get("kernel_guard") or {}).get("chain") or {}).get("hash")
    bare = _without_hash(event)
    if digest == hashlib.sha256(canonical(bare)).hexdigest():
        return True
    if orjson is None:
        return False
    try:
        return digest == hashlib.sha256(_canonical_fast(bare)).hexdigest()
    except TypeError:
        return False


class StreamChain:
    """Writer-side processor: link each event of this process's streams to the one
    written before it.  Runs last (after redaction), on one thread, in write order."""

    deferred = True

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, str]] = {}  # stream -> (last sequence, last hash)

    def reset(self) -> None:
        """A forked child writes its own stream: its parent's heads are not its own."""
        self.heads = {}

    def __call__(self, event: Event) -> Optional[Event]:
        if not (event.get("kernel_guard") or {}).get("stream"):
            return event
        # chained and written from a copy of its own: whatever else holds a part of
        # the event (its emitter, a later event) cannot change what the hash covers
        event = _copy(event)
        guard = event["kernel_guard"]
        stream = guard["stream"]
        _, prev = self.heads.get(stream, (0, GENESIS))
        guard["chain"] = {"prev": prev}
        digest = _digest(event)  # before the hash is in it: no copy on the writer thread
        guard["chain"]["hash"] = digest
        self.heads[stream] = (int(event["event"].get("sequence") or 0), digest)
        return event
