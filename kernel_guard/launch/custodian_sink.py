"""The kernel's side of the record under the launcher: its only sink hands batches to the custodian.

A record kept where the notebook can write can be erased, so a launcher kernel
opens no sink of its own: :class:`CustodianSink` sends each batch of JSON lines
to the supervisor (:mod:`.custodian`) over the socket pair whose wire format
:mod:`.record_protocol` specifies, on the pipeline's writer thread, never a
cell's.  If the custodian cannot be reached (it died, or stalled past the
socket's time-out), the kernel says so on stderr and in its record, and writes
the lines not yet delivered to its own sinks (the weaker tier: a cell may
reach them); it returns to the custodian as soon as the socket takes messages
again, and never writes a line twice.  See docs/architecture.md.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Callable, List, Optional

from ..events.schema import Event, make_event, to_json_line
from ..events.sinks import Sink, line_runs
from .record_protocol import HEADER, MAX_PAYLOAD

__all__ = ["CustodianSink"]

#: seconds a send may wait on a stalled custodian before the lines go to the kernel's own sinks
SEND_TIMEOUT = 10.0


class CustodianSink(Sink):
    """The kernel's only sink under the launcher: batches to the supervisor."""

    url = "custodian://supervisor"

    def __init__(self, sock: socket.socket, fallback: Callable[[], List[Sink]]) -> None:
        self.sock = sock
        self.sock.settimeout(SEND_TIMEOUT)  # a stalled custodian fails the batch instead of hanging the writer
        self._fallback_factory = fallback
        self._fallback: Optional[List[Sink]] = None
        #: why the custodian takes no lines now: None (it does), "stalled" (it may again), "gone"
        self._away: Optional[str] = None
        #: the launcher saw the supervisor start: before that, a lost custodian is the
        #: launcher's to report (it says why the supervisor failed, once)
        self._confirmed = False

    def confirm(self) -> None:
        """The supervisor started: from now on, losing it is said here."""
        self._confirmed = True

    def emit(self, events: List[Event]) -> None:
        self.emit_lines([to_json_line(e) for e in events])

    def emit_lines(self, lines: List[bytes]) -> None:
        if self._away == "stalled" and self._writable():
            self._come_back()
        if self._away is not None:
            self._write_fallback(lines)
            return
        delivered, error = self._send(lines)
        if error is not None:
            self._lose_custodian(error)
            self._write_fallback(lines[delivered:])  # what it took is its own: never written twice

    def _messages(self, lines: List[bytes]) -> list[tuple[bytes, int]]:
        """The messages for ``lines``, each with how many lines are whole once it is sent."""
        pid = os.getpid()
        whole, part = HEADER.pack(b"L", pid), HEADER.pack(b"C", pid)
        out: list[tuple[bytes, int]] = []
        for start, stop in line_runs(lines, MAX_PAYLOAD):
            line = lines[start]
            if len(line) > MAX_PAYLOAD:  # alone, in chunks: only the last one ends it
                chunks = [line[i:i + MAX_PAYLOAD] for i in range(0, len(line), MAX_PAYLOAD)]
                out += [(part + chunk, start) for chunk in chunks[:-1]]
                out.append((whole + chunks[-1], stop))
            else:
                out.append((b"".join([whole, *lines[start:stop]]), stop))  # one copy of the lines
        return out

    def _send(self, lines: List[bytes]) -> tuple[int, Optional[OSError]]:
        """Send; return how many lines the custodian has whole, and the error that stopped us."""
        delivered = 0
        for message, whole in self._messages(lines):
            try:
                self.sock.sendall(message)
            except OSError as exc:
                return delivered, exc
            delivered = whole
        return delivered, None

    def _writable(self) -> bool:
        try:
            return bool(select.select([], [self.sock], [], 0)[1])
        except (OSError, ValueError):
            return False

    def use_own_sinks(self) -> None:
        """The supervisor never started (the launcher says why): write the kernel's own record."""
        self._away = "gone"
        self._open_fallback()

    def _open_fallback(self) -> None:
        from ..events.sinks.stream import StderrSink

        if self._fallback is None:
            try:
                self._fallback = self._fallback_factory()
            except Exception:
                self._fallback = [StderrSink()]

    def _lose_custodian(self, exc: OSError) -> None:
        """Say so on stderr and in the record; write to the kernel's own sinks (what
        Landlock lets it open) until the custodian takes lines again."""
        from ..events.pipeline import _stderr_line

        stalled = isinstance(exc, socket.timeout)
        self._away = "stalled" if stalled else "gone"
        if not self._confirmed:  # the supervisor did not start: the launcher reports it
            self._open_fallback()
            return
        why = (f"it has taken nothing for {SEND_TIMEOUT:.0f} s (stopped?)" if stalled
               else f"{exc.strerror or exc}")
        until = "until it answers again" if stalled else "from here on"
        _stderr_line(f"kernel_guard: the custodian of the record (the exec supervisor) cannot be reached ({why}): "
                     f"this kernel writes its own events {until}, where a cell may reach them.")
        self._open_fallback()
        note = make_event("sink-error", outcome="failure", layer="custodian", sink=self.url,
                          reason=f"the custodian cannot be reached ({why}): the kernel writes its own events "
                                 f"{until} (the weaker tier)")
        self._write_fallback([to_json_line(note)])

    def _come_back(self) -> None:
        from ..events.pipeline import _stderr_line

        self._away = None
        _stderr_line("kernel_guard: the custodian of the record answers again: it keeps this kernel's events again.")
        note = make_event("sink-recovered", outcome="success", layer="custodian", sink=self.url,
                          reason="the custodian answers again and keeps the kernel's events; those written "
                                 "meanwhile are in the kernel's own sinks")
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
