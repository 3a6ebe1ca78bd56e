"""The audit layer in a real kernel: process creation and friends refused and recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import assert_short_refusal

EXEC_ROUTES = [
    ("subprocess.run", "import subprocess\nsubprocess.run(['id'])", "id"),
    ("subprocess shell", "import subprocess\nsubprocess.check_output('id', shell=True)", "id"),
    ("os.system", "import os\nos.system('id')", "id"),
    ("os.popen", "import os\nos.popen('id').read()", "id"),
    ("os.posix_spawn", "import os\nos.posix_spawn('/usr/bin/id', ['id'], dict(os.environ))", "/usr/bin/id"),
    ("os.execv", "import os\nos.execv('/usr/bin/id', ['id'])", "/usr/bin/id"),
    ("pty.spawn", "import pty\npty.spawn(['id'])", "id"),
    ("pexpect", "import pexpect\npexpect.spawn('id')", "forkpty"),
    ("asyncio subprocess",
     "import asyncio\nasync def main():\n    p = await asyncio.create_subprocess_exec('id')\n    await p.wait()\n"
     "await main()", "id"),
    ("webbrowser-style probe", "import shutil, subprocess\nsubprocess.Popen([shutil.which('true') or 'true'])", "true"),
]


@pytest.mark.parametrize("name,code,needle", EXEC_ROUTES, ids=[n for n, _, _ in EXEC_ROUTES])
def test_process_creation_is_refused_and_recorded(guarded, name, code, needle):
    """Every stdlib process route fails with the short message and an audit-layer event naming the program."""
    guarded.mark()
    result = guarded.execute(code)
    assert_short_refusal(result)
    failures = guarded.failures("audit")
    assert failures, "no audit-layer failure event"
    event = failures[0]
    assert event["event"]["action"] == "exec-denied"
    proc = event.get("process", {})
    described = " ".join([proc.get("executable", ""), proc.get("command_line", ""), event["event"].get("reason", "")])
    assert needle in described, event
    assert guarded.alive()


def test_fork_then_exec_is_refused_in_the_child_and_recorded(guarded):
    """After os.fork the child's exec is refused, and the child's event reaches the sink before it exits."""
    guarded.mark()
    result = guarded.execute(
        "import os\npid = os.fork()\nif pid == 0:\n"
        "    try:\n        os.execv('/usr/bin/id', ['id'])\n    finally:\n        os._exit(7)\n"
        "print(os.waitpid(pid, 0)[1] >> 8, pid)"
    )
    status, child = result.stdout.split()
    assert status == "7"
    failures = guarded.failures("audit")
    assert any(e["process"]["pid"] == int(child) and e["event"]["action"] == "exec-denied" for e in failures)


def test_fork_based_multiprocessing_still_works(guarded):
    """A fork-context multiprocessing pool runs: fork alone is not refused."""
    result = guarded.execute(
        "import multiprocessing as mp\nwith mp.get_context('fork').Pool(2) as pool:\n"
        "    print(sum(pool.map(abs, range(-5, 5))))"
    )
    assert result.stdout.strip() == "25", result.error_text


def test_ctypes_exec_symbols_are_refused(guarded):
    """Looking up libc's system() through ctypes is refused; loading libc is recorded."""
    guarded.mark()
    result = guarded.execute("import ctypes\nlibc = ctypes.CDLL(None)\nlibc.system(b'id')")
    assert_short_refusal(result, "system()")
    failures = guarded.failures("audit")
    assert failures[0]["event"]["action"] == "symbol-denied"
    loaded = [e for e in guarded.new_events() if e["event"]["action"] == "library-loaded"]
    assert loaded and loaded[0]["event"]["outcome"] == "unknown"


