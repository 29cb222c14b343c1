"""Oncology code tables (JSON data files beside this module), loaded and validated once.

``terminology()`` returns the process-wide immutable instance; nothing is read at import time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from shared.fhir.record import ICD10CM, LOINC, RXNORM, SNOMED, Code

HERE = Path(__file__).parent
DRUG_CLASSES = {"chemotherapy", "targeted", "immunotherapy", "hormonal", "supportive"}
PROCEDURE_CATEGORIES = {"surgery", "radiation", "chemoradiation", "imaging", "biopsy", "endoscopy", "other"}
CANCER_ROLES = {"primary", "secondary", "suspected", "stage"}


@dataclass(frozen=True, slots=True)
class CancerCode:
    cancer_type: str
    role: str  # primary | secondary | suspected | stage
    display: str
    stage: str | None = None
    recognised_by: str = "code"
    generic: bool = False


@dataclass(frozen=True, slots=True)
class Drug:
    name: str
    drug_class: str
    rxcuis: tuple[str, ...]
    synonyms: tuple[str, ...]


class TerminologyError(ValueError):
    """A data file is malformed: raised at load, so a bad table never reaches a decision."""


def _load(name: str) -> dict[str, Any]:
    data = json.loads((HERE / name).read_text(encoding="utf-8"))
    if "_provenance" not in data:
        raise TerminologyError(f"{name}: missing _provenance block")
    return data


def _words_pattern(words: list[str]) -> re.Pattern[str]:
    """Whole words, longest first; a leading/trailing ``*`` marks a stem ("*ectomy", "mammogra*")."""

    def one(word: str) -> str:
        body = re.escape(word.strip("*"))
        head = "" if word.startswith("*") else r"(?<![a-z0-9])"
        tail = "" if word.endswith("*") else r"(?![a-z0-9])"
        return head + body + tail

    alternatives = "|".join(one(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(f"(?:{alternatives})", re.IGNORECASE)


class Terminology:
    def __init__(self) -> None:
        cancers = _load("cancers.json")
        self._snomed_cancers: dict[str, CancerCode] = {}
        for row in cancers["snomed"]:
            if row["role"] not in CANCER_ROLES:
                raise TerminologyError(f"cancers.json: bad role {row['role']!r} for {row['code']}")
            self._snomed_cancers[row["code"]] = CancerCode(
                row["type"], row["role"], row["display"], row.get("stage"), generic=row.get("generic", False)
            )
        self._icd_prefixes = sorted(
            ((r["prefix"], CancerCode(r["type"], r["role"], r["display"])) for r in cancers["icd10cm_prefixes"]),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._text_types = [(_words_pattern(r["words"]), r["type"]) for r in cancers["text_types"]]
        # Substring match on purpose: "adenocarcinoma" and "metastatic" must count.
        self._malignant = re.compile("|".join(map(re.escape, cancers["malignancy_words"])), re.IGNORECASE)
        self._not_malignant = _words_pattern(cancers["not_malignancy_words"])
        self._histology = cancers["histology_refines"]

        drugs = _load("drugs.json")
        self.drugs: tuple[Drug, ...] = tuple(
            Drug(d["name"], d["class"], tuple(d.get("rxcui", [])), tuple(d.get("synonyms", []))) for d in drugs["drugs"]
        )
        for drug in self.drugs:
            if drug.drug_class not in DRUG_CLASSES:
                raise TerminologyError(f"drugs.json: bad class {drug.drug_class!r} for {drug.name}")
        self._drug_by_rxcui = {cui: d for d in self.drugs for cui in d.rxcuis}
        self._drug_by_word = {w.lower(): d for d in self.drugs for w in (d.name, *d.synonyms)}
        self._drug_words = _words_pattern(list(self._drug_by_word))

        obs = _load("observations.json")
        self.staging: dict[str, dict[str, str]] = obs["staging"]
        self.performance: dict[str, str] = obs["performance"]
        self.disease_status: frozenset[str] = frozenset(obs["disease_status"])
        self.biomarkers_loinc: dict[str, str] = obs["biomarkers_loinc"]
        self.genetic_panels: frozenset[str] = frozenset(obs["genetic_panels_loinc"])
        self.gene_components: frozenset[str] = frozenset(obs["gene_component_loinc"])
        self.genes_hgnc: dict[str, str] = obs["genes_hgnc"]
        self.marker_cancer_types: dict[str, list[str]] = obs["marker_cancer_types"]
        self.value_displays: dict[str, str] = obs["value_displays"]
        self._biomarker_text = [(_words_pattern([k]), v) for k, v in obs["biomarker_text"].items()]
        self._value_codes = {code: status for status, codes in obs["values"].items() for code in codes}
        self._value_text = [(status, _words_pattern(words)) for status, words in obs["value_text"].items()]
        # Loinc codes that make an Observation worth validating at all; everything else is skipped.
        self.relevant_loinc: frozenset[str] = frozenset(
            {*self.staging, *self.performance, *self.disease_status, *self.biomarkers_loinc, *self.genetic_panels}
        )

        procedures = _load("procedures.json")
        self._procedure_codes: dict[str, str] = procedures["snomed"]
        self._procedure_words = [(r["category"], _words_pattern(r["words"])) for r in procedures["keywords"]]
        for category in {*self._procedure_codes.values(), *(c for c, _ in self._procedure_words)}:
            if category not in PROCEDURE_CATEGORIES:
                raise TerminologyError(f"procedures.json: unknown category {category!r}")

    # --- cancers -------------------------------------------------------------------------
    def cancer(self, codes: list[Code], text: str | None = None) -> CancerCode | None:
        """Recognise a cancer-related condition from its codings, else from its words."""
        for code in codes:
            if code.system == SNOMED and code.code in self._snomed_cancers:
                return self._snomed_cancers[code.code]
        for code in codes:
            if code.system == ICD10CM:
                for prefix, cancer in self._icd_prefixes:
                    if code.code.upper().startswith(prefix):
                        return cancer
        words = " ".join(filter(None, [text, *(c.display or "" for c in codes)]))
        if words and self._malignant.search(words) and not self._not_malignant.search(words):
            return CancerCode(self.cancer_type_from_text(words) or "other", "primary", words, recognised_by="text")
        return None

    def cancer_type_from_text(self, text: str) -> str | None:
        for pattern, cancer_type in self._text_types:
            if pattern.search(text):
                return cancer_type
        return None

    def refine_by_histology(self, cancer_type: str, histology_text: str | None) -> str:
        if not histology_text:
            return cancer_type
        lowered = histology_text.lower()
        for rule in self._histology:
            if rule["type"] == cancer_type and any(w in lowered for w in rule["morphology_words"]):
                return str(rule["to"])
        return cancer_type

    def cancer_display(self, code: Code) -> str | None:
        known = self._snomed_cancers.get(code.code) if code.system == SNOMED else None
        return known.display if known else None

    def is_generic_cancer_code(self, code: Code) -> bool:
        known = self._snomed_cancers.get(code.code) if code.system == SNOMED else None
        return bool(known and known.generic)

    # --- drugs ---------------------------------------------------------------------------
    def drugs_in(self, codes: list[Code], text: str | None = None) -> tuple[tuple[str, ...], str | None]:
        """Ingredient names and the most specific antineoplastic class of a medication."""
        found: dict[str, Drug] = {}
        for code in codes:
            if code.system == RXNORM and code.code in self._drug_by_rxcui:
                drug = self._drug_by_rxcui[code.code]
                found[drug.name] = drug
        words = " ".join(filter(None, [text, *(c.display or "" for c in codes)]))
        for match in self._drug_words.finditer(words):
            drug = self._drug_by_word[match.group(0).lower()]
            found[drug.name] = drug
        if not found:
            return (), None
        classes = [d.drug_class for d in found.values()]
        ranked = next((c for c in ("chemotherapy", "targeted", "immunotherapy", "hormonal") if c in classes), None)
        return tuple(sorted(found)), ranked or "supportive"

    def drug_by_name(self, name: str) -> Drug | None:
        """The drug an ingredient name or synonym stands for ("Taxol" -> paclitaxel)."""
        return self._drug_by_word.get(name.strip().lower())

    # --- observations --------------------------------------------------------------------
    def biomarker_from_text(self, text: str) -> str | None:
        for pattern, name in self._biomarker_text:
            if pattern.search(text):
                return name
        return None

    def value_status(self, codes: list[Code], text: str | None) -> str | None:
        for code in codes:
            if code.code in self._value_codes:
                return self._value_codes[code.code]
        if text:
            # Longest phrases first so "not detected" wins over "detected".
            hits = [(m.end() - m.start(), status) for status, p in self._value_text for m in p.finditer(text)]
            if hits:
                return max(hits)[1]
        return None

    # --- procedures ----------------------------------------------------------------------
    def procedure_category(self, codes: list[Code], text: str | None = None) -> str:
        for code in codes:
            if code.system == SNOMED and code.code in self._procedure_codes:
                return self._procedure_codes[code.code]
        words = " ".join(filter(None, [text, *(c.display or "" for c in codes)]))
        for category, pattern in self._procedure_words:
            if pattern.search(words):
                return category
        return "other"


@cache
def terminology() -> Terminology:
    return Terminology()


__all__ = ["LOINC", "CancerCode", "Drug", "Terminology", "TerminologyError", "terminology"]
