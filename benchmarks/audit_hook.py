"""Scenario 1: the audit hook's cost per audited-but-uninteresting event.

Each hook runs in a fresh interpreter, because an audit hook cannot be
removed once added: ``noop`` (a bare Python hook, the floor for any
Python-level hook) and ``guard`` (kernel_guard's enforcing hook); ``none``
is the same process before its hook was added.  Each child times hot loops of events the guard must look at and let pass,
first without a hook, then with its hook (``noop`` or ``guard``), so the
added cost is a difference within one process; the parent runs the two
kinds of child in alternating order and takes medians.  The figure of merit
is ``(guard - none) / (noop - none)``, the guard's added cost over the
no-op hook's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict

if __package__:
    from .stats import balanced, median, rounded

HOOKS = ("noop", "guard")
TARGET = 1.15

#: loop name -> (description, iterations at scale 1.0, judged against the target)
#: Events the guard must look at and let pass.  Where the audited operation is
#: itself slow and noisy (a compile, an open with its syscalls, an import) the
#: event is raised with ``sys.audit`` and the very arguments CPython passes, so
#: the hook's cost is not lost in the operation's jitter; the real operations
#: are timed too and reported as whole-call ratios (guard / no-op hook).
LOOPS = {
    "getframe": ("sys._getframe() (real call)", 2_000_000, True),
    "exec": ("exec() of a compiled no-op (real call)", 1_500_000, True),
    "open_read": ("'open' event as open(path, 'rb') raises it", 2_000_000, True),
    "compile": ("'compile' event as compile() raises it", 2_000_000, True),
    "import": ("'import' event as a first import raises it", 2_000_000, True),
    "import_cached": ("import of a cached module (raises no event: control)", 2_000_000, False),
    "open_read_call": ("open(path, 'rb') then close (real call, whole)", 150_000, False),
    "compile_call": ("compile() of a one-token expression (real call, whole)", 150_000, False),
    "import_fresh_call": ("re-import of a small module (real call, whole)", 10_000, False),
}


def _loops(path: str) -> Dict[str, Callable[[int], None]]:
    code = compile("pass", "<bench>", "exec")
    namespace: dict = {}
    audit = sys.audit
    flags = os.O_RDONLY | os.O_CLOEXEC
    search = (sys.path, sys.meta_path, sys.path_hooks)

    def getframe(n: int) -> None:
        getframe_ = sys._getframe
        for _ in range(n):
            getframe_()

    def exec_(n: int) -> None:
        for _ in range(n):
            exec(code, namespace)

    def open_read(n: int) -> None:
        for _ in range(n):
            audit("open", path, "r", flags)

    def compile_(n: int) -> None:
        for _ in range(n):
            audit("compile", b"1", "<bench>")

    def import_(n: int) -> None:
        for _ in range(n):
            audit("import", "colorsys", None, *search)

    def import_cached(n: int) -> None:
        for _ in range(n):
            import json  # noqa: F401

    def open_read_call(n: int) -> None:
        for _ in range(n):
            open(path, "rb", buffering=0).close()

    def compile_call(n: int) -> None:
        for _ in range(n):
            compile("1", "<bench>", "eval")

    def import_fresh_call(n: int) -> None:
        modules = sys.modules
        for _ in range(n):
            modules.pop("colorsys", None)
            import colorsys  # noqa: F401

    return {"getframe": getframe, "exec": exec_, "open_read": open_read, "compile": compile_,
            "import": import_, "import_cached": import_cached, "open_read_call": open_read_call,
            "compile_call": compile_call, "import_fresh_call": import_fresh_call}


# -- the child -------------------------------------------------------------------

def _time_loops(loops: Dict[str, Callable[[int], None]], scale: float, inner: int) -> Dict[str, float]:
    """ns per iteration of every loop: the best of ``inner`` short runs, loops taking turns.

    CPU time of this thread (``time.thread_time``), not wall time: the hook's cost is
    pure CPU, and a virtual machine's stolen time is then left out.
    """
    sizes = {name: max(50, int(iterations * scale)) for name, (_, iterations, _j) in LOOPS.items()}
    best = {name: float("inf") for name in LOOPS}
    for name, n in sizes.items():
        loops[name](n // 10)  # warm-up
    for _ in range(inner):
        for name, n in sizes.items():
            started = time.thread_time()
            loops[name](n)
            best[name] = min(best[name], (time.thread_time() - started) / n * 1e9)
    return best


def child(variant: str, scale: float, inner: int) -> Dict[str, Dict[str, float]]:
    """Time every loop without a hook, then with ``variant``'s hook, in this one process.

    Both timings in one process: the difference is the hook's cost, free of the
    process-to-process spread (memory layout, hash seed) that is larger than it.
    Returns {"before": {loop: ns}, "after": {loop: ns}} (min of ``inner`` runs).
    """
    import colorsys  # noqa: F401  (cached before the loops, as they expect)

    with tempfile.NamedTemporaryFile(prefix="kg-bench-", delete=False) as fh:
        fh.write(b"x" * 100)
        path = fh.name
    loops = _loops(path)
    # the guard's modules and policy exist in both variants: the same objects in
    # memory (garbage-collection costs), only the hook differs
    from kernel_guard.audit import hook as audit

    audit.build_policy(True)
    try:
        before = _time_loops(loops, scale, inner)
        if variant == "noop":
            def noop_hook(event: str, args: tuple) -> None:
                pass

            sys.addaudithook(noop_hook)
        else:
            audit.install("enforce")
        after = _time_loops(loops, scale, inner)
    finally:
        os.unlink(path)
    return {"before": before, "after": after}


# -- the parent ------------------------------------------------------------------

def run(quick: bool, rounds: int) -> Dict[str, Any]:
    """Run each hook ``rounds`` times in fresh interpreters, alternating their order."""
    scale, inner = (0.005, 15) if quick else (0.01, 31)
    samples: Dict[str, Dict[str, Dict[str, list]]] = {
        v: {"before": {k: [] for k in LOOPS}, "after": {k: [] for k in LOOPS}} for v in HOOKS}
    for index in range(rounds):
        for variant in balanced(HOOKS, index):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", variant,
                                  str(scale), str(inner)], capture_output=True, text=True, check=True,
                                 timeout=300)
            for phase, values in json.loads(out.stdout).items():
                for name, value in values.items():
                    samples[variant][phase][name].append(value)
    return _summarise(samples, rounds)


def _summarise(samples: Dict[str, Dict[str, Dict[str, list]]], rounds: int) -> Dict[str, Any]:
    events: Dict[str, Any] = {}
    rows = []
    for name, (description, _, judged) in LOOPS.items():
        added = {v: median([a - b for a, b in zip(samples[v]["after"][name], samples[v]["before"][name])])
                 for v in HOOKS}
        none = median(samples["noop"]["before"][name] + samples["guard"]["before"][name])
        noop, guard = none + added["noop"], none + added["guard"]
        added_ratio = added["guard"] / added["noop"] if added["noop"] > 0 else None
        whole_ratio = guard / noop if noop > 0 else None
        met = (added_ratio is not None and added_ratio <= TARGET) if judged else None
        events[name] = {"description": description, "none_ns": rounded(none, 1), "noop_ns": rounded(noop, 1),
                        "guard_ns": rounded(guard, 1), "noop_added_ns": rounded(added["noop"], 1),
                        "guard_added_ns": rounded(added["guard"], 1), "added_ratio": rounded(added_ratio, 3),
                        "whole_ratio": rounded(whole_ratio, 3), "judged": judged, "met": met}
        if judged:
            rows.append({"metric": f"{name}: added ns/event", "config": "guard vs no-op hook",
                         "plain": rounded(added["noop"], 1), "guarded": rounded(added["guard"], 1),
                         "ratio": rounded(added_ratio, 3), "target": f"<= {TARGET}", "met": met})
        else:
            rows.append({"metric": f"{name}: ns/call", "config": "guard vs no-op hook",
                         "plain": rounded(noop, 1), "guarded": rounded(guard, 1),
                         "ratio": rounded(whole_ratio, 3), "target": "info", "met": None})
    judged_ratios = [e["added_ratio"] for e in events.values() if e["judged"] and e["added_ratio"] is not None]
    return {
        "title": "audit hook, per event",
        "unit": "ns per event",
        "repetitions": rounds,
        "results": {"none": {n: e["none_ns"] for n, e in events.items()},
                    "noop": {n: e["noop_ns"] for n, e in events.items()},
                    "guard": {n: e["guard_ns"] for n, e in events.items()}},
        "ratios": {"guard": rounded(max(judged_ratios), 3) if judged_ratios else None},
        "events": events,
        "target": f"guard's added cost <= {TARGET}x the no-op hook's, for every judged event kind",
        "met": all(e["met"] for e in events.values() if e["judged"]),
        "rows": rows,
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))))
    else:
        sys.exit("usage: audit_hook.py --child VARIANT SCALE INNER (run benchmarks/run.py instead)")
