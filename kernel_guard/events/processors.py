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
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Callable, Iterable

from .schema import Event, KernelContext, Shared
from .secrets import (NATIVE_GATE, REDACTED, clean, detectors_for, native_gate, redact_argv, redact_text, redact_with,
                      secret_env_name)
from .secrets import _aws_candidate, _compiled
from .secrets import redact_and_cut as _secrets_cut
from .streams import new_stream_id

__all__ = ["AddContext", "Processor", "Redact", "Sequence", "TruncateCode", "redact_and_cut", "redact_argv",
           "redact_text", "set_process_redactor"]

#: A processor: ``event -> event`` (may mutate and return the same dict).
if TYPE_CHECKING:
    Processor = Callable[[Event], Event]
else:
    Processor = object  # named at run time by the modules that import it

#: environment variables whose *values* are secrets wherever they appear
SECRET_ENV_PREFIXES = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_OAUTH", "JUPYTER_TOKEN")


def _secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (``*_TOKEN``, ``*_API_KEY``,
    ``*_PAT``, passwords ...), longest first."""
    env = os.environ if environ is None else environ
    values = {value for name, value in env.items()
              if len(value) >= 8 and (name.startswith(SECRET_ENV_PREFIXES) or secret_env_name(name))}
    return sorted(values, key=len, reverse=True)


#: this process's pid: os.getpid() is a system call (0.6 us) and every event names it
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _context_base() -> type:
    """The native base of :class:`AddContext` (:mod:`._context`), whose call it makes
    (0.7-1.3 us an event in Python, measured), or ``object`` where it is not built."""
    try:
        from ._context import ContextStamp
    except ImportError:
        return object
    return ContextStamp


_ContextBase = _context_base()


class AddContext(_ContextBase):  # type: ignore[misc, valid-type]
    """Add user, host, kernel and mode from a :class:`KernelContext`.

    Called natively where :mod:`._context` is built: the same fields, in the same order,
    as :meth:`_add`, which takes any event of another shape."""

    def __init__(self, context: KernelContext) -> None:
        if _ContextBase is not object:
            super().__init__(_pid)
        self.context = context  # natively: the base's slot, which each call reads
        self._parts: dict[str, Shared] = {}  # user, host: made again when the context's value changes

    def _shared(self, part: str, field: str, value: object) -> Shared:
        """The object every event shares as ``part`` (``{field: value}``)."""
        shared = self._parts.get(part)
        if shared is None or shared[field] != value:
            shared = self._parts[part] = Shared({field: value})
        return shared

    def _add(self, event: Event) -> Event:
        ctx = self.context
        if "user" not in event:
            event["user"] = self._shared("user", "name", ctx.user)
        if "host" not in event:
            event["host"] = self._shared("host", "hostname", ctx.hostname)
        proc = event.get("process")
        if proc is None:  # not setdefault: its default would be a dict made for every event
            proc = event["process"] = {}
        if "pid" not in proc:
            proc["pid"] = _pid[0]
        guard = event.get("kernel_guard")
        if guard is None:
            guard = event["kernel_guard"] = {}
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

    if _ContextBase is object:
        __call__ = _add


class Redact:
    """Remove secrets from every field that can hold text from the user.

    Only those fields: the event's own structure (``event.id``, ``@timestamp``,
    ``event.sequence``, the chain's hashes, ids and counts) is never touched.
    The gate (:func:`.secrets.detectors_for`) runs once over all of an event's
    user text; an event without a candidate costs that one pass.
    """

    deferred = True  # on the writer thread: every event passes through it before any sink

    #: (object, field) pairs whose string values are user text
    TEXT_FIELDS = (("event", "reason"), ("process", "command_line"), ("process", "executable"),
                   ("process", "name"), ("process", "title"), ("process", "working_directory"),
                   ("file", "path"), ("file", "target_path"), ("file", "name"),
                   ("kernel_guard", "code"), ("kernel_guard", "target"), ("kernel_guard", "notebook"),
                   ("kernel_guard", "value"), ("kernel_guard", "prompt"), ("kernel_guard", "target_name"),
                   ("kernel_guard", "error_name"), ("kernel_guard", "error"), ("kernel_guard", "output"),
                   ("kernel_guard", "stderr"), ("kernel_guard", "path"), ("kernel_guard", "setting"))
    #: (object, field) pairs whose values are lists or dicts of user text
    TEXT_COLLECTIONS = (("process", "args"), ("kernel_guard", "user_expressions"), ("kernel_guard", "files"))

    def __init__(self, extra_patterns: Iterable[str] = (), environ: dict[str, str] | None = None) -> None:
        self.literals = _secret_env_values(environ)
        self.extra = [_compiled(p) for p in extra_patterns]  # re only for some (docs/launcher.md, "Memory")
        self._gate = native_gate(self.literals)

    def text(self, text: str) -> str:
        """One text redacted as an event's field would be (literals, catalogue, operators' patterns)."""
        text = redact_text(text, self.literals)
        for pattern in self.extra:
            text = pattern.sub(REDACTED, text)
        return text

    def cut(self, text: str, limit: int) -> str:
        """``text`` redacted whole, then cut to ``limit`` characters (never the other way round)."""
        text = self.text(text)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def __call__(self, event: Event) -> Event:
        if self._gate is not None and not self.extra and self._gate.clean_fields(event, _PAIRS):
            return event  # most events: the native scan's one pass over the fields, literals too
        texts = _user_texts(event)
        if not texts or (clean(texts) and not self._literal_or_extra(texts)):
            return event
        joined = "\n".join(texts)
        detectors = detectors_for(joined)
        literal = any(literal in joined for literal in self.literals)
        extra = [p for p in self.extra if p.search(joined)]
        if not (detectors or literal or extra or _aws_candidate(joined)):
            return event
        self._redact(event, detectors, extra)
        return event

    def _literal_or_extra(self, texts: list[str]) -> bool:
        """Whether a secret value from the environment or an operator's pattern is in ``texts``."""
        if not (self.literals or self.extra):
            return False
        joined = "\n".join(texts)  # neither a literal nor a pattern of one line spans the joint
        return any(literal in joined for literal in self.literals) or any(p.search(t) for p in self.extra
                                                                             for t in texts)

    def _redact(self, event: Event, detectors: list, extra: list) -> None:
        """Redact each user-text field with the detectors the gate chose for the event."""
        literals = self.literals
        gate = NATIVE_GATE

        def one(text: str) -> str:
            for literal in literals:
                if literal in text:
                    text = text.replace(literal, REDACTED)
            if gate is None:
                text = redact_with(detectors, text)
            elif not gate.clean((text,)):  # each field its own detectors: most fields of the event hold none
                text = redact_with(detectors_for(text), text)
            for pattern in extra:
                text = pattern.sub(REDACTED, text)
            return text

        for outer, inner in self.TEXT_FIELDS:
            node = event.get(outer)
            if isinstance(node, dict) and isinstance(node.get(inner), str):
                node[inner] = one(node[inner])
        proc = event.get("process")
        if isinstance(proc, dict) and isinstance(proc.get("args"), list):
            proc["args"] = redact_argv(proc["args"], redact=one)
        guard = event.get("kernel_guard")
        if isinstance(guard, dict):
            if isinstance(guard.get("user_expressions"), dict):
                guard["user_expressions"] = {k: one(str(v)) for k, v in guard["user_expressions"].items()}
            if isinstance(guard.get("files"), list):
                guard["files"] = [one(str(v)) for v in guard["files"]]


