"""Load and validate ``context_rules.json`` (ConText triggers: negation, uncertainty, history ...).

Shared by the twins that read clinical text (notes in the Clinical-History twin, reports in the
Radiology twin). Rules are data so that a clinical reviewer can read and change them without touching
code. Because a silently ignored rule would mean silently missed (or wrongly negated) mentions, every
entry is checked when a pipeline is built and the first problem is raised as ``NoteRulesError``
naming the file and the entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CONTEXT_RULES_PATH = HERE / "context_rules.json"

CATEGORIES = {"NEGATED_EXISTENCE", "POSSIBLE_EXISTENCE", "HISTORICAL", "FAMILY", "PSEUDO", "TERMINATE"}
DIRECTIONS = {"forward", "backward", "bidirectional"}
# Categories that modify nothing themselves: PSEUDO swallows a shorter trigger inside it ("no change"),
# TERMINATE ends the scope of other triggers ("but", ";").
SCOPELESS = {"PSEUDO", "TERMINATE"}


class NoteRulesError(ValueError):
    """A rule file is malformed; raised while building the pipeline so bad rules never run."""


@dataclass(frozen=True, slots=True)
class ContextRule:
    literal: str
    category: str
    direction: str | None  # None for PSEUDO and TERMINATE
    max_scope: int | None  # tokens; None: to the end of the sentence or a terminator


def read_rule_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NoteRulesError(f"{path.name}: cannot be read as JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise NoteRulesError(f"{path.name}: top level must be an object")
    if not data.get("_provenance"):
        raise NoteRulesError(f"{path.name}: missing _provenance block")
    return data


class RuleChecker:
    """Small helpers that raise with the file name and a JSON-path-like location."""

    def __init__(self, path: Path) -> None:
        self.file = path.name

    def fail(self, where: str, problem: str) -> NoteRulesError:
        return NoteRulesError(f"{self.file}: {where}: {problem}")

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be an object")
        return value

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, "must be a non-empty list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(f"{where}[{i}] ({item!r})", "must be a non-empty string")
        return tuple(s.strip().lower() for s in value)

    def keys(
        self, value: dict[str, Any], where: str, required: set[str], optional: frozenset[str] = frozenset()
    ) -> None:
        missing = required - value.keys()
        unknown = value.keys() - required - optional
        if missing:
            raise self.fail(where, f"missing {sorted(missing)}")
        if unknown:
            raise self.fail(where, f"unknown keys {sorted(unknown)}")

    def one_of(self, value: Any, allowed: set[str], where: str, what: str) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(where, f"unknown {what} {value!r} (expected one of {sorted(allowed)})")
        return str(value)


def load_context_rules(path: Path = CONTEXT_RULES_PATH) -> tuple[ContextRule, ...]:
    """Read ``context_rules.json``: groups of trigger literals sharing a category and direction."""
    data = read_rule_file(path)
    c = RuleChecker(path)
    c.keys(data, "top level", {"_provenance", "rules"})
    if not isinstance(data["rules"], list) or not data["rules"]:
        raise c.fail("rules", "must be a non-empty list")
    rules: list[ContextRule] = []
    seen: dict[str, str] = {}
    for i, group in enumerate(data["rules"]):
        where = f"rules[{i}]"
        group = c.obj(group, where)
        c.keys(group, where, {"category", "literals"}, frozenset({"direction", "max_scope", "note"}))
        category = c.one_of(group["category"], CATEGORIES, where, "category")
        where = f"rules[{i}] ({category})"
        direction = group.get("direction")
        if category in SCOPELESS:
            if direction is not None or "max_scope" in group:
                raise c.fail(where, f"{category} rules take no direction or max_scope")
        else:
            direction = c.one_of(direction, DIRECTIONS, where, "direction")
        max_scope = group.get("max_scope")
        if max_scope is not None and (not isinstance(max_scope, int) or isinstance(max_scope, bool) or max_scope < 1):
            raise c.fail(where, f"max_scope must be a positive integer, not {max_scope!r}")
        for literal in c.strings(group["literals"], f"{where}.literals"):
            if literal in seen:
                raise c.fail(f"{where} ({literal!r})", f"literal already defined in {seen[literal]}")
            seen[literal] = where
            rules.append(ContextRule(literal, category, direction, max_scope))
    return tuple(rules)
