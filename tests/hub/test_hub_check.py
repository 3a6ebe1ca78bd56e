"""`kernel-guard check` run as a hub user, in the environment the hub gives that user's server
(as an operator runs it with `kubectl exec` in the user's pod), passes: every technique stopped
and recorded, every compatibility check that can run passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hub_support import NOTEBOOK_GROUP, Hub, shared_hub


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest) -> Hub:
    return shared_hub(request)


def test_kernel_guard_check_passes_in_a_users_server_environment(hub: Hub) -> None:
    """The server's environment without its runtime folder: check keeps its connection files in a
    temporary folder of its own when the (read-only) data folder has none."""
    user = hub.users[0]
    env = {"PATH": f"{sys.prefix}/bin:/usr/bin:/bin", "HOME": str(user.home), "USER": user.name,
           "JUPYTER_CONFIG_DIR": str(hub.root / "etc"), "JUPYTER_DATA_DIR": str(hub.root / "share"),
           "JUPYTER_PATH": str(hub.root / "kernels" / "share" / "jupyter"),
           "KERNEL_GUARD_MODE": "enforce", "KERNEL_GUARD_SINKS": f"file://{user.events}",
           "PYTHONNOUSERSITE": "1", "PYTHONWARNINGS": "ignore", "JUPYTERHUB_USER": user.name}
    done = subprocess.run([os.path.join(sys.prefix, "bin", "kernel-guard"), "check", "--kernel", "python3",
                           "--format", "json"], user=user.uid, group=NOTEBOOK_GROUP, extra_groups=[], env=env,
                          cwd=str(user.home), capture_output=True, text=True, timeout=600)
    report = json.loads(done.stdout)
    escaped = [t["name"] for t in report["techniques"] if not (t["stopped"] and t["recorded"])]
    assert done.returncode == 0 and escaped == [], (escaped, done.stderr[-2000:])
    assert report["summary"]["techniques"] == report["summary"]["stopped"] == report["summary"]["recorded"] > 40
