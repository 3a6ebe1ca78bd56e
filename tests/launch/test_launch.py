"""The launcher end to end: kernels from an installed kernelspec, real seccomp, real supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from launcher_support import (
    NOTEBOOK_USER, LaunchedKernel, install_spec, seccomp_denial, specs_on_path, unprivileged_root, wait_gone,
)

from kernel_guard.testing import read_events

# Each route tries to start /bin/true (or a shell) with a unique marker in argv,
# so the test can find the supervisor's event for exactly that attempt.
ROUTES = {
    "subprocess": """
        import subprocess
        try:
            subprocess.run(["/bin/true", "MARK"])
            print("RAN")
        except PermissionError:
            print("REFUSED")
    """,
    "os.system": """
        import os
        print("RAN" if os.system("/bin/true MARK") == 0 else "REFUSED")
    """,
    "posix_spawn": """
        import os
        try:
            os.posix_spawn("/bin/true", ["/bin/true", "MARK"], dict(os.environ))
            print("RAN")
        except PermissionError:
            print("REFUSED")
    """,
    "fork+execv": """
        import os
        pid = os.fork()
        if pid == 0:
            try:
                os.execv("/bin/true", ["/bin/true", "MARK"])
            finally:
                os._exit(99)
        print("REFUSED" if os.waitpid(pid, 0)[1] >> 8 == 99 else "RAN")
    """,
    "_posixsubprocess.fork_exec": """
        import os, _posixsubprocess, subprocess
        r, w = os.pipe()
        pid = _posixsubprocess.fork_exec(
            [b"/bin/true", b"MARK"], [b"/bin/true"], True, (w,), None, None,
            -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None,
            subprocess._USE_VFORK)
        os.close(w)
        report = os.read(r, 100)
        os.close(r)
        os.waitpid(pid, 0)
        print("REFUSED" if report.startswith(b"OSError:1:") else "RAN", report)
    """,
    "shimmed subprocess.sys": """
        import subprocess, sys, types
        shim = types.SimpleNamespace(**{k: getattr(sys, k) for k in dir(sys) if not k.startswith("__")})
        shim.audit = lambda *args: None
        real, subprocess.sys = subprocess.sys, shim
        try:
            subprocess.run(["/bin/true", "MARK"])
            print("RAN")
        except PermissionError:
            print("REFUSED")
        finally:
            subprocess.sys = real
    """,
    "ctypes system": """
        import ctypes
        print("RAN" if ctypes.CDLL(None).system(b"/bin/true MARK") == 0 else "REFUSED")
    """,
    "fork+ctypes execve": """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        argv = (ctypes.c_char_p * 3)(b"/bin/true", b"MARK", None)
        pid = os.fork()
        if pid == 0:
            try:
                libc.execve(b"/bin/true", argv, None)
                os._exit(ctypes.get_errno())
            finally:
                os._exit(98)  # the audit hook refused the lookup of execve
        print("REFUSED" if os.waitpid(pid, 0)[1] >> 8 in (1, 98) else "RAN")
    """,
    "syscall execve (59)": """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        argv = (ctypes.c_char_p * 3)(b"/bin/true", b"MARK", None)
        rc = libc.syscall(59, b"/bin/true", argv, None)
        print("REFUSED" if rc == -1 and ctypes.get_errno() == 1 else "RAN")
    """,
    "syscall execveat (322)": """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        argv = (ctypes.c_char_p * 3)(b"/bin/true", b"MARK", None)
        rc = libc.syscall(322, -100, b"/bin/true", argv, None, 0)
        print("REFUSED" if rc == -1 and ctypes.get_errno() == 1 else "RAN")
    """,
    "x32 execve (0x40000000|520)": """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        argv = (ctypes.c_uint32 * 1)(0)  # x32 pointers are 32-bit; an empty argv is enough
        rc = libc.syscall(0x40000000 | 520, b"/bin/true", argv, None)
        print("REFUSED" if rc == -1 and ctypes.get_errno() == 1 else "RAN", "MARK")
    """,
}
# multiprocessing spawn/forkserver start the kernel's own interpreter, which the
# default profile's Landlock allowlist lets run: see test_landlock.py

#: what the supervisor must name as the executable, per route
EXPECTED_EXE = {"os.system": "/bin/sh", "ctypes system": "/bin/sh"}


@pytest.fixture(scope="module")
def spec_prefix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temp prefix holding the guarded kernelspecs, on JUPYTER_PATH for this module."""
    with specs_on_path(str(tmp_path_factory.mktemp("prefix")), ("guarded",)) as prefix:
        yield prefix


