"""The single-user server's hub API token stays out of the kernel's reach behind a real hub."""

from __future__ import annotations

import os

import pytest
from hub_support import Hub, logged_in, shared_hub

from jupyter_harness import output_text

READ = """
import os
pid = {pid}
print(os.getppid() == pid, "JUPYTERHUB_API_TOKEN" in os.environ)
try:
    open(f"/proc/{{pid}}/environ", "rb").read()
    print("read")
except OSError as exc:  # the audit layer's CredentialRefused, or EACCES
    print("refused", type(exc).__name__)
"""


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    return shared_hub(request)


@pytest.fixture(scope="module")
def attempt(hub: Hub) -> dict:
    """The first user's kernel tries to read its server's environment."""
    browser = logged_in(hub, 0)
    pid = hub.server_model(hub.users[0])["state"]["pid"]
    session = browser.start_session("token.ipynb")
    with browser.kernel_socket(session["kernel"]["id"]) as ks:
        result = ks.execute(READ.format(pid=pid))
    return {"pid": pid, "output": output_text(result), "kernel_id": session["kernel"]["id"]}


def test_the_servers_environment_holds_the_hub_token(attempt: dict) -> None:
    """The control: the hub gave the single-user server a token, in its environment (root can read it)."""
    with open(f"/proc/{attempt['pid']}/environ", "rb") as fh:
        assert b"JUPYTERHUB_API_TOKEN=" in fh.read()


def test_the_kernel_cannot_read_its_servers_token(attempt: dict) -> None:
    """The kernel (a child of the server) has no token in its environment, and reading the server's
    /proc environ fails: the audit layer refuses it and the file belongs to root (non-dumpable)."""
    lines = attempt["output"].splitlines()
    assert lines[0] == "True False", attempt["output"]
    assert lines[1].startswith("refused"), attempt["output"]
    assert os.stat(f"/proc/{attempt['pid']}/environ").st_uid == 0


def test_the_attempt_is_recorded(hub: Hub, attempt: dict) -> None:
    """The refused read is a credential-denied failure naming the server's environ file and the user."""
    user = hub.users[0]
    events = hub.wait_for_events(user, event__action="credential-denied", event__outcome="failure",
                                 kernel_guard__kernel_id=attempt["kernel_id"])
    assert events and f"/proc/{attempt['pid']}/environ" in events[0]["file"]["path"]
    assert events[0]["user"]["name"] == user.name
