"""Everyday data-science work under the launcher, as the notebook user: each case in a
fresh kernel with every layer enforcing, as a data scientist would run it."""

from __future__ import annotations

import os
import textwrap
from typing import Iterator

import pytest
from launcher_support import NOTEBOOK_USER, LaunchedKernel, specs_on_path, unprivileged_root

CASES = {
    "scikit-learn GridSearchCV(n_jobs=2)": ("""
        from sklearn.datasets import make_classification
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV
        X, y = make_classification(n_samples=80, random_state=0)
        search = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.1, 1.0]}, cv=2, n_jobs=2).fit(X, y)
        print("OK", sorted(search.best_params_))
    """, "OK ['C']"),
    "joblib.Parallel(n_jobs=2), default backend": ("""
        from joblib import Parallel, delayed
        print("OK", Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)))
    """, "OK [0, 1, 2, 3]"),
    "multiprocessing spawn": ("""
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(2) as pool:
            print("OK", pool.map(abs, [-1, -2]))
    """, "OK [1, 2]"),
    "multiprocessing forkserver": ("""
        import multiprocessing as mp
        with mp.get_context("forkserver").Pool(2) as pool:
            print("OK", pool.map(abs, [-1, -2]))
    """, "OK [1, 2]"),
    "ProcessPoolExecutor": ("""
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(2) as ex:
            print("OK", list(ex.map(abs, [-1, -2])))
    """, "OK [1, 2]"),
    "pandas file I/O": ("""
        import pandas as pd
        pd.DataFrame({"a": [1, 2]}).to_csv("frame.csv", index=False)
        print("OK", pd.read_csv("frame.csv")["a"].tolist())
    """, "OK [1, 2]"),
    "matplotlib savefig": ("""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt, os
        plt.plot([1, 2, 3]); plt.savefig("plot.png")
        print("OK", os.path.getsize("plot.png") > 1000)
    """, "OK True"),
    "dask LocalCluster(processes=True)": ("""
        from dask.distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                print("OK", client.submit(abs, -3).result(timeout=60))
    """, "OK 3"),
    "ctypes.util.find_library": ("""
        import ctypes.util
        print("OK", ctypes.util.find_library("m") is not None)
    """, "OK True"),
}


@pytest.fixture(scope="module")
def spec() -> Iterator[str]:
    with unprivileged_root() as root:
        with specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
            yield root


@pytest.mark.timeout(420)
@pytest.mark.parametrize("case", sorted(CASES))
def test_everyday_work_runs_under_the_launcher(spec: str, case: str) -> None:
    """The case prints what it would in a plain kernel, and the record holds no failure nobody caused:
    the programs libraries probe for (matplotlib's font scan, platform.processor() in dask's spawned
    workers) are answered as absent and recorded as library-probe, outcome unknown."""
    code, expected = CASES[case]
    folder = os.path.join(spec, case.split()[0].replace(".", "-").lower() + str(sorted(CASES).index(case)))
    kernel = LaunchedKernel(folder, "guarded", user=NOTEBOOK_USER).start()
    try:
        kernel.mark()
        result = kernel.execute(textwrap.dedent(code), timeout=180)
        assert result.status == "ok", result.error_text
        assert result.stdout.strip().splitlines()[-1] == expected, result.stdout + result.stderr
        refused = [e for e in kernel.new_events() if e["event"]["outcome"] == "failure"
                   and e["event"]["action"] not in ("cell-executed", "sink-error")]
        assert not refused, [(e["event"]["action"], e["event"].get("reason")) for e in refused]
    finally:
        kernel.shutdown()
