"""ctypes look-ups of exec and signal functions: the libc-derived exec set and the signal set, in a
real kernel run as the notebook user (uid 1000), and the ELF reading behind the derivation."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

import pytest
from conftest import GuardedKernel, assert_short_refusal
from launcher_support import NOTEBOOK_USER, unprivileged_root

from kernel_guard.audit import hook


@pytest.fixture(scope="module")
def kernel() -> Iterator[GuardedKernel]:
    """An enforcing extension-only kernel as uid 1000 (the OS would let it exec and signal)."""
    with unprivileged_root() as root:
        started = GuardedKernel(os.path.join(root, "k"), user=NOTEBOOK_USER).start()
        yield started
        started.shutdown()


def test_a_symbol_only_the_derivation_knows_is_refused(kernel):
    """glibc's _IO_popen (a popen under another name, not in the hand list) is refused and recorded;
    the command it was given never runs."""
    assert "_IO_popen" not in hook.EXEC_SYMBOLS
    marker = os.path.join(kernel.work, "popened")
    kernel.mark()
    result = kernel.execute(f"import ctypes\nlibc = ctypes.CDLL(None)\nlibc._IO_popen(b'touch {marker}', b'r')")
    assert_short_refusal(result, "_IO_popen()")
    event = kernel.failures("audit")[0]
    assert (event["event"]["action"], event["kernel_guard"]["target"]) == ("symbol-denied", "_IO_popen")
    assert not os.path.exists(marker)


def test_the_handle_level_dlsym_is_checked_too(kernel):
    """_ctypes.dlsym(handle, 'system') (event ctypes.dlsym/handle) is refused like a CDLL attribute."""
    marker = os.path.join(kernel.work, "dlsymmed")
    kernel.mark()
    result = kernel.execute(
        "import ctypes, _ctypes\naddress = _ctypes.dlsym(ctypes.CDLL(None)._handle, 'system')\n"
        f"ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p)(address)(b'touch {marker}')")
    assert_short_refusal(result, "system()")
    assert kernel.failures("audit")[0]["event"]["action"] == "symbol-denied"
    assert not os.path.exists(marker)


@pytest.mark.parametrize("code", [
    "libc.kill(pid, 9)",
    "libc.pidfd_send_signal(libc.pidfd_open(pid, 0), 9, None, 0)",
    "libc.syscall(62, pid, 9)",  # kill(2) on x86_64, through the raw system call
    "libc.tgkill(pid, pid, 9)",
])
def test_signals_through_ctypes_are_refused(kernel, code):
    """kill(), pidfd_open()/pidfd_send_signal(), tgkill() and syscall() looked up through ctypes are
    refused and recorded; the process of the same user they aimed at lives on."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], user=NOTEBOOK_USER[0],
                              group=NOTEBOOK_USER[1], extra_groups=[])
    try:
        kernel.mark()
        result = kernel.execute(f"import ctypes\nlibc = ctypes.CDLL(None)\npid = {victim.pid}\n{code}")
        assert_short_refusal(result, "through ctypes")
        event = kernel.failures("audit")[0]
        assert event["event"]["action"] == "symbol-denied", event
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_derivation_reads_the_loaded_libc():
    """The libc in /proc/self/maps exports the exec family the derivation selects, and nothing else."""
    from kernel_guard.audit import libc_symbols

    path = libc_symbols.loaded_libc()
    assert path and os.path.isfile(path)
    exported = libc_symbols.dynamic_symbols(path)
    assert {"execve", "system", "posix_spawn", "getpid", "malloc"} <= exported
    derived = libc_symbols.derive_exec_symbols(hook.EXEC_SYMBOLS)
    assert hook.EXEC_SYMBOLS <= derived
    assert {"execve", "execveat", "system", "popen", "_IO_popen", "wordexp", "syscall"} <= derived
    assert not derived & {"getpid", "malloc", "open", "kill", "fork", "sysconf", "_IO_proc_close"}
    assert libc_symbols.dynamic_symbols(path, libc_symbols.EXEC_FAMILY) == libc_symbols.exec_family(exported)


def test_derivation_falls_back_to_the_floor(tmp_path):
    """No libc in the maps, or a file that is not ELF: the hand list alone, never fewer names."""
    from kernel_guard.audit import libc_symbols

    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r--p 00000000 fe:00 1 /usr/lib/libfoo.so\n")
    assert libc_symbols.derive_exec_symbols(hook.EXEC_SYMBOLS, str(maps)) == hook.EXEC_SYMBOLS
    fake = tmp_path / "libc.so.6"
    fake.write_bytes(b"not an ELF file at all")
    maps.write_text(f"7f00-7f01 r--p 00000000 fe:00 1 {fake}\n")
    assert libc_symbols.loaded_libc(str(maps)) == str(fake)
    assert libc_symbols.derive_exec_symbols(hook.EXEC_SYMBOLS, str(maps)) == hook.EXEC_SYMBOLS
    with pytest.raises(ValueError):
        libc_symbols.dynamic_symbols(str(fake))
