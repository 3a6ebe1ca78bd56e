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
from typing import Callable, Iterable

from .schema import Event, KernelContext
from .secrets import REDACTED, redact_argv, redact_text, secret_env_name
from .streams import new_stream_id

__all__ = ["AddContext", "Processor", "Redact", "Sequence", "TruncateCode", "redact_argv", "redact_text"]

#: A processor: ``event -> event`` (may mutate and return the same dict).
Processor = Callable[[Event], Event]

#: environment variables whose *values* are secrets wherever they appear
SECRET_ENV_PREFIXES = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_OAUTH", "JUPYTER_TOKEN")


def _secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (``*_TOKEN``, ``*_API_KEY``,
    ``*_PAT``, passwords ...), longest first."""
    env = os.environ if environ is None else environ
    values = {value for name, value in env.items()
              if len(value) >= 8 and (name.startswith(SECRET_ENV_PREFIXES) or secret_env_name(name))}
    return sorted(values, key=len, reverse=True)


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
        if ctx.author:
            guard.setdefault("recorded_by", ctx.author)
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

    _TEXT_FIELDS = (("process", "command_line"), ("process", "executable"), ("kernel_guard", "code"),
                    ("kernel_guard", "target"), ("kernel_guard", "notebook"), ("kernel_guard", "value"),
                    ("event", "reason"), ("file", "path"))

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


class TruncateCode:
    """Cut a cell's code to its limit *after* redaction (a token crossing the cut
    would otherwise leave its first part): ``kernel_guard.code_limit`` says where."""

    deferred = True

    def __call__(self, event: Event) -> Event:
        guard = event.get("kernel_guard")
        if isinstance(guard, dict) and "code_limit" in guard:
            limit = guard.pop("code_limit")
            code = guard.get("code")
            if isinstance(code, str) and isinstance(limit, int):
                guard["code"] = code[:limit]
            expressions = guard.get("user_expressions")
            if isinstance(expressions, dict) and isinstance(limit, int):
                guard["user_expressions"] = {k: str(v)[:limit] for k, v in expressions.items()}
        return event


class Sequence:
    """Number events of this process's stream: ``event.sequence`` 1, 2, 3 ...,
    and name the stream (``kernel_guard.stream``, see :mod:`.streams`).

    Numbered as they are queued (so an event lost after that leaves a gap);
    an event built later on the writer thread holds a number reserved when
    its place in the queue was taken.
    """

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self.stream = new_stream_id()
        self.parent: str | None = None

    def reset(self) -> None:
        """Start again (a forked child is its own stream of events)."""
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self.parent, self.stream = self.stream, new_stream_id()

    def reserve(self) -> int:
        """The next number, for an event that will be built later."""
        with self._lock:
            return next(self._counter)

    def __call__(self, event: Event) -> Event:
        if "sequence" not in event["event"]:  # a reserved number is kept
            event["event"]["sequence"] = self.reserve()
        event.setdefault("kernel_guard", {}).setdefault("stream", self.stream)
        return event
