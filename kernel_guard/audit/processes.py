"""Starting programs: what the audit layer sees of process creation, and the fork_exec guard.

``subprocess.Popen``, ``os.system``, ``os.exec*``, ``os.posix_spawn`` and
``pty.spawn`` raise audit events; ``_posixsubprocess.fork_exec`` does not, so a
check is put in front of it (:func:`_guard_fork_exec`: a speed bump, not a
boundary).  Under the launcher, a program its Landlock domain lets run
(:func:`_allowed`, found along ``PATH`` as exec would) is left to the OS layers.
The ctypes route to libc's exec functions is watched by symbol (:mod:`.libc_symbols`).
See docs/architecture.md.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from ..exceptions import ExecRefused
from .recording import _State, _argv, _collect_setup, _record, _refuse_or_record, _short, _text

__all__ = ["EXEC_SYMBOLS", "SIGNAL_SYMBOLS"]


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


_LIBC_LIKE = re.compile(r"(^|/)(libc|libdl|libpthread|ld-linux)[.-]|(^|/)libc$")


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


def _check_dlopen(name: Any) -> None:
    """Record loading libc-like libraries (once per name): the ctypes exec route."""
    text = "<main program>" if name is None else _text(name)
    if not (name is None or _LIBC_LIKE.search(text)):
        return
    if _State.setup_programs is not None:
        # the launcher's own (libseccomp's bindings): named in launcher-setup, and a
        # cell that loads the library later is still recorded
        _collect_setup({"technique": "ctypes.dlopen", "what": f"ctypes loaded {text}"})
        return
    if text not in _State.seen_libraries:
        _State.seen_libraries.add(text)
        _record("library-loaded", "unknown", f"ctypes loaded {text}: its exec functions are refused",
                "ctypes.dlopen", file={"path": text})


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
            # exec tries each PATH candidate in turn: the first that exists is what would run
            names = [_text(e) for e in exes]
            runs = next((e for e in names if os.path.exists(e)), names[0] if names else (argv[0] if argv else ""))
            proc = {"executable": runs, "args": argv, "command_line": " ".join(argv)}
            if allowed_programs and _allowed(runs, allowed_programs):
                return original(*args, **kwargs)
            refuse_exec(enforce, "_posixsubprocess.fork_exec", " ".join(argv), proc, bool(allowed_programs))
        return original(*args, **kwargs)

    fork_exec._kernel_guard = True  # type: ignore[attr-defined]
    _posixsubprocess.fork_exec = fork_exec
    # subprocess keeps its own reference (``from _posixsubprocess import fork_exec as _fork_exec``)
    subprocess_module = sys.modules.get("subprocess")
    if subprocess_module is not None and getattr(subprocess_module, "_fork_exec", None) is original:
        subprocess_module._fork_exec = fork_exec


def refuse_exec(enforce: bool, technique: str, summary: str, proc: dict[str, Any], interpreter_allowed: bool) -> None:
    """Refuse (enforce) or record a program start the policy does not allow, answering a
    missing program and a library's probe as the system answers a missing program."""
    from .. import notice
    from . import probes

    verdict, library = probes.judge(proc["executable"], proc.get("args") or [])
    if verdict != "refuse":
        _answer_absent(enforce, technique, summary, proc, verdict, library)
        return
    if not enforce and _State.setup_programs is not None:
        # what _refuse_or_record does then, without redacting a summary nobody reads: a
        # long command line wakes detectors whose patterns compile then (3-8 ms of start)
        _collect_setup(proc)
        return
    hint = library.fix if library else (ExecRefused.interpreter_hint if interpreter_allowed else None)
    if library is not None and enforce:
        notice.library_hint(library.fix)
    _refuse_or_record(enforce, ExecRefused, "exec-denied", "exec-attempt", technique,
                      f"starting a program ({technique}: {_short(summary)})", process=proc, hint=hint,
                      **({"library": library.name} if library else {}))


def _answer_absent(enforce: bool, technique: str, summary: str, proc: dict[str, Any], verdict: str,
                   library: Any) -> None:
    """ENOENT, as for a program that is not installed; recorded as what it is, not as a failure."""
    from ..exceptions import ProgramAbsent

    if _State.setup_programs is not None:
        return  # the launcher's own set-up: one launcher-setup event names its programs
    what = f"starting a program ({technique}: {_short(summary)})"
    if verdict == "missing":
        action, reason = "exec-not-found", f"{what}: no such program (answered ENOENT, as the system would)"
    else:
        action = "library-probe"
        reason = (f"{library.name} probed for {os.path.basename(proc['executable'])} ({technique}); answered as "
                  "if it were not installed (ENOENT): the library goes on without it")
    _record(action, "unknown", reason, technique, process=proc,
            **({"library": library.name} if library is not None else {}))
    if enforce:
        raise ProgramAbsent(what, layer="audit", filename=proc["executable"])
