"""The supervisor stays small: what it imports to serve and keep the record leaves out the
modules that cost every kernel's supervisor megabytes (docs/launcher.md, "Memory")."""

from __future__ import annotations

import json
import subprocess
import sys

#: each costs the supervisor 0.4-3 MB, with what it imports in turn
HEAVY = ("typing", "dataclasses", "inspect", "importlib.resources", "hashlib", "_hashlib", "secrets", "uuid",
         "getpass", "msgspec", "orjson", "ctypes", "_ctypes", "ipaddress", "warnings", "socket", "selectors", "random", "kernel_guard.events.spool", "kernel_guard.events._chain",
         "kernel_guard.launch.seccomp_filter",
         "traitlets")

#: started as the launcher starts it (-I -S), the supervisor's set-up and record path run
#: as they run there: lean imports, handed-over settings, a file sink, a custodian's check
#: of a kernel's line, an event of its own chained and written, the exec decider loaded
SCRIPT = r"""
import json, os, sys
sys.path[:0] = sys.argv[1].split(os.pathsep)
from kernel_guard.launch import supervisor
supervisor._keep_lean()
from kernel_guard.launch import handover, hardening, witness
from kernel_guard.events.sinks import SinkOptions
settings = {"mode": "enforce", "sinks": ["file://" + sys.argv[2]], "spool_dir": "", "spool_max_bytes": 1 << 20,
            "queue_size": 1000, "aggregate_interval": 5.0, "redact_patterns": [], **SinkOptions.DEFAULTS}
from types import SimpleNamespace
rt = supervisor.start_runtime(SimpleNamespace(spool_dir=None, kernel_id="k"), {"settings": settings}, "supervisor")
from kernel_guard.launch import custodian, exec_decision, refusals, supervisor_loop, memfd, survivors
from kernel_guard.launch.record_protocol import check_lines
line = b'{"event":{"sequence":1,"action":"cell-executed"},"kernel_guard":{"stream":"00000000000000000000000a"}}\n'
claims = check_lines([line], None)
from kernel_guard.events.schema import make_event
rt.emit(make_event("supervisor-started", outcome="success", layer="supervisor", reason="a test"))
rt.pipeline.close()
loaded = sorted(m for m, v in sys.modules.items() if v is not None and type(v) is type(sys))
print(json.dumps({"modules": loaded, "claims": claims}))
"""


def test_the_supervisor_serves_without_the_heavy_modules(tmp_path) -> None:
    """Its set-up, a kernel's line judged, its own event written: none of HEAVY imported."""
    from kernel_guard.launch.supervisor_handle import import_path

    record = tmp_path / "events.jsonl"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", SCRIPT, import_path(), str(record)],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["claims"][0][:2] == ["00000000000000000000000a", 1]
    assert [name for name in HEAVY if name in result["modules"]] == []
    written = [json.loads(line) for line in record.read_text().splitlines()]
    assert "supervisor-started" in [e["event"]["action"] for e in written]


LEAN_URLS = r"""
import json, os, sys
sys.path[:0] = sys.argv[1].split(os.pathsep)
from kernel_guard.launch import supervisor
supervisor._keep_lean()
from kernel_guard.events.sinks import validate_sink_url
from urllib.parse import urlsplit
validate_sink_url("file:///var/log/kernel-guard/events.jsonl")
before = type(sys.modules["ipaddress"]) is type(sys)
host = urlsplit("http://[::1]:4318/v1/logs").hostname
validate_sink_url("http://[::1]:4318/v1/logs")
try:
    urlsplit("http://[zz::1]:4318/")
    bad = "taken"
except ValueError as exc:
    bad = str(exc)
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    urllib_parse = __import__("urllib.parse").parse
    urllib_parse.splittype("http://x")  # deprecated: urllib.parse warns through the module it was given
print(json.dumps({"before": before, "host": host, "bad": bad, "after": type(sys.modules["ipaddress"]) is type(sys),
                  "warned": [str(w.category.__name__) for w in caught]}))
"""


def test_a_bracketed_host_still_parses_in_the_lean_supervisor() -> None:
    """ipaddress is left out until urllib.parse checks a bracketed host: then it is loaded and
    checks it as anywhere else (a bad address is refused); warnings, until one is given."""
    from kernel_guard.launch.supervisor_handle import import_path

    out = subprocess.run([sys.executable, "-I", "-S", "-c", LEAN_URLS, import_path()],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["before"] is False and result["after"] is True
    assert result["host"] == "::1" and "does not appear to be an IPv4 or IPv6 address" in result["bad"]
    assert result["warned"] == ["DeprecationWarning"]
