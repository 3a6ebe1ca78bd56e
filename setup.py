"""Build the native parts (the audit layer's event filter, the redaction gate's scan);
everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # optional: without a compiler the audit layer falls back to a Python
        # hook (slower per event; `kernel-guard status` says which is active)
        Extension("kernel_guard.audit._filter", ["kernel_guard/audit/_filter.c"], optional=True),
        # optional too: without it the redaction gate is the Python one alone (slower per event)
        Extension("kernel_guard.events._gate", ["kernel_guard/events/_gate.c"], optional=True),
    ],
)
