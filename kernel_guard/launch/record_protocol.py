"""What a kernel may send its custodian, and how each line is checked: the record's wire format.

Transport
    An ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair made by the launcher; the
    supervisor (the custodian) holds one end, the kernel and every process it
    forks share the other.  ``SO_PASSCRED`` is set on the custodian's end, so
    each message carries the *sender's* pid as the kernel saw it
    (``SCM_CREDENTIALS``); the pid a message names in its header is ignored.

Message
    ``kind`` (1 byte) ``pid`` (4 bytes, network order, ignored) ``payload``:

    ``L``  whole lines: one or more JSON events, each ending in ``\\n``; with
           the sender's pending chunks (if any) in front;
    ``C``  a chunk of one line longer than a message (:data:`MAX_PAYLOAD`);
           the line ends with the sender's next ``L`` message.

    A message shorter than the header, of another kind, or empty is refused
    (``message``).  Pending chunks are bounded per sender (:data:`MAX_LINE`)
    and for all senders together (:data:`MAX_PENDING_TOTAL`); past either,
    that sender's pending line is dropped and counted (``too-long``).

Line
    Every line is decoded before anything is written; a line is written as it
    came only when all of these hold (otherwise it is refused, counted by
    reason, and the custodian records the counts: ``lines-refused``):

    ``json``        a JSON object with ``event`` and ``kernel_guard`` objects, the
                    whole line parsed (valid UTF-8; of duplicate keys the last
                    counts, as for every reader);
    ``authorship``  no ``kernel_guard.recorded_by``: that field marks the
                    records only the supervisor, its witness and the custodian
                    write, so a reader can tell them from what a kernel claims;
    ``stream``      ``kernel_guard.stream`` is a stream id (24 hex digits), not
                    the custodian's own, and the sender's: the first process to
                    send it owns it (pid and start time, so a reused pid is not
                    taken for it);
    ``sequence``    ``event.sequence`` is an integer above the last one taken
                    for that stream (no replay, no rewind);
    ``action``      not an action only the custodian writes
                    (:data:`CUSTODIAN_ACTIONS`), nor a list or an object;
    ``ended``       the stream is not already ended.

    A refused line is refused alone: the lines before and after it in the
    same message are judged on their own, and written in order.

What the checks cannot do: a kernel can still write lies *about itself* in
its own streams; it cannot write into another process's stream, the
supervisor's, or pass for the supervisor, its witness or the custodian.
"""

from __future__ import annotations

import re
import socket
import struct
from types import SimpleNamespace
from typing import Any, Callable, List, Optional, Tuple, Union

try:  # the custodian decodes every line: several times faster with orjson
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is in the "fast" extra
    import json

    loads = json.loads

__all__ = ["CUSTODIAN_ACTIONS", "Claim", "Claims", "HEADER", "MAX_LINE", "MAX_PAYLOAD", "MAX_PENDING_TOTAL",
           "Refused", "check_line", "check_lines", "split_lines", "split_message", "valid_stream_id"]

#: message header: kind (b"L" whole lines, b"C" a chunk of a longer line), sender pid (ignored)
HEADER = struct.Struct("!cI")
#: payload bytes per message (a SOCK_SEQPACKET message must fit the socket buffer)
MAX_PAYLOAD = 60 * 1024
#: SCM_CREDENTIALS: pid, uid, gid of the sending process, as the kernel saw it
CREDENTIALS = struct.Struct("iII")
CREDENTIALS_SPACE = socket.CMSG_SPACE(CREDENTIALS.size)
#: the longest line one sender may build from chunks, and all senders' pending chunks together
MAX_LINE = 16 << 20
MAX_PENDING_TOTAL = 32 << 20
#: actions only the custodian writes (in its own stream, or the end of a stream it closes)
CUSTODIAN_ACTIONS = frozenset({"chain-checkpoint", "lines-refused", "custodian-lost"})
_STREAM_ID = re.compile(r"[0-9a-f]{24}\Z")
#: a list or an object cannot be looked up among the actions: such a line is refused (``action``)
_COMPOUND = (list, dict)


class Refused(Exception):
    """A line or message the custodian does not write; ``reason`` is one of the names above."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(kind, payload) of a message; raises Refused("message") for anything else."""
    if len(message) <= HEADER.size:
        raise Refused("message")
    kind = message[:1]
    if kind not in (b"L", b"C"):
        raise Refused("message")
    return kind, message[HEADER.size:]


class Claims:
    """What a line claims of itself: its stream, number, action and chain hash."""

    __slots__ = ("stream", "sequence", "action", "hash")

    def __init__(self, stream: str, sequence: int, action: Any, hash: str) -> None:
        self.stream = stream
        self.sequence = sequence
        self.action = action
        self.hash = hash


