"""The command line: ``kernel-guard``, for the people who deploy and check the guard.

It reports which layers are active, in this process or, from ``/proc``, in
a running kernel (:mod:`.status`), runs the escape techniques against a
kernelspec and reports what was stopped and recorded (:mod:`.check`,
:mod:`.techniques`), checks that a record of events is whole (:mod:`.verify`), shows a guarded kernel at work (:mod:`.demo`), and
installs the guarded kernelspec and validates seccomp profiles through the
launcher's own modules (:mod:`kernel_guard.launch.kernelspec`,
:mod:`kernel_guard.launch.profiles`).  It guards nothing itself: it
starts, inspects and tries the layers from outside, and a kernel it did not
start or cannot see in ``/proc`` is beyond it.  Each subcommand lives in
the module of its concern and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this module only wires them together, so
``kernel-guard --help`` is the table of contents.

The layers, the path of an event and of an exec, who may write what: docs/architecture.md.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Optional, Sequence

from .._version import __version__

#: subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("kernel_guard.cli.demo", "start a guarded kernel, try shell routes, show what was refused and recorded"),
    "install-kernelspec": ("kernel_guard.launch.kernelspec", "install a kernelspec that runs the guarded launcher"),
    "status": ("kernel_guard.cli.status", "which layers are active, read from the system"),
    "check": ("kernel_guard.cli.check", "run escape techniques against a kernelspec and report"),
    "profile": ("kernel_guard.launch.profiles", "validate or export seccomp profiles"),
    "verify": ("kernel_guard.cli.verify", "check that a record of events is whole: gaps, changes, ends"),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand whose module is present."""
    parser = argparse.ArgumentParser(prog="kernel-guard", description="Hardening for shared Jupyter kernels.")
    parser.add_argument("--version", action="version", version=f"kernel-guard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``kernel-guard`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)
