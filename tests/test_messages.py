"""Every refusal a notebook shows and every 403 the server answers reads as a short sentence
that names what was refused and says what to do next.  The messages are produced by the
code that builds them (the IPython layer's refuse, the audit hook's decision, the server's
verdicts and routes), with representative inputs."""

from __future__ import annotations

import os
import re
import sys
import types
from typing import Iterator

import pytest

from kernel_guard import exceptions
from kernel_guard.audit import hook
from kernel_guard.exceptions import Refused
from kernel_guard.ipython import shell
from kernel_guard.server import policy, routes
from kernel_guard.server.guard import ServerGuard, kernel_refusal

#: a next step: a verb of doing, or a pointer to where to read on
NEXT_STEP = re.compile(r"\b(use|ask|set|install|reinstall|run|choose|save|append|open|see)\b", re.IGNORECASE)
#: a path where a verb should be ("it /home/x can be changed", "it /x: No such file")
PATH_FRAGMENT = re.compile(r"\bit /")
#: an empty value formatted into the text
PLACEHOLDER = re.compile(r"\bNone\b|\{\}|''|\"\"|(?<!\w)\(\s*\)|:\s*\)|\(\s*:")
DOUBLED = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def form_problems(line: str) -> list[str]:
    """What keeps one line from being a sentence."""
    found = []
    if not (line.startswith("kernel_guard") or line[:1].isupper()):
        found.append("does not start with kernel_guard or a capital letter")
    if not line.endswith("."):
        found.append("does not end with a full stop")
    return found


def problems(text: str, names: str) -> list[str]:
    """What keeps ``text`` from being a short sentence that names ``names`` and says what next."""
    found = [problem for line in text.splitlines() for problem in form_problems(line)]
    if DOUBLED.search(text):
        found.append(f"doubled word {DOUBLED.search(text).group(0)!r}")
    if PATH_FRAGMENT.search(text):
        found.append("a path stands where a verb should")
    if PLACEHOLDER.search(text):
        found.append(f"an empty placeholder {PLACEHOLDER.search(text).group(0)!r}")
    if names not in text:
        found.append(f"does not name {names!r}")
    if not NEXT_STEP.search(text):
        found.append("says nothing to do next")
    if len(text.splitlines()) > 2:
        found.append("longer than two lines")
    return found


def assert_reads_well(text: str, names: str) -> None:
    assert problems(text, names) == [], text


def shown(exc: Refused) -> str:
    """The refusal as a notebook shows it (two lines, colours removed)."""
    return ANSI.sub("", "\n".join(exc._render_traceback_()))


# -- the exceptions -----------------------------------------------------------