#: what :func:`check_lines` gives for a line that passes: (stream, sequence, action, chain hash)
Claim = Tuple[str, int, Any, str]


def check_line(line: bytes, own_stream: Optional[str]) -> Claims:
    """Decode one line and check what it claims of itself (not yet whose stream it
    is: the custodian knows the owners)."""
    judged = check_lines([line], own_stream)[0]
    if judged.__class__ is str:
        raise Refused(judged)
    return Claims(*judged)


def split_lines(payload: bytes) -> List[bytes]:
    """A message's lines, each with its end, as ``payload.splitlines(keepends=True)``
    cuts them (at ``\\n``, ``\\r`` and ``\\r\\n``).  Without a ``\\r`` (the common
    case) they are cut at each ``\\n`` found by a search: splitlines looks at every
    byte, and took a sixth of the custodian's time per line."""
    if b"\r" in payload:
        return payload.splitlines(keepends=True)
    lines: List[bytes] = []
    append, find, start = lines.append, payload.find, 0
    while True:
        end = find(b"\n", start) + 1
        if not end:
            break
        append(payload[start:end])
        start = end
    if start < len(payload):
        append(payload[start:])  # the last line may lack its end
    return lines


def check_lines(lines: List[bytes], own_stream: Optional[str], ascii: bool = False) -> List[Union[Claim, str]]:
    """:func:`check_line` for each line of a message, in order: its :data:`Claim`, or
    the reason it is refused.  One loop judges a message's lines, making no object
    per line beyond what decoding makes (the custodian's cost is per line).
    Through msgspec the whole line is parsed and checked as JSON (the same grammar,
    last of duplicate keys, escapes decoded) but only the claimed fields become
    objects; UTF-8 is checked apart, as msgspec does not look inside the strings it
    skips.  ``ascii``: the caller saw the whole message is ASCII (every line is UTF-8)."""
    decode = _typed.decode if _typed is not None else _decode_whole
    unset, out = _UNSET, []
    append = out.append
    for line in lines:
        try:
            claims = decode(line)
        except Exception:
            append("json")
            continue
        if not ascii and not _utf8(line):  # msgspec does not look inside the strings it skips
            append("json")
            continue
        head, guard = claims.event, claims.kernel_guard
        stream, number, action = guard.stream, head.sequence, head.action
        if guard.recorded_by is not unset:
            append("authorship")
        elif stream.__class__ is not str or stream == own_stream:  # its form: valid_stream_id, once per stream
            append("stream")
        elif number.__class__ is not int or number < 1:  # bool is not a sequence number
            append("sequence")
        elif action.__class__ is not str and action.__class__ in _COMPOUND or action in CUSTODIAN_ACTIONS:
            append("action")
        else:
            chain = guard.chain
            digest = chain.get("hash", "") if chain.__class__ is dict else ""
            append((stream, number, action, digest if digest.__class__ is str else str(digest)))
    return out


def _decode_whole(line: bytes) -> Any:
    """Without msgspec: the line decoded whole (orjson, or the standard library), its
    claimed fields in the typed decoder's shape; ValueError where that has none."""
    event = loads(line)
    head = event.get("event") if isinstance(event, dict) else None
    guard = event.get("kernel_guard") if isinstance(event, dict) else None
    if not isinstance(head, dict) or not isinstance(guard, dict):
        raise ValueError("not an event")
    return SimpleNamespace(
        event=SimpleNamespace(sequence=head.get("sequence"), action=head.get("action")),
        kernel_guard=SimpleNamespace(stream=guard.get("stream"), recorded_by=guard.get("recorded_by", _UNSET),
                                     chain=guard.get("chain")))


def _utf8(line: bytes) -> bool:
    """Whether ``line`` is valid UTF-8 (ASCII is, and is quick to tell)."""
    if line.isascii():
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


try:  # the claimed fields only, through msgspec; without it orjson decodes every line whole (twice the cost)
    import msgspec
except ImportError:  # pragma: no cover - msgspec is in the "fast" extra
    msgspec = None

if msgspec is not None:
    class _Head(msgspec.Struct):
        sequence: Any = None
        action: Any = None

    class _Guard(msgspec.Struct):
        stream: Any = None
        recorded_by: Any = msgspec.UNSET
        chain: Any = None

    class _Line(msgspec.Struct):
        event: _Head
        kernel_guard: _Guard

    _typed: Any = msgspec.json.Decoder(_Line)
    _UNSET: Any = msgspec.UNSET
else:  # pragma: no cover
    _typed = None
    _UNSET = object()


def valid_stream_id(stream: str) -> bool:
    """A stream id as kernels make them (24 hex digits): checked when a stream is first seen."""
    return _STREAM_ID.match(stream) is not None
