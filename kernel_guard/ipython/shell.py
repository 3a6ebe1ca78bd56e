"""The IPython layer: every IPython route to a shell, refused with a short message.

Routes and where they end (INTERNALS.md): ``!cmd`` and ``system*`` reach the
shell's ``system_piped``/``system_raw``; ``!!cmd``, ``x = !cmd``, ``%sx``,
``%system``, ``%sc``, ``%man`` reach ``getoutput``; ``%%bash`` and the other
script magics reach ``ScriptMagics.shebang``; aliases, ``%pip`` and friends,
``%clear`` reach ``system``; ``%qtconsole`` starts a process directly.

We replace those methods on the *classes* (so ``del ip.system`` and
``type(ip).system_raw(ip, cmd)`` meet the refusal too), register refusing
magics over every shell magic name, empty the alias table, and guard
``%config``, ``%unload_ext`` and ``%reload_ext``.  None of this stops Python
code from reaching the OS; the audit layer and the launcher's seccomp filter
do that.  In ``audit`` mode this layer records and lets the call through.
"""

from __future__ import annotations

import re
import threading
import types
from typing import Any, Callable

from .. import notice, runtime
from ..config import KernelGuard
from ..events.processors import redact_and_cut
from ..events.schema import make_event
from ..exceptions import GuardTampering, ShellRefused

__all__ = ["install", "refuse"]

EXTENSION_NAME = "kernel_guard"

#: shell methods of InteractiveShell and its kernel subclass
SHELL_METHODS = ("system", "system_piped", "system_raw", "getoutput")

#: IPython.utils.process functions that run a shell outside the shell object
PROCESS_FUNCTIONS = ("system", "getoutput", "getoutputerror", "get_output_error_code")

LINE_SHELL_MAGICS = ("sx", "system", "sc", "alias", "man", "clear", "qtconsole", "rehashx")
CELL_SHELL_MAGICS = ("!", "sx", "system", "script", "bash", "sh", "zsh", "dash", "ksh", "csh",
                     "tcsh", "fish", "perl", "ruby", "python", "python2", "python3", "pypy",
                     "node", "powershell", "pwsh", "cmd")
PACKAGE_MAGICS = ("pip", "uv", "conda", "mamba", "micromamba")

#: (Magics class import path, method names) patched at class level
MAGICS_METHODS = (
    ("IPython.core.magics.osm", "OSMagics", ("sx", "sc", "alias", "rehashx")),
    ("IPython.core.magics.script", "ScriptMagics", ("shebang",)),
    ("ipykernel.zmqshell", "KernelMagics", ("clear", "man", "qtconsole")),
)
PACKAGE_METHODS = ("IPython.core.magics.packaging", "PackagingMagics", PACKAGE_MAGICS)

#: %config targets refused at run time: a class name, or (class, trait)
CONFIG_GUARDED_CLASSES = frozenset({"KernelGuard"})
CONFIG_GUARDED_TRAITS = frozenset({
    ("MagicsManager", "lazy_magics"), ("ScriptMagics", "script_magics"),
    ("ScriptMagics", "script_paths"), ("AliasManager", "user_aliases"),
    ("AliasManager", "default_aliases"), ("InteractiveShellApp", "extensions"),
    ("IPKernelApp", "extensions"), ("InteractiveShell", "ast_transformers"),
})
_CONFIG_ASSIGNMENT = re.compile(r"^\s*(\w+)\.(\w+)\s*(?:=|\+=|-=|\|=)")


class _Installed:
    """What this process has patched (kept in this module, not the package)."""

    shells: set[int] = set()
    originals: dict[str, Callable[..., Any]] = {}
    classes_patched = False
    package_call = threading.local()  # .active: inside an allowed %pip/%conda


_Installed.package_call.active = False


# -- refusing ----------------------------------------------------------------

def _enforcing() -> bool:
    rt = runtime.current()
    return rt is None or rt.mode == "enforce"


