"""Scenario 8: what the launcher's Landlock domain costs files and parallel work.

Inside each kernel, new ones for each repetition (:func:`.kernels.fresh`; the
launcher's is in its Landlock domain, with the interpreter as its only allowed
program): writing a small file, opening one for reading (Landlock checks
writes when a file is opened), a ``stat`` and removing a file; the first
``joblib.Parallel(n_jobs=2)`` call (loky starts its workers by exec of the
interpreter, which the supervisor lets through: the exec round trip is in it),
and a ``ProcessPoolExecutor`` round trip with two workers.  The extension alone
has no Landlock and refuses every exec: it is timed on files only.  And, in
fresh processes, what any filter and domain add to an open for reading against
what the launcher's add (:mod:`.open_floor`): the floor under the launcher's open.

The files are on tmpfs (``/dev/shm``, one of the domain's writable roots), the
kernel's home only where there is none: what the guard adds to a file operation
is the same on any file system, and a disk adds its own time and its own
stalls.  On the VM these benchmarks ran on, the home's disk took 25 to 900 us
a file as its write budget ran out, more than the guard's whole cost and
different for each configuration's turn: a write there once read 0.89x.
"""

from __future__ import annotations

import os
from typing import Any, Dict

if __package__:
    from . import open_floor
    from .kernels import CONFIGS, GUARDED, Workspace, fresh
    from .stats import all_met, balanced, median, ratio, rounded

#: the extension alone refuses every exec, loky's and the pool's spawn included
PARALLEL_CONFIGS = ("plain", "launcher")
#: metric -> (row label, target ratio)
METRICS = {
    "write": ("write 1 KiB to a new file (tmpfs), us", 1.05),
    "open_read": ("open a file for reading, us", 1.05),
    "stat": ("os.stat() of a file, us", 1.05),
    "remove": ("remove a file (tmpfs), us", 1.05),
    "joblib_first": ("first joblib.Parallel(n_jobs=2) call, ms", 1.2),
    "pool_round_trip": ("ProcessPoolExecutor(2) start, map, shut down, ms", 1.2),
}

CODE = r'''
import os as _os, shutil as _shutil, time as _time, tempfile as _tempfile
def _bench_files(n, where=None, link_test=False):
    # where: a folder on tmpfs, one of the domain's writable roots; else the kernel's
    # home (the workspace's, temporary)
    bench_dir = _tempfile.mkdtemp(prefix="bench-files-", dir=where or _os.path.expanduser("~"))
    try:
        return _bench_files_in(bench_dir, n, link_test)
    finally:
        _shutil.rmtree(bench_dir, ignore_errors=True)
def _link_test_us(paths):
    # the audit filter's link test alone, on the paths the next loop writes or removes
    from kernel_guard.audit._filter import no_links
    t = _time.perf_counter()
    for p in paths:
        no_links(p)
    return (_time.perf_counter() - t) / len(paths) * 1e6
def _bench_files_in(_bench_dir, n, link_test=False):
    perf, join = _time.perf_counter, _os.path.join
    payload = b"x" * 1024
    best = {"write": float("inf"), "open_read": float("inf"), "stat": float("inf"), "remove": float("inf")}
    for rep in range(3):
        if link_test:
            paths = [join(_bench_dir, f"f{rep}-{i}") for i in range(n)]
            best["link_write"] = min(best.get("link_write", float("inf")), _link_test_us(paths))
        t = perf()
        for i in range(n):
            with open(join(_bench_dir, f"f{rep}-{i}"), "wb") as fh:
                fh.write(payload)
        best["write"] = min(best["write"], (perf() - t) / n * 1e6)
        path = join(_bench_dir, f"f{rep}-0")
        t = perf()
        for _ in range(n):
            open(path, "rb").close()
        best["open_read"] = min(best["open_read"], (perf() - t) / n * 1e6)
        t = perf()
        for _ in range(n):
            _os.stat(path)
        best["stat"] = min(best["stat"], (perf() - t) / n * 1e6)
        if link_test:
            best["link_remove"] = min(best.get("link_remove", float("inf")), _link_test_us(paths))
        t = perf()
        for i in range(n):
            _os.remove(join(_bench_dir, f"f{rep}-{i}"))
        best["remove"] = min(best["remove"], (perf() - t) / n * 1e6)
    return best
def _bench_parallel():
    from concurrent.futures import ProcessPoolExecutor
    out = {}
    try:
        from joblib import Parallel, delayed
        from joblib.externals.loky import get_reusable_executor
        get_reusable_executor().shutdown(wait=True)  # the next call starts its workers anew
        t = _time.perf_counter()
        Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4))
        out["joblib_first"] = (_time.perf_counter() - t) * 1e3
    except ImportError:
        pass
    t = _time.perf_counter()
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(abs, range(4)))
    out["pool_round_trip"] = (_time.perf_counter() - t) * 1e3
    return out
'''


