"""What a user sees: JupyterLab in headless Chromium, a notebook on the guarded kernel.

JupyterLab runs on loopback with kernel_guard.server, the guarded kernelspec
written by ``kernel-guard install-kernelspec`` as its default kernel, and
Debian's ``chromium`` driven by Playwright (never a downloaded browser).  The
screenshot lands in ``test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from jupyter_harness import ARTIFACTS, JupyterServer, chromium
from kernel_guard.launch.kernelspec import install as install_kernelspec

KERNEL = "python3-guarded"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    root = str(tmp_path_factory.mktemp("lab"))
    server = JupyterServer(root, app="jupyterlab", env={"JUPYTERHUB_USER": "alice"},
                           config={"MappingKernelManager": {"default_kernel_name": KERNEL},
                                   "LabApp": {"news_url": None, "check_for_updates_class":
                                              "jupyterlab.NeverCheckForUpdate"}})
    install_kernelspec(name=KERNEL, prefix=root)
    notebook = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "id": "ordinary", "metadata": {}, "outputs": [],
             "source": "print(6 * 7)"},
            {"cell_type": "code", "execution_count": None, "id": "shell", "metadata": {}, "outputs": [],
             "source": "!ls"},
        ],
        "metadata": {"kernelspec": {"name": KERNEL, "display_name": "Python 3 (kernel_guard)",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    with open(os.path.join(server.notebooks, "demo.ipynb"), "w") as fh:
        json.dump(notebook, fh)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as started:
        yield started


def test_notebook_shows_output_and_a_short_refusal(lab: JupyterServer, browser) -> None:
    """Running the notebook in JupyterLab prints 42 and shows a two-line refusal for !ls, with no traceback."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(f"{lab.url}/lab/tree/demo.ipynb?token={lab.token}", timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.wait_for_selector(".jp-KernelName:has-text('kernel_guard')", timeout=60_000)
        page.wait_for_selector("text=Python 3 (kernel_guard) | Idle", timeout=60_000)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        page.keyboard.press("Shift+Enter")
        outputs = page.locator(".jp-Notebook .jp-OutputArea-output")
        page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-OutputArea-output').length >= 2",
                               timeout=60_000)
        page.wait_for_selector(".jp-OutputArea-output:has-text('refused')", timeout=30_000)
        ordinary, refusal = outputs.nth(0).inner_text(), outputs.nth(1).inner_text()
        news = page.locator(".jp-Notification-Toast button:has-text('No')")
        if news.count():
            news.first.click()  # the "official Jupyter news?" toast would cover the corner
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-refusal.png"), full_page=True)
    finally:
        page.close()
    assert ordinary.strip() == "42"
    lines = [line for line in refusal.splitlines() if line.strip()]
    assert lines[0] == "ShellRefused: kernel_guard refused `!ls`."
    assert re.search(r"Shell commands are disabled", refusal)
    assert len(lines) <= 3 and "Traceback" not in refusal
    (start,) = lab.wait_for_events(event__action="kernel-start", kernel_guard__notebook="demo.ipynb")
    assert start["user"]["name"] == "alice" and start["kernel_guard"]["kernel_name"] == KERNEL
    refused = lab.wait_for_events(event__action="shell-refused", kernel_guard__kernel_id=start["kernel_guard"]["kernel_id"])
    assert refused and refused[0]["kernel_guard"]["notebook"].endswith("demo.ipynb")
    assert refused[0]["user"]["name"] == "alice"
