"""Execution events from a real kernel: every cell, silent ones, user_expressions, lifecycle, redaction."""

from __future__ import annotations

import hashlib
import os

from conftest import assert_schema_valid
from kernel_guard.cli.verify import verify
from kernel_guard.events.processors import Redact, redact_argv, redact_text
from kernel_guard.events.schema import make_event, to_json, validate_event


def _cells(kernel, n=1):
    events = kernel.new_events(until=lambda evs: len([e for e in evs if e["event"]["action"] == "cell-executed"]) >= n)
    return [e for e in events if e["event"]["action"] == "cell-executed"]


def test_cell_executed_carries_the_documented_fields(guarded):
    """A cell yields cell-executed with user, host, kernel id, notebook, cell id, count, code, duration."""
    guarded.mark()
    code = "total = sum(range(100))\ntotal"
    result = guarded.execute(code, cell_id="cell-1234")
    (event,) = _cells(guarded)
    g = event["kernel_guard"]
    assert event["user"]["name"] == "alice"
    assert event["host"]["hostname"]
    assert g["kernel_id"] == guarded.session.kernel_id
    assert g["notebook"] == "analysis.ipynb"
    assert g["cell_id"] == "cell-1234"
    assert g["execution_count"] == result.reply["execution_count"]
    assert g["code"] == code and g["code_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert event["event"]["outcome"] == "success" and g["duration_ms"] >= 0
    assert isinstance(event["event"]["sequence"], int)
    assert_schema_valid([event])


def test_failing_cell_records_error_name(guarded):
    """A cell that raises is recorded with outcome failure and the exception name."""
    guarded.mark()
    guarded.execute("1/0")
    (event,) = _cells(guarded)
    assert event["event"]["outcome"] == "failure"
    assert event["kernel_guard"]["error_name"] == "ZeroDivisionError"


def test_silent_execution_and_user_expressions_are_recorded(guarded):
    """silent=True requests (no pre/post_run_cell) and user_expressions still yield cell-executed."""
    guarded.mark()
    guarded.execute("hidden = 42", silent=True, user_expressions={"probe": "hidden * 2"})
    (event,) = _cells(guarded)
    assert event["kernel_guard"]["silent"] is True
    assert event["kernel_guard"]["user_expressions"] == {"probe": "hidden * 2"}


def test_long_code_is_truncated_with_hash(guarded):
    """By default code is truncated to 200 characters and the full code's sha256 is kept."""
    guarded.mark()
    code = "x = 1  # " + "y" * 500
    guarded.execute(code)
    (event,) = _cells(guarded)
    assert len(event["kernel_guard"]["code"]) == 200 and event["kernel_guard"]["code_truncated"] is True
    assert event["kernel_guard"]["code_sha256"] == hashlib.sha256(code.encode()).hexdigest()


def test_secrets_in_code_and_commands_are_redacted(guarded):
    """Tokens and passwords in cells and refused commands never reach the sink."""
    guarded.mark()
    guarded.execute("password = 'hunter2hunter2'\nheaders = {'Authorization': 'Bearer abcdef123456'}")
    guarded.execute("!curl -H 'Authorization: Bearer sekret-token-value' https://x --password=pw123456")
    _cells(guarded, 2)
    raw = "\n".join(to_json(e) for e in guarded.new_events())
    for secret in ("hunter2hunter2", "abcdef123456", "sekret-token-value", "pw123456"):
        assert secret not in raw


def test_kernel_lifecycle_events(make_kernel):
    """A kernel start yields kernel-started, a clean shutdown kernel-stopped."""
    kernel = make_kernel()
    kernel.execute("1")
    kernel.shutdown()
    actions = [e["event"]["action"] for e in kernel.events()]
    assert actions[:2] == ["stream-started", "kernel-started"]
    assert actions[-2:] == ["kernel-stopped", "stream-ended"]
    sequences = [e["event"]["sequence"] for e in kernel.events()]
    assert sequences == list(range(1, len(sequences) + 1))
    reports, duplicates, _ = verify(kernel.events())
    assert not duplicates and [r.problems() for r in reports.values()] == [[]]


def test_every_event_is_schema_valid(guarded):
    """All events the shared kernel wrote so far validate against the documented schema."""
    events = guarded.events()
    assert len(events) > 5
    assert_schema_valid(events)
    for event in events:
        assert event["kernel_guard"]["mode"] == "enforce"


def test_redact_text_patterns():
    """Known secret shapes are replaced, ordinary text is kept."""
    assert "s3cr3t" not in redact_text("mysql://bob:s3cr3t@db/x")
    assert "ghp_" not in redact_text("token ghp_" + "a" * 36)
    assert "AKIAABCDEFGHIJKLMNOP" not in redact_text("key AKIAABCDEFGHIJKLMNOP")
    assert redact_text("print(sum(range(10)))") == "print(sum(range(10)))"


def test_redact_argv_hides_flag_values():
    """The value after --token or --password is redacted."""
    assert redact_argv(["tool", "--token", "abc123", "--name", "x"]) == ["tool", "--token", "[REDACTED]", "--name", "x"]


def test_redact_processor_uses_secret_environment_values():
    """Values of JUPYTERHUB_API_TOKEN found anywhere in an event are removed."""
    event = make_event("exec-denied", outcome="failure", layer="audit",
                       process={"args": ["curl", "-H", "X: 0123456789abcdef"], "command_line": "curl 0123456789abcdef"})
    Redact(environ={"JUPYTERHUB_API_TOKEN": "0123456789abcdef"})(event)
    assert "0123456789abcdef" not in to_json(event)


def test_validate_event_reports_missing_fields():
    """The schema check names what is missing."""
    assert "missing event.action" in validate_event({"@timestamp": "x", "event": {}})


def test_redaction_shortcut_matches_running_every_pattern():
    """A detector whose keywords the text holds but the fast gate (anchors, program words, keywords
    in long words) skips would not have matched: skipping it never changes the result."""
    import random
    import string

    import re

    from kernel_guard.events.secrets import DETECTORS, detectors_for

    programs = ("curl", "wget", "lftp", "http", "mysql", "mariadb", "sshpass", "mongo", "login", "redis-cli",
                "sqlcmd", "ldap", "smbclient")

    def present(keyword, text):
        if keyword in programs:  # a program is a word of its own (its patterns begin with \b)
            return re.search(r"(?<![a-z0-9])" + re.escape(keyword), text) is not None
        if keyword == "://":  # userinfo needs its '@'
            return "://" in text and "@" in text
        return keyword in text

    def by_substring(text):
        return {d.name for d in DETECTORS if any(present(k, text.lower()) for k in d.keywords)}

    pieces = ["token=", "Password: ", "Authorization: Bearer ", "api_key=", "https://u:p@h/", "ghp_" + "a" * 30,
              "AKIA" + "B" * 16, "eyJabcdefgh.ijklmnopq.rstuvwxyz", "ls -la", "x", " ", "=", ":", "KEY", "Auth",
              "pwd=", "glpat-" + "c" * 20, "sk-" + "d" * 24, "AIza" + "e" * 35, "hf_" + "f" * 34, "/", "+",
              "sk_live_" + "g" * 20, "-----BEGIN PRIVATE KEY-----", "_PAT=", "hooks.slack.com/services/T1/B2/x",
              "npm_" + "h" * 36, "SG." + "i" * 22 + "." + "j" * 43, "mysql -p", "curl -u a:", "-u", "(", "'",
              "dapi" + "0a" * 16, "glc_" + "k/" * 20, "123456789:AA" + "m" * 33, "https://", "@", "\n",
              "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AccountKey=" + "n" * 86 + "==", ";", "key-" + "a1" * 16, "SK" + "ab" * 16, "twilio ",
              "a" * 32, "--password ", "set aws_secret_access_key ", "redis-cli -a ", "?sig=", "pass:", "Q~",
              "abc1Q~" + "z" * 32, "sha256~" + "q" * 43, "xoxb-", "1//0" + "r" * 40]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces + list(string.ascii_letters)) for _ in range(rng.randint(1, 12)))
        chosen = {d.name for d in detectors_for(text)}
        skipped_names = by_substring(text) - chosen
        skipped = [d for d in DETECTORS if d.name in skipped_names]
        assert [d.name for d in skipped if d.sub(text) != text] == [], text


