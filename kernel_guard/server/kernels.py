"""The hooks into the kernel manager: every path to a kernel start is checked.

``KernelSpecManager.allowed_kernelspecs`` only filters *listings*: notebook code
holds the server's token and can ``POST /api/kernels {"name": "python3"}`` for
any installed kernelspec.  :class:`KernelHooks` refuses such starts where every
path into the kernel manager passes:

1. ``MappingKernelManager.start_kernel`` (``/api/kernels``, ``/api/sessions``,
   anything else in the server) checks the named kernelspec first and answers
   ``403`` with the names of the kernelspecs that may start;
2. every per-kernel ``KernelManager`` checks the spec it is about to launch in
   ``format_kernel_cmd``, the last step before ``Popen``: this covers restarts
   (also the automatic restart of a dead kernel) and closes the window between
   the check in 1. and the launch.

It also leaves refused kernelspecs out of ``/api/kernelspecs`` and records
the kernel lifecycle (start, restart, interrupt, shutdown, and shutdowns by
the idle culler as ``kernel-culled``) from the kernel manager's own calls, with
the user, the kernel and the notebook.  Not from jupyter_server's event bus:
any holder of the server's token can ``POST /api/events``, so a record built
from it could be forged (the routes refuse posts of the server's own schemas,
:mod:`.routes`).  Contents API actions, by policy, still come from the bus.
"""

from __future__ import annotations

import contextvars
import inspect
from typing import Any, Optional

from .guard import ServerGuard, maybe_await

__all__ = ["KernelHooks"]

CONTENTS_SCHEMA = "https://events.jupyter.org/jupyter_server/contents_service/v1"

#: set while the idle culler shuts a kernel down, so the shutdown reads as "culled"
_CULLING: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("kernel_guard_culling", default=None)