def refuse(route: str, command: str | None = None, *, tampering: bool = False,
           technique: str | None = None) -> None:
    """Record a refusal and raise, or (audit mode) record and return.

    ``route`` names the IPython route (``!``, ``%%bash``, ``get_ipython().system``),
    ``command`` what it would have run.
    """
    command = (command or "").strip()
    first = command.splitlines()[0] if command else ""
    short = redact_and_cut(first, 60)  # redacted before it is cut: no part of a secret stays
    if route in ("!", "!!"):
        what = f"`{route}{short}`"
    else:
        what = f"`{route}` ({short})" if short else f"`{route}`"
    enforce = _enforcing() or tampering
    fields: dict[str, Any] = {"technique": technique or route}
    package = route.lstrip("%") in PACKAGE_MAGICS
    if tampering:
        action, exc = "guard-tampering", GuardTampering
        fields["target"] = command
    else:
        action, exc = ("shell-refused" if enforce else "shell-command"), ShellRefused
        fields["process"] = _process_fields(route, command, package)
    outcome = "failure" if enforce else "unknown"
    reason = f"refused {what}" if enforce else f"audit mode: recorded, not refused: {what}"
    runtime.emit(make_event(action, outcome=outcome, layer="ipython", reason=reason, **fields))
    if enforce:
        raise exc(what, hint=_package_hint() if package else None, layer="ipython")
    notice.would_refuse(what)


def _process_fields(route: str, command: str, package: bool) -> dict[str, Any] | None:
    """What the route would have run: a package magic as typed (``%pip install x``:
    it runs no shell of its own), any other route as the shell command it runs."""
    if package:
        return {"command_line": f"{route} {command}".strip(), "args": [route, *command.split()]}
    return {"command_line": command, "args": ["sh", "-c", command]} if command else None


def _package_hint() -> str:
    """The refusal's second line for %pip and kin: where packages come from and whom to ask."""
    rt = runtime.current()
    command = rt.guard.package_install_command if rt is not None else ""
    if command:
        return (f"Packages cannot be installed from a notebook here; run `{command} NAME` in a terminal "
                "to add one to this kernel's environment, then restart the kernel.")
    ask = rt.guard.package_request_hint if rt is not None else KernelGuard.package_request_hint.default_value
    return f"Packages come with this kernel's image and cannot be installed from a notebook; to get one, {ask}."


