"""The shapes of secrets that notebooks leak, and how to find them cheaply.

A catalogue of detectors, written here after the shapes that public secret
scanners document (gitleaks' and detect-secrets' rule sets: token prefixes,
lengths and alphabets; no code or dependency of theirs).  Each detector has a
*gate*: substrings without which its pattern cannot match, checked before the
regular expression runs, so text without a secret (most paths, commands and
reasons) costs a few substring tests.

Three kinds:

* **token shapes**: self-identifying prefixes (``ghp_``, ``github_pat_``,
  ``glpat-``, ``sk-``, ``AKIA``, ``AIza``, ``hf_``, ``xox?-``, Stripe's
  ``sk_live_``, JWTs, PEM private keys, Slack webhooks);
* **named values**: ``password=...``, ``api_key: ...``, ``pwd=...``,
  ``Authorization: ...``, ``scheme://user:password@host`` (a password may
  hold ``@``; the user may be empty);
* **command-line passwords**: ``-u user:pass`` (curl), ``-pPASS`` and
  ``-p PASS`` (mysql; a number is a port and stays), ``--password X``.

Bare AWS secret access keys (40 characters of base64 with no prefix) are
matched by shape: mixed case, a digit and a ``/`` or ``+``, not a path.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Optional, Union

__all__ = ["DETECTORS", "REDACTED", "Detector", "redact_argv", "redact_text", "secret_env_name"]

REDACTED = "[REDACTED]"

#: words that make a name secret: password=..., X_API_KEY=..., "client_secret": ...
SECRET_WORDS = (r"token|passw(?:or)?d|passwd|pwd|secret|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
                r"|credential|auth|_pat\b|signature")
_SECRET_NAME = r"(?:[A-Za-z0-9_.-]*(?:" + SECRET_WORDS + r")[A-Za-z0-9_.-]*)"

Replacement = Union[str, Callable[["re.Match[str]"], str]]


class Detector:
    """One secret shape: a name, a gate and a pattern with its replacement."""

    __slots__ = ("name", "gate", "pattern", "replacement", "folded")

    def __init__(self, name: str, gate: tuple[str, ...], pattern: str, replacement: Replacement = REDACTED,
                 folded: bool = False) -> None:
        self.name = name
        self.gate = gate  # any of these must be in the text (lower-cased text if folded)
        self.pattern = re.compile(pattern)
        self.replacement = replacement
        self.folded = folded


def _aws_secret(match: "re.Match[str]") -> str:
    """A run of base64 characters that is exactly an AWS secret access key's shape."""
    token = match.group(0)
    after = match.string[match.end():match.end() + 1]
    if (len(token) == 40 and after != "=" and not token.startswith("/") and ("/" in token or "+" in token)
            and any(c.islower() for c in token) and any(c.isupper() for c in token)
            and any(c.isdigit() for c in token)):
        return REDACTED
    return token


