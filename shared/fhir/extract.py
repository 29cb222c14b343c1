"""Per-resource-type readers: validated raw FHIR JSON -> facts of a ``PatientRecord``.

Each reader gets a resource that has already passed its ``fhir.resources`` R4B model, so shapes
are known; readers add to the record and return nothing. Linking facts to one another (stages to
cancers, notes to mentions) happens after all resources are read, in ``shared.fhir.ingest``.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.fhir.codes import (
    all_codings,
    codings,
    concept_text,
    extension_value,
    first_concept,
    primary_code,
    profiles,
    status_code,
    time_of,
)
from shared.fhir.record import (
    AJCC,
    LOINC,
    RXNORM,
    SNOMED,
    BiomarkerResult,
    CancerCondition,
    ClinicalNote,
    Code,
    ConditionFact,
    Demographics,
    DiseaseStatus,
    EncounterEvent,
    FhirTime,
    ImagingEvent,
    IngestIssue,
    MedicationEvent,
    Order,
    PatientRecord,
    PerformanceStatus,
    ProcedureEvent,
    ReportEvent,
    StageAssessment,
)
from shared.fhir.references import ReferenceIndex
from shared.terminology import Terminology

MCODE = "/StructureDefinition/mcode-"
ORDER_STATUSES = {"draft", "active", "on-hold"}
IMAGING_CATEGORIES = {"RAD", "imaging", "LP29684-5", "18748-4", "CT", "MR", "NMR", "US", "RX"}
PATHOLOGY_CATEGORIES = {"PAT", "SP", "CP", "GE", "CG", "11526-1", "LP7839-6"}
_TAGS = re.compile(r"<[^>]+>")
_ROMAN = {"0": "0", "1": "I", "2": "II", "3": "III", "4": "IV"}
_STAGE = re.compile(r"^(?:stage\s*)?([0-4]|0is|IV|III|II|I)([A-C]\d?)?$", re.IGNORECASE)


def normalise_stage(value: str | None) -> str | None:
    """'3C', 'Stage IIIC', 'IIIC' -> 'IIIC'; 'limited'/'extensive' pass through; else the text."""
    if not value:
        return None
    text = value.strip()
    lowered = text.lower()
    if "extensive" in lowered:
        return "extensive"
    if "limited" in lowered:
        return "limited"
    match = _STAGE.match(re.sub(r"[\s-]", "", text))
    if not match:
        return text
    group = match.group(1).upper()
    group = _ROMAN.get(group, group)
    return group + (match.group(2) or "").upper()


@dataclass
class Context:
    """What every reader needs: the input's references, the code tables, and the sink for issues."""

    index: ReferenceIndex
    terms: Terminology
    issues: list[IngestIssue] = field(default_factory=list)
    # Facts whose links are resolved after all resources are read.
    stage_links: dict[str, str] = field(default_factory=dict)  # Observation key -> Condition key
    members: dict[str, list[str]] = field(default_factory=dict)  # stage group obs -> member obs keys

    def warn(self, key: str, path: str, message: str) -> None:
        self._issue("warning", key, path, message)

    def error(self, key: str, path: str, message: str) -> None:
        self._issue("error", key, path, message)

    def _issue(self, severity: Literal["error", "warning"], key: str, path: str, message: str) -> None:
        rtype, _, rid = key.partition("/")
        self.issues.append(IngestIssue(severity, rtype, rid, path, message))

    def refs(self, values: Any, key: str, path: str, field_name: str) -> tuple[str, ...]:
        """Resolve a list of references, warning (not failing) on each one that dangles."""
        out = []
        for ref in values or ():
            target = self.index.resolve(ref)
            if target:
                out.append(target)
            elif isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                if not ref["reference"].startswith("#"):
                    self.warn(key, f"{path}.{field_name}", "reference does not resolve within the input")
        return tuple(out)


Reader = Callable[[dict[str, Any], str, str, PatientRecord, Context], None]


