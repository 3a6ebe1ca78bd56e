"""`kernel-guard check`: the battery against a guarded kernelspec, a plain one, and one that cannot start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from kernel_guard import cli
from kernel_guard.cli.check import REPORT_SCHEMA
from kernel_guard.cli.techniques import CATEGORIES, COMPATIBILITY, TECHNIQUES


@pytest.fixture
def kernels_dir(tmp_path, monkeypatch):
    """A temp prefix on JUPYTER_PATH with the guarded kernelspec, a plain one and a broken one."""
    prefix = tmp_path / "prefix"
    assert cli.main(["install-kernelspec", "--prefix", str(prefix)]) == 0
    kernels = prefix / "share" / "jupyter" / "kernels"
    for name, argv in {
        "plain": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "broken": [sys.executable, "-c", "import sys; sys.exit('this kernel is broken on purpose')"],
    }.items():
        (kernels / name).mkdir()
        (kernels / name / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    return kernels


def test_battery_is_large_and_covers_every_category():
    """At least 40 techniques over the eight categories and at least 8 compatibility checks."""
    assert len(TECHNIQUES) >= 40 and len(COMPATIBILITY) >= 8
    assert set(CATEGORIES) == {"ipython-syntax", "ipython-api", "stdlib-process", "low-level", "tampering",
                               "persistence", "environment", "credentials"}
    assert len({t.name for t in TECHNIQUES}) == len(TECHNIQUES)


def test_guarded_kernelspec_stops_and_records_everything(kernels_dir, capsys):
    """Against the installed guarded kernelspec every technique is stopped and recorded; exit 0."""
    status = cli.main(["check", "--kernel", "python3-guarded", "--format", "json"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    jsonschema.validate(report, REPORT_SCHEMA)
    failed = [t for t in report["techniques"] if not (t["stopped"] and t["recorded"])]
    assert failed == []
    assert all(c["ok"] for c in report["compatibility"]), report["compatibility"]
    assert status == 0
    assert report["summary"]["stopped"] == len(TECHNIQUES)
    assert {t["layer"] for t in report["techniques"]} >= {"ipython", "audit", "seccomp"}
    assert f"[{len(TECHNIQUES) + len(COMPATIBILITY)}/{len(TECHNIQUES) + len(COMPATIBILITY)}]" in err  # progress


def test_plain_kernel_reports_escapes_honestly(kernels_dir, capsys):
    """A plain ipykernel lets the stdlib routes through: they are reported as escapes, exit 1."""
    status = cli.main(["check", "--kernel", "plain", "--only", "stdlib-process"])
    out, _ = capsys.readouterr()
    assert status == 1
    assert "FAIL" in out and "escaped: subprocess.run" in out
    assert "0/10 techniques stopped" in out


def test_table_output_lists_each_technique(kernels_dir, capsys):
    """The table shows technique, category, stopped, recorded and layer, and a summary line."""
    status = cli.main(["check", "--kernel", "python3-guarded", "--only", "persistence"])
    out, _ = capsys.readouterr()
    assert status == 0
    assert out.splitlines()[0].split() == ["technique", "category", "stopped", "recorded", "layer"]
    assert "IPython startup file" in out and "PASS" in out


def test_kernel_that_cannot_start_exits_2_with_the_reason(kernels_dir, capsys):
    """A kernelspec whose kernel dies at start gives exit status 2 and says why."""
    status = cli.main(["check", "--kernel", "broken", "--startup-timeout", "10"])
    _, err = capsys.readouterr()
    assert status == 2
    assert "could not be started" in err and "broken on purpose" in err


def test_unknown_kernelspec_exits_2(kernels_dir, capsys):
    """A kernelspec name that does not exist gives exit status 2 naming it."""
    assert cli.main(["check", "--kernel", "no-such-kernel"]) == 2
    assert "no-such-kernel" in capsys.readouterr().err


def _kernel_guard(*args: str) -> subprocess.CompletedProcess:
    """The console script, as a user runs it (JUPYTER_PATH from the fixture)."""
    script = os.path.join(os.path.dirname(sys.executable), "kernel-guard")
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=600)


def _add_spec(kernels, name: str, argv: list, env: dict | None = None) -> None:
    (kernels / name).mkdir()
    body = {"argv": argv, "display_name": name, "language": "python", **({"env": env} if env else {})}
    (kernels / name / "kernel.json").write_text(json.dumps(body))


def test_a_kernelspec_that_imports_from_its_working_folder_fails_with_the_fix(kernels_dir):
    """`kernel-guard check` on python -m ipykernel_launcher (no -P, -I or PYTHONSAFEPATH) reports the
    failed kernelspec check and its fix, and exits 1 although every compatibility check passes."""
    out = _kernel_guard("check", "--kernel", "plain", "--only", "compatibility")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL imports from its working folder" in out.stdout
    assert 'fix: add "-P"' in out.stdout and "PYTHONSAFEPATH" in out.stdout
    assert "FAIL OS layers" in out.stdout and "kernel-guard install-kernelspec" in out.stdout
    assert "kernelspec checks: 0 ok, 2 FAILED" in out.stdout and out.stdout.rstrip().endswith("FAIL")


@pytest.mark.parametrize("flag_or_env", [["-P"], {"PYTHONSAFEPATH": "1"}])
def test_a_kernelspec_with_a_safe_path_passes_that_check_but_not_the_os_layers_one(kernels_dir, flag_or_env):
    """-P in argv, or PYTHONSAFEPATH=1 in env: the working-folder check is ok; without the launcher, the
    OS-layers check fails, and so does the deployment (JSON report, schema-valid)."""
    flags = flag_or_env if isinstance(flag_or_env, list) else []
    env = flag_or_env if isinstance(flag_or_env, dict) else None
    _add_spec(kernels_dir, "safe", [sys.executable, *flags, "-m", "ipykernel_launcher", "-f", "{connection_file}"], env)
    out = _kernel_guard("check", "--kernel", "safe", "--only", "compatibility", "--format", "json")
    report = json.loads(out.stdout)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert [k["ok"] for k in report["kernelspec"]] == [False, True]
    assert out.returncode == 1, report


def test_skipped_compatibility_checks_are_counted_as_skipped(kernels_dir):
    """Checks whose library the kernel lacks are shown as skipped, not ok: '<n> ok, 2 skipped'."""
    hide = "--IPKernelApp.exec_lines=import sys; sys.modules.update(pandas=None, joblib=None)"
    _add_spec(kernels_dir, "nolibs", [sys.executable, "-P", "-m", "ipykernel_launcher", "-f", "{connection_file}", hide])
    out = _kernel_guard("check", "--kernel", "nolibs", "--only", "compatibility")
    ran = len(COMPATIBILITY) - 2
    assert f"compatibility checks: {ran} ok, 2 skipped" in out.stdout, out.stdout + out.stderr
    assert "skip pandas group-by: pandas is not installed in the kernel: skipped" in out.stdout
    assert "skip joblib.Parallel" in out.stdout and "skipped" in out.stderr  # the progress lines too
    # a skip fails nothing; the kernelspec without the launcher does
    assert out.returncode == 1 and "kernelspec checks: 1 ok, 1 FAILED" in out.stdout
    report = json.loads(_kernel_guard("check", "--kernel", "nolibs", "--only", "compatibility",
                                      "--format", "json").stdout)
    summary = report["summary"]
    assert (summary["compatibility_ok"], summary["compatibility_skipped"]) == (ran, 2)
    assert sorted(c["name"] for c in report["compatibility"] if c["skipped"] and not c["ok"]) == [
        "joblib.Parallel, default backend", "pandas group-by"]
