"""The event model: one ECS-shaped dict per thing that happened.

Every event is a plain ``dict`` (``Event``) with Elastic Common Schema field
names as nested objects, so Fluent Bit, OpenSearch, Loki and SIEMs ingest the
JSON line as is.  Sources (the IPython layer, the audit hook, the supervisor,
the server extension) build events with :func:`make_event`; the processors in
:mod:`kernel_guard.events.processors` add context, redact and number them; sinks
write them.
"""

from __future__ import annotations

import os
import threading
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Any, Dict

from .json_codec import dumps

try:
    import orjson
except ImportError:  # an optional speed-up (the "fast" extra); the standard library is the fallback
    orjson = None  # type: ignore[assignment]

__all__ = [
    "ECS_VERSION",
    "Event",
    "KernelContext",
    "Shared",
    "make_event",
    "new_event_id",
    "timestamp",
    "to_json",
    "escape_line_breaks",
    "to_json_line",
    "validate_event",
    "writable_part",
]

#: An event: a JSON-serialisable dict in the ECS layout described in the README.
if TYPE_CHECKING:
    Event = Dict[str, Any]
else:
    Event = dict

ECS_VERSION = "8.11.0"

# Refusals and recorded-but-allowed attempts carry ECS's intrusion_detection
# category, whose expected types are allowed/denied; each type is expected by
# one of the categories (tests/events/test_ecs_categories.py checks it against
# ECS's own list).
_ID = "intrusion_detection"
_CATEGORY = {
    # action -> (event.category, event.type)
    "cell-executed": (["process"], ["info"]),
    "kernel-started": (["process"], ["start"]),
    "kernel-stopped": (["process"], ["end"]),
    "shell-refused": (["process", _ID], ["start", "denied"]),
    "shell-command": (["process", _ID], ["start", "allowed"]),
    "exec-denied": (["process", _ID], ["start", "denied"]),
    "exec-attempt": (["process", _ID], ["start", "allowed"]),
    "exec-allowed": (["process", _ID], ["start", "allowed"]),
    "library-loaded": (["library"], ["start"]),
    "symbol-denied": (["library", _ID], ["start", "denied"]),
    "persistence-denied": (["file", _ID], ["creation", "denied"]),
    "truncate-denied": (["file", _ID], ["change", "denied"]),
    "persistence-write": (["file", _ID], ["creation", "allowed"]),
    "env-denied": (["configuration", _ID], ["change", "denied"]),
    "credential-denied": (["file", _ID], ["access", "denied"]),
    "credential-read": (["file", _ID], ["access", "allowed"]),
    "env-change": (["configuration", _ID], ["change", "allowed"]),
    "guard-tampering": (["configuration", _ID], ["change", "denied"]),
    "config-ignored": (["configuration"], ["info"]),
    "interpreter-denied": (["process", _ID], ["start", "denied"]),
    "events-dropped": (["configuration"], ["info"]),
    "events-aggregated": (["process"], ["info"]),
    "sink-error": (["configuration"], ["info"]),
    "sink-recovered": (["configuration"], ["change"]),
    "guard-loaded": (["process"], ["info"]),
    "guard-error": (["process"], ["info"]),
    "signal-denied": (["process", _ID], ["change", "denied"]),
    "signal-attempt": (["process", _ID], ["change", "allowed"]),
    "listener-denied": (["process", _ID], ["change", "denied"]),
    "supervisor-lost": (["process"], ["end"]),
    "supervisor-stopped": (["process"], ["end"]),
    "supervisor-stalled": (["process"], ["change"]),
    "supervisor-resumed": (["process"], ["change"]),
    "credentials-scrubbed": (["configuration"], ["change"]),
    "code-inspected": (["process"], ["info"]),
    "code-completed": (["process"], ["info"]),
    "comm-message": (["process"], ["info"]),
    "input-received": (["process"], ["info"]),
    "launcher-setup": (["process"], ["start"]),
    # a program that does not exist, or a library's probe answered as absent: not refusals nobody caused
    "exec-not-found": (["process"], ["start", "info"]),
    "library-probe": (["process"], ["start", "info"]),
    "bytecode-not-cached": (["file"], ["info"]),
    "memfd-refused": (["process", _ID], ["change", "denied"]),
    "sched-denied": (["process", _ID], ["change", "denied"]),
    "kernel-survivors-ended": (["process"], ["end"]),
    "kernel-survivors-remain": (["process"], ["info"]),
    "lines-refused": (["configuration", _ID], ["denied"]),
    "custodian-lost": (["process"], ["end"]),
    "stream-started": (["process"], ["start"]),
    "stream-ended": (["process"], ["end"]),
    "chain-checkpoint": (["process"], ["info"]),
    # the server's
    "server-hardening": (["configuration"], ["info"]),
    "kernel-start": (["process"], ["start"]),
    "kernel-restart": (["process"], ["change"]),
    "kernel-interrupt": (["process"], ["change"]),
    "kernel-shutdown": (["process"], ["end"]),
    "kernel-culled": (["process"], ["end"]),
    "kernel-refused": (["process", _ID], ["start", "denied"]),
    "kernel-unguarded": (["process", _ID], ["start", "allowed"]),
    "terminal-created": (["process", _ID], ["start", "allowed"]),
    "terminal-refused": (["process", _ID], ["start", "denied"]),
    "file-download": (["file"], ["access"]),
    "file-download-refused": (["file", _ID], ["access", "denied"]),
    "server-event-refused": (["web", _ID], ["access", "denied"]),
}

