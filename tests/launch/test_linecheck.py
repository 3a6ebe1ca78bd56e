"""The custodian's native line parser (``_linecheck.cpp``, over simdjson) judges every line
as the Python readers do: real events, their mutations and random bytes alike."""

from __future__ import annotations

import json
import random

import pytest

from kernel_guard.events import streams
from kernel_guard.events.schema import make_event, to_json_line
from kernel_guard.launch import _linecheck  # noqa: F401 - built by the README's set-up: its absence fails
from kernel_guard.launch import record_protocol

OWN = "0123456789abcdef01234567"
STREAM = "00000000000000000000000a"


def _events() -> list[bytes]:
    """Lines as a kernel's writer makes them: chained, with user text of every kind."""
    chain = streams.StreamChain()
    texts = ["ls -la", "é ü 日本 🙂", "quote \" backslash \\ tab \t", "\u2028line\u2029", "x" * 3000, ""]
    lines = []
    for number, text in enumerate(texts * 2, start=1):
        event = make_event("exec-denied" if number % 2 else "cell-executed", outcome="failure", layer="audit",
                           reason=f"refused {text}", process={"args": ["sh", "-c", text], "pid": 7},
                           technique="os.system", stream=STREAM)
        event["event"]["sequence"] = number
        lines.append(chain.serialise(event))
    lines.append(to_json_line({"event": {"sequence": 3, "action": "stream-ended"},
                               "kernel_guard": {"stream": STREAM}}))
    return lines


def _mutations(line: bytes) -> list[bytes]:
    """Spellings a kernel could send instead: each readers must judge alike."""
    body = line.rstrip(b"\n")
    return [
        body, body + b"\r\n", b" \t" + body + b"  ", b"\xef\xbb\xbf" + body, body + b" junk", body[:-1],
        body[: len(body) // 2], body.replace(b'"sequence":', b'"sequence":1,"sequence":', 1),
        body.replace(b'"sequence":', b'"sequence":true,"x":', 1),
        *[body.replace(b'"sequence":', b'"sequence":' + n + b',"x":', 1)
          for n in (b"1e400", b"-0", b"1.0", b"18446744073709551615", b"9223372036854775808",
                    b"123456789012345678901234567890", b"NaN", b"Infinity", b"01", b"[1]", b"{}", b"null")],
        body.replace(b'"action":', b'"action":["x"],"y":', 1), body.replace(b'"action":', b'"action":5,"y":', 1),
        body.replace(b'"stream":', b'"stream":"\\ud800","s2":', 1),
        body.replace(b'"stream":', b'"stream":"\\u0030123","s2":', 1),
        body.replace(b'"stream":', b'"recorded_by":null,"stream":', 1),
        body.replace(b'"stream":', b'"recorded_\\u0062y":1,"stream":', 1),
        body.replace(b'"chain":', b'"chain":[1],"c2":', 1),
        body.replace(b'"hash":', b'"hash":12,"h2":', 1),
        body.replace(b'"hash":', b'"hash":["a"],"h2":', 1),
        body.replace(b'"kernel_guard":', b'"kernel_guard":1,"k2":', 1),
        body.replace(b'"event":', b'"event":[],"e2":', 1),
        body.replace(b'"event":', b'"event":1,"event":', 1), body.replace(b'"event":', b'"event":{},"event":', 1),
        body.replace(b'"kernel_guard":', b'"kernel_guard":"k","kernel_guard":', 1),
        body.replace(b'"kernel_guard":', b'"kernel_guard":{"stream":1},"kernel_guard":', 1),
        body[:-1] + b',"event":null}', body[:-1] + b',"kernel_guard":{}}',
        body.replace(b'"chain":', b'"chain":5,"chain":', 1),
        body.replace(b'"reason":"', b'"reason":"\x01', 1), body.replace(b'"reason":"', b'"reason":"\xff', 1),
        body.replace(b'"reason":"', b'"reason":"\\ud83d\\ude00', 1), body.replace(b'"reason":"', b'"reason":"\\x', 1),
        body.replace(b"{", b"[", 1), body + body,
    ]


def _judged(line: bytes, reader: str, monkeypatch) -> object:
    with monkeypatch.context() as patch:
        if reader != "native":
            patch.setattr(record_protocol, "_fast_claims", None)
        return record_protocol.check_lines([line], OWN)[0]


def _assert_alike(line: bytes, monkeypatch) -> None:
    native = _judged(line, "native", monkeypatch)
    assert native == _judged(line, "msgspec", monkeypatch), line
    if native.__class__ is tuple:  # what is taken parses, for every reader
        json.loads(line)


def test_real_lines_are_read_natively_and_taken() -> None:
    """Every line a kernel's writer makes is read by the native parser (no detour through
    Python) and taken, with the claims a Python reader sees."""
    for line in _events():
        claims = _linecheck.claims(line)
        assert claims is not None, line
        event = json.loads(line)
        chain = event["kernel_guard"].get("chain") or {}
        assert claims == (event["event"]["sequence"], event["event"]["action"], STREAM, False,
                          chain.get("hash", ""))
        assert record_protocol.check_lines([line], OWN)[0][:2] == (STREAM, event["event"]["sequence"])


@pytest.mark.parametrize("line", [m for line in _events()[:3] + _events()[-1:] for m in _mutations(line)])
def test_every_mutation_is_judged_as_python_judges_it(monkeypatch, line: bytes) -> None:
    """Odd numbers, duplicate keys, escapes, BOMs, bad UTF-8, truncation: the same verdict
    and reason from the native parser as from msgspec's reading."""
    _assert_alike(line, monkeypatch)


def test_random_damage_is_judged_as_python_judges_it(monkeypatch) -> None:
    """Random bytes flipped, cut or inserted in real lines (a fixed seed, 3,000 lines)."""
    rng = random.Random(27)
    base = _events()
    alphabet = b'{}[]",:\\0123456789.eE+-tfnu \x00\x7f\xc3\xa9\xff'
    for _ in range(3000):
        line = bytearray(rng.choice(base).rstrip(b"\n"))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(line))
            kind = rng.random()
            if kind < 0.4:
                line[at] = rng.choice(alphabet)
            elif kind < 0.7:
                line.insert(at, rng.choice(alphabet))
            else:
                del line[at:at + rng.randint(1, 8)]
        _assert_alike(bytes(line), monkeypatch)


