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
plain file reads), so the rest of the interpreter's events cost a few string
compares instead of a Python call.
Without it (no compiler at install time) the same policy runs as a Python
hook; ``filter_kind()`` says which.

Tamper resistance, honestly: hooks cannot be removed, and the decision data is
an immutable tuple bound to the hook through default arguments, whose
replacement (``__defaults__``, ``__code__``) raises an audit event the hook
refuses.  Code that rewrites interpreter memory through ctypes, or replaces
this module's globals, can still defeat an in-process hook; the seccomp filter
cannot be undone from inside.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import sys
import threading
from typing import Any, Callable, Iterable, Iterator, Tuple

from .. import notice
from ..events import pipeline
from ..events.processors import redact_and_cut
from ..events.schema import make_event
from ..exceptions import (
    CredentialRefused,
    EnvironmentRefused,
    ExecRefused,
    GuardTampering,
    InterpreterRefused,
    PersistenceRefused,
    Refused,
    SignalRefused,
)
from . import dirfd, libc_symbols

try:
    from . import _filter as _audit_filter
except ImportError:  # built without a C compiler: the Python hook filters for itself
    _audit_filter = None

__all__ = [
    "INTERESTING_EVENTS",
    "build_policy",
    "enforcing",
    "launcher_setup",
    "filter_kind",
    "install",
    "installed_mode",
    "is_persistence_path",
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
_MOVE_EVENTS = frozenset({"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree"})

#: events that change one file or folder in place: event -> (index of the path,
#: index of its dir_fd or None, what the refusal calls it).  Removing, emptying or
#: chmod-ing kernel_guard's own modules or a start-up file changes the next start
#: as much as writing it.
_CHANGE_EVENTS = {"os.mkdir": (0, 2, "creating"), "os.remove": (0, 1, "removing"),
                  "os.rmdir": (0, 1, "removing"), "os.chmod": (0, 2, "changing the permissions of"),
                  "os.chown": (0, 3, "changing the owner of"), "os.utime": (0, 3, "changing the times of"),
                  "os.truncate": (0, None, "emptying")}

_SYMBOL_EVENTS = frozenset({"ctypes.dlsym", "ctypes.dlsym/handle"})

_EXEC_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "pty.spawn"})

#: libc entry points that start programs or issue raw system calls: the floor of the
#: set each hook refuses, to which install adds what the loaded libc exports
#: (:mod:`.libc_symbols`)
EXEC_SYMBOLS = frozenset({
    "system", "popen", "execve", "execv", "execvp", "execvpe", "execl", "execlp", "execle",
    "fexecve", "execveat", "posix_spawn", "posix_spawnp", "syscall", "vfork", "clone", "clone3",
    "__libc_system", "do_system",
})

#: libc entry points that signal another process or take its file descriptors:
#: through ctypes they skip the ``os.kill`` event, and CPython audits neither
#: ``os.pidfd_open`` nor ``signal.pidfd_send_signal``
SIGNAL_SYMBOLS = frozenset({
    "kill", "killpg", "tgkill", "tkill", "sigqueue", "pthread_sigqueue",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
})

#: variables that change what a program loads or finds (refused in enforce mode)
PROTECTED_ENV = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_BIND_NOW", "LD_DEBUG", "LD_PROFILE",
    "GCONV_PATH", "PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
    "PYTHONINSPECT", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "IPYTHONDIR", "IPYTHON_DIR",
    "JUPYTER_CONFIG_DIR", "JUPYTER_CONFIG_PATH", "JUPYTER_PATH", "JUPYTER_DATA_DIR",
    "BASH_ENV", "ENV", "PERL5LIB", "PERL5OPT", "RUBYOPT", "NODE_OPTIONS",
})

_LIBC_LIKE = re.compile(r"(^|/)(libc|libdl|libpthread|ld-linux)[.-]|(^|/)libc$")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

_PROC_SECRETS = ("/environ", "/mem")
_PROC_SECRET_NAMES = ("environ", "mem")


