"""The native filter's own decisions, in fresh interpreters (a runtime hook cannot be removed):
an ordinary write, removal, rename or mode change passes without calling the policy, and
everything the policy would judge otherwise (a persistence name, a folder holding one, a link
anywhere in the path, an odd spelling) still reaches it, with or without openat2; a record-only
filter falls quiet once an enforcing one follows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kernel_guard.audit import _filter  # noqa: F401 - built by the README's set-up: its absence fails

#: a seccomp filter that makes openat2 fail as the launcher's does (ENOSYS)
WITHOUT_OPENAT2 = """
from kernel_guard.launch import seccomp_filter
sc = seccomp_filter.bindings()
seccomp_filter.set_no_new_privs()
flt = sc.SyscallFilter(sc.ALLOW)
flt.add_rule(sc.ERRNO(38), "openat2")
flt.load()
"""

#: a tree with a protected folder, a protected file, a profile folder for the glob, and
#: links into them; then a counting callback behind the filter
SETUP = """
import json, os, re, sys
from kernel_guard.audit import _filter
root = os.path.realpath(sys.argv[1])
protected = os.path.join(root, "protected") + "/"
startup = os.path.join(root, "ipython", "profile_default", "startup")
for folder in (protected, startup, os.path.join(root, "work", "sub")):
    os.makedirs(folder, exist_ok=True)
os.symlink(protected, os.path.join(root, "work", "to-protected"))
os.symlink(startup, os.path.join(root, "work", "sub", "to-startup"))
os.symlink(os.path.join(startup, "late.py"), os.path.join(root, "work", "dangling.txt"))
open(os.path.join(root, "work", "existing.txt"), "w").close()
os.symlink(os.path.join(root, "work", "existing.txt"), os.path.join(root, "work", "to-existing.txt"))
os.symlink(os.path.join(root, "work", "sub"), os.path.join(root, "work", "to-sub"))
pattern = re.compile(re.escape(root) + r"/ipython/[^/]*/startup/[^/]*\\Z")
called = []
_filter.add_hook(["open"], lambda event, args: called.append(args[0]),
                 ((protected,), pattern, frozenset({os.path.join(root, "work", ".bashrc")})))
os.chdir(os.path.join(root, "work"))
"""

#: path as the cell writes it -> whether the policy must see the write
CASES = {
    "{root}/work/new.txt": False, "new.txt": False, "sub/new.txt": False, "existing.txt": False,
    "{root}/work/missing/new.txt": False, "{root}/work/existing.txt": False,
    # the kernel's walk stops at a file: nothing after it is resolved, and the open fails
    "existing.txt/x": False, "{root}/work/existing.txt/x/y": False,
    "{root}/protected/x.py": True, "to-protected/x.py": True, "{root}/work/to-protected/x.py": True,
    "sub/to-startup/x.py": True, "dangling.txt": True, ".bashrc": True, "evil.pth": True,
    "sitecustomize.py": True, "{root}/ipython/profile_default/startup/s.py": True,
    "{root}/work//new2.txt": True, "./new3.txt": True, "sub/../new4.txt": True,
    # a link as the last component, to a file or a folder, and one after a plain folder
    "to-existing.txt": True, "{root}/work/to-existing.txt": True, "{root}/work/to-sub/new.txt": True,
    "sub/to-startup": True,
    "/proc/self/environ": True,
}

CHECK = """
results = {}
for path in json.loads(sys.argv[2]):
    target = path.replace("{root}", root)
    before = len(called)
    try:
        open(target, "w").close()
    except OSError:
        pass
    results[path] = len(called) > before
