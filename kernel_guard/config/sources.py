"""Where settings come from, and which of them a source may set.

Values are read, in rising priority, from: the defaults and the environment
(``KERNEL_GUARD_MODE``, ``KERNEL_GUARD_SINKS``), Jupyter/IPython config files
(``c.KernelGuard.mode = ...``) and the command line (``--KernelGuard.mode=``).

A setting that *weakens* the guard (:data:`WEAKENS`) is honoured only from a
trusted source: the environment the server gave the kernel, the kernelspec's
command line, or a config file owned by root, not writable by others, and
outside the user's home (:func:`trusted_file`).  From any other file it is
ignored, and a ``config-ignored`` event says so.  Sinks from an untrusted file
are added to the trusted ones, never replace them (:data:`ADDITIVE`).
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Callable

from traitlets import List
from traitlets.config import Application, Config
from traitlets.config.loader import DeferredConfigString, JSONFileConfigLoader, PyFileConfigLoader

from ..events.sinks import validate_sink_url
from ..exceptions import ConfigError
from .settings import _RANGES, CODE_POLICIES, ENV_PROBLEMS, KernelGuard, _check_range, _env_list

__all__ = ["ADDITIVE", "WEAKENS", "load_config", "trusted_file"]

# -- where settings come from ------------------------------------------------

def _weakens_mode(new: str, old: str) -> bool:
    return new == "audit" and old == "enforce"


def _less(new: Any, old: Any) -> bool:
    return new < old


def _changed(new: Any, old: Any) -> bool:
    return new != old


def _later(new: float, old: float) -> bool:
    """A longer aggregation interval, or none at all, records less and later."""
    return (new == 0 and old > 0) or new > old


def _fewer_recorded(new: str, old: str) -> bool:
    return CODE_POLICIES.index(new) < CODE_POLICIES.index(old)


#: trait -> "does new weaken compared to old?"
WEAKENS: dict[str, Callable[[Any, Any], bool]] = {
    "mode": _weakens_mode,
    "unsafe_allow_package_magics": lambda new, old: bool(new) and not old,
    "code_policy": _fewer_recorded,
    "code_max_chars": _less,
    "queue_size": _less,
    # delivery: less kept, later, or sent elsewhere/differently is weaker evidence
    "spool_dir": _changed,
    "spool_max_bytes": _less,
    "aggregate_interval": _later,
    "syslog_facility": _changed,
    "syslog_app_name": _changed,
    "syslog_max_message_bytes": _less,
    "http_format": _changed,
    "http_gzip": _changed,
    "http_headers_file": _changed,
    "http_headers_env": _changed,
    "http_ca_bundle": _changed,
    "http_timeout": _changed,
    "unsafe_http_skip_tls_verify": lambda new, old: bool(new) and not old,
}
#: traits where an untrusted file may add entries but not remove them
ADDITIVE = ("sinks", "redact_patterns", "extra_persistence_paths", "extra_protected_env")


#: ordinary commands and code: a redaction pattern that matches any of them would blank
#: the fields an investigation reads (process.args, the cell's code), not hide a secret
_ORDINARY = ("ls", "sh -c 'ls -la /tmp'", "/usr/bin/python3", "import os\nos.system('true')",
             "print(1)", "analysis.ipynb", "x = df.head()")


def _blanks_the_record(pattern: Any, ignored: list, files: list[str]) -> bool:
    """Report and return True for a redaction pattern from a user-writable file that
    removes information from the record: it matches nothing at all ('' matches), or
    ordinary commands and code (``'.'``, ``'(?s).*'``).  Weakening, so ignored there."""
    try:
        compiled = re.compile(pattern)
        sample = next((text for text in ("", *_ORDINARY) if compiled.search(text)), None)
    except Exception:
        return False  # not a regular expression: _apply reports it as invalid
    if sample is None:
        return False
    ignored.append({"setting": "KernelGuard.redact_patterns", "value": _shown(pattern), "files": files,
                    "reason": f"weakening setting from a user-writable config file ignored: the pattern matches "
                              f"ordinary commands and code (here {sample!r}) and would blank the record; "
                              "set it in a root-owned config file if it is meant"})
    return True


def trusted_file(path: str) -> bool:
    """Root-owned, not group/world-writable (nor its folder), outside the home."""
    try:
        real = os.path.realpath(path)
        home = os.path.realpath(os.path.expanduser("~"))
        if real == home or real.startswith(home + os.sep):
            return False
        for target in (real, os.path.dirname(real)):
            st = os.stat(target)
            if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
        return True
    except OSError:
        return False


def _load_file(path: str) -> Config:
    loader_cls = JSONFileConfigLoader if path.endswith(".json") else PyFileConfigLoader
    loader = loader_cls(os.path.basename(path), path=os.path.dirname(path))
    return loader.load_config()


def _guard_section(config: Config) -> dict[str, Any]:
    return dict(config.KernelGuard) if "KernelGuard" in config else {}


def _sources(app: Application | None, merged: Config) -> tuple[dict[str, Any], list[str]]:
    """(KernelGuard settings from trusted sources, untrusted files loaded)."""
    trusted: dict[str, Any] = {}
    untrusted_files: list[str] = []
    if app is None:
        return _guard_section(merged), untrusted_files
    for path in getattr(app, "loaded_config_files", []):
        if trusted_file(path):
            try:
                trusted.update(_guard_section(_load_file(path)))
            except Exception:
                pass
        else:
            untrusted_files.append(path)
    trusted.update(_guard_section(getattr(app, "cli_config", Config())))
    return trusted, untrusted_files


def load_config(merged: Config | None = None, app: Application | None = None) -> tuple[KernelGuard, list[dict[str, Any]]]:
    """Build the effective ``KernelGuard``; return it with the settings ignored.

    Each ignored setting is ``{"setting", "value", "reason", "files"}`` for a
    ``config-ignored`` event.  Invalid values fall back to the strict default
    (and are reported) rather than quietly weakening the guard.
    """
    if app is None and Application.initialized():
        app = Application.instance()
    if merged is None:
        merged = app.config if app is not None else Config()
    trusted, untrusted_files = _sources(app, merged)
    ignored: list[dict[str, Any]] = []
    ENV_PROBLEMS.clear()
    guard = KernelGuard()
    guard.mode, guard.sinks  # evaluate the environment defaults now
    ignored.extend(ENV_PROBLEMS)
    for name, value in trusted.items():
        _apply(guard, name, value, ignored, "trusted source")
    for name, value in _guard_section(merged).items():
        if name in trusted and trusted[name] == value:
            continue
        _apply_untrusted(guard, name, value, ignored, untrusted_files)
    extra = []
    for url in _env_list("KERNEL_GUARD_EXTRA_SINKS"):
        try:
            url = validate_sink_url(url)
        except ConfigError as exc:
            ignored.append({"setting": "KERNEL_GUARD_EXTRA_SINKS", "value": repr(url),
                            "reason": f"{exc}; sink left out"})
            continue
        if url not in guard.sinks and url not in extra:
            extra.append(url)
    if extra:
        # added by tools such as `kernel-guard check`, whatever the kernelspec sets
        _apply(guard, "sinks", list(guard.sinks) + extra, ignored, "KERNEL_GUARD_EXTRA_SINKS")
    return guard, ignored


def _shown(value: Any) -> str:
    """``repr(value)`` for a report, at most 200 characters (a 10**5000 has no repr at all)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def _check_text(name: str, value: Any) -> None:
    """Text settings are UTF-8 without NUL: a byte that is not UTF-8 (a lone surrogate)
    or a NUL fails later, in a path or a socket call, where it could stop the guard."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(item, str):
            continue
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{item[:80]!r} holds a byte that is not UTF-8 text: write KernelGuard.{name} "
                              "in UTF-8") from None
        if "\0" in item:
            raise ConfigError(f"{item[:80]!r} holds a NUL character: remove it from KernelGuard.{name}")


def _apply(guard: KernelGuard, name: str, value: Any, ignored: list, source: str) -> None:
    """Set one trait; an invalid value is reported and the current value kept.  Any
    error counts as invalid (a 10**400 overflows a float): one bad value never takes
    the other settings, and the sinks among them, with it."""
    if not guard.has_trait(name):
        ignored.append({"setting": f"KernelGuard.{name}", "value": _shown(value),
                        "reason": f"unknown setting from {source}"})
        return
    try:
        if isinstance(value, DeferredConfigString):
            # --KernelGuard.x=... arrives as text: kernel apps don't list our class
            value = _from_command_line(value, name, guard)
        if name == "sinks" and isinstance(value, (list, tuple)):
            value = _good_sinks(value, ignored, source) or list(guard.sinks)
        _check_text(name, value)
        if name in _RANGES:
            _check_range(name, value)
        setattr(guard, name, value)
    except Exception as exc:
        ignored.append({"setting": f"KernelGuard.{name}", "value": _shown(value),
                        "reason": f"invalid, kept {_shown(getattr(guard, name))}: {exc}"})


def _good_sinks(urls: Any, ignored: list, source: str) -> list[str]:
    """The sink URLs that are valid; each bad one is reported and left out alone."""
    good = []
    for url in urls:
        try:
            good.append(validate_sink_url(url))
        except ConfigError as exc:
            ignored.append({"setting": "KernelGuard.sinks", "value": _shown(url),
                            "reason": f"{exc}; sink left out (from {source}), the others kept"})
    return good


#: list settings whose items never contain a comma: `--KernelGuard.sinks=a,b` is two items
_COMMA_LISTS = ("sinks", "extra_persistence_paths", "extra_protected_env")


def _from_command_line(value: DeferredConfigString, name: str, guard: KernelGuard) -> Any:
    """A command-line value as the trait takes it: a list literal, or comma-separated
    items for the lists whose items never hold a comma, or one item."""
    text = str(value).strip()
    if isinstance(guard.traits()[name], List):
        if text.startswith("["):
            import ast

            try:
                items = ast.literal_eval(text)
            except (ValueError, SyntaxError) as exc:
                raise ConfigError(f"{text[:80]!r} is not a list literal ({exc}): write ['a', 'b']") from None
            return list(items) if isinstance(items, (list, tuple)) else items
        if name in _COMMA_LISTS:
            return [item.strip() for item in text.split(",") if item.strip()]
        return [text]
    return value.get_value(guard.traits()[name])


def _apply_untrusted(guard: KernelGuard, name: str, value: Any, ignored: list, files: list[str]) -> None:
    """Apply a setting from a user-writable file unless it weakens the guard."""
    if isinstance(value, DeferredConfigString) and guard.has_trait(name):
        try:
            value = _from_command_line(value, name, guard)
        except Exception:
            pass
    if name in ADDITIVE and isinstance(value, (list, tuple)):
        current = list(getattr(guard, name))
        added = [v for v in value if v not in current]
        if name == "redact_patterns":
            added = [v for v in added if not _blanks_the_record(v, ignored, files)]
        _apply(guard, name, current + added, ignored, "user config")
        return
    if name in WEAKENS and guard.has_trait(name):
        try:
            weaker = WEAKENS[name](value, getattr(guard, name))
        except Exception:
            weaker = True
        if weaker:
            ignored.append({"setting": f"KernelGuard.{name}", "value": repr(value), "files": files,
                            "reason": "weakening setting from a user-writable config file ignored"})
            return
    _apply(guard, name, value, ignored, "user config")
