"""Where the dashboard's patients come from: a folder of FHIR inputs (embedded default) or a FHIR server.

A folder is split into *inputs* the way ``shared.fhir.parse.read_path`` reads them: a Bundle file is
one input; a folder holding NDJSON or single-resource files (IG examples) is one input. A Bulk Data
export (a folder of NDJSON only) is read one patient at a time through its on-disk index
(``shared.fhir.bulk``), never whole. The patient list is read lazily (Patient resources only) and
ingestion, the slow part, happens per input (or exported patient) on first use and is kept in a
bounded LRU cache.

Patients get opaque ids (a hash of the input and the FHIR id) so that URLs never carry names or
file paths. Nothing here imports Flask.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from shared.errors import NotFound
from shared.fhir.bulk import BulkExport, is_bulk_export
from shared.fhir.ingest import IngestResult, ingest, load_resources
from shared.fhir.parse import RawResource, read_path
from shared.fhir.record import ClinicalNote, IngestIssue, PatientRecord
from shared.fhir.references import ReferenceIndex

OPAQUE_ID = re.compile(r"^(?:[0-9a-f]{24}|s-[A-Za-z0-9\-.]{1,64})$")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_BUNDLE_PEEK = re.compile(rb'"resourceType"\s*:\s*"Bundle"')
FHIR_SUFFIXES = (".json", ".ndjson", ".ndjson.gz")


@dataclass(frozen=True)
class PatientEntry:
    """One row of the patient list (shown only to signed-in users; never put into URLs)."""

    id: str  # opaque
    fhir_id: str
    name: str
    birth_date: str | None
    gender: str | None
    input: Path | None  # None: the FHIR server

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "birthDate": self.birth_date, "gender": self.gender}


@dataclass
class LoadedInput:
    result: IngestResult
    resources: dict[str, dict[str, Any]]  # Type/id -> raw resource, for "show the source"
    notes: dict[str, ClinicalNote] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedPatient:
    entry: PatientEntry
    record: PatientRecord
    resources: dict[str, dict[str, Any]]
    notes: dict[str, ClinicalNote]


def opaque_id(input_path: Path, fhir_id: str) -> str:
    return hashlib.sha256(f"{input_path}\0{fhir_id}".encode()).hexdigest()[:24]


def display_name(patient: dict[str, Any]) -> str:
    """``Given Family`` from the first usable HumanName (Synthea appends digits to names; kept)."""
    for name in patient.get("name") or ():
        if not isinstance(name, dict):
            continue
        if isinstance(name.get("text"), str) and name["text"].strip():
            return str(name["text"]).strip()
        given = " ".join(str(g) for g in name.get("given") or () if isinstance(g, str))
        family = name.get("family") if isinstance(name.get("family"), str) else ""
        full = f"{given} {family}".strip()
        if full:
            return full
    return "(no name recorded)"


def _entry(resource: dict[str, Any], input_path: Path | None) -> PatientEntry | None:
    fhir_id = resource.get("id")
    if not isinstance(fhir_id, str) or not fhir_id:
        return None
    opaque = opaque_id(input_path, fhir_id) if input_path is not None else f"s-{fhir_id}"
    birth = resource.get("birthDate")
    gender = resource.get("gender")
    return PatientEntry(
        opaque,
        fhir_id,
        display_name(resource),
        birth if isinstance(birth, str) else None,
        gender if isinstance(gender, str) else None,
        input_path,
    )


def _is_bundle_file(path: Path) -> bool:
    if not path.name.endswith(".json"):
        return False
    with path.open("rb") as handle:
        head = handle.read(2048)
    if _BUNDLE_PEEK.search(head):
        return True
    if b'"resourceType"' in head:
        return False
    try:  # resourceType further down: read it properly
        return bool(json.loads(path.read_bytes()).get("resourceType") == "Bundle")
    except (ValueError, AttributeError):
        return False


def split_inputs(root: Path) -> list[Path]:
    """The inputs under ``root``: Bundle files one by one; a folder of NDJSON/resources as one."""
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(FHIR_SUFFIXES))
    bundles = [f for f in files if _is_bundle_file(f)]
    inputs: list[Path] = [root] if len(bundles) < len(files) else bundles
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        inputs.extend(split_inputs(sub))
    return inputs


def _patients_of(input_path: Path) -> Iterator[dict[str, Any]]:
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.is_file() and p.name.endswith(FHIR_SUFFIXES))
        ndjson = [p for p in files if ".ndjson" in p.name]
        # A Bulk Data export names its files by type: only the Patient file needs reading.
        named = [p for p in ndjson if p.name.startswith("Patient")]
        for path in named if named else files:
            for raw in read_path(path):
                if raw.type == "Patient":
                    yield raw.resource
        return
    for raw in read_path(input_path):
        if raw.type == "Patient":
            yield raw.resource


class FolderSource:
    """Patients of a folder of FHIR inputs, with a bounded cache of ingested inputs."""

    def __init__(self, root: Path, cache_inputs: int = 8, index_dir: Path | None = None) -> None:
        self.root = root
        self.cache_inputs = cache_inputs
        self.index_dir = index_dir  # the indexes of Bulk Data exports (None: the system's temporary folder)
        self._lock = threading.Lock()  # the patient list
        self._cache_lock = threading.Lock()  # the cache of ingested inputs (held briefly)
        # one per input (or per patient of an export): ingesting one blocks no other
        self._input_locks: dict[tuple[Path, str | None], threading.Lock] = {}
        self._entries: dict[str, PatientEntry] | None = None
        self._loaded: LRUCache[tuple[Path, str | None], LoadedInput] = LRUCache(max(1, cache_inputs))

    def entries(self) -> dict[str, PatientEntry]:
        with self._lock:
            if self._entries is None:
                found: dict[str, PatientEntry] = {}
                if self.root.is_dir():
                    for input_path in split_inputs(self.root):
                        for resource in _patients_of(input_path):
                            entry = _entry(resource, input_path)
                            if entry is not None:
                                found[entry.id] = entry
                self._entries = dict(sorted(found.items(), key=lambda kv: kv[1].name.lower()))
            return self._entries

    def find(self, opaque: str) -> PatientEntry:
        entry = self.entries().get(opaque) if OPAQUE_ID.match(opaque) else None
        if entry is None:
            raise NotFound("no such patient")
        return entry

    def by_fhir_id(self, fhir_id: str) -> PatientEntry | None:
        """The patient with this FHIR id (links from CDS cards carry the EHR's id), if the folder has it."""
        return next((e for e in self.entries().values() if e.fhir_id == fhir_id), None)

    def load(self, opaque: str) -> LoadedPatient:
        entry = self.find(opaque)
        if entry.input is None:  # folder entries always name their input; a guard, not a path taken
            raise NotFound("no such patient")
        patient = entry.fhir_id if is_bulk_export(entry.input) else None
        loaded = self._load_input(entry.input, patient)
        record = loaded.result.record(entry.fhir_id)
        return LoadedPatient(entry, record, loaded.resources, loaded.notes)

    def _cached(self, key: tuple[Path, str | None]) -> LoadedInput | None:
        with self._cache_lock:
            return self._loaded.get(key)

    def _raws(self, input_path: Path, patient: str | None) -> tuple[list[RawResource], list[IngestIssue]]:
        if patient is None:
            return list(read_path(input_path)), []
        export = BulkExport(input_path, self.index_dir)
        try:
            return list(export.raws(patient)), export.problems()
        finally:
            export.close()

    def _load_input(self, input_path: Path, patient: str | None = None) -> LoadedInput:
        key = (input_path, patient)
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self._cache_lock:
            input_lock = self._input_locks.setdefault(key, threading.Lock())
        # Ingest under this input's lock: two requests for one big input must not ingest it twice,
        # while requests for other (cached or small) inputs go on.
        with input_lock:
            cached = self._cached(key)
            if cached is not None:
                return cached
            raws, problems = self._raws(input_path, patient)
            index = ReferenceIndex()
            for raw in raws:
                index.add(raw, with_identifiers=False)
            result = ingest(raws, strict=False, problems=problems)
            loaded = LoadedInput(result, {k: r.resource for k, r in index.by_key.items()})
            loaded.notes = {n.source: n for rec in result.records for n in rec.notes}
            if self.cache_inputs >= 1:
                with self._cache_lock:
                    self._loaded[key] = loaded
            return loaded


class ServerSource:
    """Patients of a FHIR server, pulled per request with the given client factory."""

    def __init__(self, client_factory: Any) -> None:
        self._client_factory = client_factory

    def search(self, text: str) -> list[PatientEntry]:
        params = {"name": text} if text else {}
        with self._client_factory() as client:
            found = client.search_patients(params)
        return [e for e in (_entry(r, None) for r in found if r.get("resourceType") == "Patient") if e]

    def load(self, opaque: str) -> LoadedPatient:
        if not OPAQUE_ID.match(opaque) or not opaque.startswith("s-"):
            raise NotFound("no such patient")
        fhir_id = opaque[2:]
        with self._client_factory() as client:
            resources = client.patient_resources(fhir_id)
        result = load_resources(resources, strict=False)
        record = result.record(fhir_id)
        patient = next((r for r in resources if r.get("resourceType") == "Patient"), {"id": fhir_id})
        entry = _entry(patient, None) or PatientEntry(opaque, fhir_id, "(no name recorded)", None, None, None)
        by_key = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources}
        return LoadedPatient(entry, record, by_key, {n.source: n for n in record.notes})
