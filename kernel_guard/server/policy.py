"""The server layer: a jupyter_server extension that starts only guarded kernels.

``KernelSpecManager.allowed_kernelspecs`` only filters *listings*: notebook code
holds the server's token and can ``POST /api/kernels {"name": "python3"}`` for
any installed kernelspec.  This extension refuses such starts where every path
into the kernel manager passes:

1. ``MappingKernelManager.start_kernel`` (``/api/kernels``, ``/api/sessions``,
   anything else in the server) checks the named kernelspec first and answers
   ``403`` with the names of the kernelspecs that may start;
2. every per-kernel ``KernelManager`` checks the spec it is about to launch in
   ``format_kernel_cmd``, the last step before ``Popen``: this covers restarts
   (also the automatic restart of a dead kernel) and closes the window between
   the check in 1. and the launch.

A kernelspec may start when it is *guarded* — its argv is
``[python, -P|-I, -m, kernel_guard.launch, ...]``, or the same without the
flag and ``PYTHONSAFEPATH=1`` in its ``env`` — or named in
``c.KernelGuardServer.allowed_kernelspecs``; and, in both cases, when its
``kernel.json`` is a file the server's user cannot change.  The last condition
matters: Jupyter looks for kernelspecs in the user's own data directory
(``~/.local/share/jupyter/kernels``) *first*, so a user can shadow the
admin's ``python3`` with a ``kernel.json`` whose argv or
``metadata.kernel_guard`` merely looks guarded.  The metadata is never
trusted for that reason; and without ``-P``/``-I`` ``python -m`` puts the
kernel's working directory (the user's notebook folder) first on
``sys.path``, where a ``kernel_guard/`` folder would replace the launcher.
A kernelspec ``env`` that sets loader variables (``PYTHONPATH``,
``LD_PRELOAD`` ...) is refused too.

It also records, as events of layer ``server`` with the requesting user, the
kernel name and id and the notebook path: the kernel lifecycle from
jupyter_server's own event bus (start, restart, interrupt, shutdown, and
shutdowns by the idle culler as ``kernel-culled``), terminal creation
(refused unless ``allow_terminals``), and by policy file downloads and
contents API actions.  At start-up it reports, in the log and as an event,
which hardening settings are off — without changing any of them.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from tornado import web
from traitlets import Bool, Enum, List, TraitError, Unicode, validate
from traitlets.config import Configurable

from . import runtime
from .config import trusted_file
from .events import Event, make_event

__all__ = [
    "KernelGuardServer",
    "KernelRefused",
    "Verdict",
    "assess_kernelspec",
    "is_launcher_argv",
    "user_name",
    "writable_by",
]

EXTENSION_NAME = "kernel_guard.server"
LAUNCH_MODULE = "kernel_guard.launch"
KERNEL_ACTIONS_SCHEMA = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CONTENTS_SCHEMA = "https://events.jupyter.org/jupyter_server/contents_service/v1"

#: interpreter options that may stand between ``python`` and ``-m``
_PYTHON_FLAGS = re.compile(r"^-[IPsEBuOqd]+$")
#: options that keep the working directory off ``sys.path`` for ``-m``
_SAFE_PATH_FLAGS = ("I", "P")
_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)?)?$")
NOT_INSTALLED = "is not installed"
_KERNEL_NAME = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)

#: environment variables a kernelspec must not set: they change what the
#: launcher imports, loads or reads as configuration
_LOADER_ENV = re.compile(
    r"^(LD_|DYLD_)|^(PYTHONPATH|PYTHONHOME|PYTHONSTARTUP|PYTHONUSERBASE|PYTHONINSPECT|PYTHONPLATLIBDIR"
    r"|PYTHONEXECUTABLE|GCONV_PATH|IPYTHONDIR|IPYTHON_DIR|JUPYTER_PATH|JUPYTER_CONFIG_DIR|JUPYTER_CONFIG_PATH)$"
)

log = logging.getLogger(__name__)


# -- settings -----------------------------------------------------------------

class KernelGuardServer(Configurable):
    """What the server extension allows and records (``c.KernelGuardServer.*``)."""

    allowed_kernelspecs = List(
        Unicode(),
        help="""Names of kernelspecs that may start although their argv does not
        run ``python -P -m kernel_guard.launch`` (or ``python -m kernel_guard.launch``
        with PYTHONSAFEPATH=1 in the kernelspec's env; for example a kernelspec that
        loads only the IPython layer with ``--ext=kernel_guard``). Guarded
        kernelspecs need no entry. Their kernel.json must still be a file the
        server's user cannot change (see require_protected_kernelspecs).""",
    ).tag(config=True)

    @validate("allowed_kernelspecs")
    def _validate_names(self, proposal: Any) -> list[str]:
        for name in proposal["value"]:
            if not _KERNEL_NAME.match(name):
                raise TraitError(
                    f"KernelGuardServer.allowed_kernelspecs entry {name!r} is not a kernelspec "
                    "name (letters, digits, '.', '_' and '-')"
                )
        return [name.lower() for name in proposal["value"]]

    require_protected_kernelspecs = Bool(
        True,
        help="""Start a kernelspec only when its kernel.json, the folders above it
        and its interpreter cannot be changed by the server's user (not owned by
        it, not group- or world-writable). Stops a user from shadowing the
        admin's kernelspec from
        ~/.local/share/jupyter/kernels. Not checked when the server runs as root
        (root can change any file; the start-up report says so). Setting it to
        False weakens the guard.""",
    ).tag(config=True)

    allow_terminals = Bool(
        False,
        help="""Let users open terminals when ServerApp.terminals_enabled is on.
        By default the extension refuses terminal creation (403) and records the
        attempt: a terminal is a shell outside every kernel layer.""",
    ).tag(config=True)

    downloads = Enum(
        ["allow", "record", "refuse"],
        default_value="allow",
        help="""File downloads through /files/ and /nbconvert/ (the browser's
        Download and Export routes): ``allow``, ``record`` (a file-download
        event per request), or ``refuse`` (403, recorded). A deterrent and an
        audit trail, not a boundary: code in a kernel can read what the user
        can read.""",
    ).tag(config=True)

    record_contents = Bool(
        False,
        help="""Record every contents API action (get, save, upload, rename, copy,
        delete) from jupyter_server's contents_service events, with the user.""",
    ).tag(config=True)

    hide_refused_kernelspecs = Bool(
        True,
        help="""Leave kernelspecs that would be refused out of /api/kernelspecs,
        so the launcher shows only kernels that start.""",
    ).tag(config=True)


