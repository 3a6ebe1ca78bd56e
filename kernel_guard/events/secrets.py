"""Finding secrets in the record's text, cheaply: one gate pass, then only the detectors it names.

Three kinds of detector:

* **token shapes** (:mod:`.secret_shapes`): self-identifying prefixes with
  their lengths and alphabets (``ghp_``, ``glpat-``, ``sk-ant-``, ``AKIA``,
  ``npm_``, ``pypi-AgEIcHlwaS5vcmc``, ``SG.``, ``xoxb-``, PEM private keys,
  JWTs ... about 120 providers);
* **context rules** (here): a value after a secret-looking name
  (``password=``, ``"api_key": ``, ``DB_PASSWORD=``, ``os.environ["X_TOKEN"] = ``),
  a connection string's key (``Pwd=``, ``AccountKey=``), a secret-bearing
  option (``--password X``, ``--token=X``, ``mysql -pPASS``, ``curl -u
  user:pass``, ``aws configure set aws_secret_access_key X``), URL userinfo
  (``scheme://user:pass@host``) and ``Authorization:`` headers;
* **high entropy where a secret is expected**: after a weaker name (``key=``,
  ``auth:``, ``creds=``) a value is redacted only when it looks random (Shannon
  entropy, length, letters and digits), so ``key='region'`` stays.

The gate: every detector names keywords, literal strings that each of its
matches contains.  One compiled pattern (a trie of all keywords, matched
case-insensitively at every position) finds the keywords a text holds; only
the detectors they name run.  Text with no keyword (most code, paths,
commands and reasons) costs that one pass.

Bare AWS secret access keys (40 characters of base64 with no prefix) are
matched by shape only in text long enough and mixed-case enough to hold one:
mixed case, a digit and a ``/`` or ``+``, not a path.
"""

from __future__ import annotations

import functools
import math
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    import re
    from typing import Any, Callable, Iterable, Optional, Sequence

from .secret_shapes import SHAPES

__all__ = ["DETECTORS", "NATIVE_GATE", "REDACTED", "Detector", "clean", "detectors_for", "native_gate",
           "redact_and_cut", "redact_argv", "redact_text", "redact_with", "secret_env_name"]

REDACTED = "[REDACTED]"

#: words that make a name secret: password=..., X_API_KEY=..., "client_secret": ...
SECRET_WORDS = (r"passw(?:or)?d|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"
                r"|private[_-]?key|account[_-]?key|sharedaccess(?:key|signature)|signing[_-]?key"
                r"|encryption[_-]?key|session[_-]?key|master[_-]?key|credential|_pat\b|cookie")
#: their keywords for the gate (each match of SECRET_WORDS holds one)
_SECRET_KEYWORDS = ("passw", "pwd", "passphrase", "secret", "token", "key", "credential", "_pat", "cookie")
_SECRET_NAME = r"[A-Za-z0-9_.-]{0,64}?(?:" + SECRET_WORDS + r")[A-Za-z0-9_.-]{0,64}"
#: weaker words: a value after them is redacted only when it looks random
_WEAK_WORDS = r"key|auth|creds?|sig"
#: what every match of SECRET_WORDS holds, lower-cased, but "_pat" (which must end a word
#: there: GRPC_..._PATH, LD_LIBRARY_PATH are no secrets' names): the gate's keywords, or its own
_NAME_KEYWORDS = tuple(k for k in _SECRET_KEYWORDS if k != "_pat") + ("sharedaccess",)
#: the same for secret_env_name's pattern, which adds "auth"
_ENV_KEYWORDS = _NAME_KEYWORDS + ("auth",)
#: its alternatives that are plain words: in ASCII text, each is a match by itself
_ENV_WORDS = ("pwd", "passphrase", "secret", "token", "credential", "cookie", "auth")


@functools.lru_cache(maxsize=None)
def _compiled(source: str) -> "re.Pattern[str]":
    """A pattern compiled when first used, as are the detectors': ``re`` (with ``enum``,
    0.5 MB) is imported by a process whose text has held a candidate, or that has an
    operator's own patterns, not by every supervisor (docs/launcher.md, "Memory")."""
    import re

    return re.compile(source)


