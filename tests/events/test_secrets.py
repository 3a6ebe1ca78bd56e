"""A corpus of realistic fake secrets, one per shape, placed in cell code (across the
truncation point too), argv, environment values, URLs, reasons and the notebook path:
none reaches a sink, and ordinary text is left alone."""

from __future__ import annotations

import json
import os
import sys
from typing import List, Tuple

import pytest
from conftest import GuardedKernel
from launcher_support import NOTEBOOK_USER, unprivileged_root

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
    assert not secret_env_name("LD_LIBRARY_PATH") and not secret_env_name("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")


def test_names_are_judged_by_the_patterns_whatever_the_keyword_test_skips() -> None:
    """The keyword test in front of the name patterns (it spares a process ``re`` while no
    name holds a keyword) never says no where a pattern matches: 20,000 names of keyword
    parts, near misses, "_PAT" at word ends and not, and characters a case-insensitive
    pattern folds (the Kelvin sign, long s, dotless i, dotted capital I); and the
    environment's and argv's judgements are the patterns' own."""
    import random
    import re

    from kernel_guard.events import secrets

    env_pattern = re.compile(r"(?i)" + secrets.SECRET_WORDS + r"|_PAT$|auth")
    words = re.compile(r"(?i)" + secrets.SECRET_WORDS)
    flag = re.compile(secrets._SECRET_FLAG)
    parts = ["PASSWORD", "passwd", "Pwd", "PASSPHRASE", "secret", "TOKEN", "api-key", "API_KEY", "apikey",
             "access_key", "private-key", "ACCOUNTKEY", "sharedaccesssignature", "SharedAccessKey", "signing_key",
             "encryption-key", "session_key", "master-key", "credential", "_PAT", "_pat", "_PATH", "_PAT1",
             "cookie", "auth", "AUTH", "pas", "tok", "ke", "_pa", "DB", "MY", "_", "-", ".", "--", "\u212a",
             "\u017f", "\u0131", "\u0130", "\n", "X", "9", "path", "url", "pa\u017f\u017fword", "to\u212aen",
             "credent\u0131al", "\u212aey", "_PA\u0165"]
    rng = random.Random(11)
    for _ in range(20000):
        name = "".join(rng.choice(parts) for _ in range(rng.randint(1, 5)))
        if env_pattern.search(name):
            assert secrets._may_hold(name, secrets._ENV_KEYWORDS), name
        if words.search(name):
            assert secrets._may_hold(name, secrets._NAME_KEYWORDS), name
        assert secrets.secret_env_name(name) == (name not in ("PWD", "OLDPWD") and env_pattern.search(name) is not None)
        value = "v4lue-" + name
        hidden = secrets._hidden_value("tool", "set", "--" + name, value)
        if flag.match("--" + name) and secrets._secret_name(name):
            assert hidden == secrets.REDACTED, name


# -- the catalogue: one fake value per rule, in each context ------------------------------------

def _fake(alphabet: str, n: int, seed: int = 3) -> str:
    """An obviously fake, shape-valid body: the alphabet cycled from a seed (built here, never pasted)."""
    return "".join(alphabet[(seed + i * 7) % len(alphabet)] for i in range(n))


AN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
HEX = "0123456789abcdef"
UP = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

