"""``kernel-guard``: the command line.

Each subcommand lives in the module of its concern and exposes
``add_arguments(parser)`` and ``run(args) -> int``; this module only wires
them together, so ``kernel-guard --help`` is the table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ._version import __version__

#: subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("kernel_guard.demo", "start a guarded kernel, try shell routes, show what was refused and recorded"),
    "install-kernelspec": ("kernel_guard.kernelspec", "install a kernelspec that runs the guarded launcher"),
    "status": ("kernel_guard.status", "which layers are active, read from the system"),
    "check": ("kernel_guard.check", "run escape techniques against a kernelspec and report"),
    "profile": ("kernel_guard.profiles", "validate or export seccomp profiles"),
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


if __name__ == "__main__":
    sys.exit(main())
