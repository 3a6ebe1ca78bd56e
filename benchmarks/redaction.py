"""Redaction: microseconds per event for the whole catalogue, on the writer's path.

    python benchmarks/redaction.py [--events 20000] [--repetitions 7] [--json FILE]

Runs the ``Redact`` processor exactly as the runtime builds it (the catalogue,
the environment's secret values as literals, no operator patterns) on fresh
copies of events:

* ``cell``: a ``cell-executed`` event with ordinary code (typical);
* ``exec-denied``: an ordinary refused command in the reason, the command line
  and argv (typical);
* ``candidate``: the same with ``curl -u user:password``, and a cell assigning a
  token: the gate lets the detectors run (what a secret costs);
* ``cell beyond ASCII``: the ordinary cell with an accented word and an emoji in
  a comment (the compiled scan leaves such text to the Python gate).

Building the events is timed apart and subtracted.  Target: typical events
cost at most 5 us each; the judged figure is the larger of the two.
Absolute times vary between machines: compare the ratio to the ``floor``
(the processor's walk over the fields with no detector at all).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernel_guard.events.processors import Redact, _user_texts  # noqa: E402
from kernel_guard.events.schema import make_event  # noqa: E402

TARGET_US = 5.0

CODE = ("df = pd.read_csv('data/sales.csv')\nsummary = df.groupby('region').revenue.sum()\n"
        "summary.plot(kind='bar')")
COMMAND = "ls -la /home/jovyan/work/data"
ACCENTED_CODE = CODE + "  # chiffre d'affaires par r\u00e9gion \U0001f4c8"
SECRET_CODE = "token = '" + "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2 + "'\nclient = Github(token)"
SECRET_COMMAND = "curl -u alice:" + "Curl-Passw0rd" + " https://api.example.org/x"


def cell(code: str = CODE) -> dict:
    return make_event("cell-executed", outcome="success", layer="ipython", code=code, code_sha256="0" * 64,
                      code_length=len(code), execution_count=3, silent=False, status="ok")


def denied(command: str = COMMAND) -> dict:
    return make_event("exec-denied", outcome="failure", layer="audit", technique="os.system",
                      reason=f"refused starting a program (os.system: {command})",
                      process={"executable": "/bin/sh", "args": ["/bin/sh", "-c", command],
                               "command_line": f"/bin/sh -c {command}"})


KINDS: Dict[str, Callable[[], dict]] = {
    "cell": cell, "exec-denied": denied,
    "candidate cell": lambda: cell(SECRET_CODE), "candidate exec-denied": lambda: denied(SECRET_COMMAND),
    "cell beyond ASCII": lambda: cell(ACCENTED_CODE)}


def _per_event(process: Callable[[dict], object], build: Callable[[], dict], n: int) -> float:
    events = [build() for _ in range(n)]
    started = time.perf_counter()
    for event in events:
        process(event)
    return (time.perf_counter() - started) / n * 1e6


def measure(n: int, repetitions: int) -> Dict[str, Dict[str, float]]:
    redact = Redact()
    floor = Redact()

    def walk_only(event: dict) -> object:  # the fields are found and joined, nothing is looked for
        return "\n".join(_user_texts(event))

    results: Dict[str, Dict[str, float]] = {}
    for name, build in KINDS.items():
        runs: List[float] = []
        walks: List[float] = []
        for _ in range(repetitions):
            runs.append(_per_event(redact, build, n))
            walks.append(_per_event(walk_only, build, n))
        results[name] = {"us": round(statistics.median(runs), 2), "floor_us": round(statistics.median(walks), 2)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    results = measure(args.events, args.repetitions)
    typical = max(results["cell"]["us"], results["exec-denied"]["us"])
    print(f"{'event':<24}{'us/event':>10}{'floor us':>10}{'ratio':>8}")
    for name, row in results.items():
        print(f"{name:<24}{row['us']:>10.2f}{row['floor_us']:>10.2f}{row['us'] / max(row['floor_us'], 1e-9):>8.1f}")
    met = typical <= TARGET_US
    print(f"typical event: {typical:.2f} us (target <= {TARGET_US} us): {'met' if met else 'NOT met'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"results": results, "typical_us": typical, "target_us": TARGET_US, "met": met}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
