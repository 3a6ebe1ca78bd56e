"""A download through /files/ behind the hub is recorded with the hub user (downloads: record)."""

from __future__ import annotations

import os

import pytest
from hub_support import NOTEBOOK_GROUP, Hub, logged_in, shared_hub


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    return shared_hub(request)


def test_a_download_is_recorded_with_user_and_path(hub: Hub) -> None:
    """GET /user/<name>/files/results.csv through the proxy answers the file and yields file-download."""
    user = hub.users[0]
    data = user.home / "results.csv"
    data.write_text("a,b\n1,2\n")
    os.chown(data, user.uid, NOTEBOOK_GROUP)
    browser = logged_in(hub, 0)
    response = browser.http.get(f"{browser.base}/files/results.csv", timeout=60)
    assert response.status_code == 200 and response.text == "a,b\n1,2\n"
    (event,) = hub.wait_for_events(user, event__action="file-download")
    assert event["file"]["path"] == "results.csv" and event["user"]["name"] == user.name
    assert event["event"]["outcome"] == "success" and event["kernel_guard"]["layer"] == "server"
