"""Making the standard library live with the launcher: what runs before, and what changes after.

Before the filter and the Landlock domain: everything that needs exec (``ldconfig
-p`` for a snapshot of the linker cache, from which ``ctypes.util.find_library``
answers from then on, libseccomp's bindings first; ``platform``'s ``uname -p``),
the IPython profile skeleton, and nothing imported from the notebook folder.
After them: ``fork`` as multiprocessing's start method (the others exec an
interpreter, which only a Landlock allowlist lets run), ipykernel's debugger
off, and the notebook folder, ``PYTHONPATH`` and the user site back on
``sys.path``.  The launcher (:mod:`.launcher`) calls these in its order.
See docs/architecture.md.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any, Optional

__all__ = ["user_site_wanted"]


def _drop_cwd_from_path() -> Optional[str]:
    """``-m`` puts the notebook directory first on sys.path: nothing may be imported
    from there before the filter (a user ``json.py`` would run unguarded)."""
    if sys.flags.safe_path or not sys.path:
        return None
    if os.path.abspath(sys.path[0] or ".") == os.getcwd():
        return sys.path.pop(0)
    return None


def _restore_user_paths(dropped: Optional[str], folders: Any) -> None:
    """Once the guard is up, what a plain kernel has on sys.path: the notebook
    folder first, ``PYTHONPATH``, the user site (``pip install --user``), which
    ``-I`` or the dropped working directory kept out until now.  Modules found
    there run inside every layer when imported; the user site's ``.pth`` code
    lines, which would run at every start, do not run."""
    import site

    from .start_folders import add_user_site

    if dropped is not None or sys.flags.safe_path:  # -I implies safe_path
        sys.path.insert(0, dropped if dropped is not None else os.getcwd())
    if sys.flags.isolated:
        sys.path[1:1] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
        user_site = site.getusersitepackages()
        if user_site_wanted() and os.path.isdir(user_site):
            add_user_site(user_site, folders)


def user_site_wanted() -> bool:
    """Whether a plain (not isolated) start of this interpreter would use the user
    site-packages: not with ``PYTHONNOUSERSITE``, set-id, or in a virtual environment
    without system site-packages (as :mod:`site` decides)."""
    if os.environ.get("PYTHONNOUSERSITE") or os.geteuid() != os.getuid() or os.getegid() != os.getgid():
        return False
    if sys.prefix == sys.base_prefix:
        return True
    try:
        with open(os.path.join(sys.prefix, "pyvenv.cfg"), encoding="utf-8") as fh:
            cfg = fh.read()
    except OSError:
        return False
    return re.search(r"^include-system-site-packages\s*=\s*true\s*$", cfg, re.M | re.I) is not None


def _start_ldconfig() -> Any:
    """Start ``ldconfig -p`` (a snapshot of the linker cache, read once while exec
    works); it runs while the launcher reads its settings (:func:`_ldconfig_cache`
    collects it).  None when it cannot be started."""
    import subprocess

    # a user's PATH often lacks the sbin folders (Debian's does): look where ctypes does
    ldconfig = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.access(p, os.X_OK)), "ldconfig")
    try:
        return subprocess.Popen([ldconfig, "-p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "LC_ALL": "C", "LANG": "C"})
    except OSError:
        return None


def _ldconfig_cache(started: Any) -> dict[str, str]:
    """What the ``ldconfig -p`` :func:`_start_ldconfig` started printed: library name
    -> soname for this ABI (empty when it could not run)."""
    import platform
    import subprocess

    if started is None:
        return {}
    try:
        out, _ = started.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        started.kill()
        started.communicate()
        return {}
    tag = {"x86_64": "x86-64", "aarch64": "AArch64"}.get(platform.machine(), "")
    cache: dict[str, str] = {}
    for match in re.finditer(r"^\s+(lib(\S+?)\.so(?:\.\S*)?) \(([^)]*)\)", out, re.M):
        soname, name, flags = match.groups()
        if (tag in flags) if tag else True:
            cache.setdefault(name, soname)
    return cache


def _cached_find_library(cache: dict[str, str]) -> None:
    """``ctypes.util.find_library`` runs ldconfig/gcc, which the filter refuses: answer
    from the snapshot taken before it, and fall back to the original otherwise."""
    import ctypes.util

    original = ctypes.util.find_library

    def find_library(name: str) -> Optional[str]:
        return cache.get(name) or original(name)

    find_library.__doc__ = original.__doc__
    find_library.__wrapped__ = original  # type: ignore[attr-defined]
    ctypes.util.find_library = find_library


def _warm_up() -> None:
    """Everything else that needs exec, done while exec still works (``find_library``
    answers from the linker cache's snapshot from the start: :func:`_cached_find_library`)."""
    import platform

    from . import seccomp_filter

    seccomp_filter.bindings()  # pyseccomp runs find_library at import
    platform.uname()
    platform.processor()  # `uname -p`, cached for debugpy and friends
    # ipykernel, zmq, tornado and jupyter_client are imported once the Landlock domain
    # is in force: what runs before it is kept to what the guard itself needs
    _create_profile_dir()


def _create_profile_dir() -> None:
    """IPython writes its profile skeleton (startup/README) on first start: do it now,
    before the audit hook refuses writes under the IPython directory."""
    try:
        from IPython.core.profiledir import ProfileDir
        from IPython.paths import get_ipython_dir

        ProfileDir.create_profile_dir_by_name(get_ipython_dir(), "default")
    except Exception:
        pass  # a read-only home: IPython copes, as in a plain kernel


def _guard_multiprocessing(enforce_exec: bool) -> None:
    """Fork is the start method that works without exec; spawn/forkserver get a clear
    error.  Set when multiprocessing is first imported: imported by the launcher, every
    ``logging`` record of the kernel would ask it for the process's name (0.2-0.3 us)."""
    from ..audit import probes

    probes.after_import("multiprocessing", lambda module: _fork_by_default(module, enforce_exec))


def _fork_by_default(multiprocessing: Any, enforce_exec: bool) -> None:
    """multiprocessing, just imported: fork by default, and a clear error from spawnv_passfds."""
    import multiprocessing.util as mp_util

    multiprocessing.set_start_method("fork", force=True)
    if not enforce_exec or getattr(mp_util.spawnv_passfds, "_kernel_guard", False):
        return
    from ..exceptions import ExecRefused

    original = mp_util.spawnv_passfds

    def spawnv_passfds(path: Any, args: Any, passfds: Any) -> int:
        pid = original(path, args, passfds)  # the exec is attempted, refused and recorded
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # a child whose exec failed exits at once
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                raise ExecRefused(
                    "starting a new Python interpreter for multiprocessing ('spawn'/'forkserver')",
                    hint="The 'spawn' and 'forkserver' start methods exec a new interpreter, which this "
                         "kernel cannot do. Use 'fork' (the default here): multiprocessing.get_context('fork'), "
                         "or ProcessPoolExecutor(mp_context=multiprocessing.get_context('fork')).",
                    layer="seccomp")
            time.sleep(0.005)
        return pid

    spawnv_passfds._kernel_guard = True  # type: ignore[attr-defined]
    mp_util.spawnv_passfds = spawnv_passfds


def _disable_debugger() -> None:
    """debugpy evaluates arbitrary code through debug_request, outside cell events.

    ipykernel decides whether it has a debugger when ``ipykernel.debugger`` is
    imported, by importing debugpy's server (pydevd: about 0.1 s of start-up).
    Imported here first with that import failing, the kernel has no debugger
    and does not load one; user code can still import debugpy afterwards.
    """
    if "ipykernel.debugger" not in sys.modules:
        blocked = "debugpy.server"
        saved = sys.modules.get(blocked)
        sys.modules[blocked] = None  # type: ignore[assignment]  (makes its import raise ImportError)
        try:
            import ipykernel.debugger  # noqa: F401
        finally:
            if saved is None:
                del sys.modules[blocked]
            else:
                sys.modules[blocked] = saved
    import ipykernel.debugger

    ipykernel.debugger._is_debugpy_available = False


def _adapt_python(enforce_exec: bool, allow_debugger: bool) -> None:
    """Make the standard library live with the filter: fork, no debugpy."""
    _guard_multiprocessing(enforce_exec)
    if not allow_debugger:
        _disable_debugger()
