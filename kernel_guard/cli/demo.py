"""``kernel-guard demo``: a guarded kernel at work, on defaults that need no server.

Starts a kernel (the guarded launcher when it is available and seccomp works
here, else ipykernel with the extension), tries a few shell routes and an
ordinary cell, and prints what the notebook would show and the events the
file sink recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from ..testing import KernelSession, plain_kernel_argv, read_events
from .techniques import RAW_SYSCALL

ATTEMPTS = [
    ("an ordinary cell", "sum(range(10))"),
    ("! shell escape", "!ls /"),
    ("%%bash cell magic", "%%bash\necho hello from bash"),
    ("os.system", "import os; os.system('id')"),
    ("subprocess", "import subprocess; subprocess.run(['uname', '-a'])"),
    ("unloading the guard", "%unload_ext kernel_guard"),
]

#: a raw execve system call from a forked child: no audit event exists for it,
#: so only the launcher's seccomp filter stops it
RAW_EXEC = (
    "a raw execve system call (only the seccomp layer sees it)",
    RAW_SYSCALL.replace("@MARKER@", "/dev/null")
    + "r, w = os.pipe()\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    rc = raw_syscall(NR['execve'], ctypes.cast(_path, ctypes.c_void_p).value, ctypes.addressof(_argv), 0, 0, 0)\n"
    "    os.write(w, str(rc).encode())\n"
    "    os._exit(0)\n"
    "os.close(w)\n"
    "os.waitpid(pid, 0)\n"
    "rc = int(os.read(r, 32) or 0)\n"
    "print(f'execve in a forked child returned {rc} ({os.strerror(-rc)})' if rc < 0 else 'execve ran')\n",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extension-only", action="store_true",
                        help="use ipykernel with --ext=kernel_guard even when the launcher is available")
    parser.add_argument("--events", metavar="PATH",
                        help="JSON-lines file to record events in (default: a temporary file)")


def _kernel_argv(extension_only: bool) -> tuple[list[str], str]:
    """The launcher's argv when it exists, else ipykernel with the extension."""
    if not extension_only:
        try:
            import kernel_guard.launch  # noqa: F401

            return [sys.executable, "-m", "kernel_guard.launch", "-f", "{connection_file}"], "launcher (seccomp + supervisor + extension)"
        except ImportError:
            pass
    return plain_kernel_argv("--ext=kernel_guard"), "ipykernel --ext=kernel_guard (extension and audit layers)"


def _show(label: str, result: Any) -> None:
    shown = result.error_text or (result.outputs[0]["data"].get("text/plain", "") if result.outputs else result.stdout)
    print(f"\n▶ {label}")
    for line in (shown or "(no output)").strip().splitlines()[:3]:
        print(f"    {line}")


def run(args: argparse.Namespace) -> int:
    """Run the demonstration; 0 when every escape was refused and recorded."""
    tmp = tempfile.TemporaryDirectory(prefix="kernel-guard-demo-")
    events_path = os.path.abspath(args.events or os.path.join(tmp.name, "events.jsonl"))
    argv, how = _kernel_argv(args.extension_only)
    print(f"kernel_guard demo: starting a guarded kernel via {how}")
    print(f"events go to file://{events_path}")
    env = {"KERNEL_GUARD_SINKS": f"file://{events_path}", "KERNEL_GUARD_MODE": "enforce"}
    try:
        with KernelSession(argv, env=env, cwd=tmp.name) as kernel:
            for label, code in ATTEMPTS + ([RAW_EXEC] if "launcher" in how else []):
                _show(label, kernel.execute(code))
    except RuntimeError as exc:
        print(f"\nthe guarded kernel did not start: {exc}", file=sys.stderr)
        return 1
    events = read_events(events_path)
    print(f"\n{len(events)} events recorded:")
    for event in events:
        e, g = event["event"], event["kernel_guard"]
        detail = event.get("process", {}).get("command_line") or g.get("code", "") or e.get("reason", "")
        print(f"  {e['action']:<16} {e['outcome']:<8} layer={g['layer']:<9} {str(detail)[:60]!r}")
    refused = [e for e in events if e["event"]["outcome"] == "failure" and e["event"]["action"] != "cell-executed"]
    print(f"\n{len(refused)} refusals recorded; every cell produced a cell-executed event.")
    tmp.cleanup()
    return 0 if len(refused) >= len(ATTEMPTS) - 1 else 1
