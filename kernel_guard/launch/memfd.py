"""No program without a path: every memfd the kernel creates is sealed non-executable.

Landlock checks the files a domain executes, except those on the kernel's
internal mounts: a memfd (and a hugetlb memfd) lives on one, so a program
written into a memfd would run whatever the domain's exec allowlist says, by
``execveat(fd, "", AT_EMPTY_PATH)`` or through ``/proc/self/fd/N``, and a
race on the path the supervisor read could reach it.  So the kernel's filter
sends every ``memfd_create`` that does not already ask for
``MFD_NOEXEC_SEAL`` here; the supervisor creates the memfd itself, with the
caller's name and flags plus ``MFD_NOEXEC_SEAL`` (never ``MFD_EXEC``), and
installs it in the caller as the call's result (``SECCOMP_IOCTL_NOTIF_ADDFD``
with ``SECCOMP_ADDFD_FLAG_SEND``).  Its mode has no exec bit and the
``F_SEAL_EXEC`` seal keeps it so: ``execve`` fails with EACCES.  Mapping it
executable (JITs that double-map) still works: the seal is about ``execve``.

Linux older than 6.3 has no ``MFD_NOEXEC_SEAL``: there ``memfd_create`` fails
with ``ENOSYS``, as on a kernel before memfds existed, and libraries fall back
to ``/dev/shm`` or a temporary file (Landlock checks those).
:func:`sealing_supported` tells which; ``kernel-guard status`` shows it.

A hugetlb memfd (``MFD_HUGETLB``, on the internal hugetlbfs mount) cannot be
sealed so: hugetlbfs ignores ``F_SEAL_EXEC`` on ``chmod`` (measured: ``fchmod(fd,
0o755)`` succeeds), so it could be made executable again.  It is refused with
``EINVAL``, as on a kernel without hugetlbfs, and recorded with what to use
instead (an ordinary memfd: transparent huge pages still apply).

Other files on internal mounts cannot be reached as files here: ``memfd_secret``
files cannot be read, so not executed; SysV shared memory and anonymous shared
mappings have no fd without ``CAP_SYS_ADMIN`` (``/proc/PID/map_files``).
"""

from __future__ import annotations

import errno
import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the type checker only: the supervisor imports this (docs/launcher.md, "Memory")
    from typing import Optional

from .notifications import NARROW_ABIS, Notification, TargetMemory, add_fd, id_valid, respond

__all__ = ["MFD_EXEC", "MFD_NOEXEC_SEAL", "SealedMemfds", "sealing_supported"]

MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
MFD_HUGETLB = 0x4
MFD_NOEXEC_SEAL = 0x8
MFD_EXEC = 0x10
#: every flag memfd_create knows, with hugetlb's page-size bits (26..31)
_KNOWN = MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_NOEXEC_SEAL | MFD_EXEC | (0x3F << 26)
#: the kernel's limit on a memfd's name (MFD_NAME_MAX_LEN)
_NAME_MAX = 249


def sealing_supported() -> bool:
    """Whether this kernel makes sealed non-executable memfds (Linux 6.3)."""
    try:
        os.close(os.memfd_create("kernel-guard-probe", MFD_NOEXEC_SEAL | MFD_CLOEXEC))
        return True
    except OSError:
        return False


class SealedMemfds:
    """Answers the kernel's ``memfd_create`` calls with sealed memfds of our making."""

    def __init__(self, listener: int) -> None:
        self.listener = listener
        self.sealing = sealing_supported()
        self.counts = {"memfds_sealed": 0, "memfds_refused": 0}

    def handle(self, notif: Notification, abi: str) -> Optional[dict]:
        """Create, install and answer; or answer the error the system would give.
        Returns the record of a refusal the caller would not expect (hugetlb)."""
        flags = notif.args[1] & 0xFFFFFFFF
        if not self.sealing:
            self.counts["memfds_refused"] += 1
            respond(self.listener, notif.id, allow=False, error=errno.ENOSYS)
            return None
        if flags & MFD_HUGETLB:
            self.counts["memfds_refused"] += 1
            event = _hugetlb_refused(notif)
            respond(self.listener, notif.id, allow=False, error=errno.EINVAL)
            return event
        name = self._name(notif, abi)
        if name is None:
            respond(self.listener, notif.id, allow=False, error=errno.EFAULT)
            return None
        if len(name) > _NAME_MAX or flags & ~_KNOWN or (flags & MFD_EXEC and flags & MFD_NOEXEC_SEAL):
            respond(self.listener, notif.id, allow=False, error=errno.EINVAL)
            return None
        wanted = (flags & ~MFD_EXEC) | MFD_NOEXEC_SEAL
        try:
            fd = os.memfd_create(os.fsdecode(name), wanted | MFD_CLOEXEC)  # our copy never leaks into a child
        except OSError as exc:  # no memory, too many files: as the system says
            respond(self.listener, notif.id, allow=False, error=exc.errno or errno.EINVAL)
            return None
        try:
            if id_valid(self.listener, notif.id) and add_fd(self.listener, notif.id, fd,
                                                            cloexec=bool(flags & MFD_CLOEXEC)) is not None:
                self.counts["memfds_sealed"] += 1
        finally:
            os.close(fd)
        return None

    @staticmethod
    def _name(notif: Notification, abi: str) -> Optional[bytes]:
        """The name the caller asked for (one byte past the kernel's limit, so that
        a longer one is refused as the kernel would); None where it cannot be read."""
        try:
            with TargetMemory(notif.pid, 4 if abi in NARROW_ABIS else 8) as mem:
                raw = mem.string(notif.args[0], _NAME_MAX + 1)
        except OSError:
            return None
        return raw


def _hugetlb_refused(notif: Notification) -> dict:
    from ..events.schema import make_event
    from .exec_decision import caller

    return make_event("memfd-refused", outcome="failure", layer="seccomp", process=caller(notif.pid),
                      syscall="memfd_create", technique="hugetlb memfd", supervisor_pid=os.getpid(),
                      reason="memfd_create with MFD_HUGETLB refused (EINVAL): a hugetlb memfd cannot be sealed "
                             "against execution. Use an ordinary memfd (transparent huge pages still apply) or "
                             "a file on a hugetlbfs mount")
