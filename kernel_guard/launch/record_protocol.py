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

from _socket import CMSG_SPACE
import struct
from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, List, Optional, Tuple, Union

#: the line parser over simdjson (optional, like every native part), loaded at the
#: first check: the kernel imports this module for the message header alone, and
#: need not map a C++ library for it (1.2 ms of every launcher kernel's start)
_UNLOADED = object()
_fast_claims: Any = _UNLOADED

__all__ = ["CUSTODIAN_ACTIONS", "Claim", "Claims", "HEADER", "MAX_LINE", "MAX_PAYLOAD", "MAX_PENDING_TOTAL",
           "Refused", "check_line", "check_lines", "native_parser", "split_lines", "split_message",
           "valid_stream_id"]

#: message header: kind (b"L" whole lines, b"C" a chunk of a longer line), sender pid (ignored)
HEADER = struct.Struct("!cI")
#: payload bytes per message (a SOCK_SEQPACKET message must fit the socket buffer)
MAX_PAYLOAD = 60 * 1024
#: SCM_CREDENTIALS: pid, uid, gid of the sending process, as the kernel saw it
CREDENTIALS = struct.Struct("iII")
CREDENTIALS_SPACE = CMSG_SPACE(CREDENTIALS.size)
#: the longest line one sender may build from chunks, and all senders' pending chunks together
MAX_LINE = 16 << 20
MAX_PENDING_TOTAL = 32 << 20
#: actions only the custodian writes (in its own stream, or the end of a stream it closes)
CUSTODIAN_ACTIONS = frozenset({"chain-checkpoint", "lines-refused", "custodian-lost"})
_HEX_DIGITS = "0123456789abcdef"
#: a list or an object cannot be looked up among the actions: such a line is refused (``action``)
_COMPOUND = (list, dict)


def native_parser() -> Optional[Callable[[bytes], Any]]:
    """``_linecheck.claims``, loaded once; None where it was not built (the Python
    path then reads every line)."""
    global _fast_claims
    if _fast_claims is _UNLOADED:
        try:
            from ._linecheck import claims
        except ImportError:  # pragma: no cover - not built
            claims = None
        _fast_claims = claims
    return _fast_claims


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
if TYPE_CHECKING:
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
    the reason it is refused.  One loop judges a message's lines (the custodian's
    cost is per line).  Each line is parsed whole (grammar, UTF-8, escapes, of
    duplicate keys the last) by the native parser where it was built; where it
    cannot read a line exactly as Python does, or was not built, the Python path
    (:func:`_read_slowly`) does.  ``ascii``: the caller saw the whole message is
    ASCII (every line is UTF-8)."""
    fast, judge, out = native_parser(), _judge, []
    append = out.append
    for line in lines:
        claims = fast(line) if fast is not None else None
        if claims is None:
            claims = _read_slowly(line, ascii)
            if claims is None:
                append("json")
                continue
        append(judge(*claims, own_stream))
    return out


def _judge(number: Any, action: Any, stream: Any, authored: bool, digest: Any,
           own_stream: Optional[str]) -> Union[Claim, str]:
    """A line's :data:`Claim`, or the reason it is refused, from what it claims."""
    if authored:
        return "authorship"
    if stream.__class__ is not str or stream == own_stream:  # its form: valid_stream_id, once per stream
        return "stream"
    if number.__class__ is not int or number < 1:  # bool is not a sequence number
        return "sequence"
    if action.__class__ is not str and action.__class__ in _COMPOUND or action in CUSTODIAN_ACTIONS:
        return "action"
    return (stream, number, action, digest if digest.__class__ is str else str(digest))


def _read_slowly(line: bytes, ascii: bool) -> Optional[tuple]:
    """The native parser's claims (sequence, action, stream, recorded_by present, chain
    hash) read in Python; None when the line is not a JSON object with ``event`` and
    ``kernel_guard`` objects.  Through msgspec the whole line is parsed as JSON but
    only the claimed fields become objects (UTF-8 is checked apart: msgspec does not
    look inside the strings it skips); without it the line is decoded whole."""
    decode = _decoder()
    try:
        claims = decode(line)
    except Exception:
        return None
    if not ascii and not _utf8(line):
        return None
    head, guard = claims.event, claims.kernel_guard
    chain = guard.chain
    digest = chain.get("hash", "") if chain.__class__ is dict else ""
    return head.sequence, head.action, guard.stream, guard.recorded_by is not _UNSET, digest


def _decode_whole(line: bytes) -> Any:
    """Without msgspec: the line decoded whole (orjson, or the standard library), its
    claimed fields in the typed decoder's shape; ValueError where that has none."""
    event = _loads(line)
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


#: what the Python path decodes with, made on first need: a supervisor whose lines the
#: native parser reads never imports msgspec (3 MB of its memory, docs/launcher.md)
_decode: Optional[Callable[[bytes], Any]] = None
_UNSET: Any = object()  # msgspec's UNSET once msgspec is loaded
_loads: Any = None  # without msgspec: orjson's loads, or the standard library's


def _decoder() -> Callable[[bytes], Any]:
    """msgspec's typed decoder of the claimed fields; without msgspec, :func:`_decode_whole`."""
    global _decode, _UNSET, _loads
    if _decode is not None:
        return _decode
    try:
        import msgspec
    except ImportError:  # pragma: no cover - msgspec is in the "fast" extra
        _loads = _json_loads()
        _decode = _decode_whole
        return _decode

    # built by defstruct: annotations in a class body would be resolved against this
    # module, whose typing names exist for the type checker only; object is msgspec's Any
    head = msgspec.defstruct("_Head", [("sequence", object, None), ("action", object, None)])
    guard = msgspec.defstruct("_Guard", [("stream", object, None), ("recorded_by", object, msgspec.UNSET),
                                         ("chain", object, None)])
    line = msgspec.defstruct("_Line", [("event", head), ("kernel_guard", guard)])
    _UNSET = msgspec.UNSET
    _decode = msgspec.json.Decoder(line).decode
    return _decode


def _json_loads() -> Callable[[bytes], Any]:
    """orjson's loads (several times faster), or :func:`_strict_loads`."""
    try:
        import orjson

        return orjson.loads
    except ImportError:
        return _strict_loads


def _strict_loads(line: bytes) -> Any:
    """The standard library's decode, as strict as the other readers: NaN and Infinity
    (which no JSON writer emits) and lone surrogates (which no UTF-8 text holds) are
    refused (ValueError).  The slowest reader: the last resort, where neither the
    native parser nor msgspec nor orjson is there."""
    import json

    event = json.loads(line, parse_constant=_no_constant)
    json.dumps(event, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails to encode
    return event


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def valid_stream_id(stream: str) -> bool:
    """A stream id as kernels make them (24 hex digits): checked when a stream is first seen."""
    return stream.__class__ is str and len(stream) == 24 and not stream.strip(_HEX_DIGITS)
