"""A real Jupyter server (or JupyterLab) on loopback for end-to-end tests.

The server runs as a subprocess with a token, a temporary root, home,
config, data and runtime directories of its own, and kernelspecs written
here; it writes kernel_guard events (its own and its kernels') to one
JSON-lines file.  Start-up has a deadline; clean-up kills what is left of
the process tree with psutil.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import psutil
import requests

from kernel_guard.testing import read_events

GUARDED_EXT_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--ext=kernel_guard"]
#: where the browser tests keep their screenshots, for a person to look at
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is a test dependency (scripts/debian-packages.txt)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterServer:
    """``jupyter server`` (or ``jupyter lab``) started for one test module."""

    def __init__(self, root: str, app: str = "jupyter_server", kernelspecs: Optional[Dict[str, dict]] = None,
                 config: Optional[dict] = None, env: Optional[dict] = None) -> None:
        self.root = root
        self.app = app
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.notebooks = os.path.join(root, "notebooks")
        self.home = os.path.join(root, "home")
        self.share = os.path.join(root, "share", "jupyter")
        self.config_dir = os.path.join(root, "config")
        self.events_path = os.path.join(root, "events", "events.jsonl")
        self.log_path = os.path.join(root, "server.log")
        for path in (self.notebooks, self.home, self.config_dir, os.path.join(self.share, "kernels")):
            os.makedirs(path, exist_ok=True)
        for name, spec in (kernelspecs or {}).items():
            self.add_kernelspec(name, spec)
        settings = {
            "ServerApp": {"jpserver_extensions": {"kernel_guard.server": True}, "open_browser": False,
                          "ip": "127.0.0.1", "port": self.port, "port_retries": 0, "root_dir": self.notebooks,
                          "allow_root": os.geteuid() == 0},
            "IdentityProvider": {"token": self.token},
        }
        for section, values in (config or {}).items():
            settings.setdefault(section, {}).update(values)
        with open(os.path.join(self.config_dir, "jupyter_server_config.json"), "w") as fh:
            json.dump(settings, fh, indent=1)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "KERNEL_GUARD"))},
            "HOME": self.home,
            "IPYTHONDIR": os.path.join(self.home, ".ipython"),
            "JUPYTER_CONFIG_DIR": self.config_dir,
            "JUPYTER_DATA_DIR": os.path.join(self.home, ".local", "share", "jupyter"),
            "JUPYTER_RUNTIME_DIR": os.path.join(root, "runtime"),
            "JUPYTER_PATH": self.share,
            "JUPYTER_PLATFORM_DIRS": "1",
            "KERNEL_GUARD_SINKS": f"file://{self.events_path}",
            "KERNEL_GUARD_MODE": "enforce",
            "PYTHONWARNINGS": "ignore",
            **(env or {}),
        }
        self.process: Optional[subprocess.Popen] = None

    def add_kernelspec(self, name: str, spec: dict) -> str:
        folder = os.path.join(self.share, "kernels", name)
        os.makedirs(folder, exist_ok=True)
        body = {"display_name": name, "language": "python", **spec}
        with open(os.path.join(folder, "kernel.json"), "w") as fh:
            json.dump(body, fh)
        return folder

    # -- process ---------------------------------------------------------------
    def start(self, deadline: float = 90) -> "JupyterServer":
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", self.app], env=self.env, cwd=self.notebooks,
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.app} exited with {self.process.returncode}:\n{self.log()[-6000:]}")
            try:
                if self.get("/api/status").status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.app} did not answer within {deadline}s:\n{self.log()[-6000:]}")

    def stop(self) -> None:
        """SIGTERM the server (it shuts its kernels down), then kill what is left."""
        if self.process is None:
            return
        try:
            parent = psutil.Process(self.process.pid)
            family = [parent] + parent.children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            pass
        for proc in family:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=5)
        self.process = None

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    # -- REST ------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, self.url + path, json=body, timeout=60,
                                headers={"Authorization": f"token {self.token}"})

    def get(self, path: str) -> requests.Response:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> requests.Response:
        return self.request("POST", path, body)

    def username(self) -> str:
        """The user name the server's identity provider gives this token."""
        return self.get("/api/me").json()["identity"]["username"]

    # -- events ----------------------------------------------------------------
    def events(self, **where: Any) -> List[dict]:
        """Events whose dotted fields equal the given values (``event__action='x'``)."""
        found = []
        for event in read_events(self.events_path):
            if all(_field(event, key) == value for key, value in where.items()):
                found.append(event)
        return found

    def wait_for_events(self, timeout: float = 15, count: int = 1, **where: Any) -> List[dict]:
        end = time.monotonic() + timeout
        while True:
            found = self.events(**where)
            if len(found) >= count or time.monotonic() > end:
                return found
            time.sleep(0.1)