def _may_hold(text: str, keywords: tuple[str, ...]) -> bool:
    """False only when ``text`` cannot match a pattern every match of which holds one of
    ``keywords``, or "_pat" ending a word, case-insensitively: ASCII text without any (the
    folds of a case-insensitive pattern beyond ASCII, the Kelvin sign's "k" ..., are left
    to the pattern)."""
    if not text.isascii():
        return True
    lowered = text.lower()
    if any(keyword in lowered for keyword in keywords):
        return True
    at = lowered.find("_pat")
    while at >= 0:  # "_pat" at the end of a word (SECRET_WORDS' _pat\b, the environment's _PAT$)
        after = lowered[at + 4:at + 5]
        if not (after.isalnum() or after == "_"):
            return True
        at = lowered.find("_pat", at + 1)
    return False


#: the last part of a secret-looking name that says its value is not the secret
_NOT_SECRET_PARTS = frozenset({
    "tokens", "tokenizer", "tokenize", "tokenized", "count", "counts", "length", "len", "size", "limit",
    "type", "types", "file", "files", "path", "dir", "url", "uri", "endpoint", "name", "names", "id", "ids",
    "env", "var", "field", "header", "prompt", "required", "policy", "format", "expires", "expiry", "ttl",
    "hash", "sha256", "location", "manager", "store", "provider", "class", "id_", "arn", "region", "user",
    "username", "len_", "min", "max", "regex", "pattern", "mode", "enabled", "set", "index"})
#: values after a secret-looking name that are not secrets: code, types, references
_NOT_SECRET_VALUES = frozenset({"str", "bytes", "int", "none", "true", "false", "null", "optional", "any", "self",
                                "secretstr", "string", "required", "undefined", "redacted", "xxx", "***", "..."})


class Detector:
    """One secret shape or context: its keywords (the gate), pattern and judge.

    A match's named group ``s``, if the pattern has one, is what is redacted
    (else the whole match); ``judge(match)`` may keep a match as it is.
    """

    __slots__ = ("name", "keywords", "source", "judge", "_compiled", "_replace")

    def __init__(self, name: str, keywords: tuple[str, ...], pattern: str,
                 judge: Optional[Callable[["re.Match[str]"], bool]] = None) -> None:
        self.name = name
        self.keywords = tuple(k.lower() for k in keywords)
        self.source = pattern
        self.judge = judge
        self._compiled: Optional["re.Pattern[str]"] = None
        self._replace: object = None

    @property
    def pattern(self) -> "re.Pattern[str]":
        """The compiled pattern, compiled when first needed: with the gates in front, most
        processes run a few detectors or none, and ~130 compiled patterns cost ~1.5 MB."""
        if self._compiled is None:
            compiled = _compiled(self.source)
            grouped = "s" in compiled.groupindex or self.judge is not None
            self._replace = self._group if grouped else REDACTED
            self._compiled = compiled
        return self._compiled

    def _group(self, match: "re.Match[str]") -> str:
        if self.judge is not None and not self.judge(match):
            return match.group(0)
        start, end = _secret_span(match)
        if start < 0:
            return match.group(0)
        whole = match.start()
        text = match.group(0)
        return text[:start - whole] + REDACTED + text[end - whole:]

    def sub(self, text: str) -> str:
        """``text`` with this detector's matches redacted."""
        pattern = self.pattern
        return pattern.sub(self._replace, text)  # type: ignore[arg-type]


def _secret_span(match: "re.Match[str]") -> tuple[int, int]:
    """Where the secret is: the first of the groups ``s``, ``s1``, ``s2`` that matched, else all."""
    for name in ("s", "s1", "s2", "s3"):
        if name in match.re.groupindex and match.start(name) >= 0:
            return match.span(name)
    return match.span()


def _value(match: "re.Match[str]") -> str:
    start, end = _secret_span(match)
    return match.string[start:end]


