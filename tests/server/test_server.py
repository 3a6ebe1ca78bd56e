"""The server layer end to end: a real ``jupyter server`` with kernel_guard.server.

One server per module, on loopback with a token, as user "alice" of a hub
(``JUPYTERHUB_USER``).  Kernelspecs: ``kg-guarded`` (ipykernel with
``--ext=kernel_guard``, allowed by config), ``kg-shortlived`` (the same,
culled after 2 s idle), ``forged`` (argv and metadata that only look
guarded), ipykernel's built-in ``python3`` (unguarded), and ``kg-launcher``
as ``kernel-guard install-kernelspec`` writes it (the launcher, no allow-list
entry needed).
"""

from __future__ import annotations

import os
import sys

import pytest

from jupyter_harness import GUARDED_EXT_ARGV, JupyterServer, KernelSocket, output_text, wait_until
from kernel_guard.cli.techniques import TECHNIQUES
from kernel_guard.events.schema import validate_event
from kernel_guard.launch.kernelspec import install as install_kernelspec
from kernel_guard.server.guard import user_name
from kernel_guard.server.policy import assess_kernelspec, is_launcher_argv, writable_by

USER = "alice"
NOTEBOOK = "work/analysis.ipynb"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = str(tmp_path_factory.mktemp("jupyter"))
    specs = {
        "kg-guarded": {"argv": GUARDED_EXT_ARGV, "display_name": "Python 3 (guarded)"},
        "kg-shortlived": {"argv": GUARDED_EXT_ARGV, "metadata": {"cull_idle_timeout": 2}},
        "forged": {"argv": [sys.executable, "-m", "kernel_guard.launch", "-f", "{connection_file}"],
                   "metadata": {"kernel_guard": {"version": "0.1.0", "profile": "default", "mode": "enforce"}}},
    }
    srv = JupyterServer(
        root, kernelspecs=specs, env={"JUPYTERHUB_USER": USER},
        config={
            "ServerApp": {"terminals_enabled": True},
            "KernelGuardServer": {"allowed_kernelspecs": ["kg-guarded", "kg-shortlived"],
                                  "downloads": "refuse", "record_contents": True},
            "MappingKernelManager": {"default_kernel_name": "kg-guarded", "cull_idle_timeout": 3600,
                                     "cull_interval": 1},
        },
    )
    install_kernelspec(name="kg-launcher", prefix=root)  # what `kernel-guard install-kernelspec` writes
    os.makedirs(os.path.join(srv.notebooks, "work"))
    with open(os.path.join(srv.notebooks, "work", "data.csv"), "w") as fh:
        fh.write("a,b\n1,2\n")
    srv.start()
    yield srv
    srv.stop()


def start_session(server: JupyterServer, path: str, kernel: str = "kg-guarded") -> dict:
    response = server.post("/api/sessions", {"path": path, "type": "notebook", "kernel": {"name": kernel}})
    assert response.status_code == 201, response.text
    return response.json()


def wait_ready(server: JupyterServer, kernel_id: str) -> None:
    """Wait until the kernel answers a cell, as a front end would."""
    with KernelSocket(server, kernel_id) as ks:
        assert ks.execute("1")["reply"]["status"] == "ok"


@pytest.fixture(scope="module")
def analysis(server: JupyterServer) -> dict:
    """A notebook session on the guarded kernel, with the cells a user would try."""
    session = start_session(server, NOTEBOOK)
    cells = {
        "ordinary": "print(6 * 7)",
        "bang": "!ls",
        "bash": "%%bash\necho hi",
        "os_system": "import os\nos.system('echo hi')",
        "ctypes": "import ctypes\nctypes.CDLL(None).system(b'echo hi')",
    }
    with KernelSocket(server, session["kernel"]["id"]) as ks:
        results = {name: ks.execute(code) for name, code in cells.items()}
    return {"session": session, "results": results, "kernel_id": session["kernel"]["id"]}


# -- cells as the browser shows them ----------------------------------------------

def test_ordinary_cell_runs_on_the_guarded_kernel(analysis: dict) -> None:
    """An ordinary cell prints its output and replies ok."""
    result = analysis["results"]["ordinary"]
    assert result["reply"]["status"] == "ok"
    assert output_text(result) == "42\n"


