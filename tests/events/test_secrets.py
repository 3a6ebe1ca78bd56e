"""A corpus of realistic fake secrets, one per shape, placed in cell code (across the
truncation point too), argv, environment values, URLs, reasons and the notebook path:
none reaches a sink, and ordinary text is left alone."""

from __future__ import annotations

import json
import os
from typing import List, Tuple

import pytest

from kernel_guard.events.pipeline import EventPipeline
from kernel_guard.events.processors import AddContext, Redact, TruncateCode
from kernel_guard.events.schema import KernelContext, make_event
from kernel_guard.events.secrets import redact_argv, redact_text
from kernel_guard.events.sinks.file import FileSink

A36 = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"

#: (shape, text as it appears, the secret part that must not appear)
CORPUS: List[Tuple[str, str, str]] = [
    ("github classic", "ghp_" + A36, "ghp_" + A36),
    ("github fine-grained", "github_pat_11ABCDEFG0" + A36 + A36[:23], "github_pat_11ABCDEFG0" + A36),
    ("github oauth", "gho_" + A36, "gho_" + A36),
    ("gitlab", "glpat-xY3zAb9CdEf1GhIj2KlM", "glpat-xY3zAb9CdEf1GhIj2KlM"),
    ("openai", "sk-proj-" + A36 + "Zz", "sk-proj-" + A36),
    ("anthropic", "sk-ant-api03-" + A36 + "_x-Y", "sk-ant-api03-" + A36),
    ("stripe live", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("stripe restricted", "rk_test_51H8x9YKdpL3mNqRsTuVw", "rk_test_51H8x9YKdpL3mNqRsTuVw"),
    ("google api key", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    ("hugging face", "hf_" + A36[:34], "hf_" + A36[:34]),
    ("slack bot", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("slack webhook", "https://hooks.slack.com/services/T0A1B2C3D/B4E5F6G7H/" + A36[:24], A36[:24]),
    ("aws access key id", "AKIAIOSFODNN7EXAMPL3", "AKIAIOSFODNN7EXAMPL3"),
    ("aws secret, bare", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("pem private key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
     "-----END RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo"),
    ("password in code", 'password = "Tr0ub4dor&3xyz"', "Tr0ub4dor&3xyz"),
    ("authorization header", "Authorization: Bearer abcDEF123ghiJKL456", "abcDEF123ghiJKL456"),
    ("url userinfo", "postgresql://bob:s3cretPassw0rd@db:5432/x", "s3cretPassw0rd"),
    ("url, empty user", "redis://:r3disPassw0rd@cache:6379/0", "r3disPassw0rd"),
    ("url, password with @", "mysql://alice:p@ssw0rd!x@db.example/x", "ssw0rd!x"),
    ("pwd= in a connection string", "Server=db;Uid=sa;Pwd=Passw0rd123x;", "Passw0rd123x"),
    ("api_key: in YAML", "api_key: 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
]

#: (argv, the secret part): passwords on command lines
ARGV: List[Tuple[List[str], str]] = [
    (["curl", "-u", "alice:Curl-Passw0rd", "https://x"], "Curl-Passw0rd"),
    (["mysql", "-pMy5qlPassw0rd", "db"], "My5qlPassw0rd"),
    (["mysql", "-u", "root", "-p", "My5qlPassw0rd2", "db"], "My5qlPassw0rd2"),
    (["psql", "--password", "Pg-Passw0rd-9"], "Pg-Passw0rd-9"),
    (["tool", "--token=tok-1234567890abc"], "tok-1234567890abc"),
]

#: environment variables whose values are secrets by their names
ENV = {"MY_SERVICE_API_KEY": "env-api-key-0123456789", "GITLAB_PAT": "env-gitlab-pat-0123456789",
       "DB_PASSWORD": "env-db-passw0rd-xyz", "JUPYTERHUB_API_TOKEN": "hub-token-0123456789"}

#: text that must survive as it is
ORDINARY = ["ls -la /home/jovyan/work", "/opt/conda/lib/python3.11/site-packages/numpy/core/_methods.py",
            "ssh -p 2222 host", "sort -u names.txt", "df.groupby('key').value.sum()",
            "https://example.org/docs/index.html", "x = [1, 2, 3]"]


def _events_written(tmp_path, events: List[dict]) -> str:
    path = tmp_path / "events.jsonl"
    pipe = EventPipeline([FileSink(str(path))],
                         [AddContext(KernelContext(kernel_id="k")), Redact(environ=ENV), TruncateCode()])
    for event in events:
        pipe.emit(event)
    pipe.close()
    return path.read_text()


def _events_for(secret_text: str) -> List[dict]:
    padding = "x" * 189 + " "  # the secret crosses the 200-character cut of code_policy=truncated
    return [
        make_event("cell-executed", outcome="success", layer="ipython", code=padding + secret_text,
                   code_limit=200, code_truncated=True),
        make_event("exec-denied", outcome="failure", layer="seccomp",
                   process={"executable": "/bin/sh", "args": ["sh", "-c", f"echo {secret_text}"],
                            "command_line": f"sh -c 'echo {secret_text}'"},
                   reason=f"refused starting a program (os.system: echo {secret_text})"),
        make_event("config-ignored", outcome="failure", layer="config", setting="KernelGuard.sinks",
                   value=repr(secret_text), reason="invalid"),
        make_event("guard-loaded", outcome="success", layer="ipython", notebook=f"work/notes {secret_text}.ipynb"),
    ]


@pytest.mark.parametrize("shape, text, secret", CORPUS, ids=[c[0] for c in CORPUS])
def test_no_secret_shape_reaches_a_sink(tmp_path, shape: str, text: str, secret: str) -> None:
    """In code (across the cut), argv, a command line, a reason, a setting's value and the notebook path."""
    written = _events_written(tmp_path, _events_for(text))
    decoded = "\n".join(json.dumps(json.loads(line), ensure_ascii=False) for line in written.splitlines())
    assert secret not in decoded and secret[:12] not in decoded.replace("x" * 12, ""), decoded
    assert "[REDACTED]" in decoded


@pytest.mark.parametrize("argv, secret", ARGV, ids=[a[0][0] + " " + a[0][1] for a in ARGV])
def test_passwords_on_command_lines_are_redacted(argv: List[str], secret: str) -> None:
    """curl -u user:pass, mysql -pPASS and -p PASS, --password X, --token=X."""
    redacted = redact_argv(argv)
    assert secret not in " ".join(redacted) and argv[0] == redacted[0]


def test_secret_environment_values_are_redacted_wherever_they_appear(tmp_path) -> None:
    """Values of *_API_KEY, *_PAT, *_PASSWORD and hub token variables, in any field."""
    events = [make_event("cell-executed", outcome="success", layer="ipython",
                         code=f"print('{value}')") for value in ENV.values()]
    written = _events_written(tmp_path, events)
    assert not [value for value in ENV.values() if value in written]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone(text: str) -> None:
    """Paths, ports, sort flags, code and plain URLs are not secrets."""
    assert redact_text(text) == text
    assert redact_argv(text.split()) == text.split()


def test_a_real_kernel_writes_no_secret(make_kernel) -> None:
    """A cell holding several secrets, and a refused command carrying them: the sink file has none."""
    secrets = [CORPUS[0][1], CORPUS[4][1], CORPUS[13][1], "postgresql://bob:s3cretPassw0rd@db/x"]
    kernel = make_kernel(env={"MY_SERVICE_API_KEY": "kernel-env-api-key-9876"})
    code = "x = 1  # " + "y" * 185 + " " + " ".join(secrets) + "\nimport os\nos.system('echo ' + " \
           + repr(" ".join(secrets)) + " + ' $MY_SERVICE_API_KEY kernel-env-api-key-9876')"
    kernel.execute(code)
    kernel.new_events(until=lambda evs: any(e["event"]["action"] == "cell-executed" for e in evs))
    with open(kernel.sink, encoding="utf-8") as fh:
        text = fh.read()
    leaked = [s for s in [*secrets, "s3cretPassw0rd", "kernel-env-api-key-9876"] if s in text]
    assert not leaked and os.path.getsize(kernel.sink) > 0


def test_the_shells_working_folders_are_not_secrets() -> None:
    """PWD and OLDPWD hold 'pwd' in their names, and paths in their values: left alone."""
    from kernel_guard.events.secrets import secret_env_name

    assert not secret_env_name("PWD") and not secret_env_name("OLDPWD")
    assert secret_env_name("DB_PWD") and secret_env_name("GITLAB_PAT") and secret_env_name("OPENAI_API_KEY")
