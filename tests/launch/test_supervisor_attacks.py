"""Attacks on the exec supervisor from a launcher kernel run as the notebook user (uid 1000).

Killing the supervisor and then answering one's own exec through a new seccomp
listener was a full escape.  Every route here runs in a kernel whose audit
hook only records, so the operating system's layers (the seccomp filter, the
Landlock signal scope, the supervisor's own settings) are tested alone.  Each
test asserts that no program ran, that the supervisor lives (or, when it is
killed from outside, that exec stays blocked), and what was recorded.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from typing import Iterator

import psutil
import pytest
from launcher_support import LaunchedKernel, NOTEBOOK_USER, recording_kernel

from kernel_guard.launch import landlock

# Each route prints OK when the call was refused; {SUP}, {WITNESS}, {TID} are filled in.
SIGNAL_ROUTES = {
    "pidfd_open, SIGKILL": ("pidfd_open", "SUP", """
        import os, signal
        try:
            signal.pidfd_send_signal(os.pidfd_open({SUP}), signal.SIGKILL)
        except PermissionError:
            print("OK")
    """),
    "pidfd from /proc/PID, SIGTERM": ("pidfd_send_signal", "SUP", """
        import os, signal
        fd = os.open("/proc/{SUP}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        except PermissionError:
            print("OK")
    """),
    "libc kill through ctypes, SIGKILL": ("kill", "SUP", """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("OK" if libc.kill({SUP}, 9) == -1 and ctypes.get_errno() == 1 else "SENT")
    """),
    "libc kill through ctypes, SIGSTOP": ("kill", "SUP", """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("OK" if libc.kill({SUP}, 19) == -1 and ctypes.get_errno() == 1 else "SENT")
    """),
    "tgkill": ("tgkill", "SUP", """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("OK" if libc.syscall(234, {SUP}, {SUP}, 9) == -1 and ctypes.get_errno() == 1 else "SENT")
    """),
    "tkill of another of its threads": ("tkill", "TID", """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("OK" if libc.syscall(200, {TID}, 9) == -1 and ctypes.get_errno() == 1 else "SENT")
    """),
    "kill of a thread id (reaches the whole process)": ("kill", "TID", """
        import os
        try:
            os.kill({TID}, 9)
        except PermissionError:
            print("OK")
    """),
    "kill of its process group": ("kill", "-SUP", """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("OK" if libc.kill(-{SUP}, 9) == -1 and ctypes.get_errno() == 1 else "SENT")
    """),
    "kill(-1)": ("kill", "-1", """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("OK" if libc.kill(-1, 9) == -1 and ctypes.get_errno() == 1 else "SENT")
    """),
    "kill of the witness": ("kill", "WITNESS", """
        import os
        try:
            os.kill({WITNESS}, 9)
        except PermissionError:
            print("OK")
    """),
    "prlimit RLIMIT_CPU 0": ("prlimit64", "SUP", """
        import resource
        try:
            resource.prlimit({SUP}, resource.RLIMIT_CPU, (0, 0))
        except PermissionError:
            print("OK")
    """),
    "F_SETOWN for SIGIO": ("fcntl", "SUP", """
        import fcntl, socket
        a, b = socket.socketpair()
        try:
            fcntl.fcntl(a, fcntl.F_SETOWN, {SUP})
        except PermissionError:
            print("OK")
    """),
}

# Routes whose signal the kernel's Landlock scope or the supervisor's session stop at
# delivery: the call itself succeeds, so only the supervisor's survival tells.
DELIVERY_ROUTES = {
    "F_SETOWN_EX and F_SETSIG SIGKILL": """
        import fcntl, os, socket, struct
        a, b = socket.socketpair()
        fcntl.fcntl(a, 15, struct.pack("ii", 1, {SUP}))   # F_SETOWN_EX, F_OWNER_PID: an owner in memory
        fcntl.fcntl(a, 10, 9)                             # F_SETSIG SIGKILL
        fcntl.fcntl(a, fcntl.F_SETFL, fcntl.fcntl(a, fcntl.F_GETFL) | os.O_ASYNC)
        b.send(b"x")
        print("OK")
    """,
    "a terminal whose foreground group is the supervisor's": """
        import fcntl, os, termios
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            os.tcsetpgrp(slave, {SUP})
            os.write(master, b"\\x1c\\x1a")   # ^\\ (SIGQUIT) and ^Z (SIGTSTP) to the foreground group
            print("SENT")
        except OSError as exc:
            print("OK", exc.errno)
    """,
}

# A forked child asks for a listener of its own, and would answer its child's exec with CONTINUE.
HIJACK = """
    import ctypes, fcntl, os, struct
    import pyseccomp as sc
    from kernel_guard.launch import seccomp_filter
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sc._libseccomp.seccomp_reset(None, 0)   # forget the launcher's listener
            f = sc.SyscallFilter(sc.ALLOW)
            f.add_rule(sc.NOTIFY, "execve")
            f.load()
            listener = seccomp_filter.notify_fd(f)
            child = os.fork()
            if child == 0:
                os.execv("/bin/sh", ["/bin/sh", "-c", "echo ran > MARKER"])
                os._exit(9)
            buf = bytearray(80)
            fcntl.ioctl(listener, 0xC0502100, buf, True)
            fcntl.ioctl(listener, 0xC0182101, struct.pack("=QqiI", struct.unpack_from("=Q", buf)[0], 0, 0, 1))
            os.waitpid(child, 0)
            os.write(w, b"LISTENING")
        except OSError as exc:
            os.write(w, b"REFUSED %d" % exc.errno)
        os._exit(0)
    os.close(w)
    said = os.read(r, 100).decode()
    os.waitpid(pid, 0)
    print(said)
"""


# Threads flip the exec path between the interpreter (allowed) and the ELF loader (which
# Landlock must let execute) so that the supervisor reads one and the kernel runs the other;
# the loader then runs /bin/sh.  Prints how many children died by SIGKILL and how many tried.
RACE = """
    import ctypes, os, sys, threading
    libc = ctypes.CDLL(None, use_errno=True)
    py = os.path.realpath(sys.executable).encode()
    ld = os.path.realpath("/lib64/ld-linux-x86-64.so.2").encode()
    n = max(len(py), len(ld)) + 1
    flips = [ctypes.create_string_buffer(p.ljust(n, b"\\0"), n) for p in (ld, py)]
    argv = (ctypes.c_char_p * 5)(b"x", b"/bin/sh", b"-c", b"echo ran > MARKER", None)
    killed = tried = 0
    while killed < 3 and tried < 400 and not os.path.exists("MARKER"):
        tried += 1
        pid = os.fork()
        if pid == 0:
            path = ctypes.create_string_buffer(py.ljust(n, b"\\0"), n)
            def flip():
                while True:
                    for source in flips:
                        ctypes.memmove(path, source, n)
            threading.Thread(target=flip, daemon=True).start()
            libc.execve(path, argv, (ctypes.c_char_p * 1)(None))
            os._exit(0)
        killed += os.waitpid(pid, 0)[1] == 9
    print(killed, tried)
"""


@pytest.fixture(scope="module")
def kernel(spec: str, root: str) -> Iterator[LaunchedKernel]:
    """A launcher kernel as uid 1000 whose audit hook only records: the OS layers alone."""
    yield from recording_kernel(root, "attacked")


def _pids(kernel: LaunchedKernel) -> dict[str, int]:
    sup = kernel.supervisor_pid()
    witness = [c.pid for c in psutil.Process(sup).children()]
    others = [t.id for t in psutil.Process(sup).threads() if t.id != sup]
    assert len(witness) == 1 and others, "the supervisor has a witness and a writer thread"
    return {"SUP": sup, "WITNESS": witness[0], "TID": others[0]}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED)
    except psutil.NoSuchProcess:
        return False


def _fill(code: str, pids: dict[str, int], marker: str = "") -> str:
    code = textwrap.dedent(code).replace("MARKER", marker)
    for name, pid in pids.items():
        code = code.replace("{" + name + "}", str(pid))
    return code


def test_the_kernel_runs_as_the_notebook_user_in_a_signal_scope(kernel: LaunchedKernel) -> None:
    """The kernel is uid 1000; Landlock scopes its signals; the supervisor has its own session and group."""
    pids = _pids(kernel)
    assert kernel.value("__import__('os').getuid()") == NOTEBOOK_USER[0]
    assert landlock.abi_version() >= landlock.SIGNAL_SCOPE_ABI, "CI runs where Landlock ABI 6+ exists"
    status = kernel.value("__import__('kernel_guard.status').status.collect()['layers']['landlock']")
    assert status["active"] and status["state"].startswith("signal and abstract-socket scope"), status
    sup = psutil.Process(pids["SUP"])
    assert os.getsid(pids["SUP"]) == pids["SUP"] != os.getsid(kernel.pid)
    assert os.getpgid(pids["WITNESS"]) == pids["SUP"]
    assert sup.uids().real == NOTEBOOK_USER[0]


@pytest.mark.parametrize("route", sorted(SIGNAL_ROUTES))
def test_signals_aimed_at_the_supervisor_are_refused_and_recorded(kernel: LaunchedKernel, route: str) -> None:
    """Each signal, pidfd, rlimit or F_SETOWN call at the supervisor fails; it lives; the supervisor records it."""
    syscall, target, code = SIGNAL_ROUTES[route]
    pids = _pids(kernel)
    target_pid = -1 if target == "-1" else (-pids["SUP"] if target == "-SUP" else pids[target])
    kernel.mark()
    result = kernel.execute(_fill(code, pids), timeout=30)
    assert result.status == "ok" and result.stdout.split() == ["OK"], (result.stdout, result.error_text)
    event = kernel.wait_event(lambda e: e["event"]["action"] == "signal-denied"
                              and e["kernel_guard"]["syscall"] == syscall)
    assert event["event"]["outcome"] == "failure" and event["kernel_guard"]["layer"] == "seccomp"
    if syscall != "pidfd_send_signal" or target_pid > 0:
        assert event["kernel_guard"]["target_pid"] == target_pid
    assert event["process"]["pid"] == kernel.pid
    time.sleep(0.2)
    assert _alive(pids["SUP"]) and _alive(pids["WITNESS"])
    assert kernel.execute("1 + 1").status == "ok"


@pytest.mark.parametrize("route", sorted(DELIVERY_ROUTES))
def test_signals_the_kernel_cannot_address_never_arrive(kernel: LaunchedKernel, route: str) -> None:
    """SIGIO with an owner set in memory, and terminal signals: the supervisor lives and keeps answering."""
    pids = _pids(kernel)
    result = kernel.execute(_fill(DELIVERY_ROUTES[route], pids), timeout=30)
    assert result.status == "ok", result.error_text
    time.sleep(0.5)
    assert _alive(pids["SUP"]) and _alive(pids["WITNESS"])
    kernel.mark()
    assert "REFUSED" in kernel.execute(_fill(HIJACK, pids, os.path.join(kernel.work, "never"))).stdout


def test_a_new_listener_cannot_take_over_exec(kernel: LaunchedKernel) -> None:
    """A child's request for its own listener is refused and recorded; the exec it wanted never runs."""
    marker = os.path.join(kernel.work, "hijacked")
    kernel.mark()
    result = kernel.execute(_fill(HIJACK, _pids(kernel), marker), timeout=30)
    assert result.status == "ok" and result.stdout.startswith("REFUSED"), (result.stdout, result.error_text)
    event = kernel.wait_event(lambda e: e["event"]["action"] == "listener-denied")
    assert event["kernel_guard"]["layer"] == "seccomp" and event["event"]["outcome"] == "failure"
    assert not os.path.exists(marker)


def _killed_from_outside(kernel: LaunchedKernel) -> dict[str, int]:
    """SIGKILL the supervisor as root would (the OOM killer, an operator)."""
    pids = _pids(kernel)
    os.kill(pids["SUP"], signal.SIGKILL)
    return pids


def test_losing_the_supervisor_keeps_exec_blocked_for_good(spec: str, root: str) -> None:
    """Killed from outside: exec fails with ENOSYS, no listener can take its place, and both the kernel
    and the witness record the loss."""
    kernel = LaunchedKernel(os.path.join(root, "lost"), "guarded", env={"KERNEL_GUARD_MODE": "audit"},
                            user=NOTEBOOK_USER).start()
    try:
        kernel.mark()
        pids = _killed_from_outside(kernel)
        lost = kernel.new_events(until=lambda evs: sum(e["event"]["action"] == "supervisor-lost" for e in evs) == 2,
                                 timeout=15)
        by = sorted(e["kernel_guard"].get("recorded_by", "kernel") for e in lost
                    if e["event"]["action"] == "supervisor-lost")
        assert by == ["kernel", "witness"], [e["event"]["action"] for e in lost]
        marker = os.path.join(kernel.work, "after-loss")
        result = kernel.execute(_fill(HIJACK, pids, marker), timeout=30)
        assert result.stdout.strip() == "REFUSED 125", result.stdout  # libseccomp: the kernel said ENOSYS
        exec_rc = kernel.execute("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                                 "argv = (ctypes.c_char_p * 2)(b'/bin/true', None)\n"
                                 "print(libc.syscall(59, b'/bin/true', argv, None), ctypes.get_errno())")
        assert exec_rc.stdout.split() == ["-1", "38"], exec_rc.stdout  # ENOSYS
        assert not os.path.exists(marker)
        assert "exec stays blocked for good" in kernel.stderr()
    finally:
        kernel.shutdown()


def test_the_witness_records_the_loss_when_the_kernel_cannot(spec: str, root: str) -> None:
    """With the kernel's own pipeline silenced by a cell, the supervisor's loss is still in the sink."""
    kernel = LaunchedKernel(os.path.join(root, "silenced"), "guarded", env={"KERNEL_GUARD_MODE": "audit"},
                            user=NOTEBOOK_USER).start()
    try:
        silenced = kernel.execute("from kernel_guard.events import pipeline\n"
                                  "p = pipeline.get_pipeline()\np.emit = lambda event: None\n"
                                  "pipeline._stderr_line = lambda text: None")
        assert silenced.status == "ok", silenced.error_text
        kernel.mark()
        pids = _killed_from_outside(kernel)
        event = kernel.wait_event(lambda e: e["event"]["action"] == "supervisor-lost", timeout=15)
        assert event["kernel_guard"]["recorded_by"] == "witness"
        assert event["kernel_guard"]["supervisor_pid"] == pids["SUP"]
        assert event["process"]["pid"] == pids["WITNESS"]
    finally:
        kernel.shutdown()


def test_a_clean_end_leaves_no_loss_record(spec: str, root: str) -> None:
    """A kernel shut down normally: the supervisor records its stop; the witness records nothing."""
    kernel = LaunchedKernel(os.path.join(root, "clean"), "guarded", user=NOTEBOOK_USER).start()
    pids = _pids(kernel)
    kernel.mark()
    kernel.shutdown()
    events = kernel.events_until_stopped(timeout=15)
    time.sleep(1.0)
    actions = [e["event"]["action"] for e in kernel.events()[kernel._mark:]]
    assert "supervisor-stopped" in actions and "supervisor-lost" not in actions, actions
    assert not _alive(pids["WITNESS"]) and events


def test_a_path_changed_under_the_supervisor_cannot_start_the_loader(kernel: LaunchedKernel) -> None:
    """The supervisor reads the interpreter and lets the exec continue; the kernel then runs the
    ELF loader with /bin/sh as its program.  The loader's first call stops it: killed, recorded."""
    marker = os.path.join(kernel.work, "raced")
    kernel.mark()
    result = kernel.execute(_fill(RACE, {}, marker), timeout=240)
    assert result.status == "ok", result.error_text
    killed, tried = map(int, result.stdout.split())
    assert not os.path.exists(marker), f"the loader ran /bin/sh after {tried} tries"
    assert killed >= 1, f"no race won in {tried} tries: the test proves nothing"
    gate = [e for e in kernel.new_events(until=lambda evs: sum(_raced(e) for e in evs) >= killed, timeout=15)
            if _raced(e)]
    assert len(gate) >= killed
    assert gate[0]["event"]["outcome"] == "failure" and "ld-linux" in gate[0]["process"]["executable"]


def _raced(event: dict) -> bool:
    return event["event"]["action"] == "exec-denied" and event["kernel_guard"].get("syscall") == "brk"


def test_a_stopped_supervisor_is_reported_and_its_resumption_too(spec: str, root: str) -> None:
    """SIGSTOP from outside (an operator, a debugger): the kernel says on stderr that every exec waits;
    once it runs again, both records reach the sink through it."""
    kernel = LaunchedKernel(os.path.join(root, "stalled"), "guarded", env={"KERNEL_GUARD_MODE": "audit"},
                            user=NOTEBOOK_USER).start()
    try:
        sup = kernel.supervisor_pid()
        kernel.mark()
        os.kill(sup, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 15
            while "has been stopped" not in kernel.stderr() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            os.kill(sup, signal.SIGCONT)
        assert "every exec waits until it resumes" in kernel.stderr()
        events = kernel.new_events(until=lambda evs: {"supervisor-stalled", "supervisor-resumed"}
                                   <= {e["event"]["action"] for e in evs}, timeout=15)
        (stalled,) = [e for e in events if e["event"]["action"] == "supervisor-stalled"]
        assert stalled["event"]["outcome"] == "failure" and stalled["kernel_guard"]["supervisor_pid"] == sup
        assert any(e["event"]["action"] == "supervisor-resumed" for e in events)
        assert kernel.execute("1 + 1").status == "ok"
    finally:
        kernel.shutdown()
