"""The server extension makes the single-user server non-dumpable: a kernel of the same
user (uid 1000) cannot read the hub token in its environment, by any spelling."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

import pytest
from conftest import GuardedKernel
from launcher_support import NOTEBOOK_USER, unprivileged_root

TOKEN = "hub-token-5d1f0c9a7e"
# A stand-in for the single-user server: the same user, the token in its environment,
# and the extension's first step (protect_server_process) or not.
SERVER = ("import sys, time\nfrom kernel_guard.server import protect_server_process\n"
          "if sys.argv[1] == 'protected':\n    assert protect_server_process()\n"
          "print('ready', flush=True)\ntime.sleep(120)\n")
READ = """
import os
pid = {pid}
found = []
for path in (f"/proc/{{pid}}/environ", f"/proc//{{pid}}/./environ", f"/proc/{{pid}}/task/{{pid}}/environ",
             os.path.relpath(f"/proc/{{pid}}/environ")):
    try:
        with open(path, "rb") as fh:
            found.append({token!r}.encode() in fh.read())
    except PermissionError:
        found.append("refused")
print(found)
"""


@pytest.fixture(scope="module")
def kernel() -> Iterator[GuardedKernel]:
    """A kernel as uid 1000 whose audit hook only records: the operating system decides."""
    with unprivileged_root() as root:
        started = GuardedKernel(os.path.join(root, "k"), env={"KERNEL_GUARD_MODE": "audit"},
                                user=NOTEBOOK_USER).start()
        yield started
        started.shutdown()


def _server(kind: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, kind], user=NOTEBOOK_USER[0], group=NOTEBOOK_USER[1],
                            extra_groups=[], env={**os.environ, "JUPYTERHUB_API_TOKEN": TOKEN},
                            stdout=subprocess.PIPE, text=True, cwd="/")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("kind, readable", [("protected", False), ("unprotected", True)])
def test_a_kernel_of_the_same_user_cannot_read_the_servers_token(kernel: GuardedKernel, kind: str,
                                                                 readable: bool) -> None:
    """Every spelling of /proc/<server>/environ is refused once the extension loaded; the read is recorded.
    The unprotected control shows the same reads succeed without it."""
    server = _server(kind)
    try:
        kernel.mark()
        out = kernel.execute(READ.format(pid=server.pid, token=TOKEN))
        assert out.status == "ok", out.error_text
        assert out.stdout.strip() == (str([True] * 4) if readable else str(["refused"] * 4)), out.stdout
        events = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "credential-read" for e in evs))
        paths = [e["file"]["path"] for e in events if e["event"]["action"] == "credential-read"]
        assert paths and all(str(server.pid) in p for p in paths), paths
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def test_the_report_names_start_up_folders_the_user_can_write() -> None:
    """Folders in the user's home are named; one pointed at a root-owned folder is not."""
    with unprivileged_root() as root:
        home = os.path.join(root, "home")
        os.makedirs(home)
        os.chown(home, *NOTEBOOK_USER)
        code = ("import site\nfrom kernel_guard.server.report import writable_start_folders\n"
                "print(sorted(name for name, _ in writable_start_folders()), site.ENABLE_USER_SITE)")
        env = {**os.environ, "HOME": home, "JUPYTER_CONFIG_DIR": "/etc", "IPYTHONDIR": os.path.join(home, ".ipython")}
        env.pop("JUPYTER_DATA_DIR", None)
        out = subprocess.run([sys.executable, "-c", code], user=NOTEBOOK_USER[0], group=NOTEBOOK_USER[1],
                             extra_groups=[], env=env, capture_output=True, text=True, cwd="/", check=True).stdout
        names, _, user_site = out.strip().rpartition(" ")
        expected = ["IPYTHONDIR", "JUPYTER_DATA_DIR"] + (["PYTHONUSERBASE"] if user_site == "True" else [])
        assert names == str(expected), out