#: the same, as the tuples every event of an action shares: immutable, so no event can
#: change another's, and nothing to allocate or for the garbage collector to track (two
#: lists per event were a tenth of the pipeline's time under a flood).  JSON writes
#: them as arrays; a reader of the line sees lists.
_CATEGORIES = {action: (tuple(category), tuple(types)) for action, (category, types) in _CATEGORY.items()}
_INFO = (("process",), ("info",))

#: jupyter_server's connection file name (the pattern is compiled where it is used: ``re`` is
#: not imported by a supervisor, docs/launcher.md "Memory")
_JUPYTER_KERNEL_FILE = r"kernel-(?P<id>[0-9A-Za-z._-]+)\.json$"


_second: tuple[int, str] = (-1, "")  # (a second, its "YYYY-MM-DDTHH:MM:SS"): formatted once


def timestamp() -> str:
    """RFC 3339 UTC timestamp with microseconds and a ``Z``.

    Every event has one: the date part is formatted once per second, which
    makes this about 4x cheaper than ``datetime.now().strftime``.
    """
    global _second
    now = time.time()
    second = int(now)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int((now - second) * 1e6):06d}Z"


#: ids are made in blocks, one block per thread: a getrandom call per event was half of an
#: id's cost, and formatting each id on its own most of the rest.  A forked child starts a
#: new generation (its parent's blocks are not its own: ids would repeat).
_IDS_PER_BLOCK = 256
_random = threading.local()
_generation = 0


def _new_generation() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_new_generation)
#: a random hex digit -> the RFC 4122 variant's first digit (10xx) made from it
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
#: each column of a UUID's text: the random hex digit it takes (0-31), or the byte it holds
#: ("-", the version "4", or "v": the variant digit made from random digit 16)
_UUID_COLUMNS = (*range(8), b"-", *range(8, 12), b"-", b"4", *range(13, 16), b"-", b"v", *range(17, 20), b"-",
                 *range(20, 32))


def _uuid4_block(count: int = _IDS_PER_BLOCK) -> list[str]:
    """``count`` random (version 4) UUIDs as text, formatted column by column over all of
    them at once (36 slice copies instead of a format per id)."""
    digits = os.urandom(16 * count).hex().encode("ascii")
    width = len(_UUID_COLUMNS) + 1  # and a space between ids
    out = bytearray(b" " * (width * count))
    for column, source in enumerate(_UUID_COLUMNS):
        if source == b"v":
            out[column::width] = digits[16::32].translate(_VARIANT)
        elif isinstance(source, bytes):
            out[column::width] = source * count
        else:
            out[column::width] = digits[source::32]
    return out.decode("ascii").split()


