"""``kernel-guard check``: run the escape battery against a kernelspec and report.

The kernel is started through jupyter_client from the named kernelspec with a
temporary home (so an escape that succeeds persists nowhere real), a fake hub
token in its environment, and a temporary file sink added through
``KERNEL_GUARD_EXTRA_SINKS``.  Each technique is judged from outside the
kernel: did its marker file appear, did the sink receive a failure event.

Before the kernel starts, the kernelspec itself is read (:mod:`.specs`): a
Python kernel that imports from its working folder fails the check.  A
compatibility check whose library the kernel does not have is *skipped*, and
said so: it is neither counted as ok nor as failed.

Exit status: 0 when every technique was stopped and recorded, the kernelspec
checks and every compatibility check that ran passed; 1 otherwise; 2 when the
kernel could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional, TextIO

from ..events.schema import to_json
from ..testing import KernelSession, read_events
from .specs import SpecResult, check_spec
from .techniques import CATEGORIES, COMPATIBILITY, TECHNIQUES, Check, Technique

__all__ = ["REPORT_SCHEMA", "CheckReport", "add_arguments", "run", "run_check"]

#: JSON Schema of ``kernel-guard check --format json`` (kept stable across versions)
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kernel", "techniques", "compatibility", "summary"],
    "properties": {
        "kernel": {"type": "string"},
        "techniques": {"type": "array", "items": {
            "type": "object", "required": ["name", "category", "stopped", "recorded", "layer", "detail"],
            "properties": {"name": {"type": "string"}, "category": {"type": "string"},
                           "stopped": {"type": "boolean"}, "recorded": {"type": "boolean"},
                           "layer": {"type": ["string", "null"]}, "detail": {"type": "string"}}}},
        "compatibility": {"type": "array", "items": {
            "type": "object", "required": ["name", "ok", "detail"],
            "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}, "detail": {"type": "string"},
                           "skipped": {"type": "boolean"}}}},
        "kernelspec": {"type": "array", "items": {
            "type": "object", "required": ["name", "ok", "detail", "fix"],
            "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}, "detail": {"type": "string"},
                           "fix": {"type": "string"}}}},
        "summary": {"type": "object", "required": ["techniques", "stopped", "recorded", "compatibility_ok"],
                    "properties": {k: {"type": "integer"} for k in
                                   ("techniques", "stopped", "recorded", "compatibility_ok", "compatibility",
                                    "compatibility_skipped", "kernelspec_ok", "kernelspec")}},
    },
}

DEFAULT_KERNEL = "python3-guarded"


@dataclass
class TechniqueResult:
    name: str
    category: str
    stopped: bool
    recorded: bool
    layer: Optional[str]
    detail: str


@dataclass
class CompatibilityResult:
    name: str
    ok: bool
    detail: str
    #: not run (its library is not installed in the kernel): neither ok nor failed
    skipped: bool = False


@dataclass
class CheckReport:
    kernel: str
    techniques: List[TechniqueResult] = field(default_factory=list)
    compatibility: List[CompatibilityResult] = field(default_factory=list)
    kernelspec: List[SpecResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (all(t.stopped and t.recorded for t in self.techniques)
                and all(c.ok or c.skipped for c in self.compatibility) and all(k.ok for k in self.kernelspec))

    def summary(self) -> dict[str, int]:
        return {
            "techniques": len(self.techniques),
            "stopped": sum(t.stopped for t in self.techniques),
            "recorded": sum(t.recorded for t in self.techniques),
            "compatibility_ok": sum(c.ok for c in self.compatibility),
            "compatibility_skipped": sum(c.skipped for c in self.compatibility),
            "compatibility": len(self.compatibility),
            "kernelspec_ok": sum(k.ok for k in self.kernelspec),
            "kernelspec": len(self.kernelspec),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "techniques": [asdict(t) for t in self.techniques],
                "compatibility": [asdict(c) for c in self.compatibility],
                "kernelspec": [asdict(k) for k in self.kernelspec], "summary": self.summary()}


class _Workspace:
    """Temporary home, working folder and sink for one check run."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="kernel-guard-check-")
        self.home = os.path.join(self.root, "home")
        self.work = os.path.join(self.root, "work")
        os.makedirs(self.home)
        os.makedirs(self.work)
        self.sink = os.path.join(self.root, "events.jsonl")
        self.stderr_log = os.path.join(self.root, "kernel-stderr.log")
        self.token = "kg-check-" + secrets.token_hex(16)

    def env(self) -> dict[str, str]:
        extra = os.environ.get("KERNEL_GUARD_EXTRA_SINKS", "")
        return {
            "HOME": self.home,
            "IPYTHONDIR": os.path.join(self.home, ".ipython"),
            "JUPYTER_CONFIG_DIR": os.path.join(self.home, ".jupyter"),
            "JUPYTER_DATA_DIR": os.path.join(self.home, ".local", "share", "jupyter"),
            "JUPYTERHUB_API_TOKEN": self.token,
            "KERNEL_GUARD_EXTRA_SINKS": ",".join(filter(None, [extra, f"file://{self.sink}"])),
        }

    def marker(self, index: int) -> str:
        return os.path.join(self.work, f"escaped-{index:02d}")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _failures_since(ws: _Workspace, mark: int) -> list[dict]:
    return [e for e in read_events(ws.sink)[mark:]
            if e.get("event", {}).get("outcome") == "failure" and e["event"].get("action") != "cell-executed"]


