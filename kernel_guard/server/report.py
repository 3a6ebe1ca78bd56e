"""The start-up report: which hardening settings around the extension are off.

Once the server runs (every other extension, terminals too, has loaded), the
report logs, and emits as a ``server-hardening`` event, the settings that
leave a gap the extension cannot close itself — terminals allowed, no idle
culling, ``debug_request`` allowed, a server running as root, kernelspecs
the user can change, no kernelspec that may start, user-writable config
files and start-up folders — each with what to set.  It changes none of them.
"""

from __future__ import annotations

import os
from typing import Optional

from ..config import trusted_file
from ..events.schema import make_event
from .guard import ServerGuard
from .routes import RouteHooks

__all__ = ["HardeningReport", "writable_start_folders"]


def writable_start_folders(ipython: bool = True) -> list[tuple[str, str]]:
    """(variable, folder) for each folder read at start-up that this process's user
    could change: the Jupyter config and data folders, the IPython folder (when
    ``ipython``: launcher kernels use a private one), the user site-packages (where
    this interpreter uses one).  A folder that does not exist yet counts when it
    could be created."""
    import site

    from jupyter_core.paths import jupyter_config_dir, jupyter_data_dir

    try:
        from IPython.paths import get_ipython_dir

        ipython_dir = get_ipython_dir()
    except Exception:
        ipython_dir = os.path.expanduser("~/.ipython")
    folders = [("JUPYTER_CONFIG_DIR", jupyter_config_dir()), ("JUPYTER_DATA_DIR", jupyter_data_dir())]
    if ipython:
        folders.append(("IPYTHONDIR", ipython_dir))
    if site.ENABLE_USER_SITE:  # this interpreter reads it at start (not in a plain venv)
        folders.append(("PYTHONUSERBASE", site.getusersitepackages()))
    return [(name, path) for name, path in folders if _could_change(path)]