@pytest.fixture(scope="module")
def audit_hook_recording(spec_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchedKernel]:
    """A launcher kernel whose audit hook only records, so every route reaches the seccomp filter."""
    kernel = LaunchedKernel(str(tmp_path_factory.mktemp("k-audit")), "guarded",
                            env={"KERNEL_GUARD_MODE": "audit"}).start()
    yield kernel
    kernel.shutdown()


@pytest.fixture(scope="module")
def enforcing(spec_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchedKernel]:
    """A launcher kernel with every layer enforcing (the production setting)."""
    kernel = LaunchedKernel(str(tmp_path_factory.mktemp("k-enforce")), "guarded",
                            env={"JUPYTERHUB_API_TOKEN": "hub-token-0123456789abcdef",
                                 "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": "scope-value-0123456789"}).start()
    yield kernel
    kernel.shutdown()


def _run_route(kernel: LaunchedKernel, name: str) -> dict:
    marker = "route-" + name.replace(" ", "-").replace("+", "-").replace("(", "").replace(")", "")
    kernel.mark()
    result = kernel.execute(textwrap.dedent(ROUTES[name]).replace("MARK", marker), timeout=60)
    assert result.status == "ok", result.error_text
    assert "REFUSED" in result.stdout and "RAN" not in result.stdout, result.stdout
    if "x32" in name:  # an empty argv: recognised by its ABI
        event = kernel.wait_event(lambda e: e["event"]["action"] == "exec-denied"
                                  and e["kernel_guard"].get("abi") == "x32")
    else:
        event = kernel.wait_event(seccomp_denial(marker))
    assert kernel.execute("1 + 1").status == "ok"
    return event


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_exec_route_is_refused_and_recorded_by_the_supervisor(audit_hook_recording: LaunchedKernel,
                                                                    route: str) -> None:
    """Each exec route fails, the supervisor's exec-denied event names the executable and pid, the kernel lives."""
    event = _run_route(audit_hook_recording, route)
    assert event["process"]["executable"] == EXPECTED_EXE.get(route, "/bin/true")
    assert event["event"]["outcome"] == "failure"
    assert event["kernel_guard"]["supervisor_pid"] != event["process"]["pid"]
    assert event["user"]["name"] == "alice"
    assert event["kernel_guard"]["kernel_id"]


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_exec_route_is_refused_in_an_enforcing_kernel(enforcing: LaunchedKernel, route: str) -> None:
    """With every layer enforcing, each route fails, a failure event names the layer that stopped it, the kernel lives."""
    marker = "route-enforce-" + route.replace(" ", "-")
    enforcing.mark()
    result = enforcing.execute(textwrap.dedent(ROUTES[route]).replace("MARK", marker), timeout=60)
    if result.status == "ok":
        assert "REFUSED" in result.stdout and "RAN" not in result.stdout, result.stdout
    else:
        assert "kernel_guard refused" in result.error_text, result.error_text
    # a refusal identical to an earlier route's (the ctypes look-up of syscall()) is
    # counted into an events-aggregated event when the aggregation interval ends
    layers = {e["kernel_guard"]["layer"] for e in enforcing.failures(timeout=12)}
    assert layers & {"audit", "seccomp"}, layers
    assert enforcing.execute("1 + 1").status == "ok"


