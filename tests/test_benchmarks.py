"""The benchmark command runs and writes its documented JSON (structure only, never timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = {"audit_hook", "workload", "cell_latency", "kernel_start", "syscalls", "refusal", "sinks", "landlock",
             "memory"}
ROW_KEYS = {"metric", "config", "plain", "guarded", "ratio", "target", "met"}


@pytest.mark.timeout(300)
def test_quick_run_writes_json_with_all_nine_scenarios_and_the_documented_keys(tmp_path):
    """`run.py --quick` with one repetition and few cells prints a table and writes every scenario's keys."""
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"  # the run's temporary folder: it must leave nothing there
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--repetitions", "1",
         "--cells", "5", "--json", str(out)],
        capture_output=True, text=True, timeout=280, cwd=str(tmp_path), env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scenario" in proc.stdout and "met?" in proc.stdout
    assert "machine steady" in proc.stdout or "machine NOT steady" in proc.stdout
    assert sorted(os.listdir(scratch)) == []
    doc = json.loads(out.read_text())
    assert {"schema", "version", "machine", "date", "quick", "seconds", "scenarios"} <= set(doc)
    assert doc["quick"] is True and doc["schema"] == 1
    assert {"cpus", "python", "kernel", "steadiness"} <= set(doc["machine"])
    steadiness = doc["machine"]["steadiness"]
    # the yardstick before each of the nine scenarios and at the end
    assert [r["before"] for r in steadiness["readings"]][-1] == "end" and len(steadiness["readings"]) == 10
    assert all(r["getppid_ns"] > 0 and r["python_step_ns"] > 0 for r in steadiness["readings"])
    assert isinstance(steadiness["steady"], bool)
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
    assert {"write", "open_read", "stat", "remove", "joblib_first", "pool_round_trip"} <= set(
        doc["scenarios"]["landlock"]["ratios"]["launcher"])
    assert doc["scenarios"]["landlock"]["files_on"] in ("/dev/shm", "home")
    assert set(doc["scenarios"]["landlock"]["floor"]) == {"minimal", "nested", "launcher"}
    assert set(doc["scenarios"]["landlock"]["link_test"]) == {"write", "remove"}
    assert all(us > 0 for us in doc["scenarios"]["landlock"]["link_test"].values())
    assert len(doc["scenarios"]["cell_latency"]["block_medians"]) == 2  # --quick: two blocks of fresh kernels
    assert set(doc["scenarios"]["memory"]["results"]["launcher"]["steady"]) == {"supervisor", "witness", "sum",
                                                                                "private"}
    # one sample per fresh kernel: --repetitions 1 starts one kernel of each configuration
    for name, metric in (("syscalls", "getppid"), ("landlock", "open_read"), ("workload", None)):
        samples = doc["scenarios"][name]["samples"]
        assert set(samples) == {"plain", "extension", "launcher"}, name
        assert all(len(s if metric is None else s[metric]) == 1 for s in samples.values()), (name, samples)


def _info_row(metric: str) -> dict:
    return {"metric": metric, "config": "control (plain)", "plain": 1.0, "guarded": 1.1, "ratio": 1.1,
            "target": "info", "met": None}


def _judged_row(met: bool) -> dict:
    return {"metric": "trivial cell, median ms", "config": "launcher", "plain": 1.0, "guarded": 1.1,
            "ratio": 1.1, "target": "+0.2 ms", "met": met}


def test_info_rows_never_make_a_scenario_a_miss():
    """A scenario whose judged rows all met is met, whatever its info rows (target "info", met None) say."""
    from benchmarks.stats import all_met

    assert all_met([_judged_row(True), _info_row("A/A median"), _info_row("A/A p99")])
    assert not all_met([_judged_row(False), _info_row("A/A median")])
    # an info row that carries a verdict anyway is still context, not a target
    assert all_met([_judged_row(True), {**_info_row("x"), "met": False}])


def test_summary_counts_a_scenario_with_info_rows_as_met():
    """The summary line names only scenarios whose judged rows missed, judged from the rows themselves."""
    from benchmarks import report

    doc = {"version": "0", "date": "now", "quick": True,
           "machine": {"cpus": 2, "python": "3.11", "kernel": "6"},
           "scenarios": {
               # as cell_latency wrote it before: the A/A control rows (met None) turned "met" False
               "cell_latency": {"met": False, "rows": [_judged_row(True), _info_row("A/A median")]},
               "refusal": {"met": False, "rows": [_judged_row(False)]},
               "sinks": {"title": "sinks", "error": "RuntimeError: boom", "met": False, "rows": []},
           }}
    line = report.summary_line(doc)
    assert "1 of 3 scenarios met their targets" in line, line
    assert line.endswith("missed: refusal, sinks"), line


def test_cell_latency_with_every_target_met_is_met():
    """cell_latency's verdict ignores its A/A control rows: guarded cells within target make it met."""
    from benchmarks import cell_latency

    samples = {c: [10.0, 10.1, 10.0, 10.05] for c in ("plain", "extension", "launcher", "control")}
    per_block = [{c: 10.02 for c in samples}]
    result = cell_latency.summarise(samples, per_block, cells=4, blocks=1)
    assert any(row["target"] == "info" for row in result["rows"])
    assert result["met"] is True, result["rows"]