def _field(event: dict, dotted: str) -> Any:
    node: Any = event
    for key in dotted.split("__"):
        node = node.get(key) if isinstance(node, dict) else None
    return node


class KernelSocket:
    """The kernel's /channels websocket, spoken as JupyterLab speaks it."""

    def __init__(self, server: JupyterServer, kernel_id: str, session_id: Optional[str] = None) -> None:
        import websocket

        self.session = session_id or uuid.uuid4().hex
        url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={self.session}"
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {server.token}"], timeout=60)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "KernelSocket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def execute(self, code: str, timeout: float = 60, cell_id: Optional[str] = None) -> dict:
        """Run a cell; return the reply content and the outputs the notebook would show."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "tester",
                       "session": self.session, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {"cellId": cell_id or uuid.uuid4().hex},
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
            "channel": "shell", "buffers": [],
        }))
        result: dict = {"reply": None, "outputs": [], "idle": False}
        end = time.monotonic() + timeout
        while result["reply"] is None or not result["idle"]:
            self.ws.settimeout(max(0.1, end - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "execute_reply":
                result["reply"] = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                result["idle"] = True
            elif kind in ("stream", "error", "execute_result", "display_data"):
                result["outputs"].append({"output_type": kind, **msg["content"]})
            if time.monotonic() > end:
                raise TimeoutError(f"no reply for {code!r}")
        return result


def output_text(result: dict) -> str:
    """What the output area shows: streams, results and error lines without colours."""
    import re

    parts = []
    for out in result["outputs"]:
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] == "error":
            parts.append("\n".join(out["traceback"]))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return re.sub(r"\x1b\[[0-9;]*m", "", "".join(parts))


def wait_until(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.25) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


#: started by :func:`effective_server_policy`: what an initialised ServerApp really holds
_POLICY_PROBE = """
import json
from jupyter_server.serverapp import ServerApp
from kernel_guard.server.settings import KernelGuardServer
app = ServerApp.instance()
app.initialize(argv=["--allow-root", "--ServerApp.port=0"], new_httpserver=False)
km = app.kernel_manager
print("POLICY " + json.dumps({
    "config_files": app.loaded_config_files,
    "kernel_guard.server": bool(app.jpserver_extensions.get("kernel_guard.server")),
    "terminals_enabled": app.terminals_enabled,
    "cull_idle_timeout": km.cull_idle_timeout, "cull_interval": km.cull_interval,
    "cull_connected": km.cull_connected, "allowed_message_types": km.allowed_message_types,
    "default_kernel_name": km.default_kernel_name,
    "downloads": KernelGuardServer(parent=app).downloads,
}))
"""


def effective_server_policy(python: str, env: dict, cwd: str) -> dict:
    """The settings a Jupyter server started by ``python`` with ``env`` applies.

    Read from an initialised ServerApp, not from the files: jupyter_server reads
    some folders (``jupyter_server_config.d``) for extension enablement only.
    """
    done = subprocess.run([python, "-c", _POLICY_PROBE], env={**env, "KERNEL_GUARD_SINKS": "stderr://"},
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("POLICY ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("POLICY "):])