@pytest.mark.parametrize("code,variable", [
    ("import os\nos.environ['LD_PRELOAD'] = '/tmp/evil.so'", "LD_PRELOAD"),
    ("%env PATH=/tmp/evil:/usr/bin", "PATH"),
    ("import os\nos.putenv('PYTHONPATH', '/tmp')", "PYTHONPATH"),
    ("import os\ndel os.environ['PATH']", "PATH"),
])
def test_loader_and_path_variables_are_protected(guarded, code, variable):
    """Changing loader or search-path variables is refused and recorded."""
    guarded.mark()
    assert_short_refusal(guarded.execute(code), variable)
    assert guarded.failures("audit")[0]["event"]["action"] == "env-denied"
    assert guarded.execute(f"import os; print(os.environ.get('{variable}', '') != '/tmp/evil.so')").stdout


def test_ordinary_environment_changes_are_allowed(guarded):
    """Other variables (OMP_NUM_THREADS) can still be set."""
    assert guarded.execute("import os\nos.environ['OMP_NUM_THREADS'] = '2'\nprint(os.environ['OMP_NUM_THREADS'])").stdout == "2\n"


def _persistence_targets(home):
    return [
        os.path.join(home, ".ipython", "profile_default", "startup", "00-evil.py"),
        os.path.join(home, ".ipython", "profile_default", "ipython_kernel_config.py"),
        os.path.join(home, ".jupyter", "jupyter_server_config.py"),
        os.path.join(home, ".local", "share", "jupyter", "kernels", "python3", "kernel.json"),
        os.path.join(home, ".local", "lib", "python3.11", "site-packages", "evil.pth"),
        os.path.join(home, "work", "sitecustomize.py"),
        os.path.join(home, ".bashrc"),
    ]


def test_persistence_paths_cannot_be_written(guarded):
    """Startup files, config files, kernelspecs, .pth and sitecustomize are refused and recorded."""
    for target in _persistence_targets(guarded.home):
        guarded.mark()
        code = (f"import os\nos.makedirs(os.path.dirname({target!r}), exist_ok=True)\n"
                f"open({target!r}, 'w').write('import os')")
        assert_short_refusal(guarded.execute(code))
        assert guarded.failures("audit")[0]["event"]["action"] == "persistence-denied", target
        assert not os.path.exists(target)


def test_the_python_environment_and_the_guard_itself_cannot_be_written(guarded):
    """Appending to kernel_guard's own modules, adding one, or a module in site-packages: refused, recorded
    (the ConfigMap route has no Landlock; in images the environment may belong to the notebook user)."""
    import sysconfig

    import kernel_guard

    package = os.path.dirname(kernel_guard.__file__)
    targets = [(os.path.join(package, "__init__.py"), "a"), (os.path.join(package, "planted.py"), "w"),
               (os.path.join(sysconfig.get_paths()["purelib"], "kg_planted_module.py"), "w")]
    init = Path(package) / "__init__.py"
    before = init.read_text()
    try:
        for target, mode in targets:
            guarded.mark()
            assert_short_refusal(guarded.execute(f"open({target!r}, {mode!r}).write('\\nEVIL = 1\\n')"))
            assert guarded.failures("audit")[0]["event"]["action"] == "persistence-denied", target
    finally:
        for target, _mode in targets[1:]:
            if os.path.exists(target):
                os.unlink(target)
    assert init.read_text() == before
    assert not any(os.path.exists(t) for t, _ in targets[1:])


def test_persistence_via_rename_and_symlink_is_refused(guarded):
    """Writing elsewhere then renaming or symlinking into the startup folder is refused too."""
    startup = os.path.join(guarded.home, ".ipython", "profile_default", "startup")
    for code in (f"import os\nopen('x.py', 'w').write('1')\nos.rename('x.py', {startup + '/x.py'!r})",
                 f"import os\nos.symlink('/tmp/whatever.py', {startup + '/y.py'!r})",
                 f"import os\nos.symlink({startup!r}, 'link')\nopen('link/z.py', 'w').write('1')"):
        guarded.mark()
        assert_short_refusal(guarded.execute(code))
        assert guarded.failures("audit")
    assert not [f for f in os.listdir(startup) if f.endswith(".py")]


