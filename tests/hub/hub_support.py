"""A real JupyterHub on loopback for the hub tests, and a browser that logs in to it.

:class:`Hub` creates two unprivileged system users (uids from 1600, group 100,
homes under a temporary root), writes a ``jupyterhub_config.py`` (a password
for every user, each single-user server started as its user by
LocalProcessSpawner with the image's server policy, the guarded kernelspec as
the only kernel, each user's events in a file of theirs outside their home,
idle kernels culled after a few seconds), starts JupyterHub behind
configurable-http-proxy on free ports, and at the end stops it, kills what is
left of the users' processes and removes the users.  :class:`Browser` talks to
it as a browser would: the hub's login form, the OAuth redirects to the
single-user server, its REST API with the ``_xsrf`` cookie, and the kernel's
websocket through the proxy.  The hub is shared by every test module of the
folder (:func:`shared_hub`): it takes most of the time.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import psutil
import pytest
import requests

from jupyter_harness import KernelSocket, _field, free_port, wait_until
from kernel_guard.testing import read_events

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "examples" / "docker" / "kernel_guard_server.json"
#: idle culling for the test (the policy file says an hour): seconds idle, seconds between checks
CULL_IDLE, CULL_INTERVAL = 12, 2
FIRST_UID = 1600
NOTEBOOK_GROUP = 100

CONFIG = """\
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = {bind_url!r}
c.JupyterHub.hub_bind_url = {hub_url!r}
c.JupyterHub.db_url = {db_url!r}
c.JupyterHub.cookie_secret_file = {cookie_secret!r}
c.JupyterHub.cleanup_servers = True
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.api_url = {proxy_api!r}
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = set({users!r})
c.JupyterHub.services = [{{"name": "kg-tests", "api_token": {api_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "kg-tests", "services": ["kg-tests"],
                            "scopes": ["admin:users", "admin:servers", "admin:server_state"]}}]
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.disable_user_config = True
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
# the image's policy as is; only culling is shortened, on the command line, which wins
c.Spawner.args = ["--MappingKernelManager.cull_idle_timeout={cull_idle}",
                  "--MappingKernelManager.cull_interval={cull_interval}"]
# start-up folders as the image sets them: config and data root-owned, only data in the home
home = lambda spawner: __import__("pwd").getpwnam(spawner.user.name).pw_dir  # noqa: E731
c.Spawner.environment = {{
    "JUPYTER_CONFIG_DIR": {config_dir!r},
    "JUPYTER_DATA_DIR": {data_dir!r},
    "JUPYTER_PATH": {jupyter_path!r},
    "JUPYTER_RUNTIME_DIR": lambda spawner: home(spawner) + "/.local/share/jupyter/runtime",
    "JUPYTERLAB_SETTINGS_DIR": lambda spawner: home(spawner) + "/.jupyter/lab/user-settings",
    "JUPYTERLAB_WORKSPACES_DIR": lambda spawner: home(spawner) + "/.jupyter/lab/workspaces",
    "KERNEL_GUARD_MODE": "enforce",
    "KERNEL_GUARD_SINKS": lambda spawner: "file://{events_dir}/" + spawner.user.name + "/events.jsonl",
    "PYTHONNOUSERSITE": "1",
    "PYTHONWARNINGS": "ignore",
}}
"""


@dataclass
class HubUser:
    """A system user of the test, and where its files are."""

    name: str
    uid: int
    home: Path
    events: Path


class Hub:
    """JupyterHub with the proxy, started as root, for two users created here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_hex(8)
        self.api_token = secrets.token_hex(16)
        self.log_path = root / "hub.log"
        self.users: List[HubUser] = []
        self.process: Optional[subprocess.Popen] = None

    # -- set-up -------------------------------------------------------------------
    def create_users(self, count: int = 2) -> None:
        """System users with their own uid (group 100) and a private home under the root."""
        uid = FIRST_UID
        while len(self.users) < count:
            name = f"kg{secrets.token_hex(3)}"
            try:
                pwd.getpwuid(uid)
                uid += 1
                continue
            except KeyError:
                pass
            home, events = self.root / "home" / name, self.root / "log" / name
            done = subprocess.run(["useradd", "-u", str(uid), "-g", str(NOTEBOOK_GROUP), "-N", "-M",
                                   "-d", str(home), "-s", "/bin/sh", name], capture_output=True, text=True)
            if done.returncode != 0:
                uid += 1  # taken meanwhile (another run), try the next
                continue
            self.users.append(HubUser(name, uid, home, events / "events.jsonl"))
            for folder, mode in ((home, 0o700), (events, 0o755)):
                folder.mkdir(parents=True)
                os.chown(folder, uid, NOTEBOOK_GROUP)
                folder.chmod(mode)

    def write_config(self) -> Path:
        """The hub's config, the server policy as a config file, and the guarded kernelspec."""
        for folder in ("hub", "etc", "kernels", "share"):
            (self.root / folder).mkdir(mode=0o755)
        shutil.copy(POLICY, self.root / "etc" / "jupyter_server_config.json")
        subprocess.run([sys.executable, "-m", "kernel_guard.cli", "install-kernelspec", "--name", "python3",
                        "--prefix", str(self.root / "kernels")], check=True, capture_output=True)
        proxy = shutil.which("configurable-http-proxy", path=f"{sys.prefix}/bin:{os.environ.get('PATH', '')}")
        if proxy is None:
            pytest.fail("configurable-http-proxy is missing: `scripts/bootstrap test` installs it from npm")
        path = self.root / "hub" / "jupyterhub_config.py"
        path.write_text(CONFIG.format(
            bind_url=self.url, hub_url=f"http://127.0.0.1:{self.hub_port}",
            db_url=f"sqlite:///{self.root}/hub/jupyterhub.sqlite",
            cookie_secret=str(self.root / "hub" / "cookie_secret"), proxy=proxy,
            proxy_api=f"http://127.0.0.1:{self.proxy_api_port}", proxy_token=secrets.token_hex(16),
            password=self.password, users=[u.name for u in self.users], api_token=self.api_token,
            singleuser=os.path.join(sys.prefix, "bin", "jupyterhub-singleuser"),
            cull_idle=CULL_IDLE, cull_interval=CULL_INTERVAL, config_dir=str(self.root / "etc"), data_dir=str(self.root / "share"),
            jupyter_path=str(self.root / "kernels" / "share" / "jupyter"), events_dir=str(self.root / "log")))
        return path

    def start(self, deadline: float = 90) -> "Hub":
        """Users, config, then JupyterHub (which starts the proxy); wait until it answers."""
        self.create_users()
        config = self.write_config()
        env = {"PATH": f"{sys.prefix}/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONWARNINGS": "ignore",
               "HOME": str(self.root / "hub")}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], env=env,
                                            cwd=self.root / "hub", stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {self.process.returncode}:\n{self.log()[-6000:]}")
            try:
                if requests.get(self.url + "/hub/api/", timeout=5).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"jupyterhub did not answer within {deadline}s:\n{self.log()[-6000:]}")

    # -- tear-down ----------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM the hub (it stops the servers), kill what is left, remove the users and the root."""
        family = _family(self.process.pid) if self.process else []
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        uids = {u.uid for u in self.users}
        family += [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in uids]
        for proc in family:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=10)
        for user in self.users:
            subprocess.run(["userdel", user.name], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- the hub's REST API, as an operator's service ------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.url}/hub/api{path}", timeout=60,
                                headers={"Authorization": f"token {self.api_token}"}, **kwargs)

    def server_model(self, user: HubUser) -> Optional[dict]:
        """The hub's model of the user's server (with its state), or None when none runs."""
        return self.api("GET", f"/users/{user.name}").json()["servers"].get("")

    # -- events -------------------------------------------------------------------
    def events(self, user: HubUser, **where: Any) -> List[dict]:
        """The user's events whose dotted fields (``event__action``) equal the given values."""
        return [e for e in read_events(str(user.events))
                if all(_field(e, key) == value for key, value in where.items())]

    def wait_for_events(self, user: HubUser, timeout: float = 20, count: int = 1, **where: Any) -> List[dict]:
        """The matching events, once there are ``count`` of them (or the timeout passed)."""
        wait_until(lambda: len(self.events(user, **where)) >= count, timeout=timeout)
        return self.events(user, **where)