def _is_proc_secret(path: str) -> bool:
    """Whether ``path``, as the kernel resolves it (relative to the working folder,
    extra slashes, ``..`` after a link, links in its folders and the link it names),
    is a process's environ or mem."""
    real = "/" + os.path.realpath(path).lstrip("/")  # POSIX keeps a leading "//"
    return real.startswith("/proc/") and real.endswith(_PROC_SECRETS)

_HOME_RC = (".bashrc", ".bash_profile", ".bash_login", ".profile", ".zshrc", ".zprofile",
            ".pythonrc", ".pythonrc.py")

# Policy tuple layout (a plain tuple: immutable, no replaceable descriptors).
# (enforce, persist_dirs, persist_globs, persist_files, protected_env,
#  protected_pids, protected_ids, allowed_programs, exec_symbols, signal_symbols)
Policy = Tuple[bool, Tuple[str, ...], re.Pattern, frozenset, frozenset, frozenset, frozenset, frozenset,
               frozenset, frozenset]


class _State:
    """Mutable bookkeeping that affects only *recording*, never a decision."""

    installed: dict[str, Callable[..., Any]] = {}  # mode -> hook
    kind: str | None = None  # "native" or "python": how the hooks were added
    quiet_record_hook = False  # set once an enforce hook records instead
    adding_own_hook = False
    seen_libraries: set = set()
    local = threading.local()
    # the programs the launcher runs to set the kernel up (None outside that stretch)
    setup_programs: list[dict[str, Any]] | None = None


# -- persistence paths -------------------------------------------------------

def _dir(path: str) -> str:
    return os.path.join(os.path.realpath(os.path.expanduser(path)), "")


def default_persistence(extra: Iterable[str] = ()) -> tuple[tuple[str, ...], tuple[str, ...], frozenset]:
    """(protected directories, glob patterns, exact files) for this user.

    Directories: Jupyter config and kernelspec dirs, system IPython config, the
    Python environment (prefixes, site-packages, kernel_guard itself).
    Globs: the IPython dir's startup folders and ``*_config.py/json``.
    Files: the shell's start-up files in the home directory.
    """
    dirs: list[str] = [os.path.join(sys.prefix, "etc", "ipython"), "/usr/local/etc/ipython", "/etc/ipython"]
    globs: list[str] = []
    try:
        from jupyter_core import paths as jpaths

        dirs += [jpaths.jupyter_config_dir(), *jpaths.jupyter_config_path(), *jpaths.jupyter_path("kernels")]
    except Exception:  # jupyter_core is a dependency of ipykernel; be robust anyway
        dirs += ["~/.jupyter", "~/.local/share/jupyter/kernels"]
    try:
        from IPython.paths import get_ipython_dir

        ipdir = get_ipython_dir()
    except Exception:
        ipdir = "~/.ipython"
    # the launcher gives its kernel a private IPYTHONDIR: the home's stays protected too
    for ipdir in sorted({_dir(ipdir), _dir("~/.ipython")}):
        globs += [ipdir + "*/startup/*", ipdir + "*_config.py", ipdir + "*_config.json",
                  ipdir + "*/*_config.py", ipdir + "*/*_config.json", ipdir + "extensions/*"]
    dirs += _environment_dirs()
    home = os.path.expanduser("~")
    files = frozenset(os.path.realpath(os.path.join(home, f)) for f in _HOME_RC)
    dirs += list(extra)
    return tuple(sorted({_dir(d) for d in dirs})), tuple(globs), files


def _environment_dirs() -> list[str]:
    """The Python environment the kernel and the server import from: its prefixes,
    site-packages (the user's too) and kernel_guard's own folder (an editable
    install lives outside site-packages).  Code written there runs at the next start."""
    import site

    dirs = [sys.prefix, sys.exec_prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    try:
        dirs += [*site.getsitepackages(), site.getusersitepackages()]
    except AttributeError:  # site without these (an embedded interpreter)
        pass
    return [d for d in dirs if d and os.path.realpath(d) != "/"]


def glob_pattern(globs: Iterable[str]) -> re.Pattern:
    """One compiled pattern matching any of the shell-style ``globs``."""
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs) or r"(?!)")


