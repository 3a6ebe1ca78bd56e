"""Scenario 4: kernel start, from the start request to the first ``kernel_info`` reply.

Kernels are started one at a time, the configurations taking turns, and
stopped at once after answering (shutdown is not timed).  The first round is
a warm-up (file system caches, the IPython profile directory).
"""

from __future__ import annotations

from typing import Any, Dict

from .kernels import CONFIGS, GUARDED, BenchKernel, Workspace
from .stats import all_met, balanced, median, ratio, rounded

TARGET = 1.05


def _start_once(config: str, workspace: Workspace) -> float:
    kernel = BenchKernel(config, workspace)
    try:
        return kernel.start(ready=False)
    finally:
        kernel.shutdown()


def run(workspace: Workspace, repetitions: int) -> Dict[str, Any]:
    for config in CONFIGS:
        _start_once(config, workspace)  # warm-up
    samples: Dict[str, list] = {c: [] for c in CONFIGS}
    for index in range(repetitions):
        for config in balanced(CONFIGS, index):
            samples[config].append(_start_once(config, workspace) * 1e3)
    results = {c: median(samples[c]) for c in CONFIGS}
    ratios = {c: ratio(results[c], results["plain"]) for c in GUARDED}
    rows = [{"metric": "start to kernel_info reply, ms", "config": c, "plain": rounded(results["plain"], 1),
             "guarded": rounded(results[c], 1), "ratio": rounded(ratios[c], 3),
             "target": f"<= {TARGET}" if c == "launcher" else "info",
             "met": (ratios[c] is not None and ratios[c] <= TARGET) if c == "launcher" else None}
            for c in GUARDED]
    return {
        "title": "kernel start",
        "unit": "ms",
        "repetitions": repetitions,
        "results": {c: rounded(v, 2) for c, v in results.items()},
        "ratios": {c: rounded(v, 4) for c, v in ratios.items()},
        "samples": {c: [rounded(s, 1) for s in v] for c, v in samples.items()},
        "target": f"launcher / plain <= {TARGET}",
        "met": all_met(rows),
        "rows": rows,
    }