def _family(pid: int) -> List[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent] + parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


_SHARED: Optional[Hub] = None


def shared_hub(request: pytest.FixtureRequest) -> Hub:
    """The one hub of this test run, stopped when the run ends (a conftest here would
    shadow tests/conftest.py, which other folders import by name)."""
    global _SHARED
    if os.geteuid() != 0:
        pytest.fail("the hub tests create system users and start JupyterHub as root: run them as root, as CI does")
    if _SHARED is None:
        root = Path(tempfile.mkdtemp(prefix="kernel-guard-hub-"))
        root.chmod(0o755)
        hub = Hub(root)
        request.session.addfinalizer(hub.stop)
        _SHARED = hub.start()
    return _SHARED


def logged_in(hub: Hub, index: int) -> "Browser":
    """The browser of the hub's user ``index``, logged in, with the user's server open."""
    browser = Browser(hub, hub.users[index])
    browser.open_server()
    return browser


class Browser:
    """One user's browser: a cookie jar, the hub's login form, OAuth to the user's server."""

    def __init__(self, hub: Hub, user: HubUser) -> None:
        self.hub, self.user = hub, user
        self.http = requests.Session()
        self.base = f"{hub.url}/user/{user.name}"

    def login(self) -> None:
        """Fill in the hub's login form (with its _xsrf field) and submit it."""
        form = self.http.get(f"{self.hub.url}/hub/login", timeout=60)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
        data = {"username": self.user.name, "password": self.hub.password, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
        done = self.http.post(f"{self.hub.url}/hub/login", data=data, timeout=60, allow_redirects=False)
        assert done.status_code == 302, (done.status_code, done.text[-2000:])

    def open_server(self, deadline: float = 120) -> None:
        """Ask the hub for the server (as the Start button does) and follow the OAuth redirects
        to JupyterLab; until it runs the hub answers with its spawn-pending page."""
        if "jupyterhub-session-id" not in self.http.cookies:
            self.login()
        self.http.get(f"{self.hub.url}/hub/spawn", timeout=120)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            page = self.http.get(f"{self.base}/lab", timeout=60)
            if page.status_code == 200 and page.url.startswith(f"{self.base}/lab") and self.xsrf():
                return
            time.sleep(0.5)
        raise AssertionError(f"{self.user.name}'s server did not open:\n{self.hub.log()[-6000:]}")

    def xsrf(self) -> Optional[str]:
        """The single-user server's _xsrf cookie, which its API wants back in X-XSRFToken."""
        for cookie in self.http.cookies:
            if cookie.name == "_xsrf" and cookie.path.startswith(f"/user/{self.user.name}"):
                return cookie.value
        return None

    def api(self, method: str, path: str, body: Any = None) -> requests.Response:
        """The single-user server's REST API, through the proxy, with the browser's cookies."""
        return self.http.request(method, f"{self.base}{path}", json=body, timeout=60,
                                 headers={"X-XSRFToken": self.xsrf() or ""})

    def start_session(self, path: str) -> dict:
        """A notebook session (as JupyterLab makes one when a notebook opens) on the default kernel."""
        response = self.api("POST", "/api/sessions", {"path": path, "type": "notebook",
                                                      "kernel": {"name": "python3"}})
        assert response.status_code == 201, (response.status_code, response.text)
        return response.json()

    def kernel_socket(self, kernel_id: str) -> "HubKernelSocket":
        return HubKernelSocket(self, kernel_id)


class HubKernelSocket(KernelSocket):
    """The kernel's /channels websocket through the proxy, authenticated by the browser's cookies."""

    def __init__(self, browser: Browser, kernel_id: str) -> None:
        import websocket

        self.session = uuid.uuid4().hex
        url = (browser.base.replace("http://", "ws://", 1)
               + f"/api/kernels/{kernel_id}/channels?session_id={self.session}")
        path = f"/user/{browser.user.name}/"
        cookies = "; ".join(f"{c.name}={c.value}" for c in browser.http.cookies if path.startswith(c.path))
        self.ws = websocket.create_connection(url, header=[f"Cookie: {cookies}"], origin=browser.hub.url,
                                              timeout=60)

    def request(self, msg_type: str, content: dict, channel: str, wait: float) -> List[dict]:
        """Send one message; return the messages answering it within ``wait`` seconds."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "", "session": self.session,
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": []}))
        answers = []
        end = time.monotonic() + wait
        while time.monotonic() < end:
            self.ws.settimeout(max(0.1, end - time.monotonic()))
            try:
                msg = json.loads(self.ws.recv())
            except Exception:  # websocket's timeout: nothing more came
                break
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                answers.append(msg)
        return answers