def new_event_id() -> str:
    """A random (version 4) UUID as text: a tenth of ``str(uuid.uuid4())``'s cost (measured)."""
    local = _random
    ids = getattr(local, "ids", None)
    if not ids or local.generation != _generation:
        ids = local.ids = _uuid4_block()
        local.generation = _generation
    return ids.pop()


class Shared(dict):
    """A part every event of a process holds the same (``ecs``; ``user`` and ``host`` of
    a context): one object, not one per event (each was an allocation for the garbage
    collector to track under a flood), and read-only, so no event can change another's.
    JSON writes it as any object; a copy or a pickle of it is a plain dict."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("every event shares this object: give the event a new one instead of changing it")

    __setitem__ = __delitem__ = __ior__ = update = setdefault = pop = popitem = clear = _refuse  # type: ignore

    def __reduce__(self) -> tuple:
        return dict, (dict(self),)

    def __copy__(self) -> dict:
        return dict(self)

    def __deepcopy__(self, memo: dict) -> dict:
        return dict(self)


_ECS = Shared(version=ECS_VERSION)


def make_event(
    action: str,
    *,
    outcome: str,
    layer: str,
    reason: str | None = None,
    process: dict[str, Any] | None = None,
    file: dict[str, Any] | None = None,
    kind: str = "event",
    **guard_fields: Any,
) -> Event:
    """Build one event; context (user, host, kernel) is added by processors.

    ``outcome`` is ECS's ``success``, ``failure`` or ``unknown``; refused and
    denied attempts are ``failure``.  ``process`` and ``file`` are ECS's
    objects; extra keyword arguments land under ``kernel_guard``
    (``technique``, ``execution_count`` ...).
    """
    category, types = _CATEGORIES.get(action, _INFO)
    event: Event = {
        "@timestamp": timestamp(),
        "ecs": _ECS,
        "event": {
            "kind": kind,
            "category": category,
            "type": types,
            "action": action,
            "outcome": outcome,
            "id": new_event_id(),
        },
        "kernel_guard": {"layer": layer, **guard_fields},
    }
    if reason:
        event["event"]["reason"] = reason
    if process:
        event["process"] = process
    if file:
        event["file"] = file
    return event


def _native_event_parts() -> None:
    """Make events, timestamps and ids natively where :mod:`._event` is built: the same
    dicts, keys and order, at a third of the cost (1.5 us warm in Python, 3-4 us for the
    cold events of a burst: a quarter of the whole pipeline's time, measured).  This
    module's Python functions stay what the native ones fall back to."""
    global make_event, timestamp, new_event_id
    try:
        from . import _event
    except ImportError:  # not built: the Python way
        return
    make_event = _event.EventMaker(_CATEGORIES, _INFO, _ECS, _python_make_event).make  # type: ignore[assignment]
    timestamp, new_event_id = _event.timestamp, _event.new_id  # type: ignore[assignment]


_python_make_event, _python_timestamp, _python_new_event_id = make_event, timestamp, new_event_id
_native_event_parts()


def writable_part(event: Event, name: str) -> Dict[str, Any]:
    """``event[name]`` as a plain dict to write into, put in its place: a shared (or other)
    mapping is copied; anything else (None, a number, a list: a caller's bug) gives way
    to an empty one."""
    part = event.get(name)
    if type(part) is not dict:
        part = event[name] = dict(part) if isinstance(part, dict) else {}
    return part


def to_json(event: Event) -> str:
    """One line of JSON, no trailing newline; never raises on odd values."""
    return to_json_line(event)[:-1].decode("utf-8")


def to_json_line(event: Event) -> bytes:
    """One line of UTF-8 JSON with its newline, as sinks write it; never raises.

    orjson, when installed, serialises several times faster (the file sink's
    throughput is bounded by this); what it refuses (a lone surrogate, an
    integer beyond 64 bits) goes through the standard library's encoder.
    """
    if orjson is not None:
        try:
            line = orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)
            return escape_line_breaks(line)
        except TypeError:  # orjson.JSONEncodeError
            pass
    return escape_line_breaks((dumps(event, default=repr) + "\n").encode("utf-8", "replace"))


