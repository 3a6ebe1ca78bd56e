"""Seccomp user notification, as the supervisor speaks it: receive, read, answer.

The kernel's ``seccomp_unotify(2)`` interface, through ioctls on the
listener fd (libseccomp's bindings only answer on the fd of a filter loaded in
the same process, INTERNALS.md):

* ``SECCOMP_IOCTL_NOTIF_RECV`` fills a zeroed 80-byte ``seccomp_notif``;
* ``SECCOMP_IOCTL_NOTIF_ID_VALID`` says whether the task still waits (so what
  was read from ``/proc/PID`` was not a recycled pid's);
* ``SECCOMP_IOCTL_NOTIF_SEND`` answers with an errno or CONTINUE;
* ``SECCOMP_IOCTL_NOTIF_ADDFD`` with ``SECCOMP_ADDFD_FLAG_SEND`` (Linux 5.14)
  installs one of our fds in the task and returns its number as the syscall's
  result, in one step.

Nothing read from the task's memory (:class:`TargetMemory`) decides anything:
the task can change it after we read it.  It only shapes the record.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Optional

__all__ = ["AT_EMPTY_PATH", "AT_FDCWD", "EXEC_SYSCALLS", "Notification", "TargetMemory", "add_fd", "id_valid",
           "notified_syscall_table", "other_syscall_table", "receive", "respond", "signed"]

# <linux/seccomp.h>
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x80082102  # the legacy value, accepted by every kernel
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SEND = 1 << 1
NOTIF_SIZE = 80                         # struct seccomp_notif
_NOTIF_HEAD = struct.Struct("=QIIiIQ")  # id, pid, flags, nr, arch, instruction_pointer
_NOTIF_ARGS = struct.Struct("=6Q")      # args[6] at offset 32
_RESP = struct.Struct("=QqiI")          # id, val, error, flags
_ADDFD = struct.Struct("=QIIII")        # id, flags, srcfd, newfd, newfd_flags

# audit architectures (<linux/audit.h>)
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
X32_SYSCALL_BIT = 0x40000000
#: (audit arch, nr) -> (syscall, ABI, pointer size)
EXEC_SYSCALLS = {
    (AUDIT_ARCH_X86_64, 59): ("execve", "x86_64", 8),
    (AUDIT_ARCH_X86_64, 322): ("execveat", "x86_64", 8),
    (AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 520): ("execve", "x32", 4),
    (AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 545): ("execveat", "x32", 4),
    (AUDIT_ARCH_I386, 11): ("execve", "i386", 4),
    (AUDIT_ARCH_I386, 358): ("execveat", "i386", 4),
    (AUDIT_ARCH_AARCH64, 221): ("execve", "aarch64", 8),
    (AUDIT_ARCH_AARCH64, 281): ("execveat", "aarch64", 8),
    (AUDIT_ARCH_ARM, 11): ("execve", "arm", 4),
    (AUDIT_ARCH_ARM, 387): ("execveat", "arm", 4),
}
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
#: ABIs whose pointers are 32 bits
NARROW_ABIS = frozenset({"x86", "x32", "arm", "i386"})
_PAGE = 4096


class Notification:
    """One received ``seccomp_notif``."""

    __slots__ = ("id", "pid", "flags", "nr", "arch", "args")

    def __init__(self, buf: bytes) -> None:
        self.id, self.pid, self.flags, self.nr, self.arch, _ip = _NOTIF_HEAD.unpack_from(buf)
        self.args = _NOTIF_ARGS.unpack_from(buf, 32)


def receive(listener: int) -> Optional[Notification]:
    """Receive one notification (None if the target went away meanwhile)."""
    buf = bytearray(NOTIF_SIZE)  # must be zeroed before every receive
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    return Notification(bytes(buf))


def id_valid(listener: int, notif_id: int) -> bool:
    """Whether the notification's task is still waiting (its pid not recycled)."""
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notif_id))
        return True
    except OSError:
        return False


def respond(listener: int, notif_id: int, allow: bool, error: int = errno.EPERM) -> None:
    """Answer ``-error``, or CONTINUE; a vanished target is fine."""
    if allow:
        data = _RESP.pack(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
    else:
        data = _RESP.pack(notif_id, 0, -error, 0)
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, data)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def add_fd(listener: int, notif_id: int, fd: int, cloexec: bool) -> Optional[int]:
    """Install our ``fd`` in the waiting task and make its number the syscall's
    result (``SECCOMP_ADDFD_FLAG_SEND``); None if the task went away."""
    data = _ADDFD.pack(notif_id, SECCOMP_ADDFD_FLAG_SEND, fd, 0, os.O_CLOEXEC if cloexec else 0)
    try:
        return fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, data)  # type: ignore[return-value]
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def signed(value: int, size: int) -> int:
    """A register's low ``size`` bytes as a signed number (an fd, a pid)."""
    bits = size * 8
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class TargetMemory:
    """Reads NUL-terminated strings and pointers from ``/proc/<pid>/mem``."""

    def __init__(self, pid: int, pointer_size: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        self.pointer_size = pointer_size

    def __enter__(self) -> "TargetMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def string(self, addr: int, limit: int) -> Optional[bytes]:
        """Read up to ``limit`` bytes or the first NUL, page by page."""
        if addr == 0:
            return None
        out = b""
        while len(out) < limit:
            chunk = min(_PAGE - (addr % _PAGE), limit - len(out))
            data = os.pread(self.fd, chunk, addr)
            if not data:
                break
            nul = data.find(b"\0")
            if nul >= 0:
                return out + data[:nul]
            out += data
            addr += len(data)
        return out

    def pointers(self, addr: int, count: int) -> list[int]:
        """A NULL-terminated array of pointers (at most ``count``)."""
        size = self.pointer_size
        data = os.pread(self.fd, size * count, addr) if addr else b""
        fmt = "=Q" if size == 8 else "=I"
        out = []
        for i in range(len(data) // size):
            (value,) = struct.unpack_from(fmt, data, i * size)
            if value == 0:
                break
            out.append(value)
        return out


def other_syscall_table(names: tuple[str, ...]) -> dict[tuple[int, int], tuple[str, str]]:
    """(audit arch, nr) -> (syscall, ABI) for the non-exec syscalls ``names`` the
    launcher may send to the supervisor, numbered by libseccomp for every ABI of
    this machine."""
    from .seccomp_filter import default_architectures, syscall_numbers

    table: dict[tuple[int, int], tuple[str, str]] = {}
    for arch_name in default_architectures():
        for name, (audit_arch, nr) in syscall_numbers(arch_name, names).items():
            table[(audit_arch, nr)] = (name, arch_name.rsplit("_ARCH_", 1)[-1].lower())
    return table


def notified_syscall_table() -> dict[tuple[int, int], tuple[str, str]]:
    """:func:`other_syscall_table` of every non-exec call the launcher's rules may
    send to the supervisor (the launcher hands it over: handover.py)."""
    from .seccomp_filter import IMAGE_GATE_SYSCALLS, MEMFD_SYSCALLS, PROTECTED_SYSCALLS, TRUNCATION_SYSCALLS

    return other_syscall_table((*PROTECTED_SYSCALLS, *IMAGE_GATE_SYSCALLS, *TRUNCATION_SYSCALLS, *MEMFD_SYSCALLS))