fd_before = len(called)
os.close(os.open(os.path.join(root, "work", "low.txt"), os.O_WRONLY | os.O_CREAT, 0o600))
results["os.open absolute"] = len(called) > fd_before
fd_before = len(called)
os.close(os.open("low2.txt", os.O_WRONLY | os.O_CREAT, 0o600))
results["os.open relative"] = len(called) > fd_before
reads = len(called)
open(os.path.join(root, "work", "existing.txt")).close()
results["read"] = len(called) > reads
print(json.dumps(results))
"""


def _run(code: str, tmp_path: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path), *args],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "KERNEL_GUARD_SINKS": ""})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "lstat-walk"])
def test_ordinary_writes_pass_in_c_and_the_rest_reaches_the_policy(tmp_path: Path, openat2: bool) -> None:
    """New and existing files in plain folders pass without a call; persistence names, a link in
    any component (the dangling last one too), odd spellings and os.open's relative paths reach
    the policy, whether the kernel answers with openat2 or the filter walks with lstat."""
    code = ("" if openat2 else WITHOUT_OPENAT2) + SETUP + CHECK
    results = json.loads(_run(code, tmp_path, json.dumps(list(CASES))))
    expected = {**CASES, "os.open absolute": False, "os.open relative": True, "read": False}
    assert results == expected


# the same attempts, judged by the native filter in front of the policy and by the
# Python hook alone: every one ends the same way
#: a home with an IPython folder, links into it from the working folder, and the audit
#: layer about to be installed: with its native filter, or (argv[2] "python") without
HOME_SETUP = """
import os, sys
root = os.path.realpath(sys.argv[1])
home = os.path.join(root, "home")
startup = os.path.join(home, ".ipython", "profile_default", "startup")
os.makedirs(startup)
for folder in ("work/sub", ".ipython/cache", ".local"):
    os.makedirs(os.path.join(home, folder))
os.environ["HOME"] = home
os.environ["IPYTHONDIR"] = os.path.join(home, ".ipython")
os.chdir(os.path.join(home, "work"))
os.symlink(startup, "into-startup")
os.symlink(os.path.join(home, ".ipython"), "into-ipython")
import kernel_guard.audit.hook as a
if sys.argv[2] == "python":
    a._audit_filter = None
"""

EQUIVALENCE = HOME_SETUP + """
a.install("enforce")
for path in ("data.csv", "into-startup/x.py", "into-ipython/profile_default/ipython_config.py",
             "into-ipython/cache/numba.nbi", "../.bashrc", os.path.join(home, "work", "plain.txt"),
             "./into-startup/y.py", "into-startup/../ok.txt", os.path.join(home, ".local", "x.pth")):
    try:
        open(path, "w").close()
        print(a.filter_kind() == sys.argv[2], path.replace(root, "ROOT"), "written")
    except OSError as exc:
        print(a.filter_kind() == sys.argv[2], path.replace(root, "ROOT"), type(exc).__name__)
"""


def test_the_native_filter_and_the_python_hook_decide_alike(tmp_path: Path) -> None:
    """Writes through links into the IPython folder, odd spellings and plain files: the filter in
    front of the policy refuses and allows exactly what the Python hook alone does."""
    native = _run(EQUIVALENCE, tmp_path / "n", "native").splitlines()
    python = _run(EQUIVALENCE, tmp_path / "p", "python").splitlines()
    assert native == python
    assert all(line.startswith("True ") for line in native)
    assert sum(line.endswith("PersistenceRefused") for line in native) == 5, native


QUIET = """
import os, sys
from kernel_guard.audit import _filter
seen = {"record": [], "enforce": []}
names = ["open", "object.__setattr__"]
_filter.add_hook(names, lambda e, a: seen["record"].append(e), None, ["object.__setattr__"])
open(os.path.join(sys.argv[1], "a.txt"), "w").close()
_filter.add_hook(names, lambda e, a: seen["enforce"].append(e))
open(os.path.join(sys.argv[1], "b.txt"), "w").close()
def victim(): pass
victim.__defaults__ = ()  # raises object.__setattr__
print(seen["record"], seen["enforce"])
"""


def test_a_record_only_filter_keeps_only_its_names_once_an_enforcing_one_follows(tmp_path: Path) -> None:
    """Before the enforcing filter the record-only one sees writes; after it, only the
    self-protection event it keeps, while the enforcing one sees both."""
    out = _run(QUIET, tmp_path).strip()
    assert out == "['open', 'object.__setattr__'] ['open', 'object.__setattr__']", out


#: every name the hook takes, then events that share its first bytes or its bucket
NAMES_CHECK = """
import json, sys
from kernel_guard.audit import _filter
from kernel_guard.audit.hook import INTERESTING_EVENTS
names = sorted(INTERESTING_EVENTS) + ["a", "ab", "x.y.z.w"]
seen = []
_filter.add_hook(names, lambda event, args: seen.append(event))
near = ["os.", "os.k", "os.kil", "os.killp", "os.killpgx", "object.__getattr__", "objec", "o", "",
        "ope", "openx", "sys._getframe", "sys.addaudithoo", "ctypes.dlsym/", "abc", "b", "x.y.z"]
