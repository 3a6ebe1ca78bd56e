"""Two hub users: the second one's kernel cannot read the first one's event file or home."""

from __future__ import annotations

import json

import pytest
from hub_support import Hub, logged_in, shared_hub

from jupyter_harness import output_text

PEEK = """
import json, os
found = {{}}
for name, action in (("events", lambda: open({events!r}).read()), ("home", lambda: os.listdir({home!r}))):
    try:
        action()
        found[name] = "read"
    except OSError as exc:
        found[name] = type(exc).__name__
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    return shared_hub(request)


def test_a_user_cannot_read_another_users_events_or_home(hub: Hub) -> None:
    """The first user's event file (outside the home, theirs, mode 0600) and home are refused to the second."""
    first, second = hub.users
    logged_in(hub, 0)  # the first user's server writes its start-up report there
    assert hub.wait_for_events(first, event__action="server-hardening")
    browser = logged_in(hub, 1)
    session = browser.start_session("peek.ipynb")
    with browser.kernel_socket(session["kernel"]["id"]) as ks:
        result = ks.execute(PEEK.format(events=str(first.events), home=str(first.home)))
    assert json.loads(output_text(result)) == {"events": "PermissionError", "home": "PermissionError"}
