"""Guarded kernels seen from outside: found in ``/proc``, each reported as far as
``/proc`` and the kernel's launch note show it (``kernel-guard status``)."""

from __future__ import annotations

import os
from typing import Any

from .launch_notes import hook_kind_from_maps, launch_note, real_uid
from .report import format_report
from .layers import _layer, _seccomp_layer

__all__ = ["collect_kernels", "collect_pid", "find_kernels", "format_kernels", "kernel_route"]


def _supervisors_of(pid: int) -> list[dict[str, Any]]:
    """Supervisor processes whose parent is ``pid`` (read from /proc)."""
    from ..launch.seccomp_filter import proc_status

    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"kernel_guard.launch.supervisor" not in argv:
            continue
        st = proc_status(name)
        if st.get("PPid") == str(pid):
            found.append({"pid": int(name), "state": st.get("State"), "seccomp": st.get("Seccomp")})
    return found


def _cmdline(pid: int | str) -> list[str]:
    """A process's argv from /proc (empty when it is gone or not ours to read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def kernel_route(argv: list[str]) -> str | None:
    """How a command line runs a guarded kernel: ``launcher``, ``extension``, or None (not one)."""
    for i, arg in enumerate(argv):
        # the launcher itself, not its supervisor (``-m kernel_guard.launch.supervisor``)
        if arg == "kernel_guard.launch" and i > 0 and argv[i - 1] == "-m":
            return "launcher"
    if not any("ipykernel" in arg for arg in argv):
        return None
    joined = " ".join(argv)
    if "--ext=kernel_guard" in argv or "--ext kernel_guard" in joined or (
            "extensions=" in joined and "kernel_guard" in joined):
        return "extension"
    return None


def find_kernels(uid: int | None = None) -> list[tuple[int, str]]:
    """(pid, route) of the guarded kernels run by ``uid`` (default: this user), from /proc.

    Only what /proc lets this user read: the command line of each process of
    that uid. A kernel loaded with ``%load_ext``/``exec_lines`` from a config
    file does not show on its command line and is not found.
    """
    uid = os.getuid() if uid is None else uid
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid() or real_uid(name) != uid:
            continue
        route = kernel_route(_cmdline(name))
        if route is not None:
            found.append((int(name), route))
    return sorted(found)


def collect_kernels(uid: int | None = None) -> dict[str, Any]:
    """The ``--pid`` report of each guarded kernel of ``uid`` (default: this user)."""
    uid = os.getuid() if uid is None else uid
    kernels = [{**collect_pid(pid), "route": route} for pid, route in find_kernels(uid)]
    report: dict[str, Any] = {"uid": uid, "kernels": kernels}
    if not kernels:
        report["message"] = (f"No guarded kernels of uid {uid} are running (none runs kernel_guard.launch or "
                             "ipykernel with --ext=kernel_guard). To check one kernel, give its process id: "
                             "kernel-guard status --pid PID; in a notebook, run %guard_status.")
    return report


def format_kernels(report: dict[str, Any]) -> str:
    """Each kernel's table, one after another, or the message saying none was found."""
    if not report["kernels"]:
        return report["message"]
    return "\n\n".join(f"{format_report(k)}" for k in report["kernels"])


def collect_pid(pid: int) -> dict[str, Any]:
    """What /proc shows about another process (a running kernel)."""
    from ..launch.seccomp_filter import proc_status

    if not proc_status(pid):
        return {"pid": pid, "error": f"no process {pid} (or /proc/{pid}/status is not readable)"}
    sups = _supervisors_of(pid)
    note = launch_note(pid)
    return {"pid": pid, "layers": {
        "audit": _outside_audit_layer(pid, note),
        "seccomp": _seccomp_layer(pid),
        "supervisor": _layer("running" if sups else "none", bool(sups), processes=sups),
        "landlock": _outside_landlock_layer(note),
    }, "note": "the Landlock and audit rows are what the kernel recorded at launch (Linux shows neither "
               "in /proc); the IPython layer and the sinks are only visible from inside the kernel "
               "(%guard_status)"}


def _outside_audit_layer(pid: int, note: dict[str, Any] | None) -> dict[str, Any]:
    mapped = hook_kind_from_maps(pid)
    if note is None:
        return _layer("unknown", False, hook=mapped,
                      reason="no launch note from this kernel (a %load_ext kernel, or another user's)")
    mode = note.get("audit_mode")
    return _layer(mode or "off", mode is not None, hook=mapped or note.get("hook"))


def _outside_landlock_layer(note: dict[str, Any] | None) -> dict[str, Any]:
    if note is None:
        return _layer("unknown", False, reason="no launch note from this kernel")
    rules = {"abi": note.get("landlock_abi"), "programs": note.get("landlock_programs", []),
             "writable": note.get("landlock_writable", [])}
    applied = str(note.get("landlock") or "off")
    if applied.startswith("off"):
        return _layer("off", False, **rules, reason=applied.partition(": ")[2] or "no Landlock domain")
    return _layer(applied, True, **rules)


#: the text table's width: the detail column wraps at word boundaries to fit it