#: (rule, fake value): one per shape of the catalogue
SHAPE_FAKES: List[Tuple[str, str]] = [
    ("github token", "ghp_" + _fake(AN, 36)),
    ("github fine-grained token", "github_pat_11" + _fake(AN, 20) + "_" + _fake(AN, 59, 5)),
    ("gitlab token", "glpat-" + _fake(AN, 20)),
    ("gitlab runner registration token", "GR1348941" + _fake(AN, 20)),
    ("bitbucket app password", "ATBB" + _fake(AN, 32)),
    ("aws access key id", "AKIA" + _fake(UP, 16)),
    ("aws bedrock api key", "ABSK" + _fake(AN, 110)),
    ("google api key", "AIza" + _fake(AN, 35)),
    ("google oauth client secret", "GOCSPX-" + _fake(AN, 28)),
    ("google oauth access token", "ya29." + _fake(AN, 40)),
    ("azure ad client secret", "abc8Q~" + _fake(AN, 32)),
    ("alibaba access key id", "LTAI" + _fake(AN, 20)),
    ("digitalocean token", "dop_v1_" + _fake(HEX, 64)),
    ("heroku token", "HRKU-" + _fake(AN, 40)),
    ("netlify token", "nfp_" + _fake(AN, 36)),
    ("planetscale token", "pscale_tkn_" + _fake(AN, 40)),
    ("tailscale key", "tskey-auth-" + _fake(AN, 10) + "-" + _fake(AN, 30)),
    ("hashicorp vault token", "hvs." + _fake(AN, 90)),
    ("terraform cloud token", _fake(AN, 14) + ".atlasv1." + _fake(AN, 64)),
    ("pulumi token", "pul-" + _fake(HEX, 40)),
    ("doppler token", "dp.pt." + _fake(AN, 43)),
    ("age secret key", "AGE-SECRET-KEY-1" + _fake("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)),
    ("docker hub token", "dckr_pat_" + _fake(AN, 27)),
    ("databricks token", "dapi" + _fake(HEX, 32)),
    ("new relic key", "NRAK-" + _fake(UP, 27)),
    ("grafana token", "glsa_" + _fake(AN, 32) + "_" + _fake(HEX, 8)),
    ("sentry token", "sntryu_" + _fake(HEX, 64)),
    ("sonarqube token", "squ_" + _fake(HEX, 40)),
    ("npm token", "npm_" + _fake(AN, 36)),
    ("pypi token", "pypi-AgEIcHlwaS5vcmc" + _fake(AN, 60)),
    ("rubygems key", "rubygems_" + _fake(HEX, 48)),
    ("anthropic key", "sk-ant-api03-" + _fake(AN, 80)),
    ("openai key", "sk-proj-" + _fake(AN, 48)),
    ("hugging face token", "hf_" + _fake(AN, 34)),
    ("groq key", "gsk_" + _fake(AN, 52)),
    ("replicate token", "r8_" + _fake(AN, 37)),
    ("perplexity key", "pplx-" + _fake(AN, 48)),
    ("langsmith key", "lsv2_pt_" + _fake(HEX, 32) + "_" + _fake(HEX, 10)),
    ("posthog personal key", "phx_" + _fake(AN, 43)),
    ("notion token", "ntn_" + _fake("0123456789", 11) + _fake(AN, 35)),
    ("linear key", "lin_api_" + _fake(AN, 40)),
    ("figma token", "figd_" + _fake(AN, 40)),
    ("slack token", "xoxb-" + _fake("0123456789", 12) + "-" + _fake("0123456789", 13) + "-" + _fake(AN, 24)),
    ("slack webhook", "https://hooks.slack.com/services/T" + _fake(UP, 8) + "/B" + _fake(UP, 8) + "/" + _fake(AN, 24)),
    ("discord webhook", "https://discord.com/api/webhooks/1234567890/" + _fake(AN, 60)),
    ("telegram bot token", "123456789:AA" + _fake(AN, 33)),
    ("sendgrid key", "SG." + _fake(AN, 22) + "." + _fake(AN, 43)),
    ("twilio api key", "SK" + _fake(HEX, 32)),
    ("mailgun key", "key-" + _fake(AN, 32)),
    ("mailchimp key", _fake(HEX, 32) + "-us12"),
    ("postman key", "PMAK-" + _fake(HEX, 24) + "-" + _fake(HEX, 34)),
    ("atlassian token", "ATATT3" + _fake(AN, 180)),
    ("stripe key", "sk_" + "live_" + _fake(AN, 24)),
    ("stripe webhook secret", "whsec_" + _fake(AN, 32)),
    ("shopify token", "shpat_" + _fake(HEX, 32)),
    ("square token", "sq0atp-" + _fake(AN, 22)),
    ("dropbox token", "sl." + _fake(AN, 140)),
    ("jwt", "eyJ" + _fake(AN, 20) + "." + _fake(AN, 30) + "." + _fake(AN, 30)),
]

#: (rule, text, the secret in it): context rules
CONTEXT_FAKES: List[Tuple[str, str, str]] = [
    ("aws secret after its name", "aws configure set aws_secret_access_key " + _fake(AN + "/+", 40, 9),
     _fake(AN + "/+", 40, 9)),
    ("azure storage connection string", "DefaultEndpointsProtocol=https;AccountName=x;AccountKey="
     + _fake(AN + "+/", 86) + "==;EndpointSuffix=core.windows.net", _fake(AN + "+/", 86)),
    ("azure sas", "https://x.blob.core.windows.net/c?sv=2022&sig=" + _fake(AN, 43) + "%3D", _fake(AN, 43)),
    ("named secret", "DB_PASSWORD=" + _fake(AN, 14), _fake(AN, 14)),
    ("named secret in code", 'os.environ["MY_SERVICE_TOKEN"] = "' + _fake(AN, 18) + '"', _fake(AN, 18)),
    ("named secret argument", 'os.environ.setdefault("API_SECRET", "' + _fake(AN, 18) + '")', _fake(AN, 18)),
    ("secret option", "psql --password " + _fake(AN, 12), _fake(AN, 12)),
    ("curl -u", "curl -u alice:" + _fake(AN, 12) + " https://x", _fake(AN, 12)),
    ("mysql -p", "mysql -u root -p" + _fake(AN, 12) + " db", _fake(AN, 12)),
    ("redis-cli -a", "redis-cli -h cache -a " + _fake(AN, 12), _fake(AN, 12)),
    ("url userinfo", "postgresql://bob:" + _fake(AN, 14) + "@db:5432/x", _fake(AN, 14)),
    ("authorization header", "Authorization: Basic " + _fake(AN, 24), _fake(AN, 24)),
    ("high entropy after key", 'key = "' + _fake(AN, 32) + '"', _fake(AN, 32)),
    ("twilio auth token", "twilio client AC" + _fake(HEX, 32) + " " + "0f1e2d3c4b5a6978" * 2, "0f1e2d3c4b5a6978" * 2),
    ("private key", "-----BEGIN OPENSSH PRIVATE KEY-----\n" + _fake(AN, 64) + "\n-----END OPENSSH PRIVATE KEY-----",
     _fake(AN, 64)),
]


def _contexts(secret_text: str) -> List[dict]:
    """The secret as a notebook leaks it: code, a refused command line, an environment value (also under a
    secret-looking name), an error message, printed output (a user expression)."""
    def denied(command: str) -> dict:
        return make_event("exec-denied", outcome="failure", layer="audit",
                          reason=f"refused starting a program (os.system: {command})",
                          process={"executable": "/bin/sh", "args": ["/bin/sh", "-c", command],
                                   "command_line": f"/bin/sh -c {command}"})

    return [
        make_event("cell-executed", outcome="success", layer="ipython", code=f"x = {secret_text!r}\n"),
        denied(f"echo {secret_text}"),
        denied(f"env SOME_VALUE={secret_text} true"),
        denied(f"env SERVICE_TOKEN={secret_text} true"),
        make_event("cell-executed", outcome="failure", layer="ipython",
                   code=f"raise ValueError('could not connect with {secret_text}')"),
        make_event("cell-executed", outcome="success", layer="ipython", code="print(x)",
                   user_expressions={"out": f"printed: {secret_text}"}),
    ]


def _leaks(events: List[dict], secret: str) -> List[str]:
    redact = Redact(environ={})
    written = [json.dumps(redact(event)) for event in events]
    return [line for line in written if secret in line or secret[-16:] in line]


@pytest.mark.parametrize("rule, fake", SHAPE_FAKES, ids=[s[0] for s in SHAPE_FAKES])
def test_each_shape_is_redacted_in_every_context(rule: str, fake: str) -> None:
    """One fake value per token shape, in code, a command line, an environment value, an error, output."""
    assert not _leaks(_contexts(fake), fake)


@pytest.mark.parametrize("rule, text, secret", CONTEXT_FAKES, ids=[c[0] for c in CONTEXT_FAKES])
def test_each_context_rule_is_redacted_in_every_context(rule: str, text: str, secret: str) -> None:
    """One fake value per context rule, in code, a command line, an environment value, an error, output."""
    assert not _leaks(_contexts(text), secret)


def test_the_catalogue_covers_a_hundred_shapes() -> None:
    """The catalogue has at least a hundred token shapes, and every test fake names one of them."""
    from kernel_guard.events.secret_shapes import SHAPES

    names = {name for name, _, _ in SHAPES}
    assert len(SHAPES) >= 100 and {rule for rule, _ in SHAPE_FAKES} <= names


def test_a_secret_crossing_the_cut_leaves_none_of_its_characters() -> None:
    """A 40-character secret starting at character 50 of a command: the 60-character reason keeps none of it."""
    from kernel_guard.events.processors import redact_and_cut

    secret = "ghp_" + _fake(AN, 36)
    command = "x" * 49 + " " + secret + " --more"
    short = redact_and_cut(command, 60)
    assert len(short) <= 60 and not any(secret[:n] in short for n in range(4, 41))


def test_the_audit_layers_reason_is_redacted_before_it_is_cut() -> None:
    """The audit hook's reason (a command cut to 60 characters) holds no prefix of a secret at the cut."""
    from kernel_guard.audit.recording import _short

    secret = "npm_" + _fake(AN, 36)
    shown = _short("curl https://registry.example/x " + "y" * 15 + " " + secret)
    assert "npm_" not in shown and secret[4:12] not in shown


def test_structural_fields_are_never_touched() -> None:
    """event.id, @timestamp, sequence, hashes and ids stay as they were, whatever the text around them."""
    event = make_event("exec-denied", outcome="failure", layer="audit", reason="token=abcdef123456",
                       code_sha256="ab" * 32, stream="0f" * 16, process={"command_line": "password=x1y2z3w4"})
    event["event"]["sequence"] = 7
    before = json.loads(json.dumps(event))
    after = Redact(environ={})(event)
    assert after["event"]["id"] == before["event"]["id"] and after["@timestamp"] == before["@timestamp"]
    assert after["kernel_guard"]["code_sha256"] == "ab" * 32 and after["kernel_guard"]["stream"] == "0f" * 16
    assert "[REDACTED]" in after["event"]["reason"] and "[REDACTED]" in after["process"]["command_line"]


def test_operators_patterns_still_apply() -> None:
    """A pattern from KernelGuard.redact_patterns redacts what the catalogue does not know."""
    event = make_event("cell-executed", outcome="success", layer="ipython", code="emp = 'EMP-123456'")
    assert "EMP-123456" not in json.dumps(Redact([r"EMP-\d{6}"], environ={})(event))


#: secrets a notebook leaks, by route: a token, an npm token, a connection string's key, curl -u
KERNEL_SECRETS = ["npm_" + _fake(AN, 36), "glpat-" + _fake(AN, 22, 5),
                  "AccountKey=" + _fake(AN, 86, 7) + "==", "alice:" + _fake(AN, 14, 11)]
KERNEL_CODE = ("import os\nos.environ['SERVICE_API_TOKEN'] = {t0!r}\nprint({t1!r})\n"
               "try:\n    os.system('echo ' + 'y' * 30 + ' ' + {t1!r})\nexcept PermissionError:\n    pass\n"
               "try:\n    os.execv('/bin/sh', ['sh', '-c', 'curl -u {t3} https://x; echo {t2}'])\n"
               "except PermissionError:\n    pass\n"
               "raise ValueError('cannot connect with ' + {t2!r})")


def _secret_parts() -> List[str]:
    return [KERNEL_SECRETS[0][4:20], KERNEL_SECRETS[1][6:22], KERNEL_SECRETS[2][11:27], KERNEL_SECRETS[3][6:]]


@pytest.mark.parametrize("route", ["extension", "launcher", "launcher in audit mode"])
def test_a_real_kernel_records_no_secret_by_any_route(route: str) -> None:
    """A kernel as uid 1000, through the extension and the launcher (supervisor and custodian): code,
    an environment value under a secret name, output, a refused command cut in its reason, a raw exec
    and an error message carry secrets; the record holds none of them and still names the refusals."""
    code = KERNEL_CODE.format(t0=KERNEL_SECRETS[0], t1=KERNEL_SECRETS[1], t2=KERNEL_SECRETS[2],
                              t3=KERNEL_SECRETS[3])
    argv = None
    if route.startswith("launcher"):
        argv = [sys.executable, "-I", "-m", "kernel_guard.launch", "-f", "{connection_file}"]
    # audit mode: the audit layer records and lets the exec go on to the supervisor, which refuses it
    env = {"KERNEL_GUARD_MODE": "audit"} if route.endswith("audit mode") else None
    with unprivileged_root() as root:
        kernel = GuardedKernel(os.path.join(root, "k"), argv=argv, env=env, user=NOTEBOOK_USER).start()
        try:
            kernel.execute(code)
            kernel.execute("1 + 1", user_expressions={"out": repr(KERNEL_SECRETS[1])})
            kernel.new_events(until=lambda evs: sum(e["event"]["action"] == "cell-executed" for e in evs) >= 2)
        finally:
            kernel.shutdown()
        with open(kernel.sink, encoding="utf-8") as fh:
            text = fh.read()
    leaked = [part for part in _secret_parts() if part in text]
    assert not leaked, leaked
    layers = {e["kernel_guard"]["layer"] for e in map(json.loads, text.splitlines())
              if e["event"]["action"] in ("exec-denied", "exec-attempt")}
    assert "[REDACTED]" in text and layers >= ({"seccomp"} if route.endswith("audit mode") else {"audit"}), layers
