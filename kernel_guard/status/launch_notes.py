"""What the launcher leaves for ``status``: its account of what it set up.

In the kernel, :func:`record_launch` keeps the launcher's facts for
``%guard_status`` (each re-checked on a query); what ``/proc`` cannot show
another process (the Landlock domain, the audit hook's kind) also goes into a
launch note, ``<tmp>/kernel-guard-status-<uid>/<pid>.json``, for
``kernel-guard status`` outside the kernel, which shows it as the kernel's claim.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

__all__ = ["hook_kind_from_maps", "launch_facts", "launch_note", "note_supervisor_lost", "real_uid", "record_launch"]

#: the launcher's facts in this process (empty: not started by the launcher)
launch_facts: dict[str, Any] = {}


def record_launch(**info: Any) -> None:
    """Called by the launcher: what it set up (the facts are re-checked on each query).
    What /proc cannot show another process (the Landlock domain, the audit hook's kind)
    is also left in a launch note for ``kernel-guard status`` outside the kernel."""
    launch_facts.clear()
    launch_facts.update(info)
    _write_launch_note()


def _notes_dir(uid: int | None = None) -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"kernel-guard-status-{os.getuid() if uid is None else uid}")


def _write_launch_note() -> None:
    """``<tmp>/kernel-guard-status-<uid>/<pid>.json``: the kernel's own account of its
    Landlock domain and audit hook at launch (its claim, and shown as one)."""
    import json

    from .. import runtime
    from ..audit import hook as audit

    rt = runtime.current()
    note = {"landlock": (rt.layers.get("landlock") if rt is not None else None) or "off",
            "landlock_abi": launch_facts.get("landlock_abi"), "landlock_programs": launch_facts.get("landlock_programs", []),
            "landlock_writable": launch_facts.get("landlock_writable", []),
            "audit_mode": audit.installed_mode(), "hook": audit.filter_kind()}
    try:
        os.makedirs(_notes_dir(), mode=0o700, exist_ok=True)
        path = os.path.join(_notes_dir(), f"{os.getpid()}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(note, fh)
        atexit.register(_remove_quietly, path)
    except (OSError, PermissionError):
        pass  # status outside the kernel then says it cannot tell


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def launch_note(pid: int) -> dict[str, Any] | None:
    """The launch note of ``pid``, if it was written by that very process (after it started)."""
    import json

    path = os.path.join(_notes_dir(real_uid(pid)), f"{pid}.json")
    try:
        if os.stat(path).st_mtime < os.stat(f"/proc/{pid}").st_mtime - 1:
            return None  # left by an earlier process with the same id
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def hook_kind_from_maps(pid: int) -> str | None:
    """``native`` when the process has the audit layer's C filter mapped, ``python`` when it
    has kernel_guard loaded without it; None when its maps are not readable."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
            maps = fh.read()
    except OSError:
        return None
    return "native" if "kernel_guard/audit/_filter" in maps else None


def note_supervisor_lost(reason: str) -> None:
    """Called when the kernel saw its supervisor exit."""
    launch_facts["supervisor_lost"] = reason




def real_uid(pid: int | str) -> int | None:
    """The real uid on a process's ``Uid:`` line in /proc (None when it is gone)."""
    from ..launch.seccomp_filter import proc_status

    uids = proc_status(pid).get("Uid", "").split()
    return int(uids[0]) if uids and uids[0].isdigit() else None