def _secret_name(name: str) -> bool:
    """Whether a name that holds a secret word names the secret itself (not its file, length, URL ...)."""
    parts = [p for p in _compiled(r"[_.\-]+").split(name.lower()) if p]
    if not parts or name in _NOT_SECRET_ENV:
        return False
    return parts[-1] not in _NOT_SECRET_PARTS


def _plausible_value(value: str, quoted: bool) -> bool:
    """A value that can be a secret: not empty, not redacted, not a reference or code."""
    if not value or value.startswith(("[REDACTED", "$", "{", "%(", "<", "os.environ", "getpass")):
        return False
    if value.lower() in _NOT_SECRET_VALUES or value.strip("*x.") == "":
        return False
    if not quoted and ("(" in value or "[" in value):
        return False  # password = input("..."), token = os.environ["X"]
    return True


def _named(match: "re.Match[str]") -> bool:
    """A value after a secret-looking name: redacted unless the name or the value says otherwise."""
    return _secret_name(match.group("n")) and _plausible_value(_value(match), match.start("s") < 0)


def _numeric_port(match: "re.Match[str]") -> bool:
    """``-p PASS`` is a password; ``-p 3306`` a port."""
    return not _value(match).isdigit()


def entropy(text: str) -> float:
    """Shannon entropy, bits per character."""
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in counts.values())


def random_looking(value: str) -> bool:
    """Long enough, letters and digits, and of high entropy: what generated keys look like."""
    return (len(value) >= 16 and entropy(value) >= 3.5 and any(c.isdigit() for c in value)
            and any(c.isalpha() for c in value) and not value.startswith(("/", "./", "http")))


def _weak_named(match: "re.Match[str]") -> bool:
    return _secret_name(match.group("n")) and random_looking(_value(match))


def _option(match: "re.Match[str]") -> bool:
    value = _value(match)
    return _secret_name(match.group("n")) and not value.startswith("-") and _plausible_value(value, True)


# a value: quoted (any characters but the quote), or bare (up to a separator)
_VALUE = r"(?:\"(?P<s>[^\"\n]+)\"|'(?P<s1>[^'\n]+)'|`(?P<s2>[^`\n]+)`|(?P<s3>[^\s'\"`,;&)}\]]+))"
_SEP = r"[\"'`]?\]?\s*(?::=|=>|==?|:)\s*"
_PREFIX = r"(?:(?:bearer|basic|token)\s+)?"

