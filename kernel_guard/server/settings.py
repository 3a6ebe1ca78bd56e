"""``c.KernelGuardServer.*``: what the server extension allows and records."""

from __future__ import annotations

import re
from typing import Any

from traitlets import Bool, Enum, List, TraitError, Unicode, validate
from traitlets.config import Configurable

__all__ = ["KernelGuardServer"]

_KERNEL_NAME = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)


class KernelGuardServer(Configurable):
    """What the server extension allows and records (``c.KernelGuardServer.*``)."""

    allowed_kernelspecs = List(
        Unicode(),
        help="""Names of kernelspecs that may start although their argv does not
        run ``python -I -m kernel_guard.launch`` (for example a kernelspec that
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
