"""Load and validate the two rule files beside this module (``patterns.json``, ``context_rules.json``).

Rules are data so that a clinical reviewer can read and change them without touching code. Because
a silently ignored rule would mean silently missed (or wrongly negated) mentions, every entry is
checked when the pipeline is built and the first problem is raised as ``NoteRulesError`` naming the
file and the entry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.terminology import HERE as TERMINOLOGY_DIR
from shared.terminology import PROCEDURE_CATEGORIES, terminology

HERE = Path(__file__).parent
PATTERNS_PATH = HERE / "patterns.json"
CONTEXT_RULES_PATH = HERE / "context_rules.json"

CATEGORIES = {"NEGATED_EXISTENCE", "POSSIBLE_EXISTENCE", "HISTORICAL", "FAMILY", "PSEUDO", "TERMINATE"}
DIRECTIONS = {"forward", "backward", "bidirectional"}
STAGE_GROUPS = {"0", "I", "II", "III", "IV"}
# Categories that modify nothing themselves: PSEUDO swallows a shorter trigger inside it ("no change"),
# TERMINATE ends the scope of other triggers ("but", ";").
SCOPELESS = {"PSEUDO", "TERMINATE"}


class NoteRulesError(ValueError):
    """A rule file is malformed; raised while building the pipeline so bad rules never run."""


@dataclass(frozen=True, slots=True)
class PatternRules:
    cancer_nouns: tuple[str, ...]
    cancer_site_synonyms: dict[str, tuple[str, ...]]
    cancer_histologies: dict[str, str]  # histologic type -> the site type it belongs to
    cancer_abbreviations: dict[str, str]
    cancer_ignore_table_words: frozenset[str]
    stage_numerals: dict[str, str]  # as written (lower case) -> AJCC group
    stage_substages: tuple[str, ...]
    stage_leads: tuple[str, ...]
    stage_extents: tuple[str, ...]
    stage_blockers: tuple[str, ...]
    stage_trailing_blockers: tuple[str, ...]
    procedures: tuple[tuple[str, tuple[str, ...]], ...]
    medications: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class ContextRule:
    literal: str
    category: str
    direction: str | None  # None for PSEUDO and TERMINATE
    max_scope: int | None  # tokens; None: to the end of the sentence or a terminator


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NoteRulesError(f"{path.name}: cannot be read as JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise NoteRulesError(f"{path.name}: top level must be an object")
    if not data.get("_provenance"):
        raise NoteRulesError(f"{path.name}: missing _provenance block")
    return data


class _Checker:
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


def _cancer_types() -> set[str]:
    return {row["type"] for row in terminology_table("cancers.json")["text_types"]}


def terminology_table(name: str) -> dict[str, Any]:
    """A raw table of ``shared.terminology``: pattern building needs its word lists, which the
    ``Terminology`` object only exposes compiled into regular expressions."""
    data: dict[str, Any] = json.loads((TERMINOLOGY_DIR / name).read_text(encoding="utf-8"))
    return data


def load_patterns(path: Path = PATTERNS_PATH) -> PatternRules:
    """Read ``patterns.json`` and check every entry against the terminology tables it extends."""
    data = _read(path)
    c = _Checker(path)
    c.keys(data, "top level", {"_provenance", "cancer", "stage", "procedures", "medications"})

    cancer = c.obj(data["cancer"], "cancer")
    c.keys(cancer, "cancer", {"nouns", "site_synonyms", "histologies", "abbreviations", "ignore_table_words"})
    types = _cancer_types()
    synonyms = {
        c.one_of(t, types, f"cancer.site_synonyms.{t}", "cancer type"): c.strings(words, f"cancer.site_synonyms.{t}")
        for t, words in c.obj(cancer["site_synonyms"], "cancer.site_synonyms").items()
    }
    histologies = {
        c.one_of(h, types, f"cancer.histologies.{h}", "cancer type"): c.one_of(
            site, types, f"cancer.histologies.{h}", "site type"
        )
        for h, site in c.obj(cancer["histologies"], "cancer.histologies").items()
    }
    abbreviations = {
        str(word).lower(): c.one_of(t, types, f"cancer.abbreviations.{word}", "cancer type")
        for word, t in c.obj(cancer["abbreviations"], "cancer.abbreviations").items()
    }

    stage = c.obj(data["stage"], "stage")
    c.keys(stage, "stage", {"numerals", "substages", "leads", "extents", "blockers", "trailing_blockers"})
    numerals = {
        str(written).lower(): c.one_of(group, STAGE_GROUPS, f"stage.numerals.{written}", "stage group")
        for written, group in c.obj(stage["numerals"], "stage.numerals").items()
    }
    substages = c.strings(stage["substages"], "stage.substages")
    for i, letter in enumerate(substages):
        if not re.fullmatch("[a-z]", letter):
            raise c.fail(f"stage.substages[{i}] ({letter!r})", "must be a single letter")

    drug_names = {d.name for d in terminology().drugs}
    procedures: list[tuple[str, tuple[str, ...]]] = []
    if not isinstance(data["procedures"], list):
        raise c.fail("procedures", "must be a list")
    for i, entry in enumerate(data["procedures"]):
        where = f"procedures[{i}]"
        entry = c.obj(entry, where)
        c.keys(entry, where, {"category", "phrases"})
        category = c.one_of(entry["category"], PROCEDURE_CATEGORIES, where, "category")
        procedures.append((category, c.strings(entry["phrases"], f"{where} ({category})")))
    medications = tuple(
        (
            c.one_of(name, drug_names, f"medications.{name}", "drug (not in drugs.json)"),
            c.strings(words, f"medications.{name}"),
        )
        for name, words in c.obj(data["medications"], "medications").items()
    )
    return PatternRules(
        cancer_nouns=c.strings(cancer["nouns"], "cancer.nouns"),
        cancer_site_synonyms=synonyms,
        cancer_histologies=histologies,
        cancer_abbreviations=abbreviations,
        cancer_ignore_table_words=frozenset(c.strings(cancer["ignore_table_words"], "cancer.ignore_table_words")),
        stage_numerals=numerals,
        stage_substages=substages,
        stage_leads=c.strings(stage["leads"], "stage.leads"),
        stage_extents=c.strings(stage["extents"], "stage.extents"),
        stage_blockers=c.strings(stage["blockers"], "stage.blockers"),
        stage_trailing_blockers=c.strings(stage["trailing_blockers"], "stage.trailing_blockers"),
        procedures=tuple(procedures),
        medications=medications,
    )


def load_context_rules(path: Path = CONTEXT_RULES_PATH) -> tuple[ContextRule, ...]:
    """Read ``context_rules.json``: groups of trigger literals sharing a category and direction."""
    data = _read(path)
    c = _Checker(path)
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