#: in order: the command-line rules before the named ones (``TOKEN=curl -u a:b`` would lose its
#: program to a named rule first), the entropy rule before the named rules take its name
CONTEXT: tuple[Detector, ...] = (
    Detector("curl -u user:password", ("curl", "wget", "lftp", "http"),
             r"(?i)\b(?:curl|wget|lftp|http)\b[^\n;|&]{0,200}?\s(?:-u|--user|--proxy-user|-U)[\s=]*[\"']?[^\s:'\"]*[:,]"
             r"(?P<s>[^\s'\"]+)"),
    Detector("mysql -pPASSWORD", ("mysql", "mariadb", "sshpass", "mongo", "login"),
             r"\b(?:mysql\w*|mariadb[\w-]*|sshpass|mongo\w*|(?:docker|podman|helm|buildah|skopeo|oras|nerdctl)"
             r"(?:\s+registry)?\s+login)\b[^\n;|&]{0,200}?\s-p(?:(?P<s>[^\s'\"]+)|\s+(?P<s1>[^\s'\"-][^\s'\"]*))",
             _numeric_port),
    Detector("redis-cli -a, sqlcmd -P, ldap -w", ("redis-cli", "sqlcmd", "ldap", "smbclient"),
             r"\b(?:redis-cli\b[^\n;|&]{0,200}?\s-a|sqlcmd\b[^\n;|&]{0,200}?\s-P|ldap\w*\b[^\n;|&]{0,200}?\s-w"
             r"|smbclient\b[^\n;|&]{0,200}?\s-U\s*\S+?%)\s*(?P<s>[^\s'\"]+)"),
    Detector("openssl pass:", ("pass:",), r"(?<![\w])pass:(?P<s>[^\s'\"]+)"),
    Detector("url userinfo", ("://",),
             r"(?i)\b[a-z][a-z0-9+.-]{0,32}://[^/\s:@]{0,256}:(?P<s>[^\s/]{1,256})@(?=[^@\s/]*(?:[/\s:?#'\"]|$))"),
    Detector("random value after a key-like name", ("key", "auth", "cred", "sig"),
             r"(?i)(?<![A-Za-z0-9_.-])(?P<n>[A-Za-z0-9_.-]{0,64}?(?:" + _WEAK_WORDS + r")[A-Za-z0-9_.-]{0,64})" + _SEP
             + r"(?:\"(?P<s>[^\"\s]{16,})\"|'(?P<s1>[^'\s]{16,})'|(?P<s3>[A-Za-z0-9+/=_.~-]{16,}))", _weak_named),
    Detector("authorization header", ("authorization",),
             r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest|negotiate|apikey"
             r"|sso-key|dsn)\s+)?(?P<s>[^\s'\"]{4,})"),
    Detector("bearer token", ("bearer",), r"(?i)\bbearer\s+(?P<s>[A-Za-z0-9._~+/-]{12,}=*)"),
    Detector("named secret", _SECRET_KEYWORDS,
             r"(?i)(?<![A-Za-z0-9_.-])(?P<n>" + _SECRET_NAME + r")" + _SEP + _PREFIX + _VALUE, _named),
    Detector("named secret argument", _SECRET_KEYWORDS,
             r"(?i)[\"'](?P<n>" + _SECRET_NAME + r")[\"']\s*,\s*(?:\"(?P<s>[^\"\n]+)\"|'(?P<s1>[^'\n]+)')", _named),
    Detector("named secret set on a command line", _SECRET_KEYWORDS,
             r"(?i)\b(?:set|add|modify\s+\S+|config\s+set)\s+(?P<n>" + _SECRET_NAME + r")\s+" + _VALUE, _named),
    Detector("secret option", _SECRET_KEYWORDS,
             r"(?i)(?<![\w-])--?(?P<n>[\w-]{0,64}?(?:" + SECRET_WORDS + r")[\w-]{0,64})(?:=|\s+)" + _VALUE, _option),
    Detector("requests-style auth pair", ("auth",),
             r"(?i)auth\w*\s*[=(]\s*\(?\s*[\"'][^\"'\n]*[\"']\s*,\s*(?:\"(?P<s>[^\"\n]+)\"|'(?P<s1>[^'\n]+)')"),
    # scheme://user:password@host, the password possibly holding '@', the user possibly empty
)

SHAPE_DETECTORS: tuple[Detector, ...] = tuple(Detector(name, keywords, pattern) for name, keywords, pattern in SHAPES)
DETECTORS: tuple[Detector, ...] = SHAPE_DETECTORS + CONTEXT

#: flags whose next argument is a secret: --password X, --token X
_SECRET_FLAG = r"(?i)^--?" + _SECRET_NAME + "$"
#: programs whose -u takes user:password (and whose -u user alone is no secret)
_USER_PASSWORD_TOOLS = frozenset({"curl", "wget", "lftp"})
#: programs whose -pPASS / -p PASS is a password (elsewhere -p is often a port)
_P_PASSWORD_TOOLS = frozenset({"mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlsh", "mariadb",
                               "sshpass", "mongo", "mongosh", "mongodump", "mongorestore",
                               "mongoexport", "mongoimport"})
#: programs and the one flag whose value is their password
_FLAG_PASSWORD_TOOLS = {"redis-cli": "-a", "sqlcmd": "-P", "ldapsearch": "-w", "ldapadd": "-w",
                        "ldapmodify": "-w", "ldapdelete": "-w", "ldappasswd": "-w"}
#: words after which a secret-looking name is followed by its value: aws configure set NAME VALUE
_SETTERS = frozenset({"set", "add", "modify"})