for event in names + near:
    sys.audit(event)
print(json.dumps([seen, names]))
"""


def test_the_filter_passes_exactly_its_names_whatever_they_share() -> None:
    """Names that start alike (twenty start "os." or "o") and events one letter off
    them: each name reaches the callback once, nothing else does."""
    seen, names = json.loads(_run(NAMES_CHECK, Path(".")))
    assert seen == names


#: two filters over one tree: one given only the persistence data (every write-open takes
#: the whole comparison), one also given what every persistence path starts with; then
#: write-opens of generated paths, each answered by the filters that did not call
STARTS_CHECK = """
import json, os, random, re, sys
from kernel_guard.audit import _filter
from kernel_guard.audit.persistence import glob_pattern, persistence_starts
root = os.path.realpath(sys.argv[1])
os.chdir(root)
dirs = (root + "/env/", root + "/env/lib/site/", root + "/cfg/\\u00e9t\\u00e9/", root + "/cfg-kernels/")
globs = (root + "/ipy/*/startup/*", root + "/ipy/*_config.py", root + "/ipy/extensions/*", root + "/i?y/x")
files = frozenset({root + "/.bashrc", root + "/\\udcff.profile"})
pattern = glob_pattern(globs)
calls = {"whole": [], "starts": []}
_filter.add_hook(["open"], lambda e, a: calls["whole"].append(a[0]), (dirs, pattern, files))
_filter.add_hook(["open"], lambda e, a: calls["starts"].append(a[0]),
                 (dirs, pattern, files, persistence_starts(dirs, globs, files)))
parts = ["env", "env-x", "en", "lib", "site", "site-x", "cfg", "\\u00e9t\\u00e9", "\\u00e9t", "\\udcff", "cfg-kernels",
         "cfg-kernel", "ipy", "ipyx", "iby", "profile_default", "startup", "startupx", "extensions", "x", "a.txt",
         "ipython_config.py", "evil.pth", "evil.pthx", "sitecustomize.py", "usercustomize", ".bashrc", ".bashrc.bak",
         ".profile", "\\udcff.profile", "\\u4e2d\\u6587.csv"]
rng = random.Random(int(sys.argv[2]))
paths = set()
while len(paths) < 1500:
    rel = "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
    paths.add(rel if rng.random() < 0.3 else root + "/" + rel)
for path in paths:  # the folders first, so that no file stands where a folder is meant
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
differ = []
for path in sorted(paths):
    before = {k: len(v) for k, v in calls.items()}
    try:
        open(path, "w").close()
    except OSError:
        pass
    after = {k: len(v) for k, v in calls.items()}
    if after["whole"] - before["whole"] != after["starts"] - before["starts"]:
        differ.append(path)
print(json.dumps({"differ": differ, "whole": len(calls["whole"]), "starts": len(calls["starts"]),
                  "tried": len(paths)}))
"""


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "lstat-walk"])
@pytest.mark.parametrize("seed", [1, 2])
def test_what_persistence_paths_start_with_spares_only_writes_the_policy_allows(
        tmp_path: Path, openat2: bool, seed: int) -> None:
    """1,500 generated write-opens (nested protected folders, names one letter off a folder,
    a glob's wildcard, a protected file or a persistence name, text beyond ASCII and bytes
    that are not UTF-8): the filter that searches what every persistence path starts with
    calls the policy for exactly the writes the whole comparison sends it."""
    code = ("" if openat2 else WITHOUT_OPENAT2) + STARTS_CHECK
    result = json.loads(_run(code, tmp_path, str(seed)))
    assert result["differ"] == []
    # both kinds were tried: writes that reach the policy, and writes that pass in C
    assert 100 < result["whole"] < result["tried"] - 100, result


def test_persistence_starts_are_folders_files_and_each_glob_before_its_first_wildcard() -> None:
    from kernel_guard.audit.persistence import persistence_starts

    starts = persistence_starts(("/env/",), ("/h/.ipython/*/startup/*", "/h/.i?ython/x", "/h/ipython_config.py"),
                                ("/h/.bashrc",))
    assert starts == ("/env/", "/h/.bashrc", "/h/.i", "/h/.ipython/", "/h/ipython_config.py")


BAD_STARTS = """
import re
from kernel_guard.audit import _filter
for starts in ((1,), ("a\\x00b",), ("\\ud800",), ["/x/"]):
    try:
        _filter.add_hook(["open"], print, ((), re.compile("x"), frozenset(), starts))
    except (TypeError, UnicodeError) as exc:
        print(type(exc).__name__)
