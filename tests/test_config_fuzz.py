"""Bad configuration never leaves a kernel unguarded, by any route that loads the guard.

Every setting gets a malformed value on the kernel's command line, and the
environment variables get malformed and random values; each kernel is started
by one of the three extension routes (``%load_ext`` in ``exec_lines``,
``--ext``, ``InteractiveShellApp.extensions``) or by the launcher, as uid 1000.
After each start the kernel must refuse ``os.system`` and the problem must be
reported (on stderr, which the Jupyter server logs, or as a ``config-ignored``
event).
"""

from __future__ import annotations

import os
import random
import socket
import string
import sys
import time
from typing import Iterator, List, Optional, Tuple

import pytest
from conftest import GuardedKernel
from launcher_support import NOTEBOOK_USER, specs_on_path, unprivileged_root

from kernel_guard.config import KernelGuard

#: one value each setting must reject
MALFORMED = {
    "aggregate_interval": "-1", "code_max_chars": "-5", "code_policy": "everything",
    "extra_persistence_paths": "relative/dir", "extra_protected_env": "1BAD=", "http_ca_bundle": "relative.pem",
    "http_format": "xml", "http_gzip": "maybe", "http_headers_env": "lower case", "http_headers_file": "relative.txt",
    "http_timeout": "nan", "mode": "off", "package_request_hint": "x" * 300, "package_install_command": "pip install\nx", "queue_size": "0", "redact_patterns": "(unclosed", "sinks": "http://[::1",
    "spool_dir": "relative/spool", "spool_max_bytes": "-1", "syslog_app_name": "has space",
    "syslog_facility": "nope", "syslog_max_message_bytes": "10", "unsafe_allow_package_magics": "perhaps",
    "unsafe_http_skip_tls_verify": "perhaps",
}

ENV_CASES = [
    ("KERNEL_GUARD_SINKS", "http://[::1"), ("KERNEL_GUARD_SINKS", "syslog+udp://collector:0"),
    ("KERNEL_GUARD_EXTRA_SINKS", "http://[::1"), ("KERNEL_GUARD_EXTRA_SINKS", "ftp://x"),
    ("KERNEL_GUARD_MODE", "off"),
]
_rng = random.Random(20261129)
ENV_CASES += [(name, "".join(_rng.choice(string.printable) for _ in range(24)))
              for name in ("KERNEL_GUARD_SINKS", "KERNEL_GUARD_EXTRA_SINKS", "KERNEL_GUARD_MODE")]

ROUTES = ("exec_lines", "--ext", "extensions", "launcher")


