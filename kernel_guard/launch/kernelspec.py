"""``kernel-guard install-kernelspec``: a kernelspec whose kernel runs behind the launcher.

The kernel.json it writes runs ``python -m kernel_guard.launch ... -f
{connection_file}`` with the interpreter it was installed with (the server
extension recognises a guarded kernelspec by exactly that argv shape), copies
ipykernel's logos, and can take the name ``python3`` to replace an image's
default kernel.  Choices made on purpose:

* ``interrupt_mode: signal`` -- jupyter_client sends SIGINT to the kernel's
  process group; the supervisor in that group ignores it.  A cell stuck in C
  code is interrupted as in a plain kernel;
* ``metadata.debugger: false`` -- debugpy evaluates arbitrary code through
  ``debug_request``, outside cell execution and its events; the launcher also
  switches ipykernel's debugger off (``--unsafe-allow-debugger`` keeps it);
* ``metadata.supported_encryption: ["curve"]`` kept from ipykernel, so clients
  may give the kernel CurveZMQ keys;
* ``env.PYTHONSAFEPATH=1`` -- nothing is imported from the notebook directory
  before the filter is in place (the launcher puts it back on ``sys.path``
  for the notebook afterwards).

The profile is validated here, at install time, and again at every launch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Optional

from .._version import __version__
from ..exceptions import KernelGuardError

__all__ = ["add_arguments", "install", "kernel_dict", "run"]


def launcher_argv(profile: str, extra: Optional[list[str]] = None, executable: Optional[str] = None) -> list[str]:
    """The kernelspec argv (pure).  ``-I``: the interpreter starts isolated from the
    user's files -- no user site-packages, no ``PYTHON*`` variables, no working
    directory on the path -- until the guard is up (the launcher adds the notebook
    folder, ``PYTHONPATH`` and the user site back afterwards)."""
    return [executable or sys.executable, "-I", "-m", "kernel_guard.launch", "--profile", profile,
            *(extra or []), "-f", "{connection_file}"]


def kernel_dict(profile: str, profile_mode: str, display_name: str, env: dict[str, str],
                extra: Optional[list[str]] = None) -> dict:
    """The kernel.json content."""
    return {
        "argv": launcher_argv(profile, extra),
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "env": {"PYTHONSAFEPATH": "1", **env},
        "metadata": {
            "kernel_guard": {"version": __version__, "profile": profile, "mode": profile_mode},
            "debugger": False,
            "supported_encryption": ["curve"],
        },
        "kernel_protocol_version": "5.5",
    }


def _profile_argument(name_or_path: str) -> tuple[str, str]:
    """(value for --profile, its mode), validated now; built-ins stay by name."""
    from . import profiles

    profile = profiles.load_profile(name_or_path)
    builtin = os.path.dirname(profile.path) == str(profiles.builtin_dir()) and profile.name == name_or_path
    return (profile.name if builtin else profile.path), profile.mode


def laptop_events_file() -> str:
    """Where a ``--user`` install's kernels write their record: the user's state folder
    (``$XDG_STATE_HOME``, else ``~/.local/state``), not the terminal running Jupyter."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(os.path.abspath(state), "kernel_guard", "events.jsonl")