def _could_change(path: str) -> bool:
    """Whether this process could write ``path``, or create it in its nearest existing folder."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.access(path, os.W_OK)


class HardeningReport:
    """What is off around the extension, logged and emitted once at start-up."""

    def __init__(self, guard: ServerGuard, routes: RouteHooks) -> None:
        self.guard = guard
        self.routes = routes

    def settings_off(self) -> list[dict[str, str]]:
        """Hardening settings that are off, each with what to set."""
        off: list[dict[str, str]] = []
        guard = self.guard
        app, km = guard.app, guard.km

        def add(setting: str, problem: str, fix: str) -> None:
            off.append({"setting": setting, "problem": problem, "fix": fix})

        terminals = bool(app.web_app.settings.get("terminals_available"))
        if terminals and guard.settings.allow_terminals:
            add("ServerApp.terminals_enabled", "terminals are enabled and allowed (a shell outside every kernel layer)",
                "c.ServerApp.terminals_enabled = False")
        if getattr(km, "cull_idle_timeout", 0) <= 0:
            add("MappingKernelManager.cull_idle_timeout", "idle kernels are never culled",
                "c.MappingKernelManager.cull_idle_timeout = 3600")
        allowed_types = list(getattr(km, "allowed_message_types", []) or [])
        if not allowed_types or "debug_request" in allowed_types:
            add("MappingKernelManager.allowed_message_types",
                "debug_request is allowed (the debugger evaluates code outside run_cell)",
                "list the message types the front end needs, without debug_request")
        if os.geteuid() == 0:
            add("server user", "the server runs as root: kernelspec files cannot be protected from it",
                "run the server as an unprivileged user (singleuser.uid in Zero to JupyterHub)")
        elif not guard.settings.require_protected_kernelspecs:
            add("KernelGuardServer.require_protected_kernelspecs",
                "kernelspecs the user can change may start", "leave it True")
        verdicts = guard.verdicts()
        if not any(v.allowed for v in verdicts):
            add("kernelspecs", "no installed kernelspec may start", "run `kernel-guard install-kernelspec`")
        for name in self._imports_from_working_folder(verdicts):
            add(f"kernelspec {name}", "its kernels import from their working folder first (python without -P "
                "or -I, and no PYTHONSAFEPATH): a kernel_guard/ folder next to a notebook replaces the guard",
                "add -P to its argv, or PYTHONSAFEPATH=1 to the server's environment")
        for verdict in verdicts:
            if verdict.allowed and not verdict.guarded:
                add(f"kernelspec {verdict.name}", "may start without the OS layers (no launcher): IPython config "
                    "files in the user's profile run before the guard, and cffi, ctypes or a raw system call "
                    "start programs", "allow only the launcher kernelspec (kernel-guard install-kernelspec, or "
                    "mount it as examples/helm/configmap-values.yaml does)")
            if verdict.allowed and self._spec_mode(verdict.name) == "audit":
                add(f"kernelspec {verdict.name}", "runs the launcher with an audit profile: records, does not refuse",
                    "install it with the default profile")
        default = (km.default_kernel_name or "").lower()
        if default and not any(v.allowed and v.name == default for v in verdicts):
            add("MappingKernelManager.default_kernel_name",
                f"the default kernel '{default}' is refused, so 'New notebook' fails",
                "install the guarded kernelspec as python3 or set default_kernel_name")
        # launcher kernels read a private IPython folder; other kernels read the user's
        plain_kernels = any(v.allowed and not v.guarded for v in verdicts)
        for variable, folder in writable_start_folders(ipython=plain_kernels):
            add(f"${variable}", f"{folder} is read at every server or kernel start and the notebook user can "
                "write it: a cell (home is one of the kernel's writable roots) can plant code there",
                f"point {variable} at a root-owned folder (singleuser.extraEnv, as examples/helm does) "
                "or mount it read-only")
        user_files = [path for path in getattr(app, "loaded_config_files", []) if not trusted_file(path)]
        if user_files:
            add("config files", "the server loaded config files its user can change, which can disable "
                "this extension: " + ", ".join(user_files),
                "set Spawner.disable_user_config = True in JupyterHub, keep config root-owned")
        return off

    def _imports_from_working_folder(self, verdicts: list) -> list[str]:
        """Allowed kernelspecs (by name: guarded ones start isolated) whose Python puts
        the working folder first on sys.path."""
        names = []
        for verdict in verdicts:
            if not verdict.allowed or verdict.guarded:
                continue
            try:
                spec = self.guard.ksm.get_kernel_spec(verdict.name)
            except Exception:
                continue
            argv, env = list(spec.argv or []), dict(spec.env or {})
            flags = [a for a in argv[1:3] if a.startswith("-") and not a.startswith("--")]
            safe = any("P" in f or "I" in f for f in flags) or env.get("PYTHONSAFEPATH") \
                or os.environ.get("PYTHONSAFEPATH")
            if "python" in os.path.basename(argv[0] if argv else "") and not safe:
                names.append(verdict.name)
        return names

    def _spec_mode(self, name: str) -> Optional[str]:
        """The mode a kernelspec's metadata states (informational: never grants a start)."""
        try:
            metadata = self.guard.ksm.get_kernel_spec(name).metadata or {}
        except Exception:
            return None
        guard = metadata.get("kernel_guard")
        return guard.get("mode") if isinstance(guard, dict) else None

    def report(self) -> None:
        """Log and emit what is off; change nothing."""
        guard = self.guard
        self.routes.guard_terminals()  # an extension that loaded after us may have added terminals
        off = self.settings_off()
        verdicts = guard.verdicts()
        fields = dict(settings_off=off, kernelspecs={v.name: v.reason for v in verdicts},
                      allowed_kernelspecs=[v.name for v in verdicts if v.allowed],
                      terminals=("allowed" if guard.settings.allow_terminals else "refused")
                      if guard.app.web_app.settings.get("terminals_available") else "disabled",
                      downloads=guard.settings.downloads)
        if off:
            summary = "; ".join(f"{item['setting']}: {item['problem']}" for item in off)
            guard.app.log.warning("kernel_guard: hardening settings that are off: %s", summary)
            event = make_event("server-hardening", outcome="failure", layer="server", kind="state",
                               reason=f"{len(off)} hardening settings are off: {summary}", **fields)
        else:
            guard.app.log.info("kernel_guard: server hardening settings are all on")
            event = make_event("server-hardening", outcome="success", layer="server", kind="state",
                               reason="all hardening settings are on", **fields)
        guard.runtime.emit(event)
        guard.app.log.info("kernel_guard: kernels that may start: %s",
                           ", ".join(fields["allowed_kernelspecs"]) or "none")
