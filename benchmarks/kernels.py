"""The configurations compared, and a lean jupyter_client driver for timing them.

``plain``      an ordinary ipykernel (``python -m ipykernel_launcher``);
``extension``  the same kernel with ``--ext=kernel_guard`` (IPython and audit layers);
``launcher``   ``python -m kernel_guard.launch`` as ``kernel-guard install-kernelspec``
               writes it (extension + seccomp filter + exec supervisor).

Every kernel gets the same environment: a private home and IPython directory,
a file sink and a spool directory under one temporary root.  The driver talks
to the kernel's sockets directly (no polling loops), so what it times is the
kernel's own latency plus one ZeroMQ round trip, the same for every configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import zmq

from .stats import balanced

CONFIGS = ("plain", "extension", "launcher")
GUARDED = ("extension", "launcher")


def kernel_command(config: str) -> Tuple[List[str], Dict[str, str]]:
    """(kernel.json argv, extra environment) of a configuration (pure)."""
    plain = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    if config == "plain":
        return plain, {}
    if config == "extension":
        return [*plain, "--ext=kernel_guard"], {}
    if config == "launcher":
        return [sys.executable, "-I", "-m", "kernel_guard.launch", "-f", "{connection_file}"], {}
    raise ValueError(f"unknown configuration {config!r}: one of {', '.join(CONFIGS)}")


class Workspace:
    """A temporary root with a home, a temporary folder, a sink file and a spool for
    every kernel of a run."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="kernel-guard-bench-")
        self.root = self._tmp.name
        self.home = os.path.join(self.root, "home")
        self.sink = os.path.join(self.root, "events.jsonl")
        # the kernels' temporary files (the workload's, loky's, the private IPython
        # folder of a launcher kernel stopped by a kill) go with the workspace: beneath
        # /tmp, as before, so on the same file system and inside the launcher's domain
        self.tmp = os.path.join(self.root, "tmp")
        os.makedirs(self.home)
        os.makedirs(self.tmp)
        self.specs = os.path.join(self.root, "kernels")
        for config in CONFIGS:
            argv, _ = kernel_command(config)
            spec_dir = os.path.join(self.specs, f"bench-{config}")
            os.makedirs(spec_dir)
            with open(os.path.join(spec_dir, "kernel.json"), "w") as fh:
                json.dump({"argv": argv, "display_name": f"bench {config}", "language": "python"}, fh)

    def env(self, config: str) -> Dict[str, str]:
        _, extra = kernel_command(config)
        return {
            **os.environ,
            "HOME": self.home,
            "IPYTHONDIR": os.path.join(self.home, ".ipython"),
            "JUPYTER_CONFIG_DIR": os.path.join(self.home, ".jupyter"),
            "JUPYTER_DATA_DIR": os.path.join(self.home, ".local", "share", "jupyter"),
            "XDG_STATE_HOME": os.path.join(self.root, "state"),
            "TMPDIR": self.tmp,
            "KERNEL_GUARD_SINKS": f"file://{self.sink}",
            "KERNEL_GUARD_MODE": "enforce",
            "PYTHONWARNINGS": "ignore",
            # a random hash seed for every kernel, as in use: the launcher starts
            # isolated (-I), as installed, and so ignores PYTHON* variables; a fixed
            # seed for the others alone would compare one draw of dict and set layouts
            # with the launcher's many (measured: plain kernels with seed 0 and random
            # seeds, nine fresh pairs each, differ by under 2%, less than the spread)
            "PYTHONHASHSEED": "random",
            # debugpy's start-up warning about frozen modules, not a difference between configurations
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            **extra,
        }

    def cleanup(self) -> None:
        self._tmp.cleanup()


class CellError(RuntimeError):
    """A benchmark cell raised: the message carries the kernel's traceback."""


