"""An idle kernel is culled by the server policy behind the hub, and the cull is recorded."""

from __future__ import annotations

import pytest
from hub_support import CULL_IDLE, CULL_INTERVAL, Hub, logged_in, shared_hub

NOTEBOOK = "idle.ipynb"


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    return shared_hub(request)


def test_an_idle_kernel_is_culled_and_recorded(hub: Hub) -> None:
    """A kernel left idle and unconnected longer than cull_idle_timeout is shut down by the culler:
    kernel-culled names the user, the notebook and the kernel, and the kernel is gone from the API."""
    user = hub.users[0]
    browser = logged_in(hub, 0)
    kernel_id = browser.start_session(NOTEBOOK)["kernel"]["id"]
    with browser.kernel_socket(kernel_id) as ks:
        assert ks.execute("x = 1")["reply"]["status"] == "ok"
    (culled,) = hub.wait_for_events(user, timeout=CULL_IDLE + 10 * CULL_INTERVAL + 30,
                                    event__action="kernel-culled", kernel_guard__kernel_id=kernel_id)
    assert culled["event"]["outcome"] == "success" and culled["kernel_guard"]["layer"] == "server"
    assert culled["kernel_guard"]["notebook"] == NOTEBOOK and culled["user"]["name"] == user.name
    assert kernel_id not in {k["id"] for k in browser.api("GET", "/api/kernels").json()}
    ended = hub.wait_for_events(user, event__action="kernel-stopped", kernel_guard__kernel_id=kernel_id)
    assert ended, "the culled kernel did not record its own end"