def _resolve(path: str) -> str:
    """``os.path.realpath`` of an absolute path; through realpath(3) when the filter is built."""
    if _audit_filter is not None:
        resolved = _audit_filter.resolve(path)
        if resolved is not None:
            return resolved
    return os.path.realpath(path)


def is_persistence_path(path: str, dirs: tuple[str, ...], globs: re.Pattern, files: frozenset) -> bool:
    """Whether writing ``path`` could run code at the next start.

    Both the path as written and its symlink-resolved form are checked: a
    link into a start-up folder must not launder the write.
    """
    absolute = os.path.abspath(path)
    # resolved from the path as given: "link/../x" is beside the link's target, not "x"
    resolved = _resolve(path if path.startswith("/") else os.path.join(os.getcwd(), path))
    for candidate in (absolute,) if resolved == absolute else (absolute, resolved):
        name = candidate[candidate.rfind("/") + 1:]
        if name.endswith(".pth") or name.startswith(("sitecustomize.", "usercustomize.")):
            return True
        if candidate in files or candidate.startswith(dirs) or globs.match(candidate):
            return True
    return False


def replaces_persistence(path: str, dirs: tuple[str, ...], globs: re.Pattern, files: frozenset) -> bool:
    """Whether a rename, link or copy at ``path`` changes what runs at the next start:
    the path is a persistence path, or a folder holding one (``~/.ipython`` or
    ``~/.jupyter`` renamed as a whole, or the home folder itself)."""
    if is_persistence_path(path, dirs, globs, files):
        return True
    folder = _resolve(path if path.startswith("/") else os.path.join(os.getcwd(), path)).rstrip("/") + "/"
    if any(d.startswith(folder) for d in dirs) or any(f.startswith(folder) for f in files):
        return True
    # the IPython folder and its profiles: their start-up files and configs match the globs
    probes = ("profile_default/startup/x.py", "startup/x.py", "ipython_config.py", "profile_x/ipython_config.py")
    return any(globs.match(folder + probe) for probe in probes)


# -- recording ---------------------------------------------------------------

