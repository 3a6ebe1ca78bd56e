"""Benchmarks: what kernel_guard costs, measured against a plain kernel in the same run.

Run ``python benchmarks/run.py [--quick] [--json FILE]``; see ``benchmarks/README.md``.
"""
