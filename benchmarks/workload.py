"""Scenario 2: a data-science cell mix through a real kernel, timed inside the kernel.

The cell imports the scientific stack it finds (NumPy; pandas when installed),
computes with NumPy, groups records (pandas, or plain Python), logs
thousands of records (each ``logging`` call raises a ``sys._getframe``
event), and writes and reads back a few hundred files (``open`` events).
The time is taken inside the kernel around the work, so it is what the
user waits for, without the messaging round trip (scenario 3 covers that).

Every repetition starts a fresh kernel of each configuration: two identical
kernels on one machine differ in speed by several percent for their whole
life (memory layout), so one kernel per configuration would measure that,
not the guard; the median over fresh kernels averages it out.
"""

from __future__ import annotations

from typing import Any, Dict

from .kernels import CONFIGS, GUARDED, Workspace, start_all, stop_all
from .stats import interleaved, median, ratio, rounded

TARGET = 1.03

SETUP = r'''
import logging as _bench_logging, os as _bench_os, tempfile as _bench_tempfile, time as _bench_time
_bench_dir = _bench_tempfile.mkdtemp(prefix="kg-bench-work-")
_bench_log = _bench_logging.getLogger("kernel_guard.bench.workload")
_bench_log.propagate = False
_bench_log.handlers[:] = [_bench_logging.FileHandler(_bench_os.path.join(_bench_dir, "log.txt"))]
_bench_log.setLevel(_bench_logging.INFO)
'''

# One cell; SCALE is replaced by a number (smaller under --quick).
WORKLOAD = r'''
_bench_t0 = _bench_time.perf_counter()
import json, random, statistics
try:
    import numpy as np
except ImportError:
    np = None
try:
    import pandas as pd
except ImportError:
    pd = None
_rng = random.Random(7)
_n = int(40_000 * SCALE)
_rows = [{"group": f"g{_rng.randrange(50)}", "value": _rng.random(), "count": _rng.randrange(10)} for _ in range(_n)]
if np is not None:
    _a = np.random.default_rng(7).standard_normal((int(200 * SCALE ** 0.5), 200))
    _b = _a @ _a.T
    _stats = (float(_b.trace()), float(np.sort(_a, axis=None)[len(_a) // 2]), float(np.linalg.norm(_a)))
if pd is not None:
    _summary = pd.DataFrame(_rows).groupby("group").agg(mean=("value", "mean"), total=("count", "sum"))
else:
    _groups = {}
    for _row in _rows:
        _groups.setdefault(_row["group"], []).append(_row)
    _summary = {g: (statistics.fmean(r["value"] for r in rs), sum(r["count"] for r in rs)) for g, rs in _groups.items()}
for _i in range(int(3_000 * SCALE)):
    _bench_log.info("processed batch %d of %s", _i, "run")
for _i in range(int(200 * SCALE)):
    with open(_bench_os.path.join(_bench_dir, f"part-{_i}.json"), "w") as _fh:
        json.dump(_rows[_i], _fh)
_back = []
for _i in range(int(200 * SCALE)):
    with open(_bench_os.path.join(_bench_dir, f"part-{_i}.json")) as _fh:
        _back.append(json.load(_fh))
_bench_elapsed = _bench_time.perf_counter() - _bench_t0
'''


def run(workspace: Workspace, repetitions: int, quick: bool) -> Dict[str, Any]:
    scale = 0.5 if quick else 1.0
    cell = WORKLOAD.replace("SCALE", repr(scale))
    samples: Dict[str, list] = {c: [] for c in CONFIGS}
    for index in range(repetitions):
        kernels = start_all(workspace, tuple(interleaved(CONFIGS, index)))
        try:
            for kernel in kernels.values():
                kernel.execute(SETUP)
                kernel.execute(cell)  # warm-up: first imports, caches
            for config in interleaved(CONFIGS, index):
                samples[config].append(kernels[config].value(cell, "_bench_elapsed"))
        finally:
            stop_all(kernels)
    results = {c: median(samples[c]) * 1e3 for c in CONFIGS}
    ratios = {c: ratio(results[c], results["plain"]) for c in GUARDED}
    rows = [{"metric": "cell mix, ms (median)", "config": c, "plain": rounded(results["plain"], 2),
             "guarded": rounded(results[c], 2), "ratio": rounded(ratios[c], 3), "target": f"<= {TARGET}",
             "met": ratios[c] is not None and ratios[c] <= TARGET} for c in GUARDED]
    return {
        "title": "realistic workload",
        "unit": "ms",
        "repetitions": repetitions,
        "results": {c: rounded(v, 3) for c, v in results.items()},
        "ratios": {c: rounded(v, 4) for c, v in ratios.items()},
        "samples": {c: [rounded(s * 1e3, 3) for s in v] for c, v in samples.items()},
        "target": f"guarded / plain <= {TARGET}",
        "met": all(r["met"] for r in rows),
        "rows": rows,
    }
