"""FHIR R4 input -> one ``PatientRecord`` per patient.

Steps: index every resource for reference resolution; skip unused types (counted) and, within
Observation/DiagnosticReport, routine results that no oncology fact needs; validate what is used
with its ``fhir.resources`` R4B model; attribute it to its patient; read it; link facts.
Lenient by default (bad resources become issues); ``strict`` refuses the input instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

from shared.errors import InvalidInput, Problem, UnprocessableInput
from shared.fhir.codes import all_codings, codings, concept_text, profiles
from shared.fhir.extract import MCODE, READERS, Context
from shared.fhir.parse import RawResource, parse_bundle, read_path
from shared.fhir.record import LOINC, CancerCondition, Demographics, IngestIssue, PatientRecord, latest_cancer_before
from shared.fhir.references import ReferenceIndex
from shared.terminology import terminology

# Resources that hang off a patient, and the field naming the patient.
SUBJECT_FIELD = {
    "Condition": "subject",
    "Observation": "subject",
    "MedicationRequest": "subject",
    "MedicationAdministration": "subject",
    "MedicationStatement": "subject",
    "Procedure": "subject",
    "ServiceRequest": "subject",
    "Encounter": "subject",
    "ImagingStudy": "subject",
    "DocumentReference": "subject",
    "DiagnosticReport": "subject",
    "Composition": "subject",
}
USED_TYPES = frozenset({"Patient", "Medication", *SUBJECT_FIELD})
ROUTINE_REPORT_CATEGORIES = {"LAB", "HM", "CH", "laboratory"}


@dataclass
class IngestResult:
    records: list[PatientRecord]
    issues: list[IngestIssue]
    used: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # "Claim", "Observation (not oncology)"...

    def record(self, patient_id: str | None = None) -> PatientRecord:
        """The one record asked for (or the only one); NotFound-like errors are the caller's to map."""
        if patient_id is None:
            if len(self.records) != 1:
                raise UnprocessableInput(
                    f"input holds {len(self.records)} patients; name one",
                    [Problem("processing", "several patients in input; choose one with a patient id")],
                )
            return self.records[0]
        for rec in self.records:
            if rec.id == patient_id:
                return rec
        raise UnprocessableInput(
            "the requested patient is not in the input", [Problem("not-found", "patient not in input")]
        )


@cache
def _model(resource_type: str) -> type[BaseModel]:
    return get_fhir_model_class(resource_type)


def _schema_errors(raw: RawResource) -> list[str]:
    """Where a resource breaks its R4 schema, as 'field: message' lines without input values."""
    try:
        _model(raw.type).model_validate(raw.resource)
    except ValidationError as exc:
        out = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False)[:5]:
            loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
            out.append(f"{raw.type}.{loc}: {err['msg']}" if loc else f"{raw.type}: {err['msg']}")
        return out
    return []


def _is_oncology_observation(res: dict[str, Any]) -> bool:
    terms = terminology()
    found = codings(res.get("code"))
    if any(c.system == LOINC and c.code in terms.relevant_loinc for c in found):
        return True
    if any(MCODE in p for p in profiles(res)):
        return True
    return terms.biomarker_from_text(concept_text(res.get("code")) or "") is not None


def _is_oncology_report(res: dict[str, Any]) -> bool:
    """Routine lab panels (CBC, metabolic, lipids) carry no oncology fact unless they have text."""
    if res.get("presentedForm") or res.get("conclusion"):
        return True
    categories = {c.code for c in all_codings(res.get("category"))}
    if categories and not categories <= ROUTINE_REPORT_CATEGORIES:
        return True
    return _is_oncology_observation(res)