"""


def test_starts_that_are_not_file_system_text_are_refused_when_the_hook_is_added() -> None:
    """A start that is not str, holds a NUL, cannot be encoded, or a list: the hook is not added."""
    out = _run(BAD_STARTS, Path(".")).split()
    assert out == ["TypeError", "TypeError", "UnicodeEncodeError", "TypeError"], out


# removals, renames, links, copies and mode changes over a home with an IPython folder,
# a shell start-up file and links into both, relative to the working folder or to a
# folder descriptor: the same generated operations, judged by the native filter in front
# of the policy and by the Python hook alone
CHANGES = HOME_SETUP + """
import json, random, shutil
judged = []
for name in ("_check_change", "_check_move"):  # counted: how often the policy was asked
    def counting(*args, _real=getattr(a, name)):
        judged.append(args[0])
        return _real(*args)
    setattr(a, name, counting)
a.install("enforce")
folders = {"work": os.open(".", os.O_RDONLY), "ipython": os.open(os.path.join(home, ".ipython"), os.O_RDONLY),
           "home": os.open(home, os.O_RDONLY), "startup": os.open(startup, os.O_RDONLY)}
places = ["data.csv", "sub/a.txt", "sub", "new", "sub/new", "new/n.txt", "results", "results/r.csv",
          home + "/work/sub/a.txt", "into-startup/x.py", "into-startup",
          "into-ipython/profile_default", "into-ipython/cache/c.bin", "../.bashrc", "../.profile.bak",
          "../.ipython", "../.ipython/cache", "../.ipython/cache/c.bin", "../.ipython/ipython_config.py",
          "x.pth", "./data.csv", "sub/../b.txt", "sub//a.txt", home + "/work/data.csv", home, startup + "/y.py",
          "caf\\u00e9.txt", "\\udcff.bin", home + "/.ipython", home + "/.ipython/profile_default", ".ipython",
          "profile_default", "profile_default/startup", ".bashrc", "startup"]
rng = random.Random(int(sys.argv[3]))
def place():
    at = rng.choice([None, None, *folders])
    return rng.choice(places), (folders[at] if at else None)
def act(kind, path, fd, other, other_fd):
    kw = {} if fd is None else {"dir_fd": fd}
    if kind == "stock" and fd is None:
        open(path, "w").close()
    elif kind == "stock":
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    elif kind == "remove":
        os.remove(path, **kw)
    elif kind == "rmdir":
        os.rmdir(path, **kw)
    elif kind == "mkdir":
        os.mkdir(path, **kw)
    elif kind == "chmod":
        os.chmod(path, 0o644, **kw)
    elif kind == "utime":
        os.utime(path, **kw)
    elif kind == "truncate":
        os.truncate(path, 0)
    elif kind == "rename":
        os.rename(path, other, src_dir_fd=fd, dst_dir_fd=other_fd)
    elif kind == "link":
        os.link(path, other, src_dir_fd=fd, dst_dir_fd=other_fd)
    elif kind == "copy":
        shutil.copyfile(path, other)
out = []
for step in range(int(sys.argv[4])):
    kind = rng.choice(["stock", "stock", "remove", "rmdir", "mkdir", "chmod", "utime", "truncate", "rename",
                       "link", "copy"])
    (path, fd), (other, other_fd) = place(), place()
    try:
        act(kind, path, fd, other, other_fd)
        outcome = "done"
    except OSError as exc:
        outcome = type(exc).__name__ + (f" {exc.errno}" if type(exc) is OSError else "")
    out.append([kind, path.replace(root, "ROOT"), other.replace(root, "ROOT"), outcome])
