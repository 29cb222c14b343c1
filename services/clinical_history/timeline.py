"""Build the Clinical-History timeline of one ``PatientRecord``.

Coded facts become events directly; free-text notes go through the spaCy note extractor and
their mentions join the timeline marked ``fromText`` with the note and character span.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from services.clinical_history.contract import (
    BiomarkerOut,
    CancerOut,
    CodeOut,
    EventOut,
    IssueOut,
    LineOut,
    PatientOut,
    RiskGroupOut,
    StageOut,
    TextSpan,
    Timeline,
)
from shared.fhir.record import (
    BiomarkerResult,
    CancerCondition,
    Code,
    FhirTime,
    PatientRecord,
    StageAssessment,
)
from shared.therapy_lines import lines_of_therapy

if TYPE_CHECKING:
    from services.clinical_history.imaging_findings import FindingsClassifier

PROCEDURE_KINDS = {"radiation": "radiation", "chemoradiation": "radiation", "surgery": "surgery", "imaging": "imaging"}
MENTION_KINDS = {"medication": "medication", "cancer": "diagnosis", "stage": "stage", "procedure": "procedure"}
STAGE_KIND_RANK = {"pathological": 3, "clinical": 2, "summary": 1, "condition-code": 0}


def _code(code: Code | None) -> CodeOut | None:
    if code is None or not code.code:
        return None
    return CodeOut(system=code.system, code=code.code, display=code.display)


def _text(value: FhirTime | None) -> str | None:
    return value.text if value else None


def _stage(stage: StageAssessment) -> StageOut:
    return StageOut(
        stage=stage.stage,
        date=_text(stage.date),
        kind=stage.kind,
        t=stage.t,
        n=stage.n,
        m=stage.m,
        source=stage.source,
        system=stage.system,
        read_from=stage.element or None,
        derived_from=list(stage.derived_from),
    )


def _biomarker(b: BiomarkerResult) -> BiomarkerOut:
    return BiomarkerOut(
        name=b.name,
        status=b.status,
        value=b.value,
        date=_text(b.date),
        code=_code(b.code) or CodeOut(system="", code="", display=b.name),
        source=b.source,
        read_from=b.element or None,
        derived_from=list(b.derived_from),
    )


def current_stage(cancer: CancerCondition) -> StageAssessment | None:
    """Latest stage with a group; on the same day pathological beats clinical beats summary."""
    staged = [s for s in cancer.stages if s.stage and s.system == "AJCC"]
    if not staged:
        return None
    return max(staged, key=lambda s: (s.date.day if s.date else None, STAGE_KIND_RANK.get(s.kind, 0)))


def _cancer(c: CancerCondition) -> CancerOut:
    stage = current_stage(c)
    return CancerOut(
        code=_code(c.code) or CodeOut(system="", code="", display=c.code.display),
        cancer_type=c.cancer_type,
        role=c.role,
        onset=_text(c.onset),
        clinical_status=c.clinical_status,
        stage=_stage(stage) if stage else None,
        stage_history=[_stage(s) for s in c.stages],
        risk_group=RiskGroupOut(
            group=c.risk_group.group,
            scheme=c.risk_group.scheme,
            derived_from=list(c.risk_group.derived_from),
            date=_text(c.risk_group.date),
        )
        if c.risk_group
        else None,
        biomarkers=[_biomarker(b) for b in c.biomarkers],
        source=c.source,
        also_recorded_as=list(c.merged_sources),
    )


def cancer_care_start(record: PatientRecord) -> FhirTime | None:
    """First oncology fact: a cancer or suspected cancer, a stage, or an antineoplastic drug."""
    dates = [c.onset for c in record.cancers] + [c.onset for c in record.conditions if c.oncology_related]
    dates += [s.date for s in record.stages] + [m.start for m in record.medications if m.antineoplastic]
    known = [d for d in dates if d is not None]
    return min(known) if known else None


def _event(
    kind: str, when: FhirTime | None, code: Code | None, display: str, source: str, detail: str | None = None
) -> EventOut:
    return EventOut(date=_text(when), kind=kind, code=_code(code), display=display, source=source, detail=detail)


def _coded_events(record: PatientRecord) -> Iterable[EventOut]:
    """Oncology facts always; encounters and other drugs only from the start of cancer care on,
    so that decades of unrelated history do not bury the cancer timeline."""
    era = cancer_care_start(record)

    def in_era(when: FhirTime | None) -> bool:
        return era is not None and when is not None and when.day >= era.day

    for c in record.cancers:
        yield _event(
            "diagnosis", c.onset, c.code, c.code.display or c.cancer_type, c.source, f"{c.role} {c.cancer_type}"
        )
    for cond in record.conditions:
        if cond.oncology_related:
            event = _event("diagnosis", cond.onset, cond.code, cond.code.display or "condition", cond.source)
            yield event.model_copy(update={"uncertain": True})
    for s in record.stages:
        tnm = " ".join(filter(None, [s.t, s.n, s.m])) or "TNM"
        yield _event("stage", s.date, s.code, f"Stage {s.stage}" if s.stage else tnm, s.source, s.kind)
    for b in record.biomarkers:
        yield _event("biomarker", b.date, b.code, f"{b.name}: {b.value or b.status}", b.source, b.status)
    for ps in record.performance:
        yield _event("performance", ps.date, None, f"{ps.scale} {ps.value}", ps.source)
    for d in record.disease_status:
        yield _event("disease-status", d.date, d.code, d.code.display or d.code.code, d.source)
    for m in record.medications:
        if m.drug_class is None and not in_era(m.start):
            continue
        display = m.code.display or ", ".join(m.ingredients) or "medication"
        yield _event(
            "medication", m.start, m.code, display, m.source, " ".join(filter(None, [m.drug_class, m.kind, m.status]))
        )
    cancer_sources = record.cancers_by_source()
    for p in record.procedures:
        if p.category == "other" and not any(r in cancer_sources for r in p.reasons):
            continue
        display = p.code.display or f"{p.category} (code {p.code.code})"
        yield _event(PROCEDURE_KINDS.get(p.category, "procedure"), p.start, p.code, display, p.source, p.category)
    for i in record.imaging:
        display = i.description or " ".join(i.modalities) or "imaging"
        yield _event("imaging", i.date, i.code, display, i.source, i.conclusion or ", ".join(i.body_sites) or None)
    for r in record.reports:
        yield _event("report", r.date, r.code, r.code.display or "report", r.source, r.conclusion)
    for e in record.encounters:
        if in_era(e.start):
            display = (e.code.display if e.code else None) or e.encounter_class or "encounter"
            yield _event("encounter", e.start, e.code, display, e.source, e.encounter_class)


def _text_events(record: PatientRecord) -> Iterable[EventOut]:
    if not record.notes:
        return
    from services.clinical_history.notes import extract_many  # spaCy loads only when notes exist

    mentions = extract_many(record.notes)
    for note in record.notes:
        yield EventOut(
            date=_text(note.date),
            kind="note",
            code=_code(note.type),
            source=note.source,
            display=(note.type.display if note.type else None) or "clinical note",
        )
        for m in mentions.get(note.source, ()):
            yield EventOut(
                date=_text(note.date),
                kind=MENTION_KINDS.get(m.kind, m.kind),
                code=_code(m.code),
                display=m.normalized or m.text,
                source=note.source,
                from_text=True,
                negated=m.negated,
                uncertain=m.uncertain,
                span=TextSpan(start=m.start, end=m.end, text=m.text, sentence=m.sentence, section=m.section),
            )


def _in_order(date: str | None, kind: str) -> tuple[bool, FhirTime | None, str]:
    return (date is None, FhirTime.parse(date) if date else None, kind)


def with_events(timeline: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """A timeline (its JSON) with more events (JSON, e.g. imaging findings read by the radiology
    queue), all in timeline order."""
    merged = sorted([*timeline["events"], *events], key=lambda e: _in_order(e.get("date"), e["kind"]))
    return {**timeline, "events": merged}


def build_timeline(
    record: PatientRecord, *, include_notes: bool = True, findings: FindingsClassifier | None = None
) -> Timeline:
    """The timeline; with ``findings`` (a radiology engine) imaging reports add ``imaging-finding`` events."""
    events = list(_coded_events(record))
    if include_notes:
        events.extend(_text_events(record))
    if findings is not None:  # opt-in: the radiology rules and model load only when asked for
        from services.clinical_history.imaging_findings import imaging_finding_events

        events.extend(imaging_finding_events(record, findings))
    events.sort(key=lambda e: _in_order(e.date, e.kind))
    lines = [
        LineOut(
            line=line.line,
            cancer=line.cancer_source,
            regimen=line.regimen,
            start=line.start.text,
            end=line.end.text,
            drugs=line.drugs,
            drug_classes=line.drug_classes,
            exposures=line.exposures,
            sources=line.sources,
        )
        for line in lines_of_therapy(record)
    ]
    p = record.patient
    return Timeline(
        patient=PatientOut(
            id=p.id,
            birth_date=_text(p.birth_date),
            gender=p.gender,
            deceased=_text(p.deceased),
            is_deceased=p.is_deceased,
        ),
        cancers=[_cancer(c) for c in record.cancers],
        lines_of_therapy=lines,
        events=events,
        issues=[IssueOut.of(i) for i in record.issues],
    )
