"""The supervisor keeps the kernel's record: a cell cannot erase it, a killed kernel's stream
still ends, and `kernel-guard verify` finds the record whole.  Kernels run as uid 1000, their
sink in a folder outside the kernel's Landlock writable roots (as a Zero to JupyterHub pod's
/var/log/kernel_guard would be)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import psutil
import pytest
from launcher_support import NOTEBOOK_USER, LaunchedKernel, specs_on_path, unprivileged_root

from kernel_guard.cli.verify import verify
from kernel_guard.launch.custodian_sink import CustodianSink
from kernel_guard.launch.record_protocol import HEADER

ERASE = """
import os
path = {sink!r}
held = []
for fd in os.listdir("/proc/self/fd"):
    try:
        held.append(os.readlink(f"/proc/self/fd/{{fd}}"))
    except OSError:
        pass  # the listing's own fd, closed by now
print("HELD" if path in held else "NOT-HELD")
for attempt in (lambda: open(path, "w").close(), lambda: os.truncate(path, 0), lambda: os.unlink(path)):
    try:
        attempt()
        print("ERASED")
    except PermissionError:
        print("REFUSED")
"""


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with unprivileged_root() as folder:
        yield folder


@pytest.fixture
def evidence() -> Iterator[str]:
    """A folder of the notebook user's outside every writable root of its kernel."""
    folder = tempfile.mkdtemp(prefix="kernel-guard-evidence-", dir="/var/lib")
    os.chown(folder, *NOTEBOOK_USER)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kernel(root: str, name: str, evidence: str) -> LaunchedKernel:
    sink = os.path.join(evidence, "events.jsonl")
    kernel = LaunchedKernel(os.path.join(root, name), "guarded", user=NOTEBOOK_USER,
                            env={"KERNEL_GUARD_SINKS": f"file://{sink}"})
    kernel.sink = sink
    return kernel


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _streams(kernel: LaunchedKernel) -> dict:
    reports, duplicates, _ = verify(kernel.events())
    assert not duplicates
    return reports


def test_a_cell_cannot_erase_the_record_the_custodian_keeps(root: str, evidence: str) -> None:
    """After a refused exec, the cell holds no handle on the sink and cannot open, truncate or delete
    it; the refusal is there and the record verifies whole after a clean shutdown."""
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        kernel = _kernel(root, "erase", evidence).start()
        try:
            assert kernel.execute("import os\nos.system('id')").status == "error"
            result = kernel.execute(ERASE.format(sink=kernel.sink))
            assert result.stdout.split() == ["NOT-HELD", "REFUSED", "REFUSED", "REFUSED"], result.error_text
        finally:
            kernel.shutdown()
    events = kernel.events_until_stopped(timeout=15)
    assert any(e["event"]["action"] == "exec-denied" and e["kernel_guard"]["layer"] == "audit" for e in events)
    reports = _streams(kernel)
    problems = {name: r.problems() for name, r in reports.items()}
    assert all(p == [] for p in problems.values()), problems
    assert len(reports) == 2  # the kernel's stream and the supervisor's
    assert {r.ended_by for r in reports.values()} == {"its own process"}


