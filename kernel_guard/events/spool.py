"""The spool: a directory per sink where events wait until the sink has taken them.

Every event for a sink that can fail (syslog, HTTP) is appended here first
and sent from here, so an event is on disk before anything depends on the
network, and a kernel killed with SIGKILL loses nothing that reached the
spool.  Layout of one sink's directory::

    <root>/<sink-key>/
        00001763791200123456789-4242-a1b2c3.jsonl   a segment: JSON lines, oldest first
        00001763791200123456789-4242-a1b2c3.ack     bytes of that segment already delivered

Segment names start with the creation time in nanoseconds, so sorting them
sorts events by age.  One process appends to a segment, and holds
``flock(LOCK_EX)`` on it while it lives: a segment whose lock can be taken
belongs to a process that has gone (exited, crashed, was killed), and the
next process that opens the spool adopts it and sends it on from its
``.ack`` offset.  Acknowledgements are written with a rename, so the offset
is either the old one or the new one: at worst a batch is sent twice
(at-least-once; consumers de-duplicate by ``event.id``).

The spool is size-capped (``max_bytes`` of undelivered data, counted over
every process sharing the directory, approximately): what does not fit is
counted by the caller and reported as an ``events-dropped`` event.

In the extension-only route the spool lives where the kernel can write, so
code in the kernel can delete or add to it; the streams' numbers and chain
show it downstream.  A folder that is a link, another user's, or writable by
others is refused; a segment found cut short, emptied, or with an offset
inside a line is reported (``problems``), never passed over in silence, with
the number of events it lost: each segment's line count is kept beside it
(``.count``, at most half a second behind a writer that was killed).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import threading
import time
from collections import deque
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Deque, Dict, List, Optional, Tuple

from .digest import sha256_hex

__all__ = ["MemorySpool", "Spool", "SpoolRefused", "default_spool_root", "open_spool", "sink_key"]

#: (segment name, start offset, end offset) of one read batch
if TYPE_CHECKING:
    Token = Tuple[str, int, int]
else:
    Token = tuple

_SEGMENT = re.compile(r"^\d{20}-\d+-[0-9a-f]+\.jsonl$")
_SCAN_EVERY = 2.0  # seconds between looks for segments other processes left behind
_ACK_EVERY = 0.5  # seconds between .ack file updates of one segment (more often is only cost)
_REPORT_ROOM = 64 * 1024  # bytes beyond max_bytes kept for the pipeline's own loss reports


def default_spool_root() -> str:
    """``$XDG_STATE_HOME/kernel_guard/spool``, else ``~/.local/state/kernel_guard/spool``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "kernel_guard", "spool")


