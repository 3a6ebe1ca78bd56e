"""Landlock: the kernel's own, unprivileged sandbox, through its three system calls.

This module applies the part of a Landlock domain that keeps the exec
supervisor out of the notebook's reach: the *signal scope* (Landlock ABI 6,
Linux 6.12).  A process in a scoped domain cannot signal any process outside
it, by any route the kernel checks — ``kill``, ``tgkill``, a pidfd, ``kill(-1)``,
a process group, ``SIGIO`` through ``F_SETOWN`` — and every child, across fork
and exec, inherits the domain, which nothing can lift.  The launcher applies it
after starting the supervisor (which therefore stays outside) and before the
kernel runs any code.

Facts this relies on (INTERNALS.md, Landlock):

* the ABI is three system calls (x86_64: 444, 445, 446) and a ruleset
  attribute struct that grew by ABI (``handled_access_fs``, ``handled_access_net``
  in v4, ``scoped`` in v6); the size passed tells the kernel which fields we know;
* ``landlock_restrict_self`` needs ``no_new_privs`` (or CAP_SYS_ADMIN) and,
  before ABI 8, applies to the calling thread only: call it while the process
  is single-threaded (checked here, not assumed);
* signals a terminal sends to its foreground process group are not checked by
  Landlock: the supervisor therefore also leaves the kernel's session.

Best effort by ABI: :func:`restrict_signals` reports what it applied and why not.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass
from typing import Optional

__all__ = ["LandlockResult", "abi_version", "restrict_signals"]

#: (landlock_create_ruleset, landlock_add_rule, landlock_restrict_self) by machine
_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
LANDLOCK_SCOPE_SIGNAL = 1 << 1
#: the first ABI with scopes
SIGNAL_SCOPE_ABI = 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


@dataclass(frozen=True)
class LandlockResult:
    """What :func:`restrict_signals` did: ``applied`` and, if not, ``reason``."""

    abi: int
    applied: bool
    scopes: tuple[str, ...] = ()
    reason: str = ""

    def describe(self) -> str:
        """One line for status and events."""
        if self.applied:
            return f"signal scope (Landlock ABI {self.abi})"
        return f"off: {self.reason}"


def _syscall() -> Optional[tuple[ctypes._CFuncPtr, tuple[int, int, int]]]:  # type: ignore[name-defined]
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # the loaded C library: no find_library
    func = libc.syscall
    func.restype = ctypes.c_long
    return func, numbers


def abi_version() -> int:
    """The Landlock ABI this kernel offers (0: none, or disabled at boot)."""
    found = _syscall()
    if found is None:
        return 0
    func, (create, _add, _restrict) = found
    version = func(create, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(version) if version > 0 else 0


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def restrict_signals() -> LandlockResult:
    """Put this process (and every later child) in a domain scoped for signals.

    Raises OSError when the kernel offers the scope but refuses to apply it:
    the caller decides whether that is fatal.
    """
    abi = abi_version()
    if abi < SIGNAL_SCOPE_ABI:
        why = "Landlock is not available" if abi == 0 else f"Landlock ABI {abi} has no signal scope"
        return LandlockResult(abi, False, reason=f"{why} (needs ABI {SIGNAL_SCOPE_ABI}, Linux 6.12)")
    threads = _threads()
    if threads != 1:
        # before ABI 8 a domain covers the calling thread only: a thread left
        # outside could signal the supervisor on the notebook's behalf
        raise OSError(errno.EBUSY, f"the process has {threads} threads; the domain would cover one")
    func, (create, _add, restrict) = _syscall()  # type: ignore[misc]
    attr = _RulesetAttr(0, 0, LANDLOCK_SCOPE_SIGNAL)
    fd = func(create, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        if func(restrict, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(fd)
    return LandlockResult(abi, True, scopes=("signal",))