# -- which kernelspecs may start (pure functions) ------------------------------

@dataclass(frozen=True)
class Verdict:
    """Whether one kernelspec may start, and why."""

    name: str
    allowed: bool
    guarded: bool
    reason: str


def is_launcher_argv(argv: Iterable[str], env: Optional[dict[str, str]] = None) -> bool:
    """True if argv is ``[python, <flags>, -m, kernel_guard.launch, ...]`` with a safe path.

    Without ``-P``/``-I`` in the flags, or ``PYTHONSAFEPATH`` in the
    kernelspec's ``env`` (Python 3.11+), ``python -m`` puts the working
    directory first on ``sys.path``.
    """
    argv = list(argv)
    safe_env = bool((env or {}).get("PYTHONSAFEPATH"))
    if not argv or not _PYTHON_NAME.match(os.path.basename(argv[0])):
        return False
    flags: list[str] = []
    rest = argv[1:]
    while rest and _PYTHON_FLAGS.match(rest[0]):
        flags.append(rest.pop(0))
    safe_flag = any(letter in flag for flag in flags for letter in _SAFE_PATH_FLAGS)
    return len(rest) >= 2 and rest[0] == "-m" and rest[1] == LAUNCH_MODULE and (safe_flag or safe_env)


def _runs_launcher_unsafely(argv: list[str], env: dict[str, str]) -> bool:
    """``python -m kernel_guard.launch`` without a safe path: looks guarded but is not."""
    return LAUNCH_MODULE in argv and not is_launcher_argv(argv, env)


def writable_by(path: str, euid: int, groups: Iterable[int]) -> bool:
    """Whether a process with ``euid`` and ``groups`` could change ``path``."""
    st = os.stat(path)
    if euid == 0 or st.st_uid == euid:
        return True
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and st.st_gid in set(groups)


