"""The laptop route: a data scientist installs kernel_guard and its kernelspec in two commands.

As uid 1000, in a fresh virtual environment under a temporary home:
``pip install <a copy of this checkout>`` then ``kernel-guard install-kernelspec
--user``.  Their Jupyter then lists "Python 3 (kernel_guard)" beside their own
``python3``, the server extension is not enabled (so their Jupyter still starts
their own kernels), and the guarded kernel refuses a shell.  Dependencies come
from this checkout's environment through a ``.pth`` file, so nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Iterator

import pytest
from launcher_support import NOTEBOOK_USER, unprivileged_root

REPO = Path(__file__).resolve().parents[1]
#: what `pip install <checkout>` needs of the checkout
SOURCES = ("pyproject.toml", "setup.py", "README.md", "kernel_guard", "seccomp_profiles")

#: run by the laptop's Python: start the guarded kernel, try a shell and os.system, say what happened
TRY_KERNEL = """
import json, sys
from kernel_guard.testing import KernelSession
with KernelSession(kernel_name="python3-guarded", cwd=sys.argv[1], stderr_path=sys.argv[2]) as kernel:
    shell = kernel.execute("!id")
    system = kernel.execute("import os\\nos.system('id')")
    pip = kernel.execute("%pip install requests")
    fine = kernel.execute("print(6 * 7)")
print(json.dumps({"shell": shell.error_text, "system": system.error_text, "pip": pip.error_text,
                  "fine": fine.stdout}))
"""


def _as_user(laptop: dict, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``argv`` as the laptop's user, in its environment; fail with its output."""
    done = subprocess.run(list(argv), user=NOTEBOOK_USER[0], group=NOTEBOOK_USER[1], extra_groups=[],
                          env=laptop["env"], cwd=laptop["home"], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def laptop() -> Iterator[dict]:
    """A fresh venv and home owned by uid 1000, with kernel_guard installed the README's two ways."""
    with unprivileged_root() as root:
        base = Path(root)
        home, prefix, source = base / "home", base / "venv", base / "kernel-guard"
        home.mkdir()
        venv.EnvBuilder(with_pip=False).create(prefix)
        site = Path(subprocess.check_output([str(prefix / "bin" / "python"), "-c",
                                             "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                            text=True).strip())
        # this checkout's environment stands in for the registry: dependencies (and pip) are found there
        (site / "checkout-env.pth").write_text(sysconfig.get_path("purelib") + "\n")
        source.mkdir()
        for name in SOURCES:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
            else:
                shutil.copy(REPO / name, source / name)
        subprocess.run(["chown", "-R", f"{NOTEBOOK_USER[0]}:{NOTEBOOK_USER[1]}", str(base)], check=True)
        env = {"PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "HOME": str(home), "JUPYTER_PLATFORM_DIRS": "1",
               "PYTHONWARNINGS": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               **{k: v for k, v in os.environ.items() if k.startswith("PIP_") and k != "PIP_USER"}}
        laptop = {"root": base, "home": home, "prefix": prefix, "python": str(prefix / "bin" / "python"),
                  "env": env}
        # the README's two commands
        _as_user(laptop, laptop["python"], "-m", "pip", "install", "--quiet", str(source))
        laptop["installed"] = _as_user(laptop, str(prefix / "bin" / "kernel-guard"), "install-kernelspec",
                                       "--user").stdout
        yield laptop


def test_the_laptops_jupyter_lists_the_guarded_kernel_beside_its_own(laptop: dict) -> None:
    """`jupyter kernelspec list` shows the user's python3 and "Python 3 (kernel_guard)" in their home."""
    listing = _as_user(laptop, laptop["python"], "-m", "jupyter_client.kernelspecapp", "list", "--json")
    specs = json.loads(listing.stdout)["kernelspecs"]
    assert {"python3", "python3-guarded"} <= set(specs), specs
    guarded = specs["python3-guarded"]
    assert guarded["spec"]["display_name"] == "Python 3 (kernel_guard)"
    assert guarded["resource_dir"].startswith(str(laptop["home"]))
    assert guarded["spec"]["argv"][:4] == [laptop["python"], "-I", "-m", "kernel_guard.launch"]


def test_installing_does_not_enable_the_server_extension(laptop: dict) -> None:
    """No config enables kernel_guard.server after pip install: the laptop's Jupyter still starts python3."""
    listing = _as_user(laptop, laptop["python"], "-m", "jupyter_server", "extension", "list")
    text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert not re.search(r"kernel_guard\.server\s+enabled", text), text
    assert not (laptop["prefix"] / "etc" / "jupyter" / "jupyter_server_config.d").exists()


def test_the_guarded_kernel_refuses_a_shell_as_the_laptops_user(laptop: dict) -> None:
    """The installed kernelspec starts a launcher kernel as uid 1000 that refuses `!id` and os.system
    and runs ordinary code."""
    work = laptop["home"] / "notebooks"
    work.mkdir()
    os.chown(work, *NOTEBOOK_USER)
    done = _as_user(laptop, laptop["python"], "-c", TRY_KERNEL, str(work), str(laptop["home"] / "kernel.log"),
                    timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "kernel_guard refused" in result["shell"], result
    assert "kernel_guard refused" in result["system"], result
    assert result["fine"].strip() == "42", result
    # %pip on a personal kernel says how to install into its environment, not whom to ask
    assert f"{laptop['python']} -m pip install NAME" in result["pip"], result["pip"]
    assert "ask the people" not in result["pip"] and "docs/troubleshooting.md" in result["pip"], result["pip"]
    # the record is in the user's state folder, as install-kernelspec said; the terminal has no JSON
    events = laptop["home"] / ".local" / "state" / "kernel_guard" / "events.jsonl"
    assert str(events) in laptop["installed"], laptop["installed"]
    actions = [json.loads(line)["event"]["action"] for line in events.read_text().splitlines() if line]
    assert "kernel-started" in actions and "shell-refused" in actions, actions
    terminal = (laptop["home"] / "kernel.log").read_text()
    assert '{"@timestamp"' not in terminal, terminal[-2000:]
