"""Load and validate ``patterns.json`` beside this module (the ConText rules live in ``shared.nlp.rules``).

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

from shared.nlp.rules import RuleChecker, read_rule_file
from shared.terminology import HERE as TERMINOLOGY_DIR
from shared.terminology import PROCEDURE_CATEGORIES, terminology

HERE = Path(__file__).parent
PATTERNS_PATH = HERE / "patterns.json"

STAGE_GROUPS = {"0", "I", "II", "III", "IV"}


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


def _cancer_types() -> set[str]:
    return {row["type"] for row in terminology_table("cancers.json")["text_types"]}


def terminology_table(name: str) -> dict[str, Any]:
    """A raw table of ``shared.terminology``: pattern building needs its word lists, which the
    ``Terminology`` object only exposes compiled into regular expressions."""
    data: dict[str, Any] = json.loads((TERMINOLOGY_DIR / name).read_text(encoding="utf-8"))
    return data


def load_patterns(path: Path = PATTERNS_PATH) -> PatternRules:
    """Read ``patterns.json`` and check every entry against the terminology tables it extends."""
    data = read_rule_file(path)
    c = RuleChecker(path)
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
