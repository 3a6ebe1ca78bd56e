"""The ``KernelGuard`` configurable: every setting, grouped by what it governs.

``c.KernelGuard.<name>`` is the one configuration surface (a contract): the
groups below are mixins of that one class, not sections of their own.

- :class:`PolicySettings` — what the guard refuses: mode, package magics, extra
  protected paths and variables;
- :class:`RecordSettings` — how much the record keeps: code policy, redaction,
  the queue and aggregation;
- :class:`DeliverySettings` — where the record goes: sinks, spools, and the
  syslog and HTTP sinks' options.

Each security-relevant trait is validated where it enters; numeric settings
share one range check whose message names the setting, the bounds and the unit.
"""

from __future__ import annotations

import os
import re
from typing import Any

from traitlets import Bool, Enum, Float, HasTraits, Int, List, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from ..events.sinks import SinkOptions, validate_sink_url
from ..exceptions import ConfigError

__all__ = ["CODE_POLICIES", "ENV_PROBLEMS", "LOADER_ENV", "MODES", "DeliverySettings", "KernelGuard",
           "PolicySettings", "RecordSettings"]

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



class PolicySettings(HasTraits):
    """What the guard refuses (``KernelGuard``'s policy settings)."""

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


class RecordSettings(HasTraits):
    """How much of what happens the record keeps (``KernelGuard``'s record settings)."""

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

    aggregate_interval = Float(
        5.0,
        help="""Seconds over which repeats of an identical event (same action,
        process, file, reason) are counted into one events-aggregated event;
        the first occurrence is always recorded in full. 0 records every
        repeat one by one (a flood then fills the queue and events are dropped).""",
    ).tag(config=True)


class DeliverySettings(HasTraits):
    """Where the record goes, and how (``KernelGuard``'s sink settings; docs/sinks.md)."""

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

    spool_dir = Unicode(
        help="""Directory under which each network sink (syslog, http) keeps a
        spool of events not yet delivered: they survive a kernel kill and are
        sent by the next start. "" keeps them in memory only (lost with the
        process; weakens the guard). Default: $XDG_STATE_HOME/kernel_guard/spool,
        else ~/.local/state/kernel_guard/spool.""",
    ).tag(config=True)

    @default("spool_dir")
    def _spool_dir_default(self) -> str:
        from ..events.spool import default_spool_root

        return default_spool_root()

    spool_max_bytes = Int(
        64 << 20,
        help="""Most undelivered data kept per network sink's spool (bytes,
        shared by the kernels using it). Beyond it events are counted and
        recorded as events-dropped.""",
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


class KernelGuard(PolicySettings, RecordSettings, DeliverySettings, Configurable):
    """Policy and event settings of kernel_guard (``c.KernelGuard.<name>``)."""

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

