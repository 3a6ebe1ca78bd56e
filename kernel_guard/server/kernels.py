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

It also leaves refused kernelspecs out of ``/api/kernelspecs`` and records,
from jupyter_server's own event bus, the kernel lifecycle (start, restart,
interrupt, shutdown, and shutdowns by the idle culler as ``kernel-culled``)
and, by policy, contents API actions, with the user, the kernel and the
notebook.
"""

from __future__ import annotations

import contextvars
import inspect
from typing import Any, Optional

from .guard import ServerGuard, maybe_await

__all__ = ["KernelHooks"]

KERNEL_ACTIONS_SCHEMA = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CONTENTS_SCHEMA = "https://events.jupyter.org/jupyter_server/contents_service/v1"

#: set while the idle culler shuts a kernel down, so the shutdown reads as "culled"
_CULLING: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("kernel_guard_culling", default=None)
#: the notebook path of a kernel being started (kernel_actions events carry none)
_STARTING: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("kernel_guard_starting", default=None)



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

        async def start_kernel(*args: Any, **kwargs: Any) -> str:
            kernel_id = kwargs.get("kernel_id")
            if kernel_id is not None and kernel_id in km:
                return await maybe_await(start(*args, **kwargs))  # an existing kernel: nothing starts
            name = kwargs.get("kernel_name") or (args[0] if args else None) or km.default_kernel_name
            env = kwargs.get("env") or {}
            notebook = guard.api_path(env.get("JPY_SESSION_NAME")) if isinstance(env, dict) else None
            guard.check(guard.assess_name(name), "start", notebook)
            token = _STARTING.set({"notebook": notebook, "kernel_name": name})
            try:
                new_id = await maybe_await(start(*args, **kwargs))
            finally:
                _STARTING.reset(token)
            if notebook:
                guard.notebooks[new_id] = notebook
            return new_id

        async def restart_kernel(kernel_id: str, *args: Any, **kwargs: Any) -> Any:
            try:
                manager = km.get_kernel(kernel_id)
            except KeyError:
                manager = None
            if manager is not None:
                guard.check(guard.assess(manager.kernel_name, manager.kernel_spec), "restart",
                            guard.notebook_of(kernel_id), kernel_id)
            return await maybe_await(restart(kernel_id, *args, **kwargs))

        async def cull_kernel_if_idle(kernel_id: str) -> Any:
            token = _CULLING.set(kernel_id)
            try:
                return await maybe_await(cull(kernel_id))
            finally:
                _CULLING.reset(token)

        km.start_kernel = start_kernel
        km.restart_kernel = restart_kernel
        km.cull_kernel_if_idle = cull_kernel_if_idle
        self._guard_factory()

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
    async def on_kernel_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """kernel_actions/v1 -> kernel-start, -restart, -interrupt, -shutdown, -culled."""
        action = data.get("action", "")
        kernel_id = data.get("kernel_id")
        starting = _STARTING.get() or {}
        if action == "shutdown" and _CULLING.get() == kernel_id:
            action = "culled"
        notebook = self.guard.notebook_of(kernel_id) or starting.get("notebook")
        ok = data.get("status") == "success"
        self.guard.emit(f"kernel-{action}", "success" if ok else "failure", data.get("msg") or action,
                        kernel_id=kernel_id,
                        kernel_name=data.get("kernel_name"), notebook=notebook,
                        status_code=data.get("status_code"))
        if action in ("shutdown", "culled") and ok and kernel_id:
            self.guard.notebooks.pop(kernel_id, None)

    async def on_contents_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """contents_service/v1 -> contents-<action> (when record_contents is on)."""
        self.guard.emit(f"contents-{data.get('action')}", "success", f"contents API {data.get('action')}",
                        category=["file"], types=["access"], file_path=data.get("path"),
                        source_path=data.get("source_path"))

    def listen(self) -> None:
        """Record the kernel lifecycle (and, by policy, contents actions) from jupyter_server's events."""
        logger = getattr(self.guard.app, "event_logger", None)
        if logger is None:
            return
        logger.add_listener(schema_id=KERNEL_ACTIONS_SCHEMA, listener=self.on_kernel_action)
        if self.guard.settings.record_contents:
            logger.add_listener(schema_id=CONTENTS_SCHEMA, listener=self.on_contents_action)