def test_ordinary_file_writes_are_allowed(guarded):
    """Writing data files in the working directory works."""
    assert guarded.execute("open('data.csv', 'w').write('a,b\\n1,2\\n')\nprint(open('data.csv').read())").stdout == "a,b\n1,2\n\n"


def test_foreign_audit_hooks_are_refused(guarded):
    """User code cannot add its own audit hook (CPython drops it silently; the attempt is recorded)."""
    guarded.mark()
    result = guarded.execute("import sys\nseen = []\nsys.addaudithook(lambda e, a: seen.append(e))\n"
                             "compile('1', 'x', 'eval')\nprint(len(seen))")
    assert result.stdout.strip() == "0"
    assert guarded.failures("audit")[0]["event"]["action"] == "guard-tampering"


def test_subinterpreters_are_refused(guarded):
    """Creating a subinterpreter (which would run without the hook) is refused (CPython reports it as failed)."""
    guarded.mark()
    result = guarded.execute("import _xxsubinterpreters as i\ni.create()")
    assert result.status == "error" and "interpreter creation failed" in result.error_text
    assert guarded.failures("audit")[0]["event"]["action"] == "interpreter-denied"


def test_hook_cannot_be_rewired(guarded):
    """Replacing the hook's defaults or code is refused."""
    guarded.mark()
    result = guarded.execute(
        "from kernel_guard.audit import hook as audit\nhook = audit._State.installed['enforce']\n"
        "hook.__defaults__ = (frozenset(), None, None)"
    )
    assert_short_refusal(result)
    assert guarded.failures("audit")[0]["event"]["action"] == "guard-tampering"
    assert_short_refusal(guarded.execute("import os; os.system('id')"))


def test_audit_mode_records_process_creation(make_kernel):
    """In audit mode subprocess runs, and the attempt is recorded (outcome unknown)."""
    kernel = make_kernel(env={"KERNEL_GUARD_MODE": "audit"})
    kernel.mark()
    result = kernel.execute("import subprocess\nprint(subprocess.run(['echo', 'ran'], capture_output=True, text=True).stdout)")
    assert "ran" in result.stdout
    events = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "exec-attempt" for e in evs))
    attempts = [e for e in events if e["event"]["action"] == "exec-attempt"]
    assert attempts and attempts[0]["process"]["args"] == ["echo", "ran"]


def test_direct_fork_exec_is_refused_in_extension_mode(guarded):
    """Calling _posixsubprocess.fork_exec directly (no audit event) meets the fork_exec check."""
    guarded.mark()
    code = (
        "import _posixsubprocess, os, subprocess\n"
        "args = [b'/usr/bin/id']\n"
        "r, w = os.pipe()\n"
        "_posixsubprocess.fork_exec(args, args, True, (), None, None, -1, -1, -1, -1, -1, -1, r, w,"
        " False, False, None, None, None, -1, None, False)\n"
    )
    assert_short_refusal(guarded.execute(code), "fork_exec")
    failures = guarded.failures("audit")
    assert failures[0]["process"]["executable"] == "/usr/bin/id"


def test_multiprocessing_spawn_is_refused(guarded):
    """multiprocessing's spawn start method (fork_exec underneath) is refused and recorded."""
    guarded.mark()
    result = guarded.execute(
        "import multiprocessing as mp\nctx = mp.get_context('spawn')\np = ctx.Process(target=print)\np.start()"
    )
    assert result.status == "error"
    assert guarded.failures("audit")


@pytest.mark.parametrize("path", ["/proc/self/environ", "/proc/1/environ", "/proc/self/mem"])
def test_process_environments_and_memory_cannot_be_read(guarded, path):
    """Reading /proc/*/environ (tokens of the server) or /proc/*/mem is refused and recorded."""
    guarded.mark()
    assert_short_refusal(guarded.execute(f"open({path!r}, 'rb').read(10)"))
    assert guarded.failures("audit")[0]["event"]["action"] == "credential-denied"


