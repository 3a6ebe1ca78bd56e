"""Paths relative to a directory fd, ``..`` after a link, and links to /proc secrets, in a real
kernel run as the notebook user (uid 1000): each attempt fails and the sink records the refusal."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from conftest import GuardedKernel, assert_short_refusal
from launcher_support import NOTEBOOK_USER, unprivileged_root

# folders as descriptors, then a working folder that explains nothing: only dir_fd leads
# there; the descriptors are closed again (held open, they would colour later cells' checks)
OPEN_FOLDERS = (
    "import os\nhome = os.path.expanduser('~')\nwork = os.getcwd()\n"
    "startup = os.path.join(home, '.ipython', 'profile_default', 'startup')\n"
    "home_fd = os.open(home, os.O_RDONLY)\nwork_fd = os.open(work, os.O_RDONLY)\n"
    "startup_fd = os.open(startup, os.O_RDONLY)\n"
    "profile_fd = os.open(os.path.dirname(startup), os.O_RDONLY)\n"
    "open('x.py', 'w').write('import os')\nos.chdir('/')\n"
    "try:\n    {code}\nfinally:\n    os.chdir(work)\n"
    "    for fd in (home_fd, work_fd, startup_fd, profile_fd):\n        os.close(fd)\n"
)

DIR_FD_ROUTES = [
    ("os.rename", "os.rename('x.py', 'x.py', src_dir_fd=work_fd, dst_dir_fd=startup_fd)"),
    ("os.replace", "os.replace('x.py', 'r.py', src_dir_fd=work_fd, dst_dir_fd=startup_fd)"),
    ("os.link", "os.link('x.py', 'l.py', src_dir_fd=work_fd, dst_dir_fd=startup_fd)"),
    ("os.symlink", "os.symlink(os.path.join(work, 'x.py'), 's.py', dir_fd=startup_fd)"),
    ("os.mkdir", "os.mkdir('sub', dir_fd=startup_fd)"),
    ("os.open", "os.close(os.open('o.py', os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=startup_fd))"),
    ("os.chmod", "os.chmod('.bashrc', 0, dir_fd=home_fd)"),
    ("os.utime", "os.utime('.bashrc', (0, 0), dir_fd=home_fd)"),
    ("os.remove", "os.remove('.bashrc', dir_fd=home_fd)"),
    ("os.unlink", "os.unlink('.bashrc', dir_fd=home_fd)"),
    ("os.rmdir", "os.rmdir('startup', dir_fd=profile_fd)"),
]


@pytest.fixture(scope="module")
def kernel() -> Iterator[GuardedKernel]:
    """An enforcing extension-only kernel as uid 1000, with a ~/.bashrc of its own."""
    with unprivileged_root() as root:
        started = GuardedKernel(os.path.join(root, "k"), user=NOTEBOOK_USER).start()
        bashrc = os.path.join(started.home, ".bashrc")
        with open(bashrc, "w") as fh:
            fh.write("# the user's shell start-up\n")
        os.chown(bashrc, *NOTEBOOK_USER)
        os.chmod(bashrc, 0o644)
        yield started
        started.shutdown()


def _planted(startup: str) -> list[str]:
    """What the start-up folder holds besides IPython's own README."""
    return [name for name in os.listdir(startup) if name != "README"]


@pytest.mark.parametrize("name,code", DIR_FD_ROUTES, ids=[n for n, _ in DIR_FD_ROUTES])
def test_paths_relative_to_a_folder_descriptor_are_judged_where_they_land(kernel, name, code):
    """A start-up folder or ~/.bashrc reached through dir_fd (the working folder elsewhere) is refused and
    recorded with the resolved path; the folder and the file are unchanged."""
    bashrc = os.path.join(kernel.home, ".bashrc")
    before = os.stat(bashrc)
    kernel.mark()
    result = kernel.execute(OPEN_FOLDERS.format(code=code))
    assert_short_refusal(result)
    event = kernel.failures("audit")[0]
    assert event["event"]["action"] == "persistence-denied", event
    assert event["file"]["path"].startswith(kernel.home), event
    startup = os.path.join(kernel.home, ".ipython", "profile_default", "startup")
    assert os.path.isdir(startup) and _planted(startup) == []
    after = os.stat(bashrc)
    assert (after.st_mode, after.st_mtime_ns, after.st_ino) == (before.st_mode, before.st_mtime_ns, before.st_ino)


