"""The custodian of the record: under the launcher, the supervisor writes the kernel's events.

The kernel sends its events (:mod:`.custodian_sink`) in the wire format of
:mod:`.record_protocol`; the custodian, a thread of the supervisor outside the
kernel's reach, decodes and checks every line before it writes anything
(what each line may claim is specified there), queues the accepted lines as
they came into the supervisor's own pipeline, whose sinks and spools were
opened outside the kernel's Landlock domain, and keeps each stream's head
(last number and hash).  Every few seconds it writes the heads that moved
(``chain-checkpoint``) and the counts of what it refused, by reason
(``lines-refused``), both marked ``recorded_by: custodian``.  For a stream
whose process ended without ``stream-ended`` (a killed kernel, a terminated
pool worker) it writes that end itself, chained to the last event it took,
marked so: ``kernel-guard verify`` calls such a stream *cut short*.

The socket is read ahead of the checks (a bounded number of messages), so the
kernel's sends need not wait on them; messages are judged a batch at a time,
and the lines that pass go to the pipeline as one batch, in order.  Each
message is handled inside its own error boundary, each line judged alone, and
the chunks of unfinished lines are bounded per sender and for all senders
together.  If the custodian's thread ends anyway, the supervisor records
``custodian-lost`` and closes the socket, so the kernel says so and writes its
own record.

What it cannot do: events the kernel numbered but had not sent when it died
are lost inside it (the end it writes says after which number).
"""

from __future__ import annotations

import select
# the C module, not socket.py: its enums and selectors cost the supervisor 0.15-0.36 MB
from _socket import MSG_TRUNC, SCM_CREDENTIALS, SHUT_RDWR, SO_PASSCRED, SOL_SOCKET
import threading
import time
from collections import Counter, deque
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    import socket  # at run time the C module _socket serves (see above)
    from typing import Any, Callable, Deque, Iterable, Iterator, List, Optional, Tuple, Union

    from .record_protocol import Claim

from ..events.json_codec import loads
from ..events.schema import Event, make_event, to_json_line
from ..events.streams import chain_hash
from .record_protocol import (CREDENTIALS, CREDENTIALS_SPACE, HEADER, MAX_LINE, MAX_PAYLOAD, MAX_PENDING_TOTAL,
                              Refused, check_lines, split_lines, split_message, valid_stream_id)
from .procfs import proc_stat

__all__ = ["Custodian"]

#: the streams it tracks at most (each costs a little memory)
_MAX_STREAMS = 10_000
#: seconds between checkpoints, and between looks for ended processes
CHECKPOINT_EVERY = 5.0
_LIVENESS_EVERY = 1.0
#: messages judged together at most (about 1 MB): their lines go to the writer as one batch
_MESSAGES_PER_BATCH = 16
#: messages received ahead of the checks at most (about 2 MB)
_READ_AHEAD = 32

if TYPE_CHECKING:
    Message = Tuple[bytes, int]  # a message and the pid that sent it


class _Stream:
    """What the custodian knows of one stream it received."""

    __slots__ = ("pid", "started", "sequence", "hash", "ended", "checkpointed", "template")

    def __init__(self, pid: int, started: Optional[str], template: dict) -> None:
        self.pid = pid
        self.started = started  # the process's start time, so a reused pid is not taken for it
        self.sequence = 0
        self.hash = ""
        self.ended = False
        self.checkpointed = 0
        self.template = template  # user, host, kernel of its events, for the end we may write

    def advance(self, claim: Claim) -> None:
        """Take a checked line as the stream's head."""
        _, self.sequence, action, self.hash = claim
        self.ended = action == "stream-ended"


def _template(line: bytes) -> dict:
    """User, host and kernel of a stream's first line (decoded whole: once per stream),
    for the end the custodian may write for it."""
    try:
        event = loads(line)  # the standard library's codec: it takes what the check took (1e999 ...)
    except ValueError:
        raise Refused("json") from None
    guard = event["kernel_guard"]
    template = {k: event[k] for k in ("user", "host") if k in event}
    template["kernel_guard"] = {k: guard[k] for k in ("kernel_id", "notebook", "mode") if k in guard}
    return template


