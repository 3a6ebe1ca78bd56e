"""How the audit layer records and refuses: one event per decision, never raising into
the audited call except with the refusal itself.

:func:`_refuse_or_record` is the one place a decision becomes an event and, in
enforce mode, a :class:`~kernel_guard.exceptions.Refused` subclass raised into
the audited call.  While the launcher sets a kernel up, the programs it starts
are collected into one ``launcher-setup`` event (:func:`launcher_setup`).
``_State`` holds what affects recording only, never a decision.
See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator

from .. import notice
from ..events import pipeline
from ..events.schema import make_event
from ..exceptions import Refused

__all__ = ["launcher_setup"]


class _State:
    """Mutable bookkeeping that affects only *recording*, never a decision."""

    installed: dict[str, Callable[..., Any]] = {}  # mode -> hook
    kind: str | None = None  # "native" or "python": how the hooks were added
    quiet_record_hook = False  # set once an enforce hook records instead
    adding_own_hook = False
    seen_libraries: set = set()
    local = threading.local()
    # the programs the launcher runs to set the kernel up (None outside that stretch)
    setup_programs: list[dict[str, Any]] | None = None


#: every this many audit-layer records, the recording thread gives the interpreter up
#: for _HAND_OFF_S (see _hand_off)
_HAND_OFF_EVERY = 16
_HAND_OFF_S = 0.0001
_records = 0


def _record(action: str, outcome: str, reason: str, technique: str, **fields: Any) -> None:
    """Emit an event for the audit layer, never raising into the audited call."""
    try:
        pipeline.emit(make_event(action, outcome=outcome, layer="audit", reason=reason,
                                 technique=technique, **fields))
    except Exception:
        pass
    _hand_off()


def _hand_off() -> None:
    """Let other threads run while one thread loops over refused calls.

    CPython's GIL asks a running thread to let go only after a waiting thread
    has waited 5 ms with no switch at all; a path that releases the GIL briefly
    (the stat of the refused program, a block of random bytes) restarts that
    wait each time while the waiting thread rarely wins the race to take it.
    A thread looping over refused calls thus kept the kernel's own threads
    waiting 0.1-0.3 s per hand-over: cells took 1-2.5 s (measured on Python
    3.11).  A sleep long enough for a waiting thread to wake hands it over; the
    cost, 0.1 ms every 16th record, is far below a refusal's own.
    """
    global _records
    _records += 1
    if _records % _HAND_OFF_EVERY == 0:
        time.sleep(_HAND_OFF_S)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _argv(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    return [_text(value)] if value is not None else []


def _short(text: str, limit: int = 60) -> str:
    """``text`` for a refusal's reason: redacted first, then cut, so that no part of a
    secret that straddles the cut reaches the record."""
    from ..events.processors import redact_and_cut

    return redact_and_cut(text, limit)


def _refuse_or_record(enforce: bool, exc: type[Refused], denied: str, allowed: str, technique: str,
                      what: str, process: dict | None = None, hint: str | None = None, **fields: Any) -> None:
    """Raise ``exc`` after recording (enforce), or only record (audit)."""
    if enforce:
        _record(denied, "failure", f"refused {what}", technique, process=process, **fields)
        raise exc(what, hint=hint, layer="audit")
    if _State.setup_programs is not None and allowed in ("exec-attempt", "persistence-write"):
        # IPython's profile skeleton in the launcher's private folder is its own work too
        file = fields.get("file")
        _collect_setup(process or ({"technique": technique, "file": file} if file else
                                   {"technique": technique, "what": what}))
        return
    if not _State.quiet_record_hook:
        _record(allowed, "unknown", f"recorded, not refused (audit mode, or kernel start-up): {what}", technique,
                process=process, **fields)
        notice.would_refuse(what)


def _collect_setup(entry: dict[str, Any]) -> None:
    """The launcher's own set-up (ldconfig, uname, its supervisor, libseccomp's
    syscall() lookup, the profile it creates in its private IPython folder), before
    any notebook code: one launcher-setup event names them, not an exec-attempt or
    a persistence-write each."""
    if _State.setup_programs is not None and entry not in _State.setup_programs:
        _State.setup_programs.append(entry)


@contextlib.contextmanager
def launcher_setup() -> Iterator[list[dict[str, Any]]]:
    """While the launcher sets a kernel up, collect the programs it starts, its
    exec-capable ctypes lookups and its writes to start-up paths instead of recording
    each as ``exec-attempt`` or ``persistence-write``; yields the list (ECS process
    fields, technique and file, or technique and what, each once).

    Only the record-only start-up hook collects: an enforcing hook still refuses,
    so nothing that runs in this stretch is let through that would not be otherwise.
    """
    _State.setup_programs = programs = []
    try:
        yield programs
    finally:
        _State.setup_programs = None