def _record(action: str, outcome: str, reason: str, technique: str, **fields: Any) -> None:
    """Emit an event for the audit layer, never raising into the audited call."""
    try:
        pipeline.emit(make_event(action, outcome=outcome, layer="audit", reason=reason,
                                 technique=technique, **fields))
    except Exception:
        pass


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _argv(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    return [_text(value)] if value is not None else []


def _process_fields(event: str, args: tuple) -> tuple[str, dict[str, Any]]:
    """(short description, ECS process fields) for a process-creation event."""
    if event == "os.system":
        cmd = _text(args[0])
        return cmd, {"executable": "/bin/sh", "args": ["sh", "-c", cmd], "command_line": cmd}
    if event == "pty.spawn":
        argv = _argv(args[0])
        return " ".join(argv), {"executable": argv[0] if argv else "", "args": argv,
                                "command_line": " ".join(argv)}
    # subprocess.Popen(executable, args, cwd, env); os.exec / os.posix_spawn(path, argv, env)
    executable, argv = args[0], args[1]
    if isinstance(argv, (str, bytes)):
        argv = ["/bin/sh", "-c", _text(argv)] if event == "subprocess.Popen" else [_text(argv)]
    argv = _argv(argv)
    exe = _text(executable) if executable is not None else (argv[0] if argv else "")
    line = " ".join(argv)
    return line, {"executable": exe, "args": argv, "command_line": line}


def _allowed(executable: str, allowed_programs: frozenset) -> bool:
    """Whether a program is one the kernel's Landlock domain lets run (a bare
    name is looked up on PATH, as exec would)."""
    if not executable:
        return False
    if os.sep not in executable:
        import shutil

        executable = shutil.which(executable) or executable
    return os.path.realpath(executable) in allowed_programs


def _short(text: str, limit: int = 60) -> str:
    """``text`` for a reason: redacted whole first, then cut (a secret crossing the cut
    would otherwise leave its first part, which no pattern recognises any more)."""
    return redact_and_cut(text, limit)


# -- the decision ------------------------------------------------------------

def _decide(event: str, args: tuple, policy: Policy) -> None:
    """Record and, when enforcing, refuse one interesting event."""
    (enforce, persist_dirs, persist_globs, persist_files, protected_env, protected_pids, protected_ids,
     allowed_programs, exec_symbols, signal_symbols) = policy
    if not enforce and _State.quiet_record_hook and event not in _SELF_PROTECTION:
        # a record-only hook that an enforcing one has taken over from (the
        # launcher's first hook) would record nothing: it checks nothing but
        # attempts to rewire itself, which only it can refuse
        return
    if event in _EXEC_EVENTS:
        summary, proc = _process_fields(event, args)
        if allowed_programs and _allowed(proc["executable"], allowed_programs):
            return  # the launcher's Landlock domain decides; the supervisor records it
        _refuse_or_record(enforce, ExecRefused, "exec-denied", "exec-attempt", event,
                          f"starting a program ({event}: {_short(summary)})", process=proc)
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


def _check_open(args: tuple, enforce: bool, dirs: tuple, globs: re.Pattern, files: frozenset) -> None:
    path, mode, flags = args
    if not isinstance(path, (str, bytes)):
        return  # an fd (os.fdopen): the file was opened, and checked, before
    path = os.fsdecode(path)
    secret = path.endswith(_PROC_SECRET_NAMES)
    if isinstance(mode, str):
        writing = any(c in mode for c in "wax+")
    else:
        writing = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
    if not (secret or writing):
        return
    candidates = [path]
    if mode is None and not path.startswith("/"):
        # os.open: its event leaves out dir_fd, so a relative path may be meant
        # relative to any folder the process holds open
        candidates = [os.path.join(folder, path) for folder in dirfd.open_folders()] or candidates
    if secret:
        found = next((c for c in candidates if _is_proc_secret(c)), None)
        if found is not None:
            # another process's environment (the server's API token) or memory
            _refuse_or_record(enforce, CredentialRefused, "credential-denied", "credential-read", "open",
                              f"reading {_short(path)}", file={"path": found})
            return
    if writing:
        found = next((c for c in candidates if is_persistence_path(c, dirs, globs, files)), None)
        if found is not None:
            _refuse_or_record(enforce, PersistenceRefused, "persistence-denied", "persistence-write", "open",
                              f"writing {_short(path)}", file={"path": found})


def _move_ends(event: str, args: tuple) -> list[tuple[Any, Any, str]]:
    """(path, dir_fd, what happens to it) for each end of a rename, link, symlink or copy."""
    if event in ("os.rename", "os.link"):  # (src, dst, src_dir_fd, dst_dir_fd)
        return [(args[0], args[2], "moving"), (args[1], args[3], "writing")]
    if event == "os.symlink":  # (target, link, dir_fd): the target is text, only the link is made
        return [(args[1], args[2], "writing")]
    return [(args[1], None, "writing")]  # shutil.copyfile / copytree (src, dst)


def _check_move(event: str, args: tuple, enforce: bool, dirs: tuple, globs: re.Pattern, files: frozenset) -> None:
    """A rename or hard link changes both ends: moving a start-up folder away (to put a
    prepared one in its place) is as good as writing into it.  A symlink whose target
    is a process's environ or mem would hide the name the open check looks for."""
    for end, dir_fd, what in _move_ends(event, args):
        if not isinstance(end, (str, bytes)):
            continue
        where = dirfd.resolve_at(end, dir_fd)
        if where is None or replaces_persistence(where, dirs, globs, files):
            _refuse_path(enforce, event, what, os.fsdecode(end), where, dir_fd)
            return
        if event == "os.symlink" and isinstance(args[0], (str, bytes)):
            target = os.path.join(os.path.dirname(where), os.fsdecode(args[0]))
            if target.endswith(_PROC_SECRET_NAMES) and _is_proc_secret(target):
                _refuse_or_record(enforce, CredentialRefused, "credential-denied", "credential-read", event,
                                  f"a link to {_short(os.fsdecode(args[0]))}", file={"path": where, "target_path": target})
                return


def _check_change(event: str, args: tuple, enforce: bool, dirs: tuple, globs: re.Pattern, files: frozenset) -> None:
    """mkdir, remove, rmdir, chmod, chown, utime or truncate of a persistence path
    (an int path is a descriptor: fchmod, futimes, ftruncate)."""
    path_index, fd_index, verb = _CHANGE_EVENTS[event]
    path, dir_fd = args[path_index], args[fd_index] if fd_index is not None else None
    if isinstance(path, int):
        where = dirfd.fd_path(path)
        if where is None:
            return  # a pipe, a socket or a deleted file: nothing that runs at a start
        path = where
    elif not isinstance(path, (str, bytes)):
        return
    where = dirfd.resolve_at(path, dir_fd)
    # creating a folder replaces nothing: only inside protected places; the rest
    # also for a folder that holds one (removing or chmod-ing ~/.ipython)
    check = is_persistence_path if event == "os.mkdir" else replaces_persistence
    if where is None or check(where, dirs, globs, files):
        _refuse_path(enforce, event, verb, os.fsdecode(path), where, dir_fd)


def _refuse_path(enforce: bool, event: str, what: str, path: str, where: str | None, dir_fd: Any) -> None:
    """Refuse a change at ``where`` (``path`` resolved), or at a path relative to a
    folder descriptor that names no folder (fail closed)."""
    shown = _short(path if where is None or where == path else f"{path} ({where})")
    reason = f"{what} {shown}" + (f" relative to descriptor {dir_fd}, which names no folder" if where is None else "")
    _refuse_or_record(enforce, PersistenceRefused, "persistence-denied", "persistence-write", event, reason,
                      file={"path": where or path})


def _check_dlopen(name: Any) -> None:
    """Record loading libc-like libraries (once per name): the ctypes exec route."""
    text = "<main program>" if name is None else _text(name)
    if (name is None or _LIBC_LIKE.search(text)) and text not in _State.seen_libraries:
        _State.seen_libraries.add(text)
        _record("library-loaded", "unknown", f"ctypes loaded {text}: its exec functions are refused",
                "ctypes.dlopen", file={"path": text})


def _refuse_or_record(enforce: bool, exc: type[Refused], denied: str, allowed: str, technique: str,
                      what: str, process: dict | None = None, **fields: Any) -> None:
    """Raise ``exc`` after recording (enforce), or only record (audit)."""
    if enforce:
        _record(denied, "failure", f"refused {what}", technique, process=process, **fields)
        raise exc(what, layer="audit")
    if _State.setup_programs is not None and allowed == "exec-attempt":
        # the launcher's own set-up (ldconfig, uname, its supervisor, libseccomp's
        # syscall() lookup), before any notebook code: one launcher-setup event
        # names them, not an exec-attempt each
        entry = process or {"technique": technique, "what": what}
        if entry not in _State.setup_programs:
            _State.setup_programs.append(entry)
        return
    if not _State.quiet_record_hook:
        _record(allowed, "unknown", f"recorded, not refused (audit mode, or kernel start-up): {what}", technique,
                process=process, **fields)
        notice.would_refuse(what)


@contextlib.contextmanager
def launcher_setup() -> Iterator[list[dict[str, Any]]]:
    """While the launcher sets a kernel up, collect the programs it starts (and its
    exec-capable ctypes lookups) instead of recording each as ``exec-attempt``;
    yields the list (ECS process fields, or technique and what, each once).

    Only the record-only start-up hook collects: an enforcing hook still refuses,
    so nothing that runs in this stretch is let through that would not be otherwise.
    """
    _State.setup_programs = programs = []
    try:
        yield programs
    finally:
        _State.setup_programs = None


# -- installing --------------------------------------------------------------

def build_policy(enforce: bool, extra_persistence: Iterable[str] = (), extra_env: Iterable[str] = (),
                 protected_pids: Iterable[int] = (), allowed_programs: Iterable[str] = ()) -> Policy:
    """The immutable decision data for one hook.  ``allowed_programs`` (real paths) is
    given by the launcher only, for the programs its Landlock domain lets run."""
    dirs, globs, files = default_persistence(extra_persistence)
    return (bool(enforce), dirs, glob_pattern(globs), files, PROTECTED_ENV | frozenset(extra_env),
            frozenset(protected_pids), frozenset(), frozenset(allowed_programs),
            libc_symbols.derive_exec_symbols(EXEC_SYMBOLS), SIGNAL_SYMBOLS)


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
        is_persistence_path, replaces_persistence, _is_proc_secret, _resolve, _record,
        dirfd.resolve_at, dirfd.fd_path, dirfd.open_folders))
    hook.__defaults__ = (INTERESTING_EVENTS, policy[:6] + (protected,) + policy[7:], _decide, str)
    _State.adding_own_hook = True
    try:
        _add_hook(hook)
    finally:
        _State.adding_own_hook = False
    if mode == "enforce" and "audit" in _State.installed:
        _State.quiet_record_hook = True
    _State.installed[mode] = hook
    if mode == "enforce":
        _guard_fork_exec(True, policy[7])
    return True


