"""A killed launcher kernel leaves no private IPython folder: its supervisor removes it,
through descriptors taken before any notebook code ran, and nothing the folder's links
name (:mod:`kernel_guard.launch.leftovers`)."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
from launcher_support import NOTEBOOK_USER, LaunchedKernel, specs_on_path, unprivileged_root, wait_gone

from kernel_guard.launch import leftovers

# -- the removal, on folders shaped as a cell could shape them -------------------------


def _private(tmp_path: Path) -> Path:
    folder = tmp_path / "tmp" / "kernel-guard-ipython-abc"
    (folder / "profile_default" / "db").mkdir(parents=True)
    (folder / "profile_default" / "ipython_config.py").write_text("c = get_config()\n")
    return folder


def test_it_removes_the_folder_it_holds_and_only_links_inside_it(tmp_path: Path) -> None:
    """Links to a file and to a folder outside are removed as links; what they name stays."""
    folder = _private(tmp_path)
    held = leftovers.PrivateFolder.hold(str(folder))
    precious = tmp_path / "home" / "thesis"
    (precious / "chapters").mkdir(parents=True)
    (precious / "chapters" / "one.tex").write_text("one")
    (folder / "to-a-folder").symlink_to(precious)
    (folder / "profile_default" / "to-a-file").symlink_to(precious / "chapters" / "one.tex")
    (folder / "profile_default" / "db" / "deep" / "er").mkdir(parents=True)
    assert held.remove() == "removed"
    assert not folder.exists()
    assert (precious / "chapters" / "one.tex").read_text() == "one"


def test_a_folder_moved_away_or_replaced_is_left_alone(tmp_path: Path) -> None:
    """Under its name there is now something else, or nothing: neither is touched."""
    folder = _private(tmp_path)
    held = leftovers.PrivateFolder.hold(str(folder))
    moved = tmp_path / "home" / "results"
    moved.parent.mkdir()
    folder.rename(moved)
    assert held.remove() == "left: moved away by the kernel"
    assert (moved / "profile_default" / "ipython_config.py").exists()

    folder = _private(tmp_path)
    held = leftovers.PrivateFolder.hold(str(folder))
    folder.rename(tmp_path / "elsewhere")
    folder.mkdir()
    (folder / "keep").write_text("not the one it made")
    assert held.remove() == "left: replaced under its name by the kernel"
    assert (folder / "keep").exists() and (tmp_path / "elsewhere" / "profile_default").exists()


def test_a_name_swapped_for_a_link_is_left_alone(tmp_path: Path) -> None:
    """The folder's name now a link to another folder: that folder is not emptied."""
    folder = _private(tmp_path)
    held = leftovers.PrivateFolder.hold(str(folder))
    target = tmp_path / "home"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    folder.rename(tmp_path / "gone")
    folder.symlink_to(target)
    assert held.remove() == "left: replaced under its name by the kernel"
    assert (target / "notes.txt").read_text() == "mine" and folder.is_symlink()


def test_a_folder_the_kernel_removed_is_said_so(tmp_path: Path) -> None:
    folder = _private(tmp_path)
    held = leftovers.PrivateFolder.hold(str(folder))
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()
    assert held.remove() == "removed by the kernel"


def test_folders_deeper_than_the_limit_are_left_and_said(tmp_path: Path) -> None:
    folder = _private(tmp_path)
    held = leftovers.PrivateFolder.hold(str(folder))
    deep = folder
    for level in range(leftovers.MAX_DEPTH + 3):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    (folder / "profile_default" / "history.txt").write_text("x")
    assert held.remove() == f"left: folders deeper than {leftovers.MAX_DEPTH} levels"
    assert not (folder / "profile_default").exists()
    assert (folder / "d0").exists()


@pytest.mark.parametrize("value", ["", "3", "3,4", "3,4,", "a,4,name", "3,-4,name", "3,4,..", "3,4,.",
                                   "3,4,a/b", "3,4,/tmp", " 3,4,name"])
def test_a_malformed_option_is_refused_by_name(value: str) -> None:
    with pytest.raises(ValueError, match="--private-folder wants PARENT_FD,FOLDER_FD,NAME"):
        leftovers.parse(value)


