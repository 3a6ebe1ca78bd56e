"""The results table and the ``--json`` document.

JSON shape (``SCHEMA_VERSION`` changes only when a key changes meaning)::

    {
      "schema": 1,
      "version": "<kernel_guard version>",
      "machine": {"cpus", "python", "implementation", "platform", "kernel", "machine",
                  "ipykernel", "jupyter_client", "numpy", "pandas",
                  "steadiness": {"readings": [{"before", "getppid_ns", "python_step_ns"}],
                                 "yardstick_spread", "plain_spread", "plain_spread_allowed",
                                 "worst_plain_spread": {"metric", "spread", "allowed"},
                                 "max_spread", "steady"}},
      "date": "<UTC, ISO 8601>",
      "quick": false,
      "seconds": <wall time of the run>,
      "scenarios": {
        "<name>": {
          "title", "unit", "repetitions",
          "results": {<configuration>: <median, or {metric: median}>},
          "ratios": {<guarded configuration>: <guarded / plain>},
          "target": "<the target, in words>",
          "met": true | false,
          "rows": [{"metric", "config", "plain", "guarded", "ratio", "target", "met"}],
          ... scenario-specific details ...
        }
      }
    }

Scenario names: ``audit_hook``, ``workload``, ``cell_latency``, ``kernel_start``,
``syscalls``, ``refusal``, ``sinks``, ``landlock``, ``memory``.  Configurations: ``plain``, ``extension``,
``launcher`` (``none``, ``noop``, ``guard`` for ``audit_hook``).
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any, Dict, List, Optional

from .stats import all_met

SCHEMA_VERSION = 1
SCENARIOS = ("audit_hook", "workload", "cell_latency", "kernel_start", "syscalls", "refusal", "sinks", "landlock",
             "memory")
ROW_KEYS = ("metric", "config", "plain", "guarded", "ratio", "target", "met")


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine() -> Dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "ipykernel": _version("ipykernel"),
        "jupyter_client": _version("jupyter_client"),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
    }


def document(scenarios: Dict[str, Any], quick: bool, seconds: float,
             steadiness: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from kernel_guard import __version__

    return {
        "schema": SCHEMA_VERSION,
        "version": __version__,
        "machine": {**machine(), **({"steadiness": steadiness} if steadiness is not None else {})},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "seconds": round(seconds, 1),
        "scenarios": scenarios,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(doc: Dict[str, Any], markdown: bool = False) -> str:
    """The results as a text (or Markdown) table, one row per scenario, metric and configuration."""
    header = ["scenario", "metric", "config", "plain", "guarded", "ratio", "target", "met?"]
    lines: List[List[str]] = []
    for name in SCENARIOS:
        scenario = doc["scenarios"].get(name)
        if scenario is None:
            continue
        if "error" in scenario:
            lines.append([name, f"failed: {scenario['error'][:60]}", "-", "-", "-", "-", "-", "NO"])
            continue
        for row in scenario["rows"]:
            lines.append([name, row["metric"], row["config"], _cell(row["plain"]), _cell(row["guarded"]),
                          _cell(row["ratio"]), row["target"], "-" if row["met"] is None else _cell(row["met"])])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def scenario_met(scenario: Dict[str, Any]) -> bool:
    """A scenario's verdict, judged from its rows: info-only rows never make it a miss."""
    if "error" in scenario:
        return False
    if scenario.get("rows"):
        return all_met(scenario["rows"])
    return bool(scenario.get("met"))


def summary_line(doc: Dict[str, Any]) -> str:
    """One line: the machine, and which scenarios met their targets and which missed."""
    met = [n for n, s in doc["scenarios"].items() if scenario_met(s)]
    missed = [n for n, s in doc["scenarios"].items() if not scenario_met(s)]
    m = doc["machine"]
    return (f"kernel_guard {doc['version']}, {doc['date']}, {m['cpus']} CPUs, Python {m['python']}, "
            f"Linux {m['kernel']}{' (quick)' if doc['quick'] else ''}: "
            f"{len(met)} of {len(doc['scenarios'])} scenarios met their targets"
            + (f"; missed: {', '.join(missed)}" if missed else ""))


def print_table(doc: Dict[str, Any], markdown: bool = False, file: Any = None) -> None:
    out = file or sys.stdout
    print(table(doc, markdown), file=out)
    print(file=out)
    print(summary_line(doc), file=out)
    if "steadiness" in doc["machine"]:
        from .steadiness import summary

        print(summary(doc["machine"]["steadiness"]), file=out)
