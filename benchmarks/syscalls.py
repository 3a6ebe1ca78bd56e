"""Scenario 5: cheap system calls under the seccomp filter.

A loop of ``os.getppid()`` and one of ``os.stat(path)`` inside each kernel,
timed there, in new kernels for each repetition (:func:`.kernels.fresh`).  Every
system call of a filtered process enters the kernel by the slower path that
consults the filter (for these two, its constant-action cache answers without
running the BPF program); neither raises an audit event, so this isolates the
filter (the extension-only kernel has no filter and is a control).

The floor: any seccomp filter at all puts every system call on the kernel's
slower entry path, however few its rules.  Fresh processes time the loops,
load either a one-rule filter (``minimal``: allow all, refuse ``kexec_load``)
or kernel_guard's default profile (``guard``), and time them again; the
ratio of the added nanoseconds says what the profile costs beyond having a
filter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

if __package__:
    from .kernels import CONFIGS, GUARDED, Workspace, fresh
    from .stats import all_met, balanced, median, ratio, rounded

FILTERS = ("minimal", "guard")

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


def _time_calls(n: int) -> Dict[str, float]:
    """Best-of-5 ns per call of os.getppid() and os.stat("/") in this process."""
    best = {"getppid": float("inf"), "stat": float("inf")}
    for _ in range(5):
        for name, call, arg in (("getppid", os.getppid, None), ("stat", os.stat, "/")):
            t = time.perf_counter()
            if arg is None:
                for _ in range(n):
                    call()
            else:
                for _ in range(n):
                    call(arg)
            best[name] = min(best[name], (time.perf_counter() - t) / n * 1e9)
    return best


def child(variant: str, n: int) -> Dict[str, Dict[str, float]]:
    """Time the calls, load ``variant``'s filter, time them again (one process)."""
    from kernel_guard.launch import profiles, seccomp_filter

    before = _time_calls(n)
    seccomp_filter.set_no_new_privs()
    if variant == "minimal":
        sc = seccomp_filter.bindings()
        filt = sc.SyscallFilter(sc.ALLOW)
        filt.add_rule(sc.ERRNO(1), "kexec_load")
        filt.load()
    else:
        # the launcher's profile, listener included (nothing here execs, so nothing waits on it)
        seccomp_filter.load(profiles.load_profile("default"))
    return {"before": before, "after": _time_calls(n)}


def floor(repetitions: int, n: int) -> Dict[str, Dict[str, float]]:
    """Median ns added per call by each filter, children alternating."""
    added: Dict[str, Dict[str, list]] = {v: {"getppid": [], "stat": []} for v in FILTERS}
    for index in range(repetitions):
        for variant in balanced(FILTERS, index):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", variant, str(n)],
                                 capture_output=True, text=True, check=True, timeout=300)
            timed = json.loads(out.stdout)
            for call in ("getppid", "stat"):
                added[variant][call].append(timed["after"][call] - timed["before"][call])
    return {v: {call: median(values) for call, values in calls.items()} for v, calls in added.items()}


def run(workspace: Workspace, repetitions: int, quick: bool) -> Dict[str, Any]:
    n = 10_000 if quick else 30_000
    samples: Dict[str, Dict[str, list]] = {c: {"getppid": [], "stat": []} for c in CONFIGS}
    for index in range(repetitions):
        with fresh(workspace, index) as kernels:
            for kernel in kernels.values():
                kernel.execute(CODE)
                kernel.value("", f"_bench_syscalls({n // 10})")  # warm-up
            for config in balanced(CONFIGS, index):
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
    added = floor(repetitions, n)
    for call in ("getppid", "stat"):
        r = ratio(added["guard"][call], added["minimal"][call])
        rows.append({"metric": f"os.{call}(): ns added, default profile vs one-rule filter", "config": "floor",
                     "plain": rounded(added["minimal"][call], 1), "guarded": rounded(added["guard"][call], 1),
                     "ratio": rounded(r, 3), "target": "info", "met": None})
    return {
        "title": "syscall overhead under the filter",
        "floor": {v: {k: rounded(x, 2) for k, x in calls.items()} for v, calls in added.items()},
        "unit": "ns per call",
        "repetitions": repetitions,
        "results": {c: {k: rounded(v, 2) for k, v in r.items()} for c, r in results.items()},
        "ratios": ratios,
        "samples": {c: {k: [rounded(x, 1) for x in v] for k, v in calls.items()} for c, calls in samples.items()},
        "target": f"guarded / plain <= {TARGET} for each call",
        "met": all_met(rows),
        "rows": rows,
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
    else:
        sys.exit("usage: syscalls.py --child minimal|guard N (run benchmarks/run.py instead)")
