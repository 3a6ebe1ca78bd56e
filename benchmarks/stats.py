"""Small statistics and ordering helpers shared by the scenarios."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence, TypeVar

T = TypeVar("T")

__all__ = ["all_met", "interleaved", "judged", "median", "percentile", "ratio", "rounded"]


def median(values: Iterable[float]) -> float:
    """The median (mean of the middle two for an even count)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(guarded: float, plain: float) -> Optional[float]:
    """guarded / plain, or None when plain is zero or not a number."""
    if not plain or math.isnan(plain) or math.isnan(guarded):
        return None
    return guarded / plain


def interleaved(items: Sequence[T], round_index: int) -> list[T]:
    """The order to run ``items`` in round ``round_index``: ABC, CBA, ABC ...

    Alternating the order (ABAB for two) spreads drift in the machine's speed
    (another process, thermal state, caches) evenly over the configurations.
    """
    return list(items) if round_index % 2 == 0 else list(reversed(items))


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` rotated by ``round_index``: ABCD, BCDA, CDAB, DABC, ABCD ...

    For start order: a kernel's speed depends on its place in the order the
    kernels were started (up to 0.4 ms per trivial cell between the first and
    the last on a 2-core VM), so every configuration takes every place equally
    often over len(items) rounds.
    """
    shift = round_index % len(items) if items else 0
    return list(items[shift:]) + list(items[:shift])


def rounded(value: Optional[float], digits: int = 4) -> Optional[float]:
    """``value`` rounded for JSON (None and NaN become None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, digits)


def judged(row: Mapping[str, Any]) -> bool:
    """Whether a result row has a target: "info" rows (and rows whose ``met`` is None) are context only."""
    return row.get("target") != "info" and row.get("met") is not None


def all_met(rows: Iterable[Mapping[str, Any]]) -> bool:
    """A scenario's verdict: every judged row met its target (info rows never count against it)."""
    return all(row["met"] for row in rows if judged(row))
