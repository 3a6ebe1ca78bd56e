"""Helpers for testing code that uses kernel_guard, and for checking a deployment.

- :class:`MemorySink` keeps events in a list (like structlog's ``capture_logs``).
- :class:`KernelSession` starts a real kernel through jupyter_client from a
  kernelspec or an argv, runs cells and collects what a front end would show.
- :func:`read_events` reads a JSON-lines sink file.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

from .events.schema import Event
from .events.sinks import Sink

__all__ = ["CellResult", "KernelSession", "MemorySink", "read_events"]


class MemorySink(Sink):
    """Collect events in memory."""

    url = "memory://"

    def __init__(self) -> None:
        self.events: List[Event] = []

    def emit(self, events: List[Event]) -> None:
        self.events.extend(events)


def read_events(path: str) -> List[Event]:
    """All events in a JSON-lines file (empty if it does not exist yet)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


@dataclass
class CellResult:
    """What a front end receives for one execute request."""

    reply: dict
    stdout: str = ""
    stderr: str = ""
    error: Optional[dict] = None
    outputs: List[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.reply.get("status", "")

    @property
    def error_text(self) -> str:
        """The traceback lines as the notebook shows them, without ANSI colours."""
        import re

        if not self.error:
            return ""
        return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(self.error.get("traceback", [])))


