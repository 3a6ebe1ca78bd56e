"""The image route in a real container engine, run as the Helm example runs it.

examples/docker/Dockerfile is built by podman on a docker-stacks-like base (see
engine.py and base.Containerfile), with kernel_guard's wheel built from this checkout.
Its containers run as image-values.yaml's pod would: uid 1000 and gid 100, the engine's
default seccomp profile, no privilege escalation, no capabilities, the chart's extraEnv,
and the events folder a volume the sidecar would read.  The ConfigMap route's files,
rendered from configmap-values.yaml, are mounted into the same base with kernel_guard
installed, as that route asks of an image.

Skipped, with the reason, only where no container engine can run at all.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests
import yaml

import engine as podman
from jupyter_harness import KernelSocket, free_port, output_text

pytestmark = pytest.mark.timeout(2400)

REPO = podman.REPO
HELM = REPO / "examples" / "helm"
EVENTS_IN_POD = "/var/log/kernel_guard"
USER = ("1000", "100")
#: a kernelspec that does not run the guard, as an operator might leave in an image
PLAIN_SPEC = {"display_name": "plain", "language": "python",
              "argv": ["/opt/conda/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]}


@pytest.fixture(scope="module")
def engine() -> Iterator[podman.Engine]:
    reason = podman.unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="kernel-guard-container-") as workdir:
        yield podman.Engine(workdir)


@pytest.fixture(scope="module")
def images(engine: podman.Engine) -> Dict[str, str]:
    """The base (cached by recipe), the image route's image and a ConfigMap-route image."""
    times: Dict[str, Optional[float]] = {}
    base, times["base"] = podman.ensure_base(engine)
    context = Path(engine.workdir) / "context"
    (context / "dist").mkdir(parents=True)
    started = time.monotonic()
    wheel = podman.build_wheel(str(context / "dist"))
    times["wheel"] = time.monotonic() - started
    (context / "examples" / "docker").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "docker" / "kernel_guard_server.json", context / "examples" / "docker")
    image = "localhost/kernel-guard-test-image:latest"
    times["image"] = engine.build(image, REPO / "examples" / "docker" / "Dockerfile", str(context),
                                  args=["--build-arg", f"BASE_IMAGE={base}"])
    # the ConfigMap route asks of the image: kernel_guard installed, and the Python environment
    # root-owned (docker-stacks gives it to the notebook user; the server refuses a kernelspec
    # whose interpreter the user can change)
    configmap_recipe = context / "Containerfile.configmap"
    configmap_recipe.write_text(
        f"FROM {base}\nUSER root\nCOPY dist/{wheel.name} /tmp/kernel-guard/\n"
        f"RUN python -m pip install --no-cache-dir '/tmp/kernel-guard/{wheel.name}[server]' "
        "&& rm -rf /tmp/kernel-guard\n"
        "RUN chown -R root:root /opt/conda && chmod -R go-w /opt/conda\nUSER ${NB_UID}\n")
    configmap = "localhost/kernel-guard-test-configmap:latest"
    times["configmap image"] = engine.build(configmap, configmap_recipe, str(context))
    podman._log("build times: " + ", ".join(f"{k} {'cached' if v is None else f'{v:.0f} s'}"
                                           for k, v in times.items()))
    return {"base": base, "image": image, "configmap": configmap}


def chart_env(values_file: str) -> Dict[str, str]:
    """singleuser.extraEnv of a Helm example."""
    values = yaml.safe_load((HELM / values_file).read_text())
    return {k: str(v) for k, v in values["singleuser"]["extraEnv"].items()}


def pod_options(engine: podman.Engine, env: Dict[str, str], mounts: List[str]) -> List[str]:
    """What the chart's securityContext gives the notebook container, in podman's words."""
    options = ["--user", ":".join(USER), "--security-opt", "no-new-privileges", "--cap-drop", "ALL",
               "--network", "host", *engine.ulimits]
    for name, value in env.items():
        options += ["-e", f"{name}={value}"]
    for mount in mounts:
        options += ["-v", mount]
    return options


