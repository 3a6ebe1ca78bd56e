"""The audit layer: a ``sys.addaudithook`` hook over process creation and friends.

CPython raises an audit event before it starts a process (``subprocess.Popen``,
``os.system``, ``os.exec``, ``os.posix_spawn``, ``pty.spawn``), loads a native
library, changes the environment, opens a file, or creates a subinterpreter.
This hook records those that matter and, in ``enforce`` mode, refuses them by
raising a :class:`~kernel_guard.exceptions.Refused` subclass, which aborts the
operation.

What it cannot see (INTERNALS.md has the list): ``_posixsubprocess.fork_exec``
called directly, foreign calls through ctypes, native library constructors,
anything in a subinterpreter that was allowed to start.  The seccomp layer of
the launcher exists for those.

Speed: the hook is added through the native filter (``_filter.c``, imported
here as ``_audit_filter``) when it is built, a runtime hook that calls the
Python policy only for the events in ``INTERESTING_EVENTS`` (and not for
plain file reads, nor for writes, removals, renames or mode changes of
ordinary places: a path that is no persistence path as written, for a removal
or rename no folder holding one either, and holds no symbolic link, which the
filter asks the kernel), so the rest of the interpreter's events cost a few
string compares instead of a Python call.
Without it (no compiler at install time) the same policy runs as a Python
hook; ``filter_kind()`` says which.

The layer's parts: this module decides which check an event gets and installs
the hook; :mod:`.processes` (starting programs), :mod:`.persistence` (writes
that would run at the next start), :mod:`.recording` (events and refusals).
See docs/architecture.md.

Tamper resistance, honestly: hooks cannot be removed, and the decision data is
an immutable tuple bound to the hook through default arguments, whose
replacement (``__defaults__``, ``__code__``) raises an audit event the hook
refuses.  Code that rewrites interpreter memory through ctypes, or replaces
this module's globals, can still defeat an in-process hook; the seccomp filter
cannot be undone from inside.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable, Iterable, Tuple

from ..exceptions import (
    EnvironmentRefused,
    ExecRefused,
    GuardTampering,
    InterpreterRefused,
    SignalRefused,
)
from . import dirfd, libc_symbols, probes, processes
from .persistence import (_CHANGE_EVENTS, _MOVE_EVENTS, _check_change, _check_move, _check_open, _is_proc_secret,
                          _move_ends, _refuse_path, _resolve, default_persistence, glob_pattern, is_persistence_path,
                          persistence_starts, replaces_persistence, settled_ends)
from .processes import (_EXEC_EVENTS, EXEC_SYMBOLS, SIGNAL_SYMBOLS, _allowed, _check_dlopen, _guard_fork_exec,
                        _process_fields, refuse_exec)
from .recording import _record, _refuse_or_record, _State, launcher_setup

try:
    from . import _filter as _audit_filter
except ImportError:  # built without a C compiler: the Python hook filters for itself
    _audit_filter = None

__all__ = [
    "EXEC_SYMBOLS",
    "INTERESTING_EVENTS",
    "SIGNAL_SYMBOLS",
    "build_policy",
    "enforcing",
    "filter_kind",
    "install",
    "installed_mode",
    "is_persistence_path",
    "launcher_setup",
]

#: Every event the hook looks at; all others leave after one membership test.
INTERESTING_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.forkpty",
    "pty.spawn", "os.kill", "os.killpg",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle",
    "os.putenv", "os.unsetenv",
    "open", "os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree",
    "os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.chown", "os.utime", "os.truncate",
    "sys.addaudithook", "cpython.PyInterpreterState_New",
    "object.__setattr__", "object.__delattr__",
})

_SELF_PROTECTION = frozenset({"object.__setattr__", "object.__delattr__"})


_SYMBOL_EVENTS = frozenset({"ctypes.dlsym", "ctypes.dlsym/handle"})


#: variables that change what a program loads or finds (refused in enforce mode)
PROTECTED_ENV = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_BIND_NOW", "LD_DEBUG", "LD_PROFILE",
    "GCONV_PATH", "PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
    "PYTHONINSPECT", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "IPYTHONDIR", "IPYTHON_DIR",
    "JUPYTER_CONFIG_DIR", "JUPYTER_CONFIG_PATH", "JUPYTER_PATH", "JUPYTER_DATA_DIR",
    "BASH_ENV", "ENV", "PERL5LIB", "PERL5OPT", "RUBYOPT", "NODE_OPTIONS",
})


# Policy tuple layout (a plain tuple: immutable, no replaceable descriptors).
# (enforce, persist_dirs, persist_globs, persist_files, protected_env,
#  protected_pids, protected_ids, allowed_programs, exec_symbols, signal_symbols,
#  persist_starts)
Policy = Tuple[bool, Tuple[str, ...], re.Pattern, frozenset, frozenset, frozenset, frozenset, frozenset,
               frozenset, frozenset, Tuple[str, ...]]


# -- persistence paths -------------------------------------------------------


# -- recording ---------------------------------------------------------------


# -- the decision ------------------------------------------------------------

def _decide(event: str, args: tuple, policy: Policy) -> None:
    """Record and, when enforcing, refuse one interesting event."""
    (enforce, persist_dirs, persist_globs, persist_files, protected_env, protected_pids, protected_ids,
     allowed_programs, exec_symbols, signal_symbols, _starts) = policy
    if not enforce and _State.quiet_record_hook and event not in _SELF_PROTECTION:
        # a record-only hook that an enforcing one has taken over from (the
        # launcher's first hook) would record nothing: it checks nothing but
        # attempts to rewire itself, which only it can refuse
        return
    if event in _EXEC_EVENTS:
        summary, proc = _process_fields(event, args)
        if allowed_programs and _allowed(proc["executable"], allowed_programs):
            return  # the launcher's Landlock domain decides; the supervisor records it
        refuse_exec(enforce, event, summary, proc, bool(allowed_programs))
    elif event == "os.forkpty":
        # not an OSError: pty.fork would fall back to os.fork and exec anyway
        _refuse_or_record(enforce, InterpreterRefused, "exec-denied", "exec-attempt", event,
                          "a pseudo-terminal child (os.forkpty, used by pty/pexpect)")
    elif event == "open":
        _check_open(args, enforce, persist_dirs, persist_globs, persist_files)
    elif event in _MOVE_EVENTS:
        _check_move(event, args, enforce, persist_dirs, persist_globs, persist_files)
    elif event in _CHANGE_EVENTS:
        _check_change(event, args, enforce, persist_dirs, persist_globs, persist_files)
    elif event in ("os.putenv", "os.unsetenv"):
        name = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else str(args[0])
        if name in protected_env:
            _refuse_or_record(enforce, EnvironmentRefused, "env-denied", "env-change", event,
                              f"changing ${name}", target=name)
    elif event in _SYMBOL_EVENTS:
        # ctypes.dlsym: a CDLL attribute or item; ctypes.dlsym/handle: _ctypes.dlsym(handle, name)
        name = os.fsdecode(args[1]) if isinstance(args[1], (str, bytes)) else None
        if name in exec_symbols:
            _refuse_or_record(enforce, ExecRefused, "symbol-denied", "exec-attempt", event,
                              f"looking up {name}() through ctypes", target=name)
        elif name in signal_symbols:
            _refuse_or_record(enforce, SignalRefused, "symbol-denied", "signal-attempt", event,
                              f"looking up {name}() through ctypes (signals skip the os.kill check)",
                              target=name)
    elif event == "ctypes.dlopen":
        _check_dlopen(args[0])
    elif event == "sys.addaudithook":
        if not _State.adding_own_hook:
            _refuse_or_record(enforce, InterpreterRefused, "guard-tampering", "guard-tampering", event,
                              "adding another audit hook")
    elif event == "cpython.PyInterpreterState_New":
        _refuse_or_record(enforce, InterpreterRefused, "interpreter-denied", "exec-attempt", event,
                          "creating a subinterpreter (it would run without this guard)")
    elif event in ("os.kill", "os.killpg"):
        if args[0] in protected_pids:
            _refuse_or_record(enforce, GuardTampering, "guard-tampering", "guard-tampering", event,
                              f"signalling the guard's supervisor (pid {args[0]})", target=str(args[0]))
    elif event in ("object.__setattr__", "object.__delattr__"):
        if id(args[0]) in protected_ids:
            _refuse_or_record(True, GuardTampering, "guard-tampering", "guard-tampering", event,
                              f"replacing {args[1]} of the guard's audit hook")


# -- installing --------------------------------------------------------------

def build_policy(enforce: bool, extra_persistence: Iterable[str] = (), extra_env: Iterable[str] = (),
                 protected_pids: Iterable[int] = (), allowed_programs: Iterable[str] = ()) -> Policy:
    """The immutable decision data for one hook.  ``allowed_programs`` (real paths) is
    given by the launcher only, for the programs its Landlock domain lets run."""
    dirs, globs, files = default_persistence(extra_persistence)
    return (bool(enforce), dirs, glob_pattern(globs), files, PROTECTED_ENV | frozenset(extra_env),
            frozenset(protected_pids), frozenset(), frozenset(allowed_programs),
            libc_symbols.derive_exec_symbols(EXEC_SYMBOLS), SIGNAL_SYMBOLS, persistence_starts(dirs, globs, files))


def _make_hook(policy: Policy) -> Callable[[str, tuple], None]:
    """A hook whose only state is its (audited) default arguments."""

    def kernel_guard_audit_hook(event: str, args: tuple, _interesting: frozenset = INTERESTING_EVENTS,
                                _policy: Policy = policy, _decide: Callable = _decide, _str: type = str) -> None:
        if event in _interesting:
            if event == "open":
                # The hot case, decided here without a call: reading an ordinary
                # file (every import reads a .pyc).  The answer _check_open gives
                # for mode "r" and a str path not named like a process's environ
                # or mem, however the rest is spelled.  ``__class__``, not a global
                # ``type``: module globals cannot fake it.
                path, mode, _flags = args
                if mode == "r" and path.__class__ is _str and not path.endswith(("environ", "mem")):
                    return
            _decide(event, args, _policy)

    return kernel_guard_audit_hook


def install(mode: str, **policy_options: Any) -> bool:
    """Install the hook for ``mode`` (``enforce`` or ``audit``) once per process.

    Returns False when an equal or stronger hook is already installed, so
    loading the extension twice never doubles hooks.  An enforce hook installed
    after a record-only one takes over recording from it.
    """
    if "enforce" in _State.installed or mode in _State.installed:
        return False
    policy = build_policy(mode == "enforce", **policy_options)
    hook = _make_hook(policy)
    # protect the hook's own function objects from __code__/__defaults__ swaps
    protected = frozenset(id(f) for f in (
        hook, _decide, _check_open, _check_move, _check_change, _move_ends, _refuse_path, _refuse_or_record,
        is_persistence_path, replaces_persistence, _is_proc_secret, _resolve, _record, refuse_exec,
        processes._answer_absent, probes.judge, probes.missing_program,
        dirfd.resolve_at, dirfd.fd_path, dirfd.open_folders))
    hook.__defaults__ = (INTERESTING_EVENTS, policy[:6] + (protected,) + policy[7:], _decide, str)
    _State.adding_own_hook = True
    try:
        _add_hook(hook, policy)
    finally:
        _State.adding_own_hook = False
    if mode == "enforce" and "audit" in _State.installed:
        _State.quiet_record_hook = True
    _State.installed[mode] = hook
    if mode == "enforce":
        _guard_fork_exec(True, policy[7])
    return True


def _add_hook(hook: Callable[[str, tuple], None], policy: Policy) -> None:
    """Add ``hook`` behind the native filter when it is built, else as a Python hook.

    The filter gets the persistence paths and what each starts with, to let an
    ordinary write pass in C as ``_check_open`` would, and a removal, rename or mode
    change of ordinary places as ``_check_change`` and ``_check_move`` would (the
    ends of each, :func:`.persistence.settled_ends`); a record-only filter is told
    what it keeps once an enforcing one records everything (as
    ``_State.quiet_record_hook`` does here)."""
    if _audit_filter is not None:
        record_only = None if policy[0] else sorted(_SELF_PROTECTION)
        _audit_filter.add_hook(sorted(INTERESTING_EVENTS), hook, (*policy[1:4], policy[10]), record_only,
                               settled_ends())
        _State.kind = "native"
    else:
        sys.addaudithook(hook)
        _State.kind = "python"


def installed_mode() -> str | None:
    """``enforce``, ``audit`` or None: the strongest hook in this process."""
    if "enforce" in _State.installed:
        return "enforce"
    return "audit" if "audit" in _State.installed else None


def filter_kind() -> str | None:
    """``native`` (the C filter calls the hook for interesting events only),
    ``python`` (a Python hook sees every event), or None before ``install``."""
    return _State.kind


def enforcing() -> bool:
    """Whether an enforcing hook is installed in this process."""
    return "enforce" in _State.installed