class BenchKernel:
    """One kernel of one configuration, started and driven through jupyter_client."""

    def __init__(self, config: str, workspace: Workspace, extra_env: Optional[Dict[str, str]] = None) -> None:
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        self.config = config
        self.workspace = workspace
        self.extra_env = dict(extra_env or {})
        ksm = KernelSpecManager(kernel_dirs=[workspace.specs])
        self.manager = KernelManager(kernel_name=f"bench-{config}", kernel_spec_manager=ksm)
        runtime_dir = os.path.join(workspace.root, "runtime")
        os.makedirs(runtime_dir, exist_ok=True)
        # named as jupyter_server names it, so the guard knows its kernel id
        self.manager.connection_file = os.path.join(runtime_dir, f"kernel-{uuid.uuid4()}.json")
        self.client: Any = None
        self._stderr = open(os.path.join(workspace.root, f"{config}.stderr"), "ab")

    # -- life ----------------------------------------------------------------
    def start(self, timeout: float = 60.0, ready: bool = True) -> float:
        """Start the kernel; seconds from the start request to the first kernel_info reply.

        ``ready``: then also wait until IOPub delivers, as before running cells.
        """
        context = zmq.Context()
        # a client that connects before the kernel listens retries every 100 ms by
        # default, which would round start-up times; retry every 2 ms instead
        context.setsockopt(zmq.RECONNECT_IVL, 2)
        started = time.perf_counter()
        self.manager.start_kernel(env={**self.workspace.env(self.config), **self.extra_env}, stderr=self._stderr)
        self.client = self.manager.client(context=context)
        self.client.start_channels()
        self.client.kernel_info()
        deadline = started + timeout
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not self.manager.is_alive():
                raise RuntimeError(f"the {self.config} kernel did not answer kernel_info within {timeout}s "
                                   f"(see {self._stderr.name})")
            if self.client.shell_channel.socket.poll(int(min(remaining, 0.5) * 1000)):
                msg = self.client.shell_channel.get_msg(timeout=0)
                if msg["msg_type"] == "kernel_info_reply":
                    elapsed = time.perf_counter() - started
                    break
        if ready:
            self._drain_iopub_until_idle(timeout=10.0)
        return elapsed

    def _drain_iopub_until_idle(self, timeout: float) -> None:
        """Wait until IOPub delivers (the kernel's start-up status messages)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if not self.client.iopub_channel.socket.poll(50):
                if self._probe_iopub():
                    return
                continue
            self.client.iopub_channel.get_msg(timeout=0)

    def _probe_iopub(self) -> bool:
        """Run an empty silent cell and see its status on IOPub (IOPub is connected)."""
        msg_id = self.client.execute("", silent=True, store_history=False)
        deadline = time.perf_counter() + 2.0
        while time.perf_counter() < deadline:
            if self.client.iopub_channel.socket.poll(100):
                msg = self.client.iopub_channel.get_msg(timeout=0)
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status":
                    self._wait_reply(msg_id, 10.0)
                    return True
        self._wait_reply(msg_id, 10.0)
        return False

    @property
    def pid(self) -> int:
        return int(self.manager.provisioner.process.pid)

    def shutdown(self) -> None:
        """Stop at once: the benchmark measures nothing at shutdown."""
        try:
            if self.client is not None:
                self.client.stop_channels()
                self.client.context.term()  # its own, made in start()
            if self.manager.has_kernel:
                self.manager.shutdown_kernel(now=True)
        finally:
            self._stderr.close()

    # -- cells -----------------------------------------------------------------
    def execute(self, code: str, user_expressions: Optional[Dict[str, str]] = None,
                timeout: float = 300.0) -> Tuple[float, Dict[str, Any]]:
        """Run a cell as a notebook does; (seconds to reply and idle, reply content).

        Raises :class:`CellError` when the cell fails.
        """
        started = time.perf_counter()
        msg_id = self.client.execute(code, user_expressions=user_expressions or {}, allow_stdin=False)
        reply: Optional[Dict[str, Any]] = None
        idle = False
        deadline = started + timeout
        shell, iopub = self.client.shell_channel, self.client.iopub_channel
        poller = zmq.Poller()
        poller.register(shell.socket, zmq.POLLIN)
        poller.register(iopub.socket, zmq.POLLIN)
        stderr = []
        while reply is None or not idle:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"no reply within {timeout}s from the {self.config} kernel for {code[:60]!r}")
            ready = dict(poller.poll(int(remaining * 1000)))
            if shell.socket in ready:
                msg = shell.get_msg(timeout=0)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg["content"]
            if iopub.socket in ready:
                msg = iopub.get_msg(timeout=0)
                if msg["parent_header"].get("msg_id") == msg_id:
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        idle = True
                    elif msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
                        stderr.append(msg["content"]["text"])
        elapsed = time.perf_counter() - started
        if reply.get("status") != "ok":
            trace = "\n".join(reply.get("traceback", [])) or reply.get("evalue", "")
            raise CellError(f"cell failed in the {self.config} kernel: {reply.get('ename')}: {trace}")
        return elapsed, reply

    def value(self, code: str, expression: str, timeout: float = 300.0) -> Any:
        """Run ``code``, then return ``expression`` evaluated in the kernel (a literal)."""
        import ast

        _, reply = self.execute(code, user_expressions={"value": expression}, timeout=timeout)
        result = reply["user_expressions"]["value"]
        if result.get("status") != "ok":
            raise CellError(f"{expression!r} failed in the {self.config} kernel: {result.get('evalue')}")
        return ast.literal_eval(result["data"]["text/plain"])

    def _wait_reply(self, msg_id: str, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.client.shell_channel.socket.poll(100):
                if self.client.shell_channel.get_msg(timeout=0)["parent_header"].get("msg_id") == msg_id:
                    return


def start_all(workspace: Workspace, configs: Tuple[str, ...] = CONFIGS,
              extra_env: Optional[Dict[str, str]] = None) -> Dict[str, BenchKernel]:
    """One running kernel per configuration (stopped again if one fails to start);
    ``extra_env`` is added to each one's environment."""
    kernels: Dict[str, BenchKernel] = {}
    try:
        for config in configs:
            kernel = BenchKernel(config, workspace, extra_env)
            kernel.start()
            kernels[config] = kernel
    except BaseException:
        stop_all(kernels)
        raise
    return kernels


def stop_all(kernels: Dict[str, BenchKernel]) -> None:
    for kernel in kernels.values():
        try:
            kernel.shutdown()
        except Exception:
            pass


@contextlib.contextmanager
def fresh(workspace: Workspace, index: int, extra_env: Optional[Dict[str, str]] = None,
          configs: Tuple[str, ...] = CONFIGS) -> Iterator[Dict[str, BenchKernel]]:
    """New kernels for repetition ``index``, started in its turn order (``stats.balanced``)
    and stopped when the block ends.  Two identical kernels differ in speed by
    several percent for their whole life (their memory layout), so a scenario that
    timed one kernel per configuration would measure that draw, not the guard: the
    median over fresh kernels averages it out."""
    kernels = start_all(workspace, tuple(balanced(configs, index)), extra_env)
    try:
        yield kernels
    finally:
        stop_all(kernels)
