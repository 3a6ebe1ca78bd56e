"""How much of a piece of code an event keeps, under ``KernelGuard.code_policy``.

Shared by a cell's ``cell-executed`` (:mod:`.cells`) and the requests that run
code outside a cell (:mod:`.requests`), so both record code the same way.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["code_fields"]


def code_fields(code: str, policy: str, max_chars: int) -> dict[str, Any]:
    """The code as the policy allows: full, truncated, or hash only (hash always)."""
    fields: dict[str, Any] = {"code_sha256": hashlib.sha256(code.encode("utf-8", "replace")).hexdigest(),
                              "code_length": len(code)}
    if policy == "full":
        fields["code"] = code
    elif policy == "truncated":
        # cut on the writer thread after redaction (events.processors.TruncateCode)
        fields["code"] = code
        fields["code_limit"] = max_chars
        fields["code_truncated"] = len(code) > max_chars
    return fields
