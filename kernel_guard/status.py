"""Which layers are really active, for ``%guard_status`` and ``kernel-guard status``.

Every answer is read from the system at the moment of asking, never taken
from configuration: the seccomp state from ``/proc/<pid>/status``, the
supervisor's liveness from ``/proc`` and from its own answer over the control
socket, the audit hook from the hooks actually installed, the sinks' health
and the dropped-event count from the pipeline, the kernel's transport
(ipc, tcp with CurveZMQ, plain tcp) from the running IPKernelApp.

In a kernel, ``%guard_status`` reports on that kernel.  From a shell,
``kernel-guard status`` finds this user's guarded kernels in ``/proc`` (the
launcher's, and ipykernels started with ``--ext=kernel_guard``) and reports
on each, or, with ``--pid``, on one running kernel, as far as ``/proc``
shows it from outside.

This module sits at the top of the package because three layers share it:
the launcher records here what it set up (:func:`record_launch`), the
IPython layer's magic (:mod:`kernel_guard.ipython.magics`) and the command
(:mod:`kernel_guard.cli.status`) print its report.
"""

from __future__ import annotations

import html
import atexit
import os
import sys
import textwrap
from typing import Any

__all__ = ["StatusReport", "collect", "collect_kernels", "collect_pid", "find_kernels", "format_html",
           "format_kernels", "format_report", "note_supervisor_lost",
           "record_launch", "rows", "verdict"]

_launch: dict[str, Any] = {}


def record_launch(**info: Any) -> None:
    """Called by the launcher: what it set up (the facts are re-checked on each query).
    What /proc cannot show another process (the Landlock domain, the audit hook's kind)
    is also left in a launch note for ``kernel-guard status`` outside the kernel."""
    _launch.clear()
    _launch.update(info)
    _write_launch_note()


def _notes_dir(uid: int | None = None) -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"kernel-guard-status-{os.getuid() if uid is None else uid}")