@pytest.mark.parametrize("cell, error, words", [
    ("bang", "ShellRefused", "`!ls`"),
    ("bash", "ShellRefused", "%%bash"),
    ("os_system", "ExecRefused", "os.system"),
    ("ctypes", "ExecRefused", "system()"),
])
def test_shell_and_exec_routes_show_a_short_refusal(analysis: dict, cell: str, error: str, words: str) -> None:
    """Each escape route ends in an error reply whose output is two short lines, not a traceback wall."""
    result = analysis["results"][cell]
    assert result["reply"]["status"] == "error"
    assert result["reply"]["ename"] == error
    text = output_text(result)
    assert words in text and "kernel_guard refused" in text
    assert len(text.splitlines()) <= 3, text
    assert "Traceback" not in text and "File " not in text


def test_kernel_events_carry_notebook_and_user(server: JupyterServer, analysis: dict) -> None:
    """The kernel's refusals and cell events name the session's notebook, the hub user and the kernel id."""
    kernel_id = analysis["kernel_id"]
    refused = server.wait_for_events(count=4, kernel_guard__kernel_id=kernel_id, event__outcome="failure")
    by_action = {e["event"]["action"]: e for e in refused}
    assert {"shell-refused", "exec-denied", "symbol-denied"} <= set(by_action), sorted(by_action)
    for event in refused:
        assert event["kernel_guard"]["notebook"] == NOTEBOOK
        assert event["user"]["name"] == USER
    cells = server.wait_for_events(count=5, kernel_guard__kernel_id=kernel_id, event__action="cell-executed")
    assert sorted(e["kernel_guard"]["execution_count"] for e in cells) == [1, 2, 3, 4, 5]


def test_kernel_start_is_recorded_by_the_server_with_notebook_and_user(server: JupyterServer, analysis: dict) -> None:
    """jupyter_server's start event becomes a server-layer kernel-start with user, kernel name and notebook."""
    kernel_id = analysis["kernel_id"]
    (event,) = server.wait_for_events(event__action="kernel-start", kernel_guard__kernel_id=kernel_id)
    assert event["kernel_guard"]["layer"] == "server"
    assert event["kernel_guard"]["kernel_name"] == "kg-guarded"
    assert event["kernel_guard"]["notebook"] == NOTEBOOK
    assert event["user"]["name"] == USER
    assert event["source"]["ip"] == "127.0.0.1"
    assert validate_event(event) == []


# -- only guarded kernels start ------------------------------------------------------

def test_unguarded_kernel_start_is_refused_with_403(server: JupyterServer) -> None:
    """POST /api/kernels for python3 answers 403 naming the allowed kernelspecs, starts nothing, and is recorded."""
    before = {k["id"] for k in server.get("/api/kernels").json()}
    response = server.post("/api/kernels", {"name": "python3"})
    assert response.status_code == 403
    message = response.json()["message"]
    assert "'python3' may not start" in message and "kg-guarded" in message and "kg-shortlived" in message
    assert {k["id"] for k in server.get("/api/kernels").json()} == before
    events = server.wait_for_events(event__action="kernel-refused", kernel_guard__kernel_name="python3")
    assert events and events[0]["event"]["outcome"] == "failure"
    assert events[0]["kernel_guard"]["layer"] == "server"
    assert events[0]["user"]["name"] == USER
    assert "kg-guarded" in events[0]["kernel_guard"]["allowed_kernelspecs"]


def test_session_with_unguarded_kernel_is_refused_with_403(server: JupyterServer) -> None:
    """POST /api/sessions with python3 answers 403 (not 500) and the refusal names the notebook."""
    response = server.post("/api/sessions", {"path": "other.ipynb", "type": "notebook",
                                             "kernel": {"name": "python3"}})
    assert response.status_code == 403
    assert "Choose a kernel this server starts" in response.json()["message"]
    assert all(s["path"] != "other.ipynb" for s in server.get("/api/sessions").json())
    (event,) = server.wait_for_events(event__action="kernel-refused", kernel_guard__notebook="other.ipynb")
    assert event["kernel_guard"]["kernel_name"] == "python3"
    assert event["user"]["name"] == USER