def test_redaction_shortcut_holds_beyond_ascii():
    """Text beyond ASCII takes the gate too (a French comment, an emoji, the guard's own
    ellipsis), and skipping a detector there never changes the result either: checked
    against every detector, with the characters a case-insensitive pattern reads as an
    ASCII letter (the dotless i, the long s, the Kelvin sign, the dotted capital I)
    inside keywords and non-ASCII letters inside tokens."""
    import random

    from kernel_guard.events.secrets import DETECTORS, detectors_for

    pieces = ["token=", "Password: ", "Authorization: Bearer ", "api_key=", "https://u:p@h/", "ghp_" + "a" * 30,
              "AKIA" + "B" * 16, "glpat-" + "c" * 20, "sk-" + "d" * 24, "curl -u a:", "mysql -p", "--password ",
              "x", " ", "=", ":", "'", "\n", "/", "-----BEGIN PRIVATE KEY-----", "hooks.slack.com/services/T1/B2/x",
              "\u00e9", "\u2026", "\u2713", "\U0001f642", "\u65e5\u672c", "\uff21\uff22", "\u0131", "\u017f",
              "\u212a", "\u0130", "pa\u017f\u017fword=", "to\u212aen=", "secret_\u0131d=", "PR\u0130VATE KEY",
              "ghp_" + "a" * 15 + "\u00e9" + "a" * 15, "sk-" + "\u00e9" * 24, "mot de passe=", "contrase\u00f1a=",
              "api_key=\u00e9" + "x" * 20, "c\u0430fe", "\u00e9curl -u a:b",
              "wJalrXUtnFEMI/K7MDENG/bPxRfiCY\u00e9EXAMPLEKEY"]
    rng = random.Random(20261207)
    narrowed = 0
    for _ in range(1500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
        chosen = {d.name for d in detectors_for(text)}
        narrowed += not text.isascii() and len(chosen) < len(DETECTORS)
        assert [d.name for d in DETECTORS if d.name not in chosen and d.sub(text) != text] == [], text
    assert narrowed > 500  # the gate is taken beyond ASCII, not only the safe answer


def test_a_bare_aws_secret_beside_text_beyond_ascii_is_redacted():
    """The bare AWS secret key shape is looked for in text beyond ASCII as in ASCII: a run
    of 40 base64 characters, which a character beyond ASCII ends (as it ends the pattern)."""
    from kernel_guard.events.secrets import REDACTED, redact_text

    key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert redact_text(f"cl\u00e9 \u2192 {key} \U0001f511") == f"cl\u00e9 \u2192 {REDACTED} \U0001f511"
    assert redact_text(f"r\u00e9sum\u00e9{key}") == f"r\u00e9sum\u00e9{REDACTED}"
    split = key[:20] + "\u00e9" + key[20:]
    assert redact_text(f"caf\u00e9 {split}") == f"caf\u00e9 {split}"  # two runs of 20: no key


def test_every_character_a_pattern_takes_for_an_ascii_letter_reaches_the_gate_as_one():
    """Case-insensitive patterns match a few characters beyond ASCII as ASCII letters; the
    gate must read each of them as that letter, or a keyword spelled with one is missed."""
    import re

    from kernel_guard.events import secrets

    letter = re.compile("(?i)[a-z]")
    for code in range(0x80, 0x110000):
        char = chr(code)
        if letter.fullmatch(char):
            folded = char.lower().translate(secrets._FOLDS)
            assert any(c.isascii() and c.isalpha() and letter.fullmatch(c) for c in folded), hex(code)


def test_json_lines_are_the_same_with_and_without_orjson(monkeypatch):
    """orjson (when installed) and the standard library write byte-identical lines; odd values never raise."""
    from kernel_guard.events import schema as events

    event = make_event("exec-denied", outcome="failure", layer="audit", reason="héllo ✓ \u2028 \"q\"",
                       process={"args": ["a", 1, 2.5, None, True]}, duration_ms=0.1 + 0.2)
    fast = events.to_json_line(event)
    monkeypatch.setattr(events, "orjson", None)
    assert events.to_json_line(event) == fast and fast.endswith(b"\n") and fast.count(b"\n") == 1
    assert events.to_json(event) == fast[:-1].decode()
    odd = {"k": {1: object(), "lone": "\udcff", "big": 2 ** 70}}
    import orjson  # in the test extra, so both paths are always checked

    for module in (None, orjson):
        monkeypatch.setattr(events, "orjson", module)
        line = events.to_json_line(odd)
        assert line.count(b"\n") == 1 and b'"big":1180591620717411303424' in line and b'"1":"<object' in line


def test_parts_every_event_shares_cannot_be_changed_through_one() -> None:
    """``ecs``, ``user`` and ``host`` are one object per process: changing one through an
    event is refused (it would change every event); a copy, a pickle or a parsed line is a
    plain dict again, and the line is what a dict of each would write."""
    import copy
    import json
    import pickle

    import pytest

    from kernel_guard.events.processors import AddContext
    from kernel_guard.events.schema import KernelContext

    context = KernelContext(kernel_id="k1")
    add = AddContext(context)
    one, two = (add(make_event("exec-denied", outcome="failure", layer="audit")) for _ in range(2))
    assert one["user"] is two["user"] and one["ecs"] is two["ecs"] and one["host"] is two["host"]
    for part, key in (("ecs", "version"), ("user", "name"), ("host", "hostname")):
        with pytest.raises(TypeError, match="every event shares"):
            one[part][key] = "changed"
        with pytest.raises(TypeError):
            one[part].update(other="x")
        assert type(copy.deepcopy(one)[part]) is dict and type(pickle.loads(pickle.dumps(one))[part]) is dict
    assert json.loads(to_json(one))["user"] == {"name": context.user}
    context.user = "someone-else"  # a context whose value changes: the next event says so
    assert add(make_event("exec-denied", outcome="failure", layer="audit"))["user"] == {"name": "someone-else"}
    assert one["user"] == {"name": two["user"]["name"]} != {"name": "someone-else"}


def test_line_separators_inside_values_are_escaped() -> None:
    """U+2028, U+2029 and U+0085 are valid unescaped JSON, but str.splitlines breaks lines on them: escaped."""
    import json

    from kernel_guard.events.schema import make_event, to_json_line

    code = "a\u2028b\u2029c\u0085d"
    line = to_json_line(make_event("cell-executed", outcome="success", layer="ipython", code=code)).decode()
    assert len(line.splitlines()) == 1 and json.loads(line)["kernel_guard"]["code"] == code


def test_a_forked_childs_events_name_its_own_pid() -> None:
    from kernel_guard.events.processors import AddContext
    from kernel_guard.events.schema import KernelContext

    add = AddContext(KernelContext(kernel_id="k"))
    assert add(make_event("cell-executed", outcome="success", layer="ipython"))["process"]["pid"] == os.getpid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        named = add(make_event("cell-executed", outcome="success", layer="ipython"))["process"]["pid"]
        os.write(write_end, str(named).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert int(os.read(read_end, 64)) == pid
    os.close(read_end)
    os.close(write_end)
