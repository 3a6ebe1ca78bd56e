"""Requests that run code in the kernel outside a cell, each recorded with its code's hash.

An execute request is not the only way code reaches a kernel: the inspector
and the completer evaluate attribute look-ups (a ``__getattr__`` runs),
a widget's ``comm_open``/``comm_msg`` carries data its handler may run, and
the reply to ``input()`` is whatever the cell does with it (``exec(input())``).
Each leaves an event here — ``code-inspected``, ``code-completed``,
``comm-message``, ``input-received`` — with the code (or data) under the same
``code_policy`` as a cell and always its SHA-256.  A password typed at
``getpass`` is recorded by its length only.  These are records, not
refusals: the layers that refuse (the audit hook, seccomp, Landlock) hold for
code run this way as for a cell's.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Callable

from .. import runtime
from ..events.processors import redact_and_cut
from ..events.schema import make_event
from .code_record import code_fields

__all__ = ["install"]

_COMM_TYPES = ("comm_open", "comm_msg")


def _code_event(action: str, what: str, code: str, **fields: Any) -> dict:
    rt = runtime.current()
    assert rt is not None
    recorded = code_fields(code, rt.guard.code_policy, rt.guard.code_max_chars)
    # the hash in the reason keeps two different requests from being aggregated as one
    return make_event(action, outcome="success", layer="ipython", **recorded, **fields,
                      reason=f"{what} (code sha256 {recorded['code_sha256'][:12]})")


def _record(build: Callable[[], dict]) -> None:
    if runtime.current() is not None:
        runtime.emit_later(build)


def _wrap_method(kernel: Any, name: str, action: str, what: str) -> None:
    """Record ``kernel.<name>(code, cursor_pos, ...)`` (sync or async) before it runs."""
    original = getattr(kernel, name, None)
    if original is None or getattr(original, "_kernel_guard", False):
        return

    @functools.wraps(original)
    async def wrapper(code: str, cursor_pos: Any = None, *args: Any, **kwargs: Any) -> Any:
        _record(functools.partial(_code_event, action, what, code or "", cursor_pos=cursor_pos))
        reply = original(code, cursor_pos, *args, **kwargs)
        return await reply if inspect.isawaitable(reply) else reply

    wrapper._kernel_guard = True  # type: ignore[attr-defined]
    setattr(kernel, name, wrapper)


def _comm_event(msg: dict) -> dict:
    content = msg.get("content") or {}
    data = json.dumps(content.get("data"), sort_keys=True, default=repr)
    msg_type = (msg.get("header") or {}).get("msg_type", "comm")
    return _code_event("comm-message", f"{msg_type} for {content.get('target_name') or 'comm'}", data,
                       msg_type=msg_type, comm_id=content.get("comm_id"),
                       target_name=content.get("target_name"))


def _wrap_comm_handlers(kernel: Any) -> None:
    """Record comm_open and comm_msg (a widget's data) before the comm manager handles them."""
    handlers = getattr(kernel, "shell_handlers", None)
    if not isinstance(handlers, dict):
        return
    for msg_type in _COMM_TYPES:
        original = handlers.get(msg_type)
        if original is None or getattr(original, "_kernel_guard", False):
            continue

        def handler(stream: Any, ident: Any, msg: dict, _original: Any = original) -> Any:
            _record(functools.partial(_comm_event, msg))
            return _original(stream, ident, msg)

        handler._kernel_guard = True  # type: ignore[attr-defined]
        handlers[msg_type] = handler


def _wrap_input(kernel: Any) -> None:
    """Record what ``input()`` received (its hash); of a password, only its length."""
    original = getattr(kernel, "_input_request", None)
    if original is None or getattr(original, "_kernel_guard", False):
        return

    @functools.wraps(original)
    def _input_request(prompt: str, ident: Any, parent: Any, password: bool = False) -> str:
        value = original(prompt, ident, parent, password=password)
        if password:
            _record(lambda: make_event("input-received", outcome="success", layer="ipython", password=True,
                                       value_length=len(value), reason="a password was typed at getpass()"))
        else:
            _record(functools.partial(_code_event, "input-received", "a reply to input()", value,
                                      prompt=redact_and_cut(str(prompt), 200), password=False))
        return value

    _input_request._kernel_guard = True  # type: ignore[attr-defined]
    kernel._input_request = _input_request


def install(kernel: Any) -> None:
    """Record inspection, completion, comm messages and input replies of ``kernel`` (once each)."""
    _wrap_method(kernel, "do_inspect", "code-inspected", "an inspect request")
    _wrap_method(kernel, "do_complete", "code-completed", "a complete request")
    _wrap_comm_handlers(kernel)
    _wrap_input(kernel)