def test_the_option_reads_back_as_written() -> None:
    read = leftovers.parse(leftovers.PrivateFolder(5, 6, "kernel-guard-ipython-x_1").option())
    assert (read.parent_fd, read.folder_fd, read.name) == (5, 6, "kernel-guard-ipython-x_1")


# -- a real launcher kernel, as the notebook user -------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with unprivileged_root() as folder:
        with specs_on_path(str(tmp_path_factory.mktemp("prefix")), ("guarded",)):
            yield folder


def _kernel(root: str, name: str) -> tuple[LaunchedKernel, str]:
    """A launcher kernel as uid 1000 whose temporary folder is its own (``tmp``)."""
    tmp = os.path.join(root, name, "tmp")
    os.makedirs(tmp)
    os.chown(tmp, *NOTEBOOK_USER)
    kernel = LaunchedKernel(os.path.join(root, name), "guarded", env={"TMPDIR": tmp}, user=NOTEBOOK_USER).start()
    private = kernel.value("__import__('os').environ['IPYTHONDIR']")
    assert os.path.dirname(private) == tmp and os.path.isdir(os.path.join(private, "profile_default"))
    return kernel, private


def _killed(kernel: LaunchedKernel) -> dict:
    """SIGKILL the kernel (no exit handler runs); the supervisor's last event."""
    pid, sup = kernel.pid, kernel.supervisor_pid()
    kernel.mark()
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([sup]) == []
    return kernel.wait_event(lambda e: e["event"]["action"] == "supervisor-stopped")


def test_a_killed_kernels_private_folder_is_removed_and_what_its_links_name_stays(root: str) -> None:
    """A cell plants links to the user's files and folders in the private folder (through libc:
    the audit layer refuses writes there); the kernel is killed; the supervisor removes the
    folder, and the files the links named are intact."""
    kernel, private = _kernel(root, "killed")
    try:
        result = kernel.execute(textwrap.dedent(f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            home = os.path.expanduser("~")
            os.makedirs(os.path.join(home, "project"), exist_ok=True)
            with open(os.path.join(home, "project", "data.csv"), "w") as fh:
                fh.write("a,b\\n1,2\\n")
            for target, name in ((os.path.join(home, "project"), "project-link"),
                                 (os.path.join(home, "project", "data.csv"), "profile_default/data-link")):
                assert libc.symlink(os.fsencode(target), os.fsencode({private!r} + "/" + name)) == 0
            for name in ("a", "a/b", "a/b/c"):
                assert libc.mkdir(os.fsencode({private!r} + "/profile_default/" + name), 0o700) == 0
            print("planted")
        """))
        assert "planted" in result.stdout, result.error_text
        stopped = _killed(kernel)
        assert stopped["kernel_guard"]["private_ipython_dir"] == "removed", stopped
        assert not os.path.lexists(private)
        with open(os.path.join(kernel.home, "project", "data.csv")) as fh:
            assert fh.read() == "a,b\n1,2\n"
    finally:
        kernel.shutdown()


def test_a_private_folder_moved_by_a_cell_is_left_where_it_was_put(root: str) -> None:
    """The folder under another name when the kernel is killed (moved through libc: the audit
    layer refuses to move a folder holding IPython's config): the supervisor leaves it, and says so."""
    kernel, private = _kernel(root, "moved")
    try:
        moved = os.path.join(os.path.dirname(private), "kept")
        result = kernel.execute(textwrap.dedent(f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.rename(os.fsencode({private!r}), os.fsencode({moved!r})) == 0, ctypes.get_errno()
            print("moved")
        """))
        assert "moved" in result.stdout, result.error_text
        stopped = _killed(kernel)
        assert stopped["kernel_guard"]["private_ipython_dir"] == "left: moved away by the kernel", stopped
        assert os.path.isdir(os.path.join(moved, "profile_default"))
    finally:
        kernel.shutdown()


def test_a_kernel_shut_down_cleanly_removes_its_own_folder(root: str) -> None:
    """The kernel's exit handler removes it; the supervisor finds it gone and says so."""
    kernel, private = _kernel(root, "clean")
    kernel.mark()
    kernel.shutdown()
    stopped = kernel.wait_event(lambda e: e["event"]["action"] == "supervisor-stopped", timeout=20)
    assert stopped["kernel_guard"]["private_ipython_dir"] == "removed by the kernel", stopped
    assert not os.path.lexists(private)
