"""The kernel's Landlock domain under the launcher, as the notebook user (uid 1000).

Writes only beneath the writable roots, whoever owns the rest; only the kernel's
own interpreter may be started, so everyday parallel work runs; every other
program is refused; and where Landlock is missing the kernel still runs, with
every exec refused and the status saying so.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import Iterator

import pytest
from conftest import GuardedKernel
from launcher_support import NOTEBOOK_USER, LaunchedKernel, specs_on_path, unprivileged_root

from kernel_guard.launch import landlock
from kernel_guard.launch.profiles import builtin_dir


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with unprivileged_root() as folder:
        yield folder


def _profile_without_shared_roots(root: str) -> str:
    """The default profile, writable only beneath home and the notebook folder: the
    test's folders may lie under /tmp (wherever the checkout is)."""
    with open(os.path.join(builtin_dir(), "default.json")) as fh:
        data = json.load(fh)
    data["kernel_guard"]["landlock"]["writable"] = ["{home}", "{notebook_dir}", "/dev/null"]
    path = os.path.join(root, "home-only.json")
    with open(path, "w") as fh:
        json.dump(data, fh)
    os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="module")
def kernel(root: str) -> Iterator[LaunchedKernel]:
    """A launcher kernel as uid 1000 whose audit hook only records; writable: home and notebook folder."""
    with specs_on_path(os.path.join(root, "prefix"), ("guarded", "--profile", _profile_without_shared_roots(root))):
        started = LaunchedKernel(os.path.join(root, "k"), "guarded", env={"KERNEL_GUARD_MODE": "audit"},
                                 user=NOTEBOOK_USER).start()
        yield started
        started.shutdown()


@pytest.fixture(scope="module")
def enforcing(root: str) -> Iterator[LaunchedKernel]:
    """The production setting: every layer enforcing."""
    with specs_on_path(os.path.join(root, "prefix-e"), ("guarded",)):
        started = LaunchedKernel(os.path.join(root, "e"), "guarded", user=NOTEBOOK_USER).start()
        yield started
        started.shutdown()


def run(kernel: GuardedKernel, code: str) -> str:
    result = kernel.execute(textwrap.dedent(code), timeout=90)
    assert result.status == "ok", result.error_text
    return result.stdout


PARALLEL = {
    "multiprocessing spawn Pool": """
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(2) as pool:
            print(pool.map(abs, [-1, -2, -3]))
    """,
    "ProcessPoolExecutor with forkserver": """
        import concurrent.futures as cf, multiprocessing as mp
        with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as ex:
            print(list(ex.map(abs, [-1, -2, -3])))
    """,
    "a fork Pool": """
        import multiprocessing as mp
        with mp.get_context("fork").Pool(2) as pool:
            print(pool.map(abs, [-1, -2, -3]))
    """,
    "subprocess of the interpreter": """
        import subprocess, sys
        print(subprocess.run([sys.executable, "-c", "print([1, 2, 3])"], capture_output=True, text=True).stdout)
    """,
}


@pytest.mark.parametrize("case", sorted(PARALLEL))
def test_everyday_parallel_work_runs_in_an_enforcing_kernel(enforcing: LaunchedKernel, case: str) -> None:
    """spawn, forkserver and fork pools and the interpreter itself start: its exec is recorded as allowed."""
    enforcing.mark()
    assert run(enforcing, PARALLEL[case]).strip() == "[1, 2, 3]"
    if "fork Pool" not in case:
        event = enforcing.wait_event(lambda e: e["event"]["action"] == "exec-allowed")
        assert event["event"]["outcome"] == "success" and event["kernel_guard"]["layer"] == "landlock"
        assert os.path.realpath(event["process"]["executable"]) == os.path.realpath(sys.executable)


def test_other_programs_are_refused_even_when_the_audit_hook_lets_them(kernel: LaunchedKernel) -> None:
    """/bin/true, the ELF loader started directly, and a script in the home folder: refused and recorded."""
    loader = landlock.elf_interpreter(os.path.realpath(sys.executable))
    script = os.path.join(kernel.home, "tool.py")
    kernel.mark()
    out = run(kernel, f"""
        import os, subprocess, sys
        open({script!r}, "w").write("#!" + sys.executable + "\\nprint('script ran')\\n")
        os.chmod({script!r}, 0o755)
        for argv in (["/bin/true", "plain"], [{loader!r}, "/bin/true", "loader"], [{script!r}, "script"]):
            try:
                subprocess.run(argv)
                print("RAN", argv[-1])
            except PermissionError:
                print("REFUSED", argv[-1])
    """)
    assert out.split() == ["REFUSED", "plain", "REFUSED", "loader", "REFUSED", "script"], out
    for marker in ("plain", "loader", "script"):
        kernel.wait_event(lambda e, m=marker: e["event"]["action"] == "exec-denied"
                          and e["kernel_guard"]["layer"] == "seccomp" and m in e["process"]["args"])


