"""Shared fixtures: real kernels with kernel_guard, each with its own sink file and home."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from kernel_guard.events.schema import validate_event
from kernel_guard.testing import CellResult, KernelSession, plain_kernel_argv, read_events


class GuardedKernel:
    """A real ipykernel started with ``--ext=kernel_guard`` and a file sink."""

    def __init__(self, root: str, argv: Optional[List[str]] = None, env: Optional[dict] = None,
                 user: Optional[Tuple[int, int]] = None) -> None:
        self.root = root
        self.home = os.path.join(root, "home")
        self.work = os.path.join(root, "work")
        os.makedirs(self.home, exist_ok=True)
        os.makedirs(self.work, exist_ok=True)
        self.sink = os.path.join(root, "events", "events.jsonl")
        self.user = user
        if user is not None:  # the kernel's own folders, as a spawner would give them
            os.makedirs(os.path.dirname(self.sink), exist_ok=True)
            for path in (self.home, self.work, os.path.dirname(self.sink)):
                os.chown(path, *user)
        base_env = {
            "HOME": self.home,
            "IPYTHONDIR": os.path.join(self.home, ".ipython"),
            "JUPYTER_CONFIG_DIR": os.path.join(self.home, ".jupyter"),
            "JUPYTER_DATA_DIR": os.path.join(self.home, ".local", "share", "jupyter"),
            "KERNEL_GUARD_SINKS": f"file://{self.sink}",
            "KERNEL_GUARD_MODE": "enforce",
            "JUPYTERHUB_USER": "alice",
            "JPY_SESSION_NAME": "analysis.ipynb",
            "PYTHONWARNINGS": "ignore",
        }
        base_env.update(env or {})
        self.stderr_path = os.path.join(root, "kernel-stderr.log")
        self.session = KernelSession(argv or plain_kernel_argv("--ext=kernel_guard"), env=base_env, cwd=self.work,
                                     stderr_path=self.stderr_path, user=user)
        self._mark = 0

    def start(self) -> "GuardedKernel":
        self.session.start()
        return self

    def execute(self, code: str, **kwargs: Any) -> CellResult:
        return self.session.execute(code, **kwargs)

    def events(self) -> List[dict]:
        return read_events(self.sink)

    def mark(self) -> None:
        """Remember how many events exist; ``new_events`` returns those after."""
        self._mark = len(self.events())

    def new_events(self, until: Optional[Callable[[List[dict]], bool]] = None, timeout: float = 5.0) -> List[dict]:
        """Events written since ``mark()``; waits until ``until(events)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()[self._mark:]
            if until is None or until(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.05)

    def failures(self, layer: Optional[str] = None, timeout: float = 5.0) -> List[dict]:
        """Failure events (not cell-executed) since ``mark()``, waiting for one."""
        def pick(events: List[dict]) -> List[dict]:
            return [e for e in events if e["event"]["outcome"] == "failure"
                    and e["event"]["action"] != "cell-executed"
                    and (layer is None or e["kernel_guard"]["layer"] == layer)]
        return pick(self.new_events(until=lambda evs: bool(pick(evs)), timeout=timeout))

    def stderr(self) -> str:
        """What the kernel wrote to its stderr (the Jupyter server's log)."""
        with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def alive(self) -> bool:
        return self.session.is_alive() and self.execute("1 + 1").status == "ok"

    def shutdown(self) -> None:
        self.session.shutdown()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedKernel]:
    """One guarded kernel (enforce mode) shared by a test module."""
    kernel = GuardedKernel(str(tmp_path_factory.mktemp("guarded"))).start()
    yield kernel
    kernel.shutdown()


@pytest.fixture
def make_kernel(tmp_path: Any) -> Iterator[Callable[..., GuardedKernel]]:
    """Factory for kernels with custom argv/env, shut down after the test."""
    started: List[GuardedKernel] = []

    def factory(argv: Optional[List[str]] = None, env: Optional[dict] = None, start: bool = True) -> GuardedKernel:
        kernel = GuardedKernel(str(tmp_path / f"k{len(started)}"), argv=argv, env=env)
        started.append(kernel)
        return kernel.start() if start else kernel

    yield factory
    for kernel in started:
        kernel.shutdown()


def assert_short_refusal(result: CellResult, *needles: str) -> None:
    """The cell failed with kernel_guard's short message (at most three lines)."""
    assert result.status == "error", f"expected a refusal, got {result.reply} / {result.stdout!r}"
    text = result.error_text
    assert "kernel_guard refused" in text, text
    assert len(text.strip().splitlines()) <= 3, f"message too long:\n{text}"
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


def assert_schema_valid(events: List[dict]) -> None:
    for event in events:
        assert validate_event(event) == [], event


# A skip is fine on a developer's machine without some platform feature; CI
# runs where seccomp, user notification and root are all present, so a skip
# there would hide a missing component: fail the run instead.
_SKIPPED: List[str] = []


def pytest_runtest_logreport(report: Any) -> None:
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if os.environ.get("CI") and _SKIPPED:
        print(f"\nCI: {len(_SKIPPED)} tests were skipped; every component must be tested here:")
        for nodeid in _SKIPPED:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    """A folder uid 1000 can reach, for the module's kernels (removed after it)."""
    from launcher_support import unprivileged_root

    with unprivileged_root() as folder:
        yield folder


@pytest.fixture(scope="module")
def spec(root: str) -> Iterator[str]:
    """The guarded kernelspec (default profile) on JUPYTER_PATH; yields its prefix."""
    from launcher_support import specs_on_path

    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)) as prefix:
        yield prefix