#: object -> its user-text fields (strings, lists or dicts of strings)
_FIELDS_BY_OBJECT: dict[str, frozenset[str]] = {}
for _outer, _inner in Redact.TEXT_FIELDS + Redact.TEXT_COLLECTIONS:
    _FIELDS_BY_OBJECT[_outer] = _FIELDS_BY_OBJECT.get(_outer, frozenset()) | {_inner}


_OBJECTS = tuple(_FIELDS_BY_OBJECT.items())
_PAIRS = Redact.TEXT_FIELDS + Redact.TEXT_COLLECTIONS


def _user_texts(event: Event) -> list[str]:
    """The event's user-text values, for one gate pass over all of them."""
    texts: list[str] = []
    for outer, names in _OBJECTS:
        node = event.get(outer)
        if not node.__class__ is dict:
            continue
        for inner, value in node.items():  # an object has a few fields: fewer tests than the names
            if inner not in names:
                continue
            if value.__class__ is str:
                texts.append(value)
            elif isinstance(value, list):
                texts.extend(v if isinstance(v, str) else str(v) for v in value)
            elif isinstance(value, dict):
                texts.extend(str(v) for v in value.values())
    return texts


#: the process's redactor (set by the runtime): what text cut before it is queued goes through
_process_redactor: "Redact | None" = None


def set_process_redactor(redactor: "Redact | None") -> None:
    """Make ``redactor`` the one :func:`redact_and_cut` uses (the runtime's, with its settings)."""
    global _process_redactor
    _process_redactor = redactor


def redact_and_cut(text: str, limit: int) -> str:
    """Redact ``text`` whole (with the process's literals and operators' patterns), then cut it.

    For every place that shortens user text before it is queued (a refusal's
    reason quotes the command): cutting first would let the part of a secret
    before the cut through, where no pattern can recognise it any more.
    """
    redactor = _process_redactor
    if redactor is not None:
        return redactor.cut(text, limit)
    return _secrets_cut(text, limit)


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
        # no lock: a count's next() is one step the interpreter's lock keeps whole (the
        # lock's acquire and release were a fifth of this processor's cost)
        self._counter = itertools.count(1)
        self.stream = new_stream_id()
        self.parent: str | None = None

    def reset(self) -> None:
        """Start again (a forked child is its own stream of events)."""
        self._counter = itertools.count(1)
        self.parent, self.stream = self.stream, new_stream_id()

    def reserve(self) -> int:
        """The next number, for an event that will be built later."""
        return next(self._counter)

    def __call__(self, event: Event) -> Event:
        ev = event["event"]
        if "sequence" not in ev:  # a reserved number is kept
            if type(ev) is not dict:  # checked first: a number taken for a part that cannot hold it is a gap
                raise TypeError(f"the event part is a {type(ev).__name__}, not a dict")
            ev["sequence"] = next(self._counter)
        guard = event.get("kernel_guard")
        if guard is None:
            guard = event["kernel_guard"] = {}
        if "stream" not in guard:
            guard["stream"] = self.stream
        return event