def _write_launch_note() -> None:
    """``<tmp>/kernel-guard-status-<uid>/<pid>.json``: the kernel's own account of its
    Landlock domain and audit hook at launch (its claim, and shown as one)."""
    import json

    from . import runtime
    from .audit import hook as audit

    rt = runtime.current()
    note = {"landlock": (rt.layers.get("landlock") if rt is not None else None) or "off",
            "landlock_abi": _launch.get("landlock_abi"), "landlock_programs": _launch.get("landlock_programs", []),
            "landlock_writable": _launch.get("landlock_writable", []),
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


def _launch_note(pid: int) -> dict[str, Any] | None:
    """The launch note of ``pid``, if it was written by that very process (after it started)."""
    import json

    path = os.path.join(_notes_dir(_real_uid(pid)), f"{pid}.json")
    try:
        if os.stat(path).st_mtime < os.stat(f"/proc/{pid}").st_mtime - 1:
            return None  # left by an earlier process with the same id
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _hook_kind_from_maps(pid: int) -> str | None:
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
    _launch["supervisor_lost"] = reason


def _layer(state: str, active: bool, **evidence: Any) -> dict[str, Any]:
    return {"state": state, "active": active, **evidence}


def _seccomp_layer(pid: int | str = "self") -> dict[str, Any]:
    from .launch.seccomp_filter import listener_fds, proc_status

    st = proc_status(pid)
    filtered = st.get("Seccomp") == "2"
    evidence = dict(seccomp=st.get("Seccomp", "unknown"), no_new_privs=st.get("NoNewPrivs", "unknown"),
                    filters=st.get("Seccomp_filters", "unknown"), listener_fds_held=listener_fds(pid))
    if pid != "self":
        # from outside we cannot tell whose filter it is; the supervisor tells (collect_pid)
        return _layer("filtered" if filtered else "off", filtered, **evidence)
    profile = _launch.get("profile")
    ours = bool(_launch.get("seccomp"))
    if ours and filtered:
        return _layer(profile["mode"], True, profile=profile, **evidence)
    note = ("a seccomp filter is present, but not kernel_guard's (container runtime?)" if filtered
            else "no seccomp filter")
    if _launch and not ours:
        note += "; the launcher could not load its filter (see the guard-error event)"
    return _layer("off", False, reason=note, **evidence)


def _supervisor_layer() -> dict[str, Any]:
    from .launch import supervisor_handle as supervisor

    handle = supervisor.current()
    if handle is None:
        return _layer("none", False, reason="no supervisor was started in this process")
    alive = handle.alive()
    report = handle.query(timeout=2.0) if alive else None
    if not alive:
        return _layer("lost", False, pid=handle.pid,
                      reason=_launch.get("supervisor_lost") or handle.lost_reason or "not running")
    if report is None:
        return _layer("unresponsive", False, pid=handle.pid, reason="running but did not answer within 2s")
    return _layer(report.get("mode", "?"), True, pid=handle.pid, counts=report.get("counts"),
                  sinks=(report.get("pipeline") or {}).get("sinks"),
                  dropped=(report.get("pipeline") or {}).get("dropped"),
                  own_seccomp=(report.get("seccomp") or {}).get("Seccomp"),
                  memfds=("created sealed non-executable" if report.get("memfd_sealing") else
                          "refused (ENOSYS): this Linux has no MFD_NOEXEC_SEAL (6.3+)"),
                  leftover_processes=("ended and recorded when the kernel ends" if report.get("survivor_scope")
                                      else "cannot be told from other processes (no Landlock signal scope): "
                                           "recorded as remaining"))


def _landlock_layer() -> dict[str, Any]:
    """The domain as the launcher applied it, its signal scope probed: ``kill(parent, 0)``
    fails with EPERM inside a scope even where the parent shares our uid (where it
    does not, the probe cannot tell)."""
    from . import runtime

    rt = runtime.current()
    applied = (rt.layers.get("landlock") if rt is not None else None) or "off"
    # the ABI as the launcher probed it: a ctypes syscall() here would be refused
    rules = {"abi": _launch.get("landlock_abi"), "writable": _launch.get("landlock_writable", []),
             "programs": _launch.get("landlock_programs", [])}
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
    from .audit import hook as audit

    mode = audit.installed_mode()
    # native: a C filter calls the policy for interesting events only; python:
    # a Python hook sees every event (about 5x the cost per event, same policy)
    return _layer(mode or "off", mode is not None, hook=audit.filter_kind())


def _ipython_layer() -> dict[str, Any]:
    from . import runtime

    rt = runtime.current()
    state = rt.layers.get("ipython") if rt is not None else None
    return _layer(state or "off", bool(state))


def _pipeline() -> dict[str, Any]:
    from . import runtime

    rt = runtime.current()
    if rt is None:
        return {"state": "off", "active": False}
    stats = rt.pipeline.stats()
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
        "launcher": bool(_launch),
        "layers": {"ipython": _ipython_layer(), "audit": _audit_layer(), "seccomp": _seccomp_layer(),
                   "supervisor": _supervisor_layer(), "landlock": _landlock_layer()},
        "events": _pipeline(),
        "transport": _transport(),
        "debugger": _debugger(),
        "credentials_scrubbed": _launch.get("scrubbed", []),
    }


def _supervisors_of(pid: int) -> list[dict[str, Any]]:
    """Supervisor processes whose parent is ``pid`` (read from /proc)."""
    from .launch.seccomp_filter import proc_status

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


def _real_uid(pid: int | str) -> int | None:
    """The real uid on a process's ``Uid:`` line in /proc (None when it is gone)."""
    from .launch.seccomp_filter import proc_status

    uids = proc_status(pid).get("Uid", "").split()
    return int(uids[0]) if uids and uids[0].isdigit() else None


def find_kernels(uid: int | None = None) -> list[tuple[int, str]]:
    """(pid, route) of the guarded kernels run by ``uid`` (default: this user), from /proc.

    Only what /proc lets this user read: the command line of each process of
    that uid. A kernel loaded with ``%load_ext``/``exec_lines`` from a config
    file does not show on its command line and is not found.
    """
    uid = os.getuid() if uid is None else uid
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid() or _real_uid(name) != uid:
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
    from .launch.seccomp_filter import proc_status

    if not proc_status(pid):
        return {"pid": pid, "error": f"no process {pid} (or /proc/{pid}/status is not readable)"}
    sups = _supervisors_of(pid)
    note = _launch_note(pid)
    return {"pid": pid, "layers": {
        "audit": _outside_audit_layer(pid, note),
        "seccomp": _seccomp_layer(pid),
        "supervisor": _layer("running" if sups else "none", bool(sups), processes=sups),
        "landlock": _outside_landlock_layer(note),
    }, "note": "the Landlock and audit rows are what the kernel recorded at launch (Linux shows neither "
               "in /proc); the IPython layer and the sinks are only visible from inside the kernel "
               "(%guard_status)"}


