"""Bulk Data exports (folders of NDJSON) of any size, one patient at a time, in bounded memory.

Why: reading a whole export into one input costs about six times its size in memory, so a review
team's 1,000-patient export would not fit, and every audit worker would read all of it again.

How: one pass over every line of every NDJSON file (never a whole file in memory) writes an index to
SQLite on disk: for each line its patient (``Patient.id``, or the Patient its ``subject``, ``patient``,
``beneficiary`` or ``individual`` points at), its file, byte offset and length. Lines without a
patient (Practitioner, Organization, Location, Medication ...) are indexed as shared resources, by
``Type/id`` and by each identifier, so the conditional references of Bulk Data exports
(``Organization?identifier=system|value``) resolve too. Reading a patient then seeks to their lines
only, and adds the shared resources they reference (and the ones those reference, a few hops deep).

A line that is not JSON, or not a FHIR resource, is one ``IngestIssue`` naming its file and line; the
rest is read. The index is named after the folder and each file's name, size and modification time,
so a changed export is indexed again and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from shared.errors import InvalidInput
from shared.fhir.ingest import IngestResult, ingest
from shared.fhir.parse import FHIR_ID, RawResource
from shared.fhir.record import IngestIssue
from shared.fhir.references import conditional_identifier, type_and_id

PATIENT_ELEMENTS = ("subject", "patient", "beneficiary", "individual")
SHARED_HOPS = 3  # PractitionerRole -> Practitioner / Organization -> partOf
_BATCH = 5000
_SCHEMA = """
CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE lines (patient TEXT NOT NULL, file INTEGER NOT NULL, offset INTEGER NOT NULL,
                    length INTEGER NOT NULL, line INTEGER NOT NULL);
CREATE TABLE shared (key TEXT NOT NULL, file INTEGER NOT NULL, offset INTEGER NOT NULL,
                     length INTEGER NOT NULL, line INTEGER NOT NULL);