def test_switching_a_session_to_an_unguarded_kernel_is_refused(server: JupyterServer) -> None:
    """PATCH /api/sessions/<id> to python3 answers 403 and the session keeps its guarded kernel."""
    session = start_session(server, "switch.ipynb")
    response = server.request("PATCH", f"/api/sessions/{session['id']}", {"kernel": {"name": "python3"}})
    assert response.status_code == 403
    after = server.get(f"/api/sessions/{session['id']}").json()
    assert after["kernel"]["id"] == session["kernel"]["id"]
    assert after["kernel"]["name"] == "kg-guarded"
    assert server.wait_for_events(event__action="kernel-refused", kernel_guard__notebook="switch.ipynb")
    server.request("DELETE", f"/api/sessions/{session['id']}")


def test_kernelspec_that_only_looks_guarded_is_refused(server: JupyterServer) -> None:
    """A kernel.json whose argv names kernel_guard.launch without -I, and whose metadata claims a guard, is refused."""
    response = server.post("/api/kernels", {"name": "forged"})
    assert response.status_code == 403
    assert "without -I" in response.json()["message"] and "install-kernelspec" in response.json()["message"]


def test_kernelspec_listing_shows_only_kernels_that_start(server: JupyterServer) -> None:
    """/api/kernelspecs leaves out the kernelspecs the server would refuse."""
    specs = server.get("/api/kernelspecs").json()
    assert specs["default"] == "kg-guarded"
    assert "kg-guarded" in specs["kernelspecs"]
    assert "python3" not in specs["kernelspecs"] and "forged" not in specs["kernelspecs"]


def test_restart_interrupt_and_shutdown_are_recorded_with_notebook(server: JupyterServer) -> None:
    """Restart, interrupt and shutdown of a session's kernel become server events with notebook and user."""
    session = start_session(server, "lifecycle.ipynb")
    kernel_id = session["kernel"]["id"]
    wait_ready(server, kernel_id)
    assert server.post(f"/api/kernels/{kernel_id}/restart").status_code == 200
    wait_ready(server, kernel_id)
    assert server.post(f"/api/kernels/{kernel_id}/interrupt").status_code == 204
    assert server.request("DELETE", f"/api/sessions/{session['id']}").status_code == 204
    for action in ("kernel-start", "kernel-restart", "kernel-interrupt", "kernel-shutdown"):
        events = server.wait_for_events(event__action=action, kernel_guard__kernel_id=kernel_id)
        assert events, f"no {action} event"
        assert events[0]["kernel_guard"]["notebook"] == "lifecycle.ipynb"
        assert events[0]["user"]["name"] == USER
        assert events[0]["event"]["outcome"] == "success"


def test_idle_culler_shutdown_is_recorded_as_culled(server: JupyterServer) -> None:
    """A kernel the idle culler shuts down yields kernel-culled with its notebook, not a plain shutdown."""
    session = start_session(server, "cull-me.ipynb", kernel="kg-shortlived")
    kernel_id = session["kernel"]["id"]
    assert wait_until(lambda: all(k["id"] != kernel_id for k in server.get("/api/kernels").json()), timeout=30)
    (event,) = server.wait_for_events(event__action="kernel-culled", kernel_guard__kernel_id=kernel_id)
    assert event["kernel_guard"]["notebook"] == "cull-me.ipynb"
    assert event["kernel_guard"]["kernel_name"] == "kg-shortlived"
    assert not server.events(event__action="kernel-shutdown", kernel_guard__kernel_id=kernel_id)


def test_a_client_cannot_forge_the_servers_lifecycle_events(server: JupyterServer, analysis: dict) -> None:
    """Any token holder can POST /api/events: one claiming jupyter_server's kernel_actions schema is
    refused (403, recorded), and no kernel-shutdown appears for the kernel it names."""
    kernel_id = analysis["kernel_id"]
    forged = {"schema_id": "https://events.jupyter.org/jupyter_server/kernel_actions/v1", "version": "1",
              "data": {"action": "shutdown", "kernel_id": kernel_id, "status": "success", "msg": "forged"}}
    response = server.post("/api/events", forged)
    assert response.status_code == 403 and "come from the server itself" in response.text
    (refused,) = server.wait_for_events(event__action="server-event-refused")
    assert refused["event"]["outcome"] == "failure" and refused["user"]["name"] == USER
    assert not server.events(event__action="kernel-shutdown", kernel_guard__kernel_id=kernel_id)
    (start,) = server.events(event__action="kernel-start", kernel_guard__kernel_id=kernel_id)
    assert start["kernel_guard"]["recorded_from"] == "kernel manager"


