"""Execution events: one ``cell-executed`` per execute request, and the kernel's life.

In a kernel we wrap ``kernel.do_execute`` rather than listen to
``pre/post_run_cell``: those do not fire for ``silent`` requests, and
``user_expressions`` are evaluated outside ``run_cell``.  In a terminal
IPython (no kernel) the shell's events are all there is, and we use them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import time
from typing import Any

from .. import notice, runtime
from ..events.schema import timestamp as _events_now
from ..events.schema import make_event
from .code_record import code_fields

__all__ = ["code_fields", "install"]


def _cell_event(code: str, *, silent: bool, reply: Any, duration: float, cell_id: str | None,
                session: str | None, user_expressions: dict | None, timestamp: str | None = None) -> dict:
    rt = runtime.current()
    assert rt is not None
    status = reply.get("status", "unknown") if isinstance(reply, dict) else "unknown"
    fields: dict[str, Any] = {
        # always present: an event that names its execution count names its cell,
        # so the context (perhaps a later cell's, when this is built) adds neither
        "execution_count": reply.get("execution_count") if isinstance(reply, dict) else None,
        "silent": silent,
        "duration_ms": round(duration * 1000, 3),
        "status": status,
        **code_fields(code, rt.guard.code_policy, rt.guard.code_max_chars),
    }
    if cell_id:
        fields["cell_id"] = cell_id
    if session:
        fields["session"] = session
    if user_expressions:
        fields["user_expressions"] = {k: str(v) for k, v in user_expressions.items()}
        # each cut to code_max_chars like cell code, so each keeps its whole hash too
        fields["user_expressions_sha256"] = {k: hashlib.sha256(str(v).encode("utf-8", "replace")).hexdigest()
                                             for k, v in user_expressions.items()}
        fields.setdefault("code_limit", rt.guard.code_max_chars)  # cut after redaction
    if status == "error":
        fields["error_name"] = reply.get("ename")
    event = make_event("cell-executed", outcome="success" if status == "ok" else "failure",
                       layer="ipython", **fields)
    event["event"]["duration"] = int(duration * 1e9)  # ECS: nanoseconds
    if timestamp:
        event["@timestamp"] = timestamp  # when the cell ended, not when it was recorded
    return event


def _context() -> Any:
    rt = runtime.current()
    return rt.context if rt is not None else None


def _wrap_do_execute(kernel: Any) -> None:
    """Record every execute request, silent ones and user_expressions included."""
    original = kernel.do_execute
    if getattr(original, "_kernel_guard", False):
        return

    @functools.wraps(original)
    async def do_execute(code: str, silent: bool, store_history: bool = True,
                         user_expressions: dict | None = None, allow_stdin: bool = False,
                         **kwargs: Any) -> Any:
        started = time.perf_counter()
        reply: Any = {"status": "error", "ename": "KernelGuardInternal"}
        cell_meta = kwargs.get("cell_meta") or {}
        context = _context()
        if context is not None:
            # events raised while the cell runs name it (and aggregate per cell)
            shell = getattr(kernel, "shell", None)
            context.execution_count = None if silent else getattr(shell, "execution_count", None)
            context.cell_id = kwargs.get("cell_id") or cell_meta.get("cellId")
        notice.cell_started()
        try:
            reply = original(code, silent, store_history, user_expressions, allow_stdin, **kwargs)
            if inspect.isawaitable(reply):
                reply = await reply
            return reply
        finally:
            notice.show_library_hint(isinstance(reply, dict) and reply.get("status") == "error")
            notice.cell_ended()
            if context is not None:
                context.execution_count = context.cell_id = None
            parent = kernel.get_parent("shell") if hasattr(kernel, "get_parent") else {}
            # built on the writer thread: the reply does not wait for it
            runtime.emit_later(functools.partial(
                _cell_event, code, silent=silent, reply=reply, duration=time.perf_counter() - started,
                cell_id=kwargs.get("cell_id") or cell_meta.get("cellId"),
                session=(parent or {}).get("header", {}).get("session"),
                user_expressions=user_expressions, timestamp=_events_now()))

    do_execute._kernel_guard = True  # type: ignore[attr-defined]
    kernel.do_execute = do_execute


def _wrap_do_shutdown(kernel: Any) -> None:
    """Record ``kernel-stopped`` and flush before the kernel goes away."""
    original = kernel.do_shutdown
    if getattr(original, "_kernel_guard", False):
        return

    @functools.wraps(original)
    def do_shutdown(restart: bool) -> Any:
        stopped()
        rt = runtime.current()
        if rt is not None:
            rt.pipeline.flush(timeout=2.0)
        return original(restart)

    do_shutdown._kernel_guard = True  # type: ignore[attr-defined]
    kernel.do_shutdown = do_shutdown


def started(**fields: Any) -> None:
    """Record ``kernel-started`` once per process."""
    rt = runtime.current()
    if rt is None or rt.kernel_started:
        return
    rt.kernel_started = True
    import sys

    runtime.emit(make_event("kernel-started", outcome="success", layer=fields.pop("layer", "ipython"),
                            python=sys.version.split()[0], **fields))


def stopped() -> None:
    """Record ``kernel-stopped`` once."""
    rt = runtime.current()
    if rt is None or getattr(rt, "kernel_stopped", False):
        return
    rt.kernel_stopped = True  # type: ignore[attr-defined]
    runtime.emit(make_event("kernel-stopped", outcome="success", layer="ipython"))


def _terminal_events(ip: Any) -> None:
    """Without a kernel, record cells from the shell's own events."""
    state: dict[str, Any] = {}

    def pre(info: Any) -> None:
        state["start"] = time.perf_counter()
        notice.cell_started()

    def post(result: Any) -> None:
        notice.cell_ended()
        info = result.info
        reply = {"status": "ok" if result.success else "error", "execution_count": result.execution_count,
                 "ename": type(result.error_in_exec or result.error_before_exec).__name__}
        runtime.emit(_cell_event(info.raw_cell or "", silent=bool(info.silent), reply=reply,
                                 duration=time.perf_counter() - state.get("start", time.perf_counter()),
                                 cell_id=getattr(info, "cell_id", None), session=None, user_expressions=None))

    ip.events.register("pre_run_cell", pre)
    ip.events.register("post_run_cell", post)


def install(ip: Any) -> None:
    """Start recording executions on this shell (once)."""
    kernel = getattr(ip, "kernel", None)
    if kernel is not None:
        from . import requests

        _wrap_do_execute(kernel)
        _wrap_do_shutdown(kernel)
        requests.install(kernel)  # inspection, completion, comms, input replies
    elif not getattr(ip, "_kernel_guard_cells", False):
        _terminal_events(ip)
        ip._kernel_guard_cells = True
    import atexit

    atexit.register(stopped)
