"""The witness program (witness.c) on its own, and both forms of the witness under a
stand-in kernel: each records the supervisor's loss, and only its loss.

Everything here runs as the notebook user (uid 1000, gid 100)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Iterator, Optional

import pytest
from launcher_support import NOTEBOOK_USER

from kernel_guard.launch import hardening, seccomp_filter
from kernel_guard.launch import witness as witnesses

AS_USER = {"user": NOTEBOOK_USER[0], "group": NOTEBOOK_USER[1], "extra_groups": []}


def _code(program: str) -> str:
    number, _, code = program.partition(" ")
    assert number.isdigit() and code, program
    return code


def run_witness(said: Optional[bytes], recorder: list[str], filter_hex: Optional[str] = None,
                exec_at: int = hardening.WITNESS_EXEC_AT) -> subprocess.CompletedProcess:
    """Start the program as the supervisor does (a pipe, the interpreter's descriptor, its filter),
    say ``said`` (None: nothing) and close the pipe, as a clean end or a loss would."""
    read_end, write_end = os.pipe()
    interpreter = os.open(sys.executable, os.O_RDONLY)
    code = filter_hex if filter_hex is not None else _code(hardening.build_witness())
    argv = [witnesses.PROGRAM, str(read_end), str(interpreter), str(exec_at), code, "--", *recorder]
    try:
        proc = subprocess.Popen(argv, pass_fds=(read_end, interpreter), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **AS_USER)
    finally:
        os.close(read_end)
        os.close(interpreter)
    if said:
        os.write(write_end, said)
    os.close(write_end)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, f"{proc.pid}\n{out}", err)


PRINT_PID = [sys.executable, "-I", "-c", "import os; print('recorder', os.getpid())"]


def test_the_program_was_built() -> None:
    """The install built it (README's commands): without it every kernel forks a Python witness."""
    assert witnesses.program() == witnesses.PROGRAM


def test_a_clean_stop_starts_no_recorder() -> None:
    result = run_witness(b"stopped", PRINT_PID)
    assert result.returncode == 0 and "recorder" not in result.stdout, result


@pytest.mark.parametrize("said", [None, b"stop", b"stopped!", b"stopped" * 3, b"\0"])
def test_anything_but_a_clean_stop_starts_the_recorder_in_the_same_process(said: Optional[bytes]) -> None:
    """A loss: the program becomes the recorder, same pid (the kernel's filter keeps guarding it)."""
    result = run_witness(said, PRINT_PID)
    pid, _, printed = result.stdout.partition("\n")
    assert result.returncode == 0 and printed.split() == ["recorder", pid], result


RECORDER_CHECKS = textwrap.dedent("""
    import ctypes, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    nr, supervisor_filter, exec_at = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    def execveat(fd, path, flags):
        argv = (ctypes.c_char_p * 2)(b"true", None)
        result = libc.syscall(ctypes.c_long(nr), ctypes.c_long(fd), ctypes.c_char_p(path), argv, argv,
                              ctypes.c_long(flags))
        return ctypes.get_errno() if result == -1 else 0

    def execve():
        try:
            os.execv("/bin/true", ["true"])
        except OSError as exc:
            return exc.errno

    def is_open(fd):
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    other = os.open("/bin/true", os.O_RDONLY)
    seen = {"inherited": is_open(exec_at), "execve": execve(),
            "execveat another descriptor": execveat(other, b"", 0x1000),
            "execveat a path": execveat(-100, b"/bin/true", 0)}
    os.dup2(other, exec_at)  # a program at the allowed number: only the supervisor's filter stops it
    from kernel_guard.launch import hardening
    hardening.harden(supervisor_filter)
    seen["execveat at the number, hardened"] = execveat(exec_at, b"", 0x1000)
    print(json.dumps(seen))
""")


def test_the_recorder_inherits_no_descriptor_and_starts_no_program() -> None:
    """Under the program's filter, the recorder can neither execve nor execveat any other descriptor or
    path; the interpreter's descriptor closed at its exec; hardened as the recorder hardens itself, not
    even a program placed at the allowed number starts."""
    nr = seccomp_filter.bindings().resolve_syscall(seccomp_filter.bindings().Arch.NATIVE, "execveat")
    recorder = [sys.executable, "-I", "-c", RECORDER_CHECKS, str(nr), hardening.build(),
                str(hardening.WITNESS_EXEC_AT)]
    result = run_witness(None, recorder)
    _, _, printed = result.stdout.partition("\n")
    assert result.returncode == 0, result
    assert json.loads(printed) == {"inherited": False, "execve": 1, "execveat another descriptor": 1,
                                   "execveat a path": 1, "execveat at the number, hardened": 1}


@pytest.mark.parametrize("argv, why", [
    (["3", "4", "10", "00", "x"], "usage"),                       # no "--"
    (["3", "3", "10", "00", "--", "x"], "distinct"),               # one descriptor for both
    (["3", "4", "2", "00", "--", "x"], "distinct"),                # the interpreter onto stderr
    (["3", "four", "10", "00", "--", "x"], "distinct"),
    (["3", "4", "10", "00", "--"], "usage"),                       # no recorder
])
def test_a_malformed_command_line_is_refused_with_its_usage(argv: list[str], why: str) -> None:
    proc = subprocess.run([witnesses.PROGRAM, *argv], capture_output=True, text=True, timeout=30, **AS_USER)
    assert proc.returncode == 2 and why in proc.stderr, proc


@pytest.mark.parametrize("filter_hex", ["00", "zz" * 8, "0" * 24, ""])
def test_a_filter_that_is_no_program_stops_it_before_any_recorder(filter_hex: str) -> None:
    """No filter, no witness: it says why and starts nothing, even on a loss."""
    result = run_witness(None, PRINT_PID, filter_hex=filter_hex)
    assert result.returncode == 1 and "cannot load its filter" in result.stderr, result
    assert "recorder" not in result.stdout


# -- both forms under a stand-in kernel -------------------------------------------

STAND_IN = textwrap.dedent("""
    import json, os, signal, sys
    from kernel_guard import config
    from kernel_guard.launch import handover, supervisor_handle
    guard, _ = config.load_config()
    handed = json.loads(handover.hand_over(guard))
    if sys.argv[1] == "fork":
        del handed["witness_filter"]  # as where the program was not built
    env = {**os.environ, handover.ENV: json.dumps(handed)}
    handle = supervisor_handle.start("enforce", "stand-in", "default", env)
    print(json.dumps({"supervisor": handle.pid, "witness": handle.witness}), flush=True)
    if sys.stdin.readline().strip() == "kill":
        os.kill(handle.pid, signal.SIGKILL)
    print("done", flush=True)
    sys.stdin.readline()
""")


@pytest.fixture
def sink(root: str) -> Iterator[str]:
    folder = os.path.join(root, f"stand-in-{time.monotonic_ns()}")
    os.makedirs(folder)
    os.chown(folder, *NOTEBOOK_USER)
    yield os.path.join(folder, "events.jsonl")


def _events(path: str) -> list[dict]:
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("form", ["program", "fork"])
def test_each_form_of_witness_records_the_supervisors_loss(form: str, sink: str) -> None:
    """The program where it was built (else a fork of the supervisor) records a SIGKILLed supervisor's
    loss, marked as the witness's, from its own pid; a fork is an interpreter, the program is not."""
    proc = subprocess.Popen([sys.executable, "-I", "-c", STAND_IN, form], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd="/",
                            env={**os.environ, "KERNEL_GUARD_SINKS": f"file://{sink}"}, **AS_USER)
    try:
        pids = json.loads(proc.stdout.readline())
        exe = os.readlink(f"/proc/{pids['witness']}/exe")
        expected = os.path.realpath(witnesses.PROGRAM) if form == "program" else os.path.realpath(sys.executable)
        assert exe == expected
        proc.stdin.write("kill\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        deadline = time.monotonic() + 30
        while not (lost := [e for e in _events(sink) if e["event"]["action"] == "supervisor-lost"]):
            assert time.monotonic() < deadline, [e["event"]["action"] for e in _events(sink)]
            time.sleep(0.1)
        (event,) = lost
        assert event["kernel_guard"]["recorded_by"] == "witness"
        assert event["process"]["pid"] == pids["witness"] and event["kernel_guard"]["supervisor_pid"] == pids["supervisor"]
    finally:
        proc.communicate("\n", timeout=30)

