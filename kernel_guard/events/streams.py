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

import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, Optional

from .digest import sha256_hex
from .json_codec import dumps, loads
from .schema import Event, escape_line_breaks, to_json_line

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
    return dumps(event, sort_keys=True, ensure_ascii=True, default=repr).encode("ascii")


def _canonical_fast(event: Any) -> bytes:
    """The same data through orjson (sorted keys, compact, UTF-8): five times cheaper;
    a reader accepts either form (:func:`hash_matches`)."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS, default=repr)


def _digest(event: Any) -> str:
    if orjson is not None:
        try:
            return sha256_hex(_canonical_fast(event))
        except TypeError:  # what orjson refuses (a lone surrogate, a huge int): the standard form
            pass
    return sha256_hex(canonical(event))


def _copy(event: Event) -> Event:
    """A deep copy with JSON's types: what a reader of the line will parse, made from the
    line itself (a lone surrogate, which no UTF-8 line can hold, is what the line holds)."""
    return loads(to_json_line(event))


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
    guard = event.get("kernel_guard")
    chain = guard.get("chain") if isinstance(guard, dict) else None
    digest = chain.get("hash") if isinstance(chain, dict) else None
    if not isinstance(digest, str):
        return False  # no hash, or a part of another kind: nothing to match (and no crash on it)
    bare = _without_hash(event)
    if digest == sha256_hex(canonical(bare)):
        return True
    if orjson is None:
        return False
    try:
        return digest == sha256_hex(_canonical_fast(bare))
    except TypeError:
        return False


def _prepared_body(event: Event) -> Optional[bytes]:
    """:meth:`StreamChain.prepare` in Python (the native one's fallback)."""
    if _stream_of(event) is None or _native() is None:
        return None
    event["kernel_guard"]["chain"] = {"prev": _PLACEHOLDER}
    try:
        return _canonical_fast(event)
    except TypeError:
        return None


class StreamChain:
    """Writer-side processor: link each event of this process's streams to the one
    written before it.  Runs last (after redaction), on one thread, in write order.

    The pipeline calls :meth:`serialise`, which chains the event and writes its line
    from one serialisation: the canonical bytes are hashed and, with the hash put
    in, are the line.  What is written is exactly what was hashed, so nothing else
    holding a part of the event (its emitter, a later event) can change one
    without the other, and no copy of the event is needed."""

    deferred = True

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, str]] = {}  # stream -> (last sequence, last hash)

    def reset(self) -> None:
        """A forked child writes its own stream: its parent's heads are not its own."""
        self.heads = {}

    def __call__(self, event: Event) -> Optional[Event]:
        """Chain a copy of ``event`` (for a caller that serialises it later itself)."""
        stream = _stream_of(event)
        if stream is None:
            return event
        # a copy of its own: whatever else holds a part of the event cannot change what the hash covers
        event = _copy(event)
        guard = event["kernel_guard"]
        guard["chain"] = {"prev": self._prev(stream)}
        digest = _digest(event)
        guard["chain"]["hash"] = digest
        self._advance(stream, event, digest)
        return event

    def serialise(self, event: Event) -> bytes:
        """Chain ``event`` and return its line (the pipeline's serialiser)."""
        stream = _stream_of(event)
        if stream is None:
            return to_json_line(event)
        prev = self._prev(stream)
        chain: dict = {"prev": prev}
        event["kernel_guard"]["chain"] = chain
        hashed = _hashed_line(event, prev) if orjson is not None else None
        if hashed is None:  # what orjson refuses, or a marker that is not unique: the copying path
            return to_json_line(self(event))
        line, digest = hashed
        chain["hash"] = digest
        self._advance(stream, event, digest)
        return line

    def prepare(self, event: Event) -> Optional[bytes]:
        """The event's canonical body with a placeholder for its prev, serialised now
        (what the event holds when it is taken is what is written); None when it goes
        the way of :meth:`serialise` (no stream, what orjson refuses, no native linker)."""
        return self.preparer()(event)

    def preparer(self) -> "Callable[[Event], Optional[bytes]]":
        """:meth:`prepare` as the writer calls it for each event of a batch: natively
        where :mod:`._chain` is built (its Python steps cost as much as the serialising)."""
        return _native_prepare if _native() is not None else _prepared_body

    def link(self, events: list, bodies: list) -> list:
        """The lines of ``events`` in order (``bodies`` from :meth:`prepare`): each run of
        one stream's prepared events is linked natively, the interpreter's lock released
        (:mod:`._chain`); any other event by :meth:`serialise` in its place.  All or
        nothing: if it raises, the heads are as they were (the caller writes the batch
        again from them, and the record shows no gap for lines never written)."""
        lines: list = []
        saved = dict(self.heads)
        i, n = 0, len(events)
        try:
            while i < n:
                if bodies[i] is None:
                    lines.append(self.serialise(events[i]))
                    i += 1
                else:
                    i += self._link_run(events, bodies, i, lines)
        except BaseException:
            self.heads = saved
            raise
        return lines

    def _link_run(self, events: list, bodies: list, start: int, lines: list) -> int:
        """Link the run of one stream's prepared events that begins at ``start`` into
        ``lines`` (each event's chain object told its prev and hash): how many events it
        took.  One it could not link (a line break to escape ...) is taken by
        :meth:`serialise`, alone."""
        stream = events[start]["kernel_guard"]["stream"]
        try:
            linked, digests = _native().link_run(events, bodies, start, self._prev(stream), _PLACEHOLDER)
        except (RuntimeError, MemoryError):  # OpenSSL failed: the Python way, one by one
            linked, digests = [], []
        if not digests:
            lines.append(self.serialise(events[start]))
            return 1
        lines.extend(linked)
        self._advance(stream, events[start + len(digests) - 1], digests[-1])
        return len(digests)

    def _prev(self, stream: str) -> str:
        return self.heads.get(stream, (0, GENESIS))[1]

    def _advance(self, stream: str, event: Event, digest: str) -> None:
        self.heads[stream] = (int(event["event"].get("sequence") or 0), digest)