def _run_technique(kernel: KernelSession, ws: _Workspace, index: int, technique: Technique) -> TechniqueResult:
    """Run one technique and judge it from outside the kernel."""
    marker = ws.marker(index)
    code = technique.code.replace("@MARKER@", marker).replace("@HOME@", ws.home)
    mark = len(read_events(ws.sink))
    try:
        result = kernel.execute(code, timeout=30)
        output, error = result.stdout, result.error_text
    except TimeoutError as exc:
        output, error = "", f"timed out: {exc}"
        kernel.timed_out = True  # type: ignore[attr-defined]
    if technique.settle:
        time.sleep(technique.settle)
    if technique.verdict == "output":
        stopped = "ESCAPED" not in output
    else:
        stopped = not os.path.lexists(marker)
    failures = _failures_since(ws, mark)
    deadline = time.monotonic() + (1.5 if not failures else 0)
    while not failures and time.monotonic() < deadline:  # the supervisor writes from another process
        time.sleep(0.1)
        failures = _failures_since(ws, mark)
    evidence = failures
    if technique.recorded_if_mentioned and not evidence:
        # e.g. the launcher's record of the credentials it removed before the kernel started
        evidence = [e for e in read_events(ws.sink) if technique.recorded_if_mentioned in to_json(e)]
    recorded = bool(evidence)
    layer = evidence[0].get("kernel_guard", {}).get("layer") if evidence else None
    first_line = (error.strip().splitlines() or [""])[-1] if error else ""
    detail = first_line or (output.strip().splitlines() or [""])[-1]
    if not stopped:
        detail = "ESCAPED: " + (detail or "the route worked")
    return TechniqueResult(technique.name, technique.category, stopped, recorded, layer, detail[:160])


def _kernel_has(kernel: KernelSession, module: str) -> bool:
    """Whether the kernel (not this process: its interpreter may be another) can import ``module``."""
    result = kernel.execute(f"import importlib.util\nprint(importlib.util.find_spec({module!r}) is not None)",
                            timeout=60)
    return result.stdout.strip() == "True"


def _run_compat(kernel: KernelSession, check: Check) -> CompatibilityResult:
    """Run one compatibility check (skipped when its library is not in the kernel)."""
    if check.requires and not _kernel_has(kernel, check.requires):
        return CompatibilityResult(check.name, False, f"{check.requires} is not installed in the kernel: skipped",
                                   skipped=True)
    try:
        result = kernel.execute(check.code, timeout=60, interrupt_after=check.interrupt_after)
    except TimeoutError as exc:
        return CompatibilityResult(check.name, False, str(exc))
    shown = result.stdout + result.error_text + "".join(
        o.get("data", {}).get("text/plain", "") for o in result.outputs)
    if check.interrupt_after is not None:
        ok = check.expect in result.error_text
    else:
        ok = result.status == "ok" and check.expect in shown
    detail = "ok" if ok else (result.error_text.strip().splitlines() or [shown.strip()[:100] or "no output"])[-1]
    return CompatibilityResult(check.name, ok, detail[:160])


def _session(kernel_name: str, ws: _Workspace, startup_timeout: float) -> KernelSession:
    # the kernel's stderr (its stderr:// events, warnings) goes to a log, shown if it fails
    return KernelSession(kernel_name=kernel_name, env=ws.env(), cwd=ws.work, startup_timeout=startup_timeout,
                         stderr_path=ws.stderr_log)


