"""JSON in and out through the interpreter's own C codec, without the ``json`` package.

``json`` imports ``re``, and ``re`` imports ``enum``: about 0.6 MB that every
kernel's supervisor would hold for a handful of its own events (docs/launcher.md,
"Memory").  The work is done by the C accelerator ``json`` itself uses (``_json``:
its encoder and scanner), built as ``json.dumps`` and ``json.loads`` build them, so
the text is the same to the byte and so is what is read; whatever takes another road
in ``json`` (a byte order mark, UTF-16 or UTF-32 bytes, any error, an interpreter
without ``_json``) is handed to ``json`` itself, imported then.
``tests/events/test_json_codec.py`` compares the two on every shape of input.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this
    from typing import Any, Callable, Optional

try:
    from _json import encode_basestring, encode_basestring_ascii, make_encoder, make_scanner
except ImportError:  # pragma: no cover - another interpreter: json serves
    make_encoder = make_scanner = None  # type: ignore[assignment]

__all__ = ["dumps", "loads"]

_WHITESPACE = " \t\n\r"  # what json.decoder's WHITESPACE pattern skips around a document


def _not_serialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: Any, *, sort_keys: bool = False, ensure_ascii: bool = False,
          default: Optional[Callable[[Any], Any]] = None) -> str:
    """``json.dumps(value, separators=(",", ":"), ...)`` with these options, to the byte."""
    if make_encoder is None:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=ensure_ascii,
                          default=default)
    text = encode_basestring_ascii if ensure_ascii else encode_basestring
    if isinstance(value, str):
        return text(value)
    # a new encoder each time, as JSONEncoder.iterencode makes one: its markers (the
    # circular-reference check) may keep entries after an error
    encode = make_encoder({}, default or _not_serialisable, text, None, ":", ",", sort_keys, False, True)
    return "".join(encode(value, 0))


class _Context:
    """What ``make_scanner`` reads from a JSONDecoder: its defaults."""

    __slots__ = ("strict", "object_hook", "object_pairs_hook", "parse_float", "parse_int", "parse_constant")

    def __init__(self) -> None:
        self.strict = True
        self.object_hook = self.object_pairs_hook = None
        self.parse_float, self.parse_int = float, int
        self.parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


_scan = make_scanner(_Context()) if make_scanner is not None else None


def _plain_utf8(data: bytes | bytearray) -> bool:
    """Whether ``json.detect_encoding`` reads these bytes as UTF-8 without a BOM."""
    return len(data) >= 2 and data[0] != 0 and data[1] != 0 and data[:2] not in (b"\xff\xfe", b"\xfe\xff") \
        and data[:3] != b"\xef\xbb\xbf"


def loads(data: str | bytes | bytearray) -> Any:
    """``json.loads(data)``: the same value, or the same error (``json.JSONDecodeError``)."""
    text = data
    if isinstance(data, (bytes, bytearray)):
        text = data.decode("utf-8", "surrogatepass") if _plain_utf8(data) else None
    if _scan is not None and isinstance(text, str) and not text.startswith("\ufeff"):
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = _scan(text, start)
        except (StopIteration, ValueError):
            pass  # json says how it is wrong
        else:
            if end == len(text) or not text[end:].strip(_WHITESPACE):
                return value
    import json

    return json.loads(data)
