"""examples/docker/Dockerfile, checked without a Docker engine.

Every ``RUN`` line of the Dockerfile is run, in order, in a fresh virtual
environment standing in for the image's Python (dependencies come from this
checkout's environment through a ``.pth`` file), with ``COPY`` sources copied to
the same places under a temporary root; the wheel the Dockerfile copies is built
from this checkout as its header says.  Then the result is checked as the image
would be used: ``python3`` is the guarded kernelspec, and the server extension is
enabled.  tests/container builds and runs the same file with a real engine.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from jupyter_harness import effective_server_policy
from kernel_guard.server.policy import assess_kernelspec

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "examples" / "docker" / "Dockerfile"
#: what the docker-stacks base image ships in /etc/jupyter (its own server config)
BASE_SERVER_CONFIG = """c = get_config()  # noqa: F821
c.ServerApp.ip = "0.0.0.0"
c.ServerApp.open_browser = False
c.FileContentsManager.delete_to_trash = False
"""


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def build_context(root: Path) -> Path:
    """The build context as the Dockerfile's header makes it: the repository's examples and
    ``dist/`` with kernel_guard's wheel, built from this checkout (``pip wheel``)."""
    context = root / "context"
    shutil.copytree(REPO / "examples", context / "examples")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                           str(context / "dist"), str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return context