print(json.dumps({"steps": out, "judged": len(judged), "kind": a.filter_kind()}))
"""


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "lstat-walk"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_removals_renames_and_mode_changes_end_alike_in_c_and_in_python(
        tmp_path: Path, openat2: bool, seed: int) -> None:
    """1,500 generated removals, renames, links, copies and mode changes (through links into
    the IPython folder, of the folders that hold start-up files, of the shell's start-up file,
    odd spellings, relative to folder descriptors): the native filter, which settles the
    ordinary ones in C, refuses and allows exactly what the Python hook alone does, and asks
    the policy about far fewer of them."""
    setup = "" if openat2 else WITHOUT_OPENAT2
    native = json.loads(_run(setup + CHANGES, tmp_path / "n", "native", str(seed), "1500"))
    python = json.loads(_run(setup + CHANGES, tmp_path / "p", "python", str(seed), "1500"))
    assert (native["kind"], python["kind"]) == ("native", "python")
    assert native["steps"] == python["steps"]
    outcomes = {step[3] for step in native["steps"]}
    assert {"done", "PersistenceRefused"} <= outcomes, outcomes  # both kinds of ending were tried
    refused = sum(step[3] == "PersistenceRefused" for step in native["steps"])
    # the policy still judged every refusal, and was spared most of what it lets pass
    # (what stays: links, "..", "//", the home folder that holds start-up files)
    assert refused <= native["judged"], (refused, native["judged"])
    assert native["judged"] - refused < (python["judged"] - refused) / 2, (refused, native["judged"], python["judged"])


BAD_ENDS = """
import re
from kernel_guard.audit import _filter
writes = ((), re.compile("x"), frozenset(), ("/x/",))
for ends, given in ((["os.remove"], writes), ({"os.remove": ((0, 1),)}, None),
                    ({"os.remove": ((0, 1),)}, writes[:3]), ({"os.remove": ()}, writes),
                    ({"os.remove": ((0, 1), (1, 2), (2, 3))}, writes), ({"os.remove": ((16, 1),)}, writes),
                    ({"os.remove": ((0, -2),)}, writes), ({"os.remove": (("0", 1),)}, writes),
                    ({"os.remove": [(0, 1)]}, writes)):
    try:
        _filter.add_hook(["os.remove"], print, given, None, ends)
        print("added")
    except (TypeError, ValueError) as exc:
        print(type(exc).__name__)
"""


def test_ends_that_do_not_name_argument_pairs_are_refused_when_the_hook_is_added() -> None:
    """Not a dict, no persistence data or starts to judge by, no pair, three pairs, an index
    out of range, not an int, a list: the hook is not added, and says which setting is wrong."""
    out = _run(BAD_ENDS, Path(".")).split()
    assert out == ["TypeError", "ValueError", "ValueError", "ValueError", "ValueError", "ValueError",
                   "ValueError", "ValueError", "ValueError"], out


#: the link test alone, over a tree with links at each place a walk can meet one
LINK_TEST = """
import json, os, sys
from kernel_guard.audit import _filter
root = os.path.realpath(sys.argv[1])
os.makedirs(os.path.join(root, "d", "sub"))
open(os.path.join(root, "d", "f"), "w").close()
os.symlink(os.path.join(root, "d", "f"), os.path.join(root, "d", "to-f"))
os.symlink(os.path.join(root, "d"), os.path.join(root, "to-d"))
os.symlink(os.path.join(root, "none"), os.path.join(root, "dangling"))
os.chdir(root)
paths = ["d/f", "d/sub", "d/missing", "d/missing/x", "d/f/x", "d/f/x/y", "{root}/d/f", "f-here",
         "d/to-f", "to-d/f", "to-d", "dangling", "{root}/to-d/sub/x", "d/to-f/x"]
results = {p: _filter.no_links(p.replace("{root}", root)) for p in paths}
errors = []
for bad in ("", "a\\x00b", b"d/f", None):
    try:
        _filter.no_links(bad)
    except (TypeError, ValueError) as exc:
        errors.append(type(exc).__name__)
print(json.dumps([results, errors]))
"""


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "lstat-walk"])
def test_the_link_test_alone_fails_on_a_link_anywhere_and_nowhere_else(tmp_path: Path, openat2: bool) -> None:
    """A link as the last component (to a file, a folder, nothing) or before it fails the test;
    files, folders, missing parts and walks that stop at a file pass it, with openat2 and without;
    a path that is not text, empty or holding a NUL is refused."""
    code = ("" if openat2 else WITHOUT_OPENAT2) + LINK_TEST
    results, errors = json.loads(_run(code, tmp_path))
    plain = {"d/f", "d/sub", "d/missing", "d/missing/x", "d/f/x", "d/f/x/y", "{root}/d/f", "f-here"}
    assert results == {p: p in plain for p in results}
    assert errors == ["ValueError", "ValueError", "TypeError", "TypeError"]