def test_audit_mode_notice_appears_in_cells_not_at_start_up(audit_hook_recording: LaunchedKernel) -> None:
    """The launcher's start-up writes no audit-mode notice; a cell's exec shows one line, the cell goes on."""
    assert "kernel_guard (audit mode)" not in audit_hook_recording.stderr()
    result = audit_hook_recording.execute("import os\nprint(os.system('true') != 0, os.system('true') != 0)")
    assert result.status == "ok" and result.stdout.split() == ["True", "True"], result.error_text
    assert result.stderr.count("kernel_guard (audit mode)") == 1, result.stderr


def test_audited_route_is_refused_by_the_audit_hook_when_enforcing(enforcing: LaunchedKernel) -> None:
    """In enforce mode the audit hook refuses subprocess before it reaches the filter, with its own event."""
    enforcing.mark()
    result = enforcing.execute("import subprocess\nsubprocess.run(['/bin/true', 'audited-route'])")
    assert result.status == "error" and "kernel_guard refused" in result.error_text
    assert enforcing.failures(layer="audit")


def test_i386_int80_execve_is_notified_too(audit_hook_recording: LaunchedKernel) -> None:
    """An execve through the i386 ABI (int 0x80 from 64-bit code) reaches the supervisor and is refused."""
    code = textwrap.dedent("""
        import ctypes, mmap, struct
        page = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40,  # MAP_32BIT
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        base = ctypes.addressof(ctypes.c_char.from_buffer(page))
        assert base < 2**32
        path, marker, argv = base + 256, base + 300, base + 400
        page[256:256 + 10] = b"/bin/true\\0"
        page[300:300 + 12] = b"route-i386\\0\\0"
        page[400:412] = struct.pack("<III", path, marker, 0)
        code = (b"\\x53" + b"\\xb8" + struct.pack("<I", 11) + b"\\xbb" + struct.pack("<I", path)
                + b"\\xb9" + struct.pack("<I", argv) + b"\\x31\\xd2" + b"\\xcd\\x80" + b"\\x5b\\xc3")
        page[0:len(code)] = code
        rc = ctypes.CFUNCTYPE(ctypes.c_int)(base)()
        print("REFUSED" if rc == -1 else "RAN", rc)
    """)
    audit_hook_recording.mark()
    result = audit_hook_recording.execute(code)
    assert result.status == "ok" and "REFUSED" in result.stdout, (result.stdout, result.error_text)
    event = audit_hook_recording.wait_event(seccomp_denial("route-i386"))
    assert event["kernel_guard"]["abi"] == "i386"
    assert event["process"]["executable"] == "/bin/true"