def test_a_descriptor_that_names_no_folder_is_refused(kernel):
    """dir_fd of a closed descriptor cannot be judged: refused (fail closed) and recorded.
    (A number no thread holds: one just closed may be reused at once by the kernel's threads.)"""
    kernel.mark()
    result = kernel.execute("import os\nfd = 999\nassert not os.path.exists(f'/proc/self/fd/{fd}')\n"
                            "os.mkdir('sub', dir_fd=fd)")
    assert_short_refusal(result, "names no folder")
    assert kernel.failures("audit")[0]["event"]["action"] == "persistence-denied"


def test_ordinary_work_through_folder_descriptors_is_allowed(kernel):
    """dir_fd operations in the working folder keep working (shutil.rmtree uses them)."""
    result = kernel.execute(
        "import os, shutil\nfd = os.open('.', os.O_RDONLY)\nos.mkdir('tree', dir_fd=fd)\n"
        "os.close(os.open('tree/f.txt', os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))\n"
        "os.rename('tree/f.txt', 'tree/g.txt', src_dir_fd=fd, dst_dir_fd=fd)\nshutil.rmtree('tree')\n"
        "print(os.path.exists('tree'), os.getuid())")
    assert result.stdout.split() == ["False", str(NOTEBOOK_USER[0])], result.error_text


@pytest.mark.parametrize("name", ["environ", "mem"])
def test_proc_secrets_relative_to_a_proc_folder_descriptor_are_refused(kernel, name):
    """os.open(name, dir_fd=<fd of /proc/<pid>>) (its event has no dir_fd) is refused and recorded."""
    kernel.mark()
    result = kernel.execute(f"import os\npfd = os.open('/proc/self', os.O_RDONLY)\n"
                            f"os.read(os.open({name!r}, os.O_RDONLY, dir_fd=pfd), 64)")
    assert_short_refusal(result)
    assert kernel.failures("audit")[0]["event"]["action"] == "credential-denied"


def test_dot_dot_after_a_link_is_resolved_as_the_kernel_does(kernel):
    """``link/../startup/x.py`` with link -> startup/ lands in startup/, not beside the link: refused."""
    startup = os.path.join(kernel.home, ".ipython", "profile_default", "startup")
    kernel.mark()
    result = kernel.execute(f"import os\nos.symlink({startup!r}, 'up')\nopen('up/../startup/late.py', 'w').write('1')")
    kernel.execute("import os\nos.unlink('up')")
    assert_short_refusal(result)
    assert kernel.failures("audit")[0]["event"]["action"] == "persistence-denied"
    assert _planted(startup) == []


@pytest.mark.parametrize("target,link", [
    ("f'/proc/{os.getpid()}/environ'", "'innocent.txt'"),
    ("f'/proc/{os.getpid()}/task/{os.getpid()}/mem'", "'data.bin'"),
    ("f'../../../../../../../../proc/{os.getpid()}/environ'", "'relative.txt'"),
])
def test_a_link_to_a_process_environment_or_memory_is_refused(kernel, target, link):
    """A symlink named innocently that points at /proc/<pid>/environ or mem is refused when it is made,
    so it cannot be opened; the refusal is recorded with the target."""
    kernel.mark()
    result = kernel.execute(f"import os\nos.symlink({target}, {link})\nprint(open({link}, 'rb').read(64))")
    assert_short_refusal(result)
    event = kernel.failures("audit")[0]
    assert event["event"]["action"] == "credential-denied"
    assert event["file"]["target_path"].startswith("/proc/") or "/proc/" in event["file"]["target_path"]
    assert not os.path.lexists(os.path.join(kernel.work, eval(link)))
