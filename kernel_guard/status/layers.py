"""This process's layers, read from the system at the moment of asking.

The seccomp state from ``/proc/self/status``, the supervisor's liveness from
``/proc`` and its own answer over the control socket, the audit hook from the
hooks installed, the sinks' health and losses from the pipeline, the kernel's
transport from the running IPKernelApp: what ``%guard_status`` shows.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .launch_notes import launch_facts

__all__ = ["collect"]


def _layer(state: str, active: bool, **evidence: Any) -> dict[str, Any]:
    return {"state": state, "active": active, **evidence}


def _seccomp_layer(pid: int | str = "self") -> dict[str, Any]:
    from ..launch.seccomp_filter import listener_fds, proc_status

    st = proc_status(pid)
    filtered = st.get("Seccomp") == "2"
    evidence = dict(seccomp=st.get("Seccomp", "unknown"), no_new_privs=st.get("NoNewPrivs", "unknown"),
                    filters=st.get("Seccomp_filters", "unknown"), listener_fds_held=listener_fds(pid))
    if pid != "self":
        # from outside we cannot tell whose filter it is; the supervisor tells (collect_pid)
        return _layer("filtered" if filtered else "off", filtered, **evidence)
    profile = launch_facts.get("profile")
    ours = bool(launch_facts.get("seccomp"))
    if ours and filtered:
        return _layer(profile["mode"], True, profile=profile, **evidence)
    note = ("a seccomp filter is present, but not kernel_guard's (container runtime?)" if filtered
            else "no seccomp filter")
    if launch_facts and not ours:
        note += "; the launcher could not load its filter (see the guard-error event)"
    return _layer("off", False, reason=note, **evidence)


def _supervisor_layer() -> dict[str, Any]:
    from ..launch import supervisor_handle as supervisor

    handle = supervisor.current()
    if handle is None:
        return _layer("none", False, reason="no supervisor was started in this process")
    alive = handle.alive()
    report = handle.query(timeout=2.0) if alive else None
    if not alive:
        return _layer("lost", False, pid=handle.pid,
                      reason=launch_facts.get("supervisor_lost") or handle.lost_reason or "not running")
    if report is None:
        return _layer("unresponsive", False, pid=handle.pid, reason="running but did not answer within 2s")
    return _layer(report.get("mode", "?"), True, pid=handle.pid, counts=report.get("counts"),
                  sinks=(report.get("pipeline") or {}).get("sinks"),
                  dropped=(report.get("pipeline") or {}).get("dropped"),
                  own_seccomp=(report.get("seccomp") or {}).get("Seccomp"),
                  witness=_witness(report.get("witness")),
                  memfds=("created sealed non-executable" if report.get("memfd_sealing") else
                          "refused (ENOSYS): this Linux has no MFD_NOEXEC_SEAL (6.3+)"),
                  leftover_processes=("ended and recorded when the kernel ends" if report.get("survivor_scope")
                                      else "cannot be told from other processes (no Landlock signal scope): "
                                           "recorded as remaining"))


def _witness(reported: Any) -> str:
    """How the supervisor's loss would be recorded, as the supervisor reports it."""
    form = reported.get("form") if isinstance(reported, dict) else None
    if form == "program":
        return "kernel-guard-witness (a program of a few pages)"
    if form == "fork":
        return "a fork of the supervisor (the witness program was not built: a few MB more)"
    return "unknown"