def test_default_profile_refuses_attack_syscalls_but_keeps_threads_and_fork(audit_hook_recording: LaunchedKernel) -> None:
    """ptrace, process_vm_*, mount, unshare/setns/clone(CLONE_NEW*), bpf, perf, keyctl, userfaultfd, io_uring, kexec, modules get EPERM; threads and fork pools work."""
    code = textwrap.dedent("""
        import ctypes, os, threading, multiprocessing, concurrent.futures
        libc = ctypes.CDLL(None, use_errno=True)
        numbers = {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165,
                   "unshare": 272, "setns": 308, "bpf": 321, "perf_event_open": 298, "keyctl": 250,
                   "add_key": 248, "userfaultfd": 323, "kexec_load": 246, "init_module": 175,
                   "finit_module": 313, "pivot_root": 155, "io_uring_setup": 425}
        errors = {}
        for name, nr in numbers.items():
            rc = libc.syscall(nr, 0, 0, 0, 0, 0, 0)
            errors[name] = ctypes.get_errno() if rc == -1 else "rc=%d" % rc
        for flag in (0x10000000, 0x20000, 0x20000000, 0x40000000):  # CLONE_NEWUSER, NS, PID, NET
            rc = libc.syscall(56, flag | 17, 0, 0, 0, 0)  # 17: SIGCHLD
            if rc == 0:
                os._exit(0)  # a child that should not exist leaves at once
            errors["clone %#x" % flag] = ctypes.get_errno() if rc == -1 else "rc=%d" % rc
        rc = libc.syscall(435, 0, 0)
        clone3 = ctypes.get_errno()
        print("ERRNO", errors)
        print("CLONE3", rc, clone3)
        out = []
        t = threading.Thread(target=out.append, args=(1,)); t.start(); t.join()
        with multiprocessing.get_context().Pool(2) as pool:
            squares = pool.map(abs, [-1, -2, -3])
        with concurrent.futures.ProcessPoolExecutor(2) as ex:
            more = list(ex.map(abs, [-4]))
        print("WORKS", out, squares, more, multiprocessing.get_start_method())
    """)
    result = audit_hook_recording.execute(code, timeout=60)
    assert result.status == "ok", result.error_text
    errnos = eval(result.stdout.split("ERRNO", 1)[1].split("\n", 1)[0])
    assert errnos == {name: 1 for name in errnos}, errnos
    assert "CLONE3 -1 38" in result.stdout  # ENOSYS: glibc falls back to clone, whose flags are checked
    assert "WORKS [1] [1, 2, 3] [4] fork" in result.stdout


def test_credentials_are_scrubbed_and_recorded(enforcing: LaunchedKernel) -> None:
    """Hub tokens are gone from os.environ and /proc/self/environ, and an event lists their names."""
    assert enforcing.value("'JUPYTERHUB_API_TOKEN' in __import__('os').environ") is False
    with open(f"/proc/{enforcing.pid}/environ", "rb") as fh:  # the initial block, read from outside
        initial = fh.read()
    assert b"hub-token-0123456789abcdef" not in initial and b"scope-value-0123456789" not in initial
    assert b"JUPYTERHUB_USER=alice" in initial
    events = [e for e in enforcing.events() if e["event"]["action"] == "credentials-scrubbed"]
    assert events and set(events[0]["kernel_guard"]["variables"]) == {
        "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES"}
    with open(enforcing.sink) as fh:
        assert "hub-token-0123456789abcdef" not in fh.read()


def test_kernel_cannot_reach_into_its_supervisor(audit_hook_recording: LaunchedKernel,
                                                 enforcing: LaunchedKernel) -> None:
    """The OS denies the kernel the supervisor's memory (non-dumpable, no CAP_SYS_PTRACE); the audit hook refuses signals to it."""
    kernel = audit_hook_recording  # its audit hook only records: what stops the open is the OS
    sup = kernel.supervisor_pid()
    result = kernel.execute(f"import os\ntry:\n    os.open('/proc/{sup}/mem', os.O_RDWR)\n    print('OPENED')\n"
                            "except OSError as e:\n    print('DENIED', e.errno)")
    assert result.stdout.split()[0] == "DENIED", result.stdout + result.error_text
    cap_eff = kernel.value("[l for l in open('/proc/self/status') if l.startswith('CapEff')][0]")
    assert not int(cap_eff.split()[1], 16) & (1 << 19)
    with open(f"/proc/{sup}/status") as fh:
        status = fh.read()
    assert "Seccomp:\t2" in status and psutil.Process(sup).ppid() == kernel.pid
    sup = enforcing.supervisor_pid()
    killed = enforcing.execute(f"import os, signal\nos.kill({sup}, signal.SIGKILL)")
    assert killed.status == "error" and "kernel_guard refused" in killed.error_text
    assert psutil.Process(sup).status() != psutil.STATUS_ZOMBIE


