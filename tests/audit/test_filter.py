"""The native filter's own decisions, in fresh interpreters (a runtime hook cannot be removed):
an ordinary write passes without calling the policy, and everything the policy would judge
otherwise (a persistence name, a link anywhere in the path, an odd spelling) still reaches it,
with or without openat2; a record-only filter falls quiet once an enforcing one follows."""

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
pattern = re.compile(re.escape(root) + r"/ipython/[^/]*/startup/[^/]*\\Z")
called = []
_filter.add_hook(["open"], lambda event, args: called.append(args[0]),
                 ((protected,), pattern, frozenset({os.path.join(root, "work", ".bashrc")})))
os.chdir(os.path.join(root, "work"))
"""

#: path as the cell writes it -> whether the policy must see the write
CASES = {
    "{root}/work/new.txt": False, "new.txt": False, "sub/new.txt": False, "existing.txt": False,
    "{root}/work/missing/new.txt": False,
    "{root}/protected/x.py": True, "to-protected/x.py": True, "{root}/work/to-protected/x.py": True,
    "sub/to-startup/x.py": True, "dangling.txt": True, ".bashrc": True, "evil.pth": True,
    "sitecustomize.py": True, "{root}/ipython/profile_default/startup/s.py": True,
    "{root}/work//new2.txt": True, "./new3.txt": True, "sub/../new4.txt": True, "existing.txt/x": True,
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
EQUIVALENCE = """
import os, sys
root = os.path.realpath(sys.argv[1])
home = os.path.join(root, "home")
startup = os.path.join(home, ".ipython", "profile_default", "startup")
os.makedirs(startup, exist_ok=True)
for folder in ("work", ".ipython/cache", ".local"):
    os.makedirs(os.path.join(home, folder), exist_ok=True)
os.environ["HOME"] = home
os.environ["IPYTHONDIR"] = os.path.join(home, ".ipython")
os.chdir(os.path.join(home, "work"))
os.symlink(startup, "into-startup")
os.symlink(os.path.join(home, ".ipython"), "into-ipython")
import kernel_guard.audit.hook as a
if sys.argv[2] == "python":
    a._audit_filter = None
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
