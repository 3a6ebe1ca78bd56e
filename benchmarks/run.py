"""``python benchmarks/run.py [--quick] [--json FILE]``: what kernel_guard costs.

Runs nine scenarios, each for a plain ipykernel and the guarded
configurations (extension only; launcher with seccomp and supervisor)
interleaved in the same run, prints a table of medians and guarded/plain
ratios against the targets of issue 7, and writes the results as JSON.
See ``benchmarks/README.md`` for what each scenario measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict

# run as a script: make the ``benchmarks`` package importable from the checkout
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import (  # noqa: E402
    audit_hook, cell_latency, kernels, landlock, memory, refusal, report, sinks, startup, steadiness, syscalls,
    workload,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and cells (under a minute)")
    parser.add_argument("--json", metavar="FILE", help="write the results to FILE as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    parser.add_argument("--repetitions", type=int, metavar="N",
                        help="repetitions per scenario (default 7, or 3 with --quick)")
    parser.add_argument("--cells", type=int, metavar="N",
                        help="trivial cells per configuration in the per-cell scenario (default 1000, 100 quick)")
    parser.add_argument("--only", action="append", choices=report.SCENARIOS, metavar="SCENARIO",
                        help=f"run only this scenario (repeatable): {', '.join(report.SCENARIOS)}")
    return parser


def _guarded(results: Dict[str, Any], name: str, fn: Callable[[], Dict[str, Any]]) -> None:
    """Run one scenario; a failure is reported in its place, the others still run."""
    started = time.perf_counter()
    print(f"[{name}] running ...", file=sys.stderr, flush=True)
    try:
        results[name] = fn()
    except Exception as exc:
        traceback.print_exc()
        results[name] = {"title": name, "error": f"{type(exc).__name__}: {exc}", "met": False, "rows": []}
    print(f"[{name}] {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def _compile_guard() -> None:
    """Give kernel_guard's modules their bytecode, as ``pip install`` does.

    A source checkout installed in editable mode has none, and under
    PYTHONDONTWRITEBYTECODE (set on many CI machines) every kernel would
    compile the guard's sources at each start: a cost no installed kernel pays.
    """
    import compileall

    import kernel_guard

    compileall.compile_dir(os.path.dirname(kernel_guard.__file__), quiet=1)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    _compile_guard()
    quick = args.quick
    reps = args.repetitions or (3 if quick else 7)
    cells = args.cells or (100 if quick else 1000)
    wanted = set(args.only or report.SCENARIOS)
    results: Dict[str, Any] = {}
    gauge = steadiness.Gauge()

    def step(name: str, fn: Callable[[], Dict[str, Any]]) -> None:
        gauge.take(name)  # the yardstick first: how fast the machine was as the scenario began
        _guarded(results, name, fn)

    started = time.perf_counter()
    if "audit_hook" in wanted:
        step("audit_hook", lambda: audit_hook.run(quick, reps))
    workspace = kernels.Workspace()
    try:
        if "cell_latency" in wanted:
            blocks = 2 if quick else 12  # 12: each configuration starts in each of the 4 places 3 times
            step("cell_latency", lambda: cell_latency.run(workspace, cells, blocks))
        if "workload" in wanted:
            step("workload", lambda: workload.run(workspace, reps, quick))
        if "syscalls" in wanted:
            step("syscalls", lambda: syscalls.run(workspace, reps, quick))
        if "landlock" in wanted:
            step("landlock", lambda: landlock.run(workspace, reps, quick))
        if wanted & {"refusal", "sinks", "memory"}:
            running = kernels.start_all(workspace)
            try:
                if "refusal" in wanted:
                    step("refusal", lambda: refusal.run(running, reps, quick))
                if "memory" in wanted:  # after the refusals: the supervisor in steady state
                    step("memory", lambda: memory.run(running, reps))
                if "sinks" in wanted:  # last: the flood leaves its mark on the kernel
                    sink_runs = 1 if quick else min(reps, 3)
                    step("sinks", lambda: sinks.run(sink_runs, quick, running["extension"],
                                                    running.get("launcher")))
            finally:
                kernels.stop_all(running)
        if "kernel_start" in wanted:
            step("kernel_start", lambda: startup.run(workspace, reps))
    finally:
        workspace.cleanup()
    gauge.take("end")
    ordered = {name: results[name] for name in report.SCENARIOS if name in results}
    return report.document(ordered, quick, time.perf_counter() - started, gauge.report(ordered))


def main(argv: Any = None) -> int:
    args = build_parser().parse_args(argv)
    doc = run(args)
    report.print_table(doc, markdown=args.markdown)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
