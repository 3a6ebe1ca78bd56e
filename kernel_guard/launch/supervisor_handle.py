"""The kernel's handle on its exec supervisor: start it, hand it the listener, watch it.

The supervisor runs in a process of its own (:mod:`.supervisor`); this module
is what the kernel's side keeps of it: the process, the control socket (a
``SOCK_SEQPACKET`` pair; the handshake words are ``ready``, then
``listening`` once it holds the listener), its thread and witness pids (the
filter's rules protect those), the socket the kernel's events go to the
custodian on, and two watching threads that report its loss or a stall.
The kernel never holds the listener: :meth:`SupervisorHandle.send_listener`
closes its copy once it is passed.

See docs/architecture.md for how the two sides fit.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

__all__ = ["SupervisorHandle", "current", "spawn", "start", "supervisor_argv", "wait_ready"]


class SupervisorHandle:
    """The kernel's view of its supervisor: pid, control socket, liveness."""

    def __init__(self, proc: subprocess.Popen, control: socket.socket, mode: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.control = control
        self.mode = mode
        self.exit_status: Optional[int] = None
        self.lost_reason: Optional[str] = None
        #: the supervisor's thread ids at start (a signal to any of them reaches it)
        self.tids: list[int] = [proc.pid]
        #: the witness that records the supervisor's loss (0: none)
        self.witness = 0
        #: the kernel's end of the socket its events go to the custodian on
        self.events: Optional[socket.socket] = None
        self._lock = threading.Lock()

    def expect(self, word: bytes, timeout: float) -> bytes:
        """Wait for a handshake word from the supervisor; return what follows it."""
        ready, _, _ = select.select([self.control], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the supervisor (pid {self.pid}) did not answer within {timeout:.0f}s")
        data = self.control.recv(4096)
        said, _, rest = data.partition(b" ")
        if said != word:
            text = data.decode("utf-8", "replace") if data else "nothing (it exited)"
            raise RuntimeError(f"the supervisor (pid {self.pid}) said {text!r}, expected {word.decode()!r}")
        return rest

    def send_listener(self, fd: int, allowed: Sequence[str] = (), timeout: float = 10.0) -> None:
        """Pass the listener over SCM_RIGHTS, with the programs the kernel's Landlock
        domain lets run, then close the kernel's copy."""
        try:
            socket.send_fds(self.control, [json.dumps({"allowed": list(allowed)}).encode()], [fd])
        finally:
            os.close(fd)
        self.expect(b"listening", timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """End a supervisor that will not be used.  The kernel cannot signal it once the
        signal scope is in force: closing the control socket ends one that waits for its
        listener (it hears EOF); one that never starts to wait is left to PDEATHSIG."""
        global _handle
        _stop_process(self.proc, self.control, timeout)
        self.exit_status = self.proc.returncode
        if _handle is self:
            _handle = None

    def alive(self) -> bool:
        """Whether the supervisor process exists and is not a zombie."""
        return self.exit_status is None and _stopped(self.pid) is not None

    def query(self, timeout: float = 2.0) -> Optional[dict]:
        """The supervisor's own report (counts, sinks), or None if it does not answer."""
        with self._lock:
            try:
                self.control.send(b'{"op": "status"}')
                ready, _, _ = select.select([self.control], [], [], timeout)
                if not ready:
                    return None
                return json.loads(self.control.recv(65536))
            except (OSError, ValueError):
                return None

    def watch(self, on_lost: Callable[["SupervisorHandle"], None]) -> threading.Thread:
        """A daemon thread that reaps the supervisor and reports its loss."""

        def wait() -> None:
            try:
                _pid, status = os.waitpid(self.pid, 0)
                self.exit_status = status
                if os.WIFSIGNALED(status):
                    self.lost_reason = f"killed by signal {os.WTERMSIG(status)}"
                else:
                    self.lost_reason = f"exited with status {os.WEXITSTATUS(status)}"
            except ChildProcessError:
                self.exit_status = -1
                self.lost_reason = "reaped by someone else"
            self.proc.returncode = self.exit_status
            on_lost(self)

        thread = threading.Thread(target=wait, name="kernel-guard-supervisor-watch", daemon=True)
        thread.start()
        return thread

    def watch_stalls(self, on_stall: Callable[["SupervisorHandle", float], None],
                     on_resume: Callable[["SupervisorHandle", float], None], after: float = 2.0) -> threading.Thread:
        """A daemon thread that reports a supervisor stopped (SIGSTOP, a debugger) for
        ``after`` seconds, and its resumption: while it is stopped every exec waits and
        the kernel's record queues behind it, with nothing else to show for it."""

        def look() -> None:
            since: Optional[float] = None
            reported = False
            while self.exit_status is None:
                stopped = _stopped(self.pid)
                if stopped is None:
                    return  # gone: the watch thread reports that
                now = time.monotonic()
                if stopped and since is None:
                    since = now
                elif stopped and not reported and now - since >= after:
                    reported = True
                    on_stall(self, now - since)
                elif not stopped and since is not None:
                    if reported:
                        on_resume(self, now - since)
                    since, reported = None, False
                time.sleep(0.5)

        thread = threading.Thread(target=look, name="kernel-guard-supervisor-stalls", daemon=True)
        thread.start()
        return thread


def _stopped(pid: int) -> Optional[bool]:
    """Whether a process is stopped (job control or tracing); None once it is gone (or a zombie)."""
    from .procfs import proc_stat

    fields = proc_stat(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return fields[0] in (b"T", b"t")


def _stop_process(proc: subprocess.Popen, control: socket.socket, timeout: float) -> None:
    control.close()
    try:
        proc.kill()
    except PermissionError:
        pass  # outside our Landlock signal scope: it leaves by itself
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


_handle: Optional[SupervisorHandle] = None


def current() -> Optional[SupervisorHandle]:
    """This kernel's supervisor handle, if the launcher started one."""
    return _handle


#: how the supervisor's interpreter starts (``-S``, no site: the .pth files in
#: site-packages, an editable install's finder and what they import cost MBs in
#: every kernel's supervisor): the import path is written out, and the module
#: named after the code is run as ``-m`` would, its ``main()``
_BOOT = ("import sys; sys.path[:] = sys.argv[2].split({sep!r}); name = sys.argv[1]; del sys.argv[1:3]; "
         "sys.exit(__import__(name, fromlist=['main']).main())").format(sep=os.pathsep)


def import_path() -> str:
    """This process's import path (the launcher's: ``-I``, trusted) with the folder that holds
    kernel_guard, however it was installed, as one ``os.pathsep``-joined word."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join([*(p for p in sys.path if p), package_parent])


def supervisor_argv(fd: int, kernel_pid: int, mode: str, kernel_id: Optional[str], profile: str,
                    scoped: bool = False) -> list[str]:
    """The supervisor's command line (pure but for the import path, for tests).  ``scoped``: the
    launcher put itself in an outer signal-scoped domain first, so the supervisor can tell the
    kernel's processes from others (:mod:`.survivors`)."""
    argv = [sys.executable, "-I", "-S", "-c", _BOOT, "kernel_guard.launch.supervisor", import_path(),
            "--fd", str(fd), "--kernel-pid", str(kernel_pid), "--mode", mode, "--profile", profile]
    if kernel_id:
        argv += ["--kernel-id", kernel_id]
    if scoped:
        argv.append("--scoped")
    return argv


def spawn(mode: str, kernel_id: Optional[str], profile: str, env: dict[str, str],
          spool_dir: Optional[str] = None, scoped: bool = False, private: Any = None) -> SupervisorHandle:
    """Start the supervisor process (fork + exec, while exec still works); do not wait for it.

    ``env`` is the kernel's scrubbed environment plus the sinks
    (``KERNEL_GUARD_SINKS``); it is not on the command line, where a sink URL
    with a token would be visible to ``ps``.  ``private``: the kernel's private
    IPython folder (a :class:`.leftovers.PrivateFolder`), its descriptors handed
    over for the supervisor to remove it if the kernel is killed.
    :func:`wait_ready` completes the start.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    events, events_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # every message to the custodian carries its sender's pid as Linux saw it, from the
    # first: set on the custodian's end before the kernel sends anything
    events_theirs.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    env = {**env, "PYTHONSAFEPATH": "1"}
    argv = supervisor_argv(theirs.fileno(), os.getpid(), mode, kernel_id, profile, scoped)
    argv += ["--events-fd", str(events_theirs.fileno())]
    if spool_dir is not None:
        argv += ["--spool-dir", spool_dir]
    fds = [theirs.fileno(), events_theirs.fileno()]
    if private is not None:
        argv += ["--private-folder", private.option()]
        fds += [private.parent_fd, private.folder_fd]
    # cwd "/" and safe path: nothing from the notebook directory is imported
    try:
        proc = subprocess.Popen(argv, pass_fds=fds, env=env, cwd="/", stdin=subprocess.DEVNULL, close_fds=True)
    finally:
        theirs.close()
        events_theirs.close()
    handle = SupervisorHandle(proc, ours, mode)
    handle.events = events
    return handle


def wait_ready(handle: SupervisorHandle, timeout: float = 30.0) -> SupervisorHandle:
    """Wait until a spawned supervisor is ready; kill it if it is not within ``timeout``."""
    global _handle
    try:
        ready = json.loads(handle.expect(b"ready", timeout))
        handle.tids = sorted({handle.pid, *(int(t) for t in ready["tids"])})
        handle.witness = int(ready["witness"])
    except Exception:
        _stop_process(handle.proc, handle.control, 5.0)
        raise
    _handle = handle
    return handle


def start(mode: str, kernel_id: Optional[str], profile: str, env: dict[str, str],
          timeout: float = 30.0) -> SupervisorHandle:
    """Start the supervisor and wait until it is ready (:func:`spawn`, then :func:`wait_ready`)."""
    return wait_ready(spawn(mode, kernel_id, profile, env), timeout)