def _argv(route: str, extra: List[str]) -> List[str]:
    if route == "launcher":
        return [sys.executable, "-I", "-m", "kernel_guard.launch", *extra, "-f", "{connection_file}"]
    load = {"exec_lines": "--IPKernelApp.exec_lines=['%load_ext kernel_guard']", "--ext": "--ext=kernel_guard",
            "extensions": "--InteractiveShellApp.extensions=['kernel_guard']"}[route]
    return [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", load, *extra]


def _cases() -> List[Tuple[str, str, str, str]]:
    """(route, kind, name, value): every setting and env case, the routes taken in turn."""
    cases = [("setting", name, value) for name, value in sorted(MALFORMED.items())]
    cases += [("env", name, value) for name, value in ENV_CASES]
    return [(ROUTES[i % len(ROUTES)], *case) for i, case in enumerate(cases)]


def test_every_setting_has_a_malformed_value() -> None:
    """The fuzz list covers every KernelGuard setting."""
    assert set(MALFORMED) == set(KernelGuard().traits(config=True))


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with unprivileged_root() as folder:
        with specs_on_path(os.path.join(folder, "prefix"), ("guarded",)):
            yield folder


@pytest.mark.parametrize("route, kind, name, value", _cases(),
                         ids=[f"{r}-{k}-{n}-{i}" for i, (r, k, n, _) in enumerate(_cases())])
def test_a_malformed_value_is_reported_and_the_kernel_stays_guarded(root: str, route: str, kind: str,
                                                                    name: str, value: str) -> None:
    """The kernel starts, refuses os.system, and says which setting it ignored."""
    extra = [f"--KernelGuard.{name}={value}"] if kind == "setting" else []
    env = {name: value} if kind == "env" else {}
    folder = os.path.join(root, f"{route}-{kind}-{name}-{abs(hash(value)) % 10**6}".replace("--", ""))
    kernel = GuardedKernel(folder, argv=_argv(route, extra), env=env, user=NOTEBOOK_USER)
    kernel.start()
    try:
        result = kernel.execute("import os\nos.system('true')")
        assert result.status == "error" and "kernel_guard refused" in result.error_text, (result.stdout,
                                                                                           result.error_text)
        setting = name if kind == "env" else f"KernelGuard.{name}"
        reported = [e for e in kernel.events() if e["event"]["action"] == "config-ignored"
                    and setting in e["kernel_guard"].get("setting", "")]
        assert reported or setting in kernel.stderr(), kernel.stderr()[-2000:]
    finally:
        kernel.shutdown()


# -- #22: malformed bytes, special files, huge numbers, settings that blank the record --------

#: a byte that is not UTF-8 (0xff): os.environ and sys.argv hold it as a lone surrogate
_FF = "\udcff"
NUMERIC = ("aggregate_interval", "code_max_chars", "http_timeout", "queue_size", "spool_max_bytes",
           "syslog_max_message_bytes")


def _kernel(root: str, label: str, route: str, extra: Tuple[str, ...] = (), env: Optional[dict] = None) -> GuardedKernel:
    """A started kernel on ``route`` as the notebook user; ``env`` may name its own sink file
    as {sink}."""
    folder = os.path.join(root, label)
    sink = os.path.join(folder, "events", "events.jsonl")
    env = {name: value.format(sink=sink) for name, value in (env or {}).items()}
    extra = [arg.format(sink=sink) for arg in extra]
    kernel = GuardedKernel(folder, argv=_argv(route, list(extra)), env=env, user=NOTEBOOK_USER)
    assert kernel.sink == sink
    return kernel.start()


def _assert_guarded(kernel: GuardedKernel) -> None:
    result = kernel.execute("import os\nos.system('true')")
    assert result.status == "error" and "kernel_guard refused" in result.error_text, (result.stdout,
                                                                                       result.error_text)


def _reported(kernel: GuardedKernel, action: str, setting: str = "", timeout: float = 10.0) -> List[dict]:
    """The ``action`` events (config-ignored, sink-error) whose setting or sink names ``setting``."""
    def pick(events: List[dict]) -> List[dict]:
        return [e for e in events if e["event"]["action"] == action
                and setting in e["kernel_guard"].get("setting", "") + e["kernel_guard"].get("sink", "")]
    deadline = time.monotonic() + timeout
    while not pick(kernel.events()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pick(kernel.events())


def _cell_recorded(kernel: GuardedKernel, text: str, timeout: float = 15.0) -> List[dict]:
    """The cell-executed events once one whose code holds ``text`` is written (routine
    events ride the writer's tick: the reply can come before the record)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cells = _reported(kernel, "cell-executed")
        if any(text in e["kernel_guard"].get("code", "") for e in cells):
            return cells
        time.sleep(0.05)
    return _reported(kernel, "cell-executed")


def _operator_file(root: str, label: str, text: str) -> str:
    """A config file as an operator installs it: root's, not writable by others, outside any home."""
    folder = os.path.join(root, f"etc-{label}")
    os.makedirs(folder, mode=0o755)
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "kernel_guard_config.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o644)
    return path


def _user_file(kernel: GuardedKernel, text: str) -> None:
    """The notebook user's own ipython_kernel_config.py (user-writable: untrusted)."""
    profile = os.path.join(kernel.home, ".ipython", "profile_default")
    os.makedirs(profile, exist_ok=True)
    path = os.path.join(profile, "ipython_kernel_config.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    for item in (os.path.join(kernel.home, ".ipython"), profile, path):
        os.chown(item, *NOTEBOOK_USER)


@pytest.mark.parametrize("route, name, url", [
    ("exec_lines", "KERNEL_GUARD_SINKS", f"http://collector{_FF}:8080/events"),
    ("extensions", "KERNEL_GUARD_SINKS", f"syslog+udp://collector{_FF}:514"),
    ("--ext", "KERNEL_GUARD_EXTRA_SINKS", f"http://collector:8080/{_FF}"),
    ("launcher", "KERNEL_GUARD_SINKS", f"syslog+tcp://collector{_FF}:514"),
    ("launcher", "KERNEL_GUARD_EXTRA_SINKS", f"otlp+http://collector{_FF}:4318/v1/logs"),
])
def test_a_non_utf8_byte_in_a_sink_url_from_the_environment_leaves_the_kernel_guarded(
        root: str, route: str, name: str, url: str) -> None:
    """A raw 0xff in a sink URL of the environment: that sink is left out and reported, the
    kernel starts guarded and its file sink keeps the record."""
    env = {"KERNEL_GUARD_SINKS": "file://{sink}," + url} if name == "KERNEL_GUARD_SINKS" else {name: url}
    kernel = _kernel(root, f"ff-env-{route}-{name}", route, env=env)
    try:
        _assert_guarded(kernel)
        reported = _reported(kernel, "config-ignored", name)
        assert reported and "UTF-8" in reported[0]["event"]["reason"], kernel.stderr()[-2000:]
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("route", ["exec_lines", "launcher"])
def test_a_non_utf8_byte_in_a_sink_url_on_the_command_line_leaves_the_kernel_guarded(root: str, route: str) -> None:
    """--KernelGuard.sinks with a raw 0xff in one URL: only that sink is left out."""
    extra = [f"--KernelGuard.sinks=file://{{sink}},http://collector{_FF}:8080/events"]
    kernel = _kernel(root, f"ff-cli-{route}", route, extra=extra)
    try:
        _assert_guarded(kernel)
        reported = _reported(kernel, "config-ignored", "KernelGuard.sinks")
        assert reported and "UTF-8" in reported[0]["event"]["reason"], kernel.stderr()[-2000:]
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("route", ["exec_lines", "--ext", "extensions"])
def test_nul_in_spool_dir_and_in_a_file_sink_path_from_an_operators_file(root: str, route: str) -> None:
    """A NUL in spool_dir and in one file sink's path, in a root-owned file: both are reported
    by name, the other file sink keeps the record, the kernel is guarded."""
    sink = os.path.join(root, f"nul-{route}", "events", "events.jsonl")
    path = _operator_file(root, f"nul-{route}", (
        "c.KernelGuard.spool_dir = '/var/spool/kernel\\0guard'\n"
        f"c.KernelGuard.sinks = ['file://{sink}', 'file:///tmp/events\\0.jsonl', 'file:///tmp/events%00.jsonl']\n"))
    kernel = GuardedKernel(os.path.join(root, f"nul-{route}"), user=NOTEBOOK_USER,
                           argv=_argv(route, [f"--config={path}"])).start()
    try:
        _assert_guarded(kernel)
        spool = _reported(kernel, "config-ignored", "KernelGuard.spool_dir")
        assert spool and "NUL" in spool[0]["event"]["reason"], kernel.stderr()[-2000:]
        assert _reported(kernel, "config-ignored", "KernelGuard.sinks"), kernel.stderr()[-2000:]
        percent = _reported(kernel, "sink-error", "/tmp/events")
        assert percent and "null" in percent[0]["event"]["reason"], kernel.stderr()[-2000:]
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("route", ["exec_lines", "--ext", "extensions"])
def test_huge_numbers_from_an_operators_file_are_reported_and_keep_the_sinks(root: str, route: str) -> None:
    """10**400 in every numeric setting of a root-owned file: each is reported by name, the
    file's sinks stay (one bad value never takes the others with it), the kernel is guarded."""
    label = f"huge-{route}"
    events = os.path.join(root, label, "events")
    extra_sink = os.path.join(events, "operator.jsonl")
    lines = [f"c.KernelGuard.{name} = 10**400" for name in NUMERIC]
    lines.append(f"c.KernelGuard.sinks = ['file://{events}/events.jsonl', 'file://{extra_sink}']")
    path = _operator_file(root, label, "\n".join(lines) + "\n")
    kernel = GuardedKernel(os.path.join(root, label), user=NOTEBOOK_USER, argv=_argv(route, [f"--config={path}"]),
                           env={"KERNEL_GUARD_SINKS": "stderr://"})
    kernel.start()
    try:
        _assert_guarded(kernel)
        for name in NUMERIC:
            assert _reported(kernel, "config-ignored", f"KernelGuard.{name}"), (name, kernel.stderr()[-2000:])
        assert os.path.exists(extra_sink) and os.path.getsize(extra_sink) > 0
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("pattern", [".", "(?s).*"])
def test_a_redaction_pattern_that_blanks_the_record_is_ignored_from_a_user_file(root: str, pattern: str) -> None:
    """redact_patterns that match everything, from the user's own config file: ignored with a
    config-ignored event; commands and code stay in the record."""
    label = f"redact-{abs(hash(pattern)) % 10**6}"
    kernel = GuardedKernel(os.path.join(root, label), user=NOTEBOOK_USER, argv=_argv("exec_lines", []))
    _user_file(kernel, f"c.KernelGuard.redact_patterns = [{pattern!r}]\n")
    kernel.start()
    try:
        _assert_guarded(kernel)
        ignored = _reported(kernel, "config-ignored", "KernelGuard.redact_patterns")
        assert ignored and ignored[0]["kernel_guard"]["files"], kernel.stderr()[-2000:]
        kernel.execute("visible_name = 1")
        cells = _cell_recorded(kernel, "visible_name")
        assert any("visible_name" in e["kernel_guard"].get("code", "") for e in cells), cells[-1:]
    finally:
        kernel.shutdown()


def test_code_policy_none_from_a_user_file_is_ignored(root: str) -> None:
    """code_policy 'none' in the user's own config file: ignored and reported; cells keep their code."""
    kernel = GuardedKernel(os.path.join(root, "code-none"), user=NOTEBOOK_USER, argv=_argv("extensions", []))
    _user_file(kernel, "c.KernelGuard.code_policy = 'none'\n")
    kernel.start()
    try:
        _assert_guarded(kernel)
        ignored = _reported(kernel, "config-ignored", "KernelGuard.code_policy")
        assert ignored and "user-writable" in ignored[0]["event"]["reason"], kernel.stderr()[-2000:]
        kernel.execute("kept_code = 2")
        cells = _cell_recorded(kernel, "kept_code")
        assert any("kept_code" in e["kernel_guard"].get("code", "") for e in cells), cells[-1:]
    finally:
        kernel.shutdown()


def _special_file(folder: str, kind: str) -> str:
    """A FIFO, a character device or a socket the notebook user could open."""
    if kind == "chardev":
        return "/dev/null"
    path = os.path.join(folder, f"special-{kind}")
    if kind == "fifo":
        os.mkfifo(path, 0o666)
    else:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        _SOCKETS.append(server)
    os.chmod(path, 0o666)
    return path


#: listening sockets kept open for the module's kernels
_SOCKETS: List[socket.socket] = []


@pytest.mark.parametrize("route, kind", [("exec_lines", "fifo"), ("launcher", "fifo"), ("--ext", "chardev"),
                                         ("launcher", "chardev"), ("extensions", "socket"),
                                         ("launcher", "socket")])
def test_a_special_file_as_file_sink_is_reported_and_the_other_sinks_keep_working(root: str, route: str,
                                                                                   kind: str) -> None:
    """A FIFO (no reader), a device or a socket as file sink: the kernel starts guarded without
    blocking, a sink-error names it, and the regular file sink keeps recording cells."""
    folder = os.path.join(root, f"special-{route}-{kind}")
    os.makedirs(folder)
    special = _special_file(folder, kind)
    kernel = _kernel(root, f"special-{route}-{kind}/k", route, env={"KERNEL_GUARD_SINKS": f"file://{special},file://{{sink}}"})
    try:
        _assert_guarded(kernel)
        errors = _reported(kernel, "sink-error", special)
        assert errors and "not" in errors[0]["event"]["reason"], kernel.stderr()[-2000:]
        kernel.execute("after_the_bad_sink = 3")
        deadline = time.monotonic() + 15  # the writer's tick, on a loaded machine
        while time.monotonic() < deadline and not any(
                e["kernel_guard"].get("execution_count", 0) >= 2 for e in _reported(kernel, "cell-executed")):
            time.sleep(0.1)
        cells = _reported(kernel, "cell-executed")
        assert cells and cells[-1]["kernel_guard"]["execution_count"] >= 2
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("route", ["exec_lines", "launcher"])
def test_one_bad_sink_url_among_good_ones_keeps_the_good_ones(root: str, route: str) -> None:
    """--KernelGuard.sinks with a bad URL between two files: both files get the record, the bad
    URL is reported by name."""
    label = f"one-bad-{route}"
    second = os.path.join(root, label, "events", "second.jsonl")
    extra = [f"--KernelGuard.sinks=file://{{sink}},ftp://collector/x,file://{second}"]
    kernel = _kernel(root, label, route, extra=extra)
    try:
        _assert_guarded(kernel)
        reported = _reported(kernel, "config-ignored", "KernelGuard.sinks")
        assert reported and "ftp" in reported[0]["kernel_guard"]["value"], kernel.stderr()[-2000:]
        kernel.execute("both_files = 4")
        deadline = time.monotonic() + 10
        while "both_files" not in _text(second) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "both_files" in _text(second) and "both_files" in _text(kernel.sink)
    finally:
        kernel.shutdown()


def _text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""