def _landlock_layer() -> dict[str, Any]:
    """The domain as the launcher applied it, its signal scope probed: ``kill(parent, 0)``
    fails with EPERM inside a scope even where the parent shares our uid (where it
    does not, the probe cannot tell)."""
    from .. import runtime

    rt = runtime.current()
    applied = (rt.layers.get("landlock") if rt is not None else None) or "off"
    # the ABI as the launcher probed it: a ctypes syscall() here would be refused
    rules = {"abi": launch_facts.get("landlock_abi"), "writable": launch_facts.get("landlock_writable", []),
             "programs": launch_facts.get("landlock_programs", [])}
    if applied.startswith("off"):
        return _layer("off", False, **rules, reason=applied.partition(": ")[2]
                      or "no Landlock domain (it needs the launcher and a kernel with Landlock)")
    ppid = os.getppid()
    try:
        same_uid = os.stat(f"/proc/{ppid}").st_uid == os.getuid()
        os.kill(ppid, 0)
        scoped: bool | None = False
    except PermissionError:
        scoped = True if same_uid else None
    except OSError:
        scoped = None
    if scoped:
        return _layer(applied, True, probe=f"kill({ppid}, 0): EPERM", **rules)
    if scoped is None:
        return _layer(applied, True, **rules, reason="as recorded at launch (the parent runs as another "
                                                     "user: the signal probe cannot tell)")
    return _layer("off", False, **rules, reason=f"recorded as {applied!r}, but kill({ppid}, 0) reached the "
                                                "parent: no signal scope is in force")


def _audit_layer() -> dict[str, Any]:
    from ..audit import hook as audit

    mode = audit.installed_mode()
    # native: a C filter calls the policy for interesting events only; python:
    # a Python hook sees every event (about 5x the cost per event, same policy)
    return _layer(mode or "off", mode is not None, hook=audit.filter_kind())


def _ipython_layer() -> dict[str, Any]:
    from .. import runtime

    rt = runtime.current()
    state = rt.layers.get("ipython") if rt is not None else None
    return _layer(state or "off", bool(state))


def _pipeline() -> dict[str, Any]:
    from .. import runtime

    rt = runtime.current()
    if rt is None:
        return {"state": "off", "active": False}
    from ..events.secrets import NATIVE_GATE

    # native: the compiled scan lets events without a candidate skip the detectors;
    # python: the Python gate alone (several times the cost per event, same redaction)
    stats = {**rt.pipeline.stats(), "redaction_gate": "native" if NATIVE_GATE is not None else "python"}
    healthy = all(v == "ok" for v in stats.get("sinks", {}).values()) and stats.get("writer_alive", False)
    return {"state": "ok" if healthy else "degraded", "active": True, **stats}


def _transport() -> dict[str, Any]:
    try:
        from ipykernel.kernelapp import IPKernelApp
    except ImportError:
        return {"state": "no kernel"}
    if not IPKernelApp.initialized():
        return {"state": "no kernel"}
    app = IPKernelApp.instance()
    transport = getattr(app, "transport", "tcp")
    curve = getattr(app, "curve_secretkey", None) is not None
    ip = getattr(app, "ip", None)
    if transport == "ipc":
        state = "ipc"
    elif curve:
        state = "tcp+curve"
    elif ip in ("127.0.0.1", "localhost", "::1"):
        state = "local (tcp on this machine only; programs here that know the connection key can connect)"
    else:
        state = "tcp (plain: anyone who can reach the ports and knows the key can run code)"
    return {"state": state, "transport": transport, "ip": getattr(app, "ip", None), "curve": curve}


def _debugger() -> dict[str, Any]:
    dbg = sys.modules.get("ipykernel.debugger")  # imported by a kernel; importing it here would load debugpy
    if dbg is None:
        return {"state": "no kernel", "active": False}
    on = bool(getattr(dbg, "_is_debugpy_available", False))
    return {"state": "enabled (debug_request evaluates code outside cells)" if on else "disabled", "active": on}


def collect() -> dict[str, Any]:
    """The status of this process, read now."""
    return {
        "pid": os.getpid(),
        "launcher": bool(launch_facts),
        "layers": {"ipython": _ipython_layer(), "audit": _audit_layer(), "seccomp": _seccomp_layer(),
                   "supervisor": _supervisor_layer(), "landlock": _landlock_layer()},
        "events": _pipeline(),
        "transport": _transport(),
        "debugger": _debugger(),
        "credentials_scrubbed": launch_facts.get("scrubbed", []),
    }