#: what a prepared body holds in place of its prev until its run is linked
_PLACEHOLDER = GENESIS
_native_module: Any = None  # the native linker's module, looked up on first use: False when there is none
_native_prepare: Any = None  # its Preparer's prepare (one a process: it holds nothing of a chain's)


def _native():  # noqa: ANN202 - the _chain module or None
    """:mod:`._chain`, unless orjson or the module is missing or this process hashes
    with the interpreter's own SHA-256 (the supervisor: the module maps OpenSSL)."""
    global _native_module, _native_prepare
    if _native_module is None:
        from . import digest

        _native_module = False
        if orjson is not None and not digest.builtin_preferred():
            try:
                from . import _chain
            except ImportError:  # not built: the Python way
                pass
            else:  # unless a build older than this code (not rebuilt since): the Python way then too
                if hasattr(_chain, "Preparer") and hasattr(_chain, "link_run"):
                    _native_module = _chain
                    _native_prepare = _chain.Preparer(orjson.dumps, orjson.OPT_SORT_KEYS, repr, _PLACEHOLDER,
                                                      _prepared_body).prepare
    return _native_module or None


def _stream_of(event: Event) -> Optional[str]:
    guard = event.get("kernel_guard")
    stream = guard.get("stream") if isinstance(guard, dict) else None
    return stream or None


def _hashed_line(event: Event, prev: str) -> Optional[tuple[bytes, str]]:
    """(line, hash) from one canonical serialisation, the hash spliced into the chain
    object; None when that cannot be done exactly."""
    try:
        body = _canonical_fast(event)
    except TypeError:
        return None
    digest = sha256_hex(body)
    # JSON escapes every quote inside a string, so this text can only be structure;
    # it must be there once (the chain object holding just "prev") to be spliced
    marker = b'"chain":{"prev":"' + prev.encode("ascii") + b'"}'
    at = body.find(marker)
    if at < 0 or body.find(marker, at + 1) >= 0:
        return None
    cut = at + len(marker) - 1  # before the chain object's closing brace
    line = b"".join((body[:cut], b',"hash":"', digest.encode("ascii"), b'"', body[cut:], b"\n"))
    return escape_line_breaks(line), digest