REFUSALS = sorted((getattr(exceptions, name) for name in exceptions.__all__
                   if issubclass(getattr(exceptions, name), Refused)), key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", REFUSALS, ids=[cls.__name__ for cls in REFUSALS])
def test_every_refusal_class_names_what_and_what_next(cls: type[Refused]) -> None:
    """Each Refused class's two lines (its message and its default hint) read as sentences with a next step."""
    assert_reads_well(shown(cls("`!ls`")), "`!ls`")


# -- the IPython layer ---------------------------------------------------------

SHELL_ROUTES = [  # (route, command, tampering, what the message names)
    ("!", "ls -l", False, "`!ls -l`"),
    ("!!", "ls", False, "`!!ls`"),
    ("%%bash", "echo hi", False, "%%bash"),
    ("%sx", "ls", False, "%sx"),
    ("system_raw()", "ls", False, "system_raw()"),
    ("%alias", "ll ls -l", False, "%alias"),
    ("%clear", "", False, "%clear"),
    ("%pip", "install requests", False, "%pip"),
    ("%unload_ext", "kernel_guard", True, "%unload_ext"),
    ("%config", "KernelGuard.mode = 'audit'", True, "%config"),
    ("setting MagicsManager.lazy_magics", "{'kgx': 'IPython.core.magics.script:ScriptMagics'}", True,
     "MagicsManager.lazy_magics"),
]


@pytest.mark.parametrize("route,command,tampering,names", SHELL_ROUTES, ids=[r[0] for r in SHELL_ROUTES])
def test_ipython_refusals_read_well(route: str, command: str, tampering: bool, names: str) -> None:
    """Each IPython-layer refusal names its route and says what to use instead."""
    with pytest.raises(Refused) as caught:
        shell.refuse(route, command, tampering=tampering)
    assert_reads_well(shown(caught.value), names)


# -- the audit hook -----------------------------------------------------------

@pytest.fixture(scope="module")
def decide() -> Iterator:
    """The enforcing hook's decision, applied to one event at a time (nothing is run)."""
    policy_ = hook.build_policy(True, protected_pids=[4242])

    def run(event: str, args: tuple, protected: object = None) -> Refused:
        used = policy_ if protected is None else policy_[:6] + (frozenset({id(protected)}),) + policy_[7:]
        with pytest.raises(Refused) as caught:
            hook._decide(event, args, used)
        return caught.value

    yield run


def audit_cases(tmp: str, pipe: int) -> list[tuple[str, tuple, str]]:
    """(event, args, what the message names) for every kind of audit-layer refusal;
    ``pipe`` is a descriptor that names no folder."""
    startup = os.path.expanduser("~/.ipython/profile_default/startup/00-x.py")
    pth = os.path.join(sys.prefix, "lib", "planted.pth")
    return [
        ("os.system", (b"id",), "os.system: id"),
        ("subprocess.Popen", ("/bin/ls", ["ls", "-l"], None, None), "ls -l"),
        ("os.exec", ("/bin/ls", ["ls"], None), "os.exec: ls"),
        ("os.forkpty", (), "os.forkpty"),
        ("open", (pth, "w", 0), pth),
        ("open", ("/proc/1/environ", "r", os.O_RDONLY), "/proc/1/environ"),
        ("os.rename", (os.path.join(tmp, "x.py"), startup, None, None), "00-x.py"),
        ("os.symlink", ("/proc/1/environ", os.path.join(tmp, "link"), None), "/proc/1/environ"),
        ("os.mkdir", ("sub", 0o777, pipe), "creating sub"),
        ("os.remove", (pth, None), "removing " + pth),
        ("os.chmod", (pth, 0o777, None), "changing the permissions of " + pth),
        ("os.putenv", ("PATH", "/x"), "$PATH"),
        ("ctypes.dlsym", (object(), "system"), "system()"),
        ("ctypes.dlsym", (object(), "kill"), "kill()"),
        ("sys.addaudithook", (), "audit hook"),
        ("cpython.PyInterpreterState_New", (), "subinterpreter"),
        ("os.kill", (4242, 9), "supervisor (pid 4242)"),
    ]


def test_audit_refusals_read_well(decide, tmp_path) -> None:
    """Each audit-layer refusal names the call and the thing it touched, and says what to do instead."""
    read_end, write_end = os.pipe()
    try:
        for event, args, names in audit_cases(str(tmp_path), read_end):
            assert_reads_well(shown(decide(event, args)), names)
    finally:
        os.close(read_end)
        os.close(write_end)
    protected = types.SimpleNamespace()
    assert_reads_well(shown(decide("object.__setattr__", (protected, "__code__", None), protected)), "__code__")


# -- the server ---------------------------------------------------------------

GUARDED = ["python3", "-I", "-m", "kernel_guard.launch", "-f", "{connection_file}"]


def verdicts(tmp: str) -> list[policy.Verdict]:
    """A verdict for each reason a kernelspec may not start."""
    writable = os.path.join(tmp, "writable")
    os.makedirs(writable)
    with open(os.path.join(writable, "kernel.json"), "w") as fh:
        fh.write("{}")
    os.chmod(writable, 0o777)
    assess = policy.assess_kernelspec
    found = [
        assess("plain", ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], {}, None),
        assess("unisolated", ["python3", "-m", "kernel_guard.launch", "-f", "{connection_file}"], {}, None),
        assess("loader", GUARDED, {"PYTHONPATH": "/x"}, None),
        assess("nofile", GUARDED, {}, None, euid=1000, groups=[]),
        assess("writable", GUARDED, {}, writable, euid=1000, groups=[]),
        assess("missing", GUARDED, {}, os.path.join(tmp, "missing"), euid=1000, groups=[]),
    ]

    class BrokenSpecs:
        def get_kernel_spec(self, name: str) -> None:
            raise ValueError("kernel.json is not valid JSON")

    app = types.SimpleNamespace(kernel_manager=None, kernel_spec_manager=BrokenSpecs())
    found.append(ServerGuard(app, None, None).assess_name("broken"))  # type: ignore[arg-type]
    assert not any(v.allowed for v in found), found
    return found


@pytest.mark.parametrize("allowed", [["python3"], []], ids=["some allowed", "none allowed"])
def test_kernel_refusals_read_well(tmp_path, allowed: list[str]) -> None:
    """Each 403 for a kernelspec names it, says why in words, and says which to choose or what to install."""
    for verdict in verdicts(str(tmp_path)):
        assert_reads_well(kernel_refusal(verdict, allowed), f"'{verdict.name}'")


def test_route_refusals_read_well() -> None:
    """The 403s for terminals, downloads and server events name what was refused and what to do instead."""
    assert_reads_well(routes.TERMINALS_REFUSED, "terminals")
    assert_reads_well(routes.download_refusal("notebooks/data.csv"), "notebooks/data.csv")
    schema = routes.SERVER_SCHEMAS + "kernel_actions/v1"
    assert_reads_well(routes.server_event_refusal(schema), schema)


def test_the_checks_catch_what_they_are_for() -> None:
    """Each check fails on the fault it looks for."""
    assert problems("kernel_guard refused it. Use Python.", "it") == []
    assert "does not end with a full stop" in problems("Use Python", "")
    assert any("doubled" in p for p in problems("Use the the shell.", ""))
    assert any("path" in p for p in problems("It failed: it /home/x: gone. Ask.", ""))
    assert any("placeholder" in p for p in problems("kernel_guard refused None. Ask.", ""))
    assert "says nothing to do next" in problems("kernel_guard refused it.", "")

