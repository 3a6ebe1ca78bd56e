"""The benchmark command runs and writes its documented JSON (structure only, never timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = {"audit_hook", "workload", "cell_latency", "kernel_start", "syscalls", "refusal", "sinks", "landlock"}
ROW_KEYS = {"metric", "config", "plain", "guarded", "ratio", "target", "met"}


@pytest.mark.timeout(300)
def test_quick_run_writes_json_with_all_eight_scenarios_and_the_documented_keys(tmp_path):
    """`run.py --quick` with one repetition and few cells prints a table and writes every scenario's keys."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--repetitions", "1",
         "--cells", "5", "--json", str(out)],
        capture_output=True, text=True, timeout=280, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scenario" in proc.stdout and "met?" in proc.stdout
    doc = json.loads(out.read_text())
    assert {"schema", "version", "machine", "date", "quick", "seconds", "scenarios"} <= set(doc)
    assert doc["quick"] is True and doc["schema"] == 1
    assert {"cpus", "python", "kernel"} <= set(doc["machine"])
    assert set(doc["scenarios"]) == SCENARIOS
    for name, scenario in doc["scenarios"].items():
        assert "error" not in scenario, f"{name}: {scenario.get('error')}"
        assert {"title", "unit", "repetitions", "results", "ratios", "target", "met", "rows"} <= set(scenario), name
        assert isinstance(scenario["met"], bool), name
        assert scenario["rows"], name
        for row in scenario["rows"]:
            assert set(row) == ROW_KEYS, (name, row)
            assert row["met"] in (True, False, None), (name, row)
    assert set(doc["scenarios"]["workload"]["ratios"]) == {"extension", "launcher"}
    assert set(doc["scenarios"]["kernel_start"]["results"]) == {"plain", "extension", "launcher"}
    assert doc["scenarios"]["refusal"]["outcomes"]["extension"]["subprocess"] == "refused"
    assert set(doc["scenarios"]["syscalls"]["floor"]) == {"minimal", "guard"}
    assert set(doc["scenarios"]["syscalls"]["floor"]["guard"]) == {"getppid", "stat"}
    assert {"write", "open_read", "stat", "joblib_first", "pool_round_trip"} <= set(
        doc["scenarios"]["landlock"]["ratios"]["launcher"])
    assert len(doc["scenarios"]["cell_latency"]["block_medians"]) == 2  # --quick: two blocks of fresh kernels