def test_the_debugger_is_off_and_debugpy_is_not_loaded(enforcing: LaunchedKernel) -> None:
    """kernel_info offers no debugger, pydevd was never imported, and user code can still import debugpy."""
    reply = enforcing.session.client.kernel_info(reply=True, timeout=10)
    assert "debugger" not in reply["content"].get("supported_features", []) and reply["content"].get("debugger") is not True
    result = enforcing.execute("import sys\nprint(sorted(m for m in ('_pydevd_bundle', 'debugpy.server') if m in sys.modules))\n"
                               "import debugpy\nprint(debugpy.__name__)")
    assert result.stdout.split("\n")[:2] == ["[]", "debugpy"], result.error_text


def test_listener_fd_is_not_left_in_the_kernel(enforcing: LaunchedKernel) -> None:
    """No seccomp listener fd exists in the kernel process, and the filter is active."""
    pid = enforcing.pid
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    assert "anon_inode:seccomp notify" not in links
    with open(f"/proc/{pid}/status") as fh:
        status = fh.read()
    assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status


def test_interrupt_reaches_the_cell_and_spares_the_supervisor(spec_prefix: str, tmp_path) -> None:
    """SIGINT to the process group interrupts a running cell; the supervisor ignores it and keeps working."""
    kernel = LaunchedKernel(str(tmp_path), "guarded", env={"KERNEL_GUARD_MODE": "audit"}).start()
    try:
        sup = kernel.supervisor_pid()
        client = kernel.session.client
        msg_id = client.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # interrupt only once the cell is running
            msg = client.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        time.sleep(0.2)
        kernel.session.interrupt()
        deadline = time.monotonic() + 20
        reply = None
        while time.monotonic() < deadline:
            msg = kernel.session.client.get_shell_msg(timeout=20)
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg["content"]
                break
        assert reply is not None and reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert psutil.pid_exists(sup) and psutil.Process(sup).status() != psutil.STATUS_ZOMBIE
        _run_route(kernel, "subprocess")
    finally:
        kernel.shutdown()


def test_shutdown_and_restart_leave_no_process_behind(spec_prefix: str, tmp_path) -> None:
    """After restart the old kernel and supervisor are gone; after shutdown the new ones are too."""
    kernel = LaunchedKernel(str(tmp_path), "guarded").start()
    first = [kernel.pid, kernel.supervisor_pid()]
    kernel.session.manager.restart_kernel(now=False)
    kernel.session.client.wait_for_ready(timeout=60)
    assert wait_gone(first, timeout=20) == [], describe(first)
    second = [kernel.pid, kernel.supervisor_pid()]
    assert set(second).isdisjoint(first), (first, second)
    kernel.shutdown()
    assert wait_gone(second, timeout=20) == [], describe(second)


def describe(pids: list) -> list:
    """What is left of ``pids`` (for assertion messages)."""
    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out.append((pid, proc.status(), proc.ppid(), proc.cmdline()[:4]))
        except psutil.NoSuchProcess:
            out.append((pid, "gone"))
    return out


def test_killing_the_supervisor_keeps_exec_blocked_and_is_recorded(spec_prefix: str, tmp_path) -> None:
    """With the supervisor killed from outside, exec fails with ENOSYS and the kernel records the loss."""
    kernel = LaunchedKernel(str(tmp_path), "guarded", env={"KERNEL_GUARD_MODE": "audit"}).start()
    try:
        sup = kernel.supervisor_pid()
        kernel.mark()
        os.kill(sup, signal.SIGKILL)
        lost = kernel.wait_event(lambda e: e["event"]["action"] == "supervisor-lost")
        assert lost["event"]["outcome"] == "failure" and str(sup) in lost["event"]["reason"]
        result = kernel.execute("import subprocess\ntry:\n    subprocess.run(['/bin/true'])\n"
                                "except OSError as e:\n    print('ERRNO', e.errno)")
        assert "ERRNO 38" in result.stdout, result.stdout  # ENOSYS: nobody answers, nothing runs
        report = kernel.value("__import__('kernel_guard.status').status.collect()['layers']['supervisor']")
        assert report["state"] == "lost" and not report["active"]
        assert "supervisor" in kernel.stderr()
    finally:
        kernel.shutdown()


