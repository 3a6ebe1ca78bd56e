"""The supervisor stays small: what it imports to serve and keep the record leaves out the
modules that cost every kernel's supervisor megabytes (docs/launcher.md, "Memory")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: each costs the supervisor 0.4-3 MB, with what it imports in turn (re, enum, json,
#: urllib.parse and signal together 0.8 MB)
HEAVY = ("re", "enum", "json", "urllib.parse", "signal",
         "typing", "dataclasses", "inspect", "importlib.resources", "hashlib", "_hashlib", "secrets", "uuid",
         "getpass", "msgspec", "orjson", "ctypes", "_ctypes", "ipaddress", "warnings", "socket", "selectors", "random",
         "kernel_guard.events.spool", "kernel_guard.events._chain", "kernel_guard.launch.seccomp_filter", "traitlets")

#: started as the launcher starts it (-I -S): lean imports, handed-over settings, the
#: record's runtime with a file sink (argv: the import path, the record's path)
LEAN_START = r"""
import os, sys
sys.path[:0] = sys.argv[1].split(os.pathsep)
from kernel_guard.launch import supervisor
supervisor._keep_lean()
from kernel_guard.launch import handover, hardening, witness
from kernel_guard.events.sinks import SinkOptions
settings = {"mode": "enforce", "sinks": ["file://" + sys.argv[2]], "spool_dir": "", "spool_max_bytes": 1 << 20,
            "queue_size": 1000, "aggregate_interval": 5.0, "redact_patterns": [], **SinkOptions.DEFAULTS}
from types import SimpleNamespace
rt = supervisor.start_runtime(SimpleNamespace(spool_dir=None, kernel_id="k"), {"settings": settings}, "supervisor")
"""

#: the supervisor's set-up and record path as they run there: a custodian's check of a
#: kernel's line, an event of its own chained and written, the exec decider loaded
SCRIPT = LEAN_START + r"""
from kernel_guard.launch import custodian, exec_decision, leftovers, refusals, supervisor_loop, memfd, survivors
from kernel_guard.launch.record_protocol import check_lines
line = b'{"event":{"sequence":1,"action":"cell-executed"},"kernel_guard":{"stream":"00000000000000000000000a"}}\n'
claims = check_lines([line], None)
from kernel_guard.events.schema import make_event
rt.emit(make_event("supervisor-started", outcome="success", layer="supervisor", reason="a test"))
rt.pipeline.close()
loaded = sorted(m for m, v in sys.modules.items() if v is not None and type(v) is type(sys))
from kernel_guard.events.json_codec import dumps
print(dumps({"modules": loaded, "claims": claims}))
"""


#: an environment as a kernel's supervisor has it: paths, the user, a token the launcher
#: left (its value is redacted wherever it appears; its name needs no pattern to tell)
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/jovyan", "LD_LIBRARY_PATH": "/opt/lib",
       "JUPYTERHUB_USER": "ada", "MY_SERVICE_TOKEN": "service-token-0123456789"}


def test_the_supervisor_serves_without_the_heavy_modules(tmp_path) -> None:
    """Its set-up, a kernel's line judged, its own event written: none of HEAVY imported."""
    from kernel_guard.launch.supervisor_handle import import_path

    record = tmp_path / "events.jsonl"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", SCRIPT, import_path(), str(record)],
                         capture_output=True, text=True, timeout=60, cwd="/", env=ENV)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["claims"][0][:2] == ["00000000000000000000000a", 1]
    assert [name for name in HEAVY if name in result["modules"]] == []
    written = [json.loads(line) for line in record.read_text().splitlines()]
    assert "supervisor-started" in [e["event"]["action"] for e in written]


REDACTING = LEAN_START + r"""
from kernel_guard.events.processors import redact_argv
from kernel_guard.events.schema import make_event
started = "re" in sys.modules
plain = redact_argv(["ls", "-l", "/tmp/data"])
after_plain = "re" in sys.modules
hidden = redact_argv(["mysql", "--password", "hunter2hunter2", "-e", "select 1"])
rt.emit(make_event("exec-denied", outcome="failure", layer="supervisor", reason="a test",
                   process={"executable": "/usr/bin/curl",
                            "args": ["curl", "-H", "Authorization: Bearer " + sys.argv[3]],
                            "command_line": "curl -H 'Authorization: Bearer " + sys.argv[3] + "'"}))
rt.pipeline.close()
from kernel_guard.events.json_codec import dumps
print(dumps({"started": started, "after_plain": after_plain, "plain": plain, "hidden": hidden,
             "re": "re" in sys.modules}))
"""


def test_the_lean_supervisor_loads_the_patterns_when_a_text_needs_them(tmp_path) -> None:
    """``re`` waits until a text holds a candidate: an argv without one is judged without it;
    a password flag and a bearer token are then redacted as anywhere else."""
    from kernel_guard.launch.supervisor_handle import import_path

    record = tmp_path / "events.jsonl"
    token = "abcdef0123456789abcdef0123456789"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", REDACTING, import_path(), str(record), token],
                         capture_output=True, text=True, timeout=60, cwd="/", env=ENV)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["started"], result["after_plain"], result["re"]) == (False, False, True)
    assert result["plain"] == ["ls", "-l", "/tmp/data"]
    assert result["hidden"] == ["mysql", "--password", "[REDACTED]", "-e", "select 1"]
    text = record.read_text()
    assert token not in text and "[REDACTED]" in text and '"exec-denied"' in text


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
