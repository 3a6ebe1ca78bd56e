"""Scenario 9: what the launcher's supervisor and its witness cost in memory.

PSS (proportional set size, ``/proc/PID/smaps_rollup``): each page counted
once, shared pages split between the processes that map them, so the
supervisor's and the witness's PSS add up to what the pair costs (pages they
share are not counted twice: a forked witness shares the supervisor's).  Read once the
launcher kernel has started, and again in steady state: after each of
``repetitions`` rounds of a cell that makes 200 raw ``execve`` system calls
(which no audit hook sees: the filter sends each to the supervisor, which
answers and records it, as in the refusal scenario) and 2,000 refused
``os.system`` calls (events the kernel hands to the custodian), once both have
written everything.  The floor row: an idle interpreter started as the
supervisor is (``-I -S``, nothing of ours imported), in the same run, under
any supervisor written in Python.  The kernels' own PSS is shown for scale:
the plain kernel's also with NumPy and pandas imported, as notebooks do.

A shared page's share falls with every process that maps it, so PSS depends on
what else runs: here the benchmark's three kernels and nothing else it started
(no pool workers left from another scenario).  The pair's private pages (USS)
are shown too: what no other process shares, the least one more kernel adds.

The supervisor and its witness are non-dumpable: reading their memory map
takes root (or ``CAP_SYS_PTRACE``); without it the rows say "unreadable".
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from .kernels import CONFIGS, BenchKernel
from .refusal import CODE as RAW_EXECVE
from .stats import median, rounded

#: supervisor + witness, MB of PSS (issue #27)
TARGET_MB = 8.0

ACTIVITY = RAW_EXECVE + r'''
def _bench_memory_activity():
    _bench_raw_execve(200)
    for i in range(2000):
        try:
            _os.system(f"true {i}")
        except Exception:
            pass
'''


def rollup_mb(pid: int) -> Optional[Dict[str, float]]:
    """A process's PSS and private pages (USS) in MB, or None when its memory map
    cannot be read."""
    wanted = {"Pss:": "pss", "Private_Clean:": "private", "Private_Dirty:": "private"}
    sizes = {"pss": 0.0, "private": 0.0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key = wanted.get(line.split(None, 1)[0] if line.strip() else "")
                if key:
                    sizes[key] += int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return sizes


def pss_mb(pid: int) -> Optional[float]:
    """A process's PSS in MB, or None when its memory map cannot be read."""
    sizes = rollup_mb(pid)
    return None if sizes is None else sizes["pss"]


def supervisor_and_witness(kernel_pid: int) -> tuple[int, int]:
    """(supervisor pid, witness pid) of a launcher kernel; 0 for one not found."""
    import psutil

    for child in psutil.Process(kernel_pid).children():
        if "kernel_guard.launch.supervisor" in " ".join(child.cmdline()):
            witnesses = child.children()
            return child.pid, (witnesses[0].pid if witnesses else 0)
    return 0, 0


def _pair(kernel_pid: int) -> Dict[str, Optional[float]]:
    """PSS of the supervisor, of its witness and of both; and both's private pages."""
    supervisor, witness = supervisor_and_witness(kernel_pid)
    sup = rollup_mb(supervisor) if supervisor else None
    wit = rollup_mb(witness) if witness else None
    read = sup is not None and wit is not None
    return {"supervisor": sup and sup["pss"], "witness": wit and wit["pss"],
            "sum": sup["pss"] + wit["pss"] if read else None,
            "private": sup["private"] + wit["private"] if read else None}


def _steady(kernel: BenchKernel, repetitions: int) -> Dict[str, Optional[float]]:
    """The pair's PSS after each round of activity (median over rounds)."""
    kernel.execute(ACTIVITY)
    rounds = []
    for _ in range(repetitions):
        kernel.execute("_bench_memory_activity()")
        time.sleep(2.0)  # the writer's tick and the custodian's checkpoint: what is queued is written
        rounds.append(_pair(kernel.pid))
    return {key: _median_or_none([r[key] for r in rounds]) for key in ("supervisor", "witness", "sum", "private")}


def interpreter_floor() -> Optional[float]:
    """PSS of an idle interpreter started as the supervisor is (``-I -S``, no module of
    ours): the floor under any supervisor written in Python, in this run."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)
        return pss_mb(proc.pid)
    finally:
        proc.communicate(b"", timeout=10)


def _median_or_none(values: list) -> Optional[float]:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def _kernels(kernels: Dict[str, BenchKernel]) -> Dict[str, Optional[float]]:
    """Each kernel's own PSS, and the plain kernel's with NumPy and pandas (when installed)."""
    sizes: Dict[str, Optional[float]] = {c: pss_mb(kernels[c].pid) for c in CONFIGS if c in kernels}
    try:
        kernels["plain"].execute("import numpy, pandas")
        sizes["plain+numpy+pandas"] = pss_mb(kernels["plain"].pid)
    except Exception:
        sizes["plain+numpy+pandas"] = None
    return sizes


def _row(metric: str, value: Optional[float], target: Optional[float] = None,
         plain: Optional[float] = None) -> Dict[str, Any]:
    met = None if target is None else (value is not None and value <= target)
    return {"metric": metric, "config": "launcher", "plain": rounded(plain, 1), "guarded": rounded(value, 2),
            "ratio": None, "target": f"<= {target:g} MB" if target is not None else "info", "met": met}


def run(kernels: Dict[str, BenchKernel], repetitions: int) -> Dict[str, Any]:
    """Run last but the sinks flood (it imports NumPy and pandas into the plain kernel)."""
    launcher = kernels["launcher"]
    started = _pair(launcher.pid)
    steady = _steady(launcher, repetitions)
    floor = interpreter_floor()
    sizes = _kernels(kernels)
    scale = sizes.get("plain")
    # the judged row: rows[4]
    rows = [
        _row("supervisor PSS after start, MB", started["supervisor"]),
        _row("witness PSS after start, MB", started["witness"]),
        _row("supervisor PSS, steady, MB", steady["supervisor"]),
        _row("witness PSS, steady, MB", steady["witness"]),
        _row("supervisor + witness PSS, steady, MB", steady["sum"], TARGET_MB),
        _row("floor: an idle interpreter started as the supervisor is (-I -S), PSS, MB", floor),
        _row("kernel PSS, MB (for scale)", sizes.get("launcher"), plain=scale),
        {**_row("kernel PSS with NumPy and pandas, MB (for scale)", None, plain=sizes.get("plain+numpy+pandas")),
         "config": "plain"},
        # PSS splits the interpreter's and the libraries' pages among every process
        # that maps them, so it falls as more run (measured: 0.5 MB less with loky's
        # two workers up); the private pages are what no other process shares
        _row("supervisor + witness private pages (USS), steady, MB: the least one more kernel adds",
             steady["private"]),
    ]
    return {
        "title": "supervisor and witness memory",
        "unit": "MB",
        "repetitions": repetitions,
        "results": {"launcher": {"after_start": {k: rounded(v, 2) for k, v in started.items()},
                                 "steady": {k: rounded(v, 2) for k, v in steady.items()}}},
        "kernels": {k: rounded(v, 1) for k, v in sizes.items()},
        "interpreter_floor": rounded(floor, 2),
        "ratios": {},
        "target": f"supervisor + witness <= {TARGET_MB:g} MB PSS per kernel, in steady state",
        "met": bool(rows[4]["met"]),
        "rows": rows,
    }