@pytest.mark.parametrize("count", [2, 3, 4, 5, 6])
def test_the_turn_order_gives_every_configuration_every_place_and_never_two_turns_in_a_row(count):
    """Over whole cycles of rounds, no configuration runs right after itself (across rounds
    too) and, from three on, each runs in each place, and right after each other one,
    equally often (two simply alternate): a kernel asked again after its own cell answers
    faster, so the order ABC, CBA (ends back to back, the middle never) charged the middle
    with its place."""
    from collections import Counter

    from benchmarks.stats import balanced

    items = [chr(ord("A") + i) for i in range(count)]
    cycle = 1 if count == 2 else count * (1 + count % 2)
    rounds = [balanced(items, index) for index in range(3 * cycle)]
    assert all(sorted(row) == items for row in rounds)
    stream = [item for row in rounds for item in row]
    assert all(a != b for a, b in zip(stream, stream[1:])), rounds
    if count >= 3:
        places = Counter((place, item) for row in rounds for place, item in enumerate(row))
        assert len(places) == count * count and set(places.values()) == {3 * cycle // count}
        pairs = Counter((a, b) for row in rounds for a, b in zip(row, row[1:]))
        assert len(pairs) == count * (count - 1) and len(set(pairs.values())) == 1, pairs
    assert balanced(items, 3 * cycle) == rounds[0]


def test_the_workload_kernels_run_one_blas_thread():
    """What the workload scenario adds to its kernels' environment reaches the kernel."""
    from benchmarks import kernels, workload

    workspace = kernels.Workspace()
    try:
        running = kernels.start_all(workspace, ("plain",), workload.ONE_BLAS_THREAD)
        try:
            seen = running["plain"].value("import os", "{k: os.environ.get(k) for k in %r}"
                                          % sorted(workload.ONE_BLAS_THREAD))
        finally:
            kernels.stop_all(running)
    finally:
        workspace.cleanup()
    assert seen == workload.ONE_BLAS_THREAD


def test_each_repetition_gets_new_kernels_each_with_its_own_hash_seed():
    """``fresh`` starts new kernels for a repetition and stops them after it; each draws
    its hash seed, as the launcher's kernels (isolated, so deaf to PYTHONHASHSEED) do."""
    from benchmarks import kernels

    workspace = kernels.Workspace()
    seen = []
    try:
        for index in range(2):
            with kernels.fresh(workspace, index, configs=("plain",)) as running:
                kernel = running["plain"]
                seen.append((kernel.pid, kernel.value("", "hash('kernel_guard')")))
            assert not kernel.manager.is_alive()
    finally:
        workspace.cleanup()
    (first_pid, first_hash), (second_pid, second_hash) = seen
    assert first_pid != second_pid
    assert first_hash != second_hash


def _scenario_with_plain(samples) -> dict:
    return {"rows": [], "met": True, "samples": {"plain": samples, "launcher": samples}}


def test_a_run_is_steady_only_when_the_yardstick_and_every_plain_spread_leave_its_target_room():
    """The verdict: the yardstick within 5% over the run, and each scenario's plain samples
    (interquartile range over median) within the room their target leaves (3% for the
    workload's 1.03x, 20% for the parallel calls' 1.2x); launcher samples do not count."""
    from benchmarks import steadiness

    gauge = steadiness.Gauge()
    gauge.readings = [{"before": "a", "getppid_ns": 100.0, "python_step_ns": 20.0},
                      {"before": "end", "getppid_ns": 103.0, "python_step_ns": 20.2}]
    quiet = {"workload": _scenario_with_plain([100, 101, 99, 102, 100, 98, 101]),
             "landlock": _scenario_with_plain({"open_read": [2.5, 2.52, 2.49, 2.51, 2.5], "write": [150] * 5,
                                               "pool_round_trip": [15, 17, 16, 18, 15.5]}),
             "refusal": {"rows": [], "met": True}}
    report = gauge.report(quiet)
    assert report["steady"] is True, report
    assert report["plain_spread"]["workload"] == 0.015 and report["plain_spread"]["landlock write"] == 0.0
    assert report["plain_spread_allowed"]["workload"] == 0.03
    assert report["plain_spread"]["landlock pool_round_trip"] == 0.094  # over 5%, but its 1.2x leaves 20%
    assert "machine steady" in steadiness.summary(report)

    loud = {**quiet, "workload": _scenario_with_plain([100, 104, 97, 103, 100, 96, 101])}  # 4.5%: over 3%
    assert gauge.report(loud)["steady"] is False

    noisy = {**quiet, "syscalls": _scenario_with_plain({"getppid": [200, 240, 210, 260, 205, 230, 250]})}
    report = gauge.report(noisy)
    assert report["steady"] is False and report["worst_plain_spread"]["metric"] == "syscalls getppid"
    line = steadiness.summary(report)
    assert "NOT steady" in line and "(syscalls getppid; its target leaves 5%)" in line, line

    gauge.readings.append({"before": "end", "getppid_ns": 190.0, "python_step_ns": 20.1})  # the machine slowed
    report = gauge.report(quiet)
    assert report["steady"] is False and report["yardstick_spread"]["getppid_ns"] > 0.05
