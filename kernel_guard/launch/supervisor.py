"""The exec supervisor: a process outside the kernel that answers its notified calls.

The launcher starts it (``python -m kernel_guard.launch.supervisor``) while exec
still works, before the seccomp filter is loaded, and hands it the filter's
user-notification listener over an AF_UNIX socket (SCM_RIGHTS); the kernel
keeps no copy (:mod:`.supervisor_handle` is the kernel's side).  It answers:

* ``execve``/``execveat`` and each new image's first call: :mod:`.exec_decision`
  (refused, or let through to the kernel's Landlock domain, and recorded with
  the image that started);
* ``memfd_create``: :mod:`.memfd` (every memfd sealed non-executable);
* signals, scheduling changes, rlimits, pidfds aimed at it or its witness, new
  listeners, truncation by path: refused and recorded (:mod:`.refusals`).

It also keeps the kernel's record as its custodian (:mod:`.custodian`), and
when the kernel ends it ends what the kernel left running under its filter
(:mod:`.survivors`) and records it.

It leaves the kernel's session and process group, ignores SIGINT and
terminal signals, makes itself non-dumpable and loads its own small filter
(no exec, no ptrace): the kernel can neither write its memory nor, through it,
start a program.  It notices the kernel's end through a pidfd (the kernel's
Landlock signal scope stops the parent-death signal) and stops once no
process uses the filter.  If it dies all the same, notified calls fail with
ENOSYS and no new listener can be attached: exec stays blocked, and its
witness (:mod:`.witness`) records the loss.  See docs/architecture.md.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Callable, Optional

from ..events.sinks.file import reopen_all
from . import survivors
from .exec_decision import ExecDecider
from .notifications import Notification, other_syscall_table, receive, respond
from .refusals import protection_event, truncation_event

__all__ = ["Supervisor", "main"]

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
#: seconds the kernel's processes get to end by themselves once the kernel has ended
_GRACE = 1.5
#: seconds to wait for ended survivors to release the filter before saying which remain
_RELEASE_WITHIN = 5.0


class Supervisor:
    """The notification loop of the supervisor process."""

    def __init__(self, listener: int, control: socket.socket, mode: str, kernel_pid: int,
                 emit: Callable[[dict], None], allowed: frozenset = frozenset(), witness: int = 0,
                 scoped: bool = False) -> None:
        from .memfd import SealedMemfds
        from .seccomp_filter import (IMAGE_GATE_SYSCALLS, MEMFD_SYSCALLS, PROTECTED_SYSCALLS,
                                     TRUNCATION_SYSCALLS)

        self.listener = listener
        self.control = control
        self.mode = mode
        self.kernel_pid = kernel_pid
        self.emit = emit
        self.witness = witness
        self.scoped = scoped
        self.execs = ExecDecider(listener, mode, kernel_pid, allowed)
        self.memfds = SealedMemfds(listener)
        self.counts = {"notifications": 0, "errors": 0, "signals_denied": 0, "sched_denied": 0,
                       "listeners_denied": 0, "truncations_denied": 0, "survivors_ended": 0}
        self.started = time.time()
        self.kernel_gone: Optional[float] = None
        self._survivors_said = 0
        self.image_gate, self.truncations = frozenset(IMAGE_GATE_SYSCALLS), frozenset(TRUNCATION_SYSCALLS)
        self.memfd_calls = frozenset(MEMFD_SYSCALLS)
        # every non-exec call the launcher's rules may send here, by (arch, nr)
        self.other_syscalls = other_syscall_table((*PROTECTED_SYSCALLS, *IMAGE_GATE_SYSCALLS,
                                                   *TRUNCATION_SYSCALLS, *MEMFD_SYSCALLS))

    def all_counts(self) -> dict[str, int]:
        return {**self.counts, **self.execs.counts, **self.memfds.counts}

    def _record(self, events: list[dict]) -> None:
        for event in events:
            self.emit(event)

    def handle_one(self) -> None:
        """Receive one notification and send it to what answers it."""
        notif = receive(self.listener)
        if notif is None:
            return
        self.counts["notifications"] += 1
        other = self.other_syscalls.get((notif.arch, notif.nr))
        if other is None:
            self._record(self.execs.on_exec(notif))
            return
        syscall, abi = other
        if syscall in self.image_gate:
            self._record(self.execs.on_image(notif))
        elif syscall in self.memfd_calls:
            self._record([e for e in [self.memfds.handle(notif, abi)] if e])
        else:
            self.refuse_other(notif, syscall, abi)

    def refuse_other(self, notif: Notification, syscall: str, abi: str) -> None:
        """A signal or scheduling change aimed at a protected process, a new seccomp
        listener, a truncation by path: always EPERM, in every mode, and recorded."""
        # read what the event names while the caller still waits: once answered, it moves on
        if syscall in self.truncations:
            event = truncation_event(notif, syscall, abi, self.kernel_pid, self.mode)
        else:
            event = protection_event(notif, syscall, abi, self.kernel_pid, self.mode)
        respond(self.listener, notif.id, allow=False)
        counter = {"truncate-denied": "truncations_denied", "listener-denied": "listeners_denied",
                   "sched-denied": "sched_denied"}.get(event["event"]["action"], "signals_denied")
        self.counts[counter] += 1
        self.emit(event)

    def answer_control(self) -> bool:
        """Answer a status query on the control socket; False once it is closed."""
        try:
            data = self.control.recv(4096)
        except OSError:
            return False
        if not data:
            return False
        try:
            request = json.loads(data)
        except ValueError:
            return True  # ignore garbage: the kernel side is not trusted
        if isinstance(request, dict) and request.get("op") == "status":
            from .. import runtime
            from .seccomp_filter import proc_status

            rt = runtime.current()
            reply = {"pid": os.getpid(), "mode": self.mode, "kernel_pid": self.kernel_pid,
                     "listener": True, "uptime_s": round(time.time() - self.started, 3),
                     "counts": self.all_counts(), "memfd_sealing": self.memfds.sealing,
                     "survivor_scope": self.scoped,
                     "pipeline": rt.pipeline.stats() if rt is not None else None,
                     "seccomp": proc_status()}
            try:
                self.control.send(json.dumps(reply).encode())
            except OSError:
                return False
        return True

    def run(self, stop_fd: Optional[int] = None) -> str:
        """Serve until the listener hangs up, or ``stop_fd`` (the signal wake-up
        pipe) becomes readable; return why the loop ended."""
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self.control.fileno(), select.POLLIN)
        if stop_fd is not None:
            poller.register(stop_fd, select.POLLIN)
        kernel_fd = _pidfd(self.kernel_pid)
        if kernel_fd is not None:
            poller.register(kernel_fd, select.POLLIN)
        while True:
            for fd, ev in poller.poll(500):
                if fd == stop_fd:
                    if _woken_by(stop_fd, signal.SIGTERM):
                        return "SIGTERM"
                    continue
                if fd == self.listener:
                    if ev & select.POLLIN:
                        self._serve_one()
                    elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        self._record(self.execs.expire(float("inf")))
                        return "no process uses the filter any more"
                elif fd == kernel_fd:
                    poller.unregister(kernel_fd)
                    self.kernel_gone = time.monotonic()
                elif not self.answer_control():
                    # the kernel closed its end: keep serving the listener, which
                    # still protects it; only the listener's end ends the loop
                    poller.unregister(self.control.fileno())
            self._record(self.execs.expire())
            self._look_for_survivors()

    def _serve_one(self) -> None:
        try:
            self.handle_one()
        except OSError as exc:
            self.counts["errors"] += 1
            if exc.errno not in (errno.ENOENT, errno.EINTR):
                raise

    def _look_for_survivors(self) -> None:
        """Once the kernel has ended and its processes had their grace, end those
        still under its filter and record them; say which remain if any do."""
        if self.kernel_gone is None:
            return
        waited = time.monotonic() - self.kernel_gone
        if waited < _GRACE or self._survivors_said >= 2:
            return
        if self._survivors_said == 0:
            self._survivors_said = 1
            self._end_survivors()
        elif waited >= _GRACE + _RELEASE_WITHIN:
            self._survivors_said = 2
            self._report_remaining()

    def _end_survivors(self) -> None:
        from ..events.schema import make_event

        if not self.scoped:
            return
        pids = survivors.find({os.getpid(), self.witness, self.kernel_pid})
        if not pids:
            return
        described = [survivors.describe(pid) for pid in pids]
        failed = survivors.end(pids)
        self.counts["survivors_ended"] += len(pids) - len(failed)
        names = ", ".join(f"{os.path.basename(p.get('executable', '?'))} (pid {p['pid']})" for p in described)
        self.emit(make_event("kernel-survivors-ended", outcome="success", layer="supervisor",
                             processes=described, supervisor_pid=os.getpid(), kernel_pid=self.kernel_pid,
                             recorded_by="supervisor",
                             reason=f"the kernel (pid {self.kernel_pid}) ended and left {len(pids)} processes "
                                    f"running under its filter: {names}; ended (SIGKILL). A process that must "
                                    "outlive its notebook belongs in a service of its own, not in a kernel"))

    def _report_remaining(self) -> None:
        from ..events.schema import make_event

        pids = survivors.find({os.getpid(), self.witness, self.kernel_pid}) if self.scoped else []
        which = (f"pids {', '.join(map(str, pids))}" if pids else
                 "which ones cannot be told on this system (Landlock ABI < 6: no signal scope)")
        self.emit(make_event("kernel-survivors-remain", outcome="failure", layer="supervisor",
                             remaining=[survivors.describe(p) for p in pids], supervisor_pid=os.getpid(),
                             kernel_pid=self.kernel_pid, recorded_by="supervisor",
                             reason=f"the kernel (pid {self.kernel_pid}) ended, but processes still use its "
                                    f"filter ({which}); the supervisor stays, answering and recording "
                                    "their calls, until they end"))


def _woken_by(fd: int, signum: int) -> bool:
    """Whether the signal wake-up pipe says ``signum`` arrived (it carries each signal's number)."""
    try:
        return signum in os.read(fd, 64)
    except BlockingIOError:
        return False


def _pidfd(pid: int) -> Optional[int]:
    """A pidfd that becomes readable when ``pid`` ends (Linux 5.3); None if unavailable."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def _serve(args: argparse.Namespace, control: socket.socket, witness: int) -> int:
    """Harden, hand-shake, receive the listener, serve until the kernel is gone."""
    from .. import runtime
    from ..events.schema import make_event

    rt = runtime.start(_own_config(args), kernel_id=args.kernel_id, author="supervisor")
    rt.layers["supervisor"] = args.mode
    custodian = _start_custodian(args, rt)
    try:
        _harden_self()
    except Exception as exc:  # tell the launcher why, rather than a traceback
        control.send(f"cannot harden the supervisor: {type(exc).__name__}: {exc}".encode())
        return 5
    # the kernel's filter sends signals aimed at any of these to us (any tid names its process)
    tids = sorted(int(t) for t in os.listdir("/proc/self/task"))
    control.send(b"ready " + json.dumps({"tids": tids, "witness": witness}).encode())
    try:
        msg, fds, _flags, _addr = socket.recv_fds(control, 65536, 1)
        allowed = frozenset(json.loads(msg).get("allowed", ())) if msg.startswith(b"{") else frozenset()
    except (OSError, ValueError, AttributeError):
        fds, allowed = [], frozenset()
    if not fds:
        return 4
    control.send(b"listening")
    sup = Supervisor(fds[0], control, args.mode, args.kernel_pid, rt.emit, allowed, witness, args.scoped)
    # From here SIGTERM only wakes the loop, which ends and records why: a SIGTERM
    # raised as an exception could land between the loop's end and the record.
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGTERM, lambda *_: None)
    # logrotate's postrotate: the record's files are opened anew before the next write
    signal.signal(signal.SIGHUP, lambda *_: reopen_all())
    signal.set_wakeup_fd(stop_w, warn_on_full_buffer=False)
    why = sup.run(stop_r)  # an exception here is a loss: the witness records it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if custodian is not None:
        custodian.stop()
    rt.emit(make_event("supervisor-stopped", outcome="success", layer="supervisor",
                       reason=f"exec supervisor stopped: {why}",
                       counts={**sup.all_counts(), **(custodian.counts if custodian else {})},
                       supervisor_pid=os.getpid(), kernel_pid=args.kernel_pid,
                       process={"pid": os.getpid()}))
    rt.pipeline.close(timeout=3.0)
    return 0


def _own_config(args: argparse.Namespace) -> Any:
    """The supervisor's settings: the environment's, with a spool the kernel cannot reach."""
    from traitlets.config import Config

    config = Config()
    trusted = os.environ.pop("KERNEL_GUARD_TRUSTED_CONFIG", "")
    if trusted:
        try:
            config.KernelGuard = Config(json.loads(trusted))
        except ValueError:
            pass  # never from anyone but the launcher; without it, the environment's settings
    if args.spool_dir is not None:
        config.KernelGuard.spool_dir = args.spool_dir
    return config


def _start_custodian(args: argparse.Namespace, rt: Any) -> Any:
    """Take the kernel's events from the socket it writes them to (custodian of the record)."""
    if args.events_fd is None:
        return None
    from .custodian import Custodian

    numbering = rt.pipeline._numbering
    custodian = Custodian(socket.socket(fileno=args.events_fd), rt.pipeline,
                          lambda: numbering.stream if numbering else None, rt.emit)
    custodian.start()
    return custodian


def _leave_kernel_session() -> None:
    """A session and process group of our own: no group signal of the kernel's
    (``killpg``, ``kill(0)``) reaches us, and no terminal the kernel controls can
    make us its foreground group (terminal signals bypass Landlock's scope)."""
    os.setsid()
    for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)


