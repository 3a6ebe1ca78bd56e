"""The supervisor's loop: answer each notified call, record it, watch the kernel's end.

:class:`Supervisor` serves the listener the kernel handed over (the process
around it, its start order and hardening, is :mod:`.supervisor`):

* ``execve``/``execveat`` and each new image's first call: :mod:`.exec_decision`
  (refused, or let through to the kernel's Landlock domain, and recorded with
  the image that started);
* ``memfd_create``: :mod:`.memfd` (every memfd sealed non-executable);
* signals, scheduling changes, rlimits, pidfds aimed at it or its witness, new
  listeners, truncation by path: refused and recorded (:mod:`.refusals`);
* status queries on the control socket.

It notices the kernel's end through a pidfd (the kernel's Landlock signal
scope stops the parent-death signal), then ends what the kernel left running
under its filter (:mod:`.survivors`), and stops once no process uses the filter.
"""

from __future__ import annotations

import errno
import os
import select
import _signal  # the C module: signal.py makes enums of every constant (its import and enum's: 0.25 MB)
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    import socket  # at run time the supervisor's sockets are the C module _socket's (supervisor.py)
    from typing import Callable, Optional

from ..events.json_codec import dumps, loads
from . import survivors
from .exec_decision import ExecDecider
from .notifications import Notification, receive, respond
from .refusals import protection_event, truncation_event

__all__ = ["Supervisor"]

#: seconds the kernel's processes get to end by themselves once the kernel has ended
_GRACE = 1.5
#: seconds those left get to end after SIGTERM before SIGKILL (survivors.py says why)
_TERM_WITHIN = 2.0
#: seconds to wait for ended survivors to release the filter before saying which remain
_RELEASE_WITHIN = 5.0
#: how far the end of the kernel's remaining processes has gone
_NOT_YET, _ASKED, _ENDED, _REPORTED = range(4)