def _shell_method(name: str) -> Callable[..., Any]:
    """A replacement for ``InteractiveShell.<name>`` that refuses."""
    route = {"getoutput": "!!", "system_raw": "system_raw()"}.get(name, "!")

    def guarded(self: Any, cmd: Any = "", *args: Any, **kwargs: Any) -> Any:
        if not _Installed.package_call.active:
            refuse(route, str(cmd), technique=f"InteractiveShell.{name}")
        return _Installed.originals[name](self, cmd, *args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = name
    guarded.__doc__ = f"kernel_guard: shell commands are refused ({name})."
    return guarded


def _module_function(module: str, name: str) -> Callable[..., Any]:
    """A replacement for ``IPython.utils.process.<name>`` that refuses."""
    key = f"{module}.{name}"

    def guarded(cmd: Any = "", *args: Any, **kwargs: Any) -> Any:
        refuse(f"{name}()", str(cmd), technique=key)
        return _Installed.originals[key](cmd, *args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = name
    return guarded


def _magic_method(label: str) -> Callable[..., Any]:
    """A replacement for a Magics method (``OSMagics.sx`` ...) that refuses.

    Only installed in enforce mode, where ``refuse`` always raises.
    """

    def guarded(self: Any, line: str = "", cell: str | None = None, *args: Any, **kwargs: Any) -> None:
        refuse(label, cell if cell is not None and label.startswith("%%") else line)

    return guarded


def _refusing_magic(kind: str, name: str) -> Callable[..., Any]:
    """A line or cell magic that refuses, registered over ``name``."""
    label = ("%%" if kind == "cell" else "%") + name

    if kind == "cell":
        def magic(line: str, cell: str = "") -> None:
            refuse(label, (line + "\n" + cell).strip())
    else:
        def magic(line: str = "") -> None:
            refuse(label, line)

    magic.__name__ = name
    magic.__doc__ = f"Refused by kernel_guard: {label} runs a shell command."
    return magic


# -- patching ----------------------------------------------------------------

def _patch_classes(ip: Any) -> None:
    """Replace shell methods on every class that defines them (once per process)."""
    if _Installed.classes_patched:
        return
    import importlib

    from IPython.core.interactiveshell import InteractiveShell

    for name in SHELL_METHODS:
        _Installed.originals.setdefault(name, getattr(type(ip), name))
        for cls in {InteractiveShell, *type(ip).__mro__}:
            if name in vars(cls):
                setattr(cls, name, _shell_method(name))
    for module_name in ("IPython.utils.process", "IPython.utils._process_posix", "IPython.utils._process_common"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in PROCESS_FUNCTIONS:
            if callable(getattr(module, name, None)):
                _Installed.originals[f"{module_name}.{name}"] = getattr(module, name)
                setattr(module, name, _module_function(module_name, name))
    _Installed.classes_patched = True


def _patch_magics_classes(allow_packages: bool) -> None:
    """Refuse in the Magics classes themselves: covers the registry and re-registration."""
    import importlib

    specs = list(MAGICS_METHODS) + ([] if allow_packages else [PACKAGE_METHODS])
    for module_name, class_name, methods in specs:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        for method in methods:
            if method not in vars(cls) or getattr(vars(cls)[method], "_kernel_guard", False):
                continue
            label = "%%script" if method == "shebang" else f"%{method}"
            replacement = _magic_method(label)
            replacement._kernel_guard = True  # type: ignore[attr-defined]
            replacement.__name__ = method
            setattr(cls, method, replacement)


def _allow_package_magics(ip: Any) -> None:
    """Let package magics reach ``shell.system`` (the audit layer still decides)."""
    import importlib

    module_name, class_name, methods = PACKAGE_METHODS
    cls = getattr(importlib.import_module(module_name), class_name)
    _wrap_package_methods(cls, methods)
    # IPython 8 registers its magics at start-up (9 loads them lazily): the table
    # holds methods bound before the wrapping, which would meet the shell refusal
    table = ip.magics_manager.magics["line"]
    for method in methods:
        bound = table.get(method)
        if isinstance(getattr(bound, "__self__", None), cls):
            table[method] = types.MethodType(vars(cls)[method], bound.__self__)


def _wrap_package_methods(cls: type, methods: tuple[str, ...]) -> None:
    """Wrap each package magic of ``cls`` so that its shell call is let through."""
    for method in methods:
        original = vars(cls).get(method)
        if original is None or getattr(original, "_kernel_guard", False):
            continue

        def allowed(self: Any, line: str = "", _original: Callable[..., Any] = original) -> Any:
            _Installed.package_call.active = True
            try:
                return _original(self, line)
            finally:
                _Installed.package_call.active = False

        allowed._kernel_guard = True  # type: ignore[attr-defined]
        allowed.__name__, allowed.__doc__ = method, original.__doc__
        setattr(cls, method, allowed)


def _register_refusing_magics(ip: Any, allow_packages: bool) -> None:
    """Register refusals over every shell magic name, aliases included."""
    manager = ip.magics_manager
    line_names = list(LINE_SHELL_MAGICS) + ([] if allow_packages else list(PACKAGE_MAGICS))
    try:
        from IPython.core.magics._table import default_script_magics

        cell_names = set(CELL_SHELL_MAGICS) | set(default_script_magics())
    except ImportError:
        cell_names = set(CELL_SHELL_MAGICS)
    aliases = ip.alias_manager
    line_names += [name for name, _ in aliases.aliases] + [name for name, _ in aliases.default_aliases]
    aliases.clear_aliases()
    for name in sorted(set(line_names)):
        manager.register_function(_refusing_magic("line", name), "line", name)
    for name in sorted(cell_names):
        manager.register_function(_refusing_magic("cell", name), "cell", name)


def _guard_alias_manager(ip: Any) -> None:
    """``%alias`` and ``define_alias`` would put shell commands back as magics."""
    cls = type(ip.alias_manager)
    if getattr(cls.define_alias, "_kernel_guard", False):
        return

    def define_alias(self: Any, name: str, cmd: str) -> None:
        refuse("%alias", f"{name} {cmd}")

    def soft_define_alias(self: Any, name: str, cmd: str) -> None:
        """IPython's own (re)definition of default aliases, e.g. on ``%reset``: skipped."""

    define_alias._kernel_guard = True  # type: ignore[attr-defined]
    cls.define_alias = define_alias
    cls.soft_define_alias = soft_define_alias


# -- self-protection ---------------------------------------------------------

def _guard_extension_manager(ip: Any) -> None:
    """``%unload_ext``/``%reload_ext kernel_guard`` are refused and recorded."""
    cls = type(ip.extension_manager)
    if getattr(cls.unload_extension, "_kernel_guard", False):
        return
    unload, reload = cls.unload_extension, cls.reload_extension

    def unload_extension(self: Any, module_str: str) -> Any:
        if module_str.split(".")[0] == EXTENSION_NAME:
            refuse("%unload_ext", module_str, tampering=True)
        return unload(self, module_str)

    def reload_extension(self: Any, module_str: str) -> Any:
        if module_str.split(".")[0] == EXTENSION_NAME:
            refuse("%reload_ext", module_str, tampering=True)
        return reload(self, module_str)

    unload_extension._kernel_guard = True  # type: ignore[attr-defined]
    cls.unload_extension = unload_extension
    cls.reload_extension = reload_extension


def _guard_config_magic(ip: Any) -> None:
    """``%config`` may not touch the guard or the magic tables it protects."""
    try:
        from IPython.core.magics.config import ConfigMagics
    except ImportError:
        return
    if getattr(ConfigMagics.config, "_kernel_guard", False):
        return
    original = ConfigMagics.config

    def config(self: Any, s: str) -> Any:
        match = _CONFIG_ASSIGNMENT.match(s or "")
        if match and (match.group(1) in CONFIG_GUARDED_CLASSES
                      or (match.group(1), match.group(2)) in CONFIG_GUARDED_TRAITS):
            refuse("%config", s, tampering=True)
        return original(self, s)

    config._kernel_guard = True  # type: ignore[attr-defined]
    config.__doc__ = original.__doc__
    ConfigMagics.config = config
    # an already loaded ConfigMagics holds a bound original in the table
    table = ip.magics_manager.magics["line"]
    bound = table.get("config")
    if isinstance(getattr(bound, "__self__", None), ConfigMagics):
        table["config"] = types.MethodType(config, bound.__self__)


def _revert_trait(owner: Any, trait: str) -> None:
    """Observe ``owner.trait`` and put it back (recorded) when code changes it."""
    saved = {"value": getattr(owner, trait)}

    def revert(change: Any) -> None:
        if change["new"] == saved["value"]:
            return
        setattr(owner, trait, saved["value"])
        try:
            refuse(f"setting {type(owner).__name__}.{trait}", redact_and_cut(repr(change["new"]), 200), tampering=True)
        except GuardTampering:
            pass  # an observer cannot refuse; the value is already restored

    owner.observe(revert, names=[trait])


def _guard_traits(ip: Any) -> None:
    _revert_trait(ip.magics_manager, "lazy_magics")
    _revert_trait(ip.alias_manager, "user_aliases")


# -- entry -------------------------------------------------------------------

def install(ip: Any) -> bool:
    """Install the IPython layer on ``ip``; False if it was already there."""
    if id(ip) in _Installed.shells:
        return False
    rt = runtime.current()
    assert rt is not None, "runtime.start() must run before extension.install()"
    allow = bool(rt.guard.unsafe_allow_package_magics)
    steps: list[Callable[[], None]] = [lambda: _patch_classes(ip)]
    if rt.mode == "enforce":
        steps += [lambda: _patch_magics_classes(allow), lambda: _register_refusing_magics(ip, allow),
                  lambda: _guard_alias_manager(ip)]
        if allow:
            steps.append(lambda: _allow_package_magics(ip))
    steps += [lambda: _guard_extension_manager(ip), lambda: _guard_config_magic(ip), lambda: _guard_traits(ip)]
    failed = []
    for step in steps:
        # one IPython internals change must not leave the other routes open
        try:
            step()
        except Exception as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
    for problem in failed:
        runtime.emit(make_event("guard-error", outcome="failure", layer="ipython",
                                reason=f"part of the IPython layer could not be installed: {problem}"))
    _Installed.shells.add(id(ip))
    rt.layers["ipython"] = rt.mode if not failed else f"{rt.mode} (partial)"
    return True