def test_shimmed_subprocess_sys_is_still_refused(guarded):
    """Replacing subprocess.sys to silence its audit event still meets the fork_exec check."""
    guarded.mark()
    code = ("import subprocess, sys, types\n"
            "shim = types.SimpleNamespace(**{k: getattr(sys, k) for k in dir(sys) if not k.startswith('__')})\n"
            "shim.audit = lambda *a: None\nsubprocess.sys = shim\n"
            "try:\n    subprocess.run(['/usr/bin/id'])\nfinally:\n    subprocess.sys = sys")
    assert_short_refusal(guarded.execute(code), "fork_exec")
    assert guarded.failures("audit")


def test_the_native_filter_is_active_in_a_kernel(guarded):
    """The extension adds its hook through the compiled filter (a build without it would be ~5x slower per event)."""
    result = guarded.execute("from kernel_guard.audit import hook\nprint(hook.filter_kind())")
    assert result.stdout.strip() == "native"


def test_a_tracer_cannot_see_or_steer_the_policy(guarded):
    """A sys.settrace tracer never runs inside the guard's decision, as CPython ensures for Python hooks."""
    guarded.mark()
    result = guarded.execute(
        "import sys, subprocess\nseen = set()\n"
        "def tracer(frame, event, arg):\n    seen.add(frame.f_code.co_name)\n    return tracer\n"
        "sys.settrace(tracer)\ntry:\n    subprocess.run(['id'])\nexcept Exception:\n    pass\n"
        "finally:\n    sys.settrace(None)\n"
        "print(sorted(seen & {'_decide', 'kernel_guard_audit_hook', '_refuse_or_record', '_record'}), 'run' in seen)")
    assert result.stdout.strip() == "[] True"
    assert guarded.failures("audit")[0]["event"]["action"] == "exec-denied"


