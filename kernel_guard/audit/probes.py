"""Everyday libraries that start programs: their probes, and the fix each refusal names.

A notebook that never asked for a program still sees libraries try one: joblib
counts physical cores with ``lscpu``, matplotlib lists fonts with ``fc-list``,
``platform`` asks ``uname``, ``ctypes.util`` runs ``ldconfig``, GitPython runs
``git version`` at import.  Each handles a missing program; none expects
"permission denied".  So the audit layer answers:

* a program that does not exist (by path, or nowhere on ``PATH``): ``ENOENT``,
  as the system would, recorded as ``exec-not-found`` (outcome ``unknown``):
  dulwich looks for hook files that are not there, ``execvp`` walks ``PATH``;
* a known probe, from the library that makes it: ``ENOENT`` too, as if the
  program were not installed, recorded as ``library-probe`` (outcome
  ``unknown``, ``kernel_guard.library``), so a quiet session of everyday cells
  records no failure the user did not cause;
* anything else a known library starts: refused, with the fix for *that*
  library (``backend="threading"``, ``processes=False``, mathtext, an
  administrator's allowlist ...), repeated after the cell's traceback when the
  library wraps the refusal in an error of its own.

Which library called is read from the calling frames: a claim the cell could
make too.  It only chooses the answer's wording and the record's label; the
program is not started either way (and under the launcher the OS layers
decide).  See docs/troubleshooting.md.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Callable, Iterable, Optional

__all__ = ["LIBRARIES", "Library", "after_import", "install_fixups", "judge", "libraries_on_stack", "missing_program", "physical_cores", "probed_by"]


class Library(namedtuple("Library", "name modules probes fix", defaults=((), ""))):
    """A library that starts programs: how to know its frames (``modules``), what it
    only probes for (``probes``: a program's name, with the first arguments that
    make it a probe: "git version", not every git command), its ``fix``.  A named
    tuple, not a dataclass: the supervisor reads it (see ``SinkOptions``)."""

    __slots__ = ()

    def probes_for(self, argv: list[str]) -> bool:
        """Whether ``argv`` (the program's name first) is one of this library's probes."""
        words = [os.path.basename(argv[0]), *argv[1:]] if argv else []
        return any(words[:len(probe.split())] == probe.split() for probe in self.probes)


_LAUNCHER = ("or use the launcher kernelspec (kernel-guard install-kernelspec), where this kernel's own "
             "Python may start")
_ALLOWLIST = ("or ask your administrator to allow the program in the kernel's profile (docs/launcher.md, "
              "'Allowing programs')")

#: the first match along the calling frames wins: the more specific prefixes first
LIBRARIES = (
    Library("joblib core count", ("joblib.externals.loky.backend.context", "loky.backend.context"),
            probes=("lscpu", "cat /proc/cpuinfo")),
    Library("matplotlib fonts", ("matplotlib.font_manager",), probes=("fc-list", "fc-match")),
    Library("platform", ("platform",), probes=("uname",)),
    Library("ctypes.util", ("ctypes.util",), probes=("ldconfig", "gcc", "cc", "ld", "objdump", "ld.so")),
    Library("GitPython", ("git.",), probes=("git version",),
            fix="git cannot run in this kernel: use dulwich (pure Python) for repository work"),
    Library("sympy preview", ("sympy.",), probes=("latex", "dvipng", "dvisvgm", "dvips", "pdflatex")),
    Library("matplotlib usetex", ("matplotlib.texmanager", "matplotlib.dviread", "matplotlib.backends"),
            fix="use mathtext: matplotlib.rcParams['text.usetex'] = False ($...$ still renders math)"),
    Library("torch.compile", ("torch._inductor", "torch.utils.cpp_extension", "triton", "torch._dynamo"),
            fix='use torch.compile(model, backend="eager"), ' + _ALLOWLIST + " (its compiler toolchain)"),
    Library("graphviz", ("graphviz",),
            fix="rendering needs graphviz's dot program: " + _ALLOWLIST.removeprefix("or ")),
    Library("dask", ("distributed.", "dask."),
            fix="use threads: Client(processes=False) or LocalCluster(processes=False), " + _LAUNCHER),
    Library("joblib", ("joblib.", "loky."),
            fix='use threads: Parallel(n_jobs=..., prefer="threads") or joblib.parallel_backend("threading"), '
                + _LAUNCHER),
    Library("multiprocessing", ("multiprocessing.", "concurrent.futures.process"),
            fix="use a fork context: multiprocessing.get_context('fork') (also for ProcessPoolExecutor's "
                "mp_context), " + _LAUNCHER),
    Library("papermill / nbclient", ("papermill", "nbclient", "jupyter_client"),
            fix="run notebooks outside this kernel (a scheduled job or the server's own tools), " + _LAUNCHER),
)

def _matches(name: str, module: str) -> bool:
    base = module.rstrip(".")
    return name == base or name.startswith(base + ".")


def libraries_on_stack(depth: int = 3, limit: int = 80) -> list[Library]:
    """The known libraries among the calling frames, innermost first, each once."""
    found: list[Library] = []
    frame = sys._getframe(depth)
    for _ in range(limit):
        if frame is None:
            break
        name = frame.f_globals.get("__name__") or ""
        for library in LIBRARIES:
            if library not in found and any(_matches(name, m) for m in library.modules):
                found.append(library)
                break
        frame = frame.f_back
    return found


def judge(executable: str, argv: list[str], depth: int = 3) -> tuple[str, Optional[Library]]:
    """How to answer a program start the policy refuses: ("missing" | "probe" | "refuse",
    the library to name).  A probe is a program one of the calling libraries only
    probes for; otherwise the outermost library with a fix names it (dask, not the
    multiprocessing it calls)."""
    if missing_program(executable):
        return "missing", None
    libraries = libraries_on_stack(depth + 1)
    library = probed_by(executable, argv, libraries)
    if library is not None:
        return "probe", library
    with_fix = [library for library in libraries if library.fix]
    return "refuse", with_fix[-1] if with_fix else None


def probed_by(executable: str, argv: list[str], libraries: Iterable[Library] = LIBRARIES) -> Optional[Library]:
    """The first of ``libraries`` whose probe the command is (by the program's path or
    the name in ``argv[0]``, and the first arguments)."""
    commands = [[executable, *argv[1:]], argv] if argv else [[executable]]
    for library in libraries:
        if any(library.probes_for(command) for command in commands):
            return library
    return None


def missing_program(executable: str) -> bool:
    """Whether exec would answer ENOENT: a path that names nothing, or a bare name found
    nowhere on ``PATH`` (what ``execvp`` walks)."""
    if not executable:
        return False
    if os.sep in executable:
        return not os.path.lexists(executable)
    import shutil

    return shutil.which(executable) is None


# -- answering what a library would otherwise ask a program ------------------

def physical_cores() -> int:
    """Physical cores as sysfs shows them (package and core id pairs), what joblib asks
    ``lscpu`` for; 0 when sysfs does not say."""
    base = "/sys/devices/system/cpu"
    cores = set()
    try:
        names = [n for n in os.listdir(base) if n.startswith("cpu") and n[3:].isdigit()]
    except OSError:
        return 0
    for name in names:
        try:
            with open(f"{base}/{name}/topology/physical_package_id") as fh:
                package = fh.read().strip()
            with open(f"{base}/{name}/topology/core_id") as fh:
                cores.add((package, fh.read().strip()))
        except OSError:
            continue
    return len(cores)


def _fill_loky_cache(module: Any) -> None:
    """joblib's core count without ``lscpu`` (and without its 14-line warning)."""
    if getattr(module, "physical_cores_cache", "") is None:
        count = physical_cores()
        if count > 0:
            module.physical_cores_cache = count


#: module -> what to set once it is imported
_FIXUPS: dict[str, Callable[[Any], None]] = {
    "joblib.externals.loky.backend.context": _fill_loky_cache,
    "loky.backend.context": _fill_loky_cache,
}


class _AfterImport:
    """Runs a fix-up right after one of :data:`_FIXUPS`' modules is imported.  A meta
    path finder by its ``find_spec`` alone: ``importlib.abc`` imports
    ``importlib.resources`` (with tempfile, shutil, pathlib: 5 ms of a kernel's start)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        fixup = _FIXUPS.get(name)
        if fixup is None:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                original = spec.loader.exec_module

                def exec_module(module: Any, _original: Callable = original, _fixup: Callable = fixup) -> None:
                    _original(module)
                    _fixup(module)

                spec.loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


def after_import(name: str, fixup: Callable[[Any], None]) -> None:
    """Run ``fixup(module)`` once module ``name`` is imported: now, if it already is,
    else right after its import (the finder :func:`install_fixups` puts first)."""
    module = sys.modules.get(name)
    if module is not None:
        fixup(module)
        return
    _FIXUPS[name] = fixup
    install_fixups()


def install_fixups() -> None:
    """Answer what everyday libraries would ask a program, once per process: joblib's
    physical core count, and GitPython's import without git (``GIT_PYTHON_REFRESH=quiet``:
    it then reports git as missing when used, not at import)."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    if any(isinstance(f, _AfterImport) for f in sys.meta_path):
        return
    for name, fixup in _FIXUPS.items():
        if name in sys.modules:
            fixup(sys.modules[name])
    sys.meta_path.insert(0, _AfterImport())