class Supervisor:
    """The notification loop of the supervisor process."""

    def __init__(self, listener: int, control: socket.socket, mode: str, kernel_pid: int,
                 emit: Callable[[dict], None], other_syscalls: dict[tuple[int, int], tuple[str, str]],
                 allowed: frozenset = frozenset(), witness: int = 0, scoped: bool = False,
                 witness_form: str = "fork") -> None:
        """``other_syscalls``: (audit arch, nr) -> (syscall, ABI) of every non-exec call
        the launcher's rules may send here (it numbered them: handover.py)."""
        from .memfd import SealedMemfds
        from .notified_calls import IMAGE_GATE_SYSCALLS, MEMFD_SYSCALLS, TRUNCATION_SYSCALLS

        self.listener = listener
        self.control = control
        self.mode = mode
        self.kernel_pid = kernel_pid
        self.emit = emit
        self.witness = witness
        #: "program" (kernel-guard-witness) or "fork" (where the program was not built)
        self.witness_form = witness_form
        self.scoped = scoped
        self.execs = ExecDecider(listener, mode, kernel_pid, allowed)
        self.memfds = SealedMemfds(listener)
        self.counts = {"notifications": 0, "errors": 0, "signals_denied": 0, "sched_denied": 0,
                       "listeners_denied": 0, "truncations_denied": 0, "survivors_ended": 0}
        self.started = time.time()
        self.kernel_gone: Optional[float] = None
        self._survivors = _NOT_YET
        #: the survivors asked to end (SIGTERM), as described then, and when
        self._asked: list[dict] = []
        self._asked_at = 0.0
        self.image_gate, self.truncations = frozenset(IMAGE_GATE_SYSCALLS), frozenset(TRUNCATION_SYSCALLS)
        self.memfd_calls = frozenset(MEMFD_SYSCALLS)
        self.other_syscalls = other_syscalls

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
            request = loads(data)
        except ValueError:
            return True  # ignore garbage: the kernel side is not trusted
        if isinstance(request, dict) and request.get("op") == "status":
            from .. import runtime
            from .procfs import proc_status

            rt = runtime.current()
            reply = {"pid": os.getpid(), "mode": self.mode, "kernel_pid": self.kernel_pid,
                     "listener": True, "uptime_s": round(time.time() - self.started, 3),
                     "counts": self.all_counts(), "memfd_sealing": self.memfds.sealing,
                     "survivor_scope": self.scoped,
                     "witness": {"pid": self.witness, "form": self.witness_form},
                     "pipeline": rt.pipeline.stats() if rt is not None else None,
                     "seccomp": proc_status()}
            try:
                self.control.send(dumps(reply, ensure_ascii=True).encode())
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
                    if _woken_by(stop_fd, _signal.SIGTERM):
                        return "SIGTERM"
                    continue
                if fd == self.listener:
                    if ev & select.POLLIN:
                        self._serve_one()
                    elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        self._record(self.execs.expire(float("inf")))
                        if self._survivors == _ASKED:  # every one asked to end did: say which they were
                            self._end_survivors(released=True)
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

    def filter_unused(self, wait: float) -> bool:
        """True once no process uses the kernel's filter (its listener hangs up), within ``wait`` seconds."""
        poller = select.poll()
        poller.register(self.listener, 0)  # hang-ups are reported whatever the mask
        deadline = time.monotonic() + wait
        while True:
            if any(ev & select.POLLHUP for _, ev in poller.poll(max(0.0, deadline - time.monotonic()) * 1000)):
                return True
            if time.monotonic() >= deadline:
                return False

    def _serve_one(self) -> None:
        try:
            self.handle_one()
        except OSError as exc:
            self.counts["errors"] += 1
            if exc.errno not in (errno.ENOENT, errno.EINTR):
                raise

    def _look_for_survivors(self) -> None:
        """Once the kernel has ended and its processes had their grace, ask those
        still under its filter to end, then end and record them; say which remain
        if any do."""
        if self.kernel_gone is None or self._survivors == _REPORTED:
            return
        now = time.monotonic()
        if now - self.kernel_gone < _GRACE:
            return
        if self._survivors == _NOT_YET:
            self._survivors = _ASKED if self._ask_survivors_to_end() else _ENDED
            self._asked_at = now
        if self._survivors == _ASKED and (now - self._asked_at >= _TERM_WITHIN or not self._asked_still_running()):
            self._survivors = _ENDED
            self._end_survivors()
        if self._survivors == _ENDED and now - self._asked_at >= _TERM_WITHIN + _RELEASE_WITHIN:
            self._survivors = _REPORTED
            self._report_remaining()

    def _ask_survivors_to_end(self) -> bool:
        """SIGTERM each process still under the kernel's filter; whether there were any."""
        if not self.scoped:
            return False
        pids = self._survivors_now()
        self._asked = [survivors.describe(pid) for pid in pids]
        survivors.end(pids, _signal.SIGTERM)
        return bool(pids)

    def _survivors_now(self) -> list[int]:
        """The processes still under the kernel's filter: all this supervisor may signal
        but itself, its witness and the kernel (survivors.py says why)."""
        return survivors.find({os.getpid(), self.witness, self.kernel_pid})

    def _asked_still_running(self) -> bool:
        return any(survivors.running(p["pid"]) for p in self._asked)

    def _end_survivors(self, released: bool = False) -> None:
        """SIGKILL what still runs of the kernel's processes and record them all;
        none does once the filter is ``released`` (one may still be leaving)."""
        from ..events.schema import make_event

        pids = [] if released else self._survivors_now()
        asked = {p["pid"] for p in self._asked}
        described = self._asked + [survivors.describe(pid) for pid in pids if pid not in asked]
        failed = survivors.end(pids)
        self.counts["survivors_ended"] += len(described) - len(failed)
        names = ", ".join(f"{os.path.basename(p.get('executable', '?'))} (pid {p['pid']})" for p in described)
        how = (f"SIGTERM, then SIGKILL for the {len(pids)} still running {_TERM_WITHIN:g} s later" if pids
               else "SIGTERM")
        self.emit(make_event("kernel-survivors-ended", outcome="success", layer="supervisor",
                             processes=described, killed=pids, supervisor_pid=os.getpid(),
                             kernel_pid=self.kernel_pid, recorded_by="supervisor",
                             reason=f"the kernel (pid {self.kernel_pid}) ended and left {len(described)} processes "
                                    f"running under its filter: {names}; ended ({how}). A process that must "
                                    "outlive its notebook belongs in a service of its own, not in a kernel"))

    def _report_remaining(self) -> None:
        from ..events.schema import make_event

        pids = self._survivors_now() if self.scoped else []
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
