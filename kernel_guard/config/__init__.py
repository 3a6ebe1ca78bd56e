"""Configuration: one ``KernelGuard`` configurable, and where its values may come from.

- :mod:`.settings` — the ``KernelGuard`` traitlets class, its settings grouped
  by what they govern (policy, record, delivery), each validated where it enters;
- :mod:`.sources` — which source may set what: trusted and user-writable files,
  the environment and the command line, and :func:`load_config`, which builds
  the effective settings and reports each one it ignored.

Every malformed value fails closed: it is reported (stderr and a
``config-ignored`` event naming the setting and the fix) and the strict value
kept; one bad value never takes another setting, or another sink, with it.
Where this sits among the layers: docs/architecture.md.
"""

from __future__ import annotations

from .settings import CODE_POLICIES, ENV_PROBLEMS, LOADER_ENV, MODES, KernelGuard
from .sources import ADDITIVE, WEAKENS, _apply, _apply_untrusted, _load_file, load_config, trusted_file

__all__ = ["ADDITIVE", "CODE_POLICIES", "ENV_PROBLEMS", "LOADER_ENV", "MODES", "WEAKENS", "KernelGuard",
           "load_config", "trusted_file"]
