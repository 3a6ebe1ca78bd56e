"""What a launcher kernel leaves running when it ends, as uid 1000: its supervisor asks
each process still under the kernel's filter to end (SIGTERM), kills what still runs
2 s later, and records them; a resource tracker gets to clean up as after a plain
kernel, so joblib leaves nothing in ``/dev/shm``."""

from __future__ import annotations

import os
import signal
import time
from typing import Iterator

import psutil
import pytest
from launcher_support import NOTEBOOK_USER, LaunchedKernel, record_is_whole, wait_gone


@pytest.fixture()
def kernel(spec: str, root: str, request: pytest.FixtureRequest) -> Iterator[LaunchedKernel]:
    """A fresh launcher kernel as uid 1000, every layer enforcing."""
    started = LaunchedKernel(os.path.join(root, request.node.name), "guarded", user=NOTEBOOK_USER).start()
    yield started
    started.shutdown()  # its channels too, where the test killed it


# a double-forked setsid child: neither the kernel's child nor in its session
ESCAPE = """
import os, signal, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        if {ignore_term}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open("survivor.pid", "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(600)
    os._exit(0)
while not os.path.exists("survivor.pid") or not open("survivor.pid").read():
    time.sleep(0.05)
print(open("survivor.pid").read())
"""


def _ended(kernel: LaunchedKernel) -> list[dict]:
    events = kernel.events_until_stopped(timeout=30)
    assert not any(e["event"]["action"] == "kernel-survivors-remain" for e in events)
    return [e for e in events if e["event"]["action"] == "kernel-survivors-ended"]


@pytest.mark.parametrize("ignore_term", [False, True], ids=["ends-on-sigterm", "ignores-sigterm"])
def test_a_process_left_running_is_ended_with_the_kernel(kernel: LaunchedKernel, ignore_term: bool) -> None:
    """A double-forked setsid child outlives the kernel's shutdown by a few seconds at most:
    the supervisor ends it (SIGKILL only for one that ignores SIGTERM), records it by pid and
    program, and stops; the record verifies whole."""
    sup = kernel.supervisor_pid()
    result = kernel.execute(ESCAPE.format(ignore_term=ignore_term))
    assert result.status == "ok", result.error_text
    survivor = int(result.stdout)
    assert psutil.Process(survivor).ppid() != kernel.pid  # outside the kernel's children
    kernel.mark()
    kernel.shutdown()
    assert wait_gone([survivor], timeout=20) == [], "the survivor still runs after the kernel's end"
    assert wait_gone([sup], timeout=20) == [], "the supervisor stays after the survivor ended"
    ended = _ended(kernel)
    assert len(ended) == 1 and [p["pid"] for p in ended[0]["kernel_guard"]["processes"]] == [survivor]
    described = ended[0]["kernel_guard"]["processes"][0]["executable"]
    assert described == os.path.realpath(described)
    assert ended[0]["kernel_guard"]["killed"] == ([survivor] if ignore_term else [])
    record_is_whole(kernel)


def test_a_clean_end_ends_nothing_and_says_nothing_of_survivors(kernel: LaunchedKernel) -> None:
    """A kernel whose cells left nothing running stops without a survivors record (no false alarm)."""
    result = kernel.execute("import multiprocessing as mp\nwith mp.Pool(2) as p: print(p.map(abs, [-1, -2]))")
    assert result.status == "ok", result.error_text
    kernel.mark()
    kernel.shutdown()
    events = kernel.events_until_stopped(timeout=20)
    assert not [e for e in events if e["event"]["action"].startswith("kernel-survivors")]


JOBLIB = """
import os
import numpy as np
from joblib import Parallel, delayed
big = np.ones(2_000_000)  # 16 MB: joblib hands it to its workers memory-mapped
print(sum(Parallel(n_jobs=2)(delayed(np.sum)(big[i::4]) for i in range(4))))
print(os.getpid())
"""


def _joblib_files(pid: int) -> list[str]:
    """What joblib and loky made in /dev/shm for the process ``pid``."""
    return [name for name in os.listdir("/dev/shm")
            if name.startswith((f"sem.loky-{pid}-", f"joblib_memmapping_folder_{pid}_"))]


def test_a_killed_kernels_joblib_workers_leave_nothing_in_shared_memory(kernel: LaunchedKernel) -> None:
    """The kernel alone is killed (as the out-of-memory killer does) while joblib's workers
    idle: they end on SIGTERM, loky's resource tracker then removes their semaphores and the
    memory-mapped folder, as after a plain kernel's end, and nothing had to be killed."""
    result = kernel.execute(JOBLIB)
    assert result.status == "ok", result.error_text
    total, pid = result.stdout.split()
    assert float(total) == 2_000_000 and _joblib_files(int(pid)), "joblib used no shared memory"
    kernel.mark()
    os.kill(int(pid), signal.SIGKILL)
    ended = _ended(kernel)
    assert len(ended) == 1 and len(ended[0]["kernel_guard"]["processes"]) >= 3  # 2 workers, the tracker
    assert ended[0]["kernel_guard"]["killed"] == []
    deadline = time.monotonic() + 10
    while _joblib_files(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _joblib_files(int(pid)) == []
