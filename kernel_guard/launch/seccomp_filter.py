"""The seccomp layer: a filter built by libseccomp from a profile, loaded for every thread.

libseccomp builds the BPF program (never by hand here): it knows each
architecture's syscall numbers, adds the x86/x32 (or arm) ABIs next to the
native one when asked, and kills a process that enters the kernel through an
ABI the filter does not list.  We use its Python bindings: the official
``seccomp`` module where the distribution ships it, else ``pyseccomp`` (PyPI,
ctypes over the same library).

Facts this module relies on (INTERNALS.md):

* a filter needs no_new_privs (or CAP_SYS_ADMIN); we set it ourselves first,
  so the order is visible and checked;
* TSYNC applies the filter to every thread of the process; libseccomp adds
  ``TSYNC_ESRCH`` itself when a notification listener is requested;
* ``pyseccomp`` exposes the listener fd only through its private handle, and
  both bindings resolve libseccomp with ``ctypes.util.find_library``, which
  runs ``ldconfig``: import the bindings *before* the filter forbids exec;
* user notification must never be used to allow an exec on the basis of a
  path read from the target's memory: the supervisor only refuses or, in the
  ``audit`` profile, lets everything through.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from dataclasses import dataclass
from types import ModuleType
from typing import IO, Any, Optional

from ..exceptions import KernelGuardError, ProfileError
from .notified_calls import IMAGE_GATE_SYSCALLS, MEMFD_SYSCALLS, TRUNCATION_SYSCALLS
from .procfs import LISTENER_LINK, listener_fds, proc_stat, proc_status
from .profile_model import Profile, Rule, RuleArg

__all__ = [
    "LoadedFilter",
    "SeccompUnavailable",
    "bindings",
    "build_filter",
    "export",
    "IMAGE_GATE_SYSCALLS",
    "LISTENER_LINK",
    "MEMFD_SYSCALLS",
    "TRUNCATION_SYSCALLS",
    "image_gate_rules",
    "truncation_rules",
    "listener_fds",
    "load",
    "memfd_rules",
    "proc_stat",
    "proc_status",
    "set_no_new_privs",
    "supervisor_rules",
    "syscall_known",
]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_PTRACER = 0x59616D61

#: libseccomp's value for "no such syscall"
_NR_SCMP_ERROR = -1

_ARCH_NAMES = {
    "SCMP_ARCH_X86_64": "X86_64", "SCMP_ARCH_X86": "X86", "SCMP_ARCH_X32": "X32",
    "SCMP_ARCH_AARCH64": "AARCH64", "SCMP_ARCH_ARM": "ARM", "SCMP_ARCH_PPC64LE": "PPC64LE",
    "SCMP_ARCH_S390X": "S390X", "SCMP_ARCH_RISCV64": "RISCV64",
}
#: native machine -> the other ABIs a process on it can enter the kernel through
_COMPAT_ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}
_OPS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE", "SCMP_CMP_EQ": "EQ",
        "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT", "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}


#: calls that can end or stop a process given its pid (any thread id names the
#: whole process): the launcher sends those aimed at the supervisor to it
_SIGNAL_BY_TID = ("kill", "tkill", "rt_sigqueueinfo", "prlimit64", "pidfd_open")
#: the same, where the first argument is the thread group (the process) id
_SIGNAL_BY_TGID = ("tgkill", "rt_tgsigqueueinfo")
#: calls that change a process's (or thread's) scheduling given its pid: a lowered
#: supervisor would answer every exec and keep the record late, or never
_SCHED_BY_TID = ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")
#: calls that take (which, who): one process, a process group, or every process of a user
_SCHED_BY_WHO = {"setpriority": (0, 1, 2), "ioprio_set": (1, 2, 3)}  # PRIO_*, IOPRIO_WHO_*
#: every non-exec call a profile or the launcher may send to the supervisor,
#: which refuses each one (see refusals.py)
PROTECTED_SYSCALLS = (*_SIGNAL_BY_TID, *_SIGNAL_BY_TGID, "pidfd_send_signal", "fcntl", "seccomp",
                      *_SCHED_BY_TID, *_SCHED_BY_WHO)
MFD_NOEXEC_SEAL = 0x8
MFD_EXEC = 0x10
F_SETOWN = 8
#: frequent calls whose rules read their arguments: the kernel's constant-action
#: cache (Linux 5.11+) answers every call whose action never depends on them
#: (measured: a cached call costs the same under a 1-rule and a 200-rule filter),
#: so these are the calls the BPF program runs for.  libseccomp puts them first
#: in it: measured, an ``openat`` then costs 55 ns in the filter, not 100 ns
#: behind sixty other tests, where it has an ``O_TRUNC`` rule (below Landlock
#: ABI 3 only: :func:`truncation_rules`)
HOT_SYSCALLS = ("openat", "brk", "fcntl")
#: pid_t is 32 bits: compare the low half only, so high garbage cannot dodge a rule
_PID_MASK = 0xFFFFFFFF


class SeccompUnavailable(KernelGuardError):
    """The filter could not be built, loaded or verified on this system."""


@functools.lru_cache(maxsize=None)
def bindings() -> ModuleType:
    """libseccomp's Python bindings: the official module, else pyseccomp.  Found once
    (a failure is not kept: each call raises it again): a profile's parse asks for
    them about seventy times, and a failed ``import seccomp`` searches the path."""
    try:
        import seccomp  # type: ignore[import-not-found]

        return seccomp
    except ImportError:
        pass
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        raise SeccompUnavailable(
            f"libseccomp's Python bindings are not available ({exc}); install libseccomp2 "
            "and the pyseccomp package (a kernel_guard dependency)") from exc
    return pyseccomp


def syscall_known(name: str) -> bool:
    """Whether libseccomp knows the syscall ``name`` (pseudo-numbers count)."""
    sc = bindings()
    return sc.resolve_syscall(sc.Arch.NATIVE, name) != _NR_SCMP_ERROR


def syscall_numbers(arch_name: str, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """name -> (audit arch as a notification reports it, number) on one ABI, from libseccomp.

    x32 calls arrive as the x86_64 audit arch with the x32 bit in the number,
    which libseccomp's x32 numbers already carry.
    """
    sc = bindings()
    arch = int(getattr(sc.Arch, _ARCH_NAMES[arch_name]))
    reported = int(sc.Arch.X86_64) if arch_name == "SCMP_ARCH_X32" else arch
    out = {}
    for name in names:
        nr = sc.resolve_syscall(arch, name)
        if nr >= 0:
            out[name] = (reported, nr)
    return out


def supervisor_rules(pid: int, tids: list[int], witness: int = 0) -> tuple[Rule, ...]:
    """Rules that send every signal, pidfd, rlimit, ``F_SETOWN`` or scheduling change
    (nice value, affinity, policy, I/O priority) aimed at the supervisor (its pid,
    each of its threads, its process group) or its witness to the supervisor
    itself, which refuses and records them; and every scheduling change aimed at
    all processes of a user, which include it.  Built at launch: only then are
    the pids known."""
    def aimed(names: tuple[str, ...], value: int, index: int = 0, *more: RuleArg) -> Rule:
        arg = RuleArg(index, _PID_MASK, value & _PID_MASK, "SCMP_CMP_MASKED_EQ")
        return Rule(names, "SCMP_ACT_NOTIFY", 1, (*more, arg), "aimed at the exec supervisor",
                    f"launcher (supervisor pid {pid})")

    processes = sorted({pid, witness} - {0})
    threads = sorted({*processes, *tids})
    rules = [aimed(_SIGNAL_BY_TID, tid) for tid in threads]
    rules += [aimed(_SIGNAL_BY_TGID, p) for p in processes]
    rules += [aimed(_SCHED_BY_TID, tid) for tid in threads]
    for name, (one, group, user) in _SCHED_BY_WHO.items():
        rules += [aimed((name,), tid, 1, _which(one)) for tid in threads]
        rules.append(aimed((name,), pid, 1, _which(group)))  # its process group, which it leads
        # every process of the user includes the supervisor: refused whoever is named
        rules.append(Rule((name,), "SCMP_ACT_NOTIFY", 1, (_which(user),), "aimed at every process of a user",
                          f"launcher (supervisor pid {pid})"))
    set_owner = RuleArg(1, F_SETOWN, 0, "SCMP_CMP_EQ")
    for target in (*processes, -pid):  # -pid: its process group, which it leads
        rules.append(aimed(("fcntl",), target, 2, set_owner))  # SIGIO/F_SETSIG to it
    rules.append(aimed(("kill",), -pid))
    return tuple(rules)


def _which(value: int) -> RuleArg:
    return RuleArg(0, _PID_MASK, value, "SCMP_CMP_MASKED_EQ")


def memfd_rules() -> tuple[Rule, ...]:
    """Every ``memfd_create`` that could make an executable memfd (no
    ``MFD_NOEXEC_SEAL``, or ``MFD_EXEC``) goes to the supervisor, which creates it
    sealed non-executable: Landlock does not check files on the kernel's internal
    mounts, so a memfd program would run whatever the exec allowlist says.  Calls
    that already ask for the seal never leave the kernel."""
    origin = "launcher (exec allowlist)"
    return (Rule(MEMFD_SYSCALLS, "SCMP_ACT_NOTIFY", 1, (RuleArg(1, MFD_NOEXEC_SEAL, 0, "SCMP_CMP_MASKED_EQ"),),
                 "a memfd without the no-exec seal", origin),
            Rule(MEMFD_SYSCALLS, "SCMP_ACT_NOTIFY", 1, (RuleArg(1, MFD_EXEC, MFD_EXEC, "SCMP_CMP_MASKED_EQ"),),
                 "an executable memfd", origin))


def image_gate_rules() -> tuple[Rule, ...]:
    """``brk(NULL)`` goes to the supervisor, which lets a new image run only when it
    is an allowed program.  Landlock must let the ELF loader execute (the kernel
    opens a program's interpreter for exec), so a path changed between the
    supervisor's reading and the kernel's could start the loader itself with any
    program as its argument; the loader's first call stops it before it maps that
    program.  Added only where the supervisor lets allowed programs run."""
    null = RuleArg(0, 0, 0, "SCMP_CMP_EQ")
    return (Rule(IMAGE_GATE_SYSCALLS, "SCMP_ACT_NOTIFY", 1, (null,), "a new program image starts",
                 "launcher (exec allowlist)"),)


#: open flags (<fcntl.h>, the same on every ABI the filter covers)
O_ACCMODE = 0o3
O_TRUNC = 0o1000


def truncation_rules(notify: bool = True) -> tuple[Rule, ...]:
    """Truncation by path, refused, for a Landlock domain that cannot confine it
    (ABI 1 and 2; from ABI 3 the domain does: :func:`.landlock.write_rights`):
    ``truncate(2)`` and an open with ``O_TRUNC`` but no write access (Linux truncates
    then) go to the supervisor, which refuses (EPERM) and records them (``notify``;
    else EPERM at once), so truncating goes through a file opened for writing, which
    the domain confines at open.  The ``openat`` rule keeps the kernel's
    constant-action cache from answering for ``openat``: the program is built to test
    it first (``HOT_SYSCALLS``).  ``openat2`` hides its flags in a struct the filter
    cannot read: ENOSYS (glibc and Python use ``openat``)."""
    read_only_trunc = O_ACCMODE | O_TRUNC
    origin = "launcher (Landlock writes)"
    action = "SCMP_ACT_NOTIFY" if notify else "SCMP_ACT_ERRNO"
    rules = [Rule(tuple(n for n in ("truncate", "truncate64") if syscall_known(n)), action, errno.EPERM,
                  (), "truncation by path", origin),
             Rule(("openat",), action, errno.EPERM,
                  (RuleArg(2, read_only_trunc, O_TRUNC, "SCMP_CMP_MASKED_EQ"),), "O_TRUNC without write access",
                  origin),
             Rule(("openat2",), "SCMP_ACT_ERRNO", errno.ENOSYS, (), "flags the filter cannot read", origin)]
    if syscall_known("open"):
        rules.append(Rule(("open",), action, errno.EPERM,
                          (RuleArg(1, read_only_trunc, O_TRUNC, "SCMP_CMP_MASKED_EQ"),),
                          "O_TRUNC without write access", origin))
    return tuple(r for r in rules if r.names)


def default_architectures() -> tuple[str, ...]:
    """Every ABI of this machine: x86_64 with i386 and x32; aarch64 with arm."""
    return _COMPAT_ARCHES.get(platform.machine(), ())


def _action(sc: ModuleType, name: str, errno_ret: int) -> int:
    if name == "SCMP_ACT_ERRNO":
        return int(sc.ERRNO(errno_ret))
    return int({
        "SCMP_ACT_ALLOW": sc.ALLOW, "SCMP_ACT_KILL": sc.KILL, "SCMP_ACT_KILL_THREAD": sc.KILL,
        "SCMP_ACT_KILL_PROCESS": sc.KILL_PROCESS, "SCMP_ACT_TRAP": sc.TRAP, "SCMP_ACT_LOG": sc.LOG,
        "SCMP_ACT_NOTIFY": sc.NOTIFY,
    }[name])


def build_filter(profile: Profile, extra_rules: tuple[Rule, ...] = ()) -> Any:
    """A libseccomp filter context for ``profile`` and ``extra_rules`` (not loaded).

    Rules whose action equals the default action are skipped (libseccomp
    refuses them as redundant).  libseccomp errors become ProfileErrors that
    name the rule.
    """
    sc = bindings()
    default = _action(sc, profile.default_action, profile.default_errno_ret)
    filt = sc.SyscallFilter(default)
    arches = profile.architectures or default_architectures()
    for arch_name in arches:
        arch = getattr(sc.Arch, _ARCH_NAMES[arch_name])
        try:
            if not filt.exist_arch(arch):
                filt.add_arch(arch)
        except OSError as exc:
            raise ProfileError(f"seccomp profile {profile.path}: field architectures: "
                               f"libseccomp cannot add {arch_name}: {exc.strerror}") from exc
    try:
        # an ABI the filter does not describe must not be a way around it
        filt.set_attr(sc.Attr.ACT_BADARCH, int(sc.KILL_PROCESS))
        filt.set_attr(sc.Attr.CTL_NNP, 1)
        filt.set_attr(sc.Attr.CTL_TSYNC, 1)
    except OSError as exc:
        # libseccomp probes the kernel: no KILL_PROCESS or TSYNC means no usable seccomp here
        raise SeccompUnavailable(f"libseccomp cannot set up the filter on this system ({exc.strerror}): "
                                 "the kernel lacks seccomp(2), SECCOMP_RET_KILL_PROCESS or TSYNC") from exc
    ruled: set[str] = set()
    for rule in (*profile.rules, *extra_rules):
        action = _action(sc, rule.action, rule.errno_ret)
        if action == default:
            continue
        args = [sc.Arg(a.index, getattr(sc, _OPS[a.op]), a.value, a.value_two) for a in rule.args]
        for i, name in enumerate(rule.names):
            try:
                filt.add_rule(action, name, *args)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise ProfileError(f"seccomp profile {profile.path}: field {rule.field}.names[{i}]: "
                                   f"libseccomp rejected the rule for {name!r}: {reason} "
                                   "(conflicting or inexpressible rule?)") from exc
            ruled.add(name)
    _put_first(filt, [name for name in HOT_SYSCALLS if name in ruled])
    return filt


def _put_first(filt: Any, names: list[str]) -> None:
    """Test ``names`` first in the BPF program, in this order (libseccomp: the higher
    priority, the earlier)."""
    for rank, name in enumerate(names):
        filt.syscall_priority(name, 255 - rank)


def notify_fd(filt: Any) -> int:
    """The listener fd of a loaded filter (official binding, or pyseccomp's handle)."""
    if hasattr(filt, "get_notify_fd"):
        return int(filt.get_notify_fd())
    import pyseccomp

    lib = pyseccomp._libseccomp  # no public accessor in pyseccomp 0.1.x
    return int(lib.seccomp_notify_fd(ctypes.c_void_p(filt._filter)))


@functools.lru_cache(maxsize=None)
def _libc() -> Any:
    # ctypes.CDLL(None) is the already-loaded C library: no find_library, no exec; once,
    # during the launcher's set-up (each load is a ctypes.dlopen audit event)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    return libc


def prctl(option: int, arg2: int = 0) -> None:
    """prctl(2) with one argument; raises OSError."""
    if _libc().prctl(option, arg2, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_no_new_privs() -> None:
    """No set-uid, file capability or LSM transition from here on (inherited, permanent)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def allow_ptracer(pid: int) -> bool:
    """Let ``pid`` read our memory under Yama ptrace_scope=1 (False where Yama is absent)."""
    try:
        prctl(PR_SET_PTRACER, pid)
        return True
    except OSError:
        return False


CAP_SYS_PTRACE = 19
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_LOWER = 3
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capability(cap: int) -> bool:
    """Drop ``cap`` from every set of this process (True if it was held).

    CAP_SYS_PTRACE would let a root kernel open the non-dumpable supervisor's
    memory through /proc; seccomp cannot judge that open, so the capability goes.
    """
    libc = _libc()
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    word, bit = divmod(cap, 32)
    held = bool((data[word].effective | data[word].permitted) & (1 << bit))
    for field_name in ("effective", "permitted", "inheritable"):
        setattr(data[word], field_name, getattr(data[word], field_name) & ~(1 << bit))
    for option, arg in ((PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER), (PR_CAPBSET_DROP, cap)):
        if option == PR_CAP_AMBIENT:
            libc.prctl(option, arg, cap, 0, 0)
        else:
            libc.prctl(option, arg, 0, 0, 0)  # EPERM without CAP_SETPCAP: nothing to drop then
    if held and libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"dropping capability {cap}: {os.strerror(err)}")
    return held


@dataclass
class LoadedFilter:
    """A filter in force: the listener fd (if it notifies) is the caller's to pass on."""

    profile: Profile
    listener_fd: Optional[int]
    architectures: tuple[str, ...]


def load(profile: Profile, extra_rules: tuple[Rule, ...] = ()) -> LoadedFilter:
    """Build and load ``profile`` (with ``extra_rules``) for every thread; return the listener fd.

    Raises SeccompUnavailable when the kernel refuses the filter (no seccomp,
    no user notification, TSYNC failure because a thread has another filter).
    """
    filt = build_filter(profile, extra_rules)
    try:
        filt.load()
    except OSError as exc:
        hint = {errno.EINVAL: "the kernel lacks seccomp filters, TSYNC or user notification (Linux >= 5.7 needed)",
                errno.EACCES: "no_new_privs is not set and the process lacks CAP_SYS_ADMIN",
                errno.EFAULT: "the filter program was rejected",
                errno.ESRCH: "another thread could not be synchronised (TSYNC)",
                errno.EBUSY: "a listener already exists for this process"}.get(exc.errno or 0, "")
        raise SeccompUnavailable(f"loading the seccomp filter failed: {exc.strerror}"
                                 + (f" ({hint})" if hint else "")) from exc
    fd = None
    if profile.uses_notify:
        fd = notify_fd(filt)
        if fd < 0:
            raise SeccompUnavailable(f"the filter loaded but libseccomp returned no listener fd ({fd})")
    return LoadedFilter(profile, fd, profile.architectures or default_architectures())


def export(profile: Profile, fileobj: IO[Any], fmt: str = "pfc") -> None:
    """Write libseccomp's pfc (readable) or bpf (binary) form of ``profile``."""
    filt = build_filter(profile)
    if hasattr(fileobj, "flush"):
        fileobj.flush()
    if fmt == "bpf":
        filt.export_bpf(fileobj)
    else:
        filt.export_pfc(fileobj)
