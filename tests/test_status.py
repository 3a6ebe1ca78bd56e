"""`kernel-guard status` and `%guard_status`: each layer reported as the system shows it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Iterator

import pytest
from conftest import GuardedKernel
from launcher_support import NOTEBOOK_USER, LaunchedKernel, specs_on_path, unprivileged_root

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


def _status_as(uid: int, gid: int, *args: str) -> subprocess.CompletedProcess:
    """`kernel-guard status ARGS` run as that user, from a folder it can read."""
    return subprocess.run([sys.executable, "-m", "kernel_guard.cli", "status", *args], user=uid, group=gid,
                          extra_groups=[], cwd="/", capture_output=True, text=True, timeout=60)


def test_status_with_no_guarded_kernels_says_so_and_how_to_check_one() -> None:
    """Run by a user with no guarded kernels, status says none was found and names --pid and %guard_status."""
    if os.geteuid() != 0:
        pytest.fail("this test runs the command as another user and must run as root (CI does)")
    nobody = 65534  # a uid no test runs kernels as
    proc = _status_as(nobody, nobody, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["uid"] == nobody and report["kernels"] == []
    text = _status_as(nobody, nobody)
    assert text.stdout.startswith(f"No guarded kernels of uid {nobody} are running"), text.stdout
    assert "kernel-guard status --pid PID" in text.stdout and "%guard_status" in text.stdout


def test_status_finds_this_users_launcher_kernel() -> None:
    """Without --pid, status run as uid 1000 finds that user's launcher kernel and reports its filter
    and supervisor, as --pid does."""
    with unprivileged_root() as root, specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        kernel = LaunchedKernel(os.path.join(root, "k"), "guarded", user=NOTEBOOK_USER).start()
        try:
            pid, supervisor = kernel.pid, kernel.supervisor_pid()
            proc = _status_as(*NOTEBOOK_USER, "--json")
            assert proc.returncode == 0, proc.stderr
            report = json.loads(proc.stdout)
            assert report["uid"] == NOTEBOOK_USER[0]
            ours = [k for k in report["kernels"] if k["pid"] == pid]
            assert len(ours) == 1, report
            assert ours[0]["route"] == "launcher" and ours[0]["layers"]["seccomp"]["seccomp"] == "2"
            assert [p["pid"] for p in ours[0]["layers"]["supervisor"]["processes"]] == [supervisor]
            # the supervisor (`-m kernel_guard.launch.supervisor`) is not a kernel of its own
            assert supervisor not in [k["pid"] for k in report["kernels"]]
            text = _status_as(*NOTEBOOK_USER).stdout
            assert f"kernel_guard status of pid {pid} (started by kernel_guard.launch)" in text, text
            # root's own guarded kernels are not uid 1000's
            assert pid not in [k["pid"] for k in json.loads(_status_as(0, 0, "--json").stdout)["kernels"]]
        finally:
            kernel.shutdown()


def test_status_recognises_guarded_command_lines() -> None:
    """The launcher and ipykernels with the extension on their command line are guarded kernels;
    the supervisor and a plain ipykernel are not."""
    from kernel_guard.status import kernel_route

    assert kernel_route(["python", "-I", "-m", "kernel_guard.launch", "-f", "k.json"]) == "launcher"
    assert kernel_route(["python", "-m", "ipykernel_launcher", "-f", "k.json", "--ext=kernel_guard"]) == "extension"
    assert kernel_route(["python", "-m", "ipykernel_launcher", "--ext", "kernel_guard"]) == "extension"
    assert kernel_route(["python", "-I", "-m", "kernel_guard.launch.supervisor", "enforce"]) is None
    assert kernel_route(["python", "-m", "ipykernel_launcher", "-f", "k.json"]) is None
    assert kernel_route(["kernel-guard", "status"]) is None


def test_status_pid_must_be_a_process_id(capsys: pytest.CaptureFixture[str]) -> None:
    """`--pid` refuses what is not a positive number, naming the option."""
    with pytest.raises(SystemExit):
        cli.main(["status", "--pid", "-3"])
    assert "--pid" in capsys.readouterr().err


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
    assert sup["witness"].startswith("kernel-guard-witness")
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
    assert page.startswith("<p><b>Guarded: every layer is on") and '<table class="kernel-guard-status">' in page and "<th>layer</th><th>state</th><th>detail</th>" in page
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
    assert lines[1] == "Guarded: every layer is on, and every refusal is recorded.", lines[1]
    header = lines[2]
    detail_column = header.index("detail")
    assert header.split() == ["layer", "state", "detail"] and header.index("state") > header.index("layer")
    for line in lines[3:]:
        assert len(line) <= 100, line
        if line[2] != " ":  # a row: its detail starts in the detail column
            assert len(line) <= detail_column or line[detail_column - 2:detail_column] == "  ", line
        else:  # a wrapped detail: continues in the detail column
            assert line[:detail_column].strip() == "" and line[detail_column] != " ", line
    words = set(re.findall(r"[\w./-]+", " ".join(lines[3:])))
    assert "To fix" not in text, text  # a guarded kernel on this machine: nothing to act on
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
    # what /proc does not show, as the kernel recorded it at launch: its Landlock domain and hook
    landlock, audit = report["layers"]["landlock"], report["layers"]["audit"]
    assert landlock["active"] and "Landlock ABI" in landlock["state"] and landlock["abi"] >= 1, landlock
    assert "exec of" in landlock["state"] and landlock["writable"], landlock
    assert audit["state"] == "enforce" and audit["hook"] == "native", audit
    assert cli.main(["status", "--pid", str(launched.pid)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^  landlock\s+on\s", text, re.M) and "Landlock ABI" in text, text
    assert re.search(r"^  audit\s+enforce\s+hook: native", text, re.M), text


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
    text = _status_bundle(kernel)["text/plain"]
    assert text.splitlines()[1].startswith("Partly guarded: off here are program blocking by the OS"), text
    assert all(len(line) <= 100 for line in text.splitlines()[:3]), text  # the verdict wraps
    assert "To fix: choose the Python 3 (kernel_guard) kernel" in " ".join(text.split()), text
