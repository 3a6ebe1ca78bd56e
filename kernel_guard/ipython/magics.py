"""``%guard_status``: the IPython layer's view of :mod:`kernel_guard.status`.

The refusing magics that replace IPython's shell magics live in
:mod:`kernel_guard.ipython.shell`; this module adds the guard's own.
"""

from __future__ import annotations

from typing import Any, Optional

from ..status import StatusReport, collect

__all__ = ["register"]


def register(ip: Any) -> None:
    """Register ``%guard_status [--json]`` on a shell."""

    def guard_status(line: str = "") -> Optional[dict]:
        """Which kernel_guard layers are active in this kernel, read from the system.

        Shows a table (HTML in the notebook, aligned text elsewhere); ``--json``
        returns the report as data instead.
        """
        from IPython.display import display

        report = collect()
        if "--json" in line.split():
            return report
        # displayed rather than returned: the table shows wherever the magic stands in the cell
        display(StatusReport(report))
        return None

    ip.magics_manager.register_function(guard_status, "line", "guard_status")
