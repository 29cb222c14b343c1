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

from shared.fhir.codes import canonical_system
from shared.fhir.record import ICD10CM, ICDO3, LOINC, RXNORM, SNOMED, Code
from shared.staging import StagingData, staging_data

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
    group: str | None = None  # therapeutic group ("EGFR TKI", "platinum"): re-treatment is judged by it
    dual_use: bool = False  # also given for conditions that are not cancers (methotrexate for arthritis)


@dataclass(frozen=True, slots=True)
class DrugMatch:
    """What a medication's codes and words say it is, and how we know."""

    ingredients: tuple[str, ...]
    drug_class: str | None
    via: str  # "code" (RxNorm in the table), "text" (a drug name or synonym), "regimen FOLFOX"; "" if none
    dual_use: bool = False


@dataclass(frozen=True, slots=True)
class ObservationKind:
    """What an Observation is, recognised from its code (never from meta.profile)."""

    kind: str  # staging | other-staging | grade-group | gleason | performance | disease-status | variant |
    #            region-studied | biomarker | finding
    params: dict[str, Any]


class TerminologyError(ValueError):
    """A data file is malformed: raised at load, so a bad table never reaches a decision."""


def _key(spec: str) -> tuple[str, str]:
    """A table key "loinc|21908-9" -> (LOINC URL, code)."""
    system, _, code = spec.partition("|")
    if not code:
        raise TerminologyError(f"code key {spec!r} is not 'system|code'")
    return canonical_system(system), code


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
        self._load_cancers(_load("cancers.json"))
        self._load_drugs(_load("drugs.json"))
        self._load_observations(_load("observations.json"), staging_data())
        procedures = _load("procedures.json")
        self._procedure_codes: dict[str, str] = procedures["snomed"]
        self._procedure_words = [(r["category"], _words_pattern(r["words"])) for r in procedures["keywords"]]
        for category in {*self._procedure_codes.values(), *(c for c, _ in self._procedure_words)}:
            if category not in PROCEDURE_CATEGORIES:
                raise TerminologyError(f"procedures.json: unknown category {category!r}")

    def _load_cancers(self, cancers: dict[str, Any]) -> None:
        self._snomed_cancers: dict[str, CancerCode] = {}
        for row in cancers["snomed"]:
            if row["role"] not in CANCER_ROLES:
                raise TerminologyError(f"cancers.json: bad role {row['role']!r} for {row['code']}")
            self._snomed_cancers[row["code"]] = CancerCode(
                row["type"], row["role"], row["display"], row.get("stage"), generic=row.get("generic", False)
            )
        self._icd_prefixes = sorted(
            (
                (r["prefix"].upper().replace(".", ""), CancerCode(r["type"], r["role"], r["display"]))
                for r in cancers["icd10cm_prefixes"]
            ),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._text_types = [(_words_pattern(r["words"]), r["type"]) for r in cancers["text_types"]]
        # Substring match on purpose: "adenocarcinoma" and "metastatic" must count.
        self._malignant = re.compile("|".join(map(re.escape, cancers["malignancy_words"])), re.IGNORECASE)
        self._not_malignant = _words_pattern(cancers["not_malignancy_words"])
        # Histology: codes (ICD-O-3 morphology, SNOMED CT morphologic abnormality) and words -> a group;
        # groups refine a site ("lung" + small-cell -> sclc).
        self._morphology_codes: dict[tuple[str, str], str] = {}
        self._morphology_ranges: list[tuple[int, int, str]] = []
        for row in cancers.get("morphology", ()):
            system = canonical_system(row["system"])
            if "range" in row:
                low, high = (int(str(x)[:4]) for x in row["range"])
                self._morphology_ranges.append((low, high, row["group"]))
            else:
                self._morphology_codes[(system, row["code"])] = row["group"]
                if system == ICDO3:  # "8140/3" and "8140" both name adenocarcinoma
                    self._morphology_codes.setdefault((system, row["code"].split("/")[0]), row["group"])
        self._histology_words = [(_words_pattern(r["words"]), r["group"]) for r in cancers.get("histology_words", ())]
        self._histology_refines: list[tuple[str, frozenset[str], str]] = [
            (r["type"], frozenset(r["groups"]), r["to"]) for r in cancers["histology_refines"] if "groups" in r
        ]
        self._legacy_refines = [r for r in cancers["histology_refines"] if "morphology_words" in r]
        self._body_sites: dict[str, str] = (cancers.get("body_sites") or {}).get("snomed", {})

    def _load_drugs(self, drugs: dict[str, Any]) -> None:
        self.drugs: tuple[Drug, ...] = tuple(
            Drug(
                d["name"],
                d["class"],
                tuple(d.get("rxcui", [])),
                tuple(d.get("synonyms", [])),
                d.get("group"),
                bool(d.get("dual_use", False)),
            )
            for d in drugs["drugs"]
        )
        for drug in self.drugs:
            if drug.drug_class not in DRUG_CLASSES:
                raise TerminologyError(f"drugs.json: bad class {drug.drug_class!r} for {drug.name}")
        self._drug_by_rxcui = {cui: d for d in self.drugs for cui in d.rxcuis}
        self._drug_by_word = {w.lower(): d for d in self.drugs for w in (d.name, *d.synonyms)}
        self._drug_words = _words_pattern(list(self._drug_by_word))
        by_name = {d.name: d for d in self.drugs}
        self.regimens: dict[str, tuple[Drug, ...]] = {}
        for regimen in drugs.get("regimens", ()):
            missing = [i for i in regimen["ingredients"] if i not in by_name]
            if missing:
                raise TerminologyError(f"drugs.json: regimen {regimen['name']} names unknown drugs {missing}")
            for word in (regimen["name"], *regimen.get("synonyms", ())):
                self.regimens[word.lower()] = tuple(by_name[i] for i in regimen["ingredients"])
        self._regimen_words = _words_pattern(list(self.regimens)) if self.regimens else None

    def _load_observations(self, obs: dict[str, Any], staging: StagingData) -> None:
        kinds: dict[tuple[str, str], ObservationKind] = {}

        def add(spec: str, what: str, **params: Any) -> None:
            kinds.setdefault(_key(spec), ObservationKind(what, params))

        # Staging codes come from staging.json, validated by its own loader (shared.staging).
        for spec, part in staging.observations.items():
            add(spec, "staging", **part)
        for spec, system in staging.other_systems.items():
            add(spec, "other-staging", system=system)
        for spec in sorted(staging.grade_group_observations):
            add(spec, "grade-group")
        self.grade_group_values: dict[tuple[str, str], int] = {  # SNOMED CT qualifier values
            (SNOMED, code): group for code, group in staging.grade_group_values.items()
        }
        self.ajcc_values: dict[str, str] = dict(staging.ajcc_values)
        for spec, scale in obs["performance"].items():
            add(spec, "performance", scale=scale)
        self.performance_answers: dict[str, tuple[str, int]] = {
            code: (row[0], int(row[1])) for code, row in obs["performance_answers"].items()
        }
        for spec in obs["disease_status"]:
            add(spec, "disease-status")
        for spec in obs["genetic_variant"]:
            add(spec, "variant")
        for spec in obs["genomic_region_studied"]:
            add(spec, "region-studied")
        for spec in obs["gleason"]:
            add(spec, "gleason")
        for spec, finding in obs["findings"].items():
            add(spec, "finding", kind=finding)
        for spec, name in obs["biomarkers"].items():
            add(spec, "biomarker", name=name)
        self.observation_kinds = kinds
        self.gene_components: frozenset[str] = frozenset(obs["variant_components"]["gene"])
        self.variant_components: dict[str, str] = {
            code: role for role, codes in obs["variant_components"].items() for code in codes
        }
        self.genes_hgnc: dict[str, str] = obs["genes_hgnc"]
        self.fusion_drivers: frozenset[str] = frozenset(obs["fusion_drivers"])
        self.marker_cancer_types: dict[str, list[str]] = obs["marker_cancer_types"]
        self.equivalent_markers: dict[str, list[str]] = obs["equivalent_markers"]
        self.value_displays: dict[str, str] = obs["value_displays"]
        self._biomarker_text = [(_words_pattern([k]), v) for k, v in obs["biomarker_text"].items()]
        self._kind_text = [
            (_words_pattern(r["words"]), ObservationKind(r["kind"], r.get("params", {}))) for r in obs["kind_text"]
        ]
        self._value_codes = {code: status for status, codes in obs["values"].items() for code in codes}
        self._value_text = [(status, _words_pattern(words)) for status, words in obs["value_text"].items()]

    # --- cancers -------------------------------------------------------------------------
    def cancer(self, codes: list[Code], text: str | None = None) -> CancerCode | None:
        """Recognise a cancer-related condition from its codings, else from its words."""
        for code in codes:
            if code.system == SNOMED and code.code in self._snomed_cancers:
                return self._snomed_cancers[code.code]
        for code in codes:
            if code.system == ICD10CM:
                compact = code.code.upper().replace(".", "")  # "C34.11" and "C3411" are the same code
                for prefix, cancer in self._icd_prefixes:
                    if compact.startswith(prefix):
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

    def cancer_type_from_body_site(self, codes: list[Code]) -> str | None:
        """The organ a body-structure code names ("left breast structure" -> breast)."""
        for code in codes:
            if code.system == SNOMED and code.code in self._body_sites:
                return self._body_sites[code.code]
        return None

    def histology_group(self, codes: list[Code], text: str | None = None) -> str | None:
        """A histology group (small-cell, adenocarcinoma...) from morphology codes, else from words."""
        for code in codes:
            group = self._morphology_codes.get((code.system, code.code))
            if group is None and code.system == ICDO3 and code.code[:4].isdigit():
                number = int(code.code[:4])
                group = self._morphology_codes.get((ICDO3, code.code[:4])) or next(
                    (g for low, high, g in self._morphology_ranges if low <= number <= high), None
                )
            if group:
                return group
        words = " ".join(filter(None, [text, *(c.display or "" for c in codes)]))
        for pattern, group in self._histology_words:
            if pattern.search(words):
                return group
        return None

    def refine_by_group(self, cancer_type: str, group: str | None) -> str:
        """A site refined by its histology group ("lung" + small-cell -> "sclc")."""
        if group:
            for site, groups, to in self._histology_refines:
                if site == cancer_type and group in groups:
                    return to
        return cancer_type

    def refine_by_histology(self, cancer_type: str, histology_text: str | None) -> str:
        """A site refined by histology words ("lung" + "adenocarcinoma" -> "nsclc")."""
        if not histology_text:
            return cancer_type
        if self._histology_refines:
            return self.refine_by_group(cancer_type, self.histology_group([], histology_text))
        lowered = histology_text.lower()
        for rule in self._legacy_refines:
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
    def identify_drug(self, codes: list[Code], text: str | None = None) -> DrugMatch:
        """Ingredients of a medication from RxNorm codes (ingredient or product), drug names and
        synonyms (brands, "5-FU"), and regimen names ("FOLFOX" -> its three drugs)."""
        found: dict[str, Drug] = {}
        via = ""
        for code in codes:
            if code.system == RXNORM and code.code in self._drug_by_rxcui:
                drug = self._drug_by_rxcui[code.code]
                found[drug.name] = drug
                via = "code"
        words = " ".join(filter(None, [text, *(c.display or "" for c in codes)]))
        if words:
            for match in self._drug_words.finditer(words):
                drug = self._drug_by_word[match.group(0).lower()]
                found[drug.name] = drug
                via = via or "text"
            if self._regimen_words is not None:
                for match in self._regimen_words.finditer(words):
                    for drug in self.regimens[match.group(0).lower()]:
                        found[drug.name] = drug
                    via = via or f"regimen {match.group(0)}"
        if not found:
            return DrugMatch((), None, "")
        classes = [d.drug_class for d in found.values()]
        ranked = next((c for c in ("chemotherapy", "targeted", "immunotherapy", "hormonal") if c in classes), None)
        # A regimen is dual-use only when every antineoplastic in it is (methotrexate alone, not CMF).
        anti = [d for d in found.values() if d.drug_class != "supportive"]
        dual = bool(anti) and all(d.dual_use for d in anti)
        return DrugMatch(tuple(sorted(found)), ranked or "supportive", via, dual)

    def drugs_in(self, codes: list[Code], text: str | None = None) -> tuple[tuple[str, ...], str | None]:
        """Ingredient names and the most specific antineoplastic class of a medication."""
        match = self.identify_drug(codes, text)
        return match.ingredients, match.drug_class

    def drug_by_name(self, name: str) -> Drug | None:
        """The drug an ingredient name or synonym stands for ("Taxol" -> paclitaxel)."""
        return self._drug_by_word.get(name.strip().lower())

    # --- observations --------------------------------------------------------------------
    def observation_kind(self, codes: list[Code], text: str | None = None) -> ObservationKind | None:
        """What an Observation reports, from its code; else from the words of its code."""
        for code in codes:
            found = self.observation_kinds.get((code.system, code.code))
            if found is not None:
                return found
        words = " ".join(filter(None, [text, *(c.display or "" for c in codes)]))
        if not words:
            return None
        for pattern, kind in self._kind_text:
            if pattern.search(words):
                return kind
        name = self.biomarker_from_text(words)
        return ObservationKind("biomarker", {"name": name}) if name else None

    def observation_codes(self, kind: str, **params: Any) -> list[Code]:
        """The observation codes of one kind (and parameters), for data requirements."""
        return [
            Code(system, code)
            for (system, code), found in sorted(self.observation_kinds.items())
            if found.kind == kind and all(found.params.get(k) == v for k, v in params.items())
        ]

    def markers_tested(self, codes: list[Code], text: str | None = None) -> set[str]:
        """The markers a test order or test item is about: from a result code the table knows,
        else every marker its words name ("EGFR/ALK/ROS1 panel" -> three)."""
        kind = self.observation_kind(codes)
        if kind is not None and kind.kind == "biomarker" and kind.params.get("name"):
            return {kind.params["name"]}
        words = " ".join(filter(None, [text, *(c.display or "" for c in codes)]))
        return {name for pattern, name in self._biomarker_text if pattern.search(words)}

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


__all__ = [
    "LOINC",
    "CancerCode",
    "Drug",
    "DrugMatch",
    "ObservationKind",
    "Terminology",
    "TerminologyError",
    "canonical_system",
    "terminology",
]