# -- terminals, downloads, contents -----------------------------------------------------

def test_terminal_creation_is_refused_and_recorded(server: JupyterServer) -> None:
    """With terminals enabled in the server, POST /api/terminals answers 403 and no terminal exists."""
    response = server.post("/api/terminals")
    assert response.status_code == 403
    assert "terminals are disabled" in response.json()["message"]
    assert server.get("/api/terminals").json() == []
    (event,) = server.wait_for_events(event__action="terminal-refused")
    assert event["event"]["outcome"] == "failure" and event["user"]["name"] == USER


def test_file_download_is_refused_by_policy(server: JupyterServer) -> None:
    """downloads='refuse' answers /files/ with 403 and records the path and user."""
    response = server.get("/files/work/data.csv")
    assert response.status_code == 403
    (event,) = server.wait_for_events(event__action="file-download-refused")
    assert event["file"]["path"] == "work/data.csv"
    assert event["user"]["name"] == USER


def test_contents_api_actions_are_recorded_by_policy(server: JupyterServer) -> None:
    """record_contents records contents API reads with the path and the user."""
    assert server.get("/api/contents/work/data.csv").status_code == 200
    events = server.wait_for_events(event__action="contents-get", file__path="work/data.csv")
    assert events and events[0]["user"]["name"] == USER


# -- the start-up report -------------------------------------------------------------

def test_startup_report_names_settings_that_are_off(server: JupyterServer) -> None:
    """The server-hardening event and log line name debug_request (and root) without changing settings."""
    (event,) = server.wait_for_events(event__action="server-hardening")
    off = {item["setting"] for item in event["kernel_guard"]["settings_off"]}
    assert "MappingKernelManager.allowed_message_types" in off
    assert "MappingKernelManager.cull_idle_timeout" not in off  # culling is on in this server
    # kg-guarded runs python -m ipykernel_launcher without -P: it imports from its working folder first
    assert "kernelspec kg-guarded" in off
    assert ("server user" in off) == (os.geteuid() == 0)
    assert event["kernel_guard"]["terminals"] == "refused"
    assert set(event["kernel_guard"]["allowed_kernelspecs"]) >= {"kg-guarded", "kg-shortlived"}
    assert "hardening settings that are off" in server.log()
    assert server.get("/api/kernels").status_code == 200  # nothing was switched off


# -- the launcher, when it is there ------------------------------------------------------

def test_installed_launcher_kernelspec_starts_without_allow_list(server: JupyterServer) -> None:
    """The kernelspec `kernel-guard install-kernelspec` writes starts unlisted; its kernel refuses !ls and fork_exec."""
    session = start_session(server, "launched.ipynb", kernel="kg-launcher")
    kernel_id = session["kernel"]["id"]
    marker = os.path.join(server.root, "fork-exec-marker")
    (fork_exec,) = [t for t in TECHNIQUES if t.name == "_posixsubprocess.fork_exec"]
    with KernelSocket(server, kernel_id) as ks:
        assert output_text(ks.execute("print(1 + 1)")) == "2\n"
        result = ks.execute("!ls")
        assert result["reply"]["ename"] == "ShellRefused"
        assert "kernel_guard refused `!ls`" in output_text(result)
        ks.execute(fork_exec.code.replace("@MARKER@", marker))  # below IPython: audit hook or seccomp
    server.request("DELETE", f"/api/sessions/{session['id']}")
    assert not os.path.exists(marker)
    denied = server.wait_for_events(kernel_guard__kernel_id=kernel_id, event__action="exec-denied")
    assert denied and {e["kernel_guard"]["layer"] for e in denied} <= {"audit", "seccomp", "supervisor"}
    assert all(e["kernel_guard"]["notebook"] == "launched.ipynb" for e in denied)
    (event,) = server.wait_for_events(event__action="kernel-start", kernel_guard__notebook="launched.ipynb")
    assert event["kernel_guard"]["kernel_name"] == "kg-launcher"