def _harden_self() -> None:
    """Non-dumpable (the kernel cannot open our memory or fds) and no exec of our own."""
    from . import seccomp_filter as sf

    sf.prctl(PR_SET_DUMPABLE, 0)
    sc = sf.bindings()
    filt = sc.SyscallFilter(int(sc.ALLOW))
    for arch in sf.default_architectures():
        arch_value = getattr(sc.Arch, sf._ARCH_NAMES[arch])
        if not filt.exist_arch(arch_value):
            filt.add_arch(arch_value)
    filt.set_attr(sc.Attr.ACT_BADARCH, int(sc.KILL_PROCESS))
    filt.set_attr(sc.Attr.CTL_TSYNC, 1)
    for name in ("execve", "execveat", "ptrace", "process_vm_writev", "pidfd_getfd"):
        filt.add_rule(int(sc.ERRNO(errno.EPERM)), name)
    filt.load()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernel_guard.launch.supervisor",
                                     description="Exec supervisor (started by kernel_guard.launch).")
    parser.add_argument("--fd", type=int, required=True, help="socket to the kernel (SOCK_SEQPACKET)")
    parser.add_argument("--kernel-pid", type=int, required=True)
    parser.add_argument("--mode", choices=["enforce", "audit"], required=True,
                        help="enforce: always EPERM; audit: CONTINUE (not a security boundary)")
    parser.add_argument("--kernel-id", default=None)
    parser.add_argument("--profile", default="", help="profile name, for events")
    parser.add_argument("--events-fd", type=int, default=None,
                        help="socket on which the kernel hands its events to this custodian (SOCK_SEQPACKET)")
    parser.add_argument("--spool-dir", default=None,
                        help="spool root outside the kernel's writable roots ('' keeps spools in memory)")
    parser.add_argument("--scoped", action="store_true",
                        help="started inside the launcher's outer signal-scoped domain (survivors can be told)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``python -m kernel_guard.launch.supervisor``."""
    from . import seccomp_filter as sf
    from .witness import start_witness

    args = _parse(sys.argv[1:] if argv is None else argv)
    # die with the kernel where its signal reaches us (no signal scope); if it is
    # already gone, the prctl came too late
    sf.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != args.kernel_pid:
        return 3
    _leave_kernel_session()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are for the kernel's cells
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    witness, witness_pipe = start_witness(args, _harden_self)  # before any thread exists
    code = _serve(args, socket.socket(fileno=args.fd), witness)
    try:
        os.write(witness_pipe, b"stopped")  # a clean end: the witness has nothing to record
    except BrokenPipeError:
        pass  # it could not harden itself and is gone
    return code


if __name__ == "__main__":
    sys.exit(main())
