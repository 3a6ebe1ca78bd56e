"""Which layers are really active, for ``%guard_status`` and ``kernel-guard status``.

Every answer is read from the system at the moment of asking, never taken from
configuration (see docs/architecture.md for where each layer lives):

- :mod:`.layers` — this process's layers: seccomp from ``/proc/self/status``,
  the supervisor's liveness and answer, the audit hook installed, the sinks'
  health, the kernel's transport (:func:`collect`, what ``%guard_status`` shows);
- :mod:`.kernels` — this user's guarded kernels found in ``/proc``, each seen
  from outside (:func:`collect_kernels`, :func:`collect_pid`: ``kernel-guard status``);
- :mod:`.launch_notes` — what the launcher records of what it set up
  (:func:`record_launch`), and the note it leaves for a look from outside;
- :mod:`.report` — the verdict and the rows, as text or HTML.

A package of its own because three layers share it: the launcher records here,
the IPython layer's magic (:mod:`kernel_guard.ipython.magics`) and the command
(:mod:`kernel_guard.cli.status`) print its report.
"""

from __future__ import annotations

from .kernels import collect_kernels, collect_pid, find_kernels, format_kernels, kernel_route
from .launch_notes import note_supervisor_lost, record_launch
from .layers import collect
from .report import StatusReport, format_html, format_report, rows, verdict

__all__ = ["StatusReport", "collect", "collect_kernels", "collect_pid", "find_kernels", "format_html",
           "format_kernels", "format_report", "kernel_route", "note_supervisor_lost", "record_launch", "rows",
           "verdict"]