def test_writes_outside_the_writable_roots_fail_whoever_owns_the_folder(kernel: LaunchedKernel, root: str) -> None:
    """A folder the notebook user owns, outside home and the notebook folder, cannot be changed; home can."""
    outside = os.path.join(root, "user-owned-env", "site-packages")
    os.makedirs(outside)
    with open(os.path.join(outside, "module.py"), "w") as fh:
        fh.write("GOOD = True\n")
    for folder in (outside, os.path.dirname(outside)):
        os.chown(folder, *NOTEBOOK_USER)
    os.chown(os.path.join(outside, "module.py"), *NOTEBOOK_USER)
    out = run(kernel, f"""
        import os
        tries = {{
            "append": lambda: open({os.path.join(outside, 'module.py')!r}, "a").write("EVIL = 1"),
            "create": lambda: open({os.path.join(outside, 'planted.pth')!r}, "w"),
            "rename away": lambda: os.rename({outside!r}, {outside + '-old'!r}),
            "remove": lambda: os.unlink({os.path.join(outside, 'module.py')!r}),
        }}
        for name, attempt in tries.items():
            try:
                attempt()
                print("CHANGED", name)
            except PermissionError:
                print("REFUSED", name)
        open(os.path.expanduser("~/notes.txt"), "w").write("ok")
        print("home ok")
    """)
    assert "CHANGED" not in out and out.count("REFUSED") == 4 and "home ok" in out, out
    with open(os.path.join(outside, "module.py")) as fh:
        assert fh.read() == "GOOD = True\n"


def test_truncation_outside_the_roots_fails_by_every_route_and_works_inside(kernel: LaunchedKernel,
                                                                           root: str) -> None:
    """Landlock ABI 3+ confines truncation: ``truncate(2)``, ``O_TRUNC`` with or without
    write access, ``openat2`` and libc through ctypes all fail (EACCES) on a user-owned file
    outside the roots, which keeps its content; in home a file truncates by path and through
    a handle, and the supervisor is asked about none of it (no ``truncate-denied``)."""
    assert kernel.value("__import__('kernel_guard.status').status.collect()['layers']['landlock']['abi']") \
        >= landlock.TRUNCATE_ABI, "this test needs Landlock ABI 3 (Linux 6.2) or later"
    outside = os.path.join(root, "user-owned-log")
    os.makedirs(outside)
    target = os.path.join(outside, "events.jsonl")
    with open(target, "w") as fh:
        fh.write("the record\n")
    for path in (outside, target):
        os.chown(path, *NOTEBOOK_USER)
    kernel.mark()
    out = run(kernel, f"""
        import ctypes, errno, os
        libc = ctypes.CDLL(None, use_errno=True)

        def openat2(path, flags):
            how = (ctypes.c_uint64 * 3)(flags, 0, 0)  # struct open_how
            fd = libc.syscall(437, -100, path.encode(), ctypes.byref(how), 24)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "openat2")
            os.close(fd)

        def libc_truncate(path):
            if libc.truncate(path.encode(), ctypes.c_long(0)) != 0:
                raise OSError(ctypes.get_errno(), "truncate")

        def routes(path):
            return {{
                "truncate": lambda: os.truncate(path, 0),
                "O_RDONLY|O_TRUNC": lambda: os.close(os.open(path, os.O_RDONLY | os.O_TRUNC)),
                "O_WRONLY|O_TRUNC": lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC)),
                "openat2": lambda: openat2(path, os.O_RDONLY | os.O_TRUNC),
                "libc truncate": lambda: libc_truncate(path),
            }}

        for name, attempt in routes({target!r}).items():
            try:
                attempt()
                print("CHANGED", name)
            except OSError as exc:
                print("REFUSED", name, errno.errorcode[exc.errno])
        mine = os.path.expanduser("~/scratch.txt")
        for name, attempt in routes(mine).items():
            open(mine, "w").write("0123456789")
            attempt()
            print("home", name, os.path.getsize(mine))
        open(mine, "w").write("0123456789")
        with open(mine, "r+") as fh:
            fh.truncate(4)
        print("home handle", open(mine).read())
    """)
    assert "CHANGED" not in out and out.count("EACCES") == 5, out
    assert out.count(" 0\n") == 5 and "home handle 0123" in out, out
    with open(target) as fh:
        assert fh.read() == "the record\n"
    events = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "cell-executed" for e in evs),
                               timeout=10)
    assert any(e["event"]["action"] == "cell-executed" for e in events), events
    assert not [e for e in events if e["event"]["action"] == "truncate-denied"], events


