"""The ConfigMap route holds, as deployed from examples/helm/configmap-values.yaml, as uid 1000.

The kernelspec is the one the example mounts (its interpreter path swapped for this test
run's), started with the example's pod environment.  A cell tries cffi and a raw system call
to start a program, then plants code where a kernel might read it at its next start (the
IPython profile's config file and startup folder, a user-site .pth file, PYTHONSTARTUP); a
new kernel then starts.  Nothing planted runs, every attempt is refused and recorded, and
the new kernel is guarded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from launcher_support import NOTEBOOK_USER, LaunchedKernel

REPO = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((REPO / "examples" / "helm" / "configmap-values.yaml").read_text())


@pytest.fixture(scope="module")
def spec_path(root: str) -> Iterator[str]:
    """The example's kernelspec in a prefix on JUPYTER_PATH (this run's interpreter for /opt/conda's)."""
    spec = json.loads(json.dumps(VALUES["singleuser"]["extraFiles"]["kernel-guard-kernelspec"]["data"]))
    assert spec["argv"][0] == "/opt/conda/bin/python"
    spec["argv"][0] = sys.executable
    folder = os.path.join(root, "prefix", "share", "jupyter", "kernels", "python3-guarded")
    os.makedirs(folder)
    with open(os.path.join(folder, "kernel.json"), "w") as fh:
        json.dump(spec, fh)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.path.join(root, "prefix", "share", "jupyter"))
        yield folder


def _pod_env() -> dict[str, str]:
    """The example's extraEnv, less the folders this machine does not have, with the record in a
    file the test reads instead of the pod log."""
    env = {k: str(v) for k, v in VALUES["singleuser"]["extraEnv"].items()}
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                 "JUPYTERLAB_WORKSPACES_DIR", "KERNEL_GUARD_SINKS"):
        env.pop(name)
    return env


def _kernel(root: str, name: str, **env: str) -> LaunchedKernel:
    return LaunchedKernel(os.path.join(root, name), "python3-guarded", env={**_pod_env(), **env},
                          user=NOTEBOOK_USER).start()


CFFI = """
import cffi
ffi = cffi.FFI()
ffi.cdef("int system(const char *);")
status = ffi.dlopen(None).system(b"touch cffi-ran")
print(status != 0, __import__("os").path.exists("cffi-ran"))
"""

RAW = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    argv = (ctypes.c_char_p * 4)(b"/bin/sh", b"-c", b"touch raw-ran", None)
    libc.syscall(59, b"/bin/sh", argv, None)  # execve, with no libc wrapper or audit event
    os._exit(ctypes.get_errno())
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), os.path.exists("raw-ran"))
"""

PLANT = r"""
import os, site, ctypes
home = os.path.expanduser("~")
marker = os.path.join(home, "planted-ran")
libc = ctypes.CDLL(None, use_errno=True)
written = []
def plant(path, text, name):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    code = f"open({marker!r}, 'a').write({name!r} + ' ran; ')\n"
    if path.endswith(".pth"):
        code = "import os; " + code
    # through libc: the audit layer never sees the open
    fd = libc.open(path.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if fd >= 0:
        os.write(fd, (code + text).encode())
        os.close(fd)
        written.append(path)
profile = os.path.join(home, ".ipython", "profile_default")
plant(os.path.join(profile, "ipython_kernel_config.py"), "c = get_config()\nc.InteractiveShellApp.extensions = []\n",
      "profile kernel config")
plant(os.path.join(profile, "ipython_config.py"), "", "profile config")
plant(os.path.join(profile, "startup", "00-plant.py"), "", "profile startup file")
plant(os.path.join(site.getusersitepackages(), "plant.pth"), "", "user-site .pth")
plant(os.path.join(home, "startup.py"), "", "PYTHONSTARTUP")
print(len(written))
"""


def test_the_configmap_kernelspec_is_the_launcher() -> None:
    """The mounted kernelspec runs the launcher, isolated, as install-kernelspec writes it."""
    from kernel_guard.launch.kernelspec import launcher_argv

    spec = VALUES["singleuser"]["extraFiles"]["kernel-guard-kernelspec"]["data"]
    assert spec["argv"] == launcher_argv("default", executable="/opt/conda/bin/python")
    assert spec["interrupt_mode"] == "signal" and spec["metadata"]["debugger"] is False


def test_cffi_and_a_raw_exec_start_nothing_and_are_recorded(spec_path: str, root: str) -> None:
    """cffi's system() and a raw execve from a forked child: no program runs; the supervisor records both."""
    kernel = _kernel(root, "escape", KERNEL_GUARD_MODE="audit")  # the OS layers alone
    try:
        kernel.mark()
        result = kernel.execute(CFFI)
        assert result.status == "ok" and result.stdout.split() == ["True", "False"], result.error_text
        result = kernel.execute(RAW)
        assert result.status == "ok" and result.stdout.split() == ["1", "False"], result.error_text
        denied = [e for e in kernel.new_events(
            until=lambda evs: sum(e["event"]["action"] == "exec-denied" for e in evs) >= 2, timeout=15)
            if e["event"]["action"] == "exec-denied"]
        commands = [" ".join(e["process"].get("args", [])) for e in denied]
        assert any("touch cffi-ran" in c for c in commands) and any("touch raw-ran" in c for c in commands), denied
        assert all(e["kernel_guard"]["layer"] == "seccomp" for e in denied)
    finally:
        kernel.shutdown()


def test_nothing_a_cell_plants_runs_in_the_next_kernel(spec_path: str, root: str) -> None:
    """Profile config files, a startup file, a user-site .pth and PYTHONSTARTUP, planted through libc:
    the next kernel runs none of them, still has the guard, and says which folders it did not read."""
    first = _kernel(root, "planting")
    try:
        result = first.execute(PLANT)
        assert result.status == "ok", result.error_text
        assert int(result.stdout) == 5  # the home is writable: each plant was written
    finally:
        first.shutdown()
    home = first.home
    marker = os.path.join(home, "planted-ran")
    second = LaunchedKernel(os.path.join(root, "planting"), "python3-guarded",
                            env={**_pod_env(), "PYTHONSTARTUP": os.path.join(home, "startup.py")},
                            user=NOTEBOOK_USER).start()
    try:
        assert not os.path.exists(marker), Path(marker).read_text()
        refused = second.execute("!id")
        assert refused.status == "error" and "kernel_guard" in refused.error_text
        loaded = second.value("'kernel_guard' in get_ipython().extension_manager.loaded")
        assert loaded is True
    finally:
        second.shutdown()
    assert not os.path.exists(marker), Path(marker).read_text()
    started = [e for e in second.events() if e["event"]["action"] == "kernel-started"]
    assert started and started[-1]["kernel_guard"]["layers"].get("seccomp") == "enforce"
