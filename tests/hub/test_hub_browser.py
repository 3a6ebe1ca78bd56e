"""What a person sees through the hub: JupyterLab in headless Chromium, logged in on the hub's
form, a refused `!ls` and `%guard_status` on screen.  Screenshots land in test-artifacts/."""

from __future__ import annotations

import json
import os

import pytest
from hub_support import Hub, shared_hub

from jupyter_harness import ARTIFACTS, chromium

NOTEBOOK = "seen.ipynb"


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    hub = shared_hub(request)
    user = hub.users[1]
    cells = [{"cell_type": "code", "execution_count": None, "id": name, "metadata": {}, "outputs": [],
              "source": source} for name, source in (("shell", "!ls"), ("status", "%guard_status"))]
    path = user.home / NOTEBOOK
    kernelspec = {"name": "python3", "display_name": "Python 3 (kernel_guard)", "language": "python"}
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": kernelspec}, "nbformat": 4,
                                "nbformat_minor": 5}))
    os.chown(path, user.uid, 100)
    return hub


@pytest.fixture(scope="module")
def browser():
    with chromium() as started:
        yield started


def test_a_user_logs_in_and_sees_the_refusal_and_the_guard_status(hub: Hub, browser) -> None:
    user = hub.users[1]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page.goto(f"{hub.url}/hub/login", timeout=60_000)
        page.fill("input[name=username]", user.name)
        page.fill("input[name=password]", hub.password)
        page.click("input[type=submit], button[type=submit]")
        page.goto(f"{hub.url}/hub/spawn", timeout=120_000)
        page.wait_for_url(f"**/user/{user.name}/lab**", timeout=120_000)
        page.goto(f"{hub.url}/user/{user.name}/lab/tree/{NOTEBOOK}", timeout=120_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.wait_for_selector("text=| Idle", timeout=90_000)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        page.keyboard.press("Shift+Enter")
        page.wait_for_selector(".jp-OutputArea-output:has-text('refused')", timeout=60_000)
        page.wait_for_selector(".jp-OutputArea-output:has-text('landlock')", timeout=60_000)
        outputs = page.locator(".jp-Notebook .jp-OutputArea-output")
        refusal, status = outputs.nth(0).inner_text(), outputs.nth(1).inner_text()
    finally:
        page.screenshot(path=str(ARTIFACTS / "hub-browser.png"), full_page=True)  # also what a failure looked like
        page.close()
    assert refusal.splitlines()[0] == "ShellRefused: kernel_guard refused `!ls`.", refusal
    assert "Traceback" not in refusal
    for layer in ("ipython", "audit", "seccomp", "supervisor", "landlock"):
        assert layer in status, status
    events = hub.wait_for_events(user, event__action="shell-refused")
    assert events[0]["user"]["name"] == user.name and events[0]["kernel_guard"]["notebook"].endswith(NOTEBOOK)
