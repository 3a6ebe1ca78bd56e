"""Everyday cells in an extension kernel (the in-process tier), as uid 1000: library probes neither
break the cell nor fill the record with failures, and each refusal names its fix, last.

A quiet session of everyday cells (GitPython's import, a dulwich commit, joblib's physical core
count, platform, ctypes.util, temporary files and folders made, moved, copied and removed) must
record no failure the user did not cause; a program a library
starts for real is refused with that library's fix, repeated after the library's own error."""

from __future__ import annotations

import os
import textwrap
from typing import Iterator

import pytest
from conftest import GuardedKernel
from launcher_support import NOTEBOOK_USER, unprivileged_root

QUIET = {
    "GitPython imports without git": ("""
        import git
        print("OK", git.__name__)
    """, "OK git"),
    "a dulwich commit, with no hooks": ("""
        from dulwich import porcelain
        repo = porcelain.init("repo")
        open("repo/a.txt", "w").write("a")
        porcelain.add(repo, ["repo/a.txt"])
        commit = porcelain.commit(repo, message=b"first", author=b"A <a@example.org>",
                                  committer=b"A <a@example.org>")
        print("OK", len(commit))
    """, "OK 40"),
    "joblib's physical core count, without a warning": ("""
        import warnings
        warnings.simplefilter("error")
        from joblib.externals.loky import cpu_count
        print("OK", cpu_count(only_physical_cores=True) >= 1)
    """, "OK True"),
    "platform.processor()": ("""
        import platform
        print("OK", isinstance(platform.processor(), str))
    """, "OK True"),
    "files and folders that come and go": ("""
        import os, shutil, tempfile
        with tempfile.TemporaryDirectory() as tmp:
            os.makedirs(os.path.join(tmp, "a", "b"))
            with open(os.path.join(tmp, "a", "b", "x.csv"), "w") as fh:
                fh.write("1,2")
            os.replace(os.path.join(tmp, "a", "b", "x.csv"), os.path.join(tmp, "a", "y.csv"))
            shutil.copy2(os.path.join(tmp, "a", "y.csv"), os.path.join(tmp, "z.csv"))
            os.chmod(os.path.join(tmp, "z.csv"), 0o600)
            os.link(os.path.join(tmp, "z.csv"), os.path.join(tmp, "w.csv"))
            os.remove(os.path.join(tmp, "w.csv"))
            shutil.rmtree(os.path.join(tmp, "a"))
            os.makedirs("results", exist_ok=True)
            shutil.copyfile(os.path.join(tmp, "z.csv"), "results/z.csv")
            print("OK", sorted(os.listdir(tmp)), open("results/z.csv").read())
        shutil.rmtree("results")
    """, "OK ['z.csv'] 1,2"),
    "a program that is not installed": ("""
        import subprocess
        try:
            subprocess.run(["no-such-program-here"])
        except FileNotFoundError as exc:
            print("OK", exc.errno)
    """, "OK 2"),
}


@pytest.fixture(scope="module")
def kernel() -> Iterator[GuardedKernel]:
    """One extension kernel for the quiet session, enforcing, as the notebook user."""
    with unprivileged_root() as root:
        started = GuardedKernel(root, user=NOTEBOOK_USER).start()
        yield started
        started.shutdown()


@pytest.mark.parametrize("case", list(QUIET))
def test_an_everyday_cell_works_and_records_no_failure(kernel: GuardedKernel, case: str) -> None:
    """The cell prints what it would in a plain kernel, nothing on stderr from kernel_guard, and the
    record holds no failure for it (probes are recorded as library-probe or exec-not-found)."""
    code, expected = QUIET[case]
    kernel.mark()
    result = kernel.execute(textwrap.dedent(code), timeout=120)
    assert result.status == "ok", result.error_text
    assert result.stdout.strip().splitlines()[-1] == expected, result.stdout + result.stderr
    assert "kernel_guard" not in result.stderr, result.stderr
    events = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "cell-executed" for e in evs))
    failures = [(e["event"]["action"], e["event"].get("reason")) for e in events
                if e["event"]["outcome"] == "failure"]
    assert failures == []


def test_a_probe_is_recorded_as_what_it_is_and_real_use_names_the_fix(fresh: GuardedKernel) -> None:
    """GitPython's `git version` at import is a library-probe event naming the library, outcome
    unknown; a real git command is refused, and the fix (dulwich) is the last line."""
    fresh.mark()
    result = fresh.execute("import git")
    assert result.status == "ok", result.error_text
    events = fresh.new_events(until=lambda evs: any(e["event"]["action"] == "library-probe" for e in evs))
    (probe,) = [e for e in events if e["event"]["action"] == "library-probe"]
    assert probe["event"]["outcome"] == "unknown" and probe["kernel_guard"]["library"] == "GitPython"
    result = fresh.execute("git.Repo.init('repo').git.status()")
    assert result.status == "error"
    assert "dulwich" in [line for line in result.stderr.splitlines() if line.strip()][-1], result.stderr


