"""Writes that would run code at the next start: where the audit layer judges paths.

A kernel that can write its IPython profile, a kernelspec, a ``.pth`` file or a
shell start-up file runs that code in the next kernel, before any guard.  These
checks refuse (enforce) or record such writes, renames, links, copies and
changes (``open``, ``os.rename``, ``os.mkdir`` ...), and reads of another
process's ``environ`` or ``mem``.

They are string checks on paths, so they are the clear message and the record,
not the boundary: under the launcher, Landlock confines writes to the writable
roots and the launcher reads no start-up code from them (start_folders.py).
See docs/architecture.md.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterable

from ..exceptions import CredentialRefused, PersistenceRefused
from . import dirfd
from .recording import _refuse_or_record, _short

try:
    from . import _filter as _audit_filter
except ImportError:  # built without a C compiler
    _audit_filter = None

__all__ = ["default_persistence", "glob_pattern", "is_persistence_path", "persistence_starts",
           "replaces_persistence", "settled_ends"]


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


_PROC_SECRETS = ("/environ", "/mem")


_PROC_SECRET_NAMES = ("environ", "mem")


def _is_proc_secret(path: str) -> bool:
    """Whether ``path``, as the kernel resolves it (relative to the working folder,
    extra slashes, ``..`` after a link, links in its folders and the link it names),
    is a process's environ or mem."""
    real = "/" + os.path.realpath(path).lstrip("/")  # POSIX keeps a leading "//"
    return real.startswith("/proc/") and real.endswith(_PROC_SECRETS)


_HOME_RC = (".bashrc", ".bash_profile", ".bash_login", ".profile", ".zshrc", ".zprofile",
            ".pythonrc", ".pythonrc.py")


_MOVE_EVENTS = frozenset({"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree"})


#: events that change one file or folder in place: event -> (index of the path,
#: index of its dir_fd or None, what the refusal calls it).  Removing, emptying or
#: chmod-ing kernel_guard's own modules or a start-up file changes the next start
#: as much as writing it.
_CHANGE_EVENTS = {"os.mkdir": (0, 2, "creating"), "os.remove": (0, 1, "removing"),
                  "os.rmdir": (0, 1, "removing"), "os.chmod": (0, 2, "changing the permissions of"),
                  "os.chown": (0, 3, "changing the owner of"), "os.utime": (0, 3, "changing the times of"),
                  "os.truncate": (0, None, "emptying")}


def _dir(path: str) -> str:
    return os.path.join(os.path.realpath(os.path.expanduser(path)), "")


def default_persistence(extra: Iterable[str] = ()) -> tuple[tuple[str, ...], tuple[str, ...], frozenset]:
    """(protected directories, glob patterns, exact files) for this user.

    Directories: Jupyter config and kernelspec dirs, system IPython config, the
    Python environment (prefixes, site-packages, kernel_guard itself).
    Globs: the IPython dir's startup folders and ``*_config.py/json``.
    Files: the shell's start-up files in the home directory.
    """
    dirs: list[str] = [os.path.join(sys.prefix, "etc", "ipython"), "/usr/local/etc/ipython", "/etc/ipython"]
    globs: list[str] = []
    try:
        from jupyter_core import paths as jpaths

        dirs += [jpaths.jupyter_config_dir(), *jpaths.jupyter_config_path(), *jpaths.jupyter_path("kernels")]
    except Exception:  # jupyter_core is a dependency of ipykernel; be robust anyway
        dirs += ["~/.jupyter", "~/.local/share/jupyter/kernels"]
    try:
        from IPython.paths import get_ipython_dir

        ipdir = get_ipython_dir()
    except Exception:
        ipdir = "~/.ipython"
    # the launcher gives its kernel a private IPYTHONDIR: the home's stays protected too
    for ipdir in sorted({_dir(ipdir), _dir("~/.ipython")}):
        globs += [ipdir + "*/startup/*", ipdir + "*_config.py", ipdir + "*_config.json",
                  ipdir + "*/*_config.py", ipdir + "*/*_config.json", ipdir + "extensions/*"]
    dirs += _environment_dirs()
    home = os.path.expanduser("~")
    files = frozenset(os.path.realpath(os.path.join(home, f)) for f in _HOME_RC)
    dirs += list(extra)
    return tuple(sorted({_dir(d) for d in dirs})), tuple(globs), files


