"""The file sink where operators rotate and fill disks: it follows a rotation within a second
(or at SIGHUP), never blocks on a FIFO, writes regular files only, and after a full disk glues
no event to a torn line and counts losses exactly.  The last test rotates a launcher kernel's
record with the real logrotate, as the operators' guide says, and verifies the rotated set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from launcher_support import NOTEBOOK_USER, LaunchedKernel, specs_on_path, unprivileged_root

from kernel_guard.cli.verify import FILE_BOUNDARY, read_events, verify
from kernel_guard.events.schema import make_event, to_json_line
from kernel_guard.events.sinks.file import FileSink, reopen_all
from kernel_guard.exceptions import SinkError


def _lines(*numbers: int) -> list[bytes]:
    return [to_json_line(make_event("cell-executed", outcome="success", layer="ipython", n=n)) for n in numbers]


def _numbers(path: Path) -> list[int]:
    return [json.loads(line)["kernel_guard"]["n"] for line in path.read_text().splitlines()]


def test_a_renamed_file_is_followed_within_a_second(tmp_path: Path) -> None:
    """logrotate's rename and create: events after it go to the new file at the path, not the renamed one."""
    path = tmp_path / "events.jsonl"
    sink = FileSink(str(path))
    sink.emit_lines(_lines(1))
    path.rename(tmp_path / "events.jsonl.1")
    path.touch(mode=0o600)
    time.sleep(1.1)
    sink.emit_lines(_lines(2))
    assert _numbers(tmp_path / "events.jsonl.1") == [1] and _numbers(path) == [2]


def test_a_deleted_file_is_created_again(tmp_path: Path) -> None:
    """A rotation that removes the file (no create): the next write after a second creates it anew."""
    path = tmp_path / "events.jsonl"
    sink = FileSink(str(path))
    sink.emit_lines(_lines(1))
    path.unlink()
    time.sleep(1.1)
    sink.emit_lines(_lines(2))
    assert _numbers(path) == [2]


def test_reopen_all_follows_at_once(tmp_path: Path) -> None:
    """What SIGHUP asks: the next write opens the path anew, with no wait."""
    path = tmp_path / "events.jsonl"
    sink = FileSink(str(path))
    sink.emit_lines(_lines(1))
    path.rename(tmp_path / "old.jsonl")
    reopen_all()
    sink.emit_lines(_lines(2))
    assert _numbers(tmp_path / "old.jsonl") == [1] and _numbers(path) == [2]


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no reader, a FIFO with one, and a device are refused at once, with the reason."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SinkError, match="FIFO"):
        FileSink(str(fifo))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(SinkError, match="not a regular file"):
            FileSink(str(fifo))
    finally:
        os.close(reader)
    with pytest.raises(SinkError, match="not a regular file"):
        FileSink("/dev/null")


FULL_DISK = """
import json, os, resource, signal, sys
from kernel_guard.events.schema import make_event, to_json_line
from kernel_guard.events.sinks.file import FileSink
from kernel_guard.exceptions import SinkError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
lines = [to_json_line(make_event("cell-executed", outcome="success", layer="ipython", n=n)) for n in range(40)]
sink = FileSink(sys.argv[1])
limit = sum(map(len, lines[:10])) + len(lines[10]) // 2  # the disk fills inside line 10
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
kept = []
for batch in (lines[:20], lines[20:30]):
    try:
        sink.emit_lines(batch)
        kept.append(len(batch))
    except SinkError as exc:
        kept.append(exc.kept)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space again
sink.emit_lines(lines[30:])
print(json.dumps(kept))
"""


def test_after_a_full_disk_no_event_is_glued_to_a_torn_line_and_losses_are_exact(tmp_path: Path) -> None:
    """The disk fills inside a line: the error says 10 of 20 lines were kept (then 0 of 10); once
    space returns, the next event starts a line of its own, and every whole line parses."""
    path = tmp_path / "events.jsonl"
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [10, 0]
    text = path.read_text().splitlines()
    assert len(text) == 10 + 1 + 10  # ten whole, the torn one, the ten after space returned
    parsed = [json.loads(line)["kernel_guard"]["n"] for i, line in enumerate(text) if i != 10]
    assert parsed == [*range(10), *range(30, 40)]
    with pytest.raises(ValueError):
        json.loads(text[10])


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with unprivileged_root() as folder:
        yield folder


def test_the_real_logrotate_rotates_a_launcher_kernels_record_and_nothing_is_lost(root: str) -> None:
    """logrotate (rename and create, SIGHUP to the supervisor in postrotate) rotates the record of a
    running launcher kernel twice: every later event reaches the new file, and verify judges the
    rotated set as one whole record."""
    assert os.path.exists(shutil.which("logrotate") or "/usr/sbin/logrotate"), \
        "logrotate is missing: scripts/bootstrap test installs it"
    # the record outside the kernel's writable roots, in a folder of the notebook user's (the
    # supervisor writes as that user), as /var/log/kernel_guard would be in a pod
    evidence = tempfile.mkdtemp(prefix="kernel-guard-rotated-", dir="/var/lib")
    os.chown(evidence, *NOTEBOOK_USER)
    sink = os.path.join(evidence, "events.jsonl")
    try:
        _rotate_twice(root, sink)
    finally:
        shutil.rmtree(evidence, ignore_errors=True)


def _rotate_twice(root: str, sink: str) -> None:
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        kernel = LaunchedKernel(os.path.join(root, "rotated"), "guarded", user=NOTEBOOK_USER,
                                env={"KERNEL_GUARD_SINKS": f"file://{sink}"})
        kernel.sink = sink
        kernel.start()
        try:
            supervisor = kernel.supervisor_pid()
            config = os.path.join(root, "logrotate.conf")
            with open(config, "w") as fh:
                fh.write(textwrap.dedent(f"""
                    {sink} {{
                        rotate 5
                        create 0600 {NOTEBOOK_USER[0]} {NOTEBOOK_USER[1]}
                        missingok
                        postrotate
                            kill -HUP {supervisor}
                        endscript
                    }}
                """))
            for round_ in range(3):
                result = kernel.execute(f"for i in range(50): print(i, end='')\nprint('round {round_}')")
                assert result.status == "ok", result.error_text
                time.sleep(1.5)  # the writer's tick: the cell's events reach the file
                if round_ < 2:
                    state = os.path.join(root, "logrotate.state")
                    done = subprocess.run([logrotate, "-f", "-s", state, config], capture_output=True, text=True,
                                          timeout=60)
                    assert done.returncode == 0, done.stderr
            assert psutil.pid_exists(supervisor)
        finally:
            kernel.shutdown()
    deadline = time.monotonic() + 20
    files = [sink, sink + ".1", sink + ".2"]
    while time.monotonic() < deadline:
        with open(sink) as fh:
            if '"supervisor-stopped"' in fh.read():
                break
        time.sleep(0.2)
    assert all(os.path.getsize(f) > 0 for f in files), [os.path.getsize(f) for f in files]
    events = []
    for name in files:
        with open(name) as fh:
            in_file = list(read_events(fh))
        assert any(e["event"]["action"] == "cell-executed" for e in in_file), f"no cell reached {name}"
        events += [FILE_BOUNDARY, *in_file]
    reports, duplicates, _ = verify(events)
    problems = {n: r.problems() for n, r in reports.items() if r.problems()}
    assert not duplicates and not problems, problems
    script = os.path.join(os.path.dirname(sys.executable), "kernel-guard")
    out = subprocess.run([script, "verify", *reversed(files)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
