"""Which libc entry points start programs, read from the libc this process has loaded.

A hand-written list of exec functions misses the ones its author did not know
(glibc's ``_IO_popen`` and ``_IO_proc_open``, ``wordexp``, ``__vfork``) and the
ones a newer libc adds.  :func:`derive_exec_symbols` reads the dynamic symbol
table (``.dynsym``) of the libc named in ``/proc/self/maps`` with ``struct``
and selects every exported name of the exec, spawn, system and popen families,
plus ``syscall`` (whose first argument can be ``execve``); the hand list stays
as a floor.  Any failure (no libc mapped, a stripped or unexpected file) leaves
the floor: the derivation can only add names.
"""

from __future__ import annotations

import array
import functools
import os
import re
import struct
import sys
from typing import BinaryIO, Iterable, Iterator

__all__ = ["EXEC_FAMILY", "derive_exec_symbols", "dynamic_symbols", "exec_family", "loaded_libc"]

#: exported names that start a program or issue any system call; a leading
#: ``__``, ``__libc_`` or ``_IO_`` marks glibc's internal spellings of the same
EXEC_FAMILY = re.compile(
    r"_*(?:libc_|IO_)?(?:exec[a-z]*|fexecve|posix_spawn\w*|system|do_system|popen|proc_open|wordexp"
    r"|vfork|clone\d*|syscall)"
)

# a word every name of EXEC_FAMILY contains (a quick first filter)
_FAMILY_WORDS = re.compile(rb"exec|spawn|system|popen|proc_open|wordexp|vfork|clone|syscall")

# glibc ("libc.so.6", "libc-2.31.so") and musl, whose libc is its loader
_LIBC_NAME = re.compile(r"(?:libc\.so(?:\.\d+)*|libc-[\d.]+\.so|ld-musl-[\w-]+\.so\.\d+|libc\.musl-[\w-]+\.so\.\d+)")

_SHT_DYNSYM = 11
_MAX_TABLE = 16 << 20  # larger than any libc's symbol or string table: a corrupt header
_EXPORTED_BINDINGS = (1, 2, 10)  # STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE
_CODE_TYPES = (0, 2, 10)  # STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC


def loaded_libc(maps: str = "/proc/self/maps") -> str | None:
    """The path of the C library mapped into this process, or None."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                path = line.rstrip("\n").split(None, 5)[5:]
                if path and path[0].startswith("/") and _LIBC_NAME.fullmatch(os.path.basename(path[0])):
                    return path[0]
    except OSError:
        pass
    return None


def dynamic_symbols(path: str, pattern: re.Pattern | None = None) -> frozenset[str]:
    """The names a shared object exports (defined code symbols in ``.dynsym``);
    with ``pattern``, only those it matches in full (much faster: the names are
    found in the string table first).

    Raises ValueError for a file that is not an ELF shared object this parser
    understands, OSError when it cannot be read.
    """
    with open(path, "rb") as fh:
        ident = fh.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise ValueError(f"{path}: not an ELF file")
        wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        sections = list(_section_headers(fh, wide, order))
        for sh_type, offset, size, link, entsize in sections:
            if sh_type == _SHT_DYNSYM:
                if not 0 <= link < len(sections):
                    raise ValueError(f"{path}: .dynsym links to no string table")
                strings = _read(fh, sections[link][1], sections[link][2])
                names = _names(strings, pattern) if pattern is not None else None
                return frozenset(_exported(_read(fh, offset, size), entsize, strings, names, wide, order))
    raise ValueError(f"{path}: no .dynsym section")


def _names(strings: bytes, pattern: re.Pattern) -> dict[int, str]:
    """String-table offset -> name, for every name ``pattern`` matches in full.

    A linker may store ``execve`` as the tail of ``fexecve``, so every suffix of
    a string counts; only strings holding one of the families' words are split.
    """
    found: dict[int, str] = {}
    split: set[int] = set()
    for word in _FAMILY_WORDS.finditer(strings):
        first = strings.rfind(b"\0", 0, word.start()) + 1
        if first in split:
            continue
        split.add(first)
        text = strings[first:strings.find(b"\0", word.end())].decode("ascii", "replace")
        for start in range(len(text)):
            if pattern.fullmatch(text, start):
                found[first + start] = text[start:]
    return found


def _name_at(strings: bytes, offset: int) -> str | None:
    end = strings.find(b"\0", offset)
    return strings[offset:end].decode("ascii", "replace") if 0 < offset < end else None


def _section_headers(fh: BinaryIO, wide: bool, order: str) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, offset, size, link, entry size) of every section."""
    fh.seek(0x28 if wide else 0x20)
    (shoff,) = struct.unpack(order + ("Q" if wide else "I"), fh.read(8 if wide else 4))
    fh.seek(0x3A if wide else 0x2E)
    shentsize, shnum = struct.unpack(order + "HH", fh.read(4))
    layout = order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII")
    if shnum == 0 or shentsize < struct.calcsize(layout) or shnum > 4096:
        raise ValueError("no usable section headers")
    table = _read(fh, shoff, shentsize * shnum)
    for index in range(shnum):
        fields = struct.unpack_from(layout, table, index * shentsize)
        _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize = fields
        yield sh_type, offset, size, link, entsize