def _start_time(pid: int) -> Optional[str]:
    """When a live process started (None once it is gone or a zombie): with the pid,
    it names one process, where the pid alone may be reused."""
    fields = proc_stat(pid)
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


class _Inbox:
    """Messages received and not yet judged.  The socket is read ahead of the checks:
    the kernel's socket buffer holds a few messages only, and its sends should not
    wait while the custodian judges the ones before."""

    def __init__(self, receive: Callable[[], Message]) -> None:
        self._receive = receive
        self.messages: Deque[Message] = deque()
        self.closed = False  # every kernel process closed its end (or the socket failed)

    def pull(self) -> None:
        """Receive what is waiting now (the socket does not block), up to the bound."""
        while not self.closed and len(self.messages) < _READ_AHEAD:
            try:
                message, sender = self._receive()
            except (BlockingIOError, TimeoutError):
                return
            except (EOFError, OSError):
                self.closed = True
                return
            self.messages.append((message, sender))

    def batch(self) -> Iterator[Message]:
        """The next messages in order, up to a batch, reading ahead before each."""
        for _ in range(_MESSAGES_PER_BATCH):
            self.pull()
            if not self.messages:
                return
            yield self.messages.popleft()


class Custodian:
    """The supervisor's side: take the kernel's lines, keep the heads, end the dead."""

    def __init__(self, sock: socket.socket, pipeline: Any, own_stream: Callable[[], Optional[str]],
                 emit: Callable[[Event], None]) -> None:
        self.sock = sock
        self.pipeline = pipeline
        self.own_stream = own_stream
        self.emit = emit
        self.streams: dict[str, _Stream] = {}
        self.counts = {"received": 0, "rejected": 0, "ended_for": 0}
        self.refused: Counter[str] = Counter()
        self._refused_reported: Counter[str] = Counter()
        self._pending: dict[int, bytes] = {}
        self._pending_total = 0
        self._lock = threading.Lock()
        self._inbox = _Inbox(lambda: self._receive())
        # the kernel's side cannot be trusted to say who sent a message: Linux can
        self.sock.setsockopt(SOL_SOCKET, SO_PASSCRED, 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel-guard-custodian", daemon=True)
        self._last_checkpoint = self._last_look = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - its end must be on record, whatever ended it
            self._lost(exc)

    def _serve(self) -> None:
        # reads never block: one wait when nothing is waiting, rather than one per message
        self.sock.setblocking(False)
        ready = select.poll()
        ready.register(self.sock, select.POLLIN)
        inbox = self._inbox
        while not self._stop.is_set():
            inbox.pull()
            if inbox.messages:
                self.take_all(inbox.batch())
            elif inbox.closed:
                break  # every kernel process closed its end
            else:
                ready.poll(_LIVENESS_EVERY * 1000)
            self._tick()

    def _lost(self, exc: BaseException) -> None:
        """Record the custodian's end and close the socket: the kernel hears it and says so."""
        self.emit(make_event("custodian-lost", outcome="failure", layer="custodian", recorded_by="custodian",
                             reason=f"the custodian of the record stopped ({type(exc).__name__}: {exc}): the "
                                    "kernel is told and writes its own events from here on (the weaker tier)"))
        try:
            self.sock.shutdown(SHUT_RDWR)
        except OSError:
            pass

    def _receive(self) -> tuple[bytes, int]:
        """One message and the pid of the process that sent it (from the kernel, not the message).

        EOFError once every kernel process closed its end: then Linux hands over nothing,
        no credentials either, where an empty message (a cell can send one) carries its
        sender's, and is refused as any malformed message is.  A message longer than the
        protocol allows arrives cut (MSG_TRUNC): it is refused whole, not written in part."""
        message, ancillary, flags, _addr = self.sock.recvmsg(HEADER.size + MAX_PAYLOAD, CREDENTIALS_SPACE)
        if not message and not ancillary:
            raise EOFError("every kernel process closed its end")
        if flags & MSG_TRUNC:
            message = b""
        for level, kind, data in ancillary:
            if level == SOL_SOCKET and kind == SCM_CREDENTIALS and len(data) >= CREDENTIALS.size:
                return message, CREDENTIALS.unpack_from(data)[0]
        return message, 0

    def take(self, message: bytes, sender: int) -> None:
        """One message (see :meth:`take_all`)."""
        self.take_all([(message, sender)])

    def take_all(self, messages: Iterable[Message]) -> None:
        """Messages as they came, each in its own error boundary (nothing a kernel sends
        ends the custodian); the lines that pass, from all of them in order, go to the
        writer as one batch."""
        kept: List[bytes] = []
        own = self.own_stream()
        try:
            with self._lock:  # once per batch
                for message, sender in messages:
                    start = len(kept)
                    try:
                        self._take(message, sender, own, kept)
                    except Refused as refused:
                        self._refuse(refused.reason)
                    except Exception:  # noqa: BLE001 - counted and recorded, never fatal
                        self._refuse("error")
                    # only a message's last line can lack its end
                    if len(kept) > start and not kept[-1].endswith(b"\n"):
                        kept[-1] += b"\n"
        finally:  # what was taken is written, even if receiving the next message failed
            self.counts["received"] += len(kept)
            while kept and not self.pipeline.forward(kept):
                time.sleep(0.005)  # the queue is full: wait, and the kernel's send waits with us

    def _take(self, message: bytes, sender: int, own: Optional[str], kept: List[bytes]) -> None:
        """One message: a chunk is kept for its line's end; whole lines are judged, and
        those that pass appended to ``kept`` (the caller holds the lock)."""
        kind, payload = split_message(message)
        if sender <= 0:
            raise Refused("sender")
        payload = self._unpend(sender) + payload
        if kind == b"C":
            self._pend(sender, payload)
            return
        lines = split_lines(payload)
        self._keep(lines, check_lines(lines, own, ascii=payload.isascii()), sender, kept)

    def _keep(self, lines: List[bytes], judged: List[Union[Claim, str]], sender: int, kept: List[bytes]) -> None:
        """Append to ``kept`` each line whose claims hold for its stream, in order; count
        the others, each alone (the caller holds the lock)."""
        streams = self.streams
        for line, claim in zip(lines, judged):
            if claim.__class__ is str:
                if line.strip():  # blank lines are no lines (checked only here: it is rare)
                    self._refuse(claim)
                continue
            stream, sequence, action, chain_hash = claim
            state = streams.get(stream)
            if state is not None and state.pid == sender and not state.ended and sequence > state.sequence:
                # the common case, inline: the next line of a known stream
                state.sequence, state.hash, state.ended = sequence, chain_hash, action == "stream-ended"
            else:
                try:
                    self._claim(claim, line, sender)
                except Refused as refused:
                    self._refuse(refused.reason)
                    continue
                except Exception:  # noqa: BLE001 - this line is counted; the others go on
                    self._refuse("error")
                    continue
            kept.append(line)

    def _unpend(self, sender: int) -> bytes:
        pending = self._pending.pop(sender, b"")
        self._pending_total -= len(pending)
        return pending

    def _pend(self, sender: int, payload: bytes) -> None:
        """Keep a chunk of an unfinished line, within the bounds per sender and for all."""
        if len(payload) > MAX_LINE or self._pending_total + len(payload) > MAX_PENDING_TOTAL:
            raise Refused("too-long")
        self._pending[sender] = payload
        self._pending_total += len(payload)

    def _refuse(self, reason: str) -> None:
        self.counts["rejected"] += 1
        self.refused[reason] += 1

    def _claim(self, claim: Claim, line: bytes, sender: int) -> None:
        """Take a checked line for its stream: the sender's own, next in order, still open
        (the caller holds the lock)."""
        stream, sequence = claim[0], claim[1]
        state = self.streams.get(stream)
        if state is None:
            if len(self.streams) >= _MAX_STREAMS or not valid_stream_id(stream):
                raise Refused("stream")
            state = self.streams[stream] = _Stream(sender, _start_time(sender), _template(line))
        elif state.pid != sender:
            raise Refused("stream")
        if state.ended:
            raise Refused("ended")
        if sequence <= state.sequence:
            raise Refused("sequence")
        state.advance(claim)

    def _tick(self) -> None:
        """Now and then: end the streams of processes that are gone, write the heads."""
        now = time.monotonic()
        # a process's last messages may still wait in the inbox: its stream ends after them
        if now - self._last_look >= _LIVENESS_EVERY and not self._inbox.messages:
            self._last_look = now
            self.end_dead_streams()
        if now - self._last_checkpoint >= CHECKPOINT_EVERY:
            self._last_checkpoint = now
            self.checkpoint()

    def end_dead_streams(self, all_open: bool = False) -> None:
        """Write ``stream-ended`` for each stream whose process is gone (or, at the
        supervisor's own end, every stream still open)."""
        with self._lock:
            ending = [(name, s, _start_time(s.pid) != s.started) for name, s in self.streams.items() if not s.ended]
            ending = [(name, s, gone) for name, s, gone in ending if gone or all_open]
            for _, state, _ in ending:
                state.ended = True
        for name, state, gone in ending:
            self.counts["ended_for"] += 1
            line = to_json_line(self._end_event(name, state, gone))
            while not self.pipeline.forward([line]):
                time.sleep(0.005)

    def _end_event(self, name: str, state: _Stream, gone: bool) -> Event:
        why = (f"process {state.pid} ended without closing its stream (killed, or it exited without flushing)"
               if gone else "the supervisor stopped while it was still open")
        event = make_event("stream-ended", outcome="failure", layer="custodian", recorded_by="custodian",
                           last_received=state.sequence, cut_short=True,
                           reason=f"{why}; the last event received was number {state.sequence}: "
                                  "anything it numbered later was lost inside it")
        event.update({k: v for k, v in state.template.items() if k != "kernel_guard"})
        event["kernel_guard"].update(state.template.get("kernel_guard", {}), stream=name,
                                     chain={"prev": state.hash or "0" * 64})
        event["event"]["sequence"] = state.sequence + 1
        event["process"] = {"pid": state.pid}
        event["kernel_guard"]["chain"]["hash"] = chain_hash(event)
        return event

    def checkpoint(self) -> None:
        """The heads that moved since the last checkpoint, and what was refused since the
        last report, in the supervisor's own stream."""
        with self._lock:
            moved = {name: s for name, s in self.streams.items() if s.sequence != s.checkpointed}
            heads = {name: {"sequence": s.sequence, "hash": s.hash, "pid": s.pid} for name, s in moved.items()}
            for s in moved.values():
                s.checkpointed = s.sequence
        if heads:
            self.emit(make_event("chain-checkpoint", outcome="success", layer="custodian", heads=heads,
                                 recorded_by="custodian",
                                 reason=f"chain heads of {len(heads)} streams, as the custodian received them"))
        new = self.refused - self._refused_reported
        if new:
            self._refused_reported = Counter(self.refused)
            total = sum(new.values())
            self.emit(make_event("lines-refused", outcome="failure", layer="custodian", recorded_by="custodian",
                                 refused=dict(new),
                                 reason=f"{total} lines or messages from the kernel were not written: "
                                        + ", ".join(f"{n} {why}" for why, n in sorted(new.items()))
                                        + " (see record_protocol: what a kernel may send)"))

    def stop(self, timeout: float = 5.0) -> None:
        """Take what is still in the socket, end open streams, write a last checkpoint."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self.sock.setblocking(False)
        inbox = self._inbox  # what the thread had received, then what is still in the socket
        while True:
            inbox.pull()
            if not inbox.messages:
                break
            self.take_all(inbox.batch())
        self.end_dead_streams(all_open=True)
        self.checkpoint()