def _outside_audit_layer(pid: int, note: dict[str, Any] | None) -> dict[str, Any]:
    mapped = _hook_kind_from_maps(pid)
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
TEXT_WIDTH = 100


#: a state longer than this is a description: the state column says on/off, the detail says the rest
STATE_WIDTH = 20


#: what each layer does, in the words of the verdict
_PLAIN = {"ipython": "shell commands (!, %%bash, %pip)", "audit": "in-process checks (subprocess, os.system, "
          "start-up files)", "seccomp": "program blocking by the OS", "supervisor": "the recorder of program starts",
          "landlock": "the OS limits on files and programs (Landlock)"}

#: what to do about a row that is not OK
_ACTIONS = {
    "ipython": "run %load_ext kernel_guard, or choose the Python 3 (kernel_guard) kernel",
    "audit": "run %load_ext kernel_guard, or choose the Python 3 (kernel_guard) kernel",
    "seccomp": "choose the Python 3 (kernel_guard) kernel (kernel-guard install-kernelspec); "
               "%load_ext alone adds no OS layers",
    "supervisor": "choose the Python 3 (kernel_guard) kernel; if it is that kernel, restart it",
    "landlock": "use the Python 3 (kernel_guard) kernel on Linux 5.13 or newer with Landlock enabled",
    "audit mode": "audit mode records but refuses nothing; set KERNEL_GUARD_MODE=enforce for a guard",
    "events": "check the sinks in KERNEL_GUARD_SINKS; kernel-guard verify reads the record",
    "transport": "ask the service's operators to turn on CurveZMQ encryption (supported_encryption)",
    "debugger": "choose the Python 3 (kernel_guard) kernel, which turns the debugger off",
}

#: plain words for the evidence /proc gives
_EVIDENCE_WORDS = {"seccomp": {"0": "none", "1": "strict", "2": "filter loaded"},
                   "no_new_privs": {"0": "not set", "1": "set (no privilege gain)"}}


def _ok(layer: dict[str, Any]) -> bool:
    return bool(layer.get("active")) and str(layer.get("state")) != "audit"


def verdict(report: dict[str, Any]) -> str:
    """One line first: is this kernel guarded, and by what."""
    if "error" in report:
        return str(report["error"])
    layers = report.get("layers", {})
    missing = [name for name, layer in layers.items() if not _ok(layer)]
    if not missing:
        return "Guarded: every layer is on, and every refusal is recorded."
    if all(name in missing for name in layers):
        return "Not guarded: no kernel_guard layer is on in this kernel; see the actions below."
    off = ", ".join(_PLAIN.get(name, name) for name in missing)
    return f"Partly guarded: off here are {off}; see the actions below."


def rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(layer, state, detail) for each row of the table, in the order people read them;
    a row that is not OK ends with what to do."""
    out = [_with_action("audit mode" if layer.get("state") == "audit" else name, _layer_row(name, layer),
                        not _ok(layer)) for name, layer in report.get("layers", {}).items()]
    events = report.get("events")
    if events and not events.get("active"):
        out.append(("events", "off", "no kernel_guard runtime in this process"))
    elif events:
        out.append(_with_action("events", ("events", events["state"], f"written {events.get('written', 0)}, "
                                           f"dropped {events.get('dropped', 0)}; sinks: "
                                           f"{_words(events.get('sinks') or {})}"), events["state"] != "ok"))
    for key in ("transport", "debugger"):
        if key in report:
            # long states carry their explanation in parentheses: that part is detail
            state, _, why = report[key]["state"].partition(" (")
            alarm = state == "tcp" or state == "enabled"
            out.append(_with_action(key, (key, state, why.rstrip(")")), alarm))
    if report.get("credentials_scrubbed"):
        out.append(("scrubbed", "yes", ", ".join(report["credentials_scrubbed"])))
    return out


def _with_action(name: str, row: tuple[str, str, str], needed: bool) -> tuple[str, str, str]:
    if not needed or name not in _ACTIONS:
        return row
    detail = row[2].rstrip(".")
    return row[0], row[1], f"{detail + '. ' if detail else ''}To fix: {_ACTIONS[name]}."


def _layer_row(name: str, layer: dict[str, Any]) -> tuple[str, str, str]:
    state, detail = _state(layer), _layer_detail(layer)
    if len(state) > STATE_WIDTH:
        state, detail = ("on" if layer.get("active") else "off"), "; ".join(filter(None, (state, detail)))
    return name, state, detail


def _state(layer: dict[str, Any]) -> str:
    """A layer's state; an inactive one says so even when its state has another name (none, lost)."""
    state = str(layer.get("state", "?"))
    return state if layer.get("active") or state == "off" else f"{state} (off)"


