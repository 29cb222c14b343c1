"""FHIR R4 input -> one ``PatientRecord`` per patient.

Steps: index every resource for reference resolution; skip unused types (counted) and, within
Observation/DiagnosticReport, routine results that no oncology fact needs; validate what is used
with its ``fhir.resources`` R4B model; attribute it to its patient; read it; link facts.
Lenient by default (bad resources become issues); ``strict`` refuses the input instead.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from cachetools import LRUCache
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

from shared.errors import InvalidInput, Problem, UnprocessableInput, check_deadline
from shared.fhir.codes import all_codings, codings, concept_text
from shared.fhir.context import Context
from shared.fhir.extract import READERS
from shared.fhir.linking import link
from shared.fhir.observations import NOT_RESULTS
from shared.fhir.parse import RawResource, parse_bundle, read_path
from shared.fhir.record import Demographics, IngestIssue, PatientRecord
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
    """Recognised by its code (or the words of its code), never by meta.profile."""
    concept = res.get("code")
    return terminology().observation_kind(codings(concept), concept_text(concept)) is not None


def _is_oncology_report(res: dict[str, Any]) -> bool:
    """Routine lab panels (CBC, metabolic, lipids) carry no oncology fact unless they have text."""
    if res.get("presentedForm") or res.get("conclusion"):
        return True
    categories = {c.code for c in all_codings(res.get("category"))}
    if categories and not categories <= ROUTINE_REPORT_CATEGORIES:
        return True
    return _is_oncology_observation(res)


def _version(raw: RawResource) -> tuple[str, int]:
    meta = raw.resource.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    version = str(meta.get("versionId") or "")
    return str(meta.get("lastUpdated") or ""), int(version) if version.isdigit() else -1


def _duplicate(
    raw: RawResource, key: str, seen: dict[str, RawResource], index: ReferenceIndex, issues: list[IngestIssue]
) -> bool:
    """A second resource with the same Type/id. Versions of one resource (a history Bundle) are
    expected: the latest (meta.lastUpdated, then versionId) wins, with a warning. Two copies that do
    not say which is newer conflict: the first wins and the duplicate is an error (strict mode
    rejects the input). Returns whether the new copy wins."""
    held = seen[key]
    rtype, _, rid = key.partition("/")
    newer, older = _version(raw), _version(held)
    if newer != older and newer != ("", -1) and older != ("", -1):
        wins = newer > older
        issues.append(
            IngestIssue(
                "warning", rtype, rid, raw.path, "another version of this resource is in the input; the latest is used"
            )
        )
        if wins:
            index.by_key[key] = raw
        return wins
    issues.append(
        IngestIssue("error", rtype, rid, raw.path, "duplicate resource id in the input; the first copy is used")
    )
    return False


def ingest(raws: Iterable[RawResource], *, strict: bool = False, problems: Iterable[IngestIssue] = ()) -> IngestResult:
    """``problems``: what the reader could not turn into resources (an NDJSON line that is not JSON),
    reported with the rest."""
    terms = terminology()
    index = ReferenceIndex()
    issues: list[IngestIssue] = list(problems)
    used: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    candidates: list[tuple[RawResource, str]] = []
    seen: dict[str, RawResource] = {}  # Type/id -> the copy that wins

    for raw in raws:
        rtype = raw.type
        if rtype == "None":
            issues.append(IngestIssue("warning", None, None, raw.path, "entry without a resource"))
            continue
        key = index.add(raw)
        if key is not None and key in seen:
            if not _duplicate(raw, key, seen, index, issues):
                continue  # the copy already held wins
            # this copy is a later version: it replaces the one held (and its candidate, if any)
            candidates = [(r, k) for r, k in candidates if k != key]
        if key is not None:
            seen[key] = raw
        if rtype not in USED_TYPES:
            skipped[rtype] += 1
            continue
        status = raw.resource.get("status")
        if status == "entered-in-error" or (rtype in {"Observation", "DiagnosticReport"} and status in NOT_RESULTS):
            skipped[f"{rtype} ({status})"] += 1  # never a fact, still counted
            continue
        if rtype == "Observation" and not _is_oncology_observation(raw.resource):
            skipped["Observation (not oncology)"] += 1
            continue
        if rtype == "DiagnosticReport" and not _is_oncology_report(raw.resource):
            skipped["DiagnosticReport (routine lab)"] += 1
            continue
        if key is None:
            issues.append(IngestIssue("error", rtype, None, raw.path, "resource has no valid id and no fullUrl"))
            continue
        candidates.append((raw, key))

    ctx = Context(index, terms, issues)
    records: dict[str, PatientRecord] = {}
    attributed: list[tuple[RawResource, str, PatientRecord]] = []
    for n, (raw, key) in enumerate(candidates):
        if n % 64 == 0:
            check_deadline()  # a safe point: validation is the costly step of a large input
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
    for n, (raw, key, rec) in enumerate(attributed):
        if n % 256 == 0:
            check_deadline()
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
        link(rec, ctx)
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


def load_path(path: str | Path, *, strict: bool = False) -> IngestResult:
    return ingest(read_path(Path(path)), strict=strict)


# The hot path of EHR calls: order-select, then order-sign, then a necessity check carry the same record.
# Ingestion (validation included) is the costly part, so a record is ingested once per content: the key
# is a SHA-256 of the bytes (or of the resources, canonically serialised). Safe because nothing after
# ingestion changes a record (engines only read); a bounded LRU, shared by the threads of a process.
REUSE_ENTRIES = 16
_reused: LRUCache[tuple[bytes, str, bool], IngestResult] = LRUCache(maxsize=REUSE_ENTRIES)
_reused_lock = threading.Lock()


def _reuse(key: tuple[bytes, str, bool], build: Callable[[], IngestResult]) -> IngestResult:
    with _reused_lock:
        hit = _reused.get(key)
    if hit is not None:
        return hit
    result = build()  # outside the lock: two threads may both build a new record; one result is kept
    with _reused_lock:
        _reused[key] = result
    return result


def load_bundle(data: bytes | str, *, strict: bool = False, reuse: bool = False) -> IngestResult:
    """``reuse``: the same bytes give the same (shared, read-only) result without ingesting again."""
    if not reuse:
        return ingest(parse_bundle(data), strict=strict)
    raw = data.encode() if isinstance(data, str) else data
    return _reuse((hashlib.sha256(raw).digest(), "bundle", strict), lambda: ingest(parse_bundle(data), strict=strict))


def load_resources(
    resources: Iterable[dict[str, Any]], *, origin: str = "server", strict: bool = False, reuse: bool = False
) -> IngestResult:
    """Resources pulled from a FHIR server or a CDS prefetch (already parsed JSON)."""
    items = list(resources)

    def build() -> IngestResult:
        return ingest((RawResource(r, f"{origin}:{r.get('resourceType')}/{r.get('id')}") for r in items), strict=strict)

    if not reuse:
        return build()
    digest = hashlib.sha256(orjson.dumps(items, option=orjson.OPT_SORT_KEYS)).digest()
    return _reuse((digest, origin, strict), build)
