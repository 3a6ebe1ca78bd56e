"""The supervisor's start as memory asks it (#27): what the launcher hands over, its own
filter loaded without libseccomp, the witness forked hardened, and both kept small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Iterator

import psutil
import pytest
from launcher_support import LaunchedKernel, NOTEBOOK_USER, recording_kernel

from kernel_guard import config
from kernel_guard.launch import handover, hardening, notifications, supervisor, supervisor_handle
from kernel_guard.launch import witness as witnesses


def _handed() -> dict:
    guard, _ = config.load_config()
    return handover.received(handover.hand_over(guard))


# -- what the launcher hands over ---------------------------------------------------

def test_the_settings_handed_over_are_the_launchers_guard_taken_as_they_are() -> None:
    """Every setting the supervisor's record uses arrives with the guard's value; --spool-dir wins."""
    guard, _ = config.load_config()
    settings = handover.take_settings(_handed(), "/var/spool/kg")
    assert settings is not None and set(handover.kinds()) <= set(guard.trait_names())
    for name in handover.kinds():
        expected = "/var/spool/kg" if name == "spool_dir" else guard.trait_values()[name]
        assert getattr(settings, name) == expected, name
    assert settings.sink_options() == guard.sink_options()
    with pytest.raises(AttributeError):
        settings.mode = "audit"


@pytest.mark.parametrize("name, value", [("mode", "relaxed"), ("sinks", ["ftp://x"]), ("sinks", []),
                                         ("queue_size", True), ("queue_size", "100"), ("http_gzip", 1),
                                         ("redact_patterns", [3]), ("unknown", 1)])
def test_a_setting_not_of_its_kind_voids_the_settings(name: str, value: object) -> None:
    """One bad value (or an unknown one) voids them all: the supervisor then reads them through traitlets."""
    handed = _handed()
    handed["settings"][name] = value
    assert handover.take_settings(handed) is None


def test_a_missing_setting_voids_the_settings() -> None:
    """Settings without one of theirs (or none at all) are void as well."""
    handed = _handed()
    del handed["settings"]["queue_size"]
    assert handover.take_settings(handed) is None
    assert handover.take_settings({}) is None and handover.take_settings({"settings": []}) is None


def test_the_handed_modes_are_the_guards() -> None:
    """handover.py keeps its own copy of the modes (config's module imports traitlets)."""
    assert handover._MODES == config.MODES


def test_the_syscall_table_arrives_whole_or_stops_the_supervisor() -> None:
    """The table the launcher numbered with libseccomp comes back as it was; a bad one is refused."""
    assert handover.take_syscalls(_handed()) == notifications.notified_syscall_table()
    for broken in ({}, {"syscalls": []}, {"syscalls": [[1, 2, "kill"]]}, {"syscalls": [["x", 2, "kill", "x86_64"]]}):
        with pytest.raises(ValueError):
            handover.take_syscalls(broken)


# -- its own filter ----------------------------------------------------------------

HARDENED = textwrap.dedent("""
    import ctypes, json, os, sys
    from kernel_guard.launch import hardening
    if sys.argv[2] == "ctypes":
        hardening._native = None
    hardening.harden(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    try:
        os.execv("/bin/true", ["true"])
    except OSError as exc:
        refused = exc.errno
    print(json.dumps({"dumpable": libc.prctl(3, 0, 0, 0, 0), "seccomp": status["Seccomp"].strip(),
                      "nnp": status["NoNewPrivs"].strip(), "exec": refused,
                      "libseccomp": "libseccomp" in open("/proc/self/maps").read()}))
""")


@pytest.mark.parametrize("calls", ["native", "ctypes"])
def test_the_filter_compiled_by_the_launcher_is_loaded_without_libseccomp(calls: str) -> None:
    """The program libseccomp compiled refuses exec (EPERM) in a process that never maps libseccomp,
    which is non-dumpable and has no new privileges: through ``_hardening.c`` (built by the
    README's set-up: its absence fails) and through ctypes, where it was not built."""
    from kernel_guard.launch import _hardening  # noqa: F401

    program = hardening.build()
    number, code = program.split(" ")
    assert int(number) > 0 and len(bytes.fromhex(code)) % 8 == 0
    proc = subprocess.run([sys.executable, "-I", "-c", HARDENED, program, calls], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"dumpable": 0, "seccomp": "2", "nnp": "1", "exec": 1, "libseccomp": False}


@pytest.mark.parametrize("handed", ["", "error SeccompUnavailable: no libseccomp", "317 abc", "317 00"])
def test_a_missing_or_broken_filter_is_never_taken_for_one(handed: str) -> None:
    """No program, the launcher's error, or bytes that are no BPF program: harden() raises."""
    with pytest.raises((OSError, ValueError)):
        hardening.harden(handed)


@pytest.mark.parametrize("code", [b"", b"\0" * 7, b"\0" * 9, b"\0" * 8 * 65536])
def test_the_native_loader_takes_only_whole_programs(code: bytes) -> None:
    """_hardening.load_filter refuses bytes that are no BPF program (before any call is made)."""
    from kernel_guard.launch import _hardening

    with pytest.raises(ValueError, match="not a BPF program"):
        _hardening.load_filter(317, code)


def test_the_supervisor_reads_the_command_line_the_launcher_writes() -> None:
    """supervisor_argv's words parse back; an unknown option or a missing mode is an error, not a guess."""
    argv = supervisor_handle.supervisor_argv(5, 42, "enforce", "kid", "default", scoped=True)
    argv = argv[argv.index("--fd"):]
    args = supervisor._parse([*argv, "--events-fd", "7", "--spool-dir", ""])
    assert (args.fd, args.kernel_pid, args.mode, args.kernel_id, args.profile) == (5, 42, "enforce", "kid", "default")
    assert args.scoped and args.events_fd == 7 and args.spool_dir == ""
    for bad in (["--fd", "5", "--kernel-pid", "1"], [*argv, "--verbose"], [*argv, "--mode"]):
        with pytest.raises(ValueError):
            supervisor._parse(bad)


def test_the_private_folder_option_takes_open_descriptors_and_keeps_them_from_the_witness(tmp_path) -> None:
    """--private-folder parses back to descriptors no exec inherits; a closed one or a bad name is an error."""
    from kernel_guard.launch.leftovers import PrivateFolder

    argv = supervisor_handle.supervisor_argv(5, 42, "enforce", "kid", "default")
    argv = argv[argv.index("--fd"):]
    held = PrivateFolder.hold(str(tmp_path))
    try:
        for fd in (held.parent_fd, held.folder_fd):
            os.set_inheritable(fd, True)  # as Popen's pass_fds leaves them in the supervisor
        args = supervisor._parse([*argv, "--private-folder", held.option()])
        assert args.private_folder.name == tmp_path.name
        assert not any(os.get_inheritable(fd) for fd in (held.parent_fd, held.folder_fd))
    finally:
        held.close()
    for bad in ("100000,100001,kernel-guard-ipython-x", "3,4,../x", "3,4"):
        with pytest.raises(ValueError, match="--private-folder"):
            supervisor._parse([*argv, "--private-folder", bad])


def test_the_supervisors_first_imports_leave_out_traitlets_and_libseccomp() -> None:
    """What the supervisor imports before its witness is forked: no traitlets, no libseccomp bindings,
    no typing (all of it would be copied into the witness)."""
    code = ("import sys; import kernel_guard.launch.supervisor, kernel_guard.launch.witness; "
            "print(sorted(m for m in ('traitlets', 'pyseccomp', 'seccomp', 'typing', 'argparse') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_the_packages_public_names_are_all_there_when_first_used() -> None:
    """`import kernel_guard` loads no settings classes, yet every name of __all__ resolves on use."""
    code = ("import sys, kernel_guard; before = 'traitlets' in sys.modules; "
            "missing = [n for n in kernel_guard.__all__ if getattr(kernel_guard, n, None) is None]; "
            "print(before, missing, set(kernel_guard.__all__) <= set(dir(kernel_guard)))")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False [] True", proc.stderr


# -- the running pair --------------------------------------------------------------

@pytest.fixture(scope="module")
def kernel(spec: str, root: str) -> Iterator[LaunchedKernel]:
    """A launcher kernel as uid 1000 whose audit hook only records: exec reaches the filter."""
    yield from recording_kernel(root, "witnessed")


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)


def test_the_witness_is_the_program_hardened_from_its_start(kernel: LaunchedKernel) -> None:
    """The witness is the small program, not an interpreter; like the supervisor it has its filter,
    no new privileges and is non-dumpable (its /proc files are root's though it runs as uid 1000);
    neither maps libseccomp."""
    sup = kernel.supervisor_pid()
    (witness,) = psutil.Process(sup).children()
    assert os.readlink(f"/proc/{witness.pid}/exe") == os.path.realpath(witnesses.PROGRAM)
    for pid in (sup, witness.pid):
        status = _status(pid)
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1", status
        assert status["Uid"].split()[0] == str(NOTEBOOK_USER[0])
        assert os.stat(f"/proc/{pid}/status").st_uid == 0  # non-dumpable
        with open(f"/proc/{pid}/maps") as fh:
            assert "libseccomp" not in fh.read()


def test_exec_refused_in_the_kernel_is_recorded_by_the_supervisor_with_the_handed_settings(
        kernel: LaunchedKernel) -> None:
    """The supervisor's own records reach the kernel's sink (the settings it was handed) and say who wrote them."""
    kernel.mark()
    result = kernel.execute("import os\ntry:\n    os.execv('/bin/true', ['true', 'witness-test'])\n"
                            "except OSError as exc:\n    print(exc.errno)")
    assert result.stdout.strip() == "1", result.stdout
    event = kernel.wait_event(lambda e: e["event"]["action"] == "exec-denied"
                              and "witness-test" in e.get("process", {}).get("args", []))
    assert event["kernel_guard"]["layer"] == "seccomp" and event["kernel_guard"]["recorded_by"] == "supervisor"