def test_a_package_without_its_bytecode_cache_imports_and_records_no_failure(fresh: GuardedKernel) -> None:
    """A package in the Python environment with no ``__pycache__`` yet (a fresh checkout, an
    install that compiled nothing): the import system's attempt to create that folder is
    refused as any write there is, recorded once as bytecode-not-cached, not as a failure
    nobody caused, and the import works."""
    import shutil
    import sysconfig

    package = os.path.join(sysconfig.get_paths()["purelib"], "kg_uncached_package")
    os.makedirs(package)
    with open(os.path.join(package, "__init__.py"), "w") as fh:
        fh.write("VALUE = 42\n")
    try:
        fresh.mark()
        # Python's default, which PYTHONDONTWRITEBYTECODE (set on many CI machines) turns off
        result = fresh.execute("import sys\nsys.dont_write_bytecode = False\n"
                               "import kg_uncached_package\nprint(kg_uncached_package.VALUE)")
        assert result.status == "ok" and result.stdout.strip() == "42", result.error_text
        events = fresh.new_events(until=lambda evs: any(e["event"]["action"] == "cell-executed" for e in evs))
        assert [e["event"]["action"] for e in events if e["event"]["outcome"] == "failure"] == []
        noted = [e.get("file", {}).get("path") for e in events if e["event"]["action"] == "bytecode-not-cached"]
        assert noted == [os.path.join(package, "__pycache__")], noted
        assert not os.path.exists(os.path.join(package, "__pycache__"))
    finally:
        shutil.rmtree(package, ignore_errors=True)


@pytest.fixture()
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedKernel]:
    with unprivileged_root() as root:
        started = GuardedKernel(root, user=NOTEBOOK_USER).start()
        yield started
        started.shutdown()


FIXES = {
    "joblib's process backend": ("""
        from joblib import Parallel, delayed
        Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(4))
    """, 'prefer="threads"'),
    "a spawn context": ("""
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(1) as pool:
            pool.map(abs, [-1])
    """, "get_context('fork')"),
}


@pytest.mark.parametrize("case", list(FIXES))
def test_a_refusal_inside_a_library_names_its_fix_last(fresh: GuardedKernel, case: str) -> None:
    """The cell fails; the last line the user reads is kernel_guard's fix for that library."""
    code, fix = FIXES[case]
    result = fresh.execute(textwrap.dedent(code), timeout=180)
    assert result.status == "error"
    text = (result.error_text + "\n" + result.stderr).strip()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    assert fix in last, text[-2000:]
    assert "docs/troubleshooting.md" in last


@pytest.mark.parametrize("module,program,expected", [
    ("matplotlib.texmanager", "latex", "text.usetex'] = False"),
    ("torch._inductor.codecache", "gcc", 'backend="eager"'),
    ("graphviz.backend.execute", "dot", "allow the program"),
    ("distributed.nanny", "python3", "processes=False"),
    ("papermill.execute", "python3", "run notebooks outside this kernel"),
])
def test_each_library_gets_its_own_fix(module: str, program: str, expected: str) -> None:
    """Called from a library's module, a program that exists is refused with that library's fix."""
    from kernel_guard.audit import probes

    existing = "/bin/sh"  # the program exists: not an ENOENT answer
    code = compile("verdict = judge(EXE, [PROGRAM, '-x'], depth=1)", module.replace(".", "/") + ".py", "exec")
    scope = {"__name__": module, "judge": probes.judge, "EXE": existing, "PROGRAM": program}
    exec(code, scope)
    verdict, library = scope["verdict"]
    assert verdict == "refuse" and library is not None and expected in library.fix


def test_a_probe_is_told_by_its_first_words() -> None:
    """`git version` from GitPython is a probe; `git status` from GitPython is not; nothing from a cell is."""
    from kernel_guard.audit import probes

    def judged(module: str, argv: list) -> str:
        scope = {"__name__": module, "judge": probes.judge, "ARGV": argv}
        exec(compile("verdict = judge('/bin/sh', ARGV, depth=1)", "x.py", "exec"), scope)
        return scope["verdict"][0]

    assert judged("git.cmd", ["git", "version"]) == "probe"
    assert judged("git.cmd", ["git", "status"]) == "refuse"
    assert judged("__main__", ["git", "version"]) == "refuse"
    assert judged("joblib.externals.loky.backend.context", ["cat", "/proc/cpuinfo"]) == "probe"
    assert judged("joblib.externals.loky.backend.context", ["cat", "/etc/passwd"]) == "refuse"


def test_a_cffi_load_of_libc_is_an_alert_in_the_extension_tier(fresh: GuardedKernel) -> None:
    """cffi raises no audit event for its calls: in a kernel without OS layers, dlopen(None) is
    recorded as an alert that says so and names the launcher (the threat model's row)."""
    fresh.mark()
    result = fresh.execute("import cffi\nffi = cffi.FFI()\nffi.cdef('int getpid(void);')\n"
                           "print(ffi.dlopen(None).getpid() > 0)")
    assert result.status == "ok" and result.stdout.strip() == "True", result.error_text
    events = fresh.new_events(until=lambda evs: any(e["kernel_guard"].get("technique") == "cffi.dlopen" for e in evs))
    (alert,) = [e for e in events if e["kernel_guard"].get("technique") == "cffi.dlopen"]
    assert alert["event"]["kind"] == "alert" and "launcher kernelspec" in alert["event"]["reason"]
