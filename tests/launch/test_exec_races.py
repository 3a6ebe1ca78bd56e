"""Exec races and odd program images under the launcher, as uid 1000: only allowed programs run.

A tiny static program (built here, byte by byte: it writes MARK to its stdout and
exits, and never calls brk, so no image gate sees it) is put in a memfd, which
Landlock does not check.  Each route tries to make the kernel execute it while the
supervisor reads the interpreter: flipping an fd number, the path buffer, or a
symlink.  The kernel's audit hook only records (audit mode), so the operating
system's layers stand alone.  Each test asserts that MARK never appeared, that
the interpreter did start (so the exec really was let through while the flip
ran), what the record says, and that ``kernel-guard verify`` finds it whole.
"""

from __future__ import annotations

import os
import platform
import struct
import textwrap
from typing import Iterator

import psutil
import pytest
from launcher_support import NOTEBOOK_USER, LaunchedKernel, record_is_whole


pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the static program is x86_64 code")


def static_program(marker: bytes = b"MARK\n") -> bytes:
    """An x86_64 ELF executable of one segment: write(1, marker), exit(0); no brk, no libc."""
    base, headers = 0x400000, 64 + 56
    code = bytearray(b"\xb8\x01\x00\x00\x00"      # mov eax, 1 (write)
                     b"\xbf\x01\x00\x00\x00"      # mov edi, 1
                     b"\x48\x8d\x35\x00\x00\x00\x00"  # lea rsi, [rip + marker]
                     + b"\xba" + struct.pack("<I", len(marker))  # mov edx, len
                     + b"\x0f\x05"                # syscall
                     b"\xb8\x3c\x00\x00\x00"      # mov eax, 60 (exit)
                     b"\x31\xff\x0f\x05")         # xor edi, edi; syscall
    struct.pack_into("<i", code, 13, len(code) - 17)  # rip-relative offset of the marker
    body = bytes(code) + marker
    size = headers + len(body)
    elf = (b"\x7fELF\x02\x01\x01" + bytes(9)
           + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, base + headers, 64, 0, 0, 64, 56, 1, 0, 0, 0))
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return elf + segment + body


# Runs in the kernel.  Each try forks a child whose stdout is a pipe; the child puts the
# program in a memfd and races an exec; the parent counts MARK (the program ran), PY
# (the interpreter ran), EACCES (the kernel refused the file it opened) and tries.
RACE = """
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
PROGRAM = {program!r}
ROUTE = {route!r}
py = os.path.realpath(sys.executable)
argv = (ctypes.c_char_p * 4)(b"python", b"-c", b"import os; os.write(1, b'PY')", None)
envp = (ctypes.c_char_p * 1)(None)

def child():
    mem = os.memfd_create("program", 0)
    os.write(mem, PROGRAM)
    if ROUTE == "memfd":
        libc.syscall(322, mem, b"", argv, envp, 0x1000)  # execveat(memfd, "", AT_EMPTY_PATH)
        return
    if ROUTE == "fd":
        pyfd, slot = os.open(py, os.O_RDONLY), 100
        os.dup2(pyfd, slot)
        def flip():
            while True:
                os.dup2(mem, slot)
                os.dup2(pyfd, slot)
        threading.Thread(target=flip, daemon=True).start()
        libc.syscall(322, slot, b"", argv, envp, 0x1000)
        return
    if ROUTE == "path":
        paths = (py.encode(), f"/proc/self/fd/{{mem}}".encode())
        n = max(map(len, paths)) + 1
        buf = ctypes.create_string_buffer(paths[0].ljust(n, b"\\0"), n)
        sources = [ctypes.create_string_buffer(p.ljust(n, b"\\0"), n) for p in paths]
        def flip():
            while True:
                for source in sources:
                    ctypes.memmove(buf, source, n)
        threading.Thread(target=flip, daemon=True).start()
        libc.execve(buf, argv, envp)
        return
    link = os.path.abspath(f"link-{{os.getpid()}}")
    targets = (py, f"/proc/{{os.getpid()}}/fd/{{mem}}")
    os.symlink(py, link)
    def flip():
        while True:
            for i, target in enumerate(targets):
                os.symlink(target, f"{{link}}.{{i}}")
                os.replace(f"{{link}}.{{i}}", link)
    threading.Thread(target=flip, daemon=True).start()
    libc.execve(link.encode(), argv, envp)

marks = pys = refused = raced = tried = 0
deadline = time.monotonic() + 90
while tried < {tries} and time.monotonic() < deadline and not (raced >= 2 and pys >= 2):
    tried += 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        child()
        os._exit(ctypes.get_errno() or 1)
    os.close(w)
    out = b""
    while chunk := os.read(r, 64):
        out += chunk
    os.close(r)
    status = os.waitpid(pid, 0)[1]
    marks += b"MARK" in out
    pys += b"PY" in out
    refused += os.WIFEXITED(status) and os.WEXITSTATUS(status) in (1, 13)
    raced += os.WIFEXITED(status) and os.WEXITSTATUS(status) == 13  # let through, then the memfd opened
for name in os.listdir("."):
    if name.startswith("link-"):
        os.unlink(name)
print(marks, pys, refused, raced, tried)
"""


