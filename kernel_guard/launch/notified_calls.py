"""Which system calls, besides exec, the kernel's filter sends its supervisor, by name.

The launcher's rules (:mod:`.seccomp_filter`) and the supervisor's loop
(:mod:`.supervisor_loop`) both read these; they live apart so that the
supervisor need not import the rule builder (libseccomp's glue and the
profile model: memory in every kernel's supervisor, docs/launcher.md).
"""

__all__ = ["IMAGE_GATE_SYSCALLS", "MEMFD_SYSCALLS", "TRUNCATION_SYSCALLS"]

#: memfds: the supervisor creates them sealed non-executable (memfd.py)
MEMFD_SYSCALLS = ("memfd_create",)
#: the first call of every new program image: the ELF loader asks for the break
#: (``brk(NULL)``) before it maps anything, whether it was started as a program's
#: interpreter or as a program itself
IMAGE_GATE_SYSCALLS = ("brk",)
#: truncation by path: the syscalls the launcher's rules send to the supervisor
TRUNCATION_SYSCALLS = ("truncate", "truncate64", "openat", "open")
