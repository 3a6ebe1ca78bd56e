"""Audit mode's notice: one line on the cell's stderr when the policy would have refused.

In ``audit`` mode nothing is refused, so without this a notebook shows nothing
of what the policy records.  The IPython layer and the audit hook call
:func:`would_refuse` where enforce mode would raise; the first call in a cell
writes one line to ``sys.stderr`` (ipykernel's stream of that cell), later
ones are only recorded.  The ``do_execute`` wrapper arms the notice at each
execute request and disarms it when the request ends, so nothing is written
during the launcher's start-up, between cells, or by a thread that outlives
its cell.
"""

from __future__ import annotations

import sys

__all__ = ["TEMPLATE", "cell_ended", "cell_started", "library_hint", "show_library_hint", "would_refuse"]

TEMPLATE = ("kernel_guard (audit mode): this cell did something the policy refuses: {what}. "
            "It was recorded, not refused.")

# Holds one token while a cell runs and has shown no notice.  list.pop() is atomic
# under the GIL, so two threads of one cell cannot both take it, and the write below
# (which may raise audit events of its own) finds it gone: no re-entry.
_token: list[bool] = []


#: the fix a library's wrapped refusal named in this cell (the first one)
_hints: list[str] = []


def cell_started() -> None:
    """Arm the notice for the execute request that starts now."""
    _token[:] = [True]
    _hints.clear()


def cell_ended() -> None:
    """Disarm it: outside a cell nothing is written."""
    _token.clear()
    _hints.clear()


def library_hint(text: str) -> None:
    """Keep the fix for a refusal inside a library, which may wrap it in an error of its
    own (torch.compile's long traceback, matplotlib's "latex could not be found")."""
    if not _hints:
        _hints.append(text)


def show_library_hint(failed: bool) -> None:
    """After a failed cell's traceback, the last line the user reads: kernel_guard's fix."""
    if not (failed and _hints) or sys.stderr is None:
        return
    try:
        sys.stderr.write(f"kernel_guard refused a program this cell's library started. To fix: {_hints[0]}. "
                         "See kernel_guard's docs/troubleshooting.md.\n")
        sys.stderr.flush()
    except Exception:
        pass  # a hint must never break the cell it describes


def would_refuse(what: str) -> None:
    """Write the notice for ``what`` (what enforce mode would refuse), once per cell."""
    try:
        _token.pop()
    except IndexError:
        return  # no cell is running, or it has had its notice
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(TEMPLATE.format(what=what) + "\n")
    except Exception:
        pass  # a notice must never break the cell it describes