def _layer_detail(layer: dict[str, Any]) -> str:
    """The evidence for a layer's state as words: the reason first, then each fact."""
    facts = {k: v for k, v in layer.items() if k not in ("state", "active", "reason")
             and v not in (None, "", [], {})}
    parts = [str(layer["reason"])] if layer.get("reason") else []
    if isinstance(facts.get("profile"), dict):
        # the profile's Landlock rules are the landlock row's; here its name and what it does
        p = facts["profile"]
        facts["profile"] = f"{p.get('name')} (mode {p.get('mode')}, exec {p.get('exec_action')})"
    parts += [f"{key.replace('_', ' ')}: {_EVIDENCE_WORDS.get(key, {}).get(str(value), _words(value))}"
              for key, value in facts.items()]
    return "; ".join(parts)


def _words(value: Any) -> str:
    """A value as words: mappings as ``key value`` pairs, lists comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_words(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_words(v) for v in value) or "none"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table with aligned columns; long details wrap at word boundaries."""
    if "error" in report:
        return report["error"]
    table = [("layer", "state", "detail"), *rows(report)]
    widths = [max(len(row[i]) for row in table) for i in (0, 1)]
    indent = widths[0] + widths[1] + 4
    lines = [_title(report), *textwrap.wrap(verdict(report), TEXT_WIDTH, break_long_words=False)]
    for layer, state, detail in table:
        wrapped = textwrap.wrap(detail, max(30, TEXT_WIDTH - indent - 2), break_long_words=False,
                                break_on_hyphens=False) or [""]
        lines.append(f"  {layer:<{widths[0]}}  {state:<{widths[1]}}  {wrapped[0]}".rstrip())
        lines += [" " * (indent + 2) + more for more in wrapped[1:]]
    if report.get("note"):
        lines += textwrap.wrap(f"note: {report['note']}", TEXT_WIDTH, initial_indent="  ",
                               subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def format_html(report: dict[str, Any]) -> str:
    """The report as a small HTML table (layer, state, detail) for the notebook."""
    if "error" in report:
        return f"<p>{html.escape(report['error'])}</p>"
    body = "".join(
        f"<tr><td>{html.escape(layer)}</td><td>{html.escape(state)}</td>"
        f"<td style=\"text-align:left\">{html.escape(detail)}</td></tr>" for layer, state, detail in rows(report))
    note = f"<p>{html.escape(report['note'])}</p>" if report.get("note") else ""
    return (f'<p><b>{html.escape(verdict(report))}</b></p>'
            f'<table class="kernel-guard-status"><caption>{html.escape(_title(report))}</caption>'
            "<thead><tr><th>layer</th><th>state</th><th>detail</th></tr></thead>"
            f"<tbody>{body}</tbody></table>{note}")


def _title(report: dict[str, Any]) -> str:
    started = report.get("launcher") or report.get("route") == "launcher"
    return (f"kernel_guard status of pid {report['pid']}"
            + (" (started by kernel_guard.launch)" if started else "")
            + (" (ipykernel with the extension)" if report.get("route") == "extension" else ""))


class StatusReport:
    """A status report as the notebook shows it: an HTML table, or aligned text where HTML is not shown."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def __repr__(self) -> str:
        return format_report(self.report)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(format_report(self.report))

    def _repr_html_(self) -> str:
        return format_html(self.report)