#: tmpfs, where a file operation costs what the guard adds and the file system's least
SHM = "/dev/shm"


def run(workspace: Workspace, repetitions: int, quick: bool) -> Dict[str, Any]:
    n = 300 if quick else 1000
    # the kernels run as this process's user, on this machine: one choice for all
    where = SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else None
    samples: Dict[str, Dict[str, list]] = {c: {m: [] for m in METRICS} for c in CONFIGS}
    link_samples: Dict[str, list] = {"link_write": [], "link_remove": []}  # the plain kernel's, info only
    for index in range(repetitions):
        with fresh(workspace, index) as kernels:
            for config, kernel in kernels.items():
                kernel.execute(CODE)
                kernel.value("", f"_bench_files({n // 10}, {where!r})")  # warm-up
                if config in PARALLEL_CONFIGS:
                    kernel.value("", "_bench_parallel()")
            for config in balanced(CONFIGS, index):
                # the plain kernel also times the audit filter's link test alone (its module
                # loads there without adding a hook)
                timed = kernels[config].value("", f"_bench_files({n}, {where!r}, {config == 'plain'})")
                if config in PARALLEL_CONFIGS:
                    timed.update(kernels[config].value("", "_bench_parallel()", timeout=300))
                for metric, value in timed.items():
                    (samples[config][metric] if metric in METRICS else link_samples[metric]).append(value)
    results = {c: {m: median(v) for m, v in s.items() if v} for c, s in samples.items()}
    rows = []
    ratios: Dict[str, Dict[str, Any]] = {}
    for config in GUARDED:
        ratios[config] = {}
        for metric, (label, target) in METRICS.items():
            if metric not in results[config] or metric not in results["plain"]:
                continue
            r = ratio(results[config][metric], results["plain"][metric])
            ratios[config][metric] = rounded(r, 4)
            rows.append({"metric": label, "config": config, "plain": rounded(results["plain"][metric], 2),
                         "guarded": rounded(results[config][metric], 2), "ratio": rounded(r, 3),
                         "target": f"<= {target}", "met": r is not None and r <= target})
    # the least the write and removal rows can read while the audit layer tests paths for links
    link_test = {m[len("link_"):]: median(v) for m, v in link_samples.items() if v}
    for metric, link in link_test.items():
        if metric in results["plain"]:
            plain = results["plain"][metric]
            rows.append({"metric": f"{METRICS[metric][0].split(',')[0]}: the audit layer's link test alone "
                                   "(one openat2 of the path), us; ratio: plain + it vs plain",
                         "config": "floor", "plain": rounded(plain, 2), "guarded": rounded(link, 3),
                         "ratio": rounded(ratio(plain + link, plain), 3), "target": "info", "met": None})
    added = open_floor.floor(repetitions, n * 5)
    for least, what in (("minimal", "a one-rule filter and a write-only domain"),
                        ("nested", "the same nested in the launcher's signal-scope domain")):
        rows.append({"metric": f"open a file for reading: us added, the launcher's filter and domain vs {what}",
                     "config": "floor", "plain": rounded(added[least], 3), "guarded": rounded(added["launcher"], 3),
                     "ratio": rounded(ratio(added["launcher"], added[least]), 3), "target": "info", "met": None})
    return {
        "title": "files and parallel work in the Landlock domain",
        "floor": {v: rounded(x, 3) for v, x in added.items()},
        "link_test": {m: rounded(x, 3) for m, x in link_test.items()},
        "unit": "us per file operation, ms per parallel call",
        "repetitions": repetitions,
        "results": {c: {k: rounded(v, 3) for k, v in r.items()} for c, r in results.items()},
        "ratios": ratios,
        "samples": {c: {m: [rounded(x, 3) for x in v] for m, v in ms.items() if v} for c, ms in samples.items()},
        "target": "file operations <= 1.05x, parallel calls <= 1.2x a plain kernel",
        "files_on": where or "home",
        "met": all_met(rows),
        "rows": rows,
    }