# -- batch: nbclient through the guarded kernelspec ------------------------------------------

def test_nbclient_runs_a_notebook_through_the_guarded_kernelspec(server: JupyterServer, tmp_path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A real .ipynb executed by nbclient (the papermill path) keeps its output, shows the refusal, and is recorded."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "kg-guarded", "display_name": "guarded",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("total = sum(range(10))\nprint(total)"),
                nbformat.v4.new_code_cell("!ls"),
                nbformat.v4.new_code_cell("print('after', total)")]
    path = tmp_path / "report.ipynb"
    nbformat.write(nb, str(path))
    monkeypatch.setenv("JUPYTER_PATH", server.share)
    sink = tmp_path / "events.jsonl"
    env = {**server.env, "KERNEL_GUARD_SINKS": f"file://{sink}", "JPY_SESSION_NAME": "report.ipynb",
           "JUPYTERHUB_USER": "batch"}
    executed = nbformat.read(str(path), as_version=4)
    NotebookClient(executed, timeout=60, allow_errors=True, kernel_name="kg-guarded",
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
    outputs = [cell.outputs for cell in executed.cells]
    assert outputs[0][0]["text"] == "45\n"
    assert outputs[1][0]["output_type"] == "error" and outputs[1][0]["ename"] == "ShellRefused"
    assert outputs[2][0]["text"] == "after 45\n"
    from kernel_guard.testing import read_events

    def stopped() -> list:
        events = read_events(str(sink))
        return events if any(e["event"]["action"] == "kernel-stopped" for e in events) else []

    events = wait_until(stopped, timeout=15)
    cells = [e for e in events if e["event"]["action"] == "cell-executed"]
    assert [e["kernel_guard"]["execution_count"] for e in cells] == [1, 2, 3]
    (refused,) = [e for e in events if e["event"]["action"] == "shell-refused"]
    assert refused["kernel_guard"]["notebook"] == "report.ipynb"
    assert refused["user"]["name"] == "batch"


# -- pure logic, in process --------------------------------------------------------------

def test_launcher_argv_needs_an_isolated_start() -> None:
    """Only python -I -m kernel_guard.launch counts as the guarded launcher: -P or PYTHONSAFEPATH alone
    still reads the user's site-packages before the guard."""
    assert is_launcher_argv(["/opt/conda/bin/python3", "-I", "-m", "kernel_guard.launch", "-f", "{connection_file}"])
    assert is_launcher_argv(["python3.11", "-BI", "-m", "kernel_guard.launch"])
    assert not is_launcher_argv(["/opt/conda/bin/python3", "-P", "-m", "kernel_guard.launch", "-f", "{connection_file}"])
    assert not is_launcher_argv(["python", "-m", "kernel_guard.launch", "-f", "{connection_file}"])
    assert not is_launcher_argv(["python", "-P", "-c", "import os", "-m", "kernel_guard.launch"])
    assert not is_launcher_argv(["/home/u/evil", "-P", "-m", "kernel_guard.launch"])
    assert not is_launcher_argv(["python", "-P", "-m", "ipykernel_launcher", "--ext=kernel_guard"])
    assert not is_launcher_argv(["python3", "-m", "kernel_guard.launch"], env={"PYTHONSAFEPATH": "1"})


def test_kernelspec_files_the_server_user_can_change_are_refused(tmp_path) -> None:
    """A kernel.json, folder above it or interpreter the server's user can change is refused; root-owned ones pass."""
    if os.geteuid() != 0:
        pytest.fail("this test changes file ownership and must run as root (as CI does)")
    uid = 65534
    argv = [sys.executable, "-I", "-m", "kernel_guard.launch", "-f", "{connection_file}"]
    admin = tmp_path / "admin" / "kg"
    admin.mkdir(parents=True)
    (admin / "kernel.json").write_text("{}")
    for path in (tmp_path / "admin", admin, admin / "kernel.json"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert assess_kernelspec("kg", argv, {}, str(admin), euid=uid, groups=[]).allowed
    user = tmp_path / "home" / "kg"
    user.mkdir(parents=True)
    (user / "kernel.json").write_text("{}")
    os.chown(user / "kernel.json", uid, uid)
    verdict = assess_kernelspec("kg", argv, {}, str(user), euid=uid, groups=[])
    assert not verdict.allowed and "can be changed by the server's user" in verdict.reason
    os.chmod(admin, 0o777)
    assert writable_by(str(admin), uid, [])
    assert not assess_kernelspec("kg", argv, {}, str(admin), euid=uid, groups=[]).allowed
    os.chmod(admin, 0o755)
    os.chmod(tmp_path / "admin", 0o775)
    os.chown(tmp_path / "admin", 0, 100)
    assert assess_kernelspec("kg", argv, {}, str(admin), euid=uid, groups=[]).allowed
    verdict = assess_kernelspec("kg", argv, {}, str(admin), euid=uid, groups=[100])
    assert not verdict.allowed and str(tmp_path / "admin") in verdict.reason  # a group-writable folder above
    interpreter = tmp_path / "home" / "python3"
    interpreter.write_text("")
    os.chown(interpreter, uid, uid)
    verdict = assess_kernelspec("kg", [str(interpreter), *argv[1:]], {}, str(tmp_path / "admin" / "kg"),
                                euid=uid, groups=[])
    assert not verdict.allowed and verdict.reason.endswith(f"(through {interpreter})")


def test_kernelspec_env_that_changes_what_loads_is_refused() -> None:
    """A guarded argv with PYTHONPATH or LD_PRELOAD in the kernelspec's env is refused."""
    argv = ["python3", "-I", "-m", "kernel_guard.launch"]
    verdict = assess_kernelspec("kg", argv, {"PYTHONPATH": "/home/u/fake"}, None, require_protected=False)
    assert not verdict.allowed and "PYTHONPATH" in verdict.reason
    assert assess_kernelspec("kg", argv, {"PYTHONSAFEPATH": "1", "KERNEL_GUARD_SINKS": "stderr://"}, None,
                             require_protected=False).allowed


def test_user_name_comes_from_a_hub_identity_not_an_anonymous_token_user(monkeypatch) -> None:
    """JupyterHub's identity names the user; jupyter_server's anonymous token user falls back to JUPYTERHUB_USER."""
    from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider, User

    class HubIdentity(IdentityProvider):
        pass

    class Handler:
        def __init__(self, provider):
            self.identity_provider = provider
            self.current_user = User(username="8f2c0d")

    monkeypatch.setenv("JUPYTERHUB_USER", "carol")
    assert user_name(Handler(PasswordIdentityProvider())) == "carol"
    handler = Handler(HubIdentity())
    handler.current_user = User(username="dave")
    assert user_name(handler) == "dave"
    monkeypatch.delenv("JUPYTERHUB_USER")
    assert user_name(Handler(PasswordIdentityProvider())) is None


def test_audit_mode_records_an_unguarded_start_instead_of_refusing() -> None:
    """Under KERNEL_GUARD_MODE=audit the server records kernel-unguarded and lets the start go on; enforce refuses."""
    import logging
    import types

    from kernel_guard.server.guard import KernelRefused, ServerGuard
    from kernel_guard.server.policy import Verdict
    from kernel_guard.server.settings import KernelGuardServer

    emitted: list = []
    app = types.SimpleNamespace(kernel_manager=object(), log=logging.getLogger("test"),
                                kernel_spec_manager=types.SimpleNamespace(find_kernel_specs=dict))
    verdict = Verdict("python3", False, False, "does not run the kernel_guard launcher")
    audit = ServerGuard(app, KernelGuardServer(), types.SimpleNamespace(mode="audit", emit=emitted.append))
    audit.check(verdict, "start", "a.ipynb")
    assert emitted[-1]["event"]["action"] == "kernel-unguarded" and emitted[-1]["event"]["outcome"] == "unknown"
    enforce = ServerGuard(app, KernelGuardServer(), types.SimpleNamespace(mode="enforce", emit=emitted.append))
    with pytest.raises(KernelRefused) as refused:
        enforce.check(verdict, "start", "a.ipynb")
    assert refused.value.status_code == 403 and "No allowed kernelspec is installed" in refused.value.message
    assert emitted[-1]["event"]["action"] == "kernel-refused" and emitted[-1]["event"]["outcome"] == "failure"
    assert emitted[-1]["kernel_guard"]["notebook"] == "a.ipynb"