def _environment_dirs() -> list[str]:
    """The Python environment the kernel and the server import from: its prefixes,
    site-packages (the user's too) and kernel_guard's own folder (an editable
    install lives outside site-packages).  Code written there runs at the next start."""
    import site

    dirs = [sys.prefix, sys.exec_prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    try:
        dirs += [*site.getsitepackages(), site.getusersitepackages()]
    except AttributeError:  # site without these (an embedded interpreter)
        pass
    return [d for d in dirs if d and os.path.realpath(d) != "/"]


def _segment_glob(glob: str) -> str:
    """A path glob as a regular expression whose ``*`` and ``?`` stay within one path
    segment: ``<ipdir>/*/startup/*`` is a profile's startup file, not anything beneath
    the IPython folder (numba's cache, ``%store``'s database)."""
    out = []
    for part in re.split(r"(\*|\?)", glob):
        out.append("[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part))
    return "".join(out) + r"\Z"


def glob_pattern(globs: Iterable[str]) -> re.Pattern:
    """One compiled pattern matching any of the shell-style path ``globs``."""
    return re.compile("|".join(f"(?:{_segment_glob(g)})" for g in globs) or r"(?!)")


def persistence_starts(dirs: Iterable[str], globs: Iterable[str], files: Iterable[str]) -> tuple[str, ...]:
    """What every persistence path starts with, as :func:`is_persistence_path` judges one
    spelling (but for the names it matches anywhere: ``.pth``, ``sitecustomize.*``,
    ``usercustomize.*``): each protected folder, each protected file, and each glob up to
    its first wildcard.  The native filter lets a write pass without the whole comparison
    only when its path starts with none of them."""
    return tuple(sorted({*dirs, *files, *(re.split(r"[*?]", g, maxsplit=1)[0] for g in globs)}))


def _resolve(path: str) -> str:
    """``os.path.realpath`` of an absolute path; through realpath(3) when the filter is built."""
    if _audit_filter is not None:
        resolved = _audit_filter.resolve(path)
        if resolved is not None:
            return resolved
    return os.path.realpath(path)


def is_persistence_path(path: str, dirs: tuple[str, ...], globs: re.Pattern, files: frozenset) -> bool:
    """Whether writing ``path`` could run code at the next start.

    Both the path as written and its symlink-resolved form are checked: a
    link into a start-up folder must not launder the write.
    """
    absolute = os.path.abspath(path)
    # resolved from the path as given: "link/../x" is beside the link's target, not "x"
    resolved = _resolve(path if path.startswith("/") else os.path.join(os.getcwd(), path))
    for candidate in (absolute,) if resolved == absolute else (absolute, resolved):
        name = candidate[candidate.rfind("/") + 1:]
        if name.endswith(".pth") or name.startswith(("sitecustomize.", "usercustomize.")):
            return True
        if candidate in files or candidate.startswith(dirs) or globs.match(candidate):
            return True
    return False


def replaces_persistence(path: str, dirs: tuple[str, ...], globs: re.Pattern, files: frozenset) -> bool:
    """Whether a rename, link or copy at ``path`` changes what runs at the next start:
    the path is a persistence path, or a folder holding one (``~/.ipython`` or
    ``~/.jupyter`` renamed as a whole, or the home folder itself)."""
    if is_persistence_path(path, dirs, globs, files):
        return True
    folder = _resolve(path if path.startswith("/") else os.path.join(os.getcwd(), path)).rstrip("/") + "/"
    if any(d.startswith(folder) for d in dirs) or any(f.startswith(folder) for f in files):
        return True
    # the IPython folder and its profiles: their start-up files and configs match the globs
    probes = ("profile_default/startup/x.py", "startup/x.py", "ipython_config.py", "profile_x/ipython_config.py")
    return any(globs.match(folder + probe) for probe in probes)


def _check_open(args: tuple, enforce: bool, dirs: tuple, globs: re.Pattern, files: frozenset) -> None:
    path, mode, flags = args
    if not isinstance(path, (str, bytes)):
        return  # an fd (os.fdopen): the file was opened, and checked, before
    path = os.fsdecode(path)
    secret = path.endswith(_PROC_SECRET_NAMES)
    if isinstance(mode, str):
        writing = any(c in mode for c in "wax+")
    else:
        writing = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
    if not (secret or writing):
        return
    candidates = [path]
    if mode is None and not path.startswith("/"):
        # os.open: its event leaves out dir_fd, so a relative path may be meant
        # relative to any folder the process holds open
        candidates = [os.path.join(folder, path) for folder in dirfd.open_folders()] or candidates
    if secret:
        found = next((c for c in candidates if _is_proc_secret(c)), None)
        if found is not None:
            # another process's environment (the server's API token) or memory
            _refuse_or_record(enforce, CredentialRefused, "credential-denied", "credential-read", "open",
                              f"reading {_short(path)}", file={"path": found})
            return
    if writing:
        found = next((c for c in candidates if is_persistence_path(c, dirs, globs, files)), None)
        if found is not None and _import_system_caching(found):
            _bytecode_not_cached(enforce, found)
        elif found is not None:
            _refuse_or_record(enforce, PersistenceRefused, "persistence-denied", "persistence-write", "open",
                              f"writing {_short(path)}", file={"path": found})


_PYC = re.compile(r"/__pycache__(/[^/]+\.pyc(\.\d+)?)?\Z")


def _import_system_caching(path: str) -> bool:
    """Python's import system writing its bytecode cache (``__pycache__/*.pyc``, through a
    temporary ``.pyc.<n>``, in a ``__pycache__`` folder it creates first), as the calling
    frames say: its own caching, not the cell's."""
    if not _PYC.search(path):
        return False
    try:
        caller = sys._getframe(3)
    except ValueError:
        return False
    for _ in range(4):
        if caller is None:
            return False
        if caller.f_globals.get("__name__") == "importlib._bootstrap_external":
            return True
        caller = caller.f_back
    return False


def _bytecode_not_cached(enforce: bool, path: str, technique: str = "open", verb: str = "writing") -> None:
    """Refused as any write there is (the import system goes on without its cache), and
    recorded once per file or folder as what it is, not as a failure nobody caused."""
    from .recording import _record

    if path not in _NOTED:
        _NOTED.add(path)
        _record("bytecode-not-cached", "unknown",
                f"Python's bytecode cache was not written ({_short(path)}): the Python environment is read-only "
                "in this kernel, so the module is compiled at each import instead", technique, file={"path": path})
    if enforce:
        raise PersistenceRefused(f"{verb} {_short(path)}", layer="audit")


_NOTED: set[str] = set()


def _move_ends(event: str, args: tuple) -> list[tuple[Any, Any, str]]:
    """(path, dir_fd, what happens to it) for each end of a rename, link, symlink or copy."""
    if event in ("os.rename", "os.link"):  # (src, dst, src_dir_fd, dst_dir_fd)
        return [(args[0], args[2], "moving"), (args[1], args[3], "writing")]
    if event == "os.symlink":  # (target, link, dir_fd): the target is text, only the link is made
        return [(args[1], args[2], "writing")]
    return [(args[1], None, "writing")]  # shutil.copyfile / copytree (src, dst)


def settled_ends() -> dict[str, tuple[tuple[int, int], ...]]:
    """For the native filter: each change event whose ends ``_check_change`` and
    ``_check_move`` judge by their paths alone, and the (path, dir_fd or -1)
    argument indexes of those ends, read off the same tables.  ``os.symlink`` is
    left out: its target's text is judged too."""
    ends = {event: ((path, -1 if fd is None else fd),) for event, (path, fd, _) in _CHANGE_EVENTS.items()}
    for event in _MOVE_EVENTS - {"os.symlink"}:
        # _move_ends names each end by its arguments: given their indexes, it returns them
        ends[event] = tuple((path, -1 if fd is None else fd) for path, fd, _ in _move_ends(event, tuple(range(4))))
    return ends


def _check_move(event: str, args: tuple, enforce: bool, dirs: tuple, globs: re.Pattern, files: frozenset) -> None:
    """A rename or hard link changes both ends: moving a start-up folder away (to put a
    prepared one in its place) is as good as writing into it.  A symlink whose target
    is a process's environ or mem would hide the name the open check looks for."""
    for end, dir_fd, what in _move_ends(event, args):
        if not isinstance(end, (str, bytes)):
            continue
        where = dirfd.resolve_at(end, dir_fd)
        if where is None or replaces_persistence(where, dirs, globs, files):
            _refuse_path(enforce, event, what, os.fsdecode(end), where, dir_fd)
            return
        if event == "os.symlink" and isinstance(args[0], (str, bytes)):
            target = os.path.join(os.path.dirname(where), os.fsdecode(args[0]))
            if target.endswith(_PROC_SECRET_NAMES) and _is_proc_secret(target):
                _refuse_or_record(enforce, CredentialRefused, "credential-denied", "credential-read", event,
                                  f"a link to {_short(os.fsdecode(args[0]))}", file={"path": where, "target_path": target})
                return


def _check_change(event: str, args: tuple, enforce: bool, dirs: tuple, globs: re.Pattern, files: frozenset) -> None:
    """mkdir, remove, rmdir, chmod, chown, utime or truncate of a persistence path
    (an int path is a descriptor: fchmod, futimes, ftruncate)."""
    path_index, fd_index, verb = _CHANGE_EVENTS[event]
    path, dir_fd = args[path_index], args[fd_index] if fd_index is not None else None
    if isinstance(path, int):
        where = dirfd.fd_path(path)
        if where is None:
            return  # a pipe, a socket or a deleted file: nothing that runs at a start
        path = where
    elif not isinstance(path, (str, bytes)):
        return
    where = dirfd.resolve_at(path, dir_fd)
    # creating a folder replaces nothing: only inside protected places; the rest
    # also for a folder that holds one (removing or chmod-ing ~/.ipython)
    check = is_persistence_path if event == "os.mkdir" else replaces_persistence
    if where is not None:
        if not check(where, dirs, globs, files):
            return
        if event == "os.mkdir" and _import_system_caching(where):
            _bytecode_not_cached(enforce, where, event, verb)  # the folder its cache goes in
            return
    _refuse_path(enforce, event, verb, os.fsdecode(path), where, dir_fd)


def _refuse_path(enforce: bool, event: str, what: str, path: str, where: str | None, dir_fd: Any) -> None:
    """Refuse a change at ``where`` (``path`` resolved), or at a path relative to a
    folder descriptor that names no folder (fail closed)."""
    shown = _short(path if where is None or where == path else f"{path} ({where})")
    reason = f"{what} {shown}" + (f" relative to descriptor {dir_fd}, which names no folder" if where is None else "")
    _refuse_or_record(enforce, PersistenceRefused, "persistence-denied", "persistence-write", event, reason,
                      file={"path": where or path})