#: names that look secret and are not: the shell's working folders
_NOT_SECRET_ENV = frozenset({"PWD", "OLDPWD"})
#: an environment variable's name that says its value is a secret
_SECRET_ENV_NAME = r"(?i)" + SECRET_WORDS + r"|_PAT$|auth"


def secret_env_name(name: str) -> bool:
    """Whether an environment variable's name says its value is a secret."""
    if name in _NOT_SECRET_ENV:
        return False
    if name.isascii() and any(word in name.lower() for word in _ENV_WORDS):
        return True  # JUPYTERHUB_API_TOKEN ...: no pattern needed
    return _may_hold(name, _ENV_KEYWORDS) and _compiled(_SECRET_ENV_NAME).search(name) is not None


# -- the gate -------------------------------------------------------------------------
#
# Two cheap passes over the lower-cased text instead of one regular expression of
# every keyword (which costs about 0.1 us per character in CPython's engine):
#
# * anchors, the few keywords that context rules need (``pass``, ``token``, ``key``,
#   ``://``, ``curl`` ...), each a substring test (C speed);
# * every token shape has a body of 16 or more characters of its alphabet, so the
#   catalogue's keywords are looked for (one trie-shaped pattern) only in the text's
#   "long words": runs of 16 or more of ``[a-z0-9_+=.~:$-]`` (a ``/`` splits a path
#   into short words).  Ordinary code and commands have few.

_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-+=.~:$")
_SPLIT = bytes(c if chr(c) in _WORD_CHARS else 32 for c in range(256))
#: programs are words of letters and digits (mysql; redis of redis-cli)
_PROGRAM_SPLIT = bytes(c if chr(c) in _WORD_CHARS and chr(c) not in "_+=.~:$-" else 32 for c in range(256))
_LONG_WORD = 16
#: keywords looked for anywhere (substring tests), not only in long words
_ANCHORS = ("pass", "pwd", "secret", "token", "key", "cred", "auth", "cookie", "sig", "bearer", "private", "_pat",
            "glc_", "whsec_", "absk", "fm1", "fm2_", "1//0", "twilio", "discord", "webhook", "hooks.slack")
#: programs whose options carry passwords, looked for as words (curl -u, mysql -p ...)
_PROGRAMS = frozenset(w.encode("ascii") for w in (
    "curl", "wget", "lftp", "http", "mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlsh", "mariadb",
    "sshpass", "mongo", "mongosh", "mongodump", "mongorestore", "mongoexport", "mongoimport",
    "login", "redis", "sqlcmd", "ldapsearch", "ldapadd", "ldapmodify", "ldapdelete", "ldappasswd",
    "ldapwhoami", "smbclient"))
_PROGRAM_KEYWORD = {w: next(k for k in ("curl", "wget", "lftp", "http", "mysql", "mariadb", "sshpass", "mongo",
                                        "login", "redis", "sqlcmd", "ldap", "smbclient")
                            if w.decode("ascii").startswith(k)) for w in _PROGRAMS}


def _trie_pattern(words: Iterable[str]) -> str:
    """One regular expression matching any of ``words``, factored by prefix (longest first)."""
    import re  # once, for the gate's pattern, when a long word first needs it

    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return "(?:" + body + ")?" if ends else body

    return build(trie)


_KEYWORDS = sorted({k for d in DETECTORS for k in d.keywords} | set(_ANCHORS))
#: every position where a keyword starts, the longest one there
_GATE: list = []  # the trie's compiled pattern, made when a long word first needs it
_ALL = frozenset(range(len(DETECTORS)))


@functools.lru_cache(maxsize=None)
def _named_by(found: str) -> frozenset[int]:
    """Indices of the detectors keyword ``found`` names: those with a keyword inside it
    (the trie reports the longest keyword at a position) or holding it (an anchor).
    Worked out when first found: for all keywords at once it cost every process 10 ms."""
    if found not in _KEYWORD_SET:
        return _ALL
    return frozenset(i for i, d in enumerate(DETECTORS) if any(k in found or found in k for k in d.keywords))


