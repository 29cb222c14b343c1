"""Load and validate ``patterns.json`` beside this module (the ConText rules live in ``shared.nlp.rules``).

Rules are data so that a clinical reviewer can read and change them without touching code. Because
a silently ignored rule would mean silently missed (or wrongly negated) mentions, every entry is
checked when the pipeline is built and the first problem is raised as ``NoteRulesError`` naming the
file and the entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo

from shared.datafiles import validated
from shared.nlp.rules import NoteRulesError, read_rule_file
from shared.terminology import HERE as TERMINOLOGY_DIR
from shared.terminology import PROCEDURE_CATEGORIES, terminology

HERE = Path(__file__).parent
PATTERNS_PATH = HERE / "patterns.json"


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


Word = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1)]
Words = Annotated[tuple[Word, ...], Field(min_length=1)]
StageGroup = Literal["0", "I", "II", "III", "IV"]


def _one_of(table: str, what: str) -> AfterValidator:
    """A check against a terminology table, passed as validation context (the names it may take)."""

    def check(value: str, info: ValidationInfo) -> str:
        allowed = (info.context or {})[table]
        if value not in allowed:
            listed = f" (expected one of {sorted(allowed)})" if len(allowed) <= 12 else ""
            raise ValueError(f"unknown {what} {value!r}{listed}")
        return value

    return AfterValidator(check)


CancerType = Annotated[str, _one_of("cancer_types", "cancer type")]
DrugName = Annotated[str, _one_of("drugs", "drug (not in drugs.json)")]
ProcedureCategory = Annotated[str, _one_of("procedure_categories", "procedure category")]


class _Cancer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nouns: Words
    site_synonyms: dict[CancerType, Words]
    histologies: dict[CancerType, CancerType]  # histologic type -> the site type it belongs to
    abbreviations: dict[Word, CancerType]
    ignore_table_words: Words


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numerals: dict[Word, StageGroup]  # as written (lower case) -> AJCC group
    substages: Annotated[tuple[Annotated[Word, StringConstraints(pattern="^[a-z]$")], ...], Field(min_length=1)]
    leads: Words
    extents: Words
    blockers: Words
    trailing_blockers: Words


class _Procedure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: ProcedureCategory
    phrases: Words


class _PatternsFile(BaseModel):
    """``patterns.json``: one model for its shape; the terminology it extends comes as validation context."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    provenance: dict[str, Any] = Field(alias="_provenance", min_length=1)
    cancer: _Cancer
    stage: _Stage
    procedures: tuple[_Procedure, ...]
    medications: dict[DrugName, Words]


def load_patterns(path: Path = PATTERNS_PATH) -> PatternRules:
    """Read ``patterns.json`` and check every entry against the terminology tables it extends."""
    context = {
        "cancer_types": _cancer_types(),
        "drugs": {d.name for d in terminology().drugs},
        "procedure_categories": set(PROCEDURE_CATEGORIES),
    }
    data = validated(_PatternsFile, read_rule_file(path), path.name, context=context, error=NoteRulesError)
    cancer, stage = data.cancer, data.stage
    return PatternRules(
        cancer_nouns=cancer.nouns,
        cancer_site_synonyms=dict(cancer.site_synonyms),
        cancer_histologies=dict(cancer.histologies),
        cancer_abbreviations=dict(cancer.abbreviations),
        cancer_ignore_table_words=frozenset(cancer.ignore_table_words),
        stage_numerals=dict(stage.numerals),
        stage_substages=stage.substages,
        stage_leads=stage.leads,
        stage_extents=stage.extents,
        stage_blockers=stage.blockers,
        stage_trailing_blockers=stage.trailing_blockers,
        procedures=tuple((p.category, p.phrases) for p in data.procedures),
        medications=tuple(data.medications.items()),
    )