def _chain_problem(path: str, euid: int, groups: list[int]) -> Optional[str]:
    """Why ``path`` or a folder above it can be changed by ``euid`` (None if none can).

    A writable folder anywhere above lets its owner rename the subtree and put
    another in its place, unless the folder is sticky (``/tmp``) and the entry
    in it belongs to someone else.
    """
    path = os.path.abspath(path)
    child: Optional[str] = None
    while True:
        try:
            if writable_by(path, euid, groups):
                st = os.stat(path)
                sticky_protects = (child is not None and st.st_mode & stat.S_ISVTX
                                   and os.lstat(child).st_uid != euid and st.st_uid != euid)
                if not sticky_protects:
                    return f"{path} can be changed by the server's user"
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        parent = os.path.dirname(path)
        if parent == path:
            return None
        child, path = path, parent


def _protection_problem(resource_dir: str, argv: list[str], euid: int, groups: Iterable[int]) -> Optional[str]:
    """Why the kernelspec's files or interpreter are not protected from ``euid``."""
    groups = list(groups)
    paths = [os.path.join(resource_dir, "kernel.json")]
    if argv and os.path.isabs(argv[0]):
        paths += [argv[0], os.path.realpath(argv[0])]
    for path in dict.fromkeys(paths):
        problem = _chain_problem(path, euid, groups)
        if problem:
            return problem
    return None


def assess_kernelspec(
    name: str,
    argv: list[str],
    env: dict[str, str],
    resource_dir: Optional[str],
    allowed_names: Iterable[str] = (),
    require_protected: bool = True,
    euid: Optional[int] = None,
    groups: Optional[Iterable[int]] = None,
) -> Verdict:
    """Decide whether the kernelspec ``name`` may start."""
    name = name.lower()
    guarded = is_launcher_argv(argv, env)
    listed = name in set(allowed_names)
    if not guarded and not listed:
        if _runs_launcher_unsafely(argv, env):
            why = ("runs kernel_guard.launch without -P, -I or PYTHONSAFEPATH, so a kernel_guard "
                   "folder next to the notebook would replace the launcher")
        else:
            why = "does not run the kernel_guard launcher and is not in KernelGuardServer.allowed_kernelspecs"
        return Verdict(name, False, False, why)
    loader_vars = sorted(key for key in env if _LOADER_ENV.search(key))
    if loader_vars:
        return Verdict(name, False, guarded, f"sets {', '.join(loader_vars)} in its env, which changes what it loads")
    euid = os.geteuid() if euid is None else euid
    if require_protected and euid != 0:
        if not resource_dir:
            return Verdict(name, False, guarded, "has no kernel.json on disk to check")
        problem = _protection_problem(resource_dir, argv, euid, os.getgroups() if groups is None else groups)
        if problem:
            return Verdict(name, False, guarded, problem)
    return Verdict(name, True, guarded, "guarded launcher" if guarded else "in KernelGuardServer.allowed_kernelspecs")


# -- refusals -------------------------------------------------------------------

class KernelRefused(web.HTTPError):
    """A kernel start refused by kernel_guard: answered as 403 with a message."""

    def __init__(self, message: str) -> None:
        # no % formatting: APIHandler sends log_message as is
        super().__init__(403, message.replace("%", "%%"), reason="Forbidden by kernel_guard")
        self.message = message


def _refusal_in(exc: BaseException) -> Optional[KernelRefused]:
    """The KernelRefused that caused ``exc`` (a handler's 500 wraps it)."""
    seen: set[int] = set()
    node: Optional[BaseException] = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, KernelRefused):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None


#: set while the idle culler shuts a kernel down, so the shutdown reads as "culled"
_CULLING: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("kernel_guard_culling", default=None)
#: the notebook path of a kernel being started (kernel_actions events carry none)
_STARTING: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("kernel_guard_starting", default=None)


def _current_handler() -> Any:
    """The request handler of this call, through jupyter_server's CallContext."""
    try:
        from jupyter_server.base.call_context import CallContext

        return CallContext.get(CallContext.JUPYTER_HANDLER)
    except Exception:
        return None


def user_name(handler: Any) -> Optional[str]:
    """Who made the request, as the server knows them.

    Behind JupyterHub the identity provider names the hub user (or the admin
    using the server); jupyter_server's own token/password provider has one
    owner and invents an anonymous name per browser session, so there the
    server's owner is named instead: ``JUPYTERHUB_USER``, else (by the
    runtime's context) the OS user.
    """
    user = getattr(handler, "current_user", None) if handler is not None else None
    name = getattr(user, "username", None) or (user if isinstance(user, str) else None)
    if name and not _owner_only(getattr(handler, "identity_provider", None)):
        return str(name)
    return os.environ.get("JUPYTERHUB_USER") or None