class KernelHooks:
    """Wrappers on the kernel and kernelspec managers, and listeners on their events."""

    def __init__(self, guard: ServerGuard) -> None:
        self.guard = guard

    # the kernel manager ---------------------------------------------------------------
    def guard_kernel_manager(self) -> None:
        """Wrap start, restart and culling of the MappingKernelManager instance."""
        guard = self.guard
        km = guard.km
        start, restart, cull = km.start_kernel, km.restart_kernel, km.cull_kernel_if_idle
        record = self._recorded

        async def start_kernel(*args: Any, **kwargs: Any) -> str:
            kernel_id = kwargs.get("kernel_id")
            if kernel_id is not None and kernel_id in km:
                return await maybe_await(start(*args, **kwargs))  # an existing kernel: nothing starts
            name = kwargs.get("kernel_name") or (args[0] if args else None) or km.default_kernel_name
            env = kwargs.get("env") or {}
            notebook = guard.api_path(env.get("JPY_SESSION_NAME")) if isinstance(env, dict) else None
            guard.check(guard.assess_name(name), "start", notebook)
            try:
                new_id = await maybe_await(start(*args, **kwargs))
            except Exception as exc:
                self._record("start", None, False, f"start of {name} failed: {exc}", name, notebook)
                raise
            if notebook:
                guard.notebooks[new_id] = notebook
            self._record("start", new_id, True, f"kernel {name} started", name, notebook)
            return new_id

        async def restart_kernel(kernel_id: str, *args: Any, **kwargs: Any) -> Any:
            try:
                manager = km.get_kernel(kernel_id)
            except KeyError:
                manager = None
            if manager is not None:
                guard.check(guard.assess(manager.kernel_name, manager.kernel_spec), "restart",
                            guard.notebook_of(kernel_id), kernel_id)
            return await record("restart", kernel_id, lambda: restart(kernel_id, *args, **kwargs))

        async def cull_kernel_if_idle(kernel_id: str) -> Any:
            token = _CULLING.set(kernel_id)
            try:
                return await maybe_await(cull(kernel_id))
            finally:
                _CULLING.reset(token)

        km.start_kernel = start_kernel
        km.restart_kernel = restart_kernel
        km.cull_kernel_if_idle = cull_kernel_if_idle
        self._record_stops()
        self._guard_factory()

    def _record_stops(self) -> None:
        """Interrupts and shutdowns, the public calls and the one ``shutdown_all`` makes."""
        km = self.guard.km
        interrupt = km.interrupt_kernel
        record = self._recorded

        async def interrupt_kernel(kernel_id: str) -> Any:
            return await record("interrupt", kernel_id, lambda: interrupt(kernel_id))

        def stopping(original: Any) -> Any:
            async def shutdown_kernel(kernel_id: str, *args: Any, **kwargs: Any) -> Any:
                action = "culled" if _CULLING.get() == kernel_id else "shutdown"
                notebook = self.guard.notebook_of(kernel_id)
                result = await record(action, kernel_id, lambda: original(kernel_id, *args, **kwargs),
                                      notebook=notebook)
                self.guard.notebooks.pop(kernel_id, None)
                return result
            return shutdown_kernel

        km.interrupt_kernel = interrupt_kernel
        km.shutdown_kernel = stopping(km.shutdown_kernel)
        if hasattr(km, "_async_shutdown_kernel"):
            km._async_shutdown_kernel = stopping(km._async_shutdown_kernel)

    async def _recorded(self, action: str, kernel_id: str, call: Any, notebook: Optional[str] = None) -> Any:
        """Run one kernel manager call and record its outcome (re-raising its failure)."""
        try:
            name = self.guard.km.get_kernel(kernel_id).kernel_name
        except Exception:
            name = None
        try:
            result = await maybe_await(call())
        except Exception as exc:
            self._record(action, kernel_id, False, f"{action} of kernel {kernel_id} failed: {exc}", name, notebook)
            raise
        self._record(action, kernel_id, True, f"kernel {kernel_id}: {action}", name, notebook)
        return result

    def _record(self, action: str, kernel_id: Optional[str], ok: bool, reason: str,
                kernel_name: Optional[str] = None, notebook: Optional[str] = None) -> None:
        self.guard.emit(f"kernel-{action}", "success" if ok else "failure", reason, kernel_id=kernel_id,
                        kernel_name=kernel_name, recorded_from="kernel manager",
                        notebook=notebook or (self.guard.notebook_of(kernel_id) if kernel_id else None))

    def _guard_factory(self) -> None:
        """Every per-kernel manager checks the spec it launches, at every (re)start."""
        guard = self.guard
        km = guard.km
        factory = km.kernel_manager_factory

        def kernel_manager_factory(*args: Any, **kwargs: Any) -> Any:
            manager = factory(*args, **kwargs)
            format_cmd = manager.format_kernel_cmd

            def format_kernel_cmd(extra_arguments: Optional[list[str]] = None) -> list[str]:
                # the spec object checked here is the one whose argv is launched
                guard.check(guard.assess(manager.kernel_name, manager.kernel_spec), "launch",
                            guard.notebook_of(manager.kernel_id), manager.kernel_id)
                return format_cmd(extra_arguments=extra_arguments)

            manager.format_kernel_cmd = format_kernel_cmd
            return manager

        km.kernel_manager_factory = kernel_manager_factory

    # the kernelspec listing ------------------------------------------------------------
    def guard_kernelspec_listing(self) -> None:
        """Leave refused kernelspecs out of /api/kernelspecs."""
        guard = self.guard
        ksm = guard.ksm
        get_all = ksm.get_all_specs

        def keep(specs: dict) -> dict:
            allowed = set(guard.allowed_names())
            return {name: spec for name, spec in specs.items() if name.lower() in allowed}

        def get_all_specs() -> Any:
            specs = get_all()
            if inspect.isawaitable(specs):
                async def later() -> dict:
                    return keep(await specs)
                return later()
            return keep(specs)

        ksm.get_all_specs = get_all_specs

    # jupyter_server's events -----------------------------------------------------------
    async def on_contents_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """contents_service/v1 -> contents-<action> (when record_contents is on)."""
        self.guard.emit(f"contents-{data.get('action')}", "success", f"contents API {data.get('action')}",
                        category=["file"], types=["access"], file_path=data.get("path"),
                        source_path=data.get("source_path"))

    def listen(self) -> None:
        """By policy, record contents actions from jupyter_server's events."""
        logger = getattr(self.guard.app, "event_logger", None)
        if logger is None:
            return
        if self.guard.settings.record_contents:
            logger.add_listener(schema_id=CONTENTS_SCHEMA, listener=self.on_contents_action)
