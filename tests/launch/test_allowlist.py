"""Everyday work under the launcher, as uid 1000: an administrator's program allowlist works by
name along PATH, a compiler toolchain compiles under it (the recipe docs/launcher.md gives),
numba's cache for cell code works, and %store keeps its values across a restart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from launcher_support import NOTEBOOK_USER, LaunchedKernel, specs_on_path

REPO = Path(__file__).resolve().parents[2]


def toolchain() -> list[str]:
    """The real paths of gcc's programs on this machine: what the recipe tells an administrator
    to list (`gcc -print-prog-name=cc1` and friends)."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is missing: the toolchain recipe cannot be tried"
    names = [gcc, *(subprocess.run([gcc, f"-print-prog-name={p}"], capture_output=True, text=True).stdout.strip()
                    for p in ("cc1", "collect2", "as", "ld"))]
    return sorted({os.path.realpath(shutil.which(n) or n) for n in names})


@pytest.fixture(scope="module")
def compiler_spec(root: str) -> Iterator[str]:
    """A kernelspec whose profile is the default one plus the compiler toolchain (the recipe)."""
    profile = json.loads((REPO / "seccomp_profiles" / "default.json").read_text())
    profile["kernel_guard"]["landlock"]["exec"] = ["{python}", *toolchain()]
    path = os.path.join(root, "compiler.json")
    with open(path, "w") as fh:
        json.dump(profile, fh)
    os.chmod(path, 0o644)
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",), ("compiler", "--profile", path)) as prefix:
        yield prefix


COMPILE = """
import os, subprocess
open("hello.c", "w").write("int main(void) { return 0; }\\n")
env = {**os.environ, "PATH": "/nonexistent/bin:" + os.environ["PATH"]}  # a PATH search past a missing folder
done = subprocess.run(["gcc", "hello.c", "-o", "hello"], capture_output=True, text=True, env=env)
print(done.returncode, os.path.exists("hello"), done.stderr.strip()[-300:])
try:
    subprocess.run(["./hello"])
    print("RAN")
except PermissionError:
    print("REFUSED")
"""


def test_an_allowed_toolchain_compiles_by_name_and_its_output_does_not_run(compiler_spec: str, root: str) -> None:
    """gcc, found by name along a PATH whose first folder does not exist, compiles and links; the
    program it made is not on the allowlist, so it does not start; nothing else is refused."""
    kernel = LaunchedKernel(os.path.join(root, "compile"), "compiler", user=NOTEBOOK_USER).start()
    try:
        kernel.mark()
        result = kernel.execute(COMPILE, timeout=120)
        assert result.status == "ok", result.error_text
        lines = result.stdout.strip().splitlines()
        assert lines[0].startswith("0 True"), result.stdout
        assert lines[-1] == "REFUSED"
        def started_in(evs: list) -> set:
            return {os.path.basename(e["process"]["executable"]) for e in evs
                    if e["event"]["action"] == "exec-allowed" and e["kernel_guard"].get("image_confirmed")}

        def refused(evs: list) -> bool:  # the cell's last step: its record may still be on its way
            return any(e["event"]["outcome"] == "failure" and e["event"]["action"].startswith("exec")
                       and os.path.basename(e["process"].get("executable", "")) == "hello" for e in evs)

        events = kernel.new_events(until=lambda evs: {"cc1", "collect2"} <= started_in(evs) and refused(evs),
                                   timeout=30)
        started = started_in(events)
        assert any(name.startswith("x86_64-linux-gnu-gcc") or name == "gcc" for name in started), started
        assert "cc1" in started and "collect2" in started
        denied = [e for e in events if e["event"]["outcome"] == "failure"]
        assert [os.path.basename(e["process"]["executable"]) for e in denied] == ["hello"], \
            [(e["event"]["action"], e["event"]["reason"]) for e in denied]
    finally:
        kernel.shutdown()


NUMBA = """
import numba
@numba.njit(cache=True)
def plus_one(x):
    return x + 1
print(plus_one(1))
"""


def test_numba_caches_cell_code_and_store_outlives_a_restart(compiler_spec: str, root: str) -> None:
    """numba's cache for a cell's function works; a value kept with %store is there after the kernel
    restarts (its database is data in the user's profile, not start-up code)."""
    folder = os.path.join(root, "store")
    first = LaunchedKernel(folder, "guarded", user=NOTEBOOK_USER).start()
    try:
        result = first.execute(NUMBA, timeout=180)
        assert result.status == "ok" and result.stdout.strip() == "2", result.error_text
        assert first.execute("kept = {'answer': 42}\n%store kept").status == "ok"
    finally:
        first.shutdown()
    second = LaunchedKernel(folder, "guarded", user=NOTEBOOK_USER).start()
    try:
        result = second.execute("%store -r kept\nprint(kept['answer'])")
        assert result.status == "ok" and result.stdout.strip() == "42", result.error_text
    finally:
        second.shutdown()
