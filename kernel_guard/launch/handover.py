"""What the launcher hands its supervisor: the record's settings and what libseccomp knows.

The launcher has read every setting from its trusted sources and validated it
(:mod:`kernel_guard.config`), and it has libseccomp loaded.  It passes the
supervisor one JSON object in its environment (:data:`ENV`; only the
supervisor can read it, and it removes it at once), written in step 1 before
any notebook code runs, as the supervisor's command line is:

* ``settings``: the record's settings under ``KernelGuard``'s names, as the
  launcher's guard took them; the supervisor and its witness write the record
  with them, without traitlets (:func:`take_settings`);
* ``filter``: the supervisor's own filter, compiled (:mod:`.hardening`);
* ``witness_filter``: the witness program's, compiled the same way;
* ``syscalls``: the number of every non-exec call the kernel's filter may send to
  the supervisor, on every ABI of this machine (:func:`take_syscalls`).

So the supervisor loads neither traitlets nor libseccomp's bindings (and what
they import): a few MB less in every kernel's supervisor and witness
(docs/launcher.md, "Memory").  A ``settings`` object with a setting missing,
unknown or not of its kind (a mode other than ``enforce``/``audit``, a sink URL
that does not validate) is void as a whole: the supervisor then reads the same
values as trusted configuration through traitlets, which reports each bad one
and keeps its strict default.  A missing filter or table stops the supervisor
before it serves anything.
"""

from __future__ import annotations

# typing only for the type checker: the supervisor imports this before its witness is
# forked, and every module imported then stays in the witness's memory too
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

from ..events.json_codec import loads

__all__ = ["ENV", "HandedSettings", "hand_over", "kinds", "received", "take_settings", "take_syscalls"]

#: the supervisor's environment variable that carries the hand-over
ENV = "KERNEL_GUARD_HANDOVER"
#: ``KernelGuard.mode``'s values (config.MODES, whose module imports traitlets)
_MODES = ("enforce", "audit")
#: the record's settings the supervisor uses -> their kind (with the sinks' options)
_RECORD: dict[str, type] = {
    "mode": str, "sinks": list, "spool_dir": str, "spool_max_bytes": int, "queue_size": int,
    "aggregate_interval": float, "redact_patterns": list,
}


class HandedSettings:
    """The record's settings under ``KernelGuard``'s attribute names, read-only."""

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the handed-over settings have no {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the handed-over settings are read-only")

    def sink_options(self) -> Any:
        """The network sinks' settings, as ``KernelGuard.sink_options()`` gives them."""
        from ..events.sinks import SinkOptions

        return SinkOptions(**{name: self._values[name] for name in SinkOptions.DEFAULTS})


def kinds() -> dict[str, type]:
    """Every handed-over setting -> its kind."""
    from ..events.sinks import SinkOptions

    return {**_RECORD, **{name: type(default) for name, default in SinkOptions.DEFAULTS.items()}}


# -- the launcher's side -----------------------------------------------------------

def hand_over(guard: Any) -> str:
    """The JSON the launcher puts in the supervisor's environment (``guard``: its ``KernelGuard``)."""
    from . import hardening
    from .notifications import notified_syscall_table

    settings = {name: _plain(getattr(guard, name)) for name in kinds()}
    try:
        syscalls = [[arch, nr, name, abi] for (arch, nr), (name, abi) in notified_syscall_table().items()]
    except Exception:  # noqa: BLE001 - no libseccomp: the supervisor says so and does not start
        syscalls = []
    import json  # the launcher's side; the supervisor reads with the codec alone

    return json.dumps({"settings": settings, "filter": hardening.build(),
                       "witness_filter": hardening.build_witness(), "syscalls": syscalls})


def _plain(value: Any) -> Any:
    """A trait's value as JSON has it (traitlets' lists are lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value


# -- the supervisor's side ---------------------------------------------------------

def received(text: str) -> dict[str, Any]:
    """The hand-over as the supervisor found it (``{}`` when there is none)."""
    try:
        handed = loads(text) if text else {}
    except ValueError:
        return {}
    return handed if isinstance(handed, dict) else {}


def take_syscalls(handed: dict[str, Any]) -> dict[tuple[int, int], tuple[str, str]]:
    """(audit arch, nr) -> (syscall, ABI); ValueError when the table is missing or malformed."""
    table = {}
    for row in handed.get("syscalls") or ():
        arch, nr, name, abi = row if isinstance(row, list) and len(row) == 4 else (None,) * 4
        if not (isinstance(arch, int) and isinstance(nr, int) and isinstance(name, str) and isinstance(abi, str)):
            raise ValueError(f"a malformed row in the system call table handed over: {row!r}")
        table[(arch, nr)] = (name, abi)
    if not table:
        raise ValueError("the launcher handed over no system call table (is libseccomp installed?)")
    return table


def take_settings(handed: dict[str, Any], spool_dir: Optional[str] = None) -> Optional[HandedSettings]:
    """The record's settings, with the supervisor's spool root (``--spool-dir``) when
    the launcher chose one; None when they are void."""
    values, expected = handed.get("settings"), kinds()
    if not isinstance(values, dict) or set(values) != set(expected):
        return None
    if not all(_well_formed(name, value, expected[name]) for name, value in values.items()):
        return None
    if spool_dir is not None:
        values = {**values, "spool_dir": spool_dir}
    return HandedSettings(values)


def _well_formed(name: str, value: Any, kind: type) -> bool:
    """Whether ``value`` is of the setting's kind (and a mode, a sink URL)."""
    if isinstance(value, bool) or kind is bool:
        ok = kind is bool and isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float))
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    else:
        ok = isinstance(value, kind)
    if ok and name == "mode":
        ok = value in _MODES
    if ok and name == "sinks":
        ok = bool(value) and all(_valid_url(url) for url in value)
    return ok


def _valid_url(url: str) -> bool:
    from ..events.sinks import validate_sink_url
    from ..exceptions import ConfigError

    try:
        return validate_sink_url(url) == url
    except ConfigError:
        return False
