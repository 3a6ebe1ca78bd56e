"""The image's server policy is in force in a single-user server started by the hub."""

from __future__ import annotations

import pytest
from hub_support import Hub, logged_in, shared_hub


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    return shared_hub(request)


def test_the_start_up_report_finds_every_hardening_setting_on(hub: Hub) -> None:
    """The server-hardening event of the user's server lists nothing off: culling on, no debug_request,
    terminals off, start-up folders outside the home, only the guarded kernelspec."""
    user = hub.users[0]
    logged_in(hub, 0)
    (report,) = hub.wait_for_events(user, event__action="server-hardening")[-1:]
    assert report["event"]["outcome"] == "success", report["event"]["reason"]
    assert report["kernel_guard"]["allowed_kernelspecs"] == ["python3"]
    assert report["kernel_guard"]["downloads"] == "record"


def test_debug_request_is_refused_on_shell_and_control(hub: Hub) -> None:
    """debug_request is not in allowed_message_types: the server drops it (and logs it), the kernel
    never answers, and the kernel still answers an allowed request afterwards."""
    browser = logged_in(hub, 0)
    session = browser.start_session("debug.ipynb")
    with browser.kernel_socket(session["kernel"]["id"]) as ks:
        for channel in ("control", "shell"):
            answers = ks.request("debug_request", {"command": "evaluate", "arguments": {"expression": "1"}},
                                 channel, wait=3)
            assert not [m for m in answers if m["msg_type"] == "debug_reply"], answers
        info = ks.request("kernel_info_request", {}, "shell", wait=10)
        assert any(m["msg_type"] == "kernel_info_reply" for m in info)
    assert hub.log().count('Received message of type "debug_request", which is not allowed') >= 2