def _add_hook(hook: Callable[[str, tuple], None]) -> None:
    """Add ``hook`` behind the native filter when it is built, else as a Python hook."""
    if _audit_filter is not None:
        _audit_filter.add_hook(sorted(INTERESTING_EVENTS), hook)
        _State.kind = "native"
    else:
        sys.addaudithook(hook)
        _State.kind = "python"


def _guard_fork_exec(enforce: bool, allowed_programs: frozenset = frozenset()) -> None:
    """Put a check in front of ``_posixsubprocess.fork_exec``, which raises no event.

    A speed bump, not a boundary: the original stays reachable (for example by
    re-importing the extension module), which is why the seccomp layer exists.
    It does stop the direct call and multiprocessing's spawn/forkserver starts.
    """
    try:
        import _posixsubprocess
    except ImportError:
        return
    original = _posixsubprocess.fork_exec
    if getattr(original, "_kernel_guard", False):
        return

    def fork_exec(*args: Any, **kwargs: Any) -> Any:
        # In enforce mode every Popen was refused at its event, so whatever gets
        # here bypassed it (a direct call, a shimmed subprocess.sys). In audit
        # mode calls from subprocess were already recorded by that event.
        if enforce or sys._getframe(1).f_globals.get("__name__") != "subprocess":
            # fork_exec(args, executable_list, close_fds, ...)
            argv = _argv(args[0]) if args and isinstance(args[0], (list, tuple)) else []
            exes = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
            proc = {"executable": _text(exes[0]) if exes else (argv[0] if argv else ""),
                    "args": argv, "command_line": " ".join(argv)}
            if allowed_programs and _allowed(proc["executable"], allowed_programs):
                return original(*args, **kwargs)
            _refuse_or_record(enforce, ExecRefused, "exec-denied", "exec-attempt", "_posixsubprocess.fork_exec",
                              f"starting a program (_posixsubprocess.fork_exec: {_short(' '.join(argv))})",
                              process=proc)
        return original(*args, **kwargs)

    fork_exec._kernel_guard = True  # type: ignore[attr-defined]
    _posixsubprocess.fork_exec = fork_exec
    # subprocess keeps its own reference (``from _posixsubprocess import fork_exec as _fork_exec``)
    subprocess_module = sys.modules.get("subprocess")
    if subprocess_module is not None and getattr(subprocess_module, "_fork_exec", None) is original:
        subprocess_module._fork_exec = fork_exec


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
