"""Landlock: the kernel's own, unprivileged sandbox, through its three system calls.

This module applies the kernel's Landlock domain: writes only beneath the
writable roots, execution only of the allowed programs (:func:`restrict`),
and the scopes that keep the exec supervisor out of the notebook's reach
(:func:`restrict_signals` alone where a profile asks for no filesystem
rules): the *signal scope* (Landlock ABI 6, Linux 6.12), and the same for
connections to abstract unix sockets.  A process in a scoped domain cannot signal any process outside
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
from typing import Any, Optional

__all__ = ["Domain", "LandlockResult", "abi_version", "elf_interpreter", "restrict", "restrict_outer",
           "restrict_signals"]

#: (landlock_create_ruleset, landlock_add_rule, landlock_restrict_self) by machine
_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
LANDLOCK_SCOPE_SIGNAL = 1 << 1
#: the first ABI with scopes
SIGNAL_SCOPE_ABI = 6
#: no signal, and no connection to an abstract unix socket, reaches outside the domain
_SCOPES = LANDLOCK_SCOPE_SIGNAL | LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
_SCOPE_NAMES = ("signal", "abstract unix socket")
LANDLOCK_RULE_PATH_BENEATH = 1

# filesystem rights (<linux/landlock.h>); reading is never restricted here
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13     # ABI 2: without it, nothing can be renamed or linked across folders
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
_WRITE_V1 = (ACCESS_FS_WRITE_FILE | ACCESS_FS_REMOVE_DIR | ACCESS_FS_REMOVE_FILE | ACCESS_FS_MAKE_CHAR
             | ACCESS_FS_MAKE_DIR | ACCESS_FS_MAKE_REG | ACCESS_FS_MAKE_SOCK | ACCESS_FS_MAKE_FIFO
             | ACCESS_FS_MAKE_BLOCK | ACCESS_FS_MAKE_SYM)
#: the first ABI whose domains can confine truncation
TRUNCATE_ABI = 3
#: rights that may be granted on a file rather than a folder
_FILE_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is packed: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


@dataclass(frozen=True)
class LandlockResult:
    """What :func:`restrict` or :func:`restrict_signals` did: ``applied`` and, if not, ``reason``."""

    abi: int
    applied: bool
    scopes: tuple[str, ...] = ()
    reason: str = ""
    writable: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()

    @property
    def enforces_exec(self) -> bool:
        """Whether the kernel itself refuses every program not in ``programs``."""
        return self.applied and bool(self.programs)

    @property
    def confines_truncation(self) -> bool:
        """Whether the kernel itself refuses truncating a file outside ``writable``
        (else the launcher's filter refuses truncation by path: ABI 1 and 2)."""
        return self.applied and self.abi >= TRUNCATE_ABI

    @property
    def needs_truncation_rules(self) -> bool:
        """Whether the launcher's filter must refuse truncation by path: the domain
        confines writes but not truncation (:func:`.seccomp_filter.truncation_rules`)."""
        return self.applied and bool(self.writable) and not self.confines_truncation

    def describe(self) -> str:
        """One line for status and events."""
        if not self.applied:
            return f"off: {self.reason}"
        parts = ["signal and abstract-socket scope"] if "signal" in self.scopes else []
        if self.programs:
            what = "writes and truncation" if self.confines_truncation else "writes"
            parts.append(f"{what} beneath {len(self.writable)} roots, exec of {', '.join(self.programs)}")
        return f"{', '.join(parts) or 'no rules'} (Landlock ABI {self.abi})"


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
    """Put this process (and every later child) in a domain with the scopes only
    (signals, abstract unix sockets), for a profile without filesystem rules.

    Raises OSError when the kernel offers the scope but refuses to apply it:
    the caller decides whether that is fatal.
    """
    abi = abi_version()
    if abi < SIGNAL_SCOPE_ABI:
        why = "Landlock is not available" if abi == 0 else f"Landlock ABI {abi} has no signal scope"
        return LandlockResult(abi, False, reason=f"{why} (needs ABI {SIGNAL_SCOPE_ABI}, Linux 6.12)")
    _apply(_RulesetAttr(0, 0, _SCOPES), ctypes.sizeof(_RulesetAttr), [])
    return LandlockResult(abi, True, scopes=_SCOPE_NAMES)


def restrict_outer() -> bool:
    """An outer domain with the signal scope alone, applied by the launcher before it
    starts the supervisor: the supervisor shares it, the kernel's own domain is
    nested in it, and so the supervisor can signal exactly the kernel's processes
    (whatever their session or parent) and no other process of the user: the fact
    ``survivors.py`` relies on.  False where the kernel has no signal scope."""
    if abi_version() < SIGNAL_SCOPE_ABI:
        return False
    _apply(_RulesetAttr(0, 0, LANDLOCK_SCOPE_SIGNAL), ctypes.sizeof(_RulesetAttr), [])
    return True


def _apply(attr: _RulesetAttr, size: int, rules: list[tuple[str, int]]) -> None:
    """Create a ruleset, grant each (path, rights), restrict this process to it.

    Before ABI 8 a domain covers the calling thread only: a thread left outside
    could act on the notebook's behalf, so the process must be single-threaded.
    """
    threads = _threads()
    if threads != 1:
        raise OSError(errno.EBUSY, f"the process has {threads} threads; the domain would cover one")
    func, (create, add, restrict_self) = _syscall()  # type: ignore[misc]
    ruleset = func(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        problems = [p for p in (_add_rule(func, add, ruleset, path, rights) for path, rights in rules) if p]
        if problems:
            raise OSError(errno.EINVAL, "; ".join(problems))
        if func(restrict_self, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)


def write_rights(abi: int) -> int:
    """Every right that changes the filesystem, as far as ``abi`` knows them,
    truncation included from ABI 3 (:data:`TRUNCATE_ABI`): the kernel then refuses
    every route to truncating a file outside the writable roots (``truncate(2)``,
    ``O_TRUNC``, ``openat2``, a handle opened elsewhere), and the launcher's filter
    needs no argument check on ``openat`` for it, so the kernel's constant-action
    cache answers every open.  The price: a domain that handles the right checks
    the path of every open, reads too (Linux records at open whether the file may
    be truncated later).  Measured inside kernels on tmpfs: a write-open
    −4 to −5 µs (the audit layer's link test is one ``openat2`` again, not an
    ``lstat`` of each component), a removal −4 µs, a read one folder below a
    root unchanged, a read in site-packages +0.2 to +0.3 µs of 8 µs.  Below ABI 3
    the filter refuses truncation by path instead
    (:func:`..seccomp_filter.truncation_rules`)."""
    rights = _WRITE_V1
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= TRUNCATE_ABI:
        rights |= ACCESS_FS_TRUNCATE
    return rights


@dataclass(frozen=True)
class Domain:
    """What a kernel's Landlock domain grants; everything else it handles is refused.

    ``writable``: folders (and device files) beneath which the kernel may change
    anything.  ``programs``: the only programs it may start (real paths); the
    ELF loader each needs is allowed too (:func:`allowed_programs`), but the
    supervisor must never let it be started directly.
    ``scope_signals``: no signal to a process outside the domain (ABI 6+).
    """

    writable: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    scope_signals: bool = True
    min_abi: int = 0


def elf_interpreter(path: str) -> Optional[str]:
    """The ELF loader (PT_INTERP) a program needs, e.g. ``/lib64/ld-linux-x86-64.so.2``.

    Starting a dynamically linked program opens its loader for execution, so an
    allowlist that names the program must name its loader too.
    """
    import struct

    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # ELF64 only (x86_64, aarch64)
                return None
            order = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack_from(order + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
            for i in range(phnum):
                p_type, = struct.unpack_from(order + "I", table, i * phentsize)
                if p_type == 3:  # PT_INTERP
                    offset, = struct.unpack_from(order + "Q", table, i * phentsize + 8)
                    size, = struct.unpack_from(order + "Q", table, i * phentsize + 32)
                    fh.seek(offset)
                    return fh.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def allowed_programs(programs: tuple[str, ...]) -> tuple[str, ...]:
    """Real paths of ``programs`` and of their ELF loaders, as Landlock will see them."""
    out: dict[str, None] = {}
    for program in programs:
        real = os.path.realpath(program)
        loader = elf_interpreter(real)
        out.update({path: None for path in (real, loader and os.path.realpath(loader)) if path})
    return tuple(out)


def _add_rule(func: Any, add: int, ruleset: int, path: str, rights: int) -> Optional[str]:
    """Grant ``rights`` beneath ``path``; return why not (a missing path is no error)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        attr = _PathBeneath(rights, fd)
        if func(add, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(attr),
                ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            return f"{path}: landlock_add_rule: {os.strerror(err)}"
    finally:
        os.close(fd)
    return None


def restrict(domain: Domain) -> LandlockResult:
    """Apply ``domain`` to this process and every later child (single-threaded, as
    :func:`restrict_signals`).  Uses what the kernel's ABI offers and says what that
    is; raises OSError when the kernel refuses, or offers less than ``min_abi``.
    Without Landlock and no ``min_abi``, nothing is applied and the result says so."""
    abi = abi_version()
    if abi == 0 and domain.min_abi == 0:
        return LandlockResult(0, False, reason="Landlock is not available on this kernel: writes are not "
                                               "confined and every exec is refused")
    if abi < max(1, domain.min_abi):
        raise OSError(errno.EOPNOTSUPP, f"Landlock ABI {abi} is below the {max(1, domain.min_abi)} the profile "
                                        "requires")
    scoped = _SCOPES if domain.scope_signals and abi >= SIGNAL_SCOPE_ABI else 0
    attr = _RulesetAttr(write_rights(abi) | ACCESS_FS_EXECUTE, 0, scoped)
    size = ctypes.sizeof(attr) if abi >= SIGNAL_SCOPE_ABI else 8  # older kernels know the first field only
    rules = [(path, write_rights(abi)) for path in domain.writable]
    rules += [(path, ACCESS_FS_EXECUTE) for path in allowed_programs(domain.programs)]
    _apply(attr, size, rules)
    return LandlockResult(abi, True, scopes=_SCOPE_NAMES if scoped else (), writable=domain.writable,
                          programs=domain.programs)
