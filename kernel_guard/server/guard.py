"""The extension's state in one ServerApp: its settings, its events, its checks.

Every server event is built here (:meth:`ServerGuard.emit`), enriched with
the requesting user and address as jupyter_server knows them, and every
refusal of a kernel start is decided here (:meth:`ServerGuard.check`), from
the verdicts of :mod:`.policy`, whichever hook asked.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Optional

from tornado import web

from .. import runtime
from ..events.schema import Event, make_event
from .policy import NOT_INSTALLED, Verdict, assess_kernelspec
from .settings import KernelGuardServer

__all__ = ["KernelRefused", "ServerGuard", "kernel_refusal", "maybe_await", "user_name"]


class KernelRefused(web.HTTPError):
    """A kernel start refused by kernel_guard: answered as 403 with a message."""

    def __init__(self, message: str) -> None:
        # no % formatting: APIHandler sends log_message as is
        super().__init__(403, message.replace("%", "%%"), reason="Forbidden by kernel_guard")
        self.message = message


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


def kernel_refusal(verdict: Verdict, allowed: list[str]) -> str:
    """The 403 text for a kernelspec that may not start: which, why, and what to choose instead."""
    choice = (f"Choose a kernel this server starts: {', '.join(allowed)}." if allowed else
              "No allowed kernelspec is installed: install one with `kernel-guard install-kernelspec`.")
    return f"kernel_guard: the kernel '{verdict.name}' may not start here: it {verdict.reason}. {choice}"


class ServerGuard:
    """The extension's state in one ServerApp, and the decisions the hooks share.

    :class:`~.kernels.KernelHooks`, :class:`~.routes.RouteHooks` and
    :class:`~.report.HardeningReport` each hold it: they ask it whether a
    kernelspec may start (:meth:`check`) and emit their events through it.
    """

    def __init__(self, serverapp: Any, settings: KernelGuardServer, rt: runtime.Runtime) -> None:
        self.app = serverapp
        self.settings = settings
        self.runtime = rt
        self.km = serverapp.kernel_manager
        self.ksm = serverapp.kernel_spec_manager
        self.notebooks: dict[str, str] = {}

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
            return Verdict(name, False, False, f"cannot be read ({exc})")
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
        return kernel_refusal(verdict, self.allowed_names())

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
            self.emit("kernel-unguarded", "unknown", "audit mode: recorded, not refused: " + message, **fields)
            return
        self.emit("kernel-refused", "failure", message, **fields)
        self.app.log.warning("%s", message)
        raise KernelRefused(message)

    # notebook paths ---------------------------------------------------------------
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


async def maybe_await(value: Any) -> Any:
    """The value, awaited if jupyter_server returned an awaitable."""
    return await value if inspect.isawaitable(value) else value