def test_without_the_native_filter_the_python_hook_enforces_the_same_policy(tmp_path):
    """With the filter unavailable (no compiler at install), a Python hook refuses the same routes."""
    import subprocess
    import sys

    code = ("import kernel_guard.audit.hook as a\na._audit_filter = None\na.install('enforce')\n"
            "import os\nprint(a.filter_kind())\n"
            "try:\n    os.system('true')\nexcept Exception as e:\n    print(type(e).__name__)\n"
            f"try:\n    open({str(tmp_path / 'evil.pth')!r}, 'w')\nexcept Exception as e:\n    print(type(e).__name__)\n"
            f"open({str(tmp_path / 'ok.txt')!r}, 'w').write('ok')\nprint(open({str(tmp_path / 'ok.txt')!r}).read())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "KERNEL_GUARD_SINKS": ""})
    assert out.stdout.split() == ["python", "ExecRefused", "PersistenceRefused", "ok"], out.stderr


def test_resolve_agrees_with_realpath(tmp_path):
    """The filter's realpath(3) shortcut gives os.path.realpath's answer, or None to fall back, for links and odd names."""
    from kernel_guard.audit import _filter as _audit_filter

    d = str(tmp_path)
    os.symlink("/etc", f"{d}/etclink")
    os.symlink(f"{d}/nowhere/x", f"{d}/dangling")
    os.makedirs(f"{d}/sub/inner")
    open(f"{d}/file", "w").close()
    os.symlink(f"{d}/file", f"{d}/filelink")
    cases = [f"{d}/file", f"{d}/new.json", f"{d}/etclink/passwd", f"{d}/etclink/newfile", f"{d}/filelink",
             f"{d}/etclink", f"{d}/etclink/../x", f"{d}/sub/inner/../../file", f"{d}//file", f"{d}/./new",
             f"{d}/sub/.", f"{d}/..", "/", "/tmp/"]
    for path in cases:
        assert _audit_filter.resolve(path) == os.path.realpath(path), path
    # answers only os.path.realpath gives: a dangling link (creating it creates its target),
    # a missing directory, a file used as a directory, a NUL byte, a relative path
    for path in (f"{d}/dangling", f"{d}/missing/f", f"{d}/file/x", "/x\0y", "relative/path"):
        assert _audit_filter.resolve(path) is None, path


def test_a_dangling_link_into_the_startup_folder_is_refused(guarded):
    """Opening a dangling symlink for writing creates its target: the target is checked, so a link into startup/ is refused."""
    startup = os.path.join(guarded.home, ".ipython", "profile_default", "startup")
    guarded.mark()
    code = (f"import os\nos.makedirs({startup!r}, exist_ok=True)\n"
            f"os.symlink({startup + '/late.py'!r}, 'innocent.txt')\nopen('innocent.txt', 'w').write('import os')")
    assert_short_refusal(guarded.execute(code))
    assert guarded.failures("audit")[0]["event"]["action"] == "persistence-denied"
    assert not os.path.exists(os.path.join(startup, "late.py"))


def test_low_level_writes_are_checked_like_open(guarded):
    """os.open with write flags (the native filter reads the flags, not a mode) is refused for startup files; reads pass."""
    startup = os.path.join(guarded.home, ".ipython", "profile_default", "startup", "low.py")
    guarded.mark()
    code = (f"import os\nos.makedirs(os.path.dirname({startup!r}), exist_ok=True)\n"
            f"os.close(os.open({startup!r}, os.O_WRONLY | os.O_CREAT, 0o600))")
    assert_short_refusal(guarded.execute(code))
    assert guarded.failures("audit")[0]["event"]["action"] == "persistence-denied"
    assert not os.path.exists(startup)
    ok = guarded.execute("import os\nfd = os.open('/etc/hostname', os.O_RDONLY)\nprint(len(os.read(fd, 100)) > 0)\nos.close(fd)")
    assert ok.stdout.strip() == "True"


def test_proc_secrets_are_judged_as_the_kernel_resolves_the_path(guarded):
    """Relative paths, extra slashes, ``.`` and links in the folders: every spelling of /proc/<pid>/environ."""
    pid = os.getpid()  # the test process: another process, as the server would be
    spellings = [f"//proc/{pid}/environ", f"/proc//{pid}/./environ",
                 f"os.chdir('/proc'); open('{pid}/environ')",
                 f"os.symlink('/proc', 'procdir'); open('procdir/{pid}/environ')"]
    for spelling in spellings:
        code = "import os\n" + (spelling if spelling.startswith("os.") else f"open({spelling!r})")
        guarded.mark()
        result = guarded.execute(code + "\nos.chdir(os.path.expanduser('~'))")
        guarded.execute("import os\nos.chdir(os.path.expanduser('~'))")
        assert_short_refusal(result)
        assert guarded.failures("audit")[0]["event"]["action"] == "credential-denied", spelling


def test_moving_a_start_up_folder_as_a_whole_is_refused(guarded):
    """Renaming ~/.ipython or ~/.jupyter away (to put a prepared one in place), or onto them, is refused."""
    ipython = os.path.join(guarded.home, ".ipython")
    jupyter = os.path.join(guarded.home, ".jupyter")
    for code in (f"import os\nos.rename({ipython!r}, {ipython + '-old'!r})",
                 f"import os\nos.makedirs('prepared', exist_ok=True)\nos.rename('prepared', {jupyter!r})",
                 f"import os, shutil\nos.makedirs('prepared2/startup', exist_ok=True)\n"
                 f"shutil.copytree('prepared2', {os.path.join(ipython, 'profile_evil')!r})"):
        guarded.mark()
        assert_short_refusal(guarded.execute(code))
        assert guarded.failures("audit")[0]["event"]["action"] == "persistence-denied", code
    assert os.path.isdir(ipython) and not os.path.exists(ipython + "-old")
    assert not os.path.exists(os.path.join(ipython, "profile_evil"))