#: characters valid unescaped in JSON that Python's str.splitlines (and readers
#: like it) take for line ends: U+2028, U+2029, U+0085 (NEL), as UTF-8
_LINE_BREAKS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def escape_line_breaks(line: bytes) -> bytes:
    """Escape them, so one event stays one line for every reader."""
    if not line.isascii() and (b"\xe2\x80" in line or b"\xc2\x85" in line):  # isascii: a fast C scan
        for raw, escaped in _LINE_BREAKS:
            line = line.replace(raw, escaped)
    return line


class KernelContext:
    """Who and where: the fields every event of this process carries.

    Read once from the environment (``JUPYTERHUB_USER``, ``JPY_SESSION_NAME``)
    and the kernel's connection file; the kernel id and session are filled in
    later by the IPython layer or the launcher when they become known.
    """

    def __init__(self, kernel_id: str | None = None, mode: str = "enforce") -> None:
        self.user = os.environ.get("JUPYTERHUB_USER") or _os_user()
        self.hostname = os.uname().nodename
        self.notebook = os.environ.get("JPY_SESSION_NAME") or None
        self.kernel_id = kernel_id
        self.mode = mode
        #: who writes this process's records when it is not the kernel: "supervisor",
        #: "witness" (kernel_guard.recorded_by, which the custodian never takes from a kernel)
        self.author: str | None = None
        # the cell being executed, set by the execution-event wrapper
        self.execution_count: int | None = None
        self.cell_id: str | None = None
        self.pid = os.getpid()

    @staticmethod
    def kernel_id_from_connection_file(path: str | None) -> str | None:
        """The kernel id that jupyter_server encodes in ``kernel-<id>.json``.

        Standalone clients name the file freely; its stem is the best id then.
        """
        if not path:
            return None
        import re

        name = os.path.basename(path)
        match = re.search(_JUPYTER_KERNEL_FILE, name)
        return match.group("id") if match else os.path.splitext(name)[0] or None


def _os_user() -> str:
    """The OS user name as ``getpass.getuser`` finds it (the login variables, then the
    passwd entry), or the uid when it has none (containers).  Not through getpass,
    whose import (with termios) costs every supervisor 0.4 MB."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name)
        if user:
            return user
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


_REQUIRED: tuple[tuple[str, ...], ...] = (
    ("@timestamp",),
    ("ecs", "version"),
    ("event", "action"),
    ("event", "outcome"),
    ("event", "id"),
    ("event", "kind"),
    ("kernel_guard", "layer"),
)
_OUTCOMES = frozenset({"success", "failure", "unknown"})


def validate_event(event: Event) -> list[str]:
    """Problems with an event against the documented schema (empty when valid)."""
    problems = []
    for path in _REQUIRED:
        node: Any = event
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node in (None, ""):
            problems.append("missing " + ".".join(path))
    outcome = event.get("event", {}).get("outcome")
    if outcome is not None and outcome not in _OUTCOMES:
        problems.append(f"event.outcome {outcome!r} is not one of {sorted(_OUTCOMES)}")
    import re

    ts = event.get("@timestamp", "")
    if ts and not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ts):
        problems.append(f"@timestamp {ts!r} is not RFC 3339 UTC")
    for key in ("category", "type"):
        value = event.get("event", {}).get(key)
        if value is not None and not isinstance(value, (list, tuple)):
            problems.append(f"event.{key} must be a list")
    return problems