def _owner_only(provider: Any) -> bool:
    """jupyter_server's built-in token/password identity: no real user names."""
    try:
        from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider
    except ImportError:
        return True
    return provider is None or type(provider) is IdentityProvider or isinstance(provider, PasswordIdentityProvider)


def _request_fields() -> dict[str, Any]:
    """user.name and source.ip of the current request, when there is one."""
    handler = _current_handler()
    fields: dict[str, Any] = {}
    name = user_name(handler)
    if name:
        fields["user"] = {"name": name}
    request = getattr(handler, "request", None)
    if request is not None and getattr(request, "remote_ip", None):
        fields["source"] = {"ip": request.remote_ip}
    return fields


# -- the extension ---------------------------------------------------------------

_ACTION_TYPES = {"start": ["start"], "restart": ["change"], "interrupt": ["change"],
                 "shutdown": ["end"], "culled": ["end"]}


class ServerGuard:
    """The extension's state in one ServerApp."""

    def __init__(self, serverapp: Any, settings: KernelGuardServer, rt: runtime.Runtime) -> None:
        self.app = serverapp
        self.settings = settings
        self.runtime = rt
        self.km = serverapp.kernel_manager
        self.ksm = serverapp.kernel_spec_manager
        self.notebooks: dict[str, str] = {}
        self.terminals_guarded = False

    # events ---------------------------------------------------------------
    @property
    def enforcing(self) -> bool:
        return self.runtime.mode == "enforce"

    def emit(self, action: str, outcome: str, reason: str, types: Optional[list[str]] = None,
             category: Optional[list[str]] = None, file_path: Optional[str] = None, **fields: Any) -> Event:
        """Build, enrich with the request's user, and emit one server event."""
        event = make_event(action, outcome=outcome, layer="server", reason=reason,
                           **{k: v for k, v in fields.items() if v is not None})
        if types:
            event["event"]["type"] = types
        if category:
            event["event"]["category"] = category
        if file_path is not None:
            event["file"] = {"path": file_path}
        event.update(_request_fields())
        self.runtime.emit(event)
        return event

    # which kernelspecs ----------------------------------------------------------
    def assess(self, name: str, spec: Any) -> Verdict:
        return assess_kernelspec(
            name, list(getattr(spec, "argv", []) or []), dict(getattr(spec, "env", {}) or {}),
            getattr(spec, "resource_dir", None), self.settings.allowed_kernelspecs,
            self.settings.require_protected_kernelspecs,
        )

    def assess_name(self, name: str) -> Verdict:
        from jupyter_client.kernelspec import NoSuchKernel

        try:
            spec = self.ksm.get_kernel_spec(name)
        except NoSuchKernel:
            return Verdict(name, False, False, NOT_INSTALLED)
        except Exception as exc:
            return Verdict(name, False, False, f"cannot be read: {exc}")
        return self.assess(name, spec)

    def verdicts(self) -> list[Verdict]:
        """A verdict for every installed kernelspec, by name."""
        try:
            names = sorted(self.ksm.find_kernel_specs())
        except Exception:
            names = []
        return [self.assess_name(name) for name in names]

    def allowed_names(self) -> list[str]:
        return [v.name for v in self.verdicts() if v.allowed]

    def refusal_message(self, verdict: Verdict) -> str:
        allowed = self.allowed_names()
        choice = (f"This server starts only: {', '.join(allowed)}." if allowed else
                  "No allowed kernelspec is installed: install one with `kernel-guard install-kernelspec`.")
        return f"kernel_guard: the kernel '{verdict.name}' may not start here: it {verdict.reason}. {choice}"

    def check(self, verdict: Verdict, route: str, notebook: Optional[str], kernel_id: Optional[str] = None) -> None:
        """Refuse (raise KernelRefused) or, in audit mode, record and allow."""
        if verdict.allowed or verdict.reason == NOT_INSTALLED:
            return  # nothing to start: jupyter_server answers "no such kernel" as usual
        message = self.refusal_message(verdict)
        # target keeps refusals for different notebooks apart when repeats are aggregated
        target = f"kernelspec {verdict.name}" + (f" for {notebook}" if notebook else "")
        fields = dict(kernel_name=verdict.name, notebook=notebook, kernel_id=kernel_id, route=route,
                      allowed_kernelspecs=self.allowed_names(), technique="unguarded-kernelspec",
                      target=target)
        if not self.enforcing:
            self.emit("kernel-unguarded", "unknown", "audit mode: recorded, not refused: " + message,
                      types=["start", "allowed"], **fields)
            return
        self.emit("kernel-refused", "failure", message, types=["start", "denied"], **fields)
        self.app.log.warning("%s", message)
        raise KernelRefused(message)

    # the kernel manager ------------------------------------------------------------
    def guard_kernel_manager(self) -> None:
        """Wrap start, restart and culling of the MappingKernelManager instance."""
        km = self.km
        start, restart, cull = km.start_kernel, km.restart_kernel, km.cull_kernel_if_idle
        guard = self

        async def start_kernel(*args: Any, **kwargs: Any) -> str:
            kernel_id = kwargs.get("kernel_id")
            if kernel_id is not None and kernel_id in km:
                return await _await(start(*args, **kwargs))  # an existing kernel: nothing starts
            name = kwargs.get("kernel_name") or (args[0] if args else None) or km.default_kernel_name
            env = kwargs.get("env") or {}
            notebook = guard.api_path(env.get("JPY_SESSION_NAME")) if isinstance(env, dict) else None
            guard.check(guard.assess_name(name), "start", notebook)
            token = _STARTING.set({"notebook": notebook, "kernel_name": name})
            try:
                new_id = await _await(start(*args, **kwargs))
            finally:
                _STARTING.reset(token)
            if notebook:
                guard.notebooks[new_id] = notebook
            return new_id

        async def restart_kernel(kernel_id: str, *args: Any, **kwargs: Any) -> Any:
            try:
                manager = km.get_kernel(kernel_id)
            except KeyError:
                manager = None
            if manager is not None:
                guard.check(guard.assess(manager.kernel_name, manager.kernel_spec), "restart",
                            guard.notebook_of(kernel_id), kernel_id)
            return await _await(restart(kernel_id, *args, **kwargs))

        async def cull_kernel_if_idle(kernel_id: str) -> Any:
            token = _CULLING.set(kernel_id)
            try:
                return await _await(cull(kernel_id))
            finally:
                _CULLING.reset(token)

        km.start_kernel = start_kernel
        km.restart_kernel = restart_kernel
        km.cull_kernel_if_idle = cull_kernel_if_idle
        self._guard_factory()

    def _guard_factory(self) -> None:
        """Every per-kernel manager checks the spec it launches, at every (re)start."""
        km, guard = self.km, self
        factory = km.kernel_manager_factory

        def kernel_manager_factory(*args: Any, **kwargs: Any) -> Any:
            manager = factory(*args, **kwargs)
            format_cmd = manager.format_kernel_cmd

            def format_kernel_cmd(extra_arguments: Optional[list[str]] = None) -> list[str]:
                # the spec object checked here is the one whose argv is launched
                guard.check(guard.assess(manager.kernel_name, manager.kernel_spec), "launch",
                            guard.notebook_of(manager.kernel_id), manager.kernel_id)
                return format_cmd(extra_arguments=extra_arguments)

            manager.format_kernel_cmd = format_kernel_cmd
            return manager

        km.kernel_manager_factory = kernel_manager_factory

    def api_path(self, path: Optional[str]) -> Optional[str]:
        """A session path as the user sees it: relative to the server's root.

        jupyter_server puts an absolute OS path in ``JPY_SESSION_NAME`` when the
        front end names the session's file (JupyterLab does); server events use
        the API path, as the session table and the UI do.
        """
        if not path or not os.path.isabs(path):
            return path
        root = os.path.abspath(getattr(self.km, "root_dir", "") or "")
        if root and path.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(path, root).replace(os.sep, "/")
        return path

    def notebook_of(self, kernel_id: Optional[str]) -> Optional[str]:
        """The session path of a kernel (the session table, else what start saw)."""
        if not kernel_id:
            return None
        try:
            cursor = self.app.session_manager.cursor
            row = cursor.execute("SELECT path FROM session WHERE kernel_id=?", (kernel_id,)).fetchone()
            if row and row[0]:
                self.notebooks[kernel_id] = row[0]
        except Exception:
            pass  # another SessionManager: fall back to what start saw
        return self.notebooks.get(kernel_id)

    def guard_kernelspec_listing(self) -> None:
        """Leave refused kernelspecs out of /api/kernelspecs."""
        ksm, guard = self.ksm, self
        get_all = ksm.get_all_specs

        def keep(specs: dict) -> dict:
            allowed = set(guard.allowed_names())
            return {name: spec for name, spec in specs.items() if name.lower() in allowed}

        def get_all_specs() -> Any:
            specs = get_all()
            if inspect.isawaitable(specs):
                async def later() -> dict:
                    return keep(await specs)
                return later()
            return keep(specs)

        ksm.get_all_specs = get_all_specs

    # jupyter_server's events --------------------------------------------------------
    async def on_kernel_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """kernel_actions/v1 -> kernel-start, -restart, -interrupt, -shutdown, -culled."""
        action = data.get("action", "")
        kernel_id = data.get("kernel_id")
        starting = _STARTING.get() or {}
        if action == "shutdown" and _CULLING.get() == kernel_id:
            action = "culled"
        notebook = self.notebook_of(kernel_id) or starting.get("notebook")
        ok = data.get("status") == "success"
        self.emit(f"kernel-{action}", "success" if ok else "failure", data.get("msg") or action,
                  types=_ACTION_TYPES.get(action, ["info"]), kernel_id=kernel_id,
                  kernel_name=data.get("kernel_name"), notebook=notebook,
                  status_code=data.get("status_code"))
        if action in ("shutdown", "culled") and ok and kernel_id:
            self.notebooks.pop(kernel_id, None)

    async def on_contents_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """contents_service/v1 -> contents-<action> (when record_contents is on)."""
        self.emit(f"contents-{data.get('action')}", "success", f"contents API {data.get('action')}",
                  category=["file"], types=["access"], file_path=data.get("path"),
                  source_path=data.get("source_path"))

    def listen(self) -> None:
        logger = getattr(self.app, "event_logger", None)
        if logger is None:
            return
        logger.add_listener(schema_id=KERNEL_ACTIONS_SCHEMA, listener=self.on_kernel_action)
        if self.settings.record_contents:
            logger.add_listener(schema_id=CONTENTS_SCHEMA, listener=self.on_contents_action)

    # terminals ---------------------------------------------------------------------
    def guard_terminals(self) -> None:
        """Refuse (and record) terminal creation unless allow_terminals."""
        manager = self.app.web_app.settings.get("terminal_manager")
        if manager is None or self.terminals_guarded:
            return
        self.terminals_guarded = True
        guard = self
        for method in ("new_named_terminal", "new_terminal"):
            original = getattr(manager, method, None)
            if original is None:
                continue

            def guarded(*args: Any, __original: Callable[..., Any] = original, **kwargs: Any) -> Any:
                guard.terminal_attempt()
                return __original(*args, **kwargs)

            setattr(manager, method, guarded)

    def terminal_attempt(self) -> None:
        fields = dict(category=["process"], technique="terminal")
        if self.settings.allow_terminals:
            self.emit("terminal-created", "success", "terminal opened (KernelGuardServer.allow_terminals)",
                      types=["start", "allowed"], **fields)
            return
        message = ("kernel_guard: terminals are disabled on this server. "
                   "Use a notebook instead, or ask your administrator.")
        if not self.enforcing:
            self.emit("terminal-created", "unknown", "audit mode: recorded, not refused: " + message,
                      types=["start", "allowed"], **fields)
            return
        self.emit("terminal-refused", "failure", message, types=["start", "denied"], **fields)
        raise web.HTTPError(403, message, reason="Forbidden by kernel_guard")

    # downloads -----------------------------------------------------------------------
    def download(self, route: str, path: str) -> None:
        """Record or refuse one download, by policy."""
        policy = self.settings.downloads
        if policy == "allow":
            return
        fields = dict(category=["file"], route=route, file_path=path, technique="download")
        if policy == "refuse" and self.enforcing:
            message = f"kernel_guard: downloading files is disabled on this server ({path})."
            self.emit("file-download-refused", "failure", message, types=["access", "denied"], **fields)
            raise web.HTTPError(403, message, reason="Forbidden by kernel_guard")
        self.emit("file-download", "success", f"download of {path} through {route}",
                  types=["access"], **fields)

    # routes -----------------------------------------------------------------------------
    def guard_routes(self) -> None:
        """Answer refusals as 403 where a handler would turn them into a 500/501."""
        from jupyter_server.services.kernels.handlers import KernelActionHandler
        from jupyter_server.services.sessions.handlers import SessionHandler, SessionRootHandler

        replacements: dict[type, type] = {
            SessionRootHandler: _refusals_as_403(SessionRootHandler, ("post",)),
            KernelActionHandler: _refusals_as_403(KernelActionHandler, ("post",)),
            SessionHandler: _session_patch_checked(SessionHandler),
        }
        if self.settings.downloads != "allow":
            from jupyter_server.base.handlers import AuthenticatedFileHandler
            from jupyter_server.files.handlers import FilesHandler
            from jupyter_server.nbconvert.handlers import NbconvertFileHandler

            files_classes = {FilesHandler, AuthenticatedFileHandler,
                             getattr(self.app.contents_manager, "files_handler_class", None)}
            for cls in files_classes - {None}:
                replacements[cls] = _download_checked(cls, "files")
            replacements[NbconvertFileHandler] = _download_checked(NbconvertFileHandler, "nbconvert")
        web_app = self.app.web_app
        web_app.settings["kernel_guard"] = self
        for router in (web_app.default_router, web_app.wildcard_router):
            _replace_targets(router, replacements)

    # the start-up report ---------------------------------------------------------------
    def hardening_report(self) -> list[dict[str, str]]:
        """Hardening settings that are off, each with what to set."""
        off: list[dict[str, str]] = []
        app, km = self.app, self.km

        def add(setting: str, problem: str, fix: str) -> None:
            off.append({"setting": setting, "problem": problem, "fix": fix})

        terminals = bool(app.web_app.settings.get("terminals_available"))
        if terminals and self.settings.allow_terminals:
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
        elif not self.settings.require_protected_kernelspecs:
            add("KernelGuardServer.require_protected_kernelspecs",
                "kernelspecs the user can change may start", "leave it True")
        verdicts = self.verdicts()
        if not any(v.allowed for v in verdicts):
            add("kernelspecs", "no installed kernelspec may start", "run `kernel-guard install-kernelspec`")
        for verdict in verdicts:
            if verdict.allowed and self._spec_mode(verdict.name) == "audit":
                add(f"kernelspec {verdict.name}", "runs the launcher with an audit profile: records, does not refuse",
                    "install it with the default profile")
        default = (km.default_kernel_name or "").lower()
        if default and not any(v.allowed and v.name == default for v in verdicts):
            add("MappingKernelManager.default_kernel_name",
                f"the default kernel '{default}' is refused, so 'New notebook' fails",
                "install the guarded kernelspec as python3 or set default_kernel_name")
        user_files = [path for path in getattr(app, "loaded_config_files", []) if not trusted_file(path)]
        if user_files:
            add("config files", "the server loaded config files its user can change, which can disable "
                "this extension: " + ", ".join(user_files),
                "set Spawner.disable_user_config = True in JupyterHub, keep config root-owned")
        return off

    def _spec_mode(self, name: str) -> Optional[str]:
        """The mode a kernelspec's metadata states (informational: never grants a start)."""
        try:
            metadata = self.ksm.get_kernel_spec(name).metadata or {}
        except Exception:
            return None
        guard = metadata.get("kernel_guard")
        return guard.get("mode") if isinstance(guard, dict) else None

    def report(self) -> None:
        """Log and emit what is off; change nothing."""
        self.guard_terminals()  # an extension that loaded after us may have added terminals
        off = self.hardening_report()
        verdicts = self.verdicts()
        fields = dict(settings_off=off, kernelspecs={v.name: v.reason for v in verdicts},
                      allowed_kernelspecs=[v.name for v in verdicts if v.allowed],
                      terminals=("allowed" if self.settings.allow_terminals else "refused")
                      if self.app.web_app.settings.get("terminals_available") else "disabled",
                      downloads=self.settings.downloads)
        if off:
            summary = "; ".join(f"{item['setting']}: {item['problem']}" for item in off)
            self.app.log.warning("kernel_guard: hardening settings that are off: %s", summary)
            event = make_event("server-hardening", outcome="failure", layer="server", kind="state",
                               reason=f"{len(off)} hardening settings are off: {summary}", **fields)
        else:
            self.app.log.info("kernel_guard: server hardening settings are all on")
            event = make_event("server-hardening", outcome="success", layer="server", kind="state",
                               reason="all hardening settings are on", **fields)
        event["event"]["category"], event["event"]["type"] = ["configuration"], ["info"]
        self.runtime.emit(event)
        self.app.log.info("kernel_guard: kernels that may start: %s",
                          ", ".join(fields["allowed_kernelspecs"]) or "none")


