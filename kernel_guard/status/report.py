"""The status report in words: the verdict first, then one row per layer, as text
(aligned, for a terminal) or HTML (for the notebook)."""

from __future__ import annotations

import html
import textwrap
from typing import Any

__all__ = ["StatusReport", "format_html", "format_report", "rows", "verdict"]


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