def run_check(kernel_name: str, only: Optional[str] = None, progress: Optional[TextIO] = None,
              startup_timeout: float = 60) -> CheckReport:
    """Start ``kernel_name``, run the battery, return the report (RuntimeError if it cannot
    start, jupyter_client's NoSuchKernel if there is no such kernelspec)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    ws = _Workspace()
    report = CheckReport(kernel=kernel_name, kernelspec=check_spec(spec.argv, dict(spec.env or {})))
    techniques = [t for t in TECHNIQUES if only in (None, t.category)]
    checks = COMPATIBILITY if only in (None, "compatibility") else []
    session = _session(kernel_name, ws, startup_timeout)
    total = len(techniques) + len(checks)
    try:
        try:
            session.start()
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- kernel stderr ---\n{_tail(ws.stderr_log)}") from exc
        category = techniques[0].category if techniques else None
        for index, technique in enumerate(techniques, 1):
            if technique.category != category:
                # a fresh kernel per category: an escape that worked (against an
                # unguarded kernel) must not break the routes tried after it
                category = technique.category
                session.shutdown()
                session = _session(kernel_name, ws, startup_timeout)
                session.start()
            result = _run_technique(session, ws, index, technique)
            report.techniques.append(result)
            _progress(progress, index, total, f"{technique.category}: {technique.name}",
                      ("stopped" if result.stopped else "ESCAPED") + (", recorded" if result.recorded else ", NOT recorded"))
            if not session.is_alive() or getattr(session, "timed_out", False):
                session.shutdown()
                session = _session(kernel_name, ws, startup_timeout)
                session.start()
        for offset, check in enumerate(checks, len(techniques) + 1):
            compat = _run_compat(session, check)
            report.compatibility.append(compat)
            _progress(progress, offset, total, f"compatibility: {check.name}",
                      "skipped" if compat.skipped else "ok" if compat.ok else "FAILED")
    finally:
        session.shutdown()
        ws.cleanup()
    return report


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).strip() or "(empty)"
    except OSError:
        return "(none)"


def _progress(stream: Optional[TextIO], index: int, total: int, what: str, outcome: str) -> None:
    if stream is not None:
        print(f"[{index:>2}/{total}] {what:<55} {outcome}", file=stream, flush=True)


def format_table(report: CheckReport) -> str:
    """The report as a readable table with a summary line."""
    rows = [("technique", "category", "stopped", "recorded", "layer")]
    for t in report.techniques:
        rows.append((t.name, t.category, "yes" if t.stopped else "NO", "yes" if t.recorded else "NO", t.layer or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if report.kernelspec:
        lines += ["", "kernelspec"]
        for k in report.kernelspec:
            lines.append(f"  {'ok ' if k.ok else 'FAIL'} {k.name}: {k.detail}")
            if k.fix:
                lines.append(f"       fix: {k.fix}")
    if report.compatibility:
        lines += ["", "compatibility"]
        lines += [f"  {'skip' if c.skipped else 'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}"
                  for c in report.compatibility]
    lines += ["", f"{report.kernel}: {_summary_line(report.summary())} — " + ("PASS" if report.passed else "FAIL")]
    escaped = [t for t in report.techniques if not t.stopped]
    if escaped:
        lines.append("escaped: " + ", ".join(t.name for t in escaped))
    return "\n".join(lines)


def _summary_line(s: dict[str, int]) -> str:
    """Counts as a reader wants them: a skipped check is neither ok nor failed."""
    spec_failed = s["kernelspec"] - s["kernelspec_ok"]
    compat_failed = s["compatibility"] - s["compatibility_ok"] - s["compatibility_skipped"]
    return "; ".join([
        f"{s['stopped']}/{s['techniques']} techniques stopped, {s['recorded']}/{s['techniques']} recorded",
        f"kernelspec checks: {s['kernelspec_ok']} ok" + (f", {spec_failed} FAILED" if spec_failed else ""),
        f"compatibility checks: {s['compatibility_ok']} ok, {s['compatibility_skipped']} skipped"
        + (f", {compat_failed} FAILED" if compat_failed else ""),
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", default=DEFAULT_KERNEL,
                        help=f"kernelspec to check (default: {DEFAULT_KERNEL}, as install-kernelspec names it)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--only", choices=CATEGORIES + ["compatibility"], help="run one category only")
    parser.add_argument("--startup-timeout", type=float, default=60, help="seconds to wait for the kernel (default 60)")


def run(args: argparse.Namespace) -> int:
    """Run the check; print the report; return the exit status."""
    print(f"kernel-guard check: starting kernelspec {args.kernel!r} ...", file=sys.stderr, flush=True)
    try:
        report = run_check(args.kernel, only=args.only, progress=sys.stderr, startup_timeout=args.startup_timeout)
    except Exception as exc:  # jupyter_client raises NoSuchKernel, RuntimeError, TimeoutError ...
        reason = f"{type(exc).__name__}: {exc}"
        if args.format == "json":
            print(json.dumps({"kernel": args.kernel, "error": reason}))
        print(f"kernel-guard check: the kernel {args.kernel!r} could not be started: {reason}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.format == "json" else format_table(report))
    return 0 if report.passed else 1
