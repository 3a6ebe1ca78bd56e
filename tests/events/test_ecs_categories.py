"""Every action the project emits has ECS categories and types that ECS allows, each type
expected by one of the event's categories (ECS's own list, tests/data/ecs-event.yml)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from kernel_guard.events.schema import _CATEGORY, make_event

PACKAGE = Path(__file__).resolve().parents[2] / "kernel_guard"
ECS = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "ecs-event.yml").read_text())[0]


def _allowed(field: str) -> dict[str, list[str]]:
    (spec,) = [f for f in ECS["fields"] if f["name"] == field]
    return {v["name"]: v.get("expected_event_types", []) for v in spec["allowed_values"]}


CATEGORIES, TYPES, KINDS = _allowed("category"), set(_allowed("type")), set(_allowed("kind"))


def _emitted_actions() -> set[str]:
    """String actions passed to make_event(...) or an .emit("action", ...) anywhere in the package."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            first = node.args[0]
            if name in ("make_event", "emit") and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
            if name == "_refuse_or_record":  # (enforce, exc, denied action, recorded action, ...)
                found.update(a.value for a in node.args[2:4] if isinstance(a, ast.Constant))
    return found


def test_every_emitted_action_has_its_own_categories() -> None:
    """No action falls back to the default silently (a new action must be classified)."""
    missing = sorted(a for a in _emitted_actions() if a not in _CATEGORY)
    assert missing == []


@pytest.mark.parametrize("action", sorted(_CATEGORY))
def test_categories_and_types_are_ecs_valid(action: str) -> None:
    event = make_event(action, outcome="success", layer="test")["event"]
    assert event["kind"] in KINDS
    assert event["category"] and all(c in CATEGORIES for c in event["category"]), event["category"]
    expected = {t for c in event["category"] for t in CATEGORIES[c]}
    for event_type in event["type"]:
        assert event_type in TYPES and event_type in expected, (action, event_type, event["category"])


def test_the_server_state_report_is_a_valid_kind() -> None:
    assert make_event("server-hardening", outcome="success", layer="server", kind="state")["event"]["kind"] in KINDS