def test_broken_profile_fails_closed_naming_the_file(tmp_path) -> None:
    """A profile with an unknown action stops the launcher: exit 1, stderr names file and field, an event is written."""
    bad = tmp_path / "broken.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["execve"], "action": "SCMP_ACT_NOPE"}]}')
    sink = tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-m", "kernel_guard.launch", "--profile", str(bad),
                           "-f", str(tmp_path / "kernel-x.json")],
                          env={**os.environ, "KERNEL_GUARD_SINKS": f"file://{sink}"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert str(bad) in proc.stderr and "syscalls[0].action" in proc.stderr
    assert "kernel was not started" in proc.stderr
    events = [e for e in read_events(str(sink)) if e["event"]["action"] == "guard-error"]
    assert events and events[0]["kernel_guard"]["layer"] == "launcher" and str(bad) in events[0]["event"]["reason"]


def test_broken_profile_kernel_never_answers(spec_prefix: str, tmp_path) -> None:
    """A kernelspec whose profile broke after install dies at start instead of running unguarded."""
    profile = tmp_path / "p.json"
    profile.write_text((Path(__file__).parents[2] / "seccomp_profiles" / "default.json").read_text())
    install_spec(spec_prefix, "breaks-later", "--profile", str(profile))
    profile.write_text("{not json")
    kernel = LaunchedKernel(str(tmp_path / "k"), "breaks-later")
    kernel.session.startup_timeout = 30
    with pytest.raises(RuntimeError):
        kernel.start()
    assert "not valid JSON" in kernel.stderr() and str(profile) in kernel.stderr()
    kernel.shutdown()


# A parent that makes seccomp(2) fail with ENOSYS, then execs the launcher: a system
# without seccomp filters, as the launcher sees it.
NO_SECCOMP_WRAPPER = ("import os, sys\nfrom kernel_guard.launch import seccomp_filter\nsc = seccomp_filter.bindings()\n"
                      "f = sc.SyscallFilter(sc.ALLOW)\nf.add_rule(sc.ERRNO(38), 'seccomp')\nf.load()\n"
                      "os.execv(sys.executable, [sys.executable, '-m', 'kernel_guard.launch', *sys.argv[1:]])")


def test_default_profile_fails_closed_without_seccomp(tmp_path) -> None:
    """Where the filter cannot be loaded, the default profile refuses to start the kernel and says why."""
    sink = tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-c", NO_SECCOMP_WRAPPER, "--profile", "default",
                           "-f", str(tmp_path / "kernel-y.json")],
                          env={**os.environ, "KERNEL_GUARD_SINKS": f"file://{sink}"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    # the supervisor hardens itself with a filter first, so it is the first to notice
    assert "kernel was not started" in proc.stderr and "fail_closed" in proc.stderr
    assert "cannot harden the supervisor" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("kernel_guard:")]) == 1
    events = [e for e in read_events(str(sink)) if e["event"]["action"] == "guard-error"]
    assert events and events[0]["kernel_guard"]["step"] == "supervisor" and events[0]["kernel_guard"]["fatal"]


def test_audit_profile_starts_without_seccomp_and_status_says_so(tmp_path, make_kernel) -> None:
    """The audit profile does not require the filter: the kernel starts, and status reports seccomp off."""
    kernel = make_kernel(argv=[sys.executable, "-c", NO_SECCOMP_WRAPPER, "--profile", "audit",
                               "-f", "{connection_file}"])
    result = kernel.execute("import json\nprint(json.dumps(get_ipython().run_line_magic('guard_status', '--json'),"
                            " default=str))")
    report = json.loads(result.stdout)
    seccomp = report["layers"]["seccomp"]
    assert seccomp["active"] is False and seccomp["seccomp"] == "2"  # the wrapper's filter, not ours
    assert "not kernel_guard's" in seccomp["reason"]
    assert report["layers"]["supervisor"]["state"] == "none"
    errors = [e for e in kernel.events() if e["event"]["action"] == "guard-error"]
    assert errors and errors[0]["kernel_guard"]["fatal"] is False
    assert "exec is NOT blocked" in kernel.stderr()


