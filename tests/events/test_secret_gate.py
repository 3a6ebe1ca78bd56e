"""The native gate (``_gate.c``) skips the detectors only where the Python gate would
choose none: every text it calls clean, the catalogue leaves as it is.

Checked on the secret corpora (each shape, each context rule), on ordinary text,
and on generated text mixing every keyword, program name and long word of the
catalogue with noise; and through ``Redact``, whose fast path it is."""

from __future__ import annotations

import random
import re
import string

import pytest
from test_secrets import CONTEXT_FAKES, CORPUS, ORDINARY, SHAPE_FAKES

from kernel_guard.events import secrets
from kernel_guard.events.processors import Redact
from kernel_guard.events.schema import make_event


def _python_gate_chooses_nothing(text: str) -> bool:
    return not secrets.detectors_for(text) and not secrets._aws_candidate(text)


def test_the_native_gate_is_built() -> None:
    # the README's set-up builds it; without it redaction is several times slower
    assert secrets.NATIVE_GATE is not None


@pytest.mark.parametrize("text", [c[1] for c in CORPUS] + [f for _, f in SHAPE_FAKES]
                         + [t for _, t, _ in CONTEXT_FAKES])
def test_no_secret_is_called_clean(text: str) -> None:
    for placed in (text, f"x = {text!r}", f"curl -H 'X: {text}' https://x", text.upper(), text.lower()):
        assert not secrets.clean([placed]) or _python_gate_chooses_nothing(placed), placed


def _generated(rng: random.Random) -> str:
    pieces = list(secrets._KEYWORDS) + [w.decode() for w in secrets._PROGRAMS] + [
        "".join(rng.choice(string.ascii_letters + string.digits + "/+_-.=") for _ in range(rng.randint(10, 45))),
        " ", "\n", "/", "=", ":", "@", "://", "'", '"', "-p", "-u", "x" * 16]
    out = []
    for _ in range(rng.randint(1, 8)):
        piece = rng.choice(pieces)
        out.append(piece.upper() if rng.random() < 0.2 else piece)
        if rng.random() < 0.5:
            out.append(rng.choice(" \t\n;,()[]"))
    return "".join(out)


def test_generated_text_the_native_gate_calls_clean_has_no_candidate() -> None:
    rng = random.Random(20261206)
    called_clean = 0
    for _ in range(20_000):
        text = _generated(rng)
        if secrets.clean([text]):
            called_clean += 1
            assert _python_gate_chooses_nothing(text), text
    assert called_clean > 500  # the fast path is taken, not only the safe answer


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_takes_the_fast_path(text: str) -> None:
    # where the Python gate would choose no detector, the native one says so too
    # (it is stricter only about "://" and runs of 40 base64 characters)
    stricter = "://" in text or re.search(r"[A-Za-z0-9/+]{40}", text)
    assert secrets.clean([text]) == (_python_gate_chooses_nothing(text) and not stricter), text


def test_non_ascii_text_is_never_called_clean() -> None:
    assert not secrets.clean(["tok\u212aen = 'x'"])  # the Kelvin sign folds to k
    assert not secrets.clean(["ordinary", "caf\u00e9"])


def test_fields_are_judged_as_their_texts() -> None:
    gate = secrets.NATIVE_GATE
    pairs = Redact.TEXT_FIELDS + Redact.TEXT_COLLECTIONS
    clean = make_event("exec-denied", outcome="failure", layer="audit", reason="refused (os.system: ls)",
                       process={"args": ["sh", "-c", "ls"], "command_line": "ls", "pid": 4})
    assert gate.clean_fields(clean, pairs)
    for process in ({"args": ["curl", "-u", "a:b"]}, {"args": ["ls", 3]}, {"command_line": "caf\u00e9"}):
        event = make_event("exec-denied", outcome="failure", layer="audit", process=process)
        assert not gate.clean_fields(event, pairs), process
    assert not gate.clean_fields(make_event("cell-executed", outcome="success", layer="ipython",
                                            user_expressions={"a": "token=abc"}), pairs)


def test_a_secret_value_from_the_environment_is_not_skipped() -> None:
    literal = "Zq9-unremarkable-value-81"  # no keyword: only the literal gives it away
    redact = Redact(environ={"SERVICE_API_TOKEN": literal})
    event = redact(make_event("cell-executed", outcome="success", layer="ipython", code=f"x = '{literal}'"))
    assert literal not in event["kernel_guard"]["code"]
    assert secrets.clean([f"x = '{literal}'"])  # the shared gate alone would have skipped it


def test_operators_patterns_are_not_skipped() -> None:
    redact = Redact(extra_patterns=[r"ACME-\d{6}"])
    event = redact(make_event("cell-executed", outcome="success", layer="ipython", code="x = 'ACME-123456'"))
    assert "ACME-123456" not in event["kernel_guard"]["code"]


def test_a_bad_table_is_refused_where_it_enters() -> None:
    with pytest.raises(ValueError, match="keywords"):
        secrets._NativeGate(("",), (), (), "ab", "ab", 16, 40)
    with pytest.raises(ValueError, match="at least 1"):
        secrets._NativeGate((), (), (), "ab", "ab", 0, 40)
    with pytest.raises(UnicodeEncodeError):
        secrets._NativeGate(("caf\u00e9",), (), (), "ab", "ab", 16, 40)


def test_many_secret_values_fall_back_to_the_python_gate() -> None:
    environ = {f"SERVICE_{i}_TOKEN": f"value-{i:04d}-unremarkable" for i in range(600)}
    redact = Redact(environ=environ)
    code = "x = 'value-0599-unremarkable'"
    event = redact(make_event("cell-executed", outcome="success", layer="ipython", code=code))
    assert "value-0599-unremarkable" not in event["kernel_guard"]["code"]
