"""Observation -> facts: stages (AJCC and other systems), biomarkers and variants, performance
status, disease status, Gleason/Grade Group, tumour findings, and results still pending.

An Observation is recognised by what it says (its code, then the words of its code), never by
``meta.profile``: most EHR exports carry no profile. Every fact keeps the element it was read
from, and a value that cannot be read becomes an issue, never a silent drop.
"""

from __future__ import annotations

import re
from typing import Any

from shared.fhir.codes import codings, concept_text, first_concept, primary_code, time_of
from shared.fhir.context import Context
from shared.fhir.record import (
    AJCC,
    HGNC,
    LOINC,
    SNOMED,
    BiomarkerResult,
    Code,
    DiseaseStatus,
    FhirTime,
    Finding,
    PatientRecord,
    PendingResult,
    PerformanceStatus,
    StageAssessment,
)
from shared.staging import (
    AJCC_WORDING,
    gleason_from_grade_group,
    grade_group_from_gleason,
    normalise_category,
    normalise_stage,
)
from shared.terminology import ObservationKind

NOT_RESULTS = {"entered-in-error", "cancelled"}  # never a fact (ingestion skips and counts them)
PENDING = {"registered", "preliminary"}
VALUE_FIELDS = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueInteger",
    "valueBoolean",
    "valueRatio",
    "valueRange",
)
_GLEASON_SUM = re.compile(r"(\d)\s*\+\s*(\d)(?:\s*=\s*(\d+))?")
_GRADE_GROUP = re.compile(r"grade\s*group\s*([1-5])\b", re.IGNORECASE)


def clean_category(value: str | None) -> str | None:
    """'American Joint Committee on Cancer cT3 (qualifier value)' -> 'cT3' (prefix kept: it says
    clinical or pathological); None when no T/N/M category can be read."""
    if not value:
        return None
    text = AJCC_WORDING.sub(" ", value).strip()
    match = re.search(r"\b((?:y|r|a)?[cp]?[TNM](?:is|X|x|[0-4])[a-d]?\d?(?:mi|\(sn\)|\(i[+-]\))?)", text)
    return match.group(1) if match else None


def ajcc_text(value: dict[str, Any] | None, ajcc_values: dict[str, str]) -> tuple[str | None, Code | None]:
    """The AJCC value a CodeableConcept carries: a cancerstaging.org code, a SNOMED CT qualifier
    value from the table, else its display or text."""
    found = codings(value)
    for code in found:
        if code.system == AJCC:
            return code.code, code
        if code.system == SNOMED and code.code in ajcc_values:
            return ajcc_values[code.code], code
    return concept_text(value), (found[0] if found else None)


def value_of(res: dict[str, Any]) -> tuple[str | None, Any]:
    """(element name, value) of the first value[x] present, or (None, None)."""
    for name in VALUE_FIELDS:
        if res.get(name) is not None:
            return name, res[name]
    return None, None