def test_a_long_line_goes_to_the_python_path() -> None:
    """Past 64 KiB the parser would keep buffers that large: Python reads those lines."""
    event = {"event": {"sequence": 1, "action": "x"}, "kernel_guard": {"stream": STREAM}, "pad": "p" * 70_000}
    line = to_json_line(event)
    assert _linecheck.claims(line) is None
    assert record_protocol.check_lines([line], OWN)[0][:2] == (STREAM, 1)


def test_random_claimed_fields_are_judged_as_python_judges_them(monkeypatch) -> None:
    """The claimed fields and their containers as any JSON value, repeated or not (a fixed
    seed, 5,000 lines): where the readers' rules differ, the native parser defers."""
    rng = random.Random(2727)
    values = ['1', '-1', '0', 'true', 'null', '"x"', '"stream-ended"', f'"{STREAM}"', '1.5', '1e3', '[]', '[1]',
              '{}', '{"hash":"h"}', '{"hash":1}', '"\\ud800"', '99999999999999999999', '-9223372036854775809']
    fields = {"event": ["sequence", "action"], "kernel_guard": ["stream", "recorded_by", "chain"]}
    for _ in range(5000):
        members = []
        for container, names in fields.items():
            for _ in range(rng.choice((1, 1, 1, 2))):
                if rng.random() < 0.1:
                    members.append(f'"{container}":{rng.choice(values)}')
                    continue
                inner = [f'"{name}":{rng.choice(values)}' for name in names for _ in range(rng.choice((0, 1, 1, 2)))]
                rng.shuffle(inner)
                members.append(f'"{container}":{{{",".join(inner)}}}')
        rng.shuffle(members)
        _assert_alike(("{" + ",".join(members) + "}").encode(), monkeypatch)


@pytest.mark.parametrize("depth", [1, 2, 62, 63, 64, 65, 200, 999, 1000, 1023, 1024, 1025, 1100])
def test_deep_nesting_is_judged_as_python_judges_it(monkeypatch, depth: int) -> None:
    """Python's readers stop at their own depth (about a thousand levels, not simdjson's
    1,024): past 64 levels the native parser defers, whatever the depth."""
    line = (b'{"event":{"sequence":2,"action":"x"},"kernel_guard":{"stream":"' + STREAM.encode() + b'"},"pad":'
            + b"[" * depth + b"]" * depth + b"}")
    _assert_alike(line, monkeypatch)
    assert (_linecheck.claims(line) is None) == (depth >= 64)