async def _await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# -- handler subclasses -------------------------------------------------------------

def _refusals_as_403(cls: type, methods: tuple[str, ...]) -> type:
    """``cls`` whose methods re-raise a wrapped KernelRefused as itself (403)."""
    namespace: dict[str, Any] = {}
    for name in methods:
        original = getattr(cls, name)

        async def method(self: Any, *args: Any, __original: Callable[..., Any] = original, **kwargs: Any) -> None:
            try:
                await _await(__original(self, *args, **kwargs))
            except web.HTTPError as exc:
                refusal = _refusal_in(exc)
                if refusal is None or refusal is exc:
                    raise
                raise refusal from None

        method.__name__ = name
        namespace[name] = method
    return type(cls.__name__, (cls,), namespace)


def _session_patch_checked(cls: type) -> type:
    """SessionHandler whose PATCH to another kernelspec is checked first (403)."""
    from jupyter_server.auth.decorator import authorized

    original = cls.patch

    @web.authenticated
    @authorized
    async def patch(self: Any, session_id: str) -> None:
        guard: Optional[ServerGuard] = self.settings.get("kernel_guard")
        model = self.get_json_body() or {}
        kernel = model.get("kernel") if isinstance(model, dict) else None
        if guard is not None and isinstance(kernel, dict) and kernel.get("id") is None and kernel.get("name"):
            notebook = model.get("path")
            if not notebook:
                try:
                    row = guard.app.session_manager.cursor.execute(
                        "SELECT path FROM session WHERE session_id=?", (session_id,)).fetchone()
                    notebook = row[0] if row else None
                except Exception:
                    notebook = None
            guard.check(guard.assess_name(kernel["name"]), "api/sessions", notebook)
        await _await(original(self, session_id))

    return type(cls.__name__, (cls,), {"patch": patch})


