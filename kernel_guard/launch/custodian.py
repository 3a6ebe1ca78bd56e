"""The custodian of the record: under the launcher, the supervisor writes the kernel's events.

A record kept where the notebook can write can be erased, so the kernel does
not open its sinks: :class:`CustodianSink` hands each batch of JSON lines to
the supervisor over an ``AF_UNIX``/``SOCK_SEQPACKET`` socket (on the pipeline's
writer thread, never a cell's).  The supervisor (:class:`Custodian`) checks
each batch (each line, where a line might pass for the custodian's own
records), queues the lines as they came into its own pipeline, whose sinks and spools
were opened outside the kernel's Landlock domain, and keeps each stream's head
(last number and hash).  It writes the heads as ``chain-checkpoint`` events in
its own stream every few seconds, and for a stream whose process ended without
``stream-ended`` (a killed kernel, a pool worker terminated) it writes that
end itself, chained to the last event it received, with the reason.

What it cannot do: events the kernel numbered but had not sent when it died
are lost inside the kernel (the end the custodian writes says after which
number); a kernel can send lies about itself (its own stream is its own), not
about the supervisor's stream, which lines claiming it are refused.  If the
socket fails, the kernel says so and falls back to writing its own record
(:meth:`CustodianSink.emit`), the weaker tier.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Any, Callable, List, Optional

from ..events.schema import Event, make_event, to_json_line
from ..events.sinks import Sink
from ..events.streams import chain_hash
from .seccomp_filter import proc_stat

try:  # the custodian parses every line it takes: several times faster with orjson
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is in the "fast" extra
    import json

    _loads = json.loads

__all__ = ["Custodian", "CustodianSink"]

#: message header: kind (b"L" whole lines, b"C" a chunk of a longer line), sender pid
_HEADER = struct.Struct("!cI")
#: payload bytes per message (a SOCK_SEQPACKET message must fit the socket buffer)
_MAX_PAYLOAD = 60 * 1024
#: SCM_CREDENTIALS: pid, uid, gid of the sending process, as the kernel saw it
_CREDENTIALS = struct.Struct("iII")
_CREDENTIALS_SPACE = socket.CMSG_SPACE(_CREDENTIALS.size)
#: bounds on what a kernel can make the custodian hold: one line, and the streams it tracks
_MAX_LINE = 16 << 20
_MAX_STREAMS = 10_000
#: seconds between checkpoints, and between looks for ended processes
CHECKPOINT_EVERY = 5.0
_LIVENESS_EVERY = 1.0


class CustodianSink(Sink):
    """The kernel's only sink under the launcher: batches to the supervisor."""

    url = "custodian://supervisor"

    def __init__(self, sock: socket.socket, fallback: Callable[[], List[Sink]]) -> None:
        self.sock = sock
        self.sock.settimeout(10.0)  # a stalled custodian fails the batch instead of hanging the writer
        self._fallback_factory = fallback
        self._fallback: Optional[List[Sink]] = None

    def emit(self, events: List[Event]) -> None:
        self.emit_lines([to_json_line(e) for e in events])

    def emit_lines(self, lines: List[bytes]) -> None:
        if self._fallback is not None:
            self._write_fallback(lines)
            return
        try:
            self._send(lines)
        except OSError as exc:
            self._lose_custodian(exc)
            self._write_fallback(lines)

    def _send(self, lines: List[bytes]) -> None:
        pid = os.getpid()
        buf: list[bytes] = []
        size = 0
        for line in lines:
            if len(line) > _MAX_PAYLOAD:  # alone, in chunks: only the last one ends it
                self._flush(buf, pid)
                buf, size = [], 0
                chunks = [line[i:i + _MAX_PAYLOAD] for i in range(0, len(line), _MAX_PAYLOAD)]
                for chunk in chunks[:-1]:
                    self.sock.sendall(_HEADER.pack(b"C", pid) + chunk)
                self.sock.sendall(_HEADER.pack(b"L", pid) + chunks[-1])
                continue
            if size + len(line) > _MAX_PAYLOAD:
                self._flush(buf, pid)
                buf, size = [], 0
            buf.append(line)
            size += len(line)
        self._flush(buf, pid)

    def _flush(self, buf: list[bytes], pid: int) -> None:
        if buf:
            self.sock.sendall(_HEADER.pack(b"L", pid) + b"".join(buf))

    def use_own_sinks(self) -> None:
        """The supervisor never started (the launcher says why): write the kernel's own record."""
        from ..events.sinks.stream import StderrSink

        if self._fallback is None:
            try:
                self._fallback = self._fallback_factory()
            except Exception:
                self._fallback = [StderrSink()]

    def _lose_custodian(self, exc: OSError) -> None:
        """Say so on stderr; open the kernel's own sinks (what Landlock lets it open)."""
        from ..events.pipeline import _stderr_line

        _stderr_line(f"kernel_guard: the custodian of the record (the exec supervisor) cannot be reached "
                     f"({exc.strerror or exc}): this kernel now writes its own events, where a cell may reach them.")
        self.use_own_sinks()
        note = make_event("sink-error", outcome="failure", layer="custodian", sink=self.url,
                          reason=f"the custodian cannot be reached ({exc.strerror or exc}): the kernel writes "
                                 "its own events from here on (the weaker tier)")
        self._write_fallback([to_json_line(note)])

    def _write_fallback(self, lines: List[bytes]) -> None:
        for sink in self._fallback or ():
            try:
                sink.emit_lines(lines)
            except Exception:
                pass

    def flush(self) -> None:
        for sink in self._fallback or ():
            sink.flush()

    def close(self) -> None:
        for sink in self._fallback or ():
            sink.close()


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