def test_status_shows_the_abi_the_roots_and_the_allowlist(kernel: LaunchedKernel) -> None:
    """%guard_status names the ABI, the writable roots and the allowed programs, as applied,
    and whether the domain confines truncation (ABI 3+)."""
    status = kernel.value("__import__('kernel_guard.status').status.collect()['layers']['landlock']")
    assert status["active"] and status["abi"] == landlock.abi_version()
    confined = "writes and truncation beneath" in status["state"]
    assert confined == (status["abi"] >= landlock.TRUNCATE_ABI), status
    assert os.path.realpath(sys.executable) in status["programs"]
    assert kernel.home in status["writable"] and kernel.work in status["writable"]


@pytest.mark.parametrize("abi", range(1, 8))
def test_truncation_is_the_domains_from_abi_3_and_the_filters_below(abi: int) -> None:
    """The right is handled exactly where the kernel knows it and granted on files too
    (``/dev/null`` is a root); an applied domain says so, which spares the launcher the
    filter's truncation rules."""
    handled = bool(landlock.write_rights(abi) & landlock.ACCESS_FS_TRUNCATE)
    assert handled == (abi >= landlock.TRUNCATE_ABI) == landlock.LandlockResult(abi, True).confines_truncation
    assert landlock._FILE_RIGHTS & landlock.ACCESS_FS_TRUNCATE
    assert not landlock.LandlockResult(abi, False).confines_truncation
    needs = landlock.LandlockResult(abi, True, writable=("/tmp",)).needs_truncation_rules
    assert needs == (abi < landlock.TRUNCATE_ABI)
    assert not landlock.LandlockResult(abi, True).needs_truncation_rules  # nothing writable: nothing to truncate


# A parent whose seccomp filter makes Landlock's syscalls fail with ENOSYS, then execs
# the launcher: a kernel without Landlock, as the launcher sees it.
NO_LANDLOCK = ("import os, sys\nfrom kernel_guard.launch import seccomp_filter\nsc = seccomp_filter.bindings()\n"
               "seccomp_filter.set_no_new_privs()\nf = sc.SyscallFilter(sc.ALLOW)\n"
               "[f.add_rule(sc.ERRNO(38), n) for n in ('landlock_create_ruleset', 'landlock_add_rule', "
               "'landlock_restrict_self')]\nf.load()\n"
               "os.execv(sys.executable, [sys.executable, '-m', 'kernel_guard.launch', *sys.argv[1:]])")


def test_without_landlock_the_kernel_runs_every_exec_is_refused_and_status_says_so(root: str) -> None:
    """No Landlock: the kernel starts with seccomp and the supervisor; spawn is refused; status says why."""
    argv = [sys.executable, "-c", NO_LANDLOCK, "--profile", "default", "-f", "{connection_file}"]
    kernel = GuardedKernel(os.path.join(root, "no-landlock"), argv=argv, user=NOTEBOOK_USER).start()
    try:
        status = kernel.execute("from kernel_guard import status\nlayers = status.collect()['layers']\n"
                                "print(layers['landlock']['active'], layers['seccomp']['active'], "
                                "layers['supervisor']['active'])\nprint(layers['landlock']['reason'])")
        lines = status.stdout.splitlines()
        assert lines[0] == "False True True" and "not available" in lines[1], status.stdout
        # the guard sets multiprocessing up when a cell first imports it, not at the start
        # (imported, it would cost every logging record of the kernel a look-up); the
        # custodian's line parser is the supervisor's, never loaded in the kernel
        before = kernel.execute("import sys\nprint('multiprocessing' in sys.modules, "
                                "'kernel_guard.launch._linecheck' in sys.modules, "
                                "'kernel_guard.launch.custodian_sink' in sys.modules)")
        assert before.stdout.strip() == "False False True", before.stdout + before.error_text
        spawn = kernel.execute("import multiprocessing as mp\nprint(mp.get_start_method())\n"
                               "mp.get_context('spawn').Process(target=print).start()")
        assert spawn.stdout.strip() == "fork", spawn.stdout
        assert spawn.status == "error" and "kernel_guard refused" in spawn.error_text, spawn.error_text
    finally:
        kernel.shutdown()
