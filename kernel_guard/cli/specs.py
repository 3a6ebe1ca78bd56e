"""What a kernelspec's own kernel.json says, read without starting its kernel.

``kernel-guard check`` reports these next to the escape battery.  One check so
far: whether a Python kernel imports from its working folder.  ``python -m
ipykernel_launcher`` (and ``-c``) puts the working folder first on
``sys.path`` unless ``-P`` or ``-I`` is given, or ``PYTHONSAFEPATH`` is set
(and ``-E`` does not make Python ignore it).  The working folder is the
notebook's folder, which the notebook user writes: a ``kernel_guard/`` or
``ipykernel/`` folder there replaces the real one before any guard runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, List

__all__ = ["SpecResult", "check_spec", "imports_from_working_folder"]

_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)*)?[mw]?")
# interpreter options that take a value, attached ("-Wignore") or as the next word
_VALUE_OPTIONS = "WXQ"


@dataclass
class SpecResult:
    """One finding about a kernelspec: ``ok``, what was found, and the fix when not ok."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _interpreter_options(argv: List[str]) -> tuple[set[str], str | None]:
    """(single-letter options, how the program is given: ``-m``, ``-c``, ``-``,
    ``script`` or None) of a ``python ...`` command line."""
    letters: set[str] = set()
    words = iter(argv[1:])
    for word in words:
        if word in ("-m", "-c", "-"):
            return letters, word
        if word.startswith("--") and word != "--":
            if word == "--check-hash-based-pycs":
                next(words, None)
            continue
        if word == "--" or not word.startswith("-"):
            return letters, "script"
        for index, letter in enumerate(word[1:]):
            if letter in "mc":  # "-Im mod": the program follows
                return letters, "-" + letter
            letters.add(letter)
            if letter in _VALUE_OPTIONS:
                if index == len(word) - 2:
                    next(words, None)  # the value is the next word
                break
    return letters, None


def imports_from_working_folder(argv: Iterable[str], env: dict[str, Any]) -> bool:
    """Whether a kernel started with ``argv`` and the kernelspec's ``env`` puts its
    working folder at the front of ``sys.path`` (only ``python -m``/``-c``/``-`` do)."""
    argv = [str(a) for a in argv]
    if not argv or not _PYTHON_NAME.fullmatch(os.path.basename(argv[0])):
        return False  # not a Python interpreter: its own rules (or a wrapper script)
    letters, program = _interpreter_options(argv)
    if program not in ("-m", "-c", "-"):
        return False  # a script: its own folder goes first, not the working folder
    if letters & {"P", "I"}:
        return False
    return not (env.get("PYTHONSAFEPATH") and "E" not in letters)


def check_spec(argv: Iterable[str], env: dict[str, Any]) -> List[SpecResult]:
    """The findings for one kernelspec's argv and env."""
    argv = list(argv)
    return [_os_layers(argv, env), _working_folder(argv, env)]


def _os_layers(argv: List[str], env: dict[str, Any]) -> SpecResult:
    """Whether the kernel starts behind the launcher: without it, start-up code in the home
    (IPython's config files are Python) runs before the guard, and cffi, ctypes or a raw
    system call start programs that no in-process layer can stop."""
    from ..server.policy import is_launcher_argv

    name = "OS layers (seccomp, supervisor, Landlock)"
    if is_launcher_argv(argv, {k: str(v) for k, v in env.items()}):
        return SpecResult(name, True, "yes: the kernel starts behind the launcher")
    return SpecResult(
        name, False,
        "no: the kernel loads only the in-process layers; IPython config files in the user's profile "
        "(~/.ipython, which a cell can write) run before the guard, and cffi, ctypes or a raw system call "
        "start programs the guard cannot stop",
        "install the launcher kernelspec (kernel-guard install-kernelspec), or mount it as "
        "examples/helm/configmap-values.yaml does")


def _working_folder(argv: List[str], env: dict[str, Any]) -> SpecResult:
    unsafe = imports_from_working_folder(argv, env)
    name = "imports from its working folder"
    if not unsafe:
        return SpecResult(name, True, "no: the working folder is not put first on sys.path")
    return SpecResult(
        name, False,
        "yes: python without -P or -I, and no PYTHONSAFEPATH, puts the notebook's folder first on sys.path; "
        "a kernel_guard/ or ipykernel/ folder there replaces the real one before any guard runs",
        f'add "-P" after {os.path.basename(argv[0])!r} in the kernelspec\'s argv, or "PYTHONSAFEPATH": "1" '
        "to its env (or install the guarded kernelspec: kernel-guard install-kernelspec)",
    )