def _download_checked(cls: type, route: str) -> type:
    """A download handler that records or refuses by KernelGuardServer.downloads."""
    original_get = cls.get

    async def get(self: Any, *args: Any, **kwargs: Any) -> None:
        guard: Optional[ServerGuard] = self.settings.get("kernel_guard")
        if guard is not None and self.current_user:
            guard.download(route, str(args[-1]) if args else "")
        await _await(original_get(self, *args, **kwargs))

    return type(cls.__name__, (cls,), {"get": get})


def _replace_targets(router: Any, replacements: dict[type, type]) -> None:
    """Swap handler classes in a tornado router (and the routers inside it)."""
    for rule in getattr(router, "rules", []):
        target = rule.target
        if isinstance(target, type) and target in replacements:
            rule.target = replacements[target]
        elif hasattr(target, "rules"):
            _replace_targets(target, replacements)


# -- jupyter_server entry points --------------------------------------------------------

def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """``ServerApp.jpserver_extensions = {"kernel_guard.server": True}`` loads this module."""
    return [{"module": EXTENSION_NAME}]


def _load_jupyter_server_extension(serverapp: Any) -> ServerGuard:
    """Install the server layer on a ServerApp (called once by jupyter_server).

    Order matters: the runtime first, so every later step can record; the
    kernel manager before any route is served; the report last, once the
    IOLoop runs, when every other extension (terminals) has loaded.
    """
    settings = KernelGuardServer(parent=serverapp)
    rt = runtime.start(serverapp.config)
    guard = ServerGuard(serverapp, settings, rt)
    guard.guard_kernel_manager()
    if settings.hide_refused_kernelspecs:
        guard.guard_kernelspec_listing()
    guard.listen()
    guard.guard_routes()
    guard.guard_terminals()
    serverapp.io_loop.add_callback(guard.report)
    serverapp.log.info("kernel_guard: server extension loaded (mode %s)", rt.mode)
    return guard

