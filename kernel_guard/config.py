"""Configuration: one ``KernelGuard`` configurable, and where its values may come from.

Values are read, in rising priority, from: the defaults and the environment
(``KERNEL_GUARD_MODE``, ``KERNEL_GUARD_SINKS``), Jupyter/IPython config files
(``c.KernelGuard.mode = ...``) and the command line (``--KernelGuard.mode=``).

A setting that *weakens* the guard is honoured only from a trusted source: the
environment the server gave the kernel, the kernelspec's command line, or a
config file owned by root, not writable by others, and outside the user's
home.  From any other file it is ignored, and a ``config-ignored`` event says
so.  Sinks from an untrusted file are added to the trusted ones, never
replace them.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Callable

from traitlets import Bool, Enum, Float, Int, List, TraitError, Unicode, default, validate
from traitlets.config import Application, Config, Configurable
from traitlets.config.loader import DeferredConfigString, JSONFileConfigLoader, PyFileConfigLoader

from .events.sinks import SinkOptions, validate_sink_url
from .exceptions import ConfigError

__all__ = ["KernelGuard", "load_config", "trusted_file"]

MODES = ("enforce", "audit")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: environment variables that change what an interpreter loads: a kernelspec must not set
#: them (the server refuses it, install-kernelspec --env too)
LOADER_ENV = re.compile(
    r"^(LD_|DYLD_)|^(PYTHONPATH|PYTHONHOME|PYTHONSTARTUP|PYTHONUSERBASE|PYTHONINSPECT|PYTHONPLATLIBDIR"
    r"|PYTHONEXECUTABLE|GCONV_PATH|IPYTHONDIR|IPYTHON_DIR|JUPYTER_PATH|JUPYTER_CONFIG_DIR|JUPYTER_CONFIG_PATH)$"
)
_FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
               "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
               *(f"local{i}" for i in range(8)))
CODE_POLICIES = ("sha256", "truncated", "full")  # least to most recorded


#: problems found in KERNEL_GUARD_* variables, reported as config-ignored events
ENV_PROBLEMS: list[dict[str, Any]] = []


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


#: numeric settings -> (lowest, highest or None, unit), checked by one validator
_RANGES: dict[str, tuple[float, float | None, str]] = {
    "code_max_chars": (0, 10_000_000, "characters"),
    "queue_size": (100, 10_000_000, "events"),
    "spool_max_bytes": (1 << 20, 1 << 40, "bytes"),
    "aggregate_interval": (0, 3600, "seconds"),
    "syslog_max_message_bytes": (480, 1 << 20, "bytes"),
    "http_timeout": (0.1, 300, "seconds"),
}


class KernelGuard(Configurable):
    """Policy and event settings of kernel_guard."""

    mode = Enum(
        list(MODES),
        help="""``enforce`` refuses shell routes, process creation and the other
        audited actions and records them; ``audit`` only records (not a security
        boundary). Default: $KERNEL_GUARD_MODE, else ``enforce``.""",
    ).tag(config=True)

    @default("mode")
    def _mode_default(self) -> str:
        value = os.environ.get("KERNEL_GUARD_MODE", "enforce").strip() or "enforce"
        if value not in MODES:
            ENV_PROBLEMS.append({"setting": "KERNEL_GUARD_MODE", "value": repr(value),
                                 "reason": "not 'enforce' or 'audit'; using 'enforce'"})
            return "enforce"
        return value

    sinks = List(
        Unicode(),
        help="""Where events go, as URLs: file:///abs/path.jsonl, stderr://,
        logging://logger.name, syslog+udp://host:port, syslog+tcp://host:port,
        syslog+unix:///dev/log, http(s)://host:port/path.
        Default: $KERNEL_GUARD_SINKS (comma-separated), else ``stderr://``
        (the Jupyter server's log).""",
    ).tag(config=True)

    @default("sinks")
    def _sinks_default(self) -> list[str]:
        urls = []
        for url in _env_list("KERNEL_GUARD_SINKS"):
            try:
                urls.append(validate_sink_url(url))
            except ConfigError as exc:
                ENV_PROBLEMS.append({"setting": "KERNEL_GUARD_SINKS", "value": repr(url),
                                     "reason": f"{exc}; sink left out"})
        return urls or ["stderr://"]

    @validate("sinks")
    def _validate_sinks(self, proposal: Any) -> list[str]:
        try:
            return [validate_sink_url(url) for url in proposal["value"]]
        except ConfigError as exc:
            raise TraitError(f"KernelGuard.sinks: {exc}") from None

    unsafe_allow_package_magics = Bool(
        False,
        help="""Let %pip, %uv, %conda, %mamba and %micromamba past the IPython layer.
        They start a program, which the audit layer (mode='enforce') and the seccomp
        filter still refuse: package installs only run with mode='audit' and no
        filter. Installing a package runs its code outside any guard; weakens the guard.""",
    ).tag(config=True)

    package_request_hint = Unicode(
        "ask the people who run this Jupyter service to add it",
        help="""Where a user asks for a package, shown when %pip, %conda and kin are
        refused ("Packages come with this kernel's image; to get one, <this>."): one
        line, at most 200 characters, e.g. "open a ticket at https://help.example.org".""",
    ).tag(config=True)

    @validate("package_request_hint")
    def _validate_package_request_hint(self, proposal: Any) -> str:
        value = proposal["value"].strip().rstrip(".")
        if not value or len(value) > 200 or any(c in value for c in "\r\n"):
            raise TraitError("KernelGuard.package_request_hint must be one line of 1-200 characters saying where "
                             "to ask for a package, e.g. 'open a ticket at https://help.example.org'")
        return value

    package_install_command = Unicode(
        "",
        help="""A terminal command that installs a package into this kernel's environment
        (e.g. "/home/me/venv/bin/python -m pip install"). When set, a refused %pip says to
        run it instead of package_request_hint: a personal kernel's packages are its
        user's to add. `kernel-guard install-kernelspec --user` sets it.""",
    ).tag(config=True)

    @validate("package_install_command")
    def _validate_package_install_command(self, proposal: Any) -> str:
        value = proposal["value"].strip()
        if len(value) > 200 or any(c in value for c in "\r\n"):
            raise TraitError("KernelGuard.package_install_command must be one line of at most 200 characters, "
                             "e.g. '/home/me/venv/bin/python -m pip install'")
        return value

    code_policy = Enum(
        list(CODE_POLICIES),
        default_value="truncated",
        help="""How much of each cell's code goes into ``cell-executed`` events:
        ``full``, ``truncated`` (first ``code_max_chars`` characters) or
        ``sha256`` (only the hash). The sha256 of the full code is always included.""",
    ).tag(config=True)

    code_max_chars = Int(
        200, help="Characters of code kept in events under code_policy='truncated'."
    ).tag(config=True)


    queue_size = Int(
        10_000,
        help="""Events held in memory while the writer catches up; beyond this
        they are counted as dropped and the count is recorded (events).""",
    ).tag(config=True)


    redact_patterns = List(
        Unicode(),
        help="Extra regular expressions whose matches are replaced by [REDACTED] in events.",
    ).tag(config=True)

    @validate("redact_patterns")
    def _validate_patterns(self, proposal: Any) -> list[str]:
        for pattern in proposal["value"]:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise TraitError(f"KernelGuard.redact_patterns: {pattern!r} is not a regular expression "
                                 f"({exc}); fix or remove it") from None
        return list(proposal["value"])

    extra_persistence_paths = List(
        Unicode(),
        help="Extra absolute directories that cells may not write to (like IPython startup).",
    ).tag(config=True)

    @validate("extra_persistence_paths")
    def _validate_paths(self, proposal: Any) -> list[str]:
        for path in proposal["value"]:
            if not os.path.isabs(os.path.expanduser(path)):
                raise TraitError(
                    f"KernelGuard.extra_persistence_paths entry {path!r} must be an absolute path"
                )
        return proposal["value"]

    extra_protected_env = List(
        Unicode(),
        help="Extra environment variable names that cells may not change.",
    ).tag(config=True)

    @validate("extra_protected_env")
    def _validate_env_names(self, proposal: Any) -> list[str]:
        for name in proposal["value"]:
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise TraitError(f"KernelGuard.extra_protected_env: {name!r} is not an environment variable "
                                 "name (letters, digits and _, not starting with a digit)")
        return list(proposal["value"])

    # -- delivery: spool, aggregation, network sinks (docs/sinks.md) -----------
    spool_dir = Unicode(
        help="""Directory under which each network sink (syslog, http) keeps a
        spool of events not yet delivered: they survive a kernel kill and are
        sent by the next start. "" keeps them in memory only (lost with the
        process; weakens the guard). Default: $XDG_STATE_HOME/kernel_guard/spool,
        else ~/.local/state/kernel_guard/spool.""",
    ).tag(config=True)

    @default("spool_dir")
    def _spool_dir_default(self) -> str:
        from .events.spool import default_spool_root

        return default_spool_root()

    spool_max_bytes = Int(
        64 << 20,
        help="""Most undelivered data kept per network sink's spool (bytes,
        shared by the kernels using it). Beyond it events are counted and
        recorded as events-dropped.""",
    ).tag(config=True)


    aggregate_interval = Float(
        5.0,
        help="""Seconds over which repeats of an identical event (same action,
        process, file, reason) are counted into one events-aggregated event;
        the first occurrence is always recorded in full. 0 records every
        repeat one by one (a flood then fills the queue and events are dropped).""",
    ).tag(config=True)


    syslog_facility = Enum(
        list(_FACILITIES),
        default_value="user",
        help="Syslog facility of the syslog sinks' messages (user, auth, authpriv, daemon, local0 ... local7).",
    ).tag(config=True)

    syslog_app_name = Unicode(
        "kernel_guard",
        help="APP-NAME of the syslog sinks' RFC 5424 messages (printable ASCII, at most 48 characters).",
    ).tag(config=True)

    @validate("syslog_app_name")
    def _validate_app_name(self, proposal: Any) -> str:
        value = proposal["value"]
        if not 0 < len(value) <= 48 or not all(33 <= ord(c) <= 126 for c in value):
            raise TraitError("KernelGuard.syslog_app_name must be 1-48 printable ASCII characters without spaces")
        return value

    syslog_max_message_bytes = Int(
        8192,
        help="""Largest syslog message (bytes; rsyslog's default maxMessageSize
        is 8k). Longer events have their long strings cut and carry
        kernel_guard.truncated.""",
    ).tag(config=True)


    http_format = Enum(
        ["ndjson", "json"],
        default_value="ndjson",
        help="""Body of the HTTP sinks' POSTs: ``ndjson`` (one event per line,
        application/x-ndjson) or ``json`` (one array, application/json, for
        Fluent Bit's http input). OTLP sinks always send OTLP JSON.""",
    ).tag(config=True)

    http_gzip = Bool(False, help="Compress HTTP and OTLP sink bodies with gzip (Content-Encoding: gzip).").tag(config=True)

    http_headers_file = Unicode(
        "",
        help="""Absolute path of a file of 'Name: value' lines sent as headers by
        the HTTP and OTLP sinks (e.g. 'Authorization: Bearer ...'); read again on each
        new connection. Never logged.""",
    ).tag(config=True)

    @validate("spool_dir", "http_headers_file", "http_ca_bundle")
    def _validate_abs_path(self, proposal: Any) -> str:
        """Paths are absolute (``~`` expanded); empty means "not set" (spool: memory only)."""
        value, name = proposal["value"], proposal["trait"].name
        if value and not os.path.isabs(os.path.expanduser(value)):
            hint = " (or '' for memory only)" if name == "spool_dir" else ""
            raise TraitError(f"KernelGuard.{name} {value!r} must be an absolute path{hint}")
        return os.path.expanduser(value)

    http_headers_env = Unicode(
        "",
        help="""Name of an environment variable holding 'Name: value' header
        lines (separated by newlines or a literal \\n) for the HTTP and OTLP sinks.""",
    ).tag(config=True)

    @validate("http_headers_env")
    def _validate_env_name(self, proposal: Any) -> str:
        value = proposal["value"]
        if value and not value.replace("_", "a").isalnum():
            raise TraitError(f"KernelGuard.http_headers_env {value!r} must be an environment variable name")
        return value

    http_ca_bundle = Unicode(
        "",
        help="PEM file of CA certificates the HTTPS and OTLP/HTTPS sinks trust (default: the system's).",
    ).tag(config=True)

    http_timeout = Float(
        10.0,
        help="Seconds an HTTP or OTLP sink waits to connect, send or read an answer before retrying later.",
    ).tag(config=True)


    unsafe_http_skip_tls_verify = Bool(
        False,
        help="""Do not verify HTTPS and OTLP/HTTPS sinks' certificates: anyone on the path can
        read or drop events. Weakens the guard; honoured only from a trusted source.""",
    ).tag(config=True)

    def sink_options(self) -> SinkOptions:
        """The network sinks' settings."""
        return SinkOptions(
            syslog_facility=self.syslog_facility, syslog_app_name=self.syslog_app_name,
            syslog_max_message_bytes=self.syslog_max_message_bytes,
            http_format=self.http_format, http_gzip=self.http_gzip,
            http_headers_file=self.http_headers_file, http_headers_env=self.http_headers_env,
            http_ca_bundle=self.http_ca_bundle, http_timeout=self.http_timeout,
            unsafe_http_skip_tls_verify=self.unsafe_http_skip_tls_verify,
        )

    @validate(*_RANGES)
    def _validate_range(self, proposal: Any) -> Any:
        """Numeric settings stay within sane bounds; the message names the setting and the unit."""
        _check_range(proposal["trait"].name, proposal["value"])
        return proposal["value"]


def _check_range(name: str, value: Any) -> None:
    """Raise TraitError naming the setting, its bounds and unit, for a number outside them
    (checked before traitlets converts it: a 10**400 overflows a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return  # traitlets reports a value of the wrong type
    low, high, unit = _RANGES[name]
    if value != value or value < low or (high is not None and value > high):  # value != value: NaN
        bounds = f"{low:,} or more" if high is None else f"between {low:,} and {high:,}"
        if name == "code_max_chars":  # the cap is a sanity bound, not a setting people aim at
            bounds = f"{low:,} or more (at most {high:,})"
        raise TraitError(f"KernelGuard.{name} must be {bounds} {unit}")

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
