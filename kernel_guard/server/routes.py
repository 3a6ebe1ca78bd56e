"""The hooks into the routes: terminals, downloads, and refusals answered as 403.

Terminal creation is refused (and recorded) unless
``c.KernelGuardServer.allow_terminals``: a terminal is a shell outside every
kernel layer.  File downloads through ``/files/`` and ``/nbconvert/`` are
allowed, recorded or refused by ``c.KernelGuardServer.downloads``.  The
session and kernel handlers are subclassed so that a refused start reaches
the client as 403 with its message where the handler would have turned it
into a 500, and so that a session's ``PATCH`` to another kernelspec is
checked before anything changes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from tornado import web

from .guard import KernelRefused, ServerGuard, maybe_await

__all__ = ["TERMINALS_REFUSED", "RouteHooks", "download_refusal", "server_event_refusal"]


TERMINALS_REFUSED = ("kernel_guard: terminals are disabled on this server. "
                     "Use a notebook instead, or ask your administrator.")


def download_refusal(path: str) -> str:
    """The 403 text for a download refused by ``KernelGuardServer.downloads``."""
    return (f"kernel_guard: downloading files is disabled on this server ({path}); "
            "open the file in the notebook instead, or ask your administrator.")


def server_event_refusal(schema_id: str) -> str:
    """The 403 text for a client posting an event under jupyter_server's own schema."""
    return (f"kernel_guard: events of {schema_id} come from the server itself and may not be posted "
            "by clients; use a schema of your own.")


class RouteHooks:
    """Terminals, downloads and the handler classes of one ServerApp."""

    def __init__(self, guard: ServerGuard) -> None:
        self.guard = guard
        self.terminals_guarded = False

    # terminals ------------------------------------------------------------------------
    def guard_terminals(self) -> None:
        """Refuse (and record) terminal creation unless allow_terminals."""
        manager = self.guard.app.web_app.settings.get("terminal_manager")
        if manager is None or self.terminals_guarded:
            return
        self.terminals_guarded = True
        hooks = self
        for method in ("new_named_terminal", "new_terminal"):
            original = getattr(manager, method, None)
            if original is None:
                continue

            def guarded(*args: Any, __original: Callable[..., Any] = original, **kwargs: Any) -> Any:
                hooks.terminal_attempt()
                return __original(*args, **kwargs)

            setattr(manager, method, guarded)

    def terminal_attempt(self) -> None:
        fields = dict(technique="terminal")
        if self.guard.settings.allow_terminals:
            self.guard.emit("terminal-created", "success", "terminal opened (KernelGuardServer.allow_terminals)",
                            **fields)
            return
        message = TERMINALS_REFUSED
        if not self.guard.enforcing:
            self.guard.emit("terminal-created", "unknown", "audit mode: recorded, not refused: " + message,
                            **fields)
            return
        self.guard.emit("terminal-refused", "failure", message, **fields)
        raise web.HTTPError(403, message, reason="Forbidden by kernel_guard")

    # downloads ------------------------------------------------------------------------
    def download(self, route: str, path: str) -> None:
        """Record or refuse one download, by policy."""
        policy = self.guard.settings.downloads
        if policy == "allow":
            return
        fields = dict(route=route, file_path=path, technique="download")
        if policy == "refuse" and self.guard.enforcing:
            message = download_refusal(path)
            self.guard.emit("file-download-refused", "failure", message, **fields)
            raise web.HTTPError(403, message, reason="Forbidden by kernel_guard")
        self.guard.emit("file-download", "success", f"download of {path} through {route}", **fields)

    # handlers ------------------------------------------------------------------------
    def guard_routes(self) -> None:
        """Answer refusals as 403 where a handler would turn them into a 500/501."""
        from jupyter_server.services.kernels.handlers import KernelActionHandler
        from jupyter_server.services.sessions.handlers import SessionHandler, SessionRootHandler

        replacements: dict[type, type] = {
            SessionRootHandler: _refusals_as_403(SessionRootHandler, ("post",)),
            KernelActionHandler: _refusals_as_403(KernelActionHandler, ("post",)),
            SessionHandler: _session_patch_checked(SessionHandler),
        }
        if self.guard.settings.downloads != "allow":
            from jupyter_server.base.handlers import AuthenticatedFileHandler
            from jupyter_server.files.handlers import FilesHandler
            from jupyter_server.nbconvert.handlers import NbconvertFileHandler

            files_classes = {FilesHandler, AuthenticatedFileHandler,
                             getattr(self.guard.app.contents_manager, "files_handler_class", None)}
            for cls in files_classes - {None}:
                replacements[cls] = _download_checked(cls, "files")
            replacements[NbconvertFileHandler] = _download_checked(NbconvertFileHandler, "nbconvert")
        try:
            from jupyter_server.services.events.handlers import EventHandler

            replacements[EventHandler] = _server_events_refused(EventHandler)
        except ImportError:  # a jupyter_server without POST /api/events
            pass
        web_app = self.guard.app.web_app
        web_app.settings["kernel_guard"] = self
        for router in (web_app.default_router, web_app.wildcard_router):
            _replace_targets(router, replacements)


