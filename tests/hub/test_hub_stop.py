"""Stopping a user's server through the hub's API ends its kernels, and the ends are recorded."""

from __future__ import annotations

import pytest
from hub_support import Hub, logged_in, shared_hub

from jupyter_harness import wait_until


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    return shared_hub(request)


def test_stopping_the_server_records_the_kernels_end(hub: Hub) -> None:
    """DELETE /hub/api/users/<name>/server stops the server (the spawner sends SIGINT): the server
    shuts the kernel down (kernel-shutdown), the kernel records kernel-stopped, and its streams
    close cleanly rather than ending as killed."""
    user = hub.users[1]
    browser = logged_in(hub, 1)
    kernel_id = browser.start_session("stopped.ipynb")["kernel"]["id"]
    with browser.kernel_socket(kernel_id) as ks:
        assert ks.execute("x = 1")["reply"]["status"] == "ok"
        response = hub.api("DELETE", f"/users/{user.name}/server")
        assert response.status_code in (202, 204), response.text
        assert wait_until(lambda: hub.server_model(user) is None, timeout=60)
    (shutdown,) = hub.wait_for_events(user, event__action="kernel-shutdown", kernel_guard__kernel_id=kernel_id)
    assert shutdown["kernel_guard"]["layer"] == "server" and shutdown["kernel_guard"]["notebook"] == "stopped.ipynb"
    (stopped,) = hub.wait_for_events(user, event__action="kernel-stopped", kernel_guard__kernel_id=kernel_id)
    assert stopped["user"]["name"] == user.name
    ended = hub.wait_for_events(user, event__action="stream-ended", kernel_guard__kernel_id=kernel_id)
    assert ended and all(e["event"]["outcome"] == "success" for e in ended), [e["event"]["reason"] for e in ended]