def events_volume(engine: podman.Engine, name: str) -> Path:
    """An emptyDir with fsGroup 100: a folder the notebook user's group can write."""
    folder = Path(engine.workdir) / name
    folder.mkdir()
    os.chown(folder, int(USER[0]), int(USER[1]))
    folder.chmod(0o770)
    return folder


def home_volume(engine: podman.Engine, name: str) -> Path:
    """The user's home as the chart mounts it (a volume owned by the user), from an earlier
    session: IPython's folder with its history profile, as a kernel leaves it."""
    home = Path(engine.workdir) / name
    (home / ".ipython" / "profile_default").mkdir(parents=True)
    subprocess.run(["chown", "-R", ":".join(USER), str(home)], check=True)
    return home


def read_events(path: Path) -> List[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events_in(text: str) -> List[dict]:
    """The event lines among a pod log's lines."""
    found = []
    for line in text.splitlines():
        if line.startswith("{") and '"event"' in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


class PodServer:
    """The single-user server in a container, on the host's network (as the pod's port)."""

    def __init__(self, engine: podman.Engine, image: str, options: List[str]) -> None:
        self.engine, self.port, self.token = engine, free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"kernel-guard-test-{self.port}"
        engine.run("run", "-d", "--name", self.name, *options, image, "jupyter", "server",
                   f"--ServerApp.port={self.port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/api/status").status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.5)
        raise AssertionError(f"the server in {image} did not answer:\n{self.log()[-4000:]}")

    def request(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, self.url + path, json=body, timeout=120,
                                headers={"Authorization": f"token {self.token}"})

    def start_kernel(self, name: Optional[str]) -> requests.Response:
        return self.request("POST", "/api/kernels", {"name": name} if name else {})

    def log(self) -> str:
        done = self.engine.run("logs", self.name, check=False)
        return (done.stdout + done.stderr).decode(errors="replace")

    def stop(self) -> None:
        self.engine.run("rm", "-f", "-t", "10", self.name, check=False, timeout=120)


def refusal_of_ls(event: dict) -> bool:
    return (event["event"]["outcome"] == "failure" and event["kernel_guard"]["layer"] == "ipython"
            and "ls" in json.dumps(event.get("kernel_guard", {})) + event["event"].get("reason", ""))


# -- the image route ------------------------------------------------------------------

def test_kernel_guard_check_passes_for_the_default_kernel(engine: podman.Engine, images: Dict[str, str]) -> None:
    """`kernel-guard check` in the image, run as the pod runs, stops and records every technique
    with the default python3 kernel; and the container really is under the engine's seccomp profile."""
    env = chart_env("image-values.yaml")
    volume = events_volume(engine, "check-events")
    options = pod_options(engine, env, [f"{volume}:{EVENTS_IN_POD}"])
    status = engine.run("run", "--rm", *options, images["image"], "grep", "-E", "^(Seccomp|NoNewPrivs|Uid):",
                        "/proc/self/status").stdout.decode()
    assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status and "\t1000\t" in status, status
    done = engine.run("run", "--rm", *options, images["image"], "kernel-guard", "check", "--kernel", "python3",
                      "--format", "json", check=False, timeout=900)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, f"{out[-4000:]}\n{done.stderr.decode(errors='replace')[-4000:]}"
    report = json.loads(out)
    summary = report["summary"]
    assert summary["techniques"] >= 50 and summary["stopped"] == summary["recorded"] == summary["techniques"], summary
    assert all(t["stopped"] and t["recorded"] for t in report["techniques"])


