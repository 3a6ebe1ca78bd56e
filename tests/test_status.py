"""`kernel-guard status` and `%guard_status`: each layer reported as the system shows it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Iterator

import pytest
from conftest import GuardedKernel
from launcher_support import LaunchedKernel, specs_on_path

from kernel_guard import cli

STATUS_CELL = ("import json\nr = get_ipython().run_line_magic('guard_status', '--json')\n"
               "print(json.dumps(r, default=str))")


def in_kernel(kernel: GuardedKernel) -> dict:
    result = kernel.execute(STATUS_CELL)
    assert result.status == "ok", result.error_text
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchedKernel]:
    """A kernel from an installed guarded kernelspec."""
    with specs_on_path(str(tmp_path_factory.mktemp("prefix")), ("guarded",)):
        kernel = LaunchedKernel(str(tmp_path_factory.mktemp("k")), "guarded").start()
        yield kernel
        kernel.shutdown()


def test_status_of_a_plain_process_reports_nothing_active() -> None:
    """Run from a shell, status says the launcher, seccomp, supervisor and audit hook are off."""
    proc = subprocess.run([sys.executable, "-m", "kernel_guard.cli", "status", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    layers = report["layers"]
    assert report["launcher"] is False
    assert layers["seccomp"]["active"] is False and layers["seccomp"]["seccomp"] == "0"
    assert layers["supervisor"]["state"] == "none" and layers["audit"]["state"] == "off"
    assert report["transport"]["state"] == "no kernel"


def test_guard_status_in_a_launched_kernel_reports_every_layer(launched: LaunchedKernel) -> None:
    """%guard_status in a launcher kernel shows seccomp 2, a live supervisor, enforcing hooks, healthy sinks."""
    report = in_kernel(launched)
    layers = report["layers"]
    assert report["launcher"] is True
    assert layers["seccomp"]["active"] and layers["seccomp"]["seccomp"] == "2"
    assert layers["seccomp"]["no_new_privs"] == "1" and layers["seccomp"]["listener_fds_held"] == []
    assert layers["seccomp"]["profile"]["name"] == "default"
    sup = layers["supervisor"]
    assert sup["active"] and sup["state"] == "enforce" and sup["pid"] == launched.supervisor_pid()
    assert sup["own_seccomp"] == "2" and set(sup["sinks"].values()) == {"ok"}
    assert layers["audit"]["state"] == "enforce" and layers["audit"]["hook"] == "native"
    assert layers["ipython"]["state"] == "enforce"
    assert report["events"]["state"] == "ok" and report["events"]["dropped"] == 0
    assert report["transport"]["transport"] == "tcp" and report["transport"]["curve"] is False
    assert report["debugger"]["active"] is False


def _status_bundle(kernel: GuardedKernel, code: str = "%guard_status") -> dict:
    """The mime bundle the notebook receives for ``code``: one display_data, nothing on stdout."""
    result = kernel.execute(code)
    assert result.status == "ok", result.error_text
    assert result.stdout == "", result.stdout
    bundles = [out["data"] for out in result.outputs if "text/html" in out.get("data", {})]
    assert len(bundles) == 1, result.outputs
    return bundles[0]


def test_guard_status_shows_an_html_table_with_layer_state_detail(launched: LaunchedKernel) -> None:
    """%guard_status displays an HTML table with one row per layer: name, state, and the evidence in words."""
    page = _status_bundle(launched)["text/html"]
    assert page.startswith('<table class="kernel-guard-status">') and "<th>layer</th><th>state</th><th>detail</th>" in page
    cells = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td[^>]*>([^<]*)</td></tr>", page)
    by_layer = {layer: (state, detail) for layer, state, detail in cells}
    assert {"ipython", "audit", "seccomp", "supervisor", "landlock", "events", "transport"} <= set(by_layer)
    assert by_layer["audit"] == ("enforce", "hook: native")
    assert by_layer["seccomp"][0] == "enforce" and "profile: default (mode enforce" in by_layer["seccomp"][1]
    assert by_layer["landlock"][0] == "on" and "Landlock ABI" in by_layer["landlock"][1]
    assert "{'" not in page and "&#x27;:" not in page and "…" not in page  # words, not Python dicts cut short


def test_guard_status_text_has_aligned_columns_and_whole_words(launched: LaunchedKernel) -> None:
    """Where HTML is not shown, text/plain is the same table: columns aligned, long details wrapped
    at word boundaries, no Python dicts."""
    text = _status_bundle(launched)["text/plain"]
    lines = text.splitlines()
    assert lines[0].startswith("kernel_guard status of pid ") and "kernel_guard.launch" in lines[0]
    header = lines[1]
    detail_column = header.index("detail")
    assert header.split() == ["layer", "state", "detail"] and header.index("state") > header.index("layer")
    for line in lines[2:]:
        assert len(line) <= 100, line
        if line[2] != " ":  # a row: its detail starts in the detail column
            assert len(line) <= detail_column or line[detail_column - 2:detail_column] == "  ", line
        else:  # a wrapped detail: continues in the detail column
            assert line[:detail_column].strip() == "" and line[detail_column] != " ", line
    words = set(re.findall(r"[\w./-]+", " ".join(lines[2:])))
    assert {"enforce", "native", "default"} <= words
    assert "{'" not in text and "':" not in text and "…" not in text, text
    for name in ("ipython", "audit", "seccomp", "supervisor", "landlock", "events", "transport", "debugger"):
        assert re.search(rf"^  {name}\s+\S", text, re.M), (name, text)


def test_guard_status_json_still_returns_data(launched: LaunchedKernel) -> None:
    """`%guard_status --json` returns the report as a dict (no table is displayed)."""
    result = launched.execute("r = %guard_status --json\nprint(type(r).__name__, sorted(r['layers']))")
    assert result.status == "ok" and not result.outputs, (result.error_text, result.outputs)
    assert result.stdout.startswith("dict ['audit', 'ipython', 'landlock', 'seccomp', 'supervisor']"), result.stdout


def test_status_pid_reads_a_kernel_from_outside(launched: LaunchedKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """`kernel-guard status --pid` finds the filter and the supervisor of a running kernel in /proc."""
    assert cli.main(["status", "--pid", str(launched.pid), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"]["seccomp"]["seccomp"] == "2"
    assert [p["pid"] for p in report["layers"]["supervisor"]["processes"]] == [launched.supervisor_pid()]


def test_status_pid_of_a_missing_process_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """Asking about a pid that does not exist exits 1 and says so."""
    assert cli.main(["status", "--pid", "999999999"]) == 1
    assert "no process" in capsys.readouterr().out


def test_guard_status_without_the_launcher_is_truthful(make_kernel) -> None:
    """In a kernel with only `--ext=kernel_guard`, seccomp and the supervisor are reported off, the hooks on."""
    kernel = make_kernel()
    report = in_kernel(kernel)
    layers = report["layers"]
    assert report["launcher"] is False
    assert layers["seccomp"]["active"] is False and layers["seccomp"]["seccomp"] == "0"
    assert layers["supervisor"]["state"] == "none"
    assert layers["audit"]["state"] == "enforce" and layers["audit"]["hook"] == "native"
    assert layers["ipython"]["state"] == "enforce"
