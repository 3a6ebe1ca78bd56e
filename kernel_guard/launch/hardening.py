"""How the supervisor hardens itself: non-dumpable, and a filter the launcher compiled.

Non-dumpable, the kernel cannot open the supervisor's memory or fds (the
launcher drops ``CAP_SYS_PTRACE``).  Its filter denies it ``execve``,
``execveat``, ``ptrace``, ``process_vm_writev`` and ``pidfd_getfd`` (EPERM;
a call of any other architecture kills it), so a compromised supervisor can
neither start a program nor reach into another process.  Its witness, forked
after :func:`harden`, inherits both.

libseccomp compiles these rules to a BPF program in the launcher
(:func:`build`, step 1, while it has libseccomp loaded anyway), which hands the
program to the supervisor (:mod:`.handover`) with the number of ``seccomp(2)``
on this machine; the supervisor loads it with that one call (:func:`harden`).  Loading it there with libseccomp's bindings would keep them,
and what they import (``ctypes.util``, ``subprocess``, ``tempfile`` ...), in
the memory of every kernel's supervisor and witness for nothing else.  The
program is the parent's, written before any notebook code ran, as the
supervisor's command line is; and whatever it holds, it only restricts.

The witness program (``witness.c``) gets a program of its own
(:func:`build_witness`): the same denials, except that ``execveat`` of the one
descriptor it holds at :data:`WITNESS_EXEC_AT` (the interpreter, with
``AT_EMPTY_PATH``) stays allowed, so that it can become the recorder of a loss.
"""

from __future__ import annotations

import errno
import os

try:  # prctl(2) and seccomp(2) without ctypes (optional, like every native part)
    from . import _hardening as _native
except ImportError:  # pragma: no cover - not built: ctypes serves
    _native = None

__all__ = ["RULES", "WITNESS_EXEC_AT", "build", "build_witness", "harden", "prctl"]

#: the calls the supervisor and its witness deny themselves
RULES = ("execve", "execveat", "ptrace", "process_vm_writev", "pidfd_getfd")
#: the descriptor the witness program keeps its interpreter at (its filter names it)
WITNESS_EXEC_AT = 10
AT_EMPTY_PATH = 0x1000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
_INSTRUCTION = 8  # bytes of one struct sock_filter


def build() -> str:
    """The launcher's side: ``"<seccomp(2)'s number> <program in hex>"``, or
    ``"error <why>"`` for the supervisor to report (it then refuses to start)."""
    return _built(witness=False)


def build_witness() -> str:
    """The witness program's filter, as :func:`build` writes the supervisor's."""
    return _built(witness=True)


def _built(witness: bool) -> str:
    try:
        return _compile(witness)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the supervisor says it and fails closed
        return f"error {type(exc).__name__}: {exc}"


def _compile(witness: bool) -> str:
    from . import seccomp_filter as sf

    sc = sf.bindings()
    filt = sc.SyscallFilter(int(sc.ALLOW))
    for arch in sf.default_architectures():
        arch_value = getattr(sc.Arch, sf._ARCH_NAMES[arch])
        if not filt.exist_arch(arch_value):
            filt.add_arch(arch_value)
    filt.set_attr(sc.Attr.ACT_BADARCH, int(sc.KILL_PROCESS))
    deny = int(sc.ERRNO(errno.EPERM))
    for name in RULES:
        if witness and name == "execveat":
            # refused unless both hold (each rule alone refuses): the descriptor it was
            # handed, compared in full 64 bits (the program passes a clean long), and
            # AT_EMPTY_PATH, so no path is looked up
            filt.add_rule(deny, name, sc.Arg(0, sc.NE, WITNESS_EXEC_AT))
            filt.add_rule(deny, name, sc.Arg(4, sc.NE, AT_EMPTY_PATH))
        else:
            filt.add_rule(deny, name)
    fd = os.memfd_create("kernel-guard-supervisor-filter", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as out:
            filt.export_bpf(out)
        program = os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
    return f"{sc.resolve_syscall(sc.Arch.NATIVE, 'seccomp')} {program.hex()}"


def harden(handed: str) -> None:
    """The supervisor's side: non-dumpable, no new privileges, then the program the
    launcher handed over, on every thread (TSYNC).  Raises OSError or ValueError
    saying why it could not."""
    number, _, program = handed.partition(" ")
    if number == "error" or not number:
        raise OSError(f"the launcher could not compile its filter: {program or 'none was handed over'}")
    code = bytes.fromhex(program)
    if not code or len(code) % _INSTRUCTION:
        raise ValueError(f"the filter handed over is not a BPF program ({len(code)} bytes)")
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    result = (_native.load_filter if _native is not None else _load_with_ctypes)(int(number), code)
    if result > 0:  # with TSYNC: the id of a thread that could not take the filter
        raise OSError(errno.EBUSY, f"thread {result} could not take the filter")


def prctl(option: int, value: int) -> None:
    """prctl(2) with one argument; raises OSError.  (seccomp_filter's, without what
    that module imports: this runs before the witness is forked.)"""
    if _native is not None:
        _native.prctl(option, value)
        return
    import ctypes

    _check(_libc().prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)))


def _load_with_ctypes(number: int, code: bytes) -> int:
    """seccomp(SECCOMP_SET_MODE_FILTER, TSYNC) through ctypes, where ``_hardening`` was not built."""
    import ctypes

    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = Program(len(code) // _INSTRUCTION, ctypes.addressof(buffer))
    result = _libc().syscall(ctypes.c_long(number), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                             ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))
    _check(result)
    return result


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)  # the C library already loaded: no find_library, no exec


def _check(result: int) -> None:
    if result == -1:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