def plain_kernel_argv(*extra: str) -> List[str]:
    """argv of an ordinary ipykernel with extra arguments (``--ext=kernel_guard``)."""
    return [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", *extra]


def _manager_class(user: Optional[tuple[int, int]]) -> type:
    """jupyter_client's KernelManager; with ``user`` (uid, gid), one whose kernel runs as
    that user and can read its connection file (written by this process, mode 0600)."""
    from jupyter_client import KernelManager

    if user is None:
        return KernelManager

    class UserKernelManager(KernelManager):
        async def _async_launch_kernel(self, kernel_cmd: List[str], **kw: Any) -> None:
            os.chown(self.connection_file, *user)
            await super()._async_launch_kernel(kernel_cmd, **kw)

    return UserKernelManager


class KernelSession:
    """A real kernel started through jupyter_client.

    Either ``argv`` (a kernel.json argv with ``{connection_file}``) or
    ``kernel_name`` (an installed kernelspec).  ``env`` is added to the
    kernel's environment.  ``user`` = (uid, gid) starts the kernel as that
    unprivileged user, as JupyterHub's spawners do (needs root here); its
    connection file is then written into ``cwd``, which that user must own.
    """

    def __init__(self, argv: Optional[List[str]] = None, kernel_name: Optional[str] = None,
                 env: Optional[dict] = None, cwd: Optional[str] = None, startup_timeout: float = 60,
                 stderr_path: Optional[str] = None, user: Optional[tuple[int, int]] = None) -> None:
        from jupyter_client.kernelspec import KernelSpecManager

        KernelManager = _manager_class(user)

        self._tmp = None
        if argv is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kernel-guard-spec-")
            spec_dir = os.path.join(self._tmp.name, "kernels", "kg-test")
            os.makedirs(spec_dir)
            with open(os.path.join(spec_dir, "kernel.json"), "w") as fh:
                json.dump({"argv": argv, "display_name": "kernel_guard test", "language": "python"}, fh)
            ksm = KernelSpecManager(kernel_dirs=[os.path.join(self._tmp.name, "kernels")])
            kernel_name = "kg-test"
            self.manager = KernelManager(kernel_name=kernel_name, kernel_spec_manager=ksm)
        else:
            self.manager = KernelManager(kernel_name=kernel_name or "python3")
        # name the connection file as jupyter_server does, so the kernel knows its id
        import uuid

        from jupyter_core.paths import jupyter_runtime_dir

        runtime_dir = jupyter_runtime_dir() if user is None else (cwd or tempfile.gettempdir())
        try:
            os.makedirs(runtime_dir, exist_ok=True)
            usable = os.access(runtime_dir, os.W_OK)
        except OSError:
            usable = False
        if not usable:  # a read-only Jupyter data folder (as the image sets it) holds no runtime folder
            self._runtime = tempfile.TemporaryDirectory(prefix="kernel-guard-runtime-")
            runtime_dir = self._runtime.name
        self.manager.connection_file = os.path.join(runtime_dir, f"kernel-{uuid.uuid4()}.json")
        self.user = user
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.stderr_path = stderr_path
        self._stderr_file: Any = None
        self.startup_timeout = startup_timeout
        self.client: Any = None

    def __enter__(self) -> "KernelSession":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def start(self) -> None:
        """Start the kernel and wait for its first kernel_info reply."""
        kwargs: dict[str, Any] = {"env": self.env}
        if self.user is not None:
            kwargs.update(user=self.user[0], group=self.user[1], extra_groups=[])
        if self.cwd:
            kwargs["cwd"] = self.cwd
        if self.stderr_path:
            self._stderr_file = open(self.stderr_path, "ab")
            kwargs["stderr"] = self._stderr_file
        self.manager.start_kernel(**kwargs)
        self.client = self.manager.client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=self.startup_timeout)
        except RuntimeError:
            self.shutdown()
            raise

    @property
    def kernel_id(self) -> Optional[str]:
        """The id jupyter_client put in the connection file name (if any)."""
        from .events.schema import KernelContext

        return KernelContext.kernel_id_from_connection_file(self.manager.connection_file)

    def execute(self, code: str, timeout: float = 30, silent: bool = False,
                user_expressions: Optional[dict] = None, cell_id: Optional[str] = None,
                interrupt_after: Optional[float] = None) -> CellResult:
        """Run ``code`` and collect the reply and IOPub output for it.

        ``interrupt_after`` interrupts the kernel (as a front end's stop
        button does) that many seconds after sending the request.
        """
        content = {"code": code, "silent": silent, "store_history": not silent,
                   "user_expressions": user_expressions or {}, "allow_stdin": False, "stop_on_error": False}
        msg = self.client.session.msg("execute_request", content)
        if cell_id:
            msg["metadata"]["cellId"] = cell_id
        self.client.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        result = CellResult(reply={})
        sent = time.monotonic()
        deadline = sent + timeout
        idle = False
        while not idle or not result.reply:
            if interrupt_after is not None and time.monotonic() - sent >= interrupt_after:
                interrupt_after = None
                self.interrupt()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply within {timeout}s for {code[:60]!r}")
            if not idle:
                idle = self._collect_iopub(msg_id, result, remaining)
            if not result.reply:
                try:
                    reply = self.client.get_shell_msg(timeout=0.05 if not idle else min(remaining, 0.25))
                except queue.Empty:
                    continue
                if reply["parent_header"].get("msg_id") == msg_id:
                    result.reply = reply["content"]
        return result

    def _collect_iopub(self, msg_id: str, result: CellResult, timeout: float) -> bool:
        """Drain IOPub for ``msg_id``; True once the kernel went idle for it."""
        try:
            msg = self.client.get_iopub_msg(timeout=min(timeout, 0.05))
        except queue.Empty:
            return False
        if msg["parent_header"].get("msg_id") != msg_id:
            return False
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            if content["name"] == "stdout":
                result.stdout += content["text"]
            else:
                result.stderr += content["text"]
        elif kind == "error":
            result.error = content
        elif kind in ("execute_result", "display_data"):
            result.outputs.append(content)
        elif kind == "status" and content.get("execution_state") == "idle":
            return True
        return False

    def is_alive(self) -> bool:
        return bool(self.manager.is_alive())

    def interrupt(self) -> None:
        self.manager.interrupt_kernel()

    def shutdown(self) -> None:
        """Ask for a clean shutdown (then jupyter_client escalates as usual)."""
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=False)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
