"""Per-resource-type readers: validated raw FHIR JSON -> facts of a ``PatientRecord``.

Each reader gets a resource that has already passed its ``fhir.resources`` R4B model, so shapes
are known; readers add to the record and return nothing. Linking facts to one another (stages to
cancers, notes to mentions) happens after all resources are read, in ``shared.fhir.ingest``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from shared.config import limits
from shared.errors import check_deadline
from shared.fhir.codes import (
    all_codings,
    codings,
    concept_text,
    extension_value,
    first_concept,
    primary_code,
    status_code,
    time_of,
)
from shared.fhir.context import Context
from shared.fhir.html_text import html_to_text
from shared.fhir.medications import identify, medication_start
from shared.fhir.observations import ajcc_text, read_observation
from shared.fhir.record import (
    ICD10CM,
    ICDO3,
    LOINC,
    SNOMED,
    CancerCondition,
    ClinicalNote,
    Code,
    ConditionFact,
    Demographics,
    EncounterEvent,
    FhirTime,
    ImagingEvent,
    MedicationEvent,
    Order,
    PatientRecord,
    ProcedureEvent,
    ReportEvent,
    StageAssessment,
)
from shared.staging import normalise_stage

MCODE = "/StructureDefinition/mcode-"
ORDER_STATUSES = {"draft", "active", "on-hold"}
IMAGING_CATEGORIES = {"RAD", "imaging", "LP29684-5", "18748-4", "CT", "MR", "NMR", "US", "RX"}
PATHOLOGY_CATEGORIES = {"PAT", "SP", "CP", "GE", "CG", "11526-1", "LP7839-6"}
# Dosage forms that act on skin or eye only: fluorouracil cream treats actinic keratosis, trifluridine
# drops treat herpes keratitis. No pathway drug is given this way.
_LOCAL_FORM = re.compile(r"\b(?:cream|ointment|topical|lotion|ophthalmic|eye drops?|cutaneous)\b", re.IGNORECASE)
RELATED_PRIMARY = ("mcode-related-primary-cancer-condition", "condition-related")
RADIOTHERAPY_SESSIONS = "mcode-radiotherapy-sessions"
RADIOTHERAPY_MODALITY = "mcode-radiotherapy-modality"


Reader = Callable[[dict[str, Any], str, str, PatientRecord, Context], None]


def read_patient(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    rec.patient = Demographics(
        id=key.partition("/")[2],
        birth_date=FhirTime.parse(res.get("birthDate")),
        gender=res.get("gender"),
        deceased=FhirTime.parse(res.get("deceasedDateTime")),
        source=key,
        deceased_flag=res.get("deceasedBoolean") is True,
    )


def _histology(res: dict[str, Any], ctx: Context) -> tuple[Code | None, str | None, str | None]:
    """(histology code, its group, the element it came from): the mCODE histology extension, an
    ICD-O-3 morphology coding beside the diagnosis code, else the words of the diagnosis."""
    terms = ctx.terms
    ext = extension_value(res, "mcode-histology-morphology-behavior")
    if isinstance(ext, dict):
        found = codings(ext)
        group = terms.histology_group(found, concept_text(ext))
        return primary_code(ext), group, "Condition.extension[histology-morphology-behavior]"
    concept = res.get("code")
    morphology = [c for c in codings(concept) if c.system == ICDO3]
    if morphology:
        return morphology[0], terms.histology_group(morphology), "Condition.code.coding[icd-o-3]"
    group = terms.histology_group([], concept_text(concept))
    if group is None:
        group = terms.histology_group([c for c in codings(concept) if c.display], None)
    return None, group, ("Condition.code.text" if group else None)


def read_condition(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    terms = ctx.terms
    concept = res.get("code")
    found = codings(concept)
    onset, _ = time_of(res, "onsetDateTime", "onsetPeriod", "recordedDate")
    abatement, _ = time_of(res, "abatementDateTime", "abatementPeriod")
    clinical = status_code(res.get("clinicalStatus"))
    verification = status_code(res.get("verificationStatus"))
    cancer = terms.cancer(found, concept_text(concept))
    code = primary_code(concept, (SNOMED, ICD10CM)) or Code("", "", "condition without code")
    if code.display is None:
        code = Code(code.system, code.code, terms.cancer_display(code))
    if verification in {"refuted", "entered-in-error"}:
        rec.conditions.append(ConditionFact(key, code, onset, abatement, clinical, cancer is not None))
        return
    if cancer and cancer.role == "stage":
        rec.stages.append(
            StageAssessment(cancer.stage, onset, "condition-code", key, code=code, element="Condition.code")
        )
        ctx.stage_links.setdefault(key, f"type:{cancer.cancer_type}")
        ctx.staged_diagnoses.append(
            CancerCondition(key, code, cancer.cancer_type, "primary", onset, abatement, clinical, verification)
        )
        return
    if cancer is None or cancer.role == "suspected":
        # A profile alone never makes a cancer: the code or the words must say so.
        rec.conditions.append(ConditionFact(key, code, onset, abatement, clinical, cancer is not None))
        return
    histology_code, group, histology_from = _histology(res, ctx)
    cancer_type, type_from = (
        cancer.cancer_type,
        "Condition.code.text" if cancer.recognised_by == "text" else "Condition.code",
    )
    body_site = first_concept(res.get("bodySite"))
    if cancer_type == "other" and cancer.role == "primary":
        site_type = terms.cancer_type_from_body_site(codings(body_site)) or (
            terms.cancer_type_from_text(concept_text(body_site) or "") if body_site else None
        )
        if site_type:
            cancer_type, type_from = site_type, "Condition.bodySite"
    refined = terms.refine_by_group(cancer_type, group)
    if refined != cancer_type:
        cancer_type, type_from = refined, histology_from or type_from
    related = next((v for suffix in RELATED_PRIMARY if (v := extension_value(res, suffix)) is not None), None)
    item = CancerCondition(
        source=key,
        code=code,
        cancer_type=cancer_type,
        role="secondary" if cancer.role == "secondary" else "primary",
        onset=onset,
        abatement=abatement,
        clinical_status=clinical,
        verification_status=verification,
        body_site=primary_code(body_site) if body_site else None,
        histology=histology_code,
        related_primary=ctx.index.resolve(related) if related else None,
        recognised_by=cancer.recognised_by,
        type_from=type_from,
        histology_from=histology_from,
    )
    for i, stage in enumerate(res.get("stage") or ()):
        text, summary = ajcc_text(stage.get("summary"), terms.ajcc_values)
        if stage.get("summary"):
            group = normalise_stage(text)
            if group is None:
                ctx.warn(key, f"{path}.stage[{i}].summary", "stage summary not recognised; not used")
            else:
                item.stages.append(
                    StageAssessment(
                        group,
                        onset,
                        "summary",
                        key,
                        code=summary,
                        cancer_source=key,
                        element=f"Condition.stage[{i}].summary",
                    )
                )
        for assessment in stage.get("assessment") or ():
            target = ctx.index.resolve(assessment)
            if target:
                ctx.stage_links[target] = key
    rec.cancers.append(item)


def _reasons(res: dict[str, Any], key: str, path: str, ctx: Context) -> tuple[str, ...]:
    """The Conditions a resource names as its reason; a cancer named only by code (reasonCode
    "Non-small cell lung cancer") is resolved to that cancer of the record when linking."""
    types = {
        cancer.cancer_type
        for concept in res.get("reasonCode") or ()
        if (cancer := ctx.terms.cancer(codings(concept), concept_text(concept))) and cancer.role != "suspected"
    }
    if types:
        ctx.reason_types[key] = types
    return ctx.refs(res.get("reasonReference"), key, path, "reasonReference")


def _non_oncologic_reason(res: dict[str, Any], ctx: Context) -> str | None:
    """For a dual-use drug: the non-cancer condition the order names as its reason, if every
    reason it names is one (methotrexate for rheumatoid arthritis)."""
    reasons: list[tuple[list[Code], str | None]] = [
        (codings(c), concept_text(c)) for c in res.get("reasonCode") or () if isinstance(c, dict)
    ]
    for ref in res.get("reasonReference") or ():
        target = ctx.index.get(ctx.index.resolve(ref))
        if target is not None and target.type == "Condition":
            concept = target.resource.get("code")
            reasons.append((codings(concept), concept_text(concept)))
    if not reasons or any(ctx.terms.cancer(found, text) for found, text in reasons):
        return None
    return next((text for _, text in reasons if text), "a condition that is not a cancer")


def read_medication(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    rtype = key.partition("/")[0]
    drug = identify(res, key, path, ctx)
    if not drug.named:
        ctx.warn(key, f"{path}.medication[x]", "drug not identified from its codes or text; not used as cancer therapy")
    match = drug.match
    reasons = _reasons(res, key, path, ctx)
    non_oncologic = _non_oncologic_reason(res, ctx) if match.dual_use else None
    if match.ingredients and _LOCAL_FORM.search(f"{drug.code.display or ''} {drug.text or ''}"):
        non_oncologic = "a topical or eye form (not systemic cancer therapy)"  # fluorouracil cream, trifluridine drops
    identified_by = drug.identified_by
    if rtype == "MedicationRequest":
        authored, _ = time_of(res, "authoredOn")
        start, start_from = medication_start(res, authored)
        validity = (res.get("dispenseRequest") or {}).get("validityPeriod") or {}
        end = FhirTime.parse(validity.get("end"))
        kind = "request"
        status, intent = res.get("status"), res.get("intent")
        if status in ORDER_STATUSES:
            rec.orders.append(
                Order(key, drug.code, status, intent, authored, reasons, match.ingredients, tuple(drug.codes))
            )
        if start_from != "authoredOn" and identified_by:
            identified_by += f"; start from {start_from}"
    elif rtype == "MedicationAdministration":
        start, end = time_of(res, "effectiveDateTime", "effectivePeriod")
        kind, status, intent = "administration", res.get("status"), None
    else:
        start, end = time_of(res, "effectiveDateTime", "effectivePeriod", "dateAsserted")
        kind, status, intent = "statement", res.get("status"), None
    rec.medications.append(
        MedicationEvent(
            key,
            kind,  # type: ignore[arg-type]
            drug.code,
            match.ingredients,
            match.drug_class,
            status,
            start,
            end,
            intent,
            reasons,
            identified_by=identified_by,
            non_oncologic_reason=non_oncologic,
        )
    )


def read_procedure(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    concept = res.get("code")
    found = codings(concept)
    start, end = time_of(res, "performedDateTime", "performedPeriod")
    body_site = first_concept(res.get("bodySite"))
    sessions = extension_value(res, RADIOTHERAPY_SESSIONS)
    modality = next(
        (
            concept_text(inner.get("valueCodeableConcept"))
            for ext in res.get("extension") or ()
            if isinstance(ext, dict)
            for inner in ext.get("extension") or ()
            if isinstance(inner, dict) and str(inner.get("url", "")).endswith(RADIOTHERAPY_MODALITY)
        ),
        None,
    )
    rec.procedures.append(
        ProcedureEvent(
            key,
            primary_code(concept, (SNOMED,)) or Code("", "", "procedure without code"),
            ctx.terms.procedure_category(found, concept_text(concept)),
            start,
            end,
            res.get("status"),
            _reasons(res, key, path, ctx),
            primary_code(body_site) if body_site else None,
            sessions if isinstance(sessions, int) else None,
            modality,
        )
    )


def read_service_request(res: dict[str, Any], key: str, path: str, rec: PatientRecord, ctx: Context) -> None:
    if res.get("status") not in ORDER_STATUSES:
        return
    concept = res.get("code")
    code = primary_code(concept, (LOINC, SNOMED)) or Code("", "", "service request without code")
    authored, _ = time_of(res, "authoredOn")
    reasons = _reasons(res, key, path, ctx)
    rec.orders.append(
        Order(key, code, res.get("status"), res.get("intent"), authored, reasons, codes=tuple(codings(concept)))
    )


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
        text = html_to_text(text)
    return _bounded(text, key, path, ctx), content_type.split(";")[0]


def _bounded(text: str, key: str, path: str, ctx: Context) -> str:
    """A note's text up to ``MAX_NOTE_CHARS``; a longer one is truncated, with a warning issue."""
    check_deadline()  # a safe point of ingestion: once per note
    cap = limits().max_note_chars
    if len(text) <= cap:
        return text
    ctx.warn(key, path, f"text longer than {cap} characters (MAX_NOTE_CHARS); only the first {cap} are read")
    return text[:cap]


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
    if isinstance(conclusion, str):
        conclusion = _bounded(conclusion, key, f"{path}.conclusion", ctx)
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
            parts.append(f"# {section.get('title') or 'Section'}\n{html_to_text(div)}")
    if parts:
        rec.notes.append(
            ClinicalNote(
                key,
                FhirTime.parse(res.get("date")),
                primary_code(res.get("type"), (LOINC,)),
                _bounded("\n\n".join(parts), key, f"{path}.section", ctx),
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
