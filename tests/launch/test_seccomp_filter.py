"""The seccomp filter module, exercised in child processes (a filter cannot be unloaded from pytest)."""

from __future__ import annotations

import json
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from kernel_guard.launch import profiles, seccomp_filter

I386_EXECVE = """
import ctypes, mmap, struct
page = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40,
                 prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
base = ctypes.addressof(ctypes.c_char.from_buffer(page))
page[256:266] = b"/bin/true\\0"
page[400:408] = struct.pack("<II", base + 256, 0)
code = (b"\\x53\\xb8" + struct.pack("<I", 11) + b"\\xbb" + struct.pack("<I", base + 256) + b"\\xb9"
        + struct.pack("<I", base + 400) + b"\\x31\\xd2\\xcd\\x80\\x5b\\xc3")
page[0:len(code)] = code
print("I386", ctypes.CFUNCTYPE(ctypes.c_int)(base)(), flush=True)
"""


def run_child(profile: str, body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Load ``profile`` in a fresh interpreter (closing any listener), then run ``body``."""
    code = textwrap.dedent(f"""
        import os, subprocess, threading, time
        from kernel_guard.launch import profiles, seccomp_filter
        started = threading.Event(); go = threading.Event(); seen = []
        def early():
            started.set(); go.wait()
            try:
                subprocess.run(["/bin/true"])
                seen.append("ran")
            except OSError as e:
                seen.append(e.errno)
        t = threading.Thread(target=early); t.start(); started.wait()
        seccomp_filter.set_no_new_privs()
        loaded = seccomp_filter.load(profiles.load_profile({profile!r}))
        if loaded.listener_fd is not None:
            os.close(loaded.listener_fd)
        go.set(); t.join()
        print("THREAD", seen[0], flush=True)
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=str(tmp_path))


def test_errno_profile_refuses_exec_in_every_thread(tmp_path: Path) -> None:
    """A profile with SCMP_ACT_ERRNO on exec gives EPERM, also in a thread started before the filter (TSYNC)."""
    profile = tmp_path / "errno.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["execve", "execveat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    proc = run_child(str(profile), """
        st = seccomp_filter.proc_status()
        print("STATUS", st["Seccomp"], st["NoNewPrivs"], seccomp_filter.listener_fds())
        try:
            subprocess.run(["/bin/true"])
        except PermissionError:
            print("EPERM")
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "THREAD 1" in proc.stdout and "STATUS 2 1 []" in proc.stdout and "EPERM" in proc.stdout


def test_notify_without_listener_fails_closed_with_enosys(tmp_path: Path) -> None:
    """With the listener closed and no supervisor, every notified exec (x86_64, x32, i386) fails with ENOSYS."""
    proc = run_child("default", textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(0x40000000 | 520, b"/bin/true", None, None)
        print("X32", rc, ctypes.get_errno(), flush=True)
    """) + I386_EXECVE, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "THREAD 38" in proc.stdout and "X32 -1 38" in proc.stdout and "I386 -38" in proc.stdout


def test_an_abi_left_out_of_the_filter_kills_the_process(tmp_path: Path) -> None:
    """With only x86_64 in the profile, an i386 syscall (int 0x80) kills the process (bad-arch action)."""
    profile = tmp_path / "native-only.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                                   "syscalls": [{"names": ["execve", "execveat"], "action": "SCMP_ACT_ERRNO"}]}))
    proc = run_child(str(profile), I386_EXECVE, tmp_path)
    assert proc.returncode == -signal.SIGSYS and "I386" not in proc.stdout


def test_default_architectures_cover_every_abi_of_this_machine() -> None:
    """On x86_64 the filter covers x86_64, i386 and x32; on aarch64, aarch64 and arm."""
    expected = {"x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
                "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")}[platform.machine()]
    assert seccomp_filter.default_architectures() == expected


def test_syscall_names_are_checked_against_libseccomp() -> None:
    """Known names (also pseudo-syscalls of other ABIs) resolve; made-up ones do not."""
    assert seccomp_filter.syscall_known("execveat") and seccomp_filter.syscall_known("socketcall")
    assert not seccomp_filter.syscall_known("execve_please")


def test_dropping_cap_sys_ptrace_clears_every_set(tmp_path: Path) -> None:
    """drop_capability removes CAP_SYS_PTRACE from the effective, permitted and bounding sets."""
    code = ("from kernel_guard.launch import seccomp_filter as s\nprint(s.drop_capability(s.CAP_SYS_PTRACE))\n"
            "print({l.split(':')[0]: int(l.split()[1], 16) >> 19 & 1 for l in open('/proc/self/status') "
            "if l.startswith(('CapEff', 'CapPrm', 'CapBnd'))})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == "{'CapPrm': 0, 'CapEff': 0, 'CapBnd': 0}"


def test_build_filter_skips_rules_equal_to_the_default() -> None:
    """A Docker-style profile repeating the default action for some syscalls still builds."""
    profile = profiles.parse_profile({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["write"], "action": "SCMP_ACT_ERRNO"}]},
        "inline.json")
    assert seccomp_filter.build_filter(profile) is not None


def test_the_calls_whose_rules_read_arguments_come_first_in_the_program(tmp_path: Path) -> None:
    """With the launcher's truncation and image-gate rules, the BPF program tests openat, then brk,
    before any other call of the native ABI: every other call's action is constant, so the kernel's
    cache answers for it and the program runs for these only."""
    profile = profiles.load_profile("default")
    extra = seccomp_filter.truncation_rules() + seccomp_filter.image_gate_rules()
    with open(tmp_path / "filter.pfc", "w+") as fh:
        seccomp_filter.build_filter(profile, extra).export_pfc(fh)
        fh.seek(0)
        native = fh.read().split("# filter for arch")[1]
    tested = [line.split('"')[1] for line in native.splitlines() if "filter for syscall" in line]
    assert tested[:2] == ["openat", "brk"], tested[:5]
