"""Helpers for the launcher tests: kernels started from a kernelspec installed in a temp prefix."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import psutil
import pytest
from conftest import GuardedKernel

from kernel_guard import cli
from kernel_guard.testing import KernelSession


@contextlib.contextmanager
def specs_on_path(prefix: str, *specs: Tuple[str, ...]) -> Iterator[str]:
    """Install guarded kernelspecs (``(name, *extra_args)`` each) into ``prefix``; JUPYTER_PATH points there."""
    for name, *extra in specs:
        install_spec(prefix, name, *extra)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.path.join(prefix, "share", "jupyter"))
        yield prefix


def install_spec(prefix: str, name: str = "guarded", *extra: str) -> Dict[str, Any]:
    """Install a guarded kernelspec into ``prefix`` with the CLI; return its kernel.json."""
    assert cli.main(["install-kernelspec", "--name", name, "--prefix", prefix, *extra]) == 0
    with open(os.path.join(prefix, "share", "jupyter", "kernels", name, "kernel.json")) as fh:
        return json.load(fh)


class LaunchedKernel(GuardedKernel):
    """A kernel started by name from an installed kernelspec (JUPYTER_PATH must point at it)."""

    def __init__(self, root: str, kernel_name: str, env: Optional[dict] = None,
                 user: Optional[Tuple[int, int]] = None, startup_timeout: float = 180) -> None:
        super().__init__(root, env=env, user=user)
        placeholder = self.session
        if placeholder._tmp is not None:
            placeholder._tmp.cleanup()
        # a launcher kernel starts in seconds, but a 2-core CI machine under the full suite's
        # load has taken over 60: the deadline is for a kernel that will never start
        self.session = KernelSession(kernel_name=kernel_name, env=placeholder.env, cwd=self.work,
                                     stderr_path=self.stderr_path, user=user, startup_timeout=startup_timeout)

    def value(self, expression: str) -> Any:
        """Evaluate ``expression`` in the kernel and return it (via repr/eval of its stdout)."""
        result = self.execute(f"print(repr({expression}))")
        assert result.status == "ok", result.error_text
        return eval(result.stdout.strip())  # noqa: S307 (our own kernel's output)

    def events_until_stopped(self, timeout: float = 20) -> list:
        """Events since mark(), once the supervisor has recorded its stop (or ``timeout``)."""
        return self.new_events(until=lambda evs: any(e["event"]["action"] == "supervisor-stopped" for e in evs),
                               timeout=timeout)

    @property
    def pid(self) -> int:
        return int(self.value("__import__('os').getpid()"))

    def supervisor_pid(self) -> int:
        """The supervisor: the kernel's child running kernel_guard.launch.supervisor."""
        for child in psutil.Process(self.pid).children():
            if "kernel_guard.launch.supervisor" in child.cmdline():
                return child.pid
        raise AssertionError("no supervisor child")

    def wait_event(self, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        """The first event since mark() that satisfies ``predicate``."""
        events = self.new_events(until=lambda evs: any(predicate(e) for e in evs), timeout=timeout)
        found = [e for e in events if predicate(e)]
        assert found, f"no matching event among {[e['event']['action'] for e in events]}"
        return found[0]


#: the unprivileged user kernels run as under Zero to JupyterHub (jovyan: uid 1000, gid 100)
NOTEBOOK_USER = (1000, 100)


@contextlib.contextmanager
def unprivileged_root() -> Iterator[str]:
    """A folder the notebook user can reach (pytest's own temp folders are root-only).

    Fails, rather than skips, where this process cannot start kernels as that user
    or that user cannot run this interpreter: such a test run would prove little.
    """
    if os.geteuid() != 0:
        pytest.fail("these tests start kernels as uid 1000 and must run as root (CI does)")
    probe = subprocess.run([sys.executable, "-c", "import kernel_guard"], user=NOTEBOOK_USER[0],
                           group=NOTEBOOK_USER[1], extra_groups=[], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"uid {NOTEBOOK_USER[0]} cannot run {sys.executable} with kernel_guard: "
                    f"{probe.stderr.strip()[-300:]} (create the venv from an interpreter every user can "
                    "run, as scripts/bootstrap does)")
    root = tempfile.mkdtemp(prefix="kernel-guard-uid1000-")
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def recording_kernel(root: str, name: str) -> Iterator[LaunchedKernel]:
    """A launcher kernel as uid 1000 whose audit hook only records (the OS layers alone
    decide), for a module-scoped fixture to yield."""
    started = LaunchedKernel(os.path.join(root, name), "guarded", env={"KERNEL_GUARD_MODE": "audit"},
                             user=NOTEBOOK_USER).start()
    yield started
    started.shutdown()


def seccomp_denial(marker: str) -> Callable[[dict], bool]:
    """Predicate: the supervisor's exec-denied event whose argv carries ``marker``."""

    def match(event: dict) -> bool:
        return (event["event"]["action"] == "exec-denied" and event["kernel_guard"]["layer"] == "seccomp"
                and marker in " ".join(event.get("process", {}).get("args", [])))

    return match


def record_is_whole(kernel: LaunchedKernel) -> None:
    """After a clean shutdown, every stream of the kernel's record verifies whole."""
    from kernel_guard.cli.verify import verify

    if kernel.session.is_alive():
        kernel.shutdown()
    kernel.events_until_stopped()
    reports, duplicates, _ = verify(kernel.events())
    problems = {name: r.problems() for name, r in reports.items() if r.problems()}
    assert not duplicates and not problems, problems


def wait_gone(pids: List[int], timeout: float = 15.0) -> List[int]:
    """Pids still alive (not zombies) after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.1)
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