DETECTORS: tuple[Detector, ...] = (
    # -- headers and named values -------------------------------------------------
    Detector("authorization header", ("auth",),
             r"(?i)\b(authorization|proxy-authorization)([\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic|token|digest)\s+)?"
             r"[^\s'\"]+", r"\1\2\3 " + REDACTED, folded=True),
    Detector("named secret", ("token", "passw", "pwd", "secret", "key", "credential", "auth", "_pat", "signature"),
             r"(?i)(\b" + _SECRET_NAME + r"[\"']?\s*[=:]\s*[\"']?)((?:bearer|basic|token)\s+)?([^\s'\",;&]+)",
             r"\1\2" + REDACTED, folded=True),
    # scheme://user:password@host, the password possibly holding '@', the user possibly empty
    Detector("url userinfo", ("://",),
             r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)([^\s/]+)(@)(?=[^@\s/]*(?:[/\s:?#'\"]|$))",
             r"\1" + REDACTED + r"\3"),
    Detector("slack webhook", ("hooks.slack.com",), r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]+"),
    # -- self-identifying token shapes ------------------------------------------------
    Detector("github token", ("gh", "github_pat_"), r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"),
    Detector("gitlab token", ("gl",), r"\bgl(?:pat|dt|rt|ptt|ft|imt|agent|oas|cbt|soat)-[A-Za-z0-9_-]{20,}"),
    Detector("sk- api key", ("sk-",), r"(?<![A-Za-z0-9])sk-(?:proj-|ant-[a-z0-9]{2,8}-|svcacct-)?[A-Za-z0-9_-]{20,}"),
    Detector("stripe key", ("_live_", "_test_"), r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    Detector("google api key", ("AIza",), r"\bAIza[0-9A-Za-z_-]{35}"),
    Detector("hugging face token", ("hf_",), r"\bhf_[A-Za-z0-9]{30,}"),
    Detector("slack token", ("xox",), r"\bxox[abprse]-[A-Za-z0-9-]{10,}"),
    Detector("aws access key id", ("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    Detector("jwt", ("eyJ",), r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    Detector("private key", ("PRIVATE KEY",),
             r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[\s\S]*)"),
    # -- bare AWS secret access keys: 40 base64 characters, mixed, with '/' or '+' -------
    # runs of the alphabet, matched greedily (linear), judged by _aws_secret
    Detector("aws secret key", ("/", "+"), r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40,}", _aws_secret),
)

#: flags whose next argument is a secret: --password X, --token X
_SECRET_FLAG = re.compile(r"(?i)^--?" + _SECRET_NAME + "$")
#: programs whose -u takes user:password (and whose -u user alone is no secret)
_USER_PASSWORD_TOOLS = frozenset({"curl", "wget"})
#: programs whose -pPASS / -p PASS is a password (elsewhere -p is often a port)
_P_PASSWORD_TOOLS = frozenset({"mysql", "mysqldump", "mysqladmin", "mysqlimport", "mariadb", "mariadb-dump",
                               "sshpass"})


#: names that look secret and are not: the shell's working folders
_NOT_SECRET_ENV = frozenset({"PWD", "OLDPWD"})


def secret_env_name(name: str) -> bool:
    """Whether an environment variable's name says its value is a secret."""
    return name not in _NOT_SECRET_ENV and re.search(r"(?i)" + SECRET_WORDS + r"|_PAT$", name) is not None


_EXACT_GATES = tuple(sorted({g for d in DETECTORS if not d.folded for g in d.gate}))
_FOLDED_GATES = tuple(sorted({g for d in DETECTORS if d.folded for g in d.gate}))


def redact_text(text: str, literals: Iterable[str] = ()) -> str:
    """Replace secrets in free text: known literal values first, then each detector
    whose gate is present (most text meets none, and costs a few substring tests)."""
    for literal in literals:
        if literal in text:
            text = text.replace(literal, REDACTED)
    if not text.isascii():
        # case folding beyond ASCII (the Kelvin sign, the long s) defeats gates: check all
        for detector in DETECTORS:
            text = detector.pattern.sub(detector.replacement, text)
        return text
    present = {g for g in _EXACT_GATES if g in text}
    if "=" in text or ":" in text:  # every folded (named-value) detector needs one of them
        lowered = text.lower()
        present.update(g for g in _FOLDED_GATES if g in lowered)
    if not present:
        return text
    if ("/" in present or "+" in present) and (len(text) < 40 or text.islower()):
        present.difference_update(("/", "+"))  # no room for, or no capital of, an AWS secret key
    for detector in DETECTORS:
        if not present.isdisjoint(detector.gate):
            text = detector.pattern.sub(detector.replacement, text)
    return text


def _hidden_value(program: str, flag: str, value: str) -> Optional[str]:
    """The redacted form of ``value`` (given ``program`` and the argument before it), or None."""
    if _SECRET_FLAG.match(flag):
        return REDACTED
    if program in _USER_PASSWORD_TOOLS and flag in ("-u", "--user", "--proxy-user") and ":" in value:
        return value.split(":", 1)[0] + ":" + REDACTED
    if program in _P_PASSWORD_TOOLS:
        if flag == "-p":
            return REDACTED
        if value.startswith("-p") and len(value) > 2 and not value.startswith("--"):
            return "-p" + REDACTED  # mysql -pPASS
    return None


def redact_argv(argv: list, literals: Iterable[str] = ()) -> list[str]:
    """Redact an argv: each argument as text, and what follows a secret-bearing flag."""
    out: list[str] = []
    previous = ""
    program = ""
    for index, arg in enumerate(argv):
        text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
        if index == 0:
            program = text.rsplit("/", 1)[-1]
        hidden = _hidden_value(program, previous, text) if index else None
        out.append(hidden if hidden is not None else redact_text(text, literals))
        previous = text
    return out
