"""Folders a kernel reads at start that the kernel itself can write.

Landlock rules only grant, so while the home is a writable root, code a cell
writes into ``~/.ipython`` (start-up files, ``exec_lines`` in a config file) or
into the user site's ``.pth`` files would run at every later start, with no
record of what it was.  Under the launcher:

* the kernel gets a private IPython folder, new at each start and removed at
  exit (by the kernel, or by its supervisor when the kernel was killed:
  :mod:`.leftovers`): the user's profile is not read (shared settings belong in
  ``/etc/ipython``, which every kernel reads); only its history file is kept,
  which is data, not code;
* the user site stays on ``sys.path`` (modules there run only when imported),
  but lines of its ``.pth`` files that run code are not run.

The single-user server reads other folders (``~/.jupyter``, the Jupyter data
folder): those are the deployment's to point elsewhere (see the examples);
the server's start-up report names each one the user can still write.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional

from .leftovers import PrivateFolder

__all__ = ["StartFolders", "add_user_site", "keep_history", "private_ipython_dir"]

#: what IPython would read from a profile at start: config files and start-up scripts
_CONFIG_NAMES = ("ipython_config.py", "ipython_config.json", "ipython_kernel_config.py",
                 "ipython_kernel_config.json")


@dataclass
class StartFolders:
    """What the launcher did about the folders read at start."""

    ipython_dir: str = ""
    user_ipython_dir: str = ""
    history_file: str = ""
    #: the private folder and its parent, open for the supervisor to remove it after a kill
    held: Optional[PrivateFolder] = None
    #: user files the kernel no longer reads (config, start-up scripts, .pth files with code)
    not_read: list[str] = field(default_factory=list)

    def as_event_fields(self) -> dict[str, object]:
        return {"ipython_dir": "private", "user_ipython_dir": self.user_ipython_dir,
                "history_file": self.history_file or None, "not_read": self.not_read}


def _user_ipython_dir() -> str:
    """The IPython folder a plain kernel would use (``IPYTHONDIR`` or ``~/.ipython``)."""
    configured = os.environ.get("IPYTHONDIR") or os.environ.get("IPYTHON_DIR")
    return os.path.abspath(os.path.expanduser(configured or "~/.ipython"))


def _profile_code(profile: str) -> list[str]:
    """Config files and start-up scripts in a user's profile folder."""
    found = [os.path.join(profile, name) for name in _CONFIG_NAMES if os.path.isfile(os.path.join(profile, name))]
    startup = os.path.join(profile, "startup")
    try:
        found += sorted(os.path.join(startup, name) for name in os.listdir(startup)
                        if name.endswith((".py", ".ipy")))
    except OSError:
        pass
    return found


def private_ipython_dir(folders: StartFolders) -> None:
    """Point ``IPYTHONDIR`` at a new private folder, removed at exit.  Called before
    the audit hook exists: the launcher's own change, not one to record."""
    folders.user_ipython_dir = _user_ipython_dir()
    folders.ipython_dir = tempfile.mkdtemp(prefix="kernel-guard-ipython-")
    atexit.register(_remover(), folders.ipython_dir)
    try:
        folders.held = PrivateFolder.hold(folders.ipython_dir)  # no notebook code has run yet
    except OSError:
        folders.held = None  # the kernel still removes it at a clean exit
    os.environ["IPYTHONDIR"] = folders.ipython_dir
    os.environ.pop("IPYTHON_DIR", None)


#: unlinkat(2) flag: remove a folder, not a file
_AT_REMOVEDIR = 0x200
_AT_FDCWD = -100


def _remover() -> Callable[[str], None]:
    """``rm -r`` for the launcher's own private folder, bound now, before the audit
    hook exists.

    The folder holds IPython's profile, whose config and start-up names are
    persistence paths to the audit layer: removed with ``shutil.rmtree`` at exit,
    every file would be refused and recorded as ``persistence-denied`` (refusals
    no cell caused), and the folder left behind.  libc's ``unlinkat``, looked up
    here while nothing records, raises no audit event when called; a cell gains
    nothing by it (ctypes calls to libc raise none either: Landlock, not the
    audit layer, is what bounds a cell's writes).  The audit layer's checks are
    not loosened for any path.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    unlinkat = libc.unlinkat
    unlinkat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    unlinkat.restype = ctypes.c_int

    def remove(path: str) -> None:
        try:
            with os.scandir(path) as entries:
                for entry in list(entries):
                    if entry.is_dir(follow_symlinks=False):
                        remove(entry.path)
                    else:
                        unlinkat(_AT_FDCWD, os.fsencode(entry.path), 0)
        except OSError:
            pass
        unlinkat(_AT_FDCWD, os.fsencode(path), _AT_REMOVEDIR)

    return remove


def keep_history(folders: StartFolders) -> list[str]:
    """IPKernelApp arguments that keep the user's history file; records the user's
    profile code that is no longer read."""
    profile = os.path.join(folders.user_ipython_dir, "profile_default")
    folders.not_read += _profile_code(profile)
    startup = os.environ.get("PYTHONSTARTUP")
    if startup and os.path.isfile(startup):  # the launcher's kernel_argv turns it off
        folders.not_read.append(startup)
    try:
        os.makedirs(profile, exist_ok=True)  # where a plain kernel keeps its history too
    except OSError:
        return []
    folders.history_file = os.path.join(profile, "history.sqlite")
    _keep_store(profile, folders)
    return [f"--HistoryManager.hist_file={folders.history_file}"]


def _keep_store(user_profile: str, folders: StartFolders) -> None:
    """``%store`` keeps its values in the profile's ``db`` folder: the private profile's
    names the user's, so they outlive a restart.  Data, not start-up code: IPython loads
    them only when the user asks (``%store -r``; ``autorestore`` is a setting of the
    private profile, which a cell cannot write)."""
    if not folders.ipython_dir:
        return
    user_db = os.path.join(user_profile, "db")
    private_db = os.path.join(folders.ipython_dir, "profile_default", "db")
    try:
        os.makedirs(user_db, exist_ok=True)
        os.makedirs(os.path.dirname(private_db), exist_ok=True)
        if not os.path.lexists(private_db):
            os.symlink(user_db, private_db)
    except OSError:
        pass  # a read-only home: %store keeps its values for this kernel only, as before


def add_user_site(user_site: str, folders: StartFolders) -> None:
    """The user site on ``sys.path`` as :func:`site.addsitedir` would put it, with
    the folders its ``.pth`` files name, but none of their ``import`` lines run."""
    if user_site not in sys.path:
        sys.path.append(user_site)
    try:
        names = sorted(n for n in os.listdir(user_site) if n.endswith(".pth"))
    except OSError:
        return
    for name in names:
        path = os.path.join(user_site, name)
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(("import ", "import\t")):
                if path not in folders.not_read:
                    folders.not_read.append(path)
                continue
            entry = os.path.join(user_site, line)
            if os.path.isdir(entry) and entry not in sys.path:
                sys.path.append(entry)