def ingest(raws: Iterable[RawResource], *, strict: bool = False) -> IngestResult:
    terms = terminology()
    index = ReferenceIndex()
    issues: list[IngestIssue] = []
    used: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    candidates: list[tuple[RawResource, str]] = []

    for raw in raws:
        rtype = raw.type
        if rtype == "None":
            issues.append(IngestIssue("warning", None, None, raw.path, "entry without a resource"))
            continue
        key = index.add(raw)
        if rtype not in USED_TYPES:
            skipped[rtype] += 1
            continue
        if rtype == "Observation" and not _is_oncology_observation(raw.resource):
            skipped["Observation (not oncology)"] += 1
            continue
        if rtype == "DiagnosticReport" and not _is_oncology_report(raw.resource):
            skipped["DiagnosticReport (routine lab)"] += 1
            continue
        if key is None:
            issues.append(IngestIssue("error", rtype, None, raw.path, "resource has neither id nor fullUrl"))
            continue
        candidates.append((raw, key))

    ctx = Context(index, terms, issues)
    records: dict[str, PatientRecord] = {}
    attributed: list[tuple[RawResource, str, PatientRecord]] = []
    for raw, key in candidates:
        errors = _schema_errors(raw)
        if errors:
            for message in errors:
                issues.append(IngestIssue("error", raw.type, raw.id, raw.path, message))
            continue
        used[raw.type] += 1
        if raw.type == "Patient":
            rec = records.setdefault(key, PatientRecord(Demographics(key.partition("/")[2], None, None)))
            attributed.insert(0, (raw, key, rec))
        elif raw.type in SUBJECT_FIELD:
            subject = raw.resource.get(SUBJECT_FIELD[raw.type])
            patient_key = index.resolve(subject)
            if patient_key is None or not patient_key.startswith("Patient/"):
                issues.append(
                    IngestIssue(
                        "error",
                        raw.type,
                        raw.id,
                        f"{raw.path}.{SUBJECT_FIELD[raw.type]}",
                        "subject does not resolve to a Patient in the input",
                    )
                )
                continue
            rec = records.setdefault(
                patient_key, PatientRecord(Demographics(patient_key.partition("/")[2], None, None))
            )
            attributed.append((raw, key, rec))
    for raw, key, rec in attributed:
        READERS[raw.type](raw.resource, key, raw.path, rec, ctx)

    if strict:
        failures = [i for i in issues if i.severity == "error"]
        if failures:
            raise InvalidInput(
                f"input rejected in strict mode: {len(failures)} resource(s) with errors",
                [
                    Problem("invalid", f"{e.resource_type}/{e.resource_id}: {e.message}", expression=e.path)
                    for e in failures[:50]
                ],
            )
    for rec in records.values():
        _link(rec, ctx)
        rec.issues = issues  # issues speak of the input, so every record of it lists them
    if not records:
        raise UnprocessableInput(
            "input holds no usable Patient",
            [
                Problem("required", "input holds no usable Patient: none present, or none that resources refer to"),
                *[Problem("invalid", i.message, expression=i.path) for i in issues if i.severity == "error"][:20],
            ],
        )
    return IngestResult(list(records.values()), issues, used, skipped)


MERGE_WINDOW_DAYS = 365


def _onset(cancer: CancerCondition) -> datetime:
    return cancer.onset.instant if cancer.onset else datetime.min.replace(tzinfo=UTC)


def _merge_duplicate_cancers(rec: PatientRecord, ctx: Context) -> None:
    """One cancer, several Conditions (Synthea: 'Neoplasm of prostate' + 'Carcinoma in situ of
    prostate' on one day): fold same-type, same-role conditions diagnosed within a year into the
    most specific one, keeping the earliest onset and every source."""
    kept: list[CancerCondition] = []
    for cancer in sorted(rec.cancers, key=lambda c: (c.onset is None, c.onset)):
        twin = next(
            (
                k
                for k in kept
                if k.cancer_type == cancer.cancer_type
                and k.role == cancer.role
                and k.onset
                and cancer.onset
                and (cancer.onset.instant - k.onset.instant).days <= MERGE_WINDOW_DAYS
            ),
            None,
        )
        if twin is None:
            kept.append(cancer)
            continue
        twin.merged_sources = (*twin.merged_sources, cancer.source)
        twin.stages.extend(cancer.stages)
        if ctx.terms.is_generic_cancer_code(twin.code) and not ctx.terms.is_generic_cancer_code(cancer.code):
            twin.code, twin.histology = cancer.code, twin.histology or cancer.histology
        for link, target in list(ctx.stage_links.items()):
            if target == cancer.source:
                ctx.stage_links[link] = twin.source
    rec.cancers = kept