def read_observation(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    concept = res.get("code")
    kind = ctx.terms.observation_kind(codings(concept), concept_text(concept))
    if kind is None:  # ingestion only hands over recognised observations; a direct call may not
        ctx.warn(key, f"{path}.code", "observation not recognised as an oncology fact; not used")
        return
    when, _ = time_of(res, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
    status = res.get("status")
    focus = ctx.refs(res.get("focus"), key, path, "focus")
    if focus:
        ctx.stage_links.setdefault(key, focus[0])
    _, value = value_of(res)
    gene_component = ctx.terms.gene_components
    has_components = any(
        value_of(c)[0] and not any(code.code in gene_component for code in codings(c.get("code")))
        for c in res.get("component") or ()
    )  # a gene studied says what was tested, not what was found
    if value is None and not has_components and kind.kind not in {"finding", "region-studied"}:
        label = kind.params.get("name") or kind.params.get("scale") or concept_text(concept) or kind.kind
        if status in PENDING:
            rec.pending.append(PendingResult(str(label), status, when, key))
        else:
            reason = "data absent" if res.get("dataAbsentReason") else "no value"
            ctx.warn(key, path, f"result without a value ({reason}); not used")
        return
    READ_KIND[kind.kind](res, key, path, rec, ctx, kind, when)


# --- staging -------------------------------------------------------------------------------------
def _staging(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    value = res.get("valueCodeableConcept") or ({"text": res["valueString"]} if res.get("valueString") else None)
    text, code = ajcc_text(value, ctx.terms.ajcc_values)
    element = "Observation.valueCodeableConcept" if res.get("valueCodeableConcept") else "Observation.valueString"
    assessment = StageAssessment(
        None, when, kind.params["kind"], key, code=code, element=element, result_status=res.get("status")
    )
    part = kind.params["part"]
    if part == "group":
        assessment.stage = normalise_stage(text)
        ctx.members[key] = list(ctx.refs(res.get("hasMember"), key, path, "hasMember"))
        if assessment.stage is None:
            ctx.warn(key, f"{path}.value", "stage group value not recognised; not used")
    else:
        category = clean_category(text)
        if category is None or normalise_category(category, part) is None:
            if (code and code.code == "not-applicable") or (text or "").lower().startswith("not applicable"):
                return
            ctx.warn(key, f"{path}.value", f"{part.upper()} category value not recognised; not used")
            return
        setattr(assessment, part, category)
    rec.stages.append(assessment)


def _other_staging(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    """Rai, Binet, FIGO, ISS, Ann Arbor...: a staging fact, never an AJCC stage nor a biomarker."""
    value = res.get("valueCodeableConcept")
    text = concept_text(value) or res.get("valueString")
    system = kind.params["system"]
    group = _other_stage_value(system, str(text)) if text else None
    if group is None:
        ctx.warn(key, f"{path}.value", f"{system} stage value not recognised; not used")
        return
    rec.stages.append(
        StageAssessment(
            group,
            when,
            "clinical",
            key,
            code=primary_code(value),
            system=system,
            element="Observation.valueCodeableConcept" if value else "Observation.valueString",
            result_status=res.get("status"),
        )
    )


def _other_stage_value(system: str, text: str) -> str | None:
    """'Binet Stage A' -> 'A'; 'Stage II Chronic Lymphocytic Leukemia' -> 'II'; 'FIGO Stage IIIA' ->
    'IIIA'; 'Lymphoma stage IIIe' -> 'IIIE'; Breslow/Clark keep their words."""
    if system in {"Breslow", "Clark"}:
        return re.sub(r"\s*\((?:finding|qualifier value)\)", "", text).strip() or None
    cleaned = re.sub(r"\b(?:" + re.escape(system) + r"|stage|r-?iss|iss|figo)\b", " ", text, flags=re.IGNORECASE)
    match = re.search(r"\b(IV|III|II|I|0|[A-C])([A-C]?\d?[ESX]?)\b", cleaned, re.IGNORECASE)
    return (match.group(1) + match.group(2)).upper() if match else None


# --- prostate grade ------------------------------------------------------------------------------
def _grade_group(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    """A Grade Group (ISUP 2014): kept as 'Grade Group', and the Gleason score it stands for."""
    value = res.get("valueCodeableConcept")
    group = next(
        (ctx.terms.grade_group_values.get(c.key) for c in codings(value) if c.key in ctx.terms.grade_group_values), None
    )
    element = "Observation.valueCodeableConcept"
    if group is None:
        text = concept_text(value) or str(res.get("valueString") or res.get("valueInteger") or "")
        match = _GRADE_GROUP.search(text) or re.fullmatch(r"\s*([1-5])\s*", text)
        group = int(match.group(1)) if match else None
        element = "Observation.valueString" if res.get("valueString") else element
    if group is None:
        ctx.warn(key, f"{path}.value", "grade group value not recognised; not used")
        return
    code = primary_code(res.get("code")) or Code("", "", "Grade Group")
    rec.biomarkers.append(
        BiomarkerResult(
            "Grade Group", "measured", when, code, key, f"Grade Group {group}", float(group), None, element=element
        )
    )
    score, _ = gleason_from_grade_group(group)
    rec.biomarkers.append(
        BiomarkerResult(
            "Gleason",
            "measured",
            when,
            code,
            key,
            f"{score} (from Grade Group {group})",
            float(score),
            None,
            element=element,
            derived_from=(key,),
        )
    )


def _gleason(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    """A Gleason score: an integer or quantity, or text ('4+3=7', 'Gleason 7 (3+4)')."""
    element, value = value_of(res)
    score: int | None = None
    pattern: tuple[int, int] | None = None
    if element == "valueInteger" or (element == "valueQuantity" and isinstance(value, dict)):
        raw = value if element == "valueInteger" else value.get("value")
        score = int(raw) if isinstance(raw, int | float) else None
    else:
        text = concept_text(value) if isinstance(value, dict) else str(value)
        match = _GLEASON_SUM.search(text or "")
        if match:
            pattern = (int(match.group(1)), int(match.group(2)))
            score = int(match.group(3)) if match.group(3) else sum(pattern)
        else:
            digits = re.search(r"\b([2-9]|10)\b", text or "")
            score = int(digits.group(1)) if digits else None
    if score is None or not 2 <= score <= 10:
        ctx.warn(key, f"{path}.value", "Gleason score not recognised; not used")
        return
    code = primary_code(res.get("code")) or Code("", "", "Gleason")
    shown = f"{score} ({pattern[0]}+{pattern[1]})" if pattern else str(score)
    rec.biomarkers.append(
        BiomarkerResult(
            "Gleason", "measured", when, code, key, shown, float(score), None, element=f"Observation.{element}"
        )
    )
    group = grade_group_from_gleason(*pattern) if pattern else None
    if group is not None:
        rec.biomarkers.append(
            BiomarkerResult(
                "Grade Group",
                "measured",
                when,
                code,
                key,
                f"Grade Group {group}",
                float(group),
                None,
                element=f"Observation.{element}",
                derived_from=(key,),
            )
        )


# --- performance and disease status --------------------------------------------------------------
def _performance(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    scale: str = kind.params["scale"]
    element, value = value_of(res)
    score: int | None = None
    if element == "valueInteger":
        score = int(value)
    elif element == "valueQuantity" and isinstance(value.get("value"), int | float):
        score = int(value["value"])
    elif element == "valueCodeableConcept":
        answer = next(
            (ctx.terms.performance_answers[c.code] for c in codings(value) if c.code in ctx.terms.performance_answers),
            None,
        )
        if answer is not None:
            scale, score = answer
        else:
            score = _score_in_text(concept_text(value), scale)
    elif element == "valueString":
        score = _score_in_text(str(value), scale)
    if score is None or not (score <= 5 if scale == "ECOG" else score <= 100 and score % 10 == 0) or score < 0:
        ctx.warn(key, f"{path}.value", f"{scale} performance status value not recognised; not used")
        return
    rec.performance.append(PerformanceStatus(scale, score, when, key, element=f"Observation.{element}"))  # type: ignore[arg-type]


def _score_in_text(text: str | None, scale: str) -> int | None:
    """'ECOG 2', 'PS 1 - restricted', 'KPS 80%' -> the number (the first one that fits the scale)."""
    for match in re.finditer(r"\d+", text or ""):
        number = int(match.group(0))
        if (scale == "ECOG" and number <= 5) or (scale == "Karnofsky" and number <= 100):
            return number
    return None


def _disease_status(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    value = primary_code(res.get("valueCodeableConcept"), (SNOMED,))
    if value is None or not value.code:
        ctx.warn(key, f"{path}.value", "cancer disease status value not recognised; not used")
        return
    rec.disease_status.append(DiseaseStatus(value, when, key, element="Observation.valueCodeableConcept"))


# --- biomarkers and genomics ---------------------------------------------------------------------
def _biomarker(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    terms = ctx.terms
    found = codings(res.get("code"))
    name = kind.params.get("name") or concept_text(res.get("code")) or "tumour marker"
    code = next((c for c in found if c.system == LOINC), found[0] if found else Code("", "", name))
    element, value = value_of(res)
    if element == "valueQuantity" and value.get("value") is not None:
        unit = value.get("unit") or value.get("code")
        measured = f"{value['value']} {unit or ''}".strip()
        result = _result(res, name, "measured", when, code, key, measured, f"Observation.{element}")
        result.quantity, result.unit = float(value["value"]), unit
        rec.biomarkers.append(result)
        return
    value_codes, value_text = _value_codes(res)
    status = terms.value_status(value_codes, value_text)
    if status is None:
        ctx.warn(key, f"{path}.value", f"{name} result value not recognised; kept as indeterminate")
    shown: str | None = value_text or next(
        (
            c.display or terms.value_displays.get(c.code)
            for c in value_codes
            if c.display or c.code in terms.value_displays
        ),
        None,
    )
    rec.biomarkers.append(
        _result(res, name, status or "indeterminate", when, code, key, shown, f"Observation.{element}")
    )


def _result(
    res: dict[str, Any], name: str, status: str, when: Any, code: Code, key: str, shown: str | None, element: str
) -> BiomarkerResult:
    """A result with the status and issue time of its Observation (corrections replace by them)."""
    return BiomarkerResult(
        name,
        status,
        when,
        code,
        key,
        shown,
        element=element,
        result_status=res.get("status"),
        issued=FhirTime.parse(res.get("issued")),
    )


def _value_codes(res: dict[str, Any]) -> tuple[list[Code], str | None]:
    value = res.get("valueCodeableConcept")
    if value:
        return codings(value), concept_text(value)
    for name in ("valueString", "valueBoolean", "valueInteger"):
        if name in res:
            return [], str(res[name])
    interpretation = first_concept(res.get("interpretation"))
    return codings(interpretation), concept_text(interpretation)


def _variant(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    """A genetic variant (mCODE STU1 panel or the STU2+ / Genomics Reporting shape): one result
    per gene studied, with the protein change (else DNA change) as its value. A fusion reports
    its kinase (3') partner as positive and the other gene as ``fusion-partner``."""
    terms = ctx.terms
    parts: dict[str, list[str]] = {}
    genes: list[str] = []
    for component in res.get("component") or ():
        role = next(
            (
                terms.variant_components[c.code]
                for c in codings(component.get("code"))
                if c.code in terms.variant_components
            ),
            None,
        )
        if role is None:
            continue
        value = component.get("valueCodeableConcept")
        if role == "gene":
            gene = next(
                (terms.genes_hgnc[c.code] for c in codings(value) if c.system == HGNC and c.code in terms.genes_hgnc),
                None,
            )
            gene = gene or _gene_name(concept_text(value))
            if gene:
                genes.append(gene)
        else:
            found = codings(value)
            text = concept_text(value) or component.get("valueString") or (found[0].code if found else None)
            if text:
                parts.setdefault(role, []).append(str(text))
    if not genes:
        gene = terms.biomarker_from_text(concept_text(res.get("code")) or "")
        if gene is None:
            ctx.warn(key, f"{path}.component", "genetic variant without a gene studied; not used")
            return
        genes = [gene]
    value_codes, value_text = _value_codes(res)
    status = terms.value_status(value_codes, value_text) or "indeterminate"
    kind_words = " ".join(parts.get("type", ())).lower()
    fusion = (
        len(genes) > 1
        and status == "positive"
        and ("fusion" in kind_words or "rearrangement" in kind_words or not parts.get("protein"))
    )
    code = next(
        (c for c in codings(res.get("code")) if c.system == LOINC), Code(LOINC, "69548-6", "Genetic variant assessment")
    )
    if fusion:
        drivers = [g for g in genes if g in terms.fusion_drivers]
        driver = drivers[-1] if drivers else genes[-1]  # by convention the 3' gene is listed last
        fusion_name = "fusion " + "-".join(genes)
        for gene in genes:
            status = "positive" if gene == driver else "fusion-partner"
            rec.biomarkers.append(
                _result(res, gene, status, when, code, key, fusion_name, "Observation.component[48018-6]")
            )
        return
    changes = parts.get("protein") or parts.get("dna") or parts.get("discrete") or []
    element = (
        "Observation.component[48005-3]"
        if parts.get("protein")
        else "Observation.component[48004-6]"
        if parts.get("dna")
        else "Observation.valueCodeableConcept"
    )
    shown = _short_change(changes[0]) if changes else value_text
    for gene in genes:
        rec.biomarkers.append(_result(res, gene, status, when, code, key, shown, element))


def _gene_name(text: str | None) -> str | None:
    if not text:
        return None
    word = text.strip().split()[0].upper()
    return {"ERBB2": "HER2"}.get(word, word) if re.fullmatch(r"[A-Z0-9\-]{2,12}", word) else None


AMINO_ACIDS = {
    "Ala": "A", "Arg": "R", "Asn": "N", "Asp": "D", "Cys": "C", "Gln": "Q", "Glu": "E", "Gly": "G", "His": "H",
    "Ile": "I", "Leu": "L", "Lys": "K", "Met": "M", "Phe": "F", "Pro": "P", "Ser": "S", "Thr": "T", "Trp": "W",
    "Tyr": "Y", "Val": "V", "Ter": "*",
}  # fmt: skip
_THREE_LETTER = re.compile("|".join(AMINO_ACIDS))


def _short_change(text: str) -> str:
    """'NP_005219.2:p.Leu858Arg' -> 'p.L858R' (the one-letter form reports and criteria use);
    'NM_004333.6:c.1799T>A' -> 'c.1799T>A'; other values as given."""
    match = re.search(r"(p\.\(?[^\s)]+\)?)", text) or re.search(r"([cg]\.[^\s)]+)", text)
    change = match.group(1) if match else text
    if change.startswith("p."):
        change = _THREE_LETTER.sub(lambda m: AMINO_ACIDS[m.group(0)], change.replace("(", "").replace(")", ""))
    return change


# --- findings and things that are not results ----------------------------------------------------
def _finding(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    element, value = value_of(res)
    shown: str | None = None
    if element == "valueQuantity":
        shown = f"{value.get('value')} {value.get('unit') or value.get('code') or ''}".strip()
    elif element == "valueCodeableConcept":
        shown = concept_text(value)
    elif element is not None:
        shown = str(value)
    else:
        sizes = [c.get("valueQuantity") for c in res.get("component") or () if isinstance(c.get("valueQuantity"), dict)]
        shown = " x ".join(f"{q.get('value')} {q.get('unit') or q.get('code') or ''}".strip() for q in sizes) or None
        element = "component" if sizes else "extension"
    code = primary_code(res.get("code")) or Code("", "", kind.params["kind"])
    rec.findings.append(Finding(kind.params["kind"], code, shown, when, key, element=f"Observation.{element}"))


def _region_studied(
    res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context, kind: ObservationKind, when: Any
) -> None:
    """What a genomic test sequenced: context for a reviewer, not a result."""


READ_KIND = {
    "staging": _staging,
    "other-staging": _other_staging,
    "grade-group": _grade_group,
    "gleason": _gleason,
    "performance": _performance,
    "disease-status": _disease_status,
    "biomarker": _biomarker,
    "variant": _variant,
    "finding": _finding,
    "region-studied": _region_studied,
}
