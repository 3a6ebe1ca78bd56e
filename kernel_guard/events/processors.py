"""Processors: small callables that each take an event and return it.

The pipeline runs them in order: context first (on the emitting thread, which
is the one the context describes), aggregation (there too, so a flood is
counted before it reaches the queue), numbering (``event.sequence`` is per
kernel process, so a gap downstream shows a lost event), then redaction (so
no sink ever sees a secret).  Processors marked ``deferred`` run on the
writer thread, just before the event is written: redaction is most of an
event's cost, and the cell that raised the event should not wait for it.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from typing import Any, Callable, Iterable

from .schema import Event, KernelContext

__all__ = ["AddContext", "Processor", "Redact", "Sequence", "redact_text"]

#: A processor: ``event -> event`` (may mutate and return the same dict).
Processor = Callable[[Event], Event]

REDACTED = "[REDACTED]"

_SECRET_NAMES = r"(?:[A-Za-z0-9_.-]*(?:token|passw(?:or)?d|passwd|secret|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credential|auth)[A-Za-z0-9_.-]*)"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization: Bearer xyz / Authorization: Basic xyz (header values)
    (re.compile(r"(?i)\b(authorization|proxy-authorization)([\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic|token|digest)\s+)?[^\s'\"]+"),
     r"\1\2\3 " + REDACTED),
    # --password=xyz, token=xyz, API_KEY: xyz, "secret": "xyz"
    (re.compile(r"(?i)(\b" + _SECRET_NAMES + r"[\"']?\s*[=:]\s*[\"']?)((?:bearer|basic|token)\s+)?([^\s'\",;&]+)"),
     r"\1\2" + REDACTED),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)(@)"), r"\1" + REDACTED + r"\3"),
    # well-known token shapes: GitHub, Slack, AWS access keys, JWTs
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"),
     REDACTED),
]
_SECRET_FLAG = re.compile(r"(?i)^--?" + _SECRET_NAMES + "$")

#: environment variables whose *values* are secrets wherever they appear
SECRET_ENV_PREFIXES = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_OAUTH", "JUPYTER_TOKEN")


def _secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    env = os.environ if environ is None else environ
    values = {
        value for name, value in env.items()
        if len(value) >= 8 and (name.startswith(SECRET_ENV_PREFIXES) or re.search(r"(?i)token|secret|passw", name))
    }
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, literals: Iterable[str] = ()) -> str:
    """Replace secrets in free text: known literal values, then patterns."""
    for literal in literals:
        if literal in text:
            text = text.replace(literal, REDACTED)
    if not text.isascii():
        # case-insensitive matching folds more than str.lower() (the Kelvin sign,
        # the long s): non-ASCII text always meets every pattern
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text
    # Most texts (commands, paths, reasons) hold no secret: a pattern runs only
    # when the substrings it cannot match without are there (about 5x cheaper).
    (auth_header, auth_repl), (named, named_repl), (userinfo, userinfo_repl), (shapes, shapes_repl) = _PATTERNS
    if "=" in text or ":" in text:
        lowered = text.lower()
        if "auth" in lowered:
            text = auth_header.sub(auth_repl, text)
        if ("token" in lowered or "passw" in lowered or "secret" in lowered or "key" in lowered
                or "credential" in lowered or "auth" in lowered):
            text = named.sub(named_repl, text)
        if "@" in text and "://" in text:
            text = userinfo.sub(userinfo_repl, text)
    if "gh" in text or "xox" in text or "AKIA" in text or "eyJ" in text:
        text = shapes.sub(shapes_repl, text)
    return text


def redact_argv(argv: list[Any], literals: Iterable[str] = ()) -> list[Any]:
    """Redact an argv: each argument as text, and the value after ``--token``."""
    out: list[Any] = []
    hide_next = False
    for arg in argv:
        text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
        out.append(REDACTED if hide_next else redact_text(text, literals))
        hide_next = bool(_SECRET_FLAG.match(text))
    return out


class AddContext:
    """Add user, host, kernel and mode from a :class:`KernelContext`."""

    def __init__(self, context: KernelContext) -> None:
        self.context = context

    def __call__(self, event: Event) -> Event:
        ctx = self.context
        event.setdefault("user", {"name": ctx.user})
        event.setdefault("host", {"hostname": ctx.hostname})
        proc = event.setdefault("process", {})
        proc.setdefault("pid", os.getpid())
        guard = event.setdefault("kernel_guard", {})
        guard.setdefault("mode", ctx.mode)
        if ctx.kernel_id:
            guard.setdefault("kernel_id", ctx.kernel_id)
        if ctx.notebook:
            guard.setdefault("notebook", ctx.notebook)
        if "execution_count" not in guard:  # an event naming its cell (cell-executed) keeps it
            if ctx.execution_count is not None:
                guard["execution_count"] = ctx.execution_count
            if ctx.cell_id:
                guard.setdefault("cell_id", ctx.cell_id)
        return event


class Redact:
    """Remove secrets from commands, arguments, code and reasons."""

    deferred = True  # on the writer thread: every event passes through it before any sink

    _TEXT_FIELDS = (("process", "command_line"), ("kernel_guard", "code"),
                    ("kernel_guard", "target"), ("event", "reason"), ("file", "path"))

    def __init__(self, extra_patterns: Iterable[str] = (), environ: dict[str, str] | None = None) -> None:
        self.literals = _secret_env_values(environ)
        self.extra = [re.compile(p) for p in extra_patterns]

    def _text(self, text: str) -> str:
        text = redact_text(text, self.literals)
        for pattern in self.extra:
            text = pattern.sub(REDACTED, text)
        return text

    def __call__(self, event: Event) -> Event:
        for outer, inner in self._TEXT_FIELDS:
            node = event.get(outer)
            if isinstance(node, dict) and isinstance(node.get(inner), str):
                node[inner] = self._text(node[inner])
        proc = event.get("process")
        if isinstance(proc, dict) and isinstance(proc.get("args"), list):
            proc["args"] = [self._text(a) for a in redact_argv(proc["args"], self.literals)]
        guard = event.get("kernel_guard")
        if isinstance(guard, dict) and isinstance(guard.get("user_expressions"), dict):
            guard["user_expressions"] = {k: self._text(str(v)) for k, v in guard["user_expressions"].items()}
        return event


class Sequence:
    """Number events of this process: ``event.sequence`` 1, 2, 3 ...

    Numbered as they are queued (so an event lost after that leaves a gap);
    an event built later on the writer thread holds a number reserved when
    its place in the queue was taken.
    """

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Start again (a forked child is its own stream of events)."""
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def reserve(self) -> int:
        """The next number, for an event that will be built later."""
        with self._lock:
            return next(self._counter)

    def __call__(self, event: Event) -> Event:
        if "sequence" not in event["event"]:  # a reserved number is kept
            event["event"]["sequence"] = self.reserve()
        return event
