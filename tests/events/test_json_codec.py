"""The codec the supervisor serialises and parses with reads and writes JSON as the
standard library's json does, to the byte and to the error (json_codec.py)."""

from __future__ import annotations

import json
import random

import pytest

from kernel_guard.events.json_codec import dumps, loads


class Odd:
    def __repr__(self) -> str:
        return "<odd \u2028 value>"


VALUES = [
    None, True, False, 0, -1, 2 ** 64 + 1, -(2 ** 70), 1.5, -0.0, 1e308, 5e-324, float("inf"), float("-inf"),
    "", "plain", "quote \" backslash \\ slash /", "tab\tnew\nline\r\x00\x1f\x7f", "é ü 中文 😀",
    "\u2028\u2029\x85",
    "lone \ud800 surrogate", "\udcff", [], {}, [1, [2, [3, []]]], (1, "two"),
    {"b": 1, "a": {"d": [1, 2.5, None], "c": "x"}, "é": "ü"},
    {1: "int key", 2.5: "float key", True: "bool key", None: "none key"},
    {"event": {"action": "exec-denied", "id": "x"}, "process": {"args": ["sh", "-c", "echo \u00e9"]}},
]


def _outcome(parse, document):
    try:
        value = parse(document)
    except Exception as exc:  # the comparison is of the error
        return ("error", type(exc), str(exc))
    return ("value", json.dumps(value, sort_keys=True, default=repr), repr(value) if isinstance(value, float) else "")


@pytest.mark.parametrize("sort_keys", [False, True])
@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_it_writes_what_json_dumps_writes(sort_keys: bool, ensure_ascii: bool) -> None:
    """Every value, compact, with and without sorted keys and ASCII escapes: the same text
    (or the same error: keys of several types cannot be sorted)."""
    for value in VALUES + [VALUES]:
        ours = _outcome(lambda v: dumps(v, sort_keys=sort_keys, ensure_ascii=ensure_ascii), value)
        theirs = _outcome(lambda v: json.dumps(v, separators=(",", ":"), sort_keys=sort_keys,
                                               ensure_ascii=ensure_ascii), value)
        assert ours == theirs, value


def test_what_it_cannot_write_fails_as_json_fails() -> None:
    """An unknown type without ``default``, mixed keys sorted, a cycle: the same error, and
    after an error the next value is written as usual (no stale cycle marks)."""
    cycle: list = []
    cycle.append(cycle)
    for value, options in [(Odd(), {}), ({"a": 1, 2: "b"}, {"sort_keys": True}), (cycle, {}),
                           ({"k": object()}, {})]:
        with pytest.raises(Exception) as ours:
            dumps(value, **options)
        with pytest.raises(Exception) as theirs:
            json.dumps(value, separators=(",", ":"), **options)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
    shared = {"x": 1}
    assert dumps([shared, shared]) == '[{"x":1},{"x":1}]'


def test_default_is_used_as_json_uses_it() -> None:
    value = {"odd": Odd(), "set": {1}, "nested": [Odd()]}
    assert dumps(value, default=repr) == json.dumps(value, separators=(",", ":"), default=repr,
                                                    ensure_ascii=False)


DOCUMENTS = [
    '{"a":1}', ' \t\n{"a": [1, 2.5, -0, 1e999, "x\\u00e9\\ud800"]} \r\n', "[]", "0", '"text"', "null",
    "NaN", "-Infinity", "Infinity", '{"a":NaN}', '{"a":1,"a":2}', "1" * 400, "1.5e-400",
    '{"a":1} x', "", " ", "{", '{"a":}', "[1,]", '"\x01"', '"\\x"', "\ufeff{}", "{}\x00", "01", "-", "tru",
    '{"a":1}{"b":2}', "\u00a0{}", "[" * 50 + "]" * 50,
]


def _same(document) -> None:
    ours, theirs = _outcome(loads, document), _outcome(json.loads, document)
    assert ours == theirs, document


def test_it_reads_what_json_loads_reads() -> None:
    """Documents, whitespace, constants, duplicate keys, errors (with json's message)."""
    for document in DOCUMENTS:
        _same(document)


def test_bytes_are_read_in_the_encoding_json_detects() -> None:
    """UTF-8, with a BOM, UTF-16 and UTF-32 (with and without one), a lone surrogate's bytes,
    short and bytearray input: as json.loads reads them."""
    for document in ['{"a": "\u00e9 \U0001F600"}', "[1]", "1", "{}"]:
        for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
                         "utf-32-be"):
            _same(document.encode(encoding))
            _same(bytearray(document.encode(encoding)))
    for raw in [b"", b"1", b"\xff", b'"\xed\xa0\x80"', b'{"a":"\xff"}', b"\x00\x00", b"\xef\xbb"]:
        _same(raw)


def test_random_damage_is_read_as_json_reads_it() -> None:
    """3,000 documents with bytes changed, cut and repeated: the same value or error."""
    rng = random.Random(20261207)
    seeds = [json.dumps(v, ensure_ascii=rng.random() < 0.5) for v in VALUES] + DOCUMENTS
    alphabet = '{}[]",:0123456789.eE+-tfnrul aNIy\\/\t\n\u00e9\ud800'
    for _ in range(3000):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            op = rng.random()
            if op < 0.4 and text:
                text[min(at, len(text) - 1)] = rng.choice(alphabet)
            elif op < 0.7:
                text.insert(at, rng.choice(alphabet))
            elif text:
                del text[min(at, len(text) - 1)]
        document = "".join(text)
        _same(document)
        if rng.random() < 0.3:
            _same(document.encode("utf-8", "surrogatepass"))
