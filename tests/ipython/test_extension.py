"""The IPython layer in a real kernel: every shell route refused, short message, recorded."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from conftest import GuardedKernel, assert_schema_valid, assert_short_refusal
from launcher_support import NOTEBOOK_USER, unprivileged_root

from kernel_guard.testing import plain_kernel_argv

# (cell, text the refusal names) for every IPython route to a shell
SYNTAX_ROUTES = [
    ("!ls", "`!ls`"),
    ("!!ls", "`!!ls`"),
    ("x = !ls", "`!!ls`"),
    ("for i in range(1):\n    !echo indented", "`!echo indented`"),
    ("%sx ls", "%sx"),
    ("%system ls", "%system"),
    ("%%!\nls", "%%!"),
    ("%%sx\nls", "%%sx"),
    ("%%system\nls", "%%system"),
    ("%sc x=ls", "%sc"),
    ("%%bash\necho hi", "%%bash"),
    ("%%sh\necho hi", "%%sh"),
    ("%%script bash\necho hi", "%%script"),
    ("%%script --bg bash\necho hi", "%%script"),
    ("%%bash --bg\necho hi", "%%bash"),
    ("%%perl\nprint 1", "%%perl"),
    ("%%ruby\nputs 1", "%%ruby"),
    ("%%python3\nprint(1)", "%%python3"),
    ("%%python\nprint(1)", "%%python"),
    ("%%python2\nprint(1)", "%%python2"),
    ("%%pypy\nprint(1)", "%%pypy"),
    ("%alias myls ls", "%alias"),
    ("%ls", "%ls"),
    ("ls", "%ls"),
    ("%cat /etc/hostname", "%cat"),
    ("mkdir newdir", "%mkdir"),
    ("%man ls", "%man"),
    ("%clear", "%clear"),
    ("%qtconsole", "%qtconsole"),
    ("%pip install requests", "%pip"),
    ("%uv pip list", "%uv"),
    ("%conda list", "%conda"),
    ("%mamba list", "%mamba"),
    ("%micromamba list", "%micromamba"),
]

API_ROUTES = [
    ("get_ipython().system('ls')", "`!ls`"),
    ("get_ipython().system_piped('ls')", "`!ls`"),
    ("get_ipython().system_raw('ls')", "system_raw()"),
    ("get_ipython().getoutput('ls')", "`!!ls`"),
    ("ip = get_ipython(); type(ip).system_raw(ip, 'ls')", "system_raw()"),
    ("from IPython.core.interactiveshell import InteractiveShell\n"
     "InteractiveShell.system_raw(get_ipython(), 'ls')", "system_raw()"),
    ("ip = get_ipython()\ntry:\n    del ip.system\nexcept AttributeError:\n    pass\nip.system('ls')", "`!ls`"),
    ("get_ipython().run_line_magic('sx', 'ls')", "%sx"),
    ("get_ipython().run_cell_magic('bash', '', 'ls')", "%%bash"),
    ("get_ipython().magics_manager.registry['OSMagics'].sx('ls')", "%sx"),
    ("from IPython.core.magics.script import ScriptMagics\nget_ipython().register_magics(ScriptMagics)\n"
     "get_ipython().run_cell_magic('bash', '', 'ls')", "%%script"),
    ("import IPython.utils.process as p; p.system('ls')", "system()"),
    ("import IPython.utils.process as p; p.getoutput('ls')", "getoutput()"),
    ("from IPython.core.magics.packaging import PackagingMagics\n"
     "PackagingMagics(get_ipython()).pip('list')", "%pip"),
]


@pytest.mark.parametrize("code,needle", SYNTAX_ROUTES, ids=[c for c, _ in SYNTAX_ROUTES])
def test_shell_syntax_is_refused_and_recorded(guarded, code, needle):
    """Each IPython shell syntax fails with the short message and a failure event of layer ipython."""
    guarded.mark()
    result = guarded.execute(code)
    assert_short_refusal(result, needle)
    failures = guarded.failures("ipython")
    assert failures, "no ipython-layer failure event"
    assert failures[0]["event"]["action"] == "shell-refused"
    assert_schema_valid(failures)


@pytest.mark.parametrize("code,needle", API_ROUTES, ids=[c.splitlines()[-1][:50] for c, _ in API_ROUTES])
def test_shell_api_is_refused_and_recorded(guarded, code, needle):
    """Direct API calls, class-level calls and the magics registry meet the same refusal."""
    guarded.mark()
    result = guarded.execute(code)
    assert_short_refusal(result, needle)
    assert guarded.failures("ipython"), "no ipython-layer failure event"


def test_kernel_survives_all_refusals(guarded):
    """After every refusal the kernel still runs ordinary code."""
    assert guarded.alive()
    assert guarded.execute("print(sum(range(5)))").stdout == "10\n"


def test_reloaded_script_module_is_stopped_by_the_audit_layer(guarded):
    """A freshly reloaded ScriptMagics escapes the IPython layer; the audit hook still refuses its Popen."""
    guarded.mark()
    result = guarded.execute(
        "import importlib, IPython.core.magics.script as s\n"
        "fresh = importlib.reload(s)\n"
        "get_ipython().register_magics(fresh.ScriptMagics)\n"
        "get_ipython().run_cell_magic('script', 'sh', 'echo escaped')"
    )
    assert "escaped" not in result.stdout
    failures = guarded.failures("audit")
    assert any(e["event"]["action"] == "exec-denied" for e in failures)
    assert guarded.alive()


def test_unload_and_reload_are_refused(guarded):
    """%unload_ext and %reload_ext leave the guard in place and are recorded as tampering."""
    for code in ("%unload_ext kernel_guard", "%reload_ext kernel_guard"):
        guarded.mark()
        assert_short_refusal(guarded.execute(code), code.split()[0])
        assert guarded.failures("ipython")[0]["event"]["action"] == "guard-tampering"
    assert_short_refusal(guarded.execute("!ls"), "`!ls`")


@pytest.mark.parametrize("code", [
    "%config KernelGuard.mode = 'audit'",
    "%config MagicsManager.lazy_magics = {'x': 'IPython.core.magics.script:ScriptMagics'}",
    "%config ScriptMagics.script_magics = ['zsh2']",
    "%config AliasManager.user_aliases = [('l', 'ls')]",
])
def test_config_cannot_weaken_the_guard(guarded, code):
    """%config on the guard or the tables it protects is refused and recorded."""
    guarded.mark()
    assert_short_refusal(guarded.execute(code), "%config")
    assert guarded.failures("ipython")[0]["event"]["action"] == "guard-tampering"
    assert_short_refusal(guarded.execute("!ls"), "`!ls`")


def test_direct_trait_change_is_reverted_and_recorded(guarded):
    """Assigning lazy_magics directly is put back and recorded."""
    guarded.mark()
    result = guarded.execute(
        "mm = get_ipython().magics_manager\nbefore = dict(mm.lazy_magics)\n"
        "mm.lazy_magics = {'x': 'os'}\nprint(mm.lazy_magics == before)"
    )
    assert result.stdout.strip() == "True"
    assert guarded.failures("ipython")[0]["event"]["action"] == "guard-tampering"


def test_loading_twice_does_not_double_hooks(guarded):
    """A second %load_ext adds nothing: one refusal gives exactly one event per layer."""
    guarded.execute("%load_ext kernel_guard")
    guarded.mark()
    guarded.execute("import os\ntry:\n    os.system('true')\nexcept PermissionError:\n    pass")
    events = guarded.new_events(until=lambda evs: any(e["event"]["action"] == "cell-executed" for e in evs))
    denied = [e for e in events if e["event"]["action"] == "exec-denied"]
    assert len(denied) == 1, denied
    guarded.mark()
    guarded.execute("!ls")
    events = guarded.new_events(until=lambda evs: any(e["event"]["action"] == "cell-executed" for e in evs))
    assert len([e for e in events if e["event"]["action"] == "shell-refused"]) == 1


def test_ordinary_magics_still_work(guarded):
    """Magics that do not reach a shell keep working: %timeit, %%writefile, %cd, %env reads."""
    assert guarded.execute("%timeit -n1 -r1 sum(range(10))").status == "ok"
    assert guarded.execute("%%writefile note.txt\nhello\n").status == "ok"
    assert guarded.execute("print(open('note.txt').read())").stdout == "hello\n\n"
    assert guarded.execute("%cd .").status == "ok"
    assert guarded.execute("%env JUPYTERHUB_USER").status == "ok"
    assert guarded.execute("%reset -f").status == "ok"
    assert_short_refusal(guarded.execute("ls"), "%ls")


def test_exec_lines_route(make_kernel):
    """c.IPKernelApp.exec_lines = ['%load_ext kernel_guard'] guards the kernel."""
    import os
    import sys
    kernel = make_kernel(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], start=False)
    profile = os.path.join(kernel.home, ".ipython", "profile_default")
    os.makedirs(profile)
    with open(os.path.join(profile, "ipython_kernel_config.py"), "w") as fh:
        fh.write("c.IPKernelApp.exec_lines = ['%load_ext kernel_guard']\n")
    kernel.start()
    kernel.mark()
    assert_short_refusal(kernel.execute("!ls"), "`!ls`")
    assert kernel.failures("ipython")


def test_extensions_config_route(make_kernel):
    """c.InteractiveShellApp.extensions = ['kernel_guard'] guards the kernel."""
    import sys
    kernel = make_kernel(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                               "--InteractiveShellApp.extensions=kernel_guard"])
    kernel.mark()
    assert_short_refusal(kernel.execute("%%bash\nls"), "%%bash")
    assert kernel.failures("ipython")


def test_audit_mode_records_without_refusing(make_kernel):
    """KERNEL_GUARD_MODE=audit lets a shell command run and records it as not refused."""
    kernel = make_kernel(env={"KERNEL_GUARD_MODE": "audit"})
    kernel.mark()
    result = kernel.execute("!echo still-works")
    assert result.status == "ok" and "still-works" in result.stdout
    events = kernel.new_events(until=lambda evs: any(e["event"]["action"] == "shell-command" for e in evs))
    recorded = [e for e in events if e["event"]["action"] == "shell-command"]
    assert recorded and recorded[0]["event"]["outcome"] == "unknown"
    assert recorded[0]["kernel_guard"]["mode"] == "audit"


PACKAGE_HELP = "open a ticket at https://help.example.org/jupyter"


@pytest.fixture(scope="module")
def packaged() -> Iterator[GuardedKernel]:
    """An enforcing kernel as uid 1000 whose deployment says where to ask for packages."""
    with unprivileged_root() as root:
        kernel = GuardedKernel(os.path.join(root, "k"), user=NOTEBOOK_USER, argv=plain_kernel_argv(
            "--ext=kernel_guard", f"--KernelGuard.package_request_hint={PACKAGE_HELP}")).start()
        yield kernel
        kernel.shutdown()


@pytest.mark.parametrize("code", ["%pip install x", "%conda install x"])
def test_package_magics_say_packages_come_with_the_image_and_where_to_ask(packaged, code):
    """%pip and %conda are refused with a message saying packages come with the image and naming the
    configured contact; the record shows the magic and its arguments, not a shell command."""
    packaged.mark()
    result = packaged.execute(code)
    assert_short_refusal(result, code.split()[0])
    assert "Packages come with this kernel's image" in result.error_text, result.error_text
    assert f"to get one, {PACKAGE_HELP}." in result.error_text, result.error_text
    assert "Use Python" not in result.error_text
    event = packaged.failures("ipython")[0]
    assert event["event"]["action"] == "shell-refused"
    assert event["process"]["command_line"] == code
    assert event["process"]["args"] == code.split()


def test_package_request_hint_is_validated_where_it_enters():
    """A multi-line or empty package_request_hint is refused, naming the setting and an example."""
    from traitlets import TraitError

    from kernel_guard.config import KernelGuard

    assert KernelGuard(package_request_hint="  ask in #help.  ").package_request_hint == "ask in #help"
    for bad in ("", "line one\nline two", "x" * 201):
        with pytest.raises(TraitError, match="KernelGuard.package_request_hint .*e.g."):
            KernelGuard(package_request_hint=bad)