def copy_into(src: str, dest: str, root: Path, context: Path) -> Path:
    """Perform ``COPY src dest`` (``src`` may be a glob) from the build context into ``root``."""
    target = root / dest.lstrip("/")
    sources = sorted(glob.glob(str(context / src)))
    assert sources, f"COPY {src}: nothing in the build context matches"
    if dest.endswith("/"):
        target.mkdir(parents=True, exist_ok=True)
        for source in sources:
            shutil.copy(source, target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sources[0], target)
    return target


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The Dockerfile's COPY and RUN steps carried out in a fresh venv under a temporary root."""
    if os.geteuid() != 0:
        pytest.fail("the Dockerfile's RUN lines run as root (USER root): run this test as root, as CI does")
    root = tmp_path_factory.mktemp("image")
    context = build_context(root)
    prefix = root / "venv"
    venv.EnvBuilder(with_pip=False).create(prefix)
    site = Path(subprocess.check_output([str(prefix / "bin" / "python"), "-c",
                                         "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip())
    # the checkout's environment stands in for the registry: dependencies (and pip) are found, not downloaded
    (site / "checkout-env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {"PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "HOME": str(root / "home"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "JUPYTER_PLATFORM_DIRS": "1",
           "PYTHONWARNINGS": "ignore"}
    base = root / "etc" / "jupyter"
    base.mkdir(parents=True)
    (base / "jupyter_server_config.py").write_text(BASE_SERVER_CONFIG)
    copied: dict[str, Path] = {"/etc/jupyter": base}
    ran: list[str] = []
    for instruction, args in instructions(DOCKERFILE.read_text()):
        if instruction == "COPY":
            src, dest = shlex.split(args)[-2:]
            copied[dest] = copy_into(src, dest, root, context)
        elif instruction == "RUN":
            command = args
            for dest in copied:  # the folders COPY wrote into (/etc/jupyter, ...) live under root
                top = "/" + "/".join(dest.strip("/").split("/")[:2])
                command = re.sub(r"(?<![\w./-])" + re.escape(top), lambda _: str(root) + top, command)
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], env=env, cwd=root,
                                  capture_output=True, text=True, timeout=240)
            assert done.returncode == 0, f"RUN {args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            ran.append(args)
    return {"root": root, "prefix": prefix, "env": env, "ran": ran, "copied": copied}


def test_dockerfile_runs_install_kernelspec_and_extension_steps(image: dict) -> None:
    """The Dockerfile installs the package, the kernelspec and the extension, and locks the environment."""
    steps = " | ".join(image["ran"])
    for needed in ("pip install", "kernel_guard-*.whl", "kernel-guard install-kernelspec", "--name python3",
                   "chown -R root:root"):
        assert needed in steps
    assert "/usr/local/etc/jupyter/jupyter_server_config.json" in image["copied"]


def test_image_default_python3_is_the_guarded_kernelspec(image: dict) -> None:
    """sys.prefix's python3 kernelspec runs the launcher isolated, and the server extension would start it."""
    folder = image["prefix"] / "share" / "jupyter" / "kernels" / "python3"
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][1:4] == ["-I", "-m", "kernel_guard.launch"]
    assert spec["display_name"] == "Python 3 (kernel_guard)"
    verdict = assess_kernelspec("python3", spec["argv"], spec.get("env", {}), str(folder), euid=1000, groups=[100])
    assert verdict.allowed and verdict.guarded, verdict.reason


#: what a ServerApp reads to decide which extensions to load, and whether kernel_guard.server validates
SERVER_EXTENSIONS = """
import json
from jupyter_core.paths import jupyter_config_path
from jupyter_server.extension.config import ExtensionConfigManager
from jupyter_server.extension.manager import ExtensionPackage
enabled = ExtensionConfigManager(read_config_path=jupyter_config_path()).get_jpserver_extensions()
print(json.dumps({"enabled": enabled,
                  "valid": ExtensionPackage(name="kernel_guard.server", enabled=True).validate()}))
"""


def test_image_enables_the_server_extension(image: dict) -> None:
    """The image's server, reading its config path with the image's /etc/jupyter, loads kernel_guard.server
    (the copied policy enables it) and the extension validates; pip installed no config of its own."""
    env = image_env(image)
    done = subprocess.run([str(image["prefix"] / "bin" / "python"), "-c", SERVER_EXTENSIONS], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["enabled"].get("kernel_guard.server") is True and found["valid"], found
    assert not (image["prefix"] / "etc" / "jupyter").exists()


def image_env(image: dict) -> dict:
    """The Dockerfile's ENV for a server in the stand-in image: folders COPY wrote into live under its root."""
    env = dict(image["env"])
    for instruction, args in instructions(DOCKERFILE.read_text()):
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    env["JUPYTER_CONFIG_DIR"] = str(image["root"]) + env["JUPYTER_CONFIG_DIR"]
    env["JUPYTER_CONFIG_PATH"] = str(image["copied"]["/etc/jupyter"])  # the base image's, read first
    env["HOME"] = env["JUPYTER_DATA_DIR"] = str(image["root"] / "home")
    return {name: value for name, value in env.items() if "${" not in value}  # folders in the home


def test_the_image_server_applies_the_policy(image: dict) -> None:
    """A server started in the image with its ENV really applies the copied policy: terminals off,
    culling on, no debug_request, downloads recorded (a file the server reads for extension
    enablement only would leave all of these at their defaults)."""
    policy = effective_server_policy(str(image["prefix"] / "bin" / "python"), image_env(image), str(image["root"]))
    assert sorted(policy["config_files"]) == sorted([
        str(image["copied"]["/etc/jupyter"] / "jupyter_server_config.py"),
        image_env(image)["JUPYTER_CONFIG_DIR"] + "/jupyter_server_config.json"])
    assert policy["kernel_guard.server"] and policy["terminals_enabled"] is False
    assert policy["cull_idle_timeout"] == 3600 and policy["cull_connected"] is False
    assert policy["allowed_message_types"] and "debug_request" not in policy["allowed_message_types"]
    assert "execute_request" in policy["allowed_message_types"]
    assert policy["downloads"] == "record" and policy["default_kernel_name"] == "python3"


def test_the_image_points_the_servers_start_folders_outside_the_home() -> None:
    """The server's config and data folders are root-owned image folders, /etc/jupyter is locked,
    and no user site runs in the server."""
    env = dict(item.split("=", 1) for _, args in instructions(DOCKERFILE.read_text()) if _ == "ENV"
               for item in shlex.split(args))
    assert env["JUPYTER_CONFIG_DIR"].startswith("/usr/local/") and env["JUPYTER_DATA_DIR"].startswith("/usr/local/")
    assert all(env[v].startswith("${HOME}/") for v in ("JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                                                      "JUPYTERLAB_WORKSPACES_DIR"))
    assert env["PYTHONNOUSERSITE"] == "1"
    runs = [args for instruction, args in instructions(DOCKERFILE.read_text()) if instruction == "RUN"]
    assert any("chown -R root:root /etc/jupyter" in r and "go-w /etc/jupyter" in r for r in runs)
