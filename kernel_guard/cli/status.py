"""``kernel-guard status [--pid PID] [--json]``: the report of :mod:`kernel_guard.status`."""

from __future__ import annotations

import argparse
import json

from ..status import collect, collect_pid, format_report

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``kernel-guard status [--pid PID] [--json]``."""
    parser.add_argument("--pid", type=int, help="report on a running kernel process, from /proc")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Print the status; exit 1 if the process asked about does not exist."""
    report = collect_pid(args.pid) if args.pid else collect()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 1 if "error" in report else 0
