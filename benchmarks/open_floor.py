"""The floor of an open under the launcher's OS layers, for scenario 8 (``landlock``).

Any seccomp filter puts every system call on the kernel's slower entry path (a
Python ``open()`` makes five), and any Landlock domain that handles file-system
rights runs its check at every open, reads included.  Fresh processes time
``open(path, "rb").close()`` on a file in a writable folder, then load either
the least any filter and domain could have (``minimal``: a one-rule filter and a
domain that handles writes only, with that folder writable), the least the
launcher's design could have (``nested``: the same, nested in the signal-scope
domain the launcher shares with its supervisor, as every launcher kernel's is:
a second layer, checked at every open too), or what it has (``launcher``: that
outer domain, the default profile with the launcher's image-gate rules, and its
domain: writes and truncation beneath the folder, exec of the interpreter; below
Landlock ABI 3 the filter's truncation rules instead), and time it again.  No
audit hook: the extension kernel shows that part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict

if __package__:
    from .stats import balanced, median

LAYERS = ("minimal", "nested", "launcher")


def _time_open(path: str, n: int) -> float:
    """Best-of-5 µs per ``open(path, "rb").close()`` in this process."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            open(path, "rb").close()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def _load(variant: str, folder: str) -> None:
    """Apply ``variant``'s filter and domain to this process, as the launcher orders them."""
    from kernel_guard.launch import landlock, profiles, seccomp_filter

    sc = seccomp_filter.bindings()  # before the domain: pyseccomp runs ldconfig at import
    profile = profiles.load_profile("default")
    seccomp_filter.set_no_new_privs()
    programs = (os.path.realpath(sys.executable),) if variant == "launcher" else ()
    if variant != "minimal":
        landlock.restrict_outer()
    domain = landlock.restrict(landlock.Domain((folder,), programs))
    if variant != "launcher":
        filt = sc.SyscallFilter(sc.ALLOW)
        filt.add_rule(sc.ERRNO(1), "kexec_load")
        filt.load()
    else:
        truncation = seccomp_filter.truncation_rules() if domain.needs_truncation_rules else ()
        extra = truncation + seccomp_filter.image_gate_rules()
        loaded = seccomp_filter.load(profile, extra)
        os.close(loaded.listener_fd)  # nothing here execs or truncates: nobody waits on it


def child(variant: str, n: int, folder: str) -> Dict[str, float]:
    """µs per open of a file in ``folder`` before and after ``variant``'s layers (one
    process).  The parent removes the folder: the domain grants no removal of it."""
    path = os.path.join(folder, "f")
    with open(path, "wb") as fh:
        fh.write(b"x" * 1024)
    before = _time_open(path, n)
    _load(variant, folder)
    after = _time_open(path, n)
    return {"before": before, "after": after}


def floor(repetitions: int, n: int) -> Dict[str, float]:
    """Median µs each variant's layers add to an open for reading, children alternating."""
    added: Dict[str, list] = {v: [] for v in LAYERS}
    for index in range(repetitions):
        for variant in balanced(LAYERS, index):
            with tempfile.TemporaryDirectory(prefix="bench-open-") as folder:
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", variant, str(n), folder],
                                     capture_output=True, text=True, check=True, timeout=300)
            timed = json.loads(out.stdout)
            added[variant].append(timed["after"] - timed["before"])
    return {v: median(values) for v, values in added.items()}


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    else:
        sys.exit("usage: open_floor.py --child minimal|nested|launcher N FOLDER (run benchmarks/run.py instead)")
