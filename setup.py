"""Build the audit layer's native event filter; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # optional: without a compiler the audit layer falls back to a Python
        # hook (slower per event; `kernel-guard status` says which is active)
        Extension("kernel_guard.audit._filter", ["kernel_guard/audit/_filter.c"], optional=True),
    ],
)