_KEYWORD_SET = frozenset(_KEYWORDS)

_AWS_BARE = r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
_AWS_SPLIT = bytes(c if chr(c).isalnum() and c < 128 or chr(c) in "/+" else 32 for c in range(256))


def _aws_secret(match: "re.Match[str]") -> str:
    """A run of base64 characters that is exactly an AWS secret access key's shape."""
    token = match.group(0)
    if (not token.startswith("/") and ("/" in token or "+" in token) and any(c.islower() for c in token)
            and any(c.isupper() for c in token) and any(c.isdigit() for c in token)
            and "//" not in token):
        return REDACTED
    return token


try:
    from ._gate import Gate as _NativeGate
except ImportError:  # built optionally (setup.py): without it the Python gate answers alone
    _NativeGate = None

#: a run of this many base64 characters may be a bare AWS secret access key
_AWS_RUN = 40


def native_gate(literals: Iterable[str] = ()) -> Optional[Any]:
    """The one-pass scan (``_gate.c``) with this module's tables (keywords that only
    word characters make are looked for in long words, the others anywhere), and
    ``literals`` (secret values) looked for anywhere, case-insensitively; None
    without the native part, or when a literal is not ASCII."""
    literals = tuple(literal.lower() for literal in literals if literal)
    if _NativeGate is None or not all(literal.isascii() for literal in literals):
        return None
    in_words = tuple(k for k in _KEYWORDS if set(k) <= _WORD_CHARS)
    anywhere = tuple(sorted(set(_ANCHORS) | {"://"} | {k for k in _KEYWORDS if not set(k) <= _WORD_CHARS}
                            | set(literals)))
    try:
        return _NativeGate(anywhere, in_words, tuple(sorted(w.decode("ascii") for w in _PROGRAMS)),
                           "".join(sorted(_WORD_CHARS)), "abcdefghijklmnopqrstuvwxyz0123456789", _LONG_WORD,
                           _AWS_RUN)
    except ValueError:  # more secret values than its table holds: the Python gate decides
        return None


#: None without the native part
NATIVE_GATE = native_gate()


def clean(texts: Sequence[str]) -> bool:
    """Whether no detector could match in any of ``texts`` and no bare AWS key is there
    (the native scan, conservative: it may call a text a candidate that is not).
    False without the native part: then :func:`detectors_for` decides."""
    return NATIVE_GATE is not None and NATIVE_GATE.clean(texts)


#: the characters a case-insensitive pattern takes for an ASCII letter and that
#: ``str.lower`` keeps as they are (it makes the Kelvin sign "k", the dotted capital
#: I "i" and a combining dot); tests/events/test_events.py checks every code point
_FOLDS = str.maketrans({"\u0131": "i", "\u017f": "s"})
#: any other character beyond ASCII spells no ASCII keyword: the gate reads it as "+",
#: a word character no keyword holds, so the words around it only grow
_NON_ASCII = r"[^\x00-\x7f]"


def detectors_for(text: str) -> list[Detector]:
    """The detectors whose keywords ``text`` holds, in catalogue order (text beyond
    ASCII too: a French comment or an emoji does not run the whole catalogue)."""
    lowered = text.lower()
    if not lowered.isascii():
        lowered = _compiled(_NON_ASCII).sub("+", lowered.translate(_FOLDS))
    found = set(filter(lowered.__contains__, _ANCHORS))
    if "@" in lowered and "://" in lowered:
        found.add("://")  # URL userinfo
    raw = lowered.encode("ascii")
    programs = _PROGRAMS.intersection(raw.translate(_PROGRAM_SPLIT).split())
    words = raw.translate(_SPLIT).split()
    if not words:
        return _chosen(found)
    if programs:
        found.update(_PROGRAM_KEYWORD[w] for w in programs)
    if max(map(len, words)) >= _LONG_WORD:
        found.update(_keyword_gate().findall(" ".join({w.decode("ascii") for w in words if len(w) >= _LONG_WORD})))
    return _chosen(found)


