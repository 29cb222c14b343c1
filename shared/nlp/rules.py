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
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, StringConstraints, model_validator

from shared.datafiles import DataFileError, validated

HERE = Path(__file__).parent
CONTEXT_RULES_PATH = HERE / "context_rules.json"

Category = Literal["NEGATED_EXISTENCE", "POSSIBLE_EXISTENCE", "HISTORICAL", "FAMILY", "PSEUDO", "TERMINATE"]
Direction = Literal["forward", "backward", "bidirectional"]
DIRECTIONS = frozenset(get_args(Direction))
# Categories that modify nothing themselves: PSEUDO swallows a shorter trigger inside it ("no change"),
# TERMINATE ends the scope of other triggers ("but", ";").
SCOPELESS = {"PSEUDO", "TERMINATE"}


class NoteRulesError(DataFileError):
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


class _RuleGroup(BaseModel):
    """One group of ``context_rules.json``: trigger literals sharing a category and direction."""

    model_config = ConfigDict(extra="forbid")

    category: Category
    literals: list[Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1)]] = Field(
        min_length=1
    )
    direction: Direction | None = None
    max_scope: PositiveInt | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _direction_fits_the_category(self) -> _RuleGroup:
        if self.category in SCOPELESS and (self.direction is not None or self.max_scope is not None):
            raise ValueError(f"{self.category} rules take no direction or max_scope")
        if self.category not in SCOPELESS and self.direction is None:
            raise ValueError(f"{self.category} rules need a direction (one of {sorted(DIRECTIONS)})")
        return self


class _ContextRulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    provenance: dict[str, Any] = Field(alias="_provenance", min_length=1)
    rules: list[_RuleGroup] = Field(min_length=1)


def load_context_rules(path: Path = CONTEXT_RULES_PATH) -> tuple[ContextRule, ...]:
    """Read ``context_rules.json`` (validated by pydantic models: the file's shape in one place)."""
    parsed = validated(_ContextRulesFile, read_rule_file(path), path.name, error=NoteRulesError)
    rules: list[ContextRule] = []
    seen: dict[str, str] = {}
    for i, group in enumerate(parsed.rules):
        where = f"rules[{i}] ({group.category})"
        for literal in group.literals:
            if literal in seen:
                raise NoteRulesError(f"{path.name}: {where} ({literal!r}): literal already defined in {seen[literal]}")
            seen[literal] = where
            rules.append(ContextRule(literal, group.category, group.direction, group.max_scope))
    return tuple(rules)
