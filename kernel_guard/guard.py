"""Putting the layers together in a running shell (the extension's entry point)."""

from __future__ import annotations

from typing import Any

from . import runtime
from .audit import hook as audit
from .audit import probes
from .events.schema import make_event
from .ipython import cells, magics, shell

__all__ = ["guard_shell"]


def guard_shell(ip: Any) -> runtime.Runtime:
    """Start the runtime, the audit hook, the IPython layer and cell events.

    Order matters: the runtime (and its sinks) first, so every later step can
    record; the audit hook before the IPython layer, so routes the IPython
    layer misses are already covered; events last, so the guard's own
    set-up is not recorded as a cell.
    """
    rt = runtime.start(config=getattr(ip, "config", None), kernel_id=runtime.kernel_id_from_app())
    guard = rt.guard
    newly_hooked = audit.install(
        guard.mode,
        extra_persistence=guard.extra_persistence_paths,
        extra_env=guard.extra_protected_env,
    )
    rt.layers["audit"] = audit.installed_mode() or "off"
    probes.install_fixups()  # what everyday libraries would ask a program, answered without one
    first = shell.install(ip)
    magics.register(ip)  # %guard_status
    cells.install(ip)
    if first:
        cells.started()
        runtime.emit(make_event(
            "guard-loaded", outcome="success", layer="ipython",
            reason="kernel_guard extension loaded", layers=dict(rt.layers),
            audit_hook_added=newly_hooked, **runtime.status_fields(),
        ))
    return rt