def sink_key(url: str) -> str:
    """A directory name for a sink URL (readable, and unique by a hash of the URL)."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[-1]).strip("_")[:60]
    digest = sha256_hex(url.encode("utf-8", "surrogatepass"))[:12]
    return f"{url.split('://', 1)[0]}-{readable}-{digest}"


class _Segment:
    """One segment file this process holds the lock on (a plain class: see
    ``SinkOptions`` on what ``dataclasses`` costs the supervisor)."""

    __slots__ = ("name", "fd", "size", "acked", "read", "own", "ack_written", "ack_dirty", "lines",
                 "lines_read", "lines_acked", "count_written", "in_flight")

    def __init__(self, name: str, fd: int, size: int, acked: int, read: int, own: bool) -> None:
        self.name = name
        self.fd = fd
        self.size = size  # bytes in the file (whole lines only, for our own segments)
        self.acked = acked  # bytes delivered
        self.read = read  # bytes handed out by read() (>= acked)
        self.own = own  # appended to by this process
        self.ack_written = 0.0
        self.ack_dirty = False
        self.lines = 0  # lines appended (or found when adopted): what an emptied segment lost
        self.lines_read = 0  # lines handed out by read()
        self.lines_acked = 0  # lines delivered
        self.count_written = 0.0
        self.in_flight: Dict[int, int] = {}  # end offset of a read batch -> its lines


class _SegmentBooks:
    """The spool's bookkeeping of segments: offsets and line counts kept beside each,
    segments other processes left behind adopted (``scan``), and damage found in them
    reported with what it cost.  :class:`Spool` appends and reads; this keeps the books."""

    directory: str
    lost_torn: int
    problems: Deque[str]
    _lock: threading.Lock
    _segments: Dict[str, _Segment]
    _active: Optional[_Segment]
    _foreign_bytes: int
    _scanned: float

    def _count(self, cause: str, n: int) -> int:  # provided by Spool
        raise NotImplementedError

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _write_count(self, segment: _Segment) -> None:
        """Persist how many lines the segment holds (``.count``, with a rename): the next
        process that adopts it can tell an emptied or cut segment, and by how much."""
        path = self._path(segment.name[:-6] + ".count")
        tmp = path + f".{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write(str(segment.lines))
            os.replace(tmp, path)
            segment.count_written = time.monotonic()
        except OSError:
            pass

    def _cut(self, segment: _Segment) -> None:
        """Our own segment is shorter than what we wrote into it (emptied or cut by someone
        else): report the lines lost from what was not yet handed out, and go on from its end."""
        size = _file_size(segment.fd)
        lost = max(0, segment.lines - segment.lines_read)
        self.lost_torn += lost
        self._count("a spool segment was emptied or cut", lost)
        self._problem(segment.name, f"it is shorter ({size} bytes) than the {segment.size} bytes written to it: "
                                    f"{lost} undelivered events were removed from it")
        segment.size = segment.read = segment.acked = size
        segment.lines = segment.lines_read = 0

    def _maybe_remove(self, segment: _Segment) -> bool:
        """Delete a fully delivered segment that nobody appends to any more."""
        if segment is self._active or segment.acked < segment.size:
            return False
        for path in (self._path(segment.name), self._path(segment.name[:-6] + ".ack"),
                     self._path(segment.name[:-6] + ".count")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.close(segment.fd)
        del self._segments[segment.name]
        return True

    def _write_ack(self, segment: _Segment) -> None:
        """Persist the delivered offset with a rename (old or new, never half)."""
        path = self._path(segment.name[:-6] + ".ack")
        tmp = path + f".{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write(f"{segment.acked} {segment.lines_acked}")
            os.replace(tmp, path)
            segment.ack_written = time.monotonic()
            segment.ack_dirty = False
        except OSError:
            pass

    def scan(self, force: bool = False) -> int:
        """Adopt segments whose writer has gone; return how many were adopted."""
        with self._lock:
            return self._scan(force)

    def _scan(self, force: bool = False) -> int:
        now = time.monotonic()
        if not force and now - self._scanned < _SCAN_EVERY:
            return 0
        self._scanned = now
        adopted = 0
        foreign = 0
        try:
            names = sorted(n for n in os.listdir(self.directory) if _SEGMENT.match(n))
        except OSError:
            return 0
        for name in names:
            if name in self._segments:
                continue
            held = self._adopt(name)
            if held is None:
                foreign += max(0, _stat_size(self._path(name)) - self._read_ack(name))
            elif held:
                adopted += 1
        self._foreign_bytes = foreign
        return adopted

    def _adopt(self, name: str) -> Optional[bool]:
        """Lock a segment left behind; None when a live process holds it."""
        try:
            fd = os.open(self._path(name), os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            return False
        try:
            # another process may have finished and removed it while we waited
            if os.fstat(fd).st_ino != os.stat(self._path(name)).st_ino:
                raise FileNotFoundError(name)
        except OSError:
            os.close(fd)
            return False
        size = _file_size(fd)
        whole = size
        if size:
            tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
            whole = size - (len(tail) - (tail.rfind(b"\n") + 1))
        if whole < size:
            self.lost_torn += 1  # a line cut short by a crash: cannot be sent
            self._count("a line was cut short by a crash", 1)
            self._problem(name, f"its last line was cut short ({size - whole} bytes): that event cannot be sent")
        offset, delivered = self._ack_fields(name)
        waiting = os.pread(fd, max(0, whole - offset), offset).count(b"\n") if whole > offset else 0
        written = self._read_count(name)
        lost = written - delivered - waiting if written else 0
        acked = self._check_ack(name, fd, whole, counted=lost > 0)
        if lost > 0:
            self.lost_torn += lost
            self._count("a spool segment was emptied or cut", lost)
            self._problem(name, f"{delivered} of the {written} events written to it were delivered and {waiting} "
                                f"still wait in it: {lost} were removed before they were delivered")
        segment = _Segment(name, fd, whole, acked, acked, own=False)
        segment.lines = waiting
        self._segments[name] = segment
        return True

    def _read_count(self, name: str) -> int:
        try:
            with open(self._path(name[:-6] + ".count")) as fh:
                return int(fh.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _check_ack(self, name: str, fd: int, whole: int, counted: bool = False) -> int:
        """The delivered offset of an adopted segment, at a line start.  An offset past
        the end means the segment was emptied or cut after delivery began; one inside a
        line, that the offset file was changed: resend from the line's start."""
        acked = self._read_ack(name)
        if acked > whole:
            if not counted:  # without its .count file, at least one event was lost
                self._count("a spool segment was shortened or emptied", 1)
                self._problem(name, f"it is shorter ({whole} bytes) than its delivered offset ({acked}): "
                                    "undelivered events were removed from it")
            return whole
        if acked and os.pread(fd, 1, acked - 1) != b"\n":
            start = os.pread(fd, acked, 0).rfind(b"\n") + 1
            self._problem(name, f"its delivered offset {acked} lies inside a line: sending again from {start}")
            return start
        return acked

    def _problem(self, name: str, what: str) -> None:
        self.problems.append(f"spool segment {self._path(name)}: {what}")

    def _read_ack(self, name: str) -> int:
        return self._ack_fields(name)[0]

    def _ack_fields(self, name: str) -> tuple[int, int]:
        """(delivered offset, delivered lines) from a segment's ``.ack`` file."""
        try:
            with open(self._path(name[:-6] + ".ack")) as fh:
                fields = [int(f) for f in fh.read().split()[:2]]
        except (OSError, ValueError):
            return 0, 0
        return (fields + [0, 0])[0], (fields + [0, 0])[1]


