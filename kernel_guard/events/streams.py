"""Streams: every event names the process stream it belongs to, its number in
it, and a hash chain over the stream.

A *stream* is what one process emits: a random id (``kernel_guard.stream``,
never the pid, which containers reuse), numbered 1, 2, 3 ...
(``event.sequence``), opened by ``stream-started`` and closed by
``stream-ended`` (with its last number).  A forked child starts a stream of
its own that names its parent's.

The chain: ``kernel_guard.chain.hash`` is the SHA-256 of the event's
canonical JSON (sorted keys, ASCII, compact) without that field, and the event
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

__all__ = ["GENESIS", "StreamChain", "canonical", "chain_hash", "new_stream_id"]

#: ``chain.prev`` of a stream's first event
GENESIS = "0" * 64


def new_stream_id() -> str:
    """A random id for one process's stream."""
    return os.urandom(12).hex()


def canonical(event: Any) -> bytes:
    """The bytes the chain hashes: the same for any reader that parses the JSON."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=repr).encode("ascii")


def chain_hash(event: Event) -> str:
    """The hash an event's ``kernel_guard.chain.hash`` must hold (computed without it)."""
    guard = event.get("kernel_guard") or {}
    chain = dict(guard.get("chain") or {})
    chain.pop("hash", None)
    copy = {**event, "kernel_guard": {**guard, "chain": chain}}
    return hashlib.sha256(canonical(copy)).hexdigest()


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
        guard = event.setdefault("kernel_guard", {})
        stream = guard.get("stream")
        if not stream:
            return event
        _, prev = self.heads.get(stream, (0, GENESIS))
        guard["chain"] = {"prev": prev}
        digest = chain_hash(event)
        guard["chain"]["hash"] = digest
        self.heads[stream] = (int(event["event"].get("sequence") or 0), digest)
        return event
