"""The exec supervisor: reading the target, answering, and its life cycle next to the kernel."""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from launcher_support import LaunchedKernel, specs_on_path, wait_gone

from kernel_guard.launch import exec_decision, notifications, supervisor_handle


def notification(pid: int, nr: int, args: list[int], arch: int = notifications.AUDIT_ARCH_X86_64) -> notifications.Notification:
    buf = struct.pack("=QIIiIQ", 7, pid, 0, nr, arch, 0) + struct.pack("=6Q", *(args + [0] * (6 - len(args))))
    return notifications.Notification(buf)


def test_supervisor_argv_keeps_sinks_off_the_command_line() -> None:
    """The supervisor's argv names fd, kernel pid, mode and profile; sink URLs travel in the environment."""
    argv = supervisor_handle.supervisor_argv(5, 42, "enforce", "kid", "default")
    assert argv[:3] == [sys.executable, "-I", "-S"] and argv[5] == "kernel_guard.launch.supervisor"
    assert argv[7:] == ["--fd", "5", "--kernel-pid", "42", "--mode", "enforce", "--profile", "default",
                        "--kernel-id", "kid"]


def test_the_supervisor_starts_without_site_on_the_launchers_import_path() -> None:
    """Its interpreter skips site (no .pth file, no editable finder), finds kernel_guard and its
    libraries on the path the launcher wrote out, and runs the module's main() with the options
    after it: here a command line it refuses, which it says why it refuses."""
    argv = supervisor_handle.supervisor_argv(5, 42, "enforce", "kid", "default")
    assert argv[6].split(os.pathsep)[:-1] == [p for p in sys.path if p]
    probe = [*argv[:5], "kernel_guard.launch.supervisor", argv[6], "--fd", "5"]
    proc = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--fd, --kernel-pid and --mode" in proc.stderr, proc.stderr
    code = ("import sys; print(sorted(m for m in ('site', 'orjson', 'msgspec') if m in sys.modules), "
            "__import__('kernel_guard').__file__)")
    shown = subprocess.run([*argv[:4], f"import sys; sys.path[:] = sys.argv[1].split({os.pathsep!r}); {code}",
                            argv[6]], capture_output=True, text=True, timeout=60)
    assert shown.stdout.split()[0] == "[]" and shown.stdout.split()[1].startswith(os.path.dirname(
        os.path.dirname(supervisor_handle.__file__))), shown


def test_read_exec_reads_path_and_argv_from_process_memory() -> None:
    """execve's path and argv are read through /proc/<pid>/mem (here: this process)."""
    path = ctypes.create_string_buffer(b"/usr/bin/env")
    args = [ctypes.create_string_buffer(b"env"), ctypes.create_string_buffer(b"--token=abc")]
    argv = (ctypes.c_char_p * 3)(ctypes.addressof(args[0]), ctypes.addressof(args[1]), None)
    info = exec_decision.read_exec(notification(os.getpid(), 59, [ctypes.addressof(path), ctypes.addressof(argv)]))
    assert info["syscall"] == "execve" and info["abi"] == "x86_64"
    assert info["executable"] == "/usr/bin/env" and info["args"] == ["env", "--token=abc"]


def test_read_exec_resolves_execveat_relative_and_empty_paths(tmp_path: Path) -> None:
    """execveat with a dirfd joins the relative path; AT_EMPTY_PATH names the open file itself."""
    (tmp_path / "tool").write_text("")
    dirfd = os.open(tmp_path, os.O_RDONLY)
    filefd = os.open(tmp_path / "tool", os.O_RDONLY)
    try:
        rel = ctypes.create_string_buffer(b"tool")
        empty = ctypes.create_string_buffer(b"")
        argv = (ctypes.c_char_p * 1)(None)
        info = exec_decision.read_exec(notification(os.getpid(), 322, [dirfd, ctypes.addressof(rel), ctypes.addressof(argv)]))
        assert info["executable"] == str(tmp_path / "tool") and info["args"] == []
        info = exec_decision.read_exec(notification(os.getpid(), 322, [filefd, ctypes.addressof(empty),
                                                                    ctypes.addressof(argv), 0, 0x1000]))
        assert info["executable"] == str(tmp_path / "tool")
    finally:
        os.close(dirfd)
        os.close(filefd)


def test_read_exec_reports_an_unreadable_target() -> None:
    """A pid that does not exist yields readable=False with the reason, never an exception."""
    info = exec_decision.read_exec(notification(999999999, 59, [1, 2]))
    assert info["readable"] is False and "/proc/999999999/mem" in info["unreadable"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Guarded kernelspecs (default and audit profile) in a temp prefix on JUPYTER_PATH."""
    with specs_on_path(str(tmp_path_factory.mktemp("prefix")), ("guarded",),
                       ("guarded-audit", "--profile", "audit")) as prefix:
        yield prefix


def test_supervisor_leaves_the_group_ignores_sigint_and_dies_with_the_kernel(specs: str, tmp_path: Path) -> None:
    """Its own session and group (the kernel's group signals miss it), SIGINT is ignored, and it and its
    witness exit when the kernel is SIGKILLed, with no loss recorded."""
    kernel = LaunchedKernel(str(tmp_path), "guarded").start()
    try:
        pid, sup = kernel.pid, kernel.supervisor_pid()
        witness = psutil.Process(sup).children()[0].pid
        assert os.getpgid(pid) == pid and os.getpgid(sup) == os.getsid(sup) == sup != pid
        os.kill(sup, signal.SIGINT)
        time.sleep(0.5)
        assert psutil.Process(sup).status() != psutil.STATUS_ZOMBIE
        kernel.mark()
        os.kill(pid, signal.SIGKILL)
        assert wait_gone([sup, witness]) == []
        stopped = kernel.wait_event(lambda e: e["event"]["action"] == "supervisor-stopped")
        assert stopped["kernel_guard"]["supervisor_pid"] == sup
        time.sleep(0.5)
        assert "supervisor-lost" not in [e["event"]["action"] for e in kernel.events()]
    finally:
        kernel.shutdown()


def test_audit_profile_records_and_lets_exec_run(specs: str, tmp_path: Path) -> None:
    """Under the audit profile the supervisor answers CONTINUE: the program runs and is recorded as not a boundary."""
    kernel = LaunchedKernel(str(tmp_path), "guarded-audit", env={"KERNEL_GUARD_MODE": "audit"}).start()
    try:
        kernel.mark()
        result = kernel.execute("import subprocess\nprint(subprocess.run(['/bin/echo', 'audit-profile-ran'], "
                                "capture_output=True, text=True).stdout)")
        assert "audit-profile-ran" in result.stdout, result.error_text
        event = kernel.wait_event(lambda e: e["kernel_guard"]["layer"] == "seccomp"
                                  and "audit-profile-ran" in e.get("process", {}).get("args", []))
        assert event["event"]["action"] == "exec-attempt" and event["event"]["outcome"] == "unknown"
        assert "not a security boundary" in event["event"]["reason"]
    finally:
        kernel.shutdown()
