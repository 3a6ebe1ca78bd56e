"""The server layer: a jupyter_server extension that starts only guarded kernels.

Loaded as ``kernel_guard.server`` where a deployment enables it
(``ServerApp.jpserver_extensions`` in the server's config, as the image and
the Helm ConfigMap do; installing the package does not, so a laptop's Jupyter
keeps its own kernels), it decides which kernelspecs may start (:mod:`.policy`: the
guarded launcher with a safe path, or ``c.KernelGuardServer.allowed_kernelspecs``,
from a ``kernel.json`` the server's user cannot change), refuses every other
start however it is asked for — ``/api/kernels``, sessions, restarts — where
the kernel manager launches it (:mod:`.kernels`), refuses terminals and, by
policy, downloads (:mod:`.routes`), records the kernel lifecycle with the
user and the notebook, and reports at start-up which hardening settings are
off (:mod:`.report`); its settings are ``c.KernelGuardServer.*``
(:mod:`.settings`).  It guards nothing inside a kernel: a kernel it lets
start is exactly as guarded as its kernelspec's launcher; notebook code
cannot read the server's token (the extension makes the server process
non-dumpable), but a server whose user can change its config files can be
configured without it (the report names such files).

The layers, the path of an event and of an exec, who may write what: docs/architecture.md.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from .. import runtime
from .guard import ServerGuard
from .kernels import KernelHooks
from .report import HardeningReport
from .routes import RouteHooks
from .settings import KernelGuardServer

EXTENSION_NAME = "kernel_guard.server"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """``ServerApp.jpserver_extensions = {"kernel_guard.server": True}`` loads this module."""
    return [{"module": EXTENSION_NAME}]


def _load_jupyter_server_extension(serverapp: Any) -> ServerGuard:
    """Install the server layer on a ServerApp (called once by jupyter_server).

    Order matters: the runtime first, so every later step can record; the
    kernel manager before any route is served; the report last, once the
    IOLoop runs, when every other extension (terminals) has loaded.
    """
    protected = protect_server_process()
    stop_cleanly_on_sigint(serverapp)
    notary = keep_notebook_trust_writable(serverapp)
    if notary:
        serverapp.log.info("kernel_guard: the Jupyter data folder is read-only here; notebook trust "
                           "signatures are kept in %s", notary)
    settings = KernelGuardServer(parent=serverapp)
    rt = runtime.start(serverapp.config)
    guard = ServerGuard(serverapp, settings, rt)
    kernels = KernelHooks(guard)
    kernels.guard_kernel_manager()
    if settings.hide_refused_kernelspecs:
        kernels.guard_kernelspec_listing()
    kernels.listen()
    routes = RouteHooks(guard)
    routes.guard_routes()
    routes.guard_terminals()
    serverapp.io_loop.add_callback(HardeningReport(guard, routes).report)
    serverapp.log.info("kernel_guard: server extension loaded (mode %s)%s", rt.mode,
                       "" if protected else "; the server process could not be made non-dumpable")
    return guard


def keep_notebook_trust_writable(serverapp: Any) -> Optional[str]:
    """Where a deployment points ``JUPYTER_DATA_DIR`` at a read-only folder (so a cell
    cannot plant kernelspecs or nbconvert templates that the server reads), nbformat's
    notary could not write its secret there and every notebook would fail to open:
    keep its secret and signatures in the runtime folder instead.  Returns that
    folder, or None when nothing had to change."""
    from jupyter_core.paths import jupyter_runtime_dir
    from nbformat.sign import NotebookNotary

    from .report import _could_change

    contents = getattr(serverapp, "contents_manager", None)
    notary = getattr(contents, "notary", None)
    if notary is None or _could_change(notary.data_dir):
        return None
    folder = jupyter_runtime_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return None
    contents.notary = NotebookNotary(parent=contents, data_dir=folder)
    return folder


def protect_server_process() -> bool:
    """Make this process non-dumpable: its ``/proc/<pid>`` files (``environ`` with the
    hub's API token, ``mem``) then belong to root, so no process of the same user —
    a kernel — can read them or ptrace it.  Kernels it starts are dumpable again
    after their exec, as usual.  Returns whether it worked."""
    import ctypes

    PR_SET_DUMPABLE = 4
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def stop_cleanly_on_sigint(serverapp: Any) -> bool:
    """Let SIGINT stop the server as SIGTERM does: kernels shut down, and recorded.

    JupyterHub's spawners stop a single-user server with SIGINT.  Without a
    terminal, jupyter_server leaves SIGINT to Python's KeyboardInterrupt, which
    ends the IOLoop without shutting kernels down: they die by their parent
    poller, so no kernel-shutdown or kernel-stopped is ever recorded.  Only a
    SIGINT still at Python's default is taken (on a terminal the server asks to
    confirm).  Returns whether it was taken.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    signal.signal(signal.SIGINT, serverapp._signal_stop)
    return True