def _read(fh: BinaryIO, offset: int, size: int) -> bytes:
    if not 0 < size <= _MAX_TABLE:
        raise ValueError("implausible table size")
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("truncated file")
    return data


def _exported(table: bytes, entsize: int, strings: bytes, names: dict[int, str] | None, wide: bool,
              order: str) -> Iterator[str]:
    """The names of the defined, global or weak code symbols in a ``.dynsym`` table
    (only those in ``names``, by string offset, when given)."""
    # Elf64_Sym: name, info, other, shndx, value, size; Elf32_Sym: name, value, size, info, other, shndx
    layout = order + ("IBBHQQ" if wide else "IIIBBH")
    if entsize != struct.calcsize(layout) or len(table) % entsize:
        raise ValueError("unexpected symbol entry size")
    words = array.array("I", table)  # st_name is the first 4-byte word of each entry
    if (order == "<") != (sys.byteorder == "little"):
        words.byteswap()
    for index, name in enumerate(words[:: entsize // 4]):
        if names is not None and name not in names:
            continue
        entry = struct.unpack_from(layout, table, index * entsize)
        info, shndx = (entry[1], entry[3]) if wide else (entry[3], entry[5])
        if shndx != 0 and info >> 4 in _EXPORTED_BINDINGS and info & 0xF in _CODE_TYPES:
            text = names[name] if names is not None else _name_at(strings, name)
            if text:
                yield text


def exec_family(names: Iterable[str]) -> frozenset[str]:
    """The names among ``names`` that belong to the exec, spawn, system or popen families."""
    return frozenset(n for n in names if EXEC_FAMILY.fullmatch(n))


def derive_exec_symbols(floor: Iterable[str], maps: str = "/proc/self/maps") -> frozenset[str]:
    """``floor`` plus every exec-family name the loaded libc exports (only the floor
    when the libc cannot be found or read).  A libc file read before is not read
    again while it is the same file (device, inode, size, change time): the
    launcher builds two hooks' policies in one start."""
    path = loaded_libc(maps)
    if path is None:
        return frozenset(floor)
    try:
        st = os.stat(path)
        return frozenset(floor) | _exec_names(path, st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)
    except (OSError, ValueError, struct.error):
        return frozenset(floor)


@functools.lru_cache(maxsize=4)
def _exec_names(path: str, *identity: int) -> frozenset[str]:
    """The exec-family names the libc at ``path`` exports, read once per file identity
    (device, inode, size, change time; a failure is not kept)."""
    return frozenset(dynamic_symbols(path, EXEC_FAMILY))