CREATE TABLE problems (file INTEGER NOT NULL, line INTEGER NOT NULL, message TEXT NOT NULL);
"""
_INDEXES = "CREATE INDEX lines_patient ON lines (patient); CREATE INDEX shared_key ON shared (key);"


def is_bulk_export(path: Path) -> bool:
    """A folder whose FHIR files are all NDJSON (a Bulk Data export), as opposed to a folder of Bundles."""
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file() and p.name.endswith((".json", ".ndjson"))]
    return bool(files) and all(p.name.endswith(".ndjson") for p in files)


def _patient_of(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    for element in PATIENT_ELEMENTS:
        value = resource.get(element)
        for ref in value if isinstance(value, list) else [value]:
            target = ref.get("reference") if isinstance(ref, dict) else None
            literal = type_and_id(target) if isinstance(target, str) else None
            if literal and literal[0] == "Patient":
                return literal[1]
    return None


def _shared_keys(resource: dict[str, Any]) -> list[str]:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    keys = [f"{rtype}/{rid}"] if isinstance(rid, str) else []
    for ident in resource.get("identifier") or ():
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            keys += [f"{rtype}|{ident.get('system', '')}|{ident['value']}", f"{rtype}||{ident['value']}"]
    return keys


def _lookup_key(reference: str) -> str | None:
    """The shared-index key a reference string points at (``Type/id`` or a conditional identifier)."""
    if "?" in reference:
        found = conditional_identifier(reference)
        if found is None:
            return None
        rtype, system, value = found
        return f"{rtype}||{value}" if system is None else f"{rtype}|{system}|{value}"
    literal = type_and_id(reference)
    return f"{literal[0]}/{literal[1]}" if literal else None


def _references(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out.add(value)
            else:
                _references(value, out)
    elif isinstance(node, list):
        for item in node:
            _references(item, out)


class BulkExport:
    """One export folder, indexed once; ``load(patient_id)`` reads that patient only."""

    def __init__(self, folder: str | Path, index_dir: str | Path | None = None) -> None:
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.iterdir() if p.is_file() and p.name.endswith(".ndjson"))
        signature = hashlib.sha256(str(self.folder.resolve()).encode())
        for p in self.files:
            stat = p.stat()
            signature.update(f"{p.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        where = Path(index_dir) if index_dir is not None else Path(tempfile.gettempdir()) / "oncotwin-bulk-index"
        where.mkdir(parents=True, exist_ok=True)
        self.index_path = where / f"{signature.hexdigest()[:24]}.sqlite"
        if not self.index_path.exists():
            self._build()
        self._db = sqlite3.connect(f"file:{self.index_path}?mode=ro", uri=True, check_same_thread=False)

    # -- the index ---------------------------------------------------------------------------
    def _build(self) -> None:
        partial = self.index_path.with_suffix(f".{os.getpid()}.partial")
        db = sqlite3.connect(partial)
        try:
            db.executescript(_SCHEMA)
            for number, path in enumerate(self.files):
                db.execute("INSERT INTO files VALUES (?, ?)", (number, path.name))
                self._index_file(db, number, path)
            db.executescript(_INDEXES)
            db.commit()
        finally:
            db.close()
        os.replace(partial, self.index_path)  # atomic: a reader never sees half an index

    def _index_file(self, db: sqlite3.Connection, number: int, path: Path) -> None:
        lines: list[tuple[str, int, int, int, int]] = []
        shared: list[tuple[str, int, int, int, int]] = []
        offset = 0
        with path.open("rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                length = len(line)
                if line.strip():
                    try:
                        resource = orjson.loads(line)
                        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                            raise ValueError("not a FHIR resource (no resourceType)")
                    except ValueError as exc:
                        message = "not JSON" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
                        db.execute("INSERT INTO problems VALUES (?, ?, ?)", (number, line_no, message))
                    else:
                        patient = _patient_of(resource)
                        if patient is not None:
                            lines.append((patient, number, offset, length, line_no))
                        else:
                            shared += [(key, number, offset, length, line_no) for key in _shared_keys(resource)]
                offset += length
                if len(lines) >= _BATCH or len(shared) >= _BATCH:
                    self._flush(db, lines, shared)
        self._flush(db, lines, shared)

    @staticmethod
    def _flush(db: sqlite3.Connection, lines: list[Any], shared: list[Any]) -> None:
        db.executemany("INSERT INTO lines VALUES (?, ?, ?, ?, ?)", lines)
        db.executemany("INSERT INTO shared VALUES (?, ?, ?, ?, ?)", shared)
        lines.clear()
        shared.clear()

    # -- reading -------------------------------------------------------------------------------
    def patients(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT patient FROM lines ORDER BY patient")
        return [patient for (patient,) in rows if FHIR_ID.fullmatch(patient)]

    def problems(self) -> list[IngestIssue]:
        rows = self._db.execute(
            "SELECT f.name, p.line, p.message FROM problems p JOIN files f ON f.id = p.file ORDER BY p.file, p.line"
        )
        return [IngestIssue("error", None, None, f"{name}:{line}", message) for name, line, message in rows]

    def _read(self, rows: list[tuple[int, int, int, int]]) -> Iterator[RawResource]:
        handles: dict[int, Any] = {}
        try:
            for file, offset, length, line in sorted(rows):
                handle = handles.get(file)
                if handle is None:
                    handle = handles[file] = self.files[file].open("rb")
                handle.seek(offset)
                yield RawResource(orjson.loads(handle.read(length)), f"{self.files[file].name}:{line}")
        finally:
            for handle in handles.values():
                handle.close()

    def raws(self, patient_id: str) -> Iterator[RawResource]:
        """The patient's resources, then the shared resources they reference (transitively, a few hops)."""
        rows = self._db.execute("SELECT file, offset, length, line FROM lines WHERE patient = ?", (patient_id,))
        seen: set[tuple[int, int]] = set()
        wanted: set[str] = set()
        for raw in self._read(list(rows)):
            _references(raw.resource, wanted)
            yield raw
        done: set[str] = set()
        for _ in range(SHARED_HOPS):
            keys = {k for k in (_lookup_key(r) for r in wanted - done) if k is not None}
            done |= wanted
            found = []
            for key in keys:
                # One resource per reference (the first indexed, as ReferenceIndex resolves identifiers): the
                # work per patient must not grow with the export, whatever identifiers repeat across it.
                query = "SELECT file, offset, length, line FROM shared WHERE key = ? ORDER BY rowid LIMIT 1"
                for row in self._db.execute(query, (key,)):
                    if (row[0], row[1]) not in seen:
                        seen.add((row[0], row[1]))
                        found.append(row)
            wanted = set()
            for raw in self._read(found):
                _references(raw.resource, wanted)
                yield raw
            if not wanted - done:
                break

    def load(self, patient_id: str, *, strict: bool = False) -> IngestResult:
        """One patient's record, with the export's unreadable lines as issues."""
        if self._db.execute("SELECT 1 FROM lines WHERE patient = ? LIMIT 1", (patient_id,)).fetchone() is None:
            raise InvalidInput("the export holds no resource of that patient", issue_code="not-found")
        return ingest(self.raws(patient_id), strict=strict, problems=self.problems())

    def close(self) -> None:
        self._db.close()
