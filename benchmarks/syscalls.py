"""Scenario 5: cheap system calls under the seccomp filter.

A loop of ``os.getppid()`` and one of ``os.stat(path)`` inside each kernel,
timed there.  Every system call of a filtered process runs the filter's BPF
program first; ``os.stat`` also raises no audit event, so this isolates the
filter (the extension-only kernel has no filter and is a control).
"""

from __future__ import annotations

from typing import Any, Dict

from .kernels import CONFIGS, GUARDED, BenchKernel
from .stats import interleaved, median, ratio, rounded

TARGET = 1.05

CODE = r'''
import os as _os, time as _time
def _bench_syscalls(n):
    getppid, stat, perf = _os.getppid, _os.stat, _time.perf_counter
    best_ppid = best_stat = float("inf")
    for _ in range(5):
        t = perf()
        for _ in range(n):
            getppid()
        best_ppid = min(best_ppid, (perf() - t) / n)
        t = perf()
        for _ in range(n):
            stat("/")
        best_stat = min(best_stat, (perf() - t) / n)
    return best_ppid * 1e9, best_stat * 1e9
'''


def run(kernels: Dict[str, BenchKernel], repetitions: int, quick: bool) -> Dict[str, Any]:
    n = 10_000 if quick else 30_000
    for kernel in kernels.values():
        kernel.execute(CODE)
        kernel.value("", f"_bench_syscalls({n // 10})")  # warm-up
    samples: Dict[str, Dict[str, list]] = {c: {"getppid": [], "stat": []} for c in CONFIGS}
    for index in range(repetitions):
        for config in interleaved(CONFIGS, index):
            ppid, stat = kernels[config].value("", f"_bench_syscalls({n})")
            samples[config]["getppid"].append(ppid)
            samples[config]["stat"].append(stat)
    results = {c: {k: median(v) for k, v in s.items()} for c, s in samples.items()}
    rows = []
    ratios: Dict[str, Dict[str, Any]] = {}
    for c in GUARDED:
        ratios[c] = {}
        for call in ("getppid", "stat"):
            r = ratio(results[c][call], results["plain"][call])
            ratios[c][call] = rounded(r, 4)
            rows.append({"metric": f"os.{call}(), ns/call", "config": c,
                         "plain": rounded(results["plain"][call], 1), "guarded": rounded(results[c][call], 1),
                         "ratio": rounded(r, 3), "target": f"<= {TARGET}", "met": r is not None and r <= TARGET})
    return {
        "title": "syscall overhead under the filter",
        "unit": "ns per call",
        "repetitions": repetitions,
        "results": {c: {k: rounded(v, 2) for k, v in r.items()} for c, r in results.items()},
        "ratios": ratios,
        "target": f"guarded / plain <= {TARGET} for each call",
        "met": all(r["met"] for r in rows),
        "rows": rows,
    }