def _keyword_gate() -> "re.Pattern[str]":
    """Every position where a keyword starts, the longest one there (compiled once)."""
    if not _GATE:
        _GATE.append(_compiled("(?=(" + _trie_pattern(_KEYWORDS) + "))"))
    return _GATE[0]


def _chosen(found: set[str]) -> list[Detector]:
    if not found:
        return []
    chosen: set[int] = set()
    for keyword in found:
        chosen |= _named_by(keyword)
    return [DETECTORS[i] for i in sorted(chosen)]


def _aws_candidate(text: str) -> bool:
    """Whether ``text`` has a run of 40 base64 characters with a capital (an AWS secret key could be there).
    A character beyond ASCII ends a run, as it ends the pattern's."""
    if len(text) < 40 or ("/" not in text and "+" not in text) or text.islower():
        return False
    runs = text.encode("ascii", "replace").translate(_AWS_SPLIT).split()
    return max(map(len, runs), default=0) >= 40


def redact_text(text: str, literals: Iterable[str] = ()) -> str:
    """Replace secrets in free text: known literal values first, then each detector
    whose keywords are present (most text has none, and costs the gate's two passes)."""
    for literal in literals:
        if literal in text:
            text = text.replace(literal, REDACTED)
    if clean((text,)):
        return text
    return redact_with(detectors_for(text), text)


def redact_with(detectors: Iterable[Detector], text: str) -> str:
    """``text`` through ``detectors`` (the gate's choice), then the bare AWS secret key shape."""
    for detector in detectors:
        text = detector.sub(text)
    if _aws_candidate(text):
        text = _compiled(_AWS_BARE).sub(_aws_secret, text)
    return text


def redact_and_cut(text: str, limit: int, literals: Iterable[str] = ()) -> str:
    """``text`` redacted whole, then cut to ``limit`` characters (an ellipsis marks the cut):
    a secret that crosses the cut point leaves none of its characters."""
    text = redact_text(text, literals)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- argv ------------------------------------------------------------------------------

def _hidden_value(program: str, before: str, flag: str, value: str) -> Optional[str]:
    """The redacted form of ``value`` (given ``program`` and the two arguments before it), or None."""
    if (flag.startswith("-") and _may_hold(flag, _NAME_KEYWORDS) and _compiled(_SECRET_FLAG).match(flag)
            and _secret_name(flag.lstrip("-")) and not value.startswith("-")):
        return REDACTED
    if (before in _SETTERS and _may_hold(flag, _NAME_KEYWORDS)
            and _compiled("(?i)" + _SECRET_NAME).fullmatch(flag) and _secret_name(flag)):
        return REDACTED  # aws configure set aws_secret_access_key VALUE
    if program in _USER_PASSWORD_TOOLS and flag in ("-u", "--user", "--proxy-user") and ":" in value:
        return value.split(":", 1)[0] + ":" + REDACTED
    if program in _P_PASSWORD_TOOLS:
        if flag == "-p" and not value.isdigit() and not value.startswith("-"):
            return REDACTED
        if value.startswith("-p") and len(value) > 2 and not value.startswith("--"):
            return "-p" + REDACTED  # mysql -pPASS
    if _FLAG_PASSWORD_TOOLS.get(program) == flag:
        return REDACTED
    return None


def redact_argv(argv: list, literals: Iterable[str] = (),
                redact: Optional[Callable[[str], str]] = None) -> list[str]:
    """Redact an argv: each argument as text (``redact``, by default :func:`redact_text`
    with ``literals``), and what follows a secret-bearing flag."""
    literals = tuple(literals)
    if redact is None:
        def redact(text: str) -> str:
            return redact_text(text, literals)

    out: list[str] = []
    before = previous = program = ""
    for index, arg in enumerate(argv):
        text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
        if index == 0:
            program = text.rsplit("/", 1)[-1]
        hidden = _hidden_value(program, before, previous, text) if index else None
        out.append(hidden if hidden is not None else redact(text))
        before, previous = previous, text
    return out
