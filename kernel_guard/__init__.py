"""kernel_guard: a layered hardening guard for shared Jupyter kernels.

``%load_ext kernel_guard`` (or ``c.InteractiveShellApp.extensions =
["kernel_guard"]``) installs the IPython layer, the audit hook and execution
events in a running kernel; ``python -m kernel_guard.launch`` adds the
seccomp filter and the exec supervisor before the kernel starts.

Each layer is a folder: :mod:`.ipython`, :mod:`.audit`, :mod:`.launch`,
:mod:`.events`, :mod:`.server` (the jupyter_server extension) and :mod:`.cli`
(the ``kernel-guard`` command); the modules beside them are shared.

The layers, the path of an event and of an exec, who may write what: docs/architecture.md.
"""

from __future__ import annotations

from ._version import __version__

# for the type checker, the public names as imports; at run time, see _LAZY
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import KernelGuard
    from .events.schema import Event, make_event, validate_event
    from .exceptions import (
        ConfigError,
        CredentialRefused,
        EnvironmentRefused,
        ExecRefused,
        GuardTampering,
        InterpreterRefused,
        KernelGuardError,
        PersistenceRefused,
        ProfileError,
        Refused,
        ShellRefused,
        SignalRefused,
        SinkError,
    )

# The public names are looked up when first used (PEP 562): the supervisor and
# its witness are started with ``python -m kernel_guard.launch.supervisor``, which
# imports this package first, and must not pay for traitlets and the settings
# they never use (a few MB in every kernel's supervisor, docs/launcher.md).
_LAZY = {
    "KernelGuard": ".config",
    "Event": ".events.schema",
    "make_event": ".events.schema",
    "validate_event": ".events.schema",
    **{name: ".exceptions" for name in (
        "ConfigError", "CredentialRefused", "EnvironmentRefused", "ExecRefused", "GuardTampering",
        "InterpreterRefused", "KernelGuardError", "PersistenceRefused", "ProfileError", "Refused",
        "ShellRefused", "SignalRefused", "SinkError")},
}

__all__ = [
    "ConfigError",
    "CredentialRefused",
    "EnvironmentRefused",
    "Event",
    "ExecRefused",
    "GuardTampering",
    "InterpreterRefused",
    "KernelGuard",
    "KernelGuardError",
    "PersistenceRefused",
    "ProfileError",
    "Refused",
    "ShellRefused",
    "SignalRefused",
    "SinkError",
    "__version__",
    "load_ipython_extension",
    "make_event",
    "unload_ipython_extension",
    "validate_event",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kernel_guard' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The server layer, for a deployment's ``jpserver_extensions`` (``{"kernel_guard.server": true}``)."""
    return [{"module": "kernel_guard.server"}]


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext kernel_guard``: guard this shell (idempotent)."""
    from .guard import guard_shell

    guard_shell(ip)


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext kernel_guard`` is refused: the guard stays."""
    from .ipython.shell import refuse

    refuse("%unload_ext", "kernel_guard", tampering=True)