def test_numpy_and_matplotlib_work_under_the_default_profile(spec_prefix: str, tmp_path) -> None:
    """NumPy (BLAS threads), matplotlib (font cache, Agg rendering) and a fork pool computing with NumPy run in a guarded kernel."""
    home = tmp_path / "home"
    kernel = LaunchedKernel(str(tmp_path), "guarded", env={"MPLCONFIGDIR": str(home / "mpl")}).start()
    try:
        result = kernel.execute(textwrap.dedent("""
            import io, multiprocessing
            import numpy as np
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            a = np.random.default_rng(0).random((300, 300))
            product = float(np.trace(a @ a.T))
            with multiprocessing.get_context().Pool(2) as pool:
                sums = pool.map(np.sum, [np.ones(10), np.ones(20)])
            fig, ax = plt.subplots()
            ax.plot(np.arange(10), np.arange(10) ** 2)
            ax.set_title("guarded")
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            print("OK", product > 0, [float(s) for s in sums], buf.getvalue()[:4] == b"\\x89PNG")
        """), timeout=120)
        assert result.status == "ok", result.error_text
        assert "OK True [10.0, 20.0] True" in result.stdout
    finally:
        kernel.shutdown()


def test_the_launchers_own_setup_is_recorded_once_as_launcher_setup() -> None:
    """A launcher kernel (uid 1000, audit hook recording) starts without any exec-attempt or
    persistence-write: one launcher-setup event names the programs it ran (ldconfig, its
    supervisor) and the profile files it wrote; a cell's own subprocess is still recorded
    as exec-attempt."""
    with unprivileged_root() as root, specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        kernel = LaunchedKernel(os.path.join(root, "k"), "guarded", env={"KERNEL_GUARD_MODE": "audit"},
                                user=NOTEBOOK_USER).start()
        try:
            assert kernel.execute("1 + 1").status == "ok"
            start = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "cell-executed" for e in evs),
                                      timeout=15)
            actions = [e["event"]["action"] for e in start]
            # nor a persistence-write or library-loaded: IPython's profile in the launcher's own
            # folder and libseccomp's bindings loading libc are its work too
            assert "kernel-started" in actions and not {"exec-attempt", "persistence-write", "library-loaded"} \
                & set(actions), "\n".join(str(x) for x in [
                (e["event"]["action"], e.get("process", {}).get("args"), e["event"].get("reason")) for e in start])
            (setup,) = [e for e in start if e["event"]["action"] == "launcher-setup"]
            assert setup["event"]["outcome"] == "success" and setup["kernel_guard"]["layer"] == "launcher"
            programs = setup["kernel_guard"]["programs"]
            assert any("ldconfig" in os.path.basename(p["executable"]) for p in programs), programs
            assert any("kernel_guard.launch.supervisor" in p["args"] for p in programs), programs
            writes = [w["file"]["path"] for w in setup["kernel_guard"]["writes"]]
            assert writes and all("/profile_default/" in w for w in writes), writes
            kernel.mark()
            result = kernel.execute("import subprocess\ntry:\n    subprocess.run(['/bin/true', 'after-setup'])\n"
                                    "except OSError:\n    pass")
            assert result.status == "ok", result.error_text
            kernel.wait_event(lambda e: e["event"]["action"] == "exec-attempt"
                              and "after-setup" in e.get("process", {}).get("args", []))
            loaded = kernel.execute("import ctypes\nctypes.CDLL('libc.so.6')")
            assert loaded.status == "ok", loaded.error_text
            kernel.wait_event(lambda e: e["event"]["action"] == "library-loaded")
        finally:
            kernel.shutdown()
