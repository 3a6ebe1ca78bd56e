"""The exceptions kernel_guard raises.

    KernelGuardError              configuration and set-up problems (never raised in a cell)
    ├── ConfigError               a setting is invalid: names the setting and the fix
    ├── SinkError                 a sink URL cannot be opened
    └── ProfileError              a seccomp profile is invalid: names the file and field
    Refused                       the guard refused something a cell tried
    ├── ShellRefused              an IPython shell route (!cmd, %%bash, %sx, ...)
    ├── GuardTampering            an attempt to unload, reconfigure or patch the guard
    ├── ExecRefused               process creation (also a PermissionError)
    ├── PersistenceRefused        a write to a startup/config path (also a PermissionError)
    ├── EnvironmentRefused        a change to a loader or path variable (also a PermissionError)
    ├── CredentialRefused         reading another process's environment or memory (also a PermissionError)
    ├── SignalRefused             a ctypes route to kill() or pidfds (also a PermissionError)
    └── InterpreterRefused        subinterpreters, foreign audit hooks, forkpty

Refusals carry ``_render_traceback_`` so IPython shows two short lines rather
than a traceback wall.  ``ExecRefused`` and its siblings subclass
``PermissionError`` because callers that probe for tools (``platform``,
``ctypes.util``, matplotlib) already handle an exec that fails with EPERM.
``InterpreterRefused`` deliberately is *not* an ``OSError``: ``pty.fork`` falls
back to ``os.fork`` on any ``OSError`` from ``os.forkpty``, and a refusal must
not be retried around.  Nor is it a ``RuntimeError``, which ``sys.addaudithook``
swallows silently.
"""

from __future__ import annotations

import errno

__all__ = [
    "ConfigError",
    "CredentialRefused",
    "EnvironmentRefused",
    "ExecRefused",
    "GuardTampering",
    "InterpreterRefused",
    "KernelGuardError",
    "PersistenceRefused",
    "ProfileError",
    "Refused",
    "ShellRefused",
    "SignalRefused",
    "SinkError",
]


class KernelGuardError(Exception):
    """Base class for set-up and configuration errors."""


class ConfigError(KernelGuardError, ValueError):
    """A setting is invalid; the message names the setting and the fix."""


class SinkError(KernelGuardError):
    """A sink could not be opened or written; ``kept``: lines of the batch it did keep."""

    def __init__(self, message: str, kept: int = 0) -> None:
        super().__init__(message)
        self.kept = kept


class ProfileError(KernelGuardError, ValueError):
    """A seccomp profile is invalid; the message names the file and the field."""


#: where a refusal points its reader: what each refusal means, and what to do when a library broke
TROUBLESHOOTING = "kernel_guard's docs/troubleshooting.md"


class Refused(Exception):
    """Base class for everything the guard refuses inside a kernel."""

    #: what to do instead; subclasses override
    hint = "Use Python libraries instead, or ask your administrator."

    def __init__(self, what: str, hint: str | None = None, layer: str = "ipython") -> None:
        self.what = what
        self.layer = layer
        if hint is not None:
            self.hint = hint
        super().__init__(f"kernel_guard refused {what}.")

    def _render_traceback_(self) -> list[str]:
        """Two short lines for IPython instead of a traceback: what was refused, then what
        to do, ending with the troubleshooting page."""
        red, reset = "\x1b[31m", "\x1b[0m"
        return [f"{red}{type(self).__name__}{reset}: {self}", f"{self.hint} If a library broke, see {TROUBLESHOOTING}."]


class ShellRefused(Refused, PermissionError):
    """An IPython route to a shell (``!``, ``%%bash``, ``%sx``, aliases, ...)."""

    hint = (
        "Shell commands are disabled in this kernel. Use Python instead "
        "(pathlib, shutil, os.listdir, requests)."
    )


class GuardTampering(Refused):
    """An attempt to unload, reconfigure or patch the guard."""

    hint = "kernel_guard cannot be unloaded or weakened from inside the kernel; ask your administrator to change its settings."


class ExecRefused(Refused, PermissionError):
    """Process creation refused by the audit layer."""

    hint = "This kernel may not start other programs; use a Python library instead."
    #: where the launcher's Landlock domain lets the kernel's own interpreter run
    interpreter_hint = ("Only this kernel's own Python may start here (multiprocessing, joblib); "
                        "for any other program, use a Python library instead.")


class ProgramAbsent(Refused, FileNotFoundError):
    """A program start answered as the system answers a missing program (ENOENT): the
    program does not exist, or a library only probes for it (:mod:`kernel_guard.audit.probes`)."""

    hint = "The program is not available in this kernel; the library that asked goes on without it."

    def __init__(self, what: str, hint: str | None = None, layer: str = "audit", filename: str | None = None) -> None:
        super().__init__(what, hint=hint, layer=layer)
        self.errno, self.strerror, self.filename = errno.ENOENT, "No such file or directory", filename


class PersistenceRefused(Refused, PermissionError):
    """A write to a path that runs code at the next start."""

    hint = ("Start-up files, Jupyter/IPython config, .pth files and the Python environment are read-only here; "
            "save your files in the notebook folder instead.")


class EnvironmentRefused(Refused, PermissionError):
    """A change to a loader or search-path environment variable."""

    hint = ("Loader and search-path variables (LD_*, PATH, PYTHON*) are fixed in this kernel; "
            "to import from a folder, append it to sys.path instead.")


class CredentialRefused(Refused, PermissionError):
    """Reading ``/proc/*/environ`` or ``/proc/*/mem`` (where server tokens live)."""

    hint = "Process environments and memory are not readable from this kernel; use os.environ for this kernel's own variables."


class SignalRefused(Refused, PermissionError):
    """A ctypes look-up of ``kill``, ``pidfd_send_signal`` and kin, which skip the ``os.kill`` event."""

    hint = "Use os.kill to signal a process (it is checked); kill() and pidfd functions through ctypes are refused."


class InterpreterRefused(Refused):
    """Subinterpreters, foreign audit hooks and pseudo-terminal forks."""

    hint = "This interpreter feature is disabled in this kernel; run your code in the kernel itself, or ask your administrator."
