"""Scenario 6: how long a refused program start takes to fail.

``subprocess.run(["true"])`` in the guarded kernels is refused by the audit
hook at the ``subprocess.Popen`` event, before any fork: the time includes
building and queueing the ``exec-denied`` event.  In the plain kernel the
same call runs the program (fork, exec, wait): shown for scale, not judged.

In the launcher kernel a raw ``execve`` system call (which no audit hook
sees) is sent by the seccomp filter to the supervisor, which reads the
path from the kernel's memory, records it with its own sinks and answers:
that round trip is the seccomp layer's refusal latency.  The path does not
exist (a program that exists would replace the plain kernel), so the
supervisor answers ENOENT as the system would (``exec-not-found``), after the
same round trip; in the unfiltered kernels the call fails with ENOENT at once
(shown for scale).
"""

from __future__ import annotations

from typing import Any, Dict

from .kernels import CONFIGS, GUARDED, BenchKernel
from .stats import all_met, balanced, median, rounded

TARGET_MS = 1.0

CODE = r'''
import ctypes as _ctypes, mmap as _mmap, os as _os, platform as _platform, subprocess as _subprocess, time as _time
# a six-argument raw system call (x86_64 / aarch64 machine code), as kernel_guard.cli.techniques builds it
_bench_stub = {
    "x86_64": bytes.fromhex("4889f84889f74889d64889ca4d89c24d89c80f05c3"),
    "aarch64": bytes.fromhex("e80300aae00301aae10302aae20303aae30304aae40305aa010000d4c0035fd6"),
}.get(_platform.machine())
_bench_raw = None
if _bench_stub:
    _bench_mem = _mmap.mmap(-1, _mmap.PAGESIZE, prot=_mmap.PROT_READ | _mmap.PROT_WRITE | _mmap.PROT_EXEC)
    _bench_mem.write(_bench_stub)
    _bench_raw = _ctypes.CFUNCTYPE(_ctypes.c_long, *[_ctypes.c_long] * 6)(
        _ctypes.addressof(_ctypes.c_char.from_buffer(_bench_mem)))
_bench_nr = {"x86_64": 59, "aarch64": 221}.get(_platform.machine())
_bench_path = _ctypes.c_char_p(b"/nonexistent/kernel-guard-bench")
_bench_argv = (_ctypes.c_char_p * 2)(b"kernel-guard-bench", None)

def _bench_refusals(n):
    times, outcome = [], "ran"
    for _ in range(n):
        t = _time.perf_counter()
        try:
            _subprocess.run(["true"])
        except PermissionError:
            outcome = "refused"
        times.append(_time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3, outcome

def _bench_raw_execve(n):
    if _bench_raw is None:
        return None, "unsupported machine"
    times, result = [], 0
    for _ in range(n):
        t = _time.perf_counter()
        result = _bench_raw(_bench_nr, _ctypes.cast(_bench_path, _ctypes.c_void_p).value,
                            _ctypes.cast(_bench_argv, _ctypes.c_void_p).value, 0, 0, 0)
        times.append(_time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3, {-1: "EPERM", -2: "ENOENT", -38: "ENOSYS"}.get(result, str(result))
'''


def run(kernels: Dict[str, BenchKernel], repetitions: int, quick: bool) -> Dict[str, Any]:
    n = 20 if quick else 100
    for kernel in kernels.values():
        kernel.execute(CODE)
        kernel.value("", "_bench_refusals(5)")
        kernel.value("", "_bench_raw_execve(5)")
    samples: Dict[str, Dict[str, list]] = {c: {"subprocess": [], "execve": []} for c in CONFIGS}
    outcomes: Dict[str, Dict[str, str]] = {c: {} for c in CONFIGS}
    for index in range(repetitions):
        for config in balanced(CONFIGS, index):
            ms, outcome = kernels[config].value("", f"_bench_refusals({n})")
            samples[config]["subprocess"].append(ms)
            outcomes[config]["subprocess"] = outcome
            ms, outcome = kernels[config].value("", f"_bench_raw_execve({n})")
            if ms is not None:
                samples[config]["execve"].append(ms)
            outcomes[config]["execve"] = outcome
    results = {c: {k: median(v) if v else None for k, v in s.items()} for c, s in samples.items()}
    rows = []
    for c in GUARDED:
        value = results[c]["subprocess"]
        refused = outcomes[c]["subprocess"] == "refused"
        rows.append({"metric": "refused subprocess.run, ms (audit layer)", "config": c,
                     "plain": rounded(results["plain"]["subprocess"], 3), "guarded": rounded(value, 3),
                     "ratio": None, "target": f"<= {TARGET_MS} ms", "met": refused and value <= TARGET_MS})
    launcher_execve = results["launcher"]["execve"]
    if launcher_execve is not None:
        refused = outcomes["launcher"]["execve"] in ("EPERM", "ENOENT")  # the supervisor answered
        rows.append({"metric": "refused raw execve, ms (seccomp + supervisor)", "config": "launcher",
                     "plain": rounded(results["plain"]["execve"], 4), "guarded": rounded(launcher_execve, 3),
                     "ratio": None, "target": f"<= {TARGET_MS} ms", "met": refused and launcher_execve <= TARGET_MS})
    return {
        "title": "refusal latency",
        "unit": "ms",
        "repetitions": repetitions,
        "calls_per_repetition": n,
        "results": {c: {k: rounded(v, 4) for k, v in r.items()} for c, r in results.items()},
        "ratios": {},
        "outcomes": outcomes,
        "target": f"median <= {TARGET_MS} ms from the call to the exception (or EPERM)",
        "met": all_met(rows),
        "rows": rows,
    }
