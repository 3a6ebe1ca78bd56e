"""Small statistics and ordering helpers shared by the scenarios."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence, TypeVar

T = TypeVar("T")

__all__ = ["all_met", "balanced", "judged", "median", "percentile", "ratio", "rounded"]


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


def balanced(items: Sequence[T], round_index: int) -> list[T]:
    """The order to run ``items`` in round ``round_index``: rows of a balanced Latin square.

    Over a cycle of rounds (``len(items)`` rounds, twice that for an odd count)
    every item takes every place equally often and, for three items or more,
    follows each other item equally often within the rounds; no item ever runs
    twice in a row, across rounds too.  Both matter on a small machine: a kernel
    asked again right after its own cell answers faster than one asked after
    another kernel's (measured on a 2-core VM: 0.25 ms per trivial cell between
    two plain kernels), and a configuration's after-work (a writer thread, a
    supervisor) slows whichever one comes next.  The order ABC, CBA ... gave the
    ends back-to-back turns and the middle none, so it charged the middle
    configuration with a cost that was its place.  Two items simply alternate.
    """
    n = len(items)
    if n <= 2:
        return list(items)
    # Williams' design: 0, 1, n-1, 2, n-2 ..., shifted by one per row
    first = [0, *[x for pair in zip(range(1, n), range(n - 1, 0, -1)) for x in pair][:n - 1]]
    rows = [[(x + shift) % n for x in first] for shift in range(n)]
    if n % 2:
        # an odd count needs the reversed rows too; taken 0, n-1 ... 1, so that
        # no row begins with the item the row before ended with
        backward = [row[::-1] for row in rows]
        rows += [backward[0], *reversed(backward[1:])]
    return [items[i] for i in rows[round_index % len(rows)]]


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
