"""Which kernelspecs may start: pure functions over a kernelspec's argv, env and files.

A kernelspec may start when it is *guarded* — its argv is
``[python, -I, -m, kernel_guard.launch, ...]`` (isolated: no user site, no
``PYTHON*`` variables, no working directory before the guard) — or named in
``c.KernelGuardServer.allowed_kernelspecs``; and, in both cases, when its
``kernel.json`` is a file the server's user cannot change.  The last condition
matters: Jupyter looks for kernelspecs in the user's own data directory
(``~/.local/share/jupyter/kernels``) *first*, so a user can shadow the
admin's ``python3`` with a ``kernel.json`` whose argv or
``metadata.kernel_guard`` merely looks guarded.  The metadata is never
trusted for that reason; and without ``-I`` the interpreter reads the
user's site-packages and, under ``python -m``, the notebook folder first,
where a ``kernel_guard/`` folder or a ``.pth`` file would run before the guard.
A kernelspec ``env`` that sets loader variables (``PYTHONPATH``,
``LD_PRELOAD`` ...) is refused too.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Iterable, Optional

from ..config import LOADER_ENV as _LOADER_ENV

__all__ = ["NOT_INSTALLED", "Verdict", "assess_kernelspec", "is_launcher_argv", "writable_by"]

LAUNCH_MODULE = "kernel_guard.launch"

#: interpreter options that may stand between ``python`` and ``-m``
_PYTHON_FLAGS = re.compile(r"^-[IPsEBuOqd]+$")
_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)?)?$")
NOT_INSTALLED = "is not installed"


@dataclass(frozen=True)
class Verdict:
    """Whether one kernelspec may start, and why."""

    name: str
    allowed: bool
    guarded: bool
    reason: str


def is_launcher_argv(argv: Iterable[str], env: Optional[dict[str, str]] = None) -> bool:
    """True if argv is ``[python, <flags>, -m, kernel_guard.launch, ...]`` with ``-I``.

    Without isolation the interpreter reads the user's site-packages (a
    ``.pth`` file or a module named like one the launcher imports, written by
    an earlier cell), ``PYTHON*`` variables and, under ``-m``, the working
    directory before the guard exists.  ``env`` is accepted for callers that
    pass it; only the flags decide.
    """
    argv = list(argv)
    if not argv or not _PYTHON_NAME.match(os.path.basename(argv[0])):
        return False
    flags: list[str] = []
    rest = argv[1:]
    while rest and _PYTHON_FLAGS.match(rest[0]):
        flags.append(rest.pop(0))
    isolated = any("I" in flag for flag in flags)
    return len(rest) >= 2 and rest[0] == "-m" and rest[1] == LAUNCH_MODULE and isolated


def _runs_launcher_unsafely(argv: list[str], env: dict[str, str]) -> bool:
    """``python -m kernel_guard.launch`` without ``-I``: looks guarded but is not."""
    return LAUNCH_MODULE in argv and not is_launcher_argv(argv, env)


def writable_by(path: str, euid: int, groups: Iterable[int]) -> bool:
    """Whether a process with ``euid`` and ``groups`` could change ``path``."""
    st = os.stat(path)
    if euid == 0 or st.st_uid == euid:
        return True
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and st.st_gid in set(groups)


def _chain_problem(path: str, euid: int, groups: list[int]) -> Optional[str]:
    """Why ``path`` or a folder above it can be changed by ``euid`` (None if none can).

    A writable folder anywhere above lets its owner rename the subtree and put
    another in its place, unless the folder is sticky (``/tmp``) and the entry
    in it belongs to someone else.
    """
    path = os.path.abspath(path)
    child: Optional[str] = None
    while True:
        try:
            if writable_by(path, euid, groups):
                st = os.stat(path)
                sticky_protects = (child is not None and st.st_mode & stat.S_ISVTX
                                   and os.lstat(child).st_uid != euid and st.st_uid != euid)
                if not sticky_protects:
                    return f"can be changed by the server's user (through {path})"
        except OSError as exc:
            return f"cannot be checked ({path}: {exc.strerror})"
        parent = os.path.dirname(path)
        if parent == path:
            return None
        child, path = path, parent


def _protection_problem(resource_dir: str, argv: list[str], euid: int, groups: Iterable[int]) -> Optional[str]:
    """Why the kernelspec's files or interpreter are not protected from ``euid``."""
    groups = list(groups)
    paths = [os.path.join(resource_dir, "kernel.json")]
    if argv and os.path.isabs(argv[0]):
        paths += [argv[0], os.path.realpath(argv[0])]
    for path in dict.fromkeys(paths):
        problem = _chain_problem(path, euid, groups)
        if problem:
            return problem
    return None


def assess_kernelspec(
    name: str,
    argv: list[str],
    env: dict[str, str],
    resource_dir: Optional[str],
    allowed_names: Iterable[str] = (),
    require_protected: bool = True,
    euid: Optional[int] = None,
    groups: Optional[Iterable[int]] = None,
) -> Verdict:
    """Decide whether the kernelspec ``name`` may start."""
    name = name.lower()
    guarded = is_launcher_argv(argv, env)
    listed = name in set(allowed_names)
    if not guarded and not listed:
        if _runs_launcher_unsafely(argv, env):
            why = ("runs kernel_guard.launch without -I, so the user's site-packages, PYTHON* variables "
                   "and the notebook folder are read before the guard exists; reinstall it with "
                   "`kernel-guard install-kernelspec`")
        else:
            why = "does not run the kernel_guard launcher and is not in KernelGuardServer.allowed_kernelspecs"
        return Verdict(name, False, False, why)
    loader_vars = sorted(key for key in env if _LOADER_ENV.search(key))
    if loader_vars:
        return Verdict(name, False, guarded, f"sets {', '.join(loader_vars)} in its env, which changes what it loads")
    euid = os.geteuid() if euid is None else euid
    if require_protected and euid != 0:
        if not resource_dir:
            return Verdict(name, False, guarded, "has no kernel.json on disk to check")
        problem = _protection_problem(resource_dir, argv, euid, os.getgroups() if groups is None else groups)
        if problem:
            return Verdict(name, False, guarded, problem)
    return Verdict(name, True, guarded, "guarded launcher" if guarded else "in KernelGuardServer.allowed_kernelspecs")