def _link(rec: PatientRecord, ctx: Context) -> None:
    """Attach stages and biomarkers to the cancer they describe; sort everything by time."""
    _merge_duplicate_cancers(rec, ctx)
    by_key = rec.cancers_by_source()
    primaries = [c for c in rec.cancers if c.role == "primary"] or rec.cancers
    by_type: dict[str, list[Any]] = {}
    for cancer in primaries:
        by_type.setdefault(cancer.cancer_type, []).append(cancer)
        if cancer.cancer_type in {"nsclc", "sclc"}:
            by_type.setdefault("lung", []).append(cancer)

    # Merge TNM member observations into their stage group, so one assessment carries T, N, M.
    members = {m for ms in ctx.members.values() for m in ms}
    stage_by_source = {s.source: s for s in rec.stages}
    for group_key, member_keys in ctx.members.items():
        group = stage_by_source.get(group_key)
        for member_key in member_keys:
            member = stage_by_source.get(member_key)
            if group and member:
                group.t, group.n, group.m = group.t or member.t, group.n or member.n, group.m or member.m
    rec.stages = [s for s in rec.stages if s.source not in members]

    def target(source: str, when: Any, marker: str | None = None) -> Any:
        allowed = ctx.terms.marker_cancer_types.get(marker or "")
        if allowed is not None:
            fitting = [c for c in primaries if c.cancer_type in allowed]
            return max(fitting, key=_onset, default=None)
        link = ctx.stage_links.get(source)
        if link and link in by_key:
            return by_key[link]
        if link and link.startswith("type:"):
            candidates = by_type.get(link[5:], [])
            if candidates:
                return candidates[0]
        if len(primaries) == 1:
            return primaries[0]
        # Several cancers and nothing says which: the most recent diagnosed on or before the fact.
        return latest_cancer_before(primaries, when)

    for stage in sorted(rec.stages, key=lambda s: (s.date is None, s.date)):
        cancer = target(stage.source, stage.date)
        if cancer is not None:
            stage.cancer_source = cancer.source
            cancer.stages.append(stage)
    for biomarker in rec.biomarkers:
        cancer = target(biomarker.source, biomarker.date, biomarker.name)
        if cancer is not None:
            biomarker.cancer_source = cancer.source
            cancer.biomarkers.append(biomarker)
    for status in rec.disease_status:
        cancer = target(status.source, status.date)
        status.cancer_source = cancer.source if cancer else None

    def when_key(value: Any) -> tuple[bool, Any]:
        return (value is None, value)

    for cancer in rec.cancers:
        cancer.stages.sort(key=lambda s: when_key(s.date))
        cancer.biomarkers.sort(key=lambda b: when_key(b.date))
    rec.cancers.sort(key=lambda c: (c.role != "primary", when_key(c.onset)))
    rec.medications.sort(key=lambda m: when_key(m.start))
    rec.procedures.sort(key=lambda p: when_key(p.start))
    rec.notes.sort(key=lambda n: when_key(n.date))


def load_path(path: str | Path, *, strict: bool = False) -> IngestResult:
    return ingest(read_path(Path(path)), strict=strict)


def load_bundle(data: bytes | str, *, strict: bool = False) -> IngestResult:
    return ingest(parse_bundle(data), strict=strict)


def load_resources(
    resources: Iterable[dict[str, Any]], *, origin: str = "server", strict: bool = False
) -> IngestResult:
    """Resources pulled from a FHIR server (already parsed JSON)."""
    return ingest((RawResource(r, f"{origin}:{r.get('resourceType')}/{r.get('id')}") for r in resources), strict=strict)
