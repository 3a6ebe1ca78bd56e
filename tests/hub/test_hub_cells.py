"""Cells and refusals in a notebook opened through JupyterHub are recorded with the hub
user, the notebook's path and the kernel's id, in the user's event file."""

from __future__ import annotations

import pytest
from hub_support import Hub, logged_in, shared_hub

from jupyter_harness import output_text

NOTEBOOK = "analysis.ipynb"
CELLS = {
    "ordinary": "print(6 * 7)",
    "os_system": 'import os; os.system("id")',
    "bang": "!ls",
}


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    return shared_hub(request)


@pytest.fixture(scope="module")
def notebook(hub: Hub) -> dict:
    """The first user logs in, opens a notebook and runs the cells a user would try."""
    browser = logged_in(hub, 0)
    session = browser.start_session(NOTEBOOK)
    with browser.kernel_socket(session["kernel"]["id"]) as ks:
        results = {name: ks.execute(code) for name, code in CELLS.items()}
    return {"kernel_id": session["kernel"]["id"], "results": results}


def test_cells_run_and_refusals_show_in_the_notebook(notebook: dict) -> None:
    """An ordinary cell prints; os.system and !ls end in kernel_guard's short refusal."""
    results = notebook["results"]
    assert results["ordinary"]["reply"]["status"] == "ok" and output_text(results["ordinary"]) == "42\n"
    for name in ("os_system", "bang"):
        assert results[name]["reply"]["status"] == "error", results[name]
        assert "kernel_guard refused" in output_text(results[name])


def test_cells_are_recorded_with_hub_user_notebook_and_kernel(hub: Hub, notebook: dict) -> None:
    """Each cell yields cell-executed with the hub user's name, the notebook path and the kernel id."""
    user = hub.users[0]
    cells = hub.wait_for_events(user, count=len(CELLS), event__action="cell-executed",
                                kernel_guard__kernel_id=notebook["kernel_id"])
    assert len(cells) == len(CELLS)
    assert sorted(e["kernel_guard"]["execution_count"] for e in cells) == [1, 2, 3]
    for event in cells:
        assert event["user"]["name"] == user.name
        assert event["kernel_guard"]["notebook"].endswith(NOTEBOOK)


def test_refusals_are_recorded_with_hub_user_notebook_and_kernel(hub: Hub, notebook: dict) -> None:
    """!ls (ipython layer) and os.system (audit layer) are recorded as refusals with the same identity."""
    user = hub.users[0]
    shell = hub.wait_for_events(user, event__action="shell-refused", kernel_guard__kernel_id=notebook["kernel_id"])
    exec_ = hub.wait_for_events(user, event__action="exec-denied", kernel_guard__kernel_id=notebook["kernel_id"])
    assert shell and shell[0]["kernel_guard"]["layer"] == "ipython"
    assert exec_ and exec_[0]["kernel_guard"]["layer"] in ("audit", "seccomp")
    for event in shell + exec_:
        assert event["event"]["outcome"] == "failure"
        assert event["user"]["name"] == user.name
        assert event["kernel_guard"]["notebook"].endswith(NOTEBOOK)


def test_the_server_records_the_kernel_start_with_user_and_notebook(hub: Hub, notebook: dict) -> None:
    """The server extension's kernel-start names the same user, notebook and kernel."""
    user = hub.users[0]
    (start,) = hub.wait_for_events(user, event__action="kernel-start", kernel_guard__kernel_id=notebook["kernel_id"])
    assert start["kernel_guard"]["layer"] == "server" and start["user"]["name"] == user.name
    assert start["kernel_guard"]["notebook"] == NOTEBOOK and start["kernel_guard"]["kernel_name"] == "python3"