def _start_time(pid: int) -> Optional[str]:
    """When a live process started (None once it is gone or a zombie): with the pid,
    it names one process, where the pid alone may be reused."""
    fields = proc_stat(pid)
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


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
        self._partial: dict[int, bytes] = {}
        self._lock = threading.Lock()
        # the kernel's side cannot be trusted to say who sent a message: Linux can
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel-guard-custodian", daemon=True)
        self._last_checkpoint = self._last_look = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(_LIVENESS_EVERY)
        while not self._stop.is_set():
            try:
                message, sender = self._receive()
            except socket.timeout:
                self._tick()
                continue
            except OSError:
                break
            if not message:
                break  # every kernel process closed its end
            self._take(message, sender)
            self._tick()

    def _receive(self) -> tuple[bytes, int]:
        """One message and the pid of the process that sent it (from the kernel, not the message)."""
        message, ancillary, _flags, _addr = self.sock.recvmsg(_HEADER.size + _MAX_PAYLOAD, _CREDENTIALS_SPACE)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _CREDENTIALS.size:
                return message, _CREDENTIALS.unpack_from(data)[0]
        return message, 0

    def _take(self, message: bytes, sender: int = 0) -> None:
        """One message: whole lines (or a chunk of one), checked and queued."""
        if len(message) < _HEADER.size:
            return
        kind, claimed = _HEADER.unpack_from(message)
        pid = sender or claimed
        payload = self._partial.pop(pid, b"") + message[_HEADER.size:]
        if kind == b"C":
            if len(payload) <= _MAX_LINE:
                self._partial[pid] = payload
            else:  # a line no event needs: dropped, counted, and its chunks after it too
                self.counts["rejected"] += 1
            return
        lines = [line + b"\n" for line in payload.split(b"\n") if line.strip()]
        if not lines:
            return
        own = self.own_stream()
        if (own and own.encode() in payload) or b'"recorded_by"' in payload:
            kept = [line for line in lines if self._accept(line, pid)]  # each line judged alone
        else:
            # one process's batch, nothing in it claiming the custodian's records (judged
            # on the bytes): its last line gives its stream's head
            kept = lines if self._accept(lines[-1], pid) else []
            self.counts["rejected"] += len(lines) - len(kept) - (not kept)
        self.counts["received"] += len(kept)
        while kept and not self.pipeline.forward(kept):
            time.sleep(0.005)  # the queue is full: wait, and the kernel's send waits with us

    def _accept(self, line: bytes, sender: int = 0) -> bool:
        """A JSON event that does not claim the supervisor's stream nor a stream ended;
        a new stream is another process's only while there is room to keep it."""
        try:
            event = _loads(line)
            guard = event["kernel_guard"]
            stream, number = guard.get("stream"), event["event"]["sequence"]
        except Exception:
            self.counts["rejected"] += 1
            return False
        if not isinstance(stream, str) or stream == self.own_stream() or guard.get("recorded_by"):
            self.counts["rejected"] += 1
            return False
        with self._lock:
            state = self.streams.get(stream)
            if state is None and len(self.streams) >= _MAX_STREAMS:
                self.counts["rejected"] += 1
                return False
            if state is None:
                pid = sender or int((event.get("process") or {}).get("pid") or 0)
                template = {k: event[k] for k in ("user", "host") if k in event}
                template["kernel_guard"] = {k: guard[k] for k in ("kernel_id", "notebook", "mode") if k in guard}
                state = self.streams[stream] = _Stream(pid, _start_time(pid) if pid else None, template)
            if state.ended:
                self.counts["rejected"] += 1
                return False
            state.sequence = max(state.sequence, int(number))
            state.hash = str((guard.get("chain") or {}).get("hash", ""))
            state.ended = event["event"].get("action") == "stream-ended"
        return True

    def _tick(self) -> None:
        """Now and then: end the streams of processes that are gone, write the heads."""
        now = time.monotonic()
        if now - self._last_look >= _LIVENESS_EVERY:
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
                           last_received=state.sequence,
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
        """The heads that moved since the last checkpoint, in the supervisor's own stream."""
        with self._lock:
            moved = {name: s for name, s in self.streams.items() if s.sequence != s.checkpointed}
            heads = {name: {"sequence": s.sequence, "hash": s.hash, "pid": s.pid} for name, s in moved.items()}
            for s in moved.values():
                s.checkpointed = s.sequence
        if heads:
            self.emit(make_event("chain-checkpoint", outcome="success", layer="custodian", heads=heads,
                                 reason=f"chain heads of {len(heads)} streams, as the custodian received them"))

    def stop(self, timeout: float = 5.0) -> None:
        """Take what is still in the socket, end open streams, write a last checkpoint."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self.sock.setblocking(False)
        while True:
            try:
                message, sender = self._receive()
            except OSError:
                break
            if not message:
                break
            self._take(message, sender)
        self.end_dead_streams(all_open=True)
        self.checkpoint()