@pytest.fixture()
def kernel(spec: str, root: str, request: pytest.FixtureRequest) -> Iterator[LaunchedKernel]:
    """A fresh launcher kernel as uid 1000 whose audit hook only records."""
    started = LaunchedKernel(os.path.join(root, request.node.name.replace("[", "-").strip("]")), "guarded",
                             env={"KERNEL_GUARD_MODE": "audit"}, user=NOTEBOOK_USER).start()
    yield started
    if started.session.is_alive():
        started.shutdown()


def _race(kernel: LaunchedKernel, route: str, tries: int = 400) -> tuple[int, ...]:
    """(programs run, interpreters run, execs refused, execs let through that met the memfd, tries)."""
    kernel.mark()
    result = kernel.execute(RACE.format(program=static_program(), route=route, tries=tries), timeout=180)
    assert result.status == "ok", result.error_text
    return tuple(map(int, result.stdout.split()))


def _allowed(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"]["action"] == "exec-allowed"]


@pytest.mark.parametrize("route", ["fd", "path", "symlink"])
def test_a_flip_under_the_supervisor_never_runs_a_memfd_program(kernel: LaunchedKernel, route: str) -> None:
    """The supervisor reads the interpreter and lets the exec continue; the kernel then opens the
    memfd: sealed non-executable, it fails (EACCES).  Only the interpreter ever starts, and each
    exec let through is recorded with the image the kernel started, or as unconfirmed."""
    marks, pys, refused, raced, tried = _race(kernel, route)
    assert marks == 0, f"the memfd program ran {marks} times in {tried} tries ({route} flip)"
    assert pys >= 1 and raced >= 1, f"no exec was let through and then met the memfd in {tried} tries: proves nothing"
    events = kernel.new_events(until=lambda evs: len(_allowed(evs)) >= pys, timeout=30)
    allowed = _allowed(events)
    python = os.path.realpath(psutil.Process(kernel.pid).exe())
    confirmed = [e for e in allowed if e["kernel_guard"].get("image_confirmed")]
    assert len(confirmed) >= pys
    assert {os.path.realpath(e["process"]["executable"]) for e in confirmed} == {python}
    assert not any("memfd" in str(e["process"].get("executable")) for e in allowed)
    record_is_whole(kernel)


def test_a_memfd_program_executed_directly_is_refused_and_named(kernel: LaunchedKernel) -> None:
    """execveat(memfd, "", AT_EMPTY_PATH): refused, and the record names the memfd."""
    marks, pys, refused, raced, tried = _race(kernel, "memfd", tries=3)
    assert (marks, pys, refused, raced) == (0, 0, tried, 0)
    denied = kernel.wait_event(lambda e: e["event"]["action"] == "exec-denied"
                               and "memfd:program" in str(e["process"].get("executable")))
    assert denied["kernel_guard"]["syscall"] == "execveat" and denied["event"]["outcome"] == "failure"
    record_is_whole(kernel)


HUGE = """
import os
try:
    os.memfd_create("huge", os.MFD_HUGETLB)
    print("CREATED")
except OSError as exc:
    print(exc.errno)
"""


def test_a_hugetlb_memfd_is_refused_with_the_alternative_named(kernel: LaunchedKernel) -> None:
    """A hugetlb memfd lives on another internal mount Landlock skips, and hugetlbfs lets chmod undo
    the exec seal: memfd_create(MFD_HUGETLB) fails with EINVAL, as on a kernel without hugetlbfs,
    and the record says what to use instead."""
    kernel.mark()
    result = kernel.execute(HUGE)
    assert result.status == "ok", result.error_text
    assert result.stdout.strip() == "22"
    refused = kernel.wait_event(lambda e: e["event"]["action"] == "memfd-refused")
    assert refused["event"]["outcome"] == "failure" and "ordinary memfd" in refused["event"]["reason"]


def test_memfd_users_keep_working(kernel: LaunchedKernel) -> None:
    """Sealing, close-on-exec and a JIT-style executable mapping of a memfd work as outside the
    launcher; the memfd keeps its name; ordinary memfds leave nothing in the record."""
    kernel.mark()
    code = textwrap.dedent("""
        import fcntl, mmap, os
        fd = os.memfd_create("data", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, b"x" * 4096)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        sealed = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_GROW != 0
        cloexec = fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC != 0
        jit = os.memfd_create("jit")
        os.ftruncate(jit, 4096)
        rw = mmap.mmap(jit, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        rx = mmap.mmap(jit, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)
        rw[:4] = b"code"
        print(sealed, cloexec, rx[:4] == b"code", os.readlink(f"/proc/self/fd/{jit}"))
    """)
    result = kernel.execute(code)
    assert result.status == "ok", result.error_text
    assert result.stdout.split() == ["True", "True", "True", "/memfd:jit", "(deleted)"]
    kernel.execute("print('done')")
    events = kernel.new_events(until=lambda evs: sum(e["event"]["action"] == "cell-executed" for e in evs) >= 2)
    assert [e for e in events if e["event"]["outcome"] == "failure"] == []


SCHEDULING = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
out = []
def refused(call):
    try:
        call()
        out.append("ALLOWED")
    except PermissionError:
        out.append("OK")
refused(lambda: os.setpriority(os.PRIO_PROCESS, {SUP}, 19))
refused(lambda: os.setpriority(os.PRIO_PROCESS, {TID}, 19))
refused(lambda: os.setpriority(os.PRIO_PGRP, {SUP}, 19))
refused(lambda: os.setpriority(os.PRIO_USER, os.getuid(), 19))
refused(lambda: os.sched_setaffinity({SUP}, {{0}}))
refused(lambda: os.sched_setaffinity({WITNESS}, {{0}}))
refused(lambda: os.sched_setscheduler({SUP}, os.SCHED_IDLE, os.sched_param(0)))
out.append("OK" if libc.syscall(251, 1, {SUP}, (3 << 13) | 7) == -1 and ctypes.get_errno() == 1 else "ALLOWED")
os.setpriority(os.PRIO_PROCESS, 0, 1)  # its own: as any process may
print(" ".join(out), os.getpriority(os.PRIO_PROCESS, 0))
"""


def test_the_supervisors_scheduling_is_out_of_reach(kernel: LaunchedKernel) -> None:
    """Nice value, affinity, policy and I/O priority aimed at the supervisor, one of its threads,
    its process group, its witness or every process of the user: refused and recorded; the
    kernel may still change its own."""
    sup = kernel.supervisor_pid()
    witness = psutil.Process(sup).children()[0].pid
    tid = next(t.id for t in psutil.Process(sup).threads() if t.id != sup)
    before = (psutil.Process(sup).nice(), psutil.Process(sup).cpu_affinity())
    kernel.mark()
    result = kernel.execute(SCHEDULING.format(SUP=sup, TID=tid, WITNESS=witness))
    assert result.status == "ok", result.error_text
    assert result.stdout.split() == ["OK"] * 8 + ["1"]
    assert (psutil.Process(sup).nice(), psutil.Process(sup).cpu_affinity()) == before
    denied = [e for e in kernel.new_events(until=lambda evs: sum(e["event"]["action"] == "sched-denied"
                                                                  for e in evs) >= 8, timeout=15)
              if e["event"]["action"] == "sched-denied"]
    assert {e["kernel_guard"]["syscall"] for e in denied} == {"setpriority", "sched_setaffinity",
                                                              "sched_setscheduler", "ioprio_set"}
    assert all(e["event"]["outcome"] == "failure" and e["kernel_guard"]["layer"] == "seccomp" for e in denied)


def test_an_argument_that_is_not_utf8_is_recorded_and_still_verifies(kernel: LaunchedKernel) -> None:
    """Bytes that are not UTF-8 in a refused exec's path and argument are recorded as \\xNN, and the
    supervisor's event verifies (its hash covers what the line holds): no false "changed" alarm."""
    kernel.mark()
    code = ("import os\ntry:\n    os.execv(b'/bin/sh\\xff', [b'sh', b'-c', b'\\xff\\xfe marker-nonutf8'])\n"
            "except OSError as exc:\n    print(exc.errno)")
    result = kernel.execute(code)
    assert result.status == "ok" and result.stdout.strip() in ("1", "2"), result.error_text
    denied = kernel.wait_event(lambda e: e["event"]["action"] in ("exec-denied", "exec-not-found")
                               and e["kernel_guard"]["layer"] == "seccomp"
                               and "marker-nonutf8" in " ".join(e["process"].get("args", [])))
    assert denied["process"]["args"][2] == "\\xff\\xfe marker-nonutf8"
    assert denied["process"]["executable"] == "/bin/sh\\xff"
    record_is_whole(kernel)
