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
                    (:data:`CUSTODIAN_ACTIONS`);
    ``ended``       the stream is not already ended.

What the checks cannot do: a kernel can still write lies *about itself* in
its own streams; it cannot write into another process's stream, the
supervisor's, or pass for the supervisor, its witness or the custodian.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Any, Callable, Optional

try:  # the custodian decodes every line: several times faster with orjson
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is in the "fast" extra
    import json

    loads = json.loads

__all__ = ["CUSTODIAN_ACTIONS", "Claims", "HEADER", "MAX_LINE", "MAX_PAYLOAD", "MAX_PENDING_TOTAL", "Refused",
           "check_line", "split_message", "valid_stream_id"]

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

    def __init__(self, stream: str, sequence: int, action: Any, chain: Any) -> None:
        self.stream = stream
        self.sequence = sequence
        self.action = action
        self.hash = str(chain.get("hash", "")) if isinstance(chain, dict) else ""


def check_line(line: bytes, own_stream: Optional[str]) -> Claims:
    """Decode one line and check what it claims of itself (not yet whose stream it
    is: the custodian knows the owners)."""
    if _typed is not None:
        return _check_typed(line, own_stream)
    try:
        event = loads(line)
    except Exception:
        raise Refused("json") from None
    if not isinstance(event, dict):
        raise Refused("json")
    head, guard = event.get("event"), event.get("kernel_guard")
    if not isinstance(head, dict) or not isinstance(guard, dict):
        raise Refused("json")
    if "recorded_by" in guard:
        raise Refused("authorship")
    stream, number = guard.get("stream"), head.get("sequence")
    if stream.__class__ is not str or stream == own_stream:  # the id's form: valid_stream_id, once per stream
        raise Refused("stream")
    if type(number) is not int or number < 1:  # noqa: E721 (bool is not a sequence number)
        raise Refused("sequence")
    if head.get("action") in CUSTODIAN_ACTIONS:
        raise Refused("action")
    return Claims(stream, number, head.get("action"), guard.get("chain"))


def _check_typed(line: bytes, own_stream: Optional[str]) -> Claims:
    """:func:`check_line` through msgspec: the whole line is parsed and checked as JSON
    (the same grammar, last of duplicate keys, escapes decoded) but only the claimed
    fields become objects, which halves the cost; UTF-8 is checked apart, as msgspec
    does not look inside the strings it skips."""
    try:
        claims = _typed.decode(line)
    except Exception:
        raise Refused("json") from None
    if not line.isascii():
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("json") from None
    head, guard = claims.event, claims.kernel_guard
    if guard.recorded_by is not _UNSET:
        raise Refused("authorship")
    stream, number = guard.stream, head.sequence
    if stream.__class__ is not str or stream == own_stream:
        raise Refused("stream")
    if type(number) is not int or number < 1:  # noqa: E721 (bool is not a sequence number)
        raise Refused("sequence")
    if head.action in CUSTODIAN_ACTIONS:
        raise Refused("action")
    return Claims(stream, number, head.action, guard.chain)


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
    _typed = _UNSET = None


def valid_stream_id(stream: str) -> bool:
    """A stream id as kernels make them (24 hex digits): checked when a stream is first seen."""
    return _STREAM_ID.match(stream) is not None
