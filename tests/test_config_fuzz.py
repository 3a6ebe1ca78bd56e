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
import string
import sys
from typing import Iterator, List, Tuple

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