def _laptop_settings(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """A personal (``--user``) kernelspec's env and launcher options: events to a file in the
    user's state folder (unless ``--env KERNEL_GUARD_SINKS`` chose), and a refused ``%pip``
    that says how to install into this kernel's environment."""
    env = dict(env)
    if "KERNEL_GUARD_SINKS" not in env:
        events = laptop_events_file()
        os.makedirs(os.path.dirname(events), mode=0o700, exist_ok=True)
        env["KERNEL_GUARD_SINKS"] = "file://" + events
    return env, [f"--KernelGuard.package_install_command={sys.executable} -m pip install"]


def install(name: str = "python3-guarded", display_name: Optional[str] = None, user: bool = False,
            prefix: Optional[str] = None, profile: str = "default", env: Optional[dict[str, str]] = None) -> str:
    """Install the kernelspec; return the directory it went to."""
    from jupyter_client.kernelspec import KernelSpecManager

    env, extra = _laptop_settings(env or {}) if user else (env or {}, [])
    profile_arg, mode = _profile_argument(profile)
    display = display_name or f"Python {sys.version_info[0]} (kernel_guard{'' if mode == 'enforce' else ', audit only'})"
    with tempfile.TemporaryDirectory() as tmp:
        staging = os.path.join(tmp, name)
        _copy_logos(staging)
        with open(os.path.join(staging, "kernel.json"), "w") as fh:
            json.dump(kernel_dict(profile_arg, mode, display, env, extra), fh, indent=1)
            fh.write("\n")
        return KernelSpecManager().install_kernel_spec(staging, name, user=user, prefix=prefix)


def _copy_logos(staging: str) -> None:
    """ipykernel's logos, so front ends show the Python icon."""
    os.makedirs(staging)
    try:
        from ipykernel.kernelspec import RESOURCES
    except ImportError:
        return
    for entry in os.listdir(RESOURCES):
        if entry.startswith("logo"):
            shutil.copy(os.path.join(RESOURCES, entry), staging)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernel-guard install-kernelspec``."""
    parser.add_argument("--name", default="python3-guarded",
                        help="kernelspec name (use python3 to replace the default kernel)")
    parser.add_argument("--display-name", help="name shown in the launcher")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help=f"install into {sys.prefix}")
    where.add_argument("--prefix", help="install into PREFIX/share/jupyter/kernels")
    parser.add_argument("--profile", default="default",
                        help="seccomp profile: default, audit, or a path to a JSON profile")
    parser.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="environment variable for the kernel (repeatable), e.g. KERNEL_GUARD_SINKS=...")


#: a kernelspec name as jupyter_client accepts it
_NAME = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)


def _check_name(name: str) -> str:
    if not name or not _NAME.match(name):
        raise ValueError(f"--name {name!r}: a kernelspec name is letters, digits, '.', '_' and '-' "
                         "(e.g. python3 or python3-guarded)")
    return name


def _parse_env(items: list[str]) -> dict[str, str]:
    """--env K=V items, each checked as every kernel start would check it."""
    from ..config import LOADER_ENV, MODES
    from ..events.sinks import validate_sink_url

    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r} is not K=V")
        if LOADER_ENV.search(key):
            raise ValueError(f"--env {key}: it changes what the kernel loads, and the server refuses kernelspecs "
                             "that set it; configure it elsewhere")
        if key == "KERNEL_GUARD_MODE" and value not in MODES:
            raise ValueError(f"--env KERNEL_GUARD_MODE={value!r}: use one of {', '.join(MODES)}")
        if key in ("KERNEL_GUARD_SINKS", "KERNEL_GUARD_EXTRA_SINKS"):
            for url in (u.strip() for u in value.split(",")):
                if url:
                    try:
                        validate_sink_url(url)
                    except KernelGuardError as exc:
                        raise ValueError(f"--env {key}: {exc}") from None
        env[key] = value
    return env


def run(args: argparse.Namespace) -> int:
    """Install; errors name what to fix."""
    try:
        _check_name(args.name)
        env = _parse_env(args.env)
        prefix = sys.prefix if args.sys_prefix else args.prefix
        path = install(args.name, args.display_name, user=args.user, prefix=prefix,
                       profile=args.profile, env=env)
    except (KernelGuardError, ValueError) as exc:
        print(f"kernel-guard install-kernelspec: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        hint = " Perhaps you want `sudo`, `--user` or `--sys-prefix`?" if exc.errno == 13 else ""
        print(f"kernel-guard install-kernelspec: {exc}.{hint}", file=sys.stderr)
        return 1
    print(f"Installed kernelspec {args.name} in {path}")
    sinks = (env if not args.user else _laptop_settings(env)[0]).get("KERNEL_GUARD_SINKS")
    if args.user and sinks:
        print(f"Its kernels record what they refuse in {sinks.replace('file://', '', 1)}; "
              "`kernel-guard verify` reads it.")
    return 0
