"""Build the native parts (the audit layer's event filter, the redaction gate's scan,
the supervisor's witness program); everything else is in pyproject.toml."""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: the witness: a program of its own (not a module), next to the launcher's modules
WITNESS_SOURCE = "kernel_guard/launch/witness.c"
WITNESS_PROGRAM = "kernel-guard-witness"


class BuildNativeParts(build_ext):
    """The extension modules, then the witness program with the same compiler.

    Optional like the modules: without it the supervisor forks a Python witness
    (a few MB more per kernel; ``kernel-guard status`` and the benchmarks say which)."""

    def run(self) -> None:
        super().run()
        try:
            self._link_witness()
        except Exception as exc:  # noqa: BLE001 - CompileError, LinkError, OSError: all optional
            self.warn(f"the witness program was not built ({exc}); the supervisor will fork a Python witness")

    def _witness_path(self) -> str:
        # next to the launcher's modules, in the build tree or (editable, inplace) the source tree
        folder = os.path.dirname(self.get_ext_fullpath("kernel_guard.launch.witness_program"))
        return os.path.join(folder, WITNESS_PROGRAM)

    def _link_witness(self) -> None:
        target = self._witness_path()
        objects = self.compiler.compile([WITNESS_SOURCE], output_dir=self.build_temp,
                                        extra_postargs=["-O2", "-Wall"])
        self.compiler.link_executable(objects, os.path.basename(target), output_dir=os.path.dirname(target))

    def get_outputs(self) -> list:
        return [*super().get_outputs(), self._witness_path()]


setup(
    ext_modules=[
        # optional: without a compiler the audit layer falls back to a Python
        # hook (slower per event; `kernel-guard status` says which is active)
        Extension("kernel_guard.audit._filter", ["kernel_guard/audit/_filter.c"], optional=True),
        # optional too: without it the redaction gate is the Python one alone (slower per event)
        Extension("kernel_guard.events._gate", ["kernel_guard/events/_gate.c"], optional=True),
        # optional: the aggregation key of every emitted event; without it, aggregate._key in Python
        Extension("kernel_guard.events._aggregate_key", ["kernel_guard/events/_aggregate_key.c"], optional=True),
        # optional: make_event, its timestamp and id; without them, schema.py's Python ones
        Extension("kernel_guard.events._event", ["kernel_guard/events/_event.c"], optional=True),
        # optional: the context every event carries (AddContext's call); without it, in Python
        Extension("kernel_guard.events._context", ["kernel_guard/events/_context.c"], optional=True),
        # optional: the writer's chain (SHA-256 and the splice) for a run of events with the
        # interpreter's lock released, over OpenSSL (Debian: libssl-dev); without it, per event in Python
        Extension("kernel_guard.events._chain", ["kernel_guard/events/_chain.c"], libraries=["crypto"],
                  optional=True),
        # optional: the supervisor's prctl(2) and seccomp(2) without ctypes (0.5 MB of its memory)
        Extension("kernel_guard.launch._hardening", ["kernel_guard/launch/_hardening.c"], optional=True),
        # optional: the custodian's line parser, over simdjson (Debian: libsimdjson-dev); without
        # it the supervisor parses with msgspec (3 MB more of its memory) or the standard library
        Extension("kernel_guard.launch._linecheck", ["kernel_guard/launch/_linecheck.cpp"], language="c++",
                  libraries=["simdjson"], extra_compile_args=["-std=c++17"], optional=True),
    ],
    cmdclass={"build_ext": BuildNativeParts},
)