# -- handler subclasses ----------------------------------------------------------------

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


def _refusals_as_403(cls: type, methods: tuple[str, ...]) -> type:
    """``cls`` whose methods re-raise a wrapped KernelRefused as itself (403)."""
    namespace: dict[str, Any] = {}
    for name in methods:
        original = getattr(cls, name)

        async def method(self: Any, *args: Any, __original: Callable[..., Any] = original, **kwargs: Any) -> None:
            try:
                await maybe_await(__original(self, *args, **kwargs))
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
        hooks: Optional[RouteHooks] = self.settings.get("kernel_guard")
        model = self.get_json_body() or {}
        kernel = model.get("kernel") if isinstance(model, dict) else None
        if hooks is not None and isinstance(kernel, dict) and kernel.get("id") is None and kernel.get("name"):
            guard = hooks.guard
            notebook = model.get("path")
            if not notebook:
                try:
                    row = guard.app.session_manager.cursor.execute(
                        "SELECT path FROM session WHERE session_id=?", (session_id,)).fetchone()
                    notebook = row[0] if row else None
                except Exception:
                    notebook = None
            guard.check(guard.assess_name(kernel["name"]), "api/sessions", notebook)
        await maybe_await(original(self, session_id))

    return type(cls.__name__, (cls,), {"patch": patch})


def _download_checked(cls: type, route: str) -> type:
    """A download handler that records or refuses by KernelGuardServer.downloads."""
    original_get = cls.get

    async def get(self: Any, *args: Any, **kwargs: Any) -> None:
        hooks: Optional[RouteHooks] = self.settings.get("kernel_guard")
        if hooks is not None and self.current_user:
            hooks.download(route, str(args[-1]) if args else "")
        await maybe_await(original_get(self, *args, **kwargs))

    return type(cls.__name__, (cls,), {"get": get})


#: jupyter_server's own schemas: emitted by the server, never by a client
SERVER_SCHEMAS = "https://events.jupyter.org/jupyter_server/"


def _server_events_refused(cls: type) -> type:
    """POST /api/events that refuses events claiming jupyter_server's own schemas:
    any token holder (notebook code too) could otherwise forge kernel or contents
    actions into every listener of the server's event bus."""
    original_post = cls.post

    async def post(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            schema_id = str((self.get_json_body() or {}).get("schema_id") or "")
        except Exception:
            schema_id = ""
        hooks: Optional[RouteHooks] = self.settings.get("kernel_guard")
        if schema_id.startswith(SERVER_SCHEMAS):
            message = server_event_refusal(schema_id)
            if hooks is not None:
                hooks.guard.emit("server-event-refused", "failure", message, schema_id=schema_id,
                                 technique="POST /api/events")
            raise web.HTTPError(403, message, reason="Forbidden by kernel_guard")
        await maybe_await(original_post(self, *args, **kwargs))

    return type(cls.__name__, (cls,), {"post": post})


def _replace_targets(router: Any, replacements: dict[type, type]) -> None:
    """Swap handler classes in a tornado router (and the routers inside it)."""
    for rule in getattr(router, "rules", []):
        target = rule.target
        if isinstance(target, type) and target in replacements:
            rule.target = replacements[target]
        elif hasattr(target, "rules"):
            _replace_targets(target, replacements)

