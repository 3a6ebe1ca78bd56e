"""The guarded kernelspec starts isolated (``python -I``): nothing planted where the
interpreter looks at start runs before the guard, and what a plain kernel finds on
its path is there once the guard is up."""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Iterator

import pytest
from launcher_support import NOTEBOOK_USER, LaunchedKernel, install_spec, specs_on_path, unprivileged_root

from kernel_guard.launch.launcher import user_site_wanted

# site imports ``sitecustomize`` at interpreter start from anywhere on sys.path, which
# includes PYTHONPATH: planted there, it would run before the launcher's first line.
PLANTED = ("import os\nopen(os.path.join(os.path.dirname(__file__), 'ran-' + str(os.getpid())), 'w').write("
           "[l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0])\n")


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with unprivileged_root() as folder:
        yield folder


def test_the_kernelspec_runs_the_launcher_isolated(tmp_path) -> None:
    """install-kernelspec writes python -I -m kernel_guard.launch."""
    spec = install_spec(str(tmp_path), "isolated")
    assert spec["argv"][:4] == [sys.executable, "-I", "-m", "kernel_guard.launch"]


def test_nothing_planted_runs_before_the_guard_and_the_path_is_a_plain_kernels(root: str) -> None:
    """A sitecustomize on PYTHONPATH never runs at start; PYTHONPATH, the notebook folder and (where a plain
    interpreter uses it) the user site import once the guard is up."""
    planted = os.path.join(root, "pythonpath")
    os.makedirs(planted)
    with open(os.path.join(planted, "sitecustomize.py"), "w") as fh:
        fh.write(PLANTED)
    with open(os.path.join(planted, "frompath.py"), "w") as fh:
        fh.write("WHERE = 'PYTHONPATH'\n")
    os.chmod(planted, 0o777)
    kernel_root = os.path.join(root, "k")
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        kernel = LaunchedKernel(kernel_root, "guarded", env={"PYTHONPATH": planted}, user=NOTEBOOK_USER)
        scheme = sysconfig.get_preferred_scheme("user")
        user_site = sysconfig.get_path("purelib", scheme, vars={"userbase": os.path.join(kernel.home, ".local")})
        os.makedirs(user_site)
        with open(os.path.join(user_site, "userpkg.py"), "w") as fh:
            fh.write("WHERE = 'user site'\n")
        with open(os.path.join(kernel.work, "localmod.py"), "w") as fh:
            fh.write("WHERE = 'notebook folder'\n")
        kernel.start()
        try:
            found = kernel.value("[__import__(m).WHERE for m in ('frompath', 'localmod')]")
            assert found == ["PYTHONPATH", "notebook folder"]
            has_user_pkg = kernel.value("__import__('importlib.util').util.find_spec('userpkg') is not None")
            assert has_user_pkg is user_site_wanted()  # as in a plain kernel of this interpreter
            assert kernel.value("__import__('sys').flags.isolated") == 1
        finally:
            kernel.shutdown()
    ran = [name for name in os.listdir(planted) if name.startswith("ran-")]
    assert ran == [], f"sitecustomize ran at interpreter start: {ran}"