def read_patient(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    rec.patient = Demographics(
        id=key.partition("/")[2],
        birth_date=FhirTime.parse(res.get("birthDate")),
        gender=res.get("gender"),
        deceased=FhirTime.parse(res.get("deceasedDateTime")),
        source=key,
    )


def read_condition(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    concept = res.get("code")
    found = codings(concept)
    onset, _ = time_of(res, "onsetDateTime", "onsetPeriod", "recordedDate")
    abatement, _ = time_of(res, "abatementDateTime", "abatementPeriod")
    clinical = status_code(res.get("clinicalStatus"))
    verification = status_code(res.get("verificationStatus"))
    cancer = ctx.terms.cancer(found, concept_text(concept))
    profile_role = next(
        (r for p in profiles(res) for r in ("primary", "secondary") if f"{MCODE}{r}-cancer-condition" in p), None
    )
    code = primary_code(concept, (SNOMED,)) or Code("", "", "condition without code")
    if code.display is None:
        code = Code(code.system, code.code, ctx.terms.cancer_display(code))
    if verification in {"refuted", "entered-in-error"}:
        rec.conditions.append(ConditionFact(key, code, onset, abatement, clinical, cancer is not None))
        return
    if cancer and cancer.role == "stage":
        rec.stages.append(StageAssessment(cancer.stage, onset, "condition-code", key, code=code))
        ctx.stage_links.setdefault(key, f"type:{cancer.cancer_type}")
        return
    if (cancer is None and profile_role is None) or (cancer and cancer.role == "suspected"):
        rec.conditions.append(ConditionFact(key, code, onset, abatement, clinical, cancer is not None))
        return
    role = profile_role or (cancer.role if cancer else "primary")
    histology = extension_value(res, "mcode-histology-morphology-behavior")
    histology_code = primary_code(histology) if histology else None
    cancer_type = cancer.cancer_type if cancer else "other"
    cancer_type = ctx.terms.refine_by_histology(cancer_type, histology_code.display if histology_code else None)
    related = extension_value(res, "mcode-related-primary-cancer-condition")
    body_site = first_concept(res.get("bodySite"))
    item = CancerCondition(
        source=key,
        code=code,
        cancer_type=cancer_type,
        role="secondary" if role == "secondary" else "primary",
        onset=onset,
        abatement=abatement,
        clinical_status=clinical,
        verification_status=verification,
        body_site=primary_code(body_site) if body_site else None,
        histology=histology_code,
        related_primary=ctx.index.resolve(related) if related else None,
        recognised_by=cancer.recognised_by if cancer else "profile",
    )
    for i, stage in enumerate(res.get("stage") or ()):
        summary = primary_code(stage.get("summary"), (AJCC, SNOMED))
        text = concept_text(stage.get("summary")) or (summary.code if summary else None)
        if summary or text:
            item.stages.append(
                StageAssessment(
                    normalise_stage(summary.code if summary and summary.system == AJCC else text),
                    onset,
                    "summary",
                    f"{key}#stage[{i}]",
                    code=summary,
                    cancer_source=key,
                )
            )
        for assessment in stage.get("assessment") or ():
            target = ctx.index.resolve(assessment)
            if target:
                ctx.stage_links[target] = key
    rec.cancers.append(item)


def _value_codes(res: dict[str, Any]) -> tuple[list[Code], str | None]:
    value = res.get("valueCodeableConcept")
    if value:
        return codings(value), concept_text(value)
    for name in ("valueString", "valueBoolean", "valueInteger"):
        if name in res:
            return [], str(res[name])
    interpretation = first_concept(res.get("interpretation"))
    return codings(interpretation), concept_text(interpretation)


def read_observation(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    concept = res.get("code")
    found = codings(concept)
    loinc = next((c.code for c in found if c.system == LOINC), None)
    when, _ = time_of(res, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
    terms = ctx.terms
    focus = ctx.refs(res.get("focus"), key, path, "focus")
    if focus:
        ctx.stage_links.setdefault(key, focus[0])
    if loinc in terms.staging:
        part = terms.staging[loinc]
        value = primary_code(res.get("valueCodeableConcept"))
        text = (value.code if value and value.system == AJCC else None) or concept_text(res.get("valueCodeableConcept"))
        assessment = StageAssessment(None, when, part["kind"], key, code=value)
        if part["part"] == "group":
            assessment.stage = normalise_stage(text)
            ctx.members[key] = list(ctx.refs(res.get("hasMember"), key, path, "hasMember"))
        else:
            setattr(assessment, part["part"], text)
        rec.stages.append(assessment)
        return
    if loinc in terms.performance:
        scale = terms.performance[loinc]
        score = res.get("valueInteger")
        if score is None:
            digits = re.search(r"\d+", concept_text(res.get("valueCodeableConcept")) or "")
            score = int(digits.group(0)) if digits else None
        if score is None:
            ctx.warn(key, path, "performance status without a value")
            return
        rec.performance.append(PerformanceStatus(scale, int(score), when, key))  # type: ignore[arg-type]
        return
    if loinc in terms.disease_status:
        value = primary_code(res.get("valueCodeableConcept"), (SNOMED,))
        if value:
            rec.disease_status.append(DiseaseStatus(value, when, key))
        return
    if any("genomic-region-studied" in p for p in profiles(res)):
        return  # what was sequenced, not a result
    rec.biomarkers.append(_biomarker(res, key, found, loinc, when, ctx))


def _biomarker(
    res: dict[str, Any], key: str, found: list[Code], loinc: str | None, when: FhirTime | None, ctx: Context
) -> BiomarkerResult:
    terms = ctx.terms
    name = terms.biomarkers_loinc.get(loinc or "")
    for component in res.get("component") or ():
        if any(c.code in terms.gene_components for c in codings(component.get("code"))):
            genes = codings(component.get("valueCodeableConcept"))
            gene = next((terms.genes_hgnc[g.code] for g in genes if g.code in terms.genes_hgnc), None)
            name = name or gene or concept_text(component.get("valueCodeableConcept"))
    name = (
        name
        or terms.biomarker_from_text(concept_text(res.get("code")) or "")
        or (concept_text(res.get("code")) or (f"LOINC {loinc}" if loinc else "tumour marker"))
    )
    code = next((c for c in found if c.system == LOINC), found[0] if found else Code("", "", name))
    quantity = res.get("valueQuantity")
    if isinstance(quantity, dict) and quantity.get("value") is not None:
        unit = quantity.get("unit") or quantity.get("code")
        number = float(quantity["value"])
        return BiomarkerResult(
            name, "measured", when, code, key, f"{quantity['value']} {unit or ''}".strip(), number, unit
        )
    value_codes, value_text = _value_codes(res)
    status = terms.value_status(value_codes, value_text) or "indeterminate"
    shown = value_text or next(
        (
            c.display or terms.value_displays.get(c.code)
            for c in value_codes
            if c.display or c.code in terms.value_displays
        ),
        None,
    )
    return BiomarkerResult(name, status, when, code, key, shown)


def _medication_code(res: dict[str, Any], key: str, path: str, ctx: Context) -> tuple[Code, list[Code], str | None]:
    concept = res.get("medicationCodeableConcept")
    if concept is None and res.get("medicationReference"):
        target = ctx.index.get(ctx.index.resolve(res["medicationReference"]))
        if target is None:
            ctx.warn(
                key,
                f"{path}.medicationReference",
                "medication reference does not resolve within the input",
            )
        concept = target.resource.get("code") if target else None
        if concept is None:
            display = res["medicationReference"].get("display")
            concept = {"text": display} if display else None
    found = codings(concept)
    code = primary_code(concept, (RXNORM,)) or Code("", "", "unknown medication")
    return code, found, concept_text(concept)


def read_medication(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    rtype = key.partition("/")[0]
    code, found, text = _medication_code(res, key, path, ctx)
    ingredients, drug_class = ctx.terms.drugs_in(found, text)
    reasons = ctx.refs(res.get("reasonReference"), key, path, "reasonReference")
    if rtype == "MedicationRequest":
        start, end = time_of(res, "authoredOn")
        validity = (res.get("dispenseRequest") or {}).get("validityPeriod") or {}
        end = FhirTime.parse(validity.get("end")) or end
        kind = "request"
        status, intent = res.get("status"), res.get("intent")
        if status in ORDER_STATUSES:
            rec.orders.append(Order(key, code, status, intent, start, reasons, ingredients))
    elif rtype == "MedicationAdministration":
        start, end = time_of(res, "effectiveDateTime", "effectivePeriod")
        kind, status, intent = "administration", res.get("status"), None
    else:
        start, end = time_of(res, "effectiveDateTime", "effectivePeriod", "dateAsserted")
        kind, status, intent = "statement", res.get("status"), None
    rec.medications.append(
        MedicationEvent(key, kind, code, ingredients, drug_class, status, start, end, intent, reasons)  # type: ignore[arg-type]
    )


def read_procedure(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    concept = res.get("code")
    found = codings(concept)
    start, end = time_of(res, "performedDateTime", "performedPeriod")
    body_site = first_concept(res.get("bodySite"))
    rec.procedures.append(
        ProcedureEvent(
            key,
            primary_code(concept, (SNOMED,)) or Code("", "", "procedure without code"),
            ctx.terms.procedure_category(found, concept_text(concept)),
            start,
            end,
            res.get("status"),
            ctx.refs(res.get("reasonReference"), key, path, "reasonReference"),
            primary_code(body_site) if body_site else None,
        )
    )


def read_service_request(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    if res.get("status") not in ORDER_STATUSES:
        return
    concept = res.get("code")
    code = primary_code(concept, (LOINC, SNOMED)) or Code("", "", "service request without code")
    authored, _ = time_of(res, "authoredOn")
    reasons = ctx.refs(res.get("reasonReference"), key, path, "reasonReference")
    rec.orders.append(Order(key, code, res.get("status"), res.get("intent"), authored, reasons))


def read_encounter(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    period = res.get("period") or {}
    klass = res.get("class")
    rec.encounters.append(
        EncounterEvent(
            key,
            primary_code(first_concept(res.get("type")), (SNOMED,)),
            klass.get("code") if isinstance(klass, dict) else None,
            FhirTime.parse(period.get("start")),
            FhirTime.parse(period.get("end")),
        )
    )


def read_imaging_study(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    started, _ = time_of(res, "started")
    series = res.get("series") or ()
    modalities = {s["modality"].get("code") for s in series if isinstance(s.get("modality"), dict)}
    modalities.update(m.get("code") for m in res.get("modality") or () if isinstance(m, dict))
    sites = {
        s["bodySite"].get("display") or s["bodySite"].get("code") for s in series if isinstance(s.get("bodySite"), dict)
    }
    procedure = first_concept(res.get("procedureCode"))
    rec.imaging.append(
        ImagingEvent(
            key,
            started,
            tuple(sorted(filter(None, modalities))),
            tuple(sorted(filter(None, sites))),
            res.get("description"),
            primary_code(procedure) if procedure else None,
        )
    )


def _decode_attachment(att: dict[str, Any], key: str, path: str, ctx: Context) -> tuple[str, str] | None:
    content_type = str(att.get("contentType") or "text/plain")
    if "data" not in att:
        if att.get("url"):
            ctx.warn(
                key,
                path,
                "attachment given by URL is not fetched; only inline data is read",
            )
        return None
    if not content_type.startswith(("text/", "application/xhtml")):
        return None
    charset = "utf-8"
    match = re.search(r"charset=([\w\-]+)", content_type)
    if match:
        charset = match.group(1)
    try:
        text = base64.b64decode(att["data"], validate=True).decode(charset, errors="replace")
    except (binascii.Error, ValueError, LookupError):
        ctx.error(key, path, "attachment data is not valid base64")
        return None
    if "html" in content_type:
        text = html.unescape(_TAGS.sub(" ", text))
    return text, content_type.split(";")[0]


def read_document_reference(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    when = FhirTime.parse(res.get("date")) or time_of(res.get("context") or {}, "period")[0]
    doc_type = primary_code(res.get("type"), (LOINC,))
    for i, content in enumerate(res.get("content") or ()):
        decoded = _decode_attachment(content.get("attachment") or {}, key, f"{path}.content[{i}].attachment", ctx)
        if decoded:
            rec.notes.append(ClinicalNote(key, when, doc_type, decoded[0], decoded[1]))


def read_diagnostic_report(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    concept = res.get("code")
    code = primary_code(concept, (LOINC,)) or Code("", "", "report without code")
    when, _ = time_of(res, "effectiveDateTime", "effectivePeriod", "issued")
    categories = {c.code for c in all_codings(res.get("category"))}
    results = ctx.refs(res.get("result"), key, path, "result")
    conclusion = res.get("conclusion")
    for i, form in enumerate(res.get("presentedForm") or ()):
        decoded = _decode_attachment(form, key, f"{path}.presentedForm[{i}]", ctx)
        if decoded:
            rec.notes.append(ClinicalNote(key, when, code, decoded[0], decoded[1]))
    if categories & IMAGING_CATEGORIES:
        rec.imaging.append(ImagingEvent(key, when, (), (), concept_text(concept), code, conclusion))
    else:
        category = next(iter(sorted(categories & PATHOLOGY_CATEGORIES)), None) or next(iter(sorted(categories)), None)
        rec.reports.append(ReportEvent(key, code, category, when, conclusion, results))


def read_composition(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    """Document bundles: the Composition's section narratives are the note text."""
    parts = []
    for section in res.get("section") or ():
        div = (section.get("text") or {}).get("div")
        if div:
            parts.append(f"# {section.get('title') or 'Section'}\n{html.unescape(_TAGS.sub(' ', div)).strip()}")
    if parts:
        rec.notes.append(
            ClinicalNote(
                key,
                FhirTime.parse(res.get("date")),
                primary_code(res.get("type"), (LOINC,)),
                "\n\n".join(parts),
                "text/plain",
            )
        )


READERS: dict[str, Reader] = {
    "Patient": read_patient,
    "Condition": read_condition,
    "Observation": read_observation,
    "MedicationRequest": read_medication,
    "MedicationAdministration": read_medication,
    "MedicationStatement": read_medication,
    "Procedure": read_procedure,
    "ServiceRequest": read_service_request,
    "Encounter": read_encounter,
    "ImagingStudy": read_imaging_study,
    "DocumentReference": read_document_reference,
    "DiagnosticReport": read_diagnostic_report,
    "Composition": read_composition,
}
