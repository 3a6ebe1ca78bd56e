"""How steady the machine was during a run: whether its ratios can be judged.

A ratio against a plain kernel in the same run cancels the machine's speed, not
its noise: when the plain kernel's own samples spread by 15%, a 1.03× target
cannot be told from a 1.10× one, and two runs of the same code meet different
targets.  Two gauges, kept in the JSON (``machine.steadiness``) and printed in
the summary:

* a **yardstick**, timed in the runner before every scenario and at the end:
  ns per ``os.getppid()`` (a system call, the part of the machine the launcher's
  filter touches) and per step of a pure-Python loop (the interpreter's part),
  each the best of ten short loops spread over half a second (so a process of
  the scenario before, still ending, does not count as the machine).  Its range
  over the run says whether the machine changed speed while the scenarios ran;
* the **spread of the plain kernel's samples** (interquartile range over the
  median) in every scenario that keeps them: how noisy the measurements the
  ratios divide by were.

``steady`` when the yardstick's range is at most :data:`MAX_SPREAD` (5%) and each
plain spread at most the room its target leaves (5% for a 1.05× target, 3% for
the workload's 1.03×, 20% for the parallel calls' 1.2×).  With seven samples a
side, a ratio of two medians whose samples spread so has a standard error of
about half that (the median's is 1.25 σ/√n, σ about IQR/1.35): half the room.
A run that is not steady still reports every row; its verdicts are the
machine's as much as the code's.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, List, Tuple

from .stats import median, percentile, rounded

__all__ = ["MAX_SPREAD", "Gauge", "plain_spreads", "rooms", "summary", "yardstick"]

#: the largest range of the yardstick over a steady run, relative to its median; and the
#: largest spread of a plain sample series whose target is not known
MAX_SPREAD = 0.05

_CALLS = 50_000
_LOOPS = 10
_PAUSE_S = 0.04


def _best_ns(loop: Any, n: int) -> float:
    """ns per step of ``loop(n)``: the best of a loop now and then over half a second."""
    best = float("inf")
    for _ in range(_LOOPS):
        t = time.perf_counter_ns()
        loop(n)
        best = min(best, (time.perf_counter_ns() - t) / n)
        time.sleep(_PAUSE_S)
    return best


def _syscalls(n: int) -> None:
    getppid = os.getppid
    for _ in range(n):
        getppid()


def _python(n: int) -> None:
    total = 0
    for i in range(n):
        total += i & 7


def yardstick() -> Dict[str, float]:
    """One reading: ns per ``os.getppid()`` and per pure-Python loop step in this process."""
    return {"getppid_ns": rounded(_best_ns(_syscalls, _CALLS), 1),
            "python_step_ns": rounded(_best_ns(_python, _CALLS), 2)}


def _relative_spread(values: List[float]) -> float:
    return (max(values) - min(values)) / median(values) if values and median(values) else 0.0


def _series(samples: Any, scenario: str) -> Iterator[Tuple[str, List[float]]]:
    """(metric, values) for a scenario's plain samples: a list, or a list per metric."""
    if isinstance(samples, list):
        yield scenario, samples
    elif isinstance(samples, dict):
        for metric, values in samples.items():
            if isinstance(values, list):
                yield f"{scenario} {metric}", values


def rooms() -> Dict[str, float]:
    """The room each plain sample series' target leaves (1.05× leaves 0.05), by series name."""
    from . import landlock, startup, syscalls, workload

    room = {"workload": workload.TARGET - 1, "kernel_start": startup.TARGET - 1}
    room.update({f"syscalls {call}": syscalls.TARGET - 1 for call in ("getppid", "stat")})
    room.update({f"landlock {metric}": target - 1 for metric, (_, target) in landlock.METRICS.items()})
    return {name: round(value, 3) for name, value in room.items()}


def plain_spreads(scenarios: Dict[str, Any]) -> Dict[str, float]:
    """Interquartile range over median of the plain kernel's samples, by scenario and metric."""
    spreads = {}
    for name, scenario in scenarios.items():
        plain = (scenario.get("samples") or {}).get("plain") if isinstance(scenario, dict) else None
        for metric, values in _series(plain, name):
            values = [v for v in values if isinstance(v, (int, float))]
            if len(values) >= 3 and median(values) > 0:
                spreads[metric] = rounded((percentile(values, 75) - percentile(values, 25)) / median(values), 3)
    return spreads


class Gauge:
    """Yardstick readings taken through a run, named by the scenario that came next."""

    def __init__(self) -> None:
        self.readings: List[Dict[str, Any]] = []

    def take(self, before: str) -> None:
        self.readings.append({"before": before, **yardstick()})

    def report(self, scenarios: Dict[str, Any]) -> Dict[str, Any]:
        """The readings, the spreads, and whether the run was steady."""
        yard = {key: rounded(_relative_spread([r[key] for r in self.readings]), 3)
                for key in ("getppid_ns", "python_step_ns")}
        spreads = plain_spreads(scenarios)
        room = rooms()
        allowed = {name: room.get(name, MAX_SPREAD) for name in spreads}
        # the worst is the series furthest over (or least under) the room its target leaves
        worst = max(spreads, key=lambda name: spreads[name] / allowed[name], default=None)
        return {"readings": self.readings, "yardstick_spread": yard, "plain_spread": spreads,
                "plain_spread_allowed": allowed,
                "worst_plain_spread": {"metric": worst, "spread": spreads[worst] if worst else 0.0,
                                       "allowed": allowed[worst] if worst else MAX_SPREAD},
                "max_spread": MAX_SPREAD,
                "steady": (max(yard.values(), default=0.0) <= MAX_SPREAD
                           and all(spreads[name] <= allowed[name] for name in spreads))}


def summary(steadiness: Dict[str, Any]) -> str:
    """One line for the table's foot: the verdict and the numbers behind it."""
    ppid = [r["getppid_ns"] for r in steadiness["readings"]]
    worst = steadiness["worst_plain_spread"]
    verdict = "steady" if steadiness["steady"] else "NOT steady: its verdicts are the machine's as much as the code's"
    plain = (f"; the plain samples' widest spread {worst['spread']:.1%} ({worst['metric']}; its target leaves "
             f"{worst['allowed']:.0%})" if worst["metric"] else "")
    return (f"machine {verdict} (getppid {min(ppid):.0f}-{max(ppid):.0f} ns over {len(ppid)} readings, "
            f"{steadiness['yardstick_spread']['getppid_ns']:.1%} apart, steady within "
            f"{steadiness['max_spread']:.0%}{plain})")