class Spool(_SegmentBooks):
    """Segments of JSON lines in one directory, appended and read in order."""

    def __init__(self, directory: str, max_bytes: int = 64 << 20, segment_bytes: int = 1 << 20) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.lost_torn = 0  # partial lines found in segments of killed processes
        #: events not kept, by cause (cumulative), and problems found, each naming its file
        self.causes: Dict[str, int] = {}
        self.problems: Deque[str] = deque(maxlen=100)
        self._lock = threading.Lock()
        self._segments: Dict[str, _Segment] = {}
        self._active: Optional[_Segment] = None
        self._foreign_bytes = 0  # undelivered bytes in segments other live processes hold
        self._scanned = 0.0
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _check_folder(directory)
        self.scan(force=True)

    def _count(self, cause: str, n: int) -> int:
        if n:
            self.causes[cause] = self.causes.get(cause, 0) + n
        return n

    # -- appending (the pipeline's writer thread) -------------------------
    def append(self, lines: List[bytes], reports: bool = False) -> int:
        """Append whole lines (each ending in a newline); return how many were not kept.
        ``reports``: the pipeline's own loss reports, which may use a little room beyond
        ``max_bytes`` (a report that the spool is full must not be lost to it being full)."""
        if not lines:
            return 0
        data = b"".join(lines)
        with self._lock:
            limit = self.max_bytes + (_REPORT_ROOM if reports else 0)
            if self._pending() + len(data) > limit:
                self._scan()  # other processes may have delivered meanwhile
            room = limit - self._pending()
            if len(data) > room:
                kept = 0
                size = 0
                for line in lines:
                    if size + len(line) > room:
                        break
                    size += len(line)
                    kept += 1
                full = self._count(f"the spool is full ({self.max_bytes} bytes undelivered)", len(lines) - kept)
                if not kept:
                    return full
                return self._write(b"".join(lines[:kept]), kept) + full
            return self._write(data, len(lines))

    def _write(self, data: bytes, count: int) -> int:
        """One write(2) to the active segment; 0, or ``count`` if it failed."""
        try:
            segment = self._active_segment()
            written = os.write(segment.fd, data)
        except OSError as exc:
            return self._count(f"the spool could not be written ({exc.strerror})", count)
        if written != len(data):
            # disk full: take the partial line back so no torn record remains
            try:
                os.ftruncate(segment.fd, segment.size)
            except OSError:
                pass
            return self._count("the spool's disk is full", count)
        segment.size += written
        segment.lines += count
        if time.monotonic() - segment.count_written > _ACK_EVERY:
            self._write_count(segment)
        return 0

    def _active_segment(self) -> _Segment:
        """The segment appended to, rotated once it reaches ``segment_bytes``."""
        active = self._active
        if active is not None and active.size < self.segment_bytes:
            return active
        self._active = None
        if active is not None:
            self._maybe_remove(active)
        name = f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(3).hex()}.jsonl"
        fd = os.open(os.path.join(self.directory, name),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        segment = _Segment(name, fd, 0, 0, 0, own=True)
        self._segments[name] = segment
        self._active = segment
        return segment

    # -- reading (the sink's sender thread) -------------------------------
    def read(self, max_bytes: int = 512 * 1024) -> Optional[Tuple[List[bytes], Token]]:
        """The next unsent whole lines of the oldest segment, or None when all is sent."""
        with self._lock:
            for name in sorted(self._segments):
                segment = self._segments[name]
                if segment.read >= segment.size:
                    continue
                if _file_size(segment.fd) < segment.size:
                    self._cut(segment)
                    continue
                want = min(max_bytes, segment.size - segment.read)
                chunk = os.pread(segment.fd, want, segment.read)
                end = chunk.rfind(b"\n") + 1
                if end == 0:
                    if len(chunk) < segment.size - segment.read:
                        # one line longer than max_bytes: read it whole
                        chunk = os.pread(segment.fd, segment.size - segment.read, segment.read)
                        end = chunk.rfind(b"\n") + 1
                    if end == 0:
                        continue  # a torn last line; dealt with when the segment is done
                start = segment.read
                segment.read += end
                lines = chunk[:end].splitlines(keepends=True)
                segment.lines_read += len(lines)
                segment.in_flight[start + end] = len(lines)
                return lines, (name, start, start + end)
            return None

    def ack(self, token: Token) -> None:
        """Record that the lines of ``token`` were delivered."""
        name, _start, end = token
        with self._lock:
            segment = self._segments.get(name)
            if segment is None:
                return
            segment.acked = max(segment.acked, end)
            segment.lines_acked += segment.in_flight.pop(end, 0)
            segment.ack_dirty = True
            if not self._maybe_remove(segment) and time.monotonic() - segment.ack_written > _ACK_EVERY:
                self._write_ack(segment)

    def rewind(self) -> None:
        """Forget what was read but not acknowledged: it will be read again."""
        with self._lock:
            for segment in self._segments.values():
                segment.read = segment.acked

    def pending_bytes(self) -> int:
        """Undelivered bytes in this spool (ours and other live processes')."""
        with self._lock:
            return self._pending()

    def _pending(self) -> int:
        return self._foreign_bytes + sum(s.size - s.acked for s in self._segments.values())

    def unread(self) -> bool:
        """Whether read() has something to return."""
        with self._lock:
            return any(s.read < s.size for s in self._segments.values())

    def empty(self) -> bool:
        """Whether everything this process holds has been delivered."""
        with self._lock:
            return all(s.acked >= s.size for s in self._segments.values())

    # -- bookkeeping ----------------------------------------------------------

    def close(self) -> None:
        """Persist offsets and release the locks; undelivered segments stay for the next start."""
        with self._lock:
            self._active = None
            for segment in list(self._segments.values()):
                if not self._maybe_remove(segment):
                    if segment.ack_dirty:
                        self._write_ack(segment)
                    if segment.own:
                        self._write_count(segment)
                    os.close(segment.fd)
            self._segments.clear()

    def after_fork(self) -> None:
        """In a forked child: leave the parent's segments (and locks) to the parent."""
        self._lock = threading.Lock()
        for segment in self._segments.values():
            try:
                os.close(segment.fd)  # closes the child's copy only; the parent keeps the lock
            except OSError:
                pass
        self._segments = {}
        self._active = None


class MemorySpool:
    """The spool's interface in memory, for when no directory can be used."""

    directory = ""
    lost_torn = 0
    refused = ""

    def __init__(self, max_bytes: int = 16 << 20) -> None:
        self.max_bytes = max_bytes
        self.causes: Dict[str, int] = {}
        self.problems: Deque[str] = deque()
        self._lines: Deque[bytes] = deque()
        self._bytes = 0
        self._read = 0  # lines handed out but not acked, at the front of the deque
        self._lock = threading.Lock()

    def append(self, lines: List[bytes], reports: bool = False) -> int:
        with self._lock:
            lost = 0
            limit = self.max_bytes + (_REPORT_ROOM if reports else 0)
            for line in lines:
                if self._bytes + len(line) > limit:
                    lost += 1
                    continue
                self._lines.append(line)
                self._bytes += len(line)
            if lost:
                cause = f"the in-memory spool is full ({self.max_bytes} bytes undelivered)"
                self.causes[cause] = self.causes.get(cause, 0) + lost
            return lost

    def read(self, max_bytes: int = 512 * 1024) -> Optional[Tuple[List[bytes], Token]]:
        with self._lock:
            out: List[bytes] = []
            size = 0
            index = self._read
            while index < len(self._lines) and (not out or size + len(self._lines[index]) <= max_bytes):
                out.append(self._lines[index])
                size += len(self._lines[index])
                index += 1
            if not out:
                return None
            start, self._read = self._read, index
            return out, ("memory", start, index)

    def ack(self, token: Token) -> None:
        with self._lock:
            count = token[2] - token[1]
            for _ in range(min(count, len(self._lines))):
                self._bytes -= len(self._lines.popleft())
            self._read = max(0, self._read - count)

    def rewind(self) -> None:
        with self._lock:
            self._read = 0

    def pending_bytes(self) -> int:
        return self._bytes

    def unread(self) -> bool:
        return self._read < len(self._lines)

    def empty(self) -> bool:
        return not self._lines

    def scan(self, force: bool = False) -> int:
        return 0

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._lines.clear()
        self._bytes = 0
        self._read = 0


def open_spool(root: str, url: str, max_bytes: int) -> "Spool | MemorySpool":
    """The spool of one sink under ``root``; in memory if the directory cannot be used
    (the memory spool's ``refused`` says why)."""
    refused = ""
    if root:
        try:
            return Spool(os.path.join(root, sink_key(url)), max_bytes=max_bytes)
        except OSError as exc:
            refused = str(exc) if isinstance(exc, SpoolRefused) else f"{exc.strerror or exc}"
        except ValueError as exc:  # a NUL or an unencodable byte in the path: no folder, not no guard
            refused = f"the spool folder {root!r} cannot be used ({exc}): fix KernelGuard.spool_dir"
    memory = MemorySpool(max_bytes=min(max_bytes, 16 << 20))
    memory.refused = refused
    return memory


def _check_folder(directory: str) -> None:
    """Refuse a spool folder that is a link, belongs to another user, or others may
    write, or whose parent another user could rename it out of: in a shared folder
    they could delete or add to this process's events."""
    st = os.lstat(directory)
    problem = None
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder (a symbolic link?)"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to this process's user"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = "may be written by other users"
    else:
        parent = os.stat(os.path.dirname(os.path.abspath(directory)))
        shared = parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not parent.st_mode & stat.S_ISVTX
        if parent.st_uid not in (0, os.geteuid()) or shared:
            problem = "lies in a folder another user may change (not theirs alone, or writable without the sticky bit)"
    if problem:
        raise SpoolRefused(f"the spool folder {directory} {problem}: choose a folder of your own "
                           "(KernelGuard.spool_dir)")


class SpoolRefused(OSError):
    """A spool folder that is not this user's alone."""


def _file_size(fd: int) -> int:
    return os.fstat(fd).st_size


def _stat_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