def _watch_cffi(module: Any) -> None:
    """cffi's foreign calls raise no audit event: a cffi load of libc (``dlopen(None)``)
    is recorded as the risk it is where no OS layer stands behind the in-process ones."""
    ffi = getattr(module, "FFI", None)
    original = getattr(ffi, "dlopen", None)
    if original is None or getattr(original, "_kernel_guard", False):
        return

    def dlopen(self: Any, name: Any = None, *args: Any, **kwargs: Any) -> Any:
        _record_cffi(name)
        return original(self, name, *args, **kwargs)

    dlopen._kernel_guard = True  # type: ignore[attr-defined]
    dlopen.__doc__ = original.__doc__
    ffi.dlopen = dlopen


def _record_cffi(name: Any) -> None:
    from .. import runtime
    from .processes import _LIBC_LIKE
    from .recording import _State, _record, _text

    text = "<main program>" if name is None else _text(name)
    key = "cffi:" + text
    if (name is not None and not _LIBC_LIKE.search(text)) or key in _State.seen_libraries:
        return
    _State.seen_libraries.add(key)
    rt = runtime.current()
    shielded = rt is not None and rt.layers.get("seccomp") not in (None, "off")
    if shielded:
        reason = f"cffi loaded {text}: its calls raise no audit event; the seccomp filter still refuses exec"
    else:
        reason = (f"cffi loaded {text}: its calls raise no audit event, and this kernel has no OS layers, so a "
                  "program started through it (system, execve) is neither refused nor recorded. Use the launcher "
                  "kernelspec (kernel-guard install-kernelspec) where that matters")
    # nothing was refused: an alert (ECS event.kind) where nothing stands behind it, for a SIEM to see
    _record("library-loaded", "unknown", reason, "cffi.dlopen", file={"path": text}, risk=not shielded,
            kind="event" if shielded else "alert")


_FIXUPS["cffi.api"] = _watch_cffi
