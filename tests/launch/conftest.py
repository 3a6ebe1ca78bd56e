"""Fixtures the launcher tests share: a folder the notebook user can reach, and the guarded
kernelspec installed there (JUPYTER_PATH points at it for the module's tests)."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from launcher_support import specs_on_path, unprivileged_root


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    """A folder uid 1000 can reach, for the module's kernels (removed after it)."""
    with unprivileged_root() as folder:
        yield folder


@pytest.fixture(scope="module")
def spec(root: str) -> Iterator[str]:
    """The guarded kernelspec (default profile) on JUPYTER_PATH; yields its prefix."""
    with specs_on_path(os.path.join(root, "prefix"), ("guarded",)) as prefix:
        yield prefix