def test_a_killed_kernels_stream_is_ended_by_the_custodian(root: str, evidence: str) -> None:
    """SIGKILL: the custodian writes the kernel stream's end, chained to the last event it received,
    and writes the heads as a checkpoint; verify finds nothing changed, and calls the kernel's
    stream cut short (exit status 3), never whole."""
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        kernel = _kernel(root, "killed", evidence).start()
        try:
            pid = kernel.pid
            assert kernel.execute("import subprocess\nsubprocess.run(['true'])").status == "error"
            time.sleep(0.5)  # the refusal reaches the custodian (the writer's tick)
            os.kill(pid, signal.SIGKILL)
            psutil.wait_procs([p for p in [_process(pid)] if p], timeout=10)
            ended = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "supervisor-stopped"
                                                            for e in evs), timeout=20)
        finally:
            kernel.shutdown()  # the client's side, and the kernel manager's record of a dead kernel
    ends = [e for e in ended if e["event"]["action"] == "stream-ended"
            and e["kernel_guard"].get("recorded_by") == "custodian"]
    assert len(ends) == 1, [e["event"]["action"] for e in ended]
    end = ends[0]
    assert end["process"]["pid"] == pid and "ended without closing its stream" in end["event"]["reason"]
    assert end["kernel_guard"]["last_received"] == end["event"]["sequence"] - 1
    assert any(e["event"]["action"] == "chain-checkpoint" for e in ended)
    reports = _streams(kernel)
    assert all(r.problems() == [] for r in reports.values()), {n: r.problems() for n, r in reports.items()}
    assert reports[end["kernel_guard"]["stream"]].ended_by == "custodian"
    assert reports[end["kernel_guard"]["stream"]].cut_short == end["kernel_guard"]["last_received"]
    assert {r.author for r in reports.values()} == {"supervisor", "kernel (as it claims)"}
    script = os.path.join(os.path.dirname(sys.executable), "kernel-guard")
    out = subprocess.run([script, "verify", kernel.sink], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and "CUT SHORT" in out.stdout and "whole" not in out.stdout.splitlines()[-1], out.stdout


def test_without_its_custodian_the_kernel_says_so_and_keeps_recording(root: str, evidence: str) -> None:
    """The supervisor killed from outside: the kernel says on stderr that it now writes its own
    record; its later refusals still reach a sink (the server log: the file is outside its domain)."""
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        kernel = _kernel(root, "orphaned", evidence).start()
        try:
            os.kill(kernel.supervisor_pid(), signal.SIGKILL)
            time.sleep(0.5)
            assert kernel.execute("import os\nos.system('id')").status == "error"
            deadline = time.monotonic() + 15
            while "custodian of the record" not in kernel.stderr() and time.monotonic() < deadline:
                time.sleep(0.1)
            stderr = kernel.stderr()
        finally:
            kernel.shutdown()
    assert "custodian of the record (the exec supervisor) cannot be reached" in stderr
    assert '"action":"exec-denied"' in stderr.split("cannot be reached", 1)[1]
    lost = [e for e in kernel.events() if e["event"]["action"] == "supervisor-lost"]
    assert [e["kernel_guard"]["recorded_by"] for e in lost] == ["witness"]


def _custodian_pair(monkeypatch, **bounds):
    """A custodian reading one end of a socket pair into a memory sink (what the supervisor runs)."""
    import socket as socket_module

    from kernel_guard.events.pipeline import EventPipeline
    from kernel_guard.events.processors import Sequence
    from kernel_guard.launch import custodian as custodian_module
    from kernel_guard.testing import MemorySink

    for name, value in bounds.items():
        monkeypatch.setattr(custodian_module, name, value)
    ours, theirs = socket_module.socketpair(socket_module.AF_UNIX, socket_module.SOCK_SEQPACKET)
    sink = MemorySink()
    pipe = EventPipeline([sink], [Sequence()], spool_dir="")
    keeper = custodian_module.Custodian(theirs, pipe, lambda: OWN, pipe.emit)
    return custodian_module, ours, keeper, pipe, sink


def _line(stream: str, number: int, pid: int = 424242, action: str = "cell-executed", **guard) -> bytes:
    import json

    return (json.dumps({"event": {"action": action, "sequence": number, "id": f"{stream}-{number}"},
                        "kernel_guard": {"stream": stream, **guard}, "process": {"pid": pid}}) + "\n").encode()


#: stream ids as kernels make them (24 hex digits)
A, B, C, D, E, OWN = (f"{n:024x}" for n in range(0xA, 0x10))


def _written(sink) -> list[str]:
    return [e["kernel_guard"]["stream"] for e in sink.events if e["event"]["action"] == "cell-executed"]


def test_the_custodian_takes_the_sender_from_the_kernel_and_bounds_what_it_holds(monkeypatch) -> None:
    """The pid of a stream is the sending process's as Linux reports it, not the one a line claims;
    lines claiming the custodian's own stream, or written as by the custodian, are refused; streams
    and a line cut in chunks cannot grow without bound."""
    module, ours, keeper, pipe, sink = _custodian_pair(monkeypatch, _MAX_STREAMS=3, MAX_LINE=1000)
    sender = CustodianSink(ours, lambda: [])
    sender.confirm()
    sender.emit_lines([_line(A, 1), _line(OWN, 1), _line(B, 1, recorded_by="custodian"),
                       _line(C, 1), _line(D, 1), _line(E, 1)])
    ours.sendall(HEADER.pack(b"C", 1) + b"x" * 900)
    ours.sendall(HEADER.pack(b"C", 1) + b"x" * 900)  # past the bound: dropped
    keeper.stop()
    pipe.flush()
    assert _written(sink) == [A, C, D]  # three streams at most; E had no room
    assert keeper.streams[A].pid == os.getpid()  # not the 424242 the line claims
    assert keeper.counts["rejected"] == 4 and keeper._pending == {}
    pipe.close()
    ours.close()
    keeper.sock.close()


#: what a cell wrote into the record with JSON escapes when the custodian judged raw bytes
FORGED = [
    # the custodian's own stream, spelt with escapes: numbered as its next event
    b'{"event": {"action": "exec-allowed", "sequence": 99}, "kernel_guard": {"stream": "\\u0030' + OWN[1:].encode() + b'"}}',
    # a streamless loss record, as if by the witness
    b'{"event": {"action": "supervisor-lost", "sequence": 1}, "kernel_guard": {"recorded_\\u0062y": "witness"}}',
    b'not json at all',
    b'[1, 2, 3]',
    b'{"event": {"action": "cell-executed", "sequence": "7"}, "kernel_guard": {"stream": "' + B.encode() + b'"}}',
    b'{"event": {"action": "cell-executed", "sequence": true}, "kernel_guard": {"stream": "' + B.encode() + b'"}}',
    b'{"event": {"action": "chain-checkpoint", "sequence": 1}, "kernel_guard": {"stream": "' + C.encode() + b'"}}',
]


def test_the_custodian_decodes_every_line_and_writes_only_what_the_sender_may_claim(monkeypatch) -> None:
    """Escaped spellings of the custodian's stream or of recorded_by, junk, non-numeric sequences and
    custodian-only actions are refused and counted; a replayed number, another process's stream and
    lines after a stream's end too; the sender's own valid lines in between are written."""
    module, ours, keeper, pipe, sink = _custodian_pair(monkeypatch)
    sender = CustodianSink(ours, lambda: [])
    sender.confirm()
    forged = [line + b"\n" for line in FORGED]
    sender.emit_lines([_line(A, 1), *forged, _line(A, 2), _line(A, 2), _line(A, 1)])
    keeper.take(*keeper._receive())  # one message: the batch
    keeper.take(HEADER.pack(b"L", 1) + _line(A, 3), os.getppid())  # A is this process's: not the parent's
    sender.emit_lines([_line(A, 3, action="stream-ended"), _line(A, 4)])
    keeper.stop()
    pipe.flush()
    assert [e["event"]["sequence"] for e in sink.events if e["kernel_guard"].get("stream") == A] == [1, 2, 3]
    assert keeper.refused == {"stream": 2, "authorship": 1, "json": 2, "sequence": 4, "action": 1, "ended": 1}
    refused = [e for e in sink.events if e["event"]["action"] == "lines-refused"]
    assert len(refused) == 1 and refused[0]["kernel_guard"]["recorded_by"] == "custodian"
    assert refused[0]["kernel_guard"]["refused"] == dict(keeper.refused)
    pipe.close()
    ours.close()
    keeper.sock.close()


def test_no_message_ends_the_custodian_and_pending_chunks_are_bounded_for_all_senders(monkeypatch) -> None:
    """Empty and short messages, unknown kinds and chunks from many senders past the total bound
    are refused and counted; the custodian still writes the next valid line."""
    module, ours, keeper, pipe, sink = _custodian_pair(monkeypatch, MAX_PENDING_TOTAL=3000)
    keeper.start()
    for message in (b"", b"L", HEADER.pack(b"Z", 1) + b"x", HEADER.pack(b"L", 1)):
        keeper.take(message, os.getpid())
    for pid in range(1000, 1008):  # eight senders, each under its own bound, together over the total
        keeper.take(HEADER.pack(b"C", pid) + b"y" * 900, pid)
    CustodianSink(ours, lambda: []).emit_lines([_line(A, 1)])
    deadline = time.monotonic() + 10
    while keeper.counts["received"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    keeper.stop()
    pipe.flush()
    assert _written(sink) == [A]
    assert keeper.refused["message"] == 4 and keeper.refused["too-long"] == 5
    assert keeper._pending_total <= 3000
    pipe.close()
    ours.close()
    keeper.sock.close()


def test_a_custodian_that_ends_anyway_is_recorded_and_the_kernel_hears_it(monkeypatch) -> None:
    """If the custodian's thread ends on an error, custodian-lost is recorded and the socket closed:
    the kernel's side then writes its own record and says so."""
    module, ours, keeper, pipe, sink = _custodian_pair(monkeypatch)

    def broken(*_args):
        raise MemoryError("simulated")

    monkeypatch.setattr(keeper, "_receive", broken)
    keeper.start()
    keeper._thread.join(5)
    own = MemorySinkFor()
    sender = CustodianSink(ours, lambda: [own])
    sender.confirm()  # the supervisor had started
    sender.emit_lines([_line(A, 1)])
    pipe.flush()
    lost = [e for e in sink.events if e["event"]["action"] == "custodian-lost"]
    assert len(lost) == 1 and lost[0]["kernel_guard"]["recorded_by"] == "custodian"
    assert [json.loads(line)["event"]["action"] for line in own.lines] == ["sink-error", "cell-executed"]
    pipe.close()
    ours.close()
    keeper.sock.close()


class MemorySinkFor:
    """A kernel's own sink standing in for its configured ones: keeps the lines it is given."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def emit_lines(self, lines: list[bytes]) -> None:
        self.lines += lines


def test_a_supervisor_that_never_started_is_reported_once_by_the_launcher(capfd) -> None:
    """Before the launcher saw the supervisor start, a send that fails goes to the kernel's
    own sinks without a second message: the launcher says why the supervisor failed."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    own = MemorySinkFor()
    sender = CustodianSink(ours, lambda: [own])
    sender.emit_lines([_line(A, 1)])
    assert [json.loads(line)["event"]["action"] for line in own.lines] == ["cell-executed"]
    assert "custodian" not in capfd.readouterr().err
    ours.close()


#: lines only a strict decoder refuses: not UTF-8, a lone surrogate, NaN, junk after the object
STRICT = [b'{"event": {"sequence": 1}, "kernel_guard": {"stream": "' + A.encode() + b'"}, "x": "\xff"}',
          b'{"event": {"sequence": 1}, "kernel_guard": {"stream": "' + A.encode() + b'"}, "x": "\\ud800"}',
          b'{"event": {"sequence": 1}, "kernel_guard": {"stream": "' + A.encode() + b'"}, "x": NaN}',
          b'{"event": {"sequence": 1}, "kernel_guard": {"stream": "' + A.encode() + b'"}} junk',
          b'{"event": {"sequence": 1, "sequence": "1"}, "kernel_guard": {"stream": "' + A.encode() + b'"}}',
          b'{"event": {"sequence": 1}, "kernel_guard": {"stream": "' + A.encode() + b'", "recorded_by": null}}']


#: the custodian's readers of a line: the native parser (simdjson), msgspec's typed decoder
#: of the claimed fields, a whole decode by orjson, and by the standard library
READERS = ("native", "msgspec", "orjson", "json")


def _use_reader(monkeypatch, reader: str) -> None:
    import orjson

    from kernel_guard.launch import record_protocol

    if reader == "native":
        return
    monkeypatch.setattr(record_protocol, "_fast_claims", None)
    if reader == "msgspec":
        return
    monkeypatch.setattr(record_protocol, "_decode", record_protocol._decode_whole)
    monkeypatch.setattr(record_protocol, "_loads", orjson.loads if reader == "orjson" else record_protocol._strict_loads)


@pytest.mark.parametrize("line", FORGED + STRICT + [_line(A, 1).rstrip(b"\n"), _line(A, 2, action="stream-ended")])
def test_every_reader_judges_every_line_alike(monkeypatch, line: bytes) -> None:
    """The native parser, msgspec's typed decoder (the claimed fields only) and the whole
    decodes take and refuse the same lines for the same reasons, and what they take parses."""
    import json

    from kernel_guard.launch import record_protocol

    assert record_protocol.native_parser() is not None  # the test set-up builds it (libsimdjson-dev)

    def judged(reader: str) -> tuple:
        with monkeypatch.context() as patch:
            _use_reader(patch, reader)
            try:
                claims = record_protocol.check_line(line, OWN)
            except record_protocol.Refused as refused:
                return ("refused", refused.reason)
        json.loads(line)
        return ("taken", claims.stream, claims.sequence, claims.action, claims.hash)

    native = judged("native")
    assert [judged(reader) for reader in READERS[1:]] == [native] * 3


def test_a_refused_line_in_a_batch_is_refused_alone(monkeypatch) -> None:
    """Refused lines in the middle of a message (junk, a forged author, a list for an action, a
    blank line) are counted by reason, each alone; the lines around them are written, in order."""
    module, ours, keeper, pipe, sink = _custodian_pair(monkeypatch)
    sender = CustodianSink(ours, lambda: [])
    sender.confirm()
    sender.emit_lines([_line(A, 1), b"not json\n", _line(A, 2), _line(A, 3, recorded_by="witness"), _line(A, 3),
                       _line(A, 4, action=["exec-denied"]), b"\n", _line(A, 4), _line(A, 5)])
    keeper.take(*keeper._receive())  # one message: the batch
    keeper.stop()
    pipe.flush()
    assert [e["event"]["sequence"] for e in sink.events if e["event"]["action"] == "cell-executed"] == [1, 2, 3, 4, 5]
    assert keeper.refused == {"json": 1, "authorship": 1, "action": 1}
    assert keeper.counts["received"] == 5
    pipe.close()
    ours.close()
    keeper.sock.close()


def test_an_empty_or_oversized_message_neither_ends_the_custodian_nor_is_written_in_part(monkeypatch) -> None:
    """A cell's empty message is not the kernel closing its end (Linux gives it the sender's
    credentials; the end of the stream has none), and a message longer than the protocol
    allows arrives cut: both are refused whole and counted, and the lines after them are written."""
    module, ours, keeper, pipe, sink = _custodian_pair(monkeypatch)
    keeper.start()
    ours.send(b"")
    ours.send(HEADER.pack(b"L", 0) + _line(B, 1) * (module.MAX_PAYLOAD // len(_line(B, 1)) + 2))
    CustodianSink(ours, lambda: []).emit_lines([_line(A, 1)])
    deadline = time.monotonic() + 10
    while keeper.counts["received"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keeper._thread.is_alive() and not keeper._inbox.closed
    ours.close()  # now the end: the custodian's loop ends by itself
    keeper._thread.join(10)
    assert not keeper._thread.is_alive() and keeper._inbox.closed
    keeper.stop()
    pipe.flush()
    assert _written(sink) == [A]
    assert keeper.refused["message"] == 2, keeper.refused
    pipe.close()
    keeper.sock.close()


def test_messages_read_ahead_are_taken_in_order_and_none_is_left_at_stop(monkeypatch) -> None:
    """Many messages waiting at once (more than a batch and than the read-ahead), a line cut in
    chunks among them and a refused line: all are judged in the order sent, and what the
    custodian had read ahead but not yet judged when it stopped is still written."""
    module, ours, keeper, pipe, sink = _custodian_pair(monkeypatch, _MESSAGES_PER_BATCH=3, _READ_AHEAD=5)
    monkeypatch.setattr("kernel_guard.launch.custodian_sink.MAX_PAYLOAD", 300)
    sender = CustodianSink(ours, lambda: [])
    sender.confirm()
    lines = [_line(A, n) for n in range(1, 41)]
    lines[7] = _line(A, 8, padding="x" * 1000)  # sent in chunks
    lines[20] = _line(A, 3)  # a replay: refused
    sender.emit_lines(lines)
    keeper._inbox.pull()  # read ahead, as the thread does before it judges
    assert len(keeper._inbox.messages) == 5
    keeper.start()
    keeper.stop()
    pipe.flush()
    written = [e["event"]["sequence"] for e in sink.events if e["event"]["action"] == "cell-executed"]
    assert written == [n for n in range(1, 41) if n != 21]
    assert keeper.refused == {"sequence": 1} and keeper._pending == {}
    pipe.close()
    ours.close()
    keeper.sock.close()


@pytest.mark.parametrize("payload", [b"", b"\n", b"a\nb\n", b"a\nb", b"a\r\nb\rc\n", b"\r\r\n\n", b"a\x0bb\x0c\x1c\x85\n",
                                     b"x" * 100 + b"\n\n" + b"y" * 7])
def test_a_message_is_cut_into_lines_as_splitlines_cuts_it(payload: bytes) -> None:
    """The custodian's search for line ends cuts a message exactly as bytes.splitlines(keepends=True):
    at \\n, \\r and \\r\\n only, the last line with or without its end."""
    from kernel_guard.launch.record_protocol import split_lines

    assert split_lines(payload) == payload.splitlines(keepends=True)


def test_a_dead_senders_stream_ends_after_the_messages_read_ahead(monkeypatch) -> None:
    """A process sent its lines and died before the custodian judged them all: the custodian ends
    its stream only once the messages it had read ahead are judged, so none of them is refused."""
    module, ours, keeper, pipe, sink = _custodian_pair(monkeypatch, _MESSAGES_PER_BATCH=1, _LIVENESS_EVERY=0.0)
    monkeypatch.setattr("kernel_guard.launch.custodian_sink.MAX_PAYLOAD", 300)
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:  # the sender: one line per message, then gone when told
        sender = CustodianSink(ours, lambda: [])
        sender.confirm()
        sender.emit_lines([_line(A, n) for n in range(1, 6)])
        os.read(go_r, 1)
        os._exit(0)
    keeper.sock.setblocking(False)  # as the thread reads
    deadline = time.monotonic() + 10
    while len(keeper._inbox.messages) < 5 and time.monotonic() < deadline:
        keeper._inbox.pull()
    keeper.take_all(keeper._inbox.batch())  # its first line: the stream is the live child's
    os.write(go_w, b"x")
    os.waitpid(child, 0)
    while keeper._inbox.messages:  # as the thread does: a batch, then a tick
        keeper.take_all(keeper._inbox.batch())
        keeper._tick()
    keeper.stop()
    pipe.flush()
    assert [e["event"]["sequence"] for e in sink.events if e["event"]["action"] == "cell-executed"] == [1, 2, 3, 4, 5]
    ends = [e for e in sink.events if e["event"]["action"] == "stream-ended"]
    assert len(ends) == 1 and ends[0]["kernel_guard"]["last_received"] == 5 and not keeper.refused
    for fd in (go_r, go_w):
        os.close(fd)
    pipe.close()
    ours.close()
    keeper.sock.close()
