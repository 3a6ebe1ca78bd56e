"""``kernel-guard status [--pid PID] [--json]``: the report of :mod:`kernel_guard.status`.

Without ``--pid`` it reports on each guarded kernel of this user it finds in
``/proc``; with none, it says so and how to check one kernel.
"""

from __future__ import annotations

import argparse
import json

from ..status import collect_kernels, collect_pid, format_kernels, format_report

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``kernel-guard status [--pid PID] [--json]``."""
    parser.add_argument("--pid", type=_pid, help="report on one running kernel process, from /proc "
                        "(default: every guarded kernel of this user)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _pid(text: str) -> int:
    """``--pid``: a positive process id."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id: give a positive number, as ps shows it")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """Print the status; exit 1 if the process asked about does not exist."""
    if args.pid is None:
        found = collect_kernels()
        print(json.dumps(found, indent=2, default=str) if args.json else format_kernels(found))
        return 0
    report = collect_pid(args.pid)
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 1 if "error" in report else 0