def test_the_image_server_starts_only_the_guarded_kernel_and_the_sidecar_file_has_the_refusal(
        engine: podman.Engine, images: Dict[str, str]) -> None:
    """With the user's home a volume from an earlier session, the image's server starts, refuses
    an unguarded kernelspec left in the image, starts its default python3 behind the launcher,
    and a refused `!ls` lands in the events file of the volume."""
    env = chart_env("image-values.yaml")
    volume = events_volume(engine, "server-events")
    plain = Path(engine.workdir) / "plain-kernel.json"
    plain.write_text(json.dumps(PLAIN_SPEC))
    plain.chmod(0o444)
    options = pod_options(engine, env, [f"{volume}:{EVENTS_IN_POD}",
                                        f"{home_volume(engine, 'image-home')}:/home/jovyan",
                                        f"{plain}:/usr/local/share/jupyter/kernels/plain/kernel.json:ro"])
    server = PodServer(engine, images["image"], options)
    try:
        refused = server.start_kernel("plain")
        assert refused.status_code >= 400, refused.text
        started = server.start_kernel(None)
        assert started.status_code == 201, started.text
        kernel = started.json()
        assert kernel["name"] == "python3"
        assert [k["name"] for k in server.request("GET", "/api/kernels").json()] == ["python3"]
        with KernelSocket(server, kernel["id"]) as ws:  # type: ignore[arg-type]
            result = ws.execute("!ls", timeout=120)
            shown = output_text(result)
            assert "kernel_guard" in shown and "docs/troubleshooting.md" in shown, shown
            proc = ws.execute("print(open('/proc/self/status').read())", timeout=60)
            assert "Seccomp:\t2" in output_text(proc)
        events_file = volume / "events.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(refusal_of_ls(e) for e in read_events(events_file)):
            time.sleep(0.5)
        events = read_events(events_file)
        assert any(refusal_of_ls(e) for e in events), [e["event"]["action"] for e in events]
        # the kernel the server started is the launcher's: OS layers on, written by the custodian
        started_events = [e for e in events if e["event"]["action"] == "kernel-started"]
        assert started_events and started_events[-1]["kernel_guard"]["layer"] == "launcher", started_events
        assert started_events[-1]["kernel_guard"]["seccomp"] == "2", started_events[-1]["kernel_guard"]
    except AssertionError:
        print(server.log()[-6000:])
        raise
    finally:
        server.stop()


# -- the ConfigMap route, in the same base ------------------------------------------------

def configmap_mounts(folder: Path) -> List[str]:
    """singleuser.extraFiles of configmap-values.yaml, rendered as the chart renders them
    (stringData as is, data as JSON), root-owned and read-only, mounted at their mountPath."""
    values = yaml.safe_load((HELM / "configmap-values.yaml").read_text())
    mounts = []
    for name, spec in values["singleuser"]["extraFiles"].items():
        path = folder / name
        path.write_text(spec["stringData"] if "stringData" in spec else json.dumps(spec["data"]))
        path.chmod(spec.get("mode", 0o444))
        mounts.append(f"{path}:{spec['mountPath']}:ro")
    return mounts


def test_the_configmap_route_holds_in_the_same_base(engine: podman.Engine, images: Dict[str, str]) -> None:
    """With the ConfigMap route's files mounted and its extraEnv, the server refuses the image's
    own python3, starts python3-guarded by default (the launcher: its seccomp filter is in force),
    and `!ls` there is refused and in the pod log."""
    folder = Path(engine.workdir) / "configmap"
    folder.mkdir()
    options = pod_options(engine, chart_env("configmap-values.yaml"),
                          [*configmap_mounts(folder), f"{home_volume(engine, 'configmap-home')}:/home/jovyan"])
    server = PodServer(engine, images["configmap"], options)
    try:
        assert server.start_kernel("python3").status_code >= 400
        started = server.start_kernel(None)
        assert started.status_code == 201, started.text
        kernel = started.json()
        assert kernel["name"] == "python3-guarded"
        with KernelSocket(server, kernel["id"]) as ws:  # type: ignore[arg-type]
            shown = output_text(ws.execute("!ls", timeout=120))
            assert "kernel_guard" in shown and "docs/troubleshooting.md" in shown, shown
            # the launcher's OS layers, as in the image route: its own seccomp filter (mode 2)
            status = output_text(ws.execute("print(open('/proc/self/status').read())", timeout=60))
            assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status, status
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(refusal_of_ls(e) for e in events_in(server.log())):
            time.sleep(0.5)
        assert any(refusal_of_ls(e) for e in events_in(server.log())), server.log()[-4000:]
    except AssertionError:
        print(server.log()[-6000:])
        raise
    finally:
        server.stop()
