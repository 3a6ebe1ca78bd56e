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


# A cell plants code where IPython looks at every start: a start-up script and exec_lines.
PLANT_IN_PROFILE = """
import os
profile = os.path.expanduser("~/.ipython/profile_default")
os.makedirs(os.path.join(profile, "startup"), exist_ok=True)
mark = "open(os.path.join(os.path.expanduser('~'), 'ran-{}'), 'w').close()"
with open(os.path.join(profile, "startup", "00-planted.py"), "w") as fh:
    fh.write("import os\\n" + mark.format("startup") + "\\n")
with open(os.path.join(profile, "ipython_kernel_config.py"), "w") as fh:
    fh.write("c.InteractiveShellApp.exec_lines = [" + repr("import os; " + mark.format("exec_lines")) + "]\\n")
history_token = 'remembered-across-kernels'
print(get_ipython().history_manager.hist_file)
"""


def test_code_planted_in_the_ipython_folder_never_runs_at_a_later_start(root: str) -> None:
    """A start-up script and exec_lines a cell wrote into ~/.ipython do not run in the next kernel,
    which says so (stderr, kernel-started); the history is kept, and shared config in /etc/ipython
    is the documented route."""
    kernel_root = os.path.join(root, "planted")
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        # the audit hook only records: the in-process persistence check would refuse the plant
        audit_only = {"KERNEL_GUARD_MODE": "audit"}
        first = LaunchedKernel(kernel_root, "guarded", env=audit_only, user=NOTEBOOK_USER).start()
        try:
            result = first.execute(PLANT_IN_PROFILE)
            assert result.status == "ok", result.error_text
            first_history = result.stdout.strip()
        finally:
            first.shutdown()
        second = LaunchedKernel(kernel_root, "guarded", env=audit_only, user=NOTEBOOK_USER)
        second.mark()
        second.start()
        try:
            assert second.execute("1 + 1").status == "ok"
            ipython_dir = second.value("__import__('IPython').paths.get_ipython_dir()")
            history = second.value("get_ipython().history_manager.hist_file")
            found = second.value("[c for _, _, c in get_ipython().history_manager.search('*remembered-across*')]")
        finally:
            second.shutdown()
        started = [e for e in second.events() if e["event"]["action"] == "kernel-started"][-1]
    assert sorted(n for n in os.listdir(second.home) if n.startswith("ran-")) == []
    assert not ipython_dir.startswith(second.home), ipython_dir
    assert str(history) == os.path.join(second.home, ".ipython", "profile_default", "history.sqlite")
    assert any("remembered-across-kernels" in cell for cell in found), found
    not_read = started["kernel_guard"]["start_folders"]["not_read"]
    assert any(p.endswith("startup/00-planted.py") for p in not_read), not_read
    assert any(p.endswith("ipython_kernel_config.py") for p in not_read), not_read
    assert "does not run code from folders it can write" in second.stderr()
    assert first_history.startswith(os.path.join(second.home, ".ipython")), first_history


def test_the_user_site_pth_files_add_folders_but_run_no_code(tmp_path, monkeypatch) -> None:
    """A .pth line that names a folder is honoured; one that imports (code at every start) is not run."""
    from kernel_guard.launch.start_folders import StartFolders, add_user_site

    site_dir = tmp_path / "site"
    (site_dir / "extra").mkdir(parents=True)
    ran = tmp_path / "ran"
    (site_dir / "a.pth").write_text(f"extra\nimport os; open({str(ran)!r}, 'w').close()\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    folders = StartFolders()
    add_user_site(str(site_dir), folders)
    assert str(site_dir) in sys.path and str(site_dir / "extra") in sys.path
    assert not ran.exists()
    assert folders.not_read == [str(site_dir / "a.pth")]


def test_a_clean_stop_refuses_nothing_and_removes_the_private_ipython_folder(root: str) -> None:
    """An enforcing kernel that ran one cell and stopped cleanly records no refusal (the launcher's
    removal of its own IPython folder is not a cell's), and that folder is gone; a cell that removes
    the same folder's profile is still refused."""
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)):
        kernel = LaunchedKernel(os.path.join(root, "clean-stop"), "guarded", user=NOTEBOOK_USER)
        kernel.mark()
        kernel.start()
        try:
            ipython_dir = kernel.value("__import__('IPython').paths.get_ipython_dir()")
            assert os.path.isdir(os.path.join(ipython_dir, "profile_default")), ipython_dir
            attempt = kernel.execute(f"import shutil; shutil.rmtree({ipython_dir!r})")
            assert attempt.status == "error" and "PersistenceRefused" in attempt.error_text, attempt.error_text
            kernel.mark()
        finally:
            kernel.shutdown()
        events = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "kernel-stopped" for e in evs),
                                   timeout=15)
    stopped = [e for e in events if e["event"]["action"] == "kernel-stopped"]
    assert stopped, [e["event"]["action"] for e in events]
    refused = [e["event"]["reason"] for e in events if e["event"]["action"] == "persistence-denied"]
    assert refused == [], refused
    assert not os.path.exists(ipython_dir), os.listdir(ipython_dir)
