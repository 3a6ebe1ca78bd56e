"""`kernel-guard check`: the battery against a guarded kernelspec, a plain one, and one that cannot start."""

from __future__ import annotations

import json
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
