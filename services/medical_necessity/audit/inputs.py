"""What an audit reads: input references, their enumeration, and reading them into records.

An input reference is a string that a task can carry over the broker (JSON):

* ``file:<absolute path>``: one Bundle (or NDJSON file); it is one input.
* ``folder:<absolute path>``: the files directly in a folder that are *not* Bundles (NDJSON files
  of a Bulk Data export, loose resource JSON files), read together, because their resources refer
  to each other.
* ``fhir-search:<query string>``: a ``Patient`` search on the configured FHIR server; it expands
  into one ``fhir-patient:<id>`` input per patient found.

A folder given to an audit becomes one ``file:`` input per Bundle file in it (recursively) plus
at most one ``folder:`` input per folder for the rest. A ``.json`` file is taken for a Bundle
unless its first ``resourceType`` says otherwise, so a corrupt file stays an input of its own (and
becomes one error row) instead of spoiling its neighbours.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from cachetools import LRUCache

from services.medical_necessity.engine import orders_to_review
from shared.config import Settings
from shared.errors import InvalidInput, Problem
from shared.fhir.bulk import BulkExport, is_bulk_export
from shared.fhir.ingest import ingest, load_resources
from shared.fhir.parse import RawResource, read_path
from shared.fhir.record import Order, PatientRecord
from shared.fhir.server import FhirServerClient

FILE, FOLDER, SEARCH, PATIENT = "file:", "folder:", "fhir-search:", "fhir-patient:"
# One patient of a Bulk Data export: "bulk:/the/folder#patient-id" (read through shared.fhir.bulk).
BULK = "bulk:"
PEEK_BYTES = 4096
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]+)"')
_SEARCH_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]{0,63}$")
MAX_INPUTS = 100_000


def _is_json(path: Path) -> bool:
    return path.name.endswith(".json")


def _is_ndjson(path: Path) -> bool:
    return path.name.endswith((".ndjson", ".ndjson.gz"))


def _first_resource_type(path: Path) -> str | None:
    with path.open("rb") as handle:
        found = _RESOURCE_TYPE.search(handle.read(PEEK_BYTES))
    return found.group(1).decode() if found else None


def _folder_inputs(folder: Path, index_dir: Path | None) -> Iterator[str]:
    """Inputs below ``folder``. Symbolic links are never followed: a link could leave the audit
    input folder, or loop back into it. A Bulk Data export (a folder of NDJSON only) is one input
    per patient, so that workers share it and none of them reads the whole export."""
    if is_bulk_export(folder) and not any(c.is_symlink() for c in folder.iterdir()):
        export = BulkExport(folder, index_dir)
        try:
            patients = export.patients()
        finally:
            export.close()
        yield from (f"{BULK}{folder}#{patient}" for patient in patients)
        return
    loose = False
    for child in sorted(folder.iterdir()):
        if child.is_symlink():
            continue
        if child.is_dir():
            yield from _folder_inputs(child, index_dir)
        elif _is_ndjson(child):
            loose = True
        elif _is_json(child) and child.is_file():
            kind = _first_resource_type(child)
            if kind is None or kind == "Bundle":
                yield FILE + str(child)
            else:
                loose = True
    if loose:
        yield FOLDER + str(folder)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def confined(path: Path | str, root: Path | None, where: str = "the audit path") -> Path:
    """``path`` resolved; when ``root`` is given it must lie inside it (no ``..``, no symlink escape).
    A path with a NUL or other control character, or one too long for the system, is refused.
    Messages name ``where`` (e.g. ``paths[2]``), never the path: it is the caller's input."""
    if _CONTROL.search(str(path)):
        raise InvalidInput(f"{where} holds a NUL or other control character", issue_code="value")
    try:
        if root is None:
            return Path(path).resolve()
        base = root.resolve()
        resolved = (base / path).resolve()
    except (OSError, ValueError):  # too long, too many links...
        raise InvalidInput(f"{where} cannot be resolved", issue_code="value") from None
    if not resolved.is_relative_to(base):
        raise InvalidInput(f"{where} must lie inside the audit input folder", issue_code="value")
    return resolved


def enumerate_paths(paths: Sequence[str | Path], root: Path | None = None, index_dir: Path | None = None) -> list[str]:
    """Input references for files and folders (relative to ``root`` when one is given); ``index_dir``
    keeps the indexes of Bulk Data exports (``shared.fhir.bulk``)."""
    if not paths:
        raise InvalidInput("name at least one input", issue_code="required")
    refs: list[str] = []
    for i, raw in enumerate(paths):
        where = f"the audit path paths[{i}]"
        path = confined(raw, root, where)
        if path.is_dir():
            found = _folder_inputs(path, index_dir)
        elif path.is_file():
            found = iter([FILE + str(path)])
        else:
            raise InvalidInput(f"no such file or folder: {where}", issue_code="not-found")
        for ref in found:  # counted as found, so a huge tree is refused without walking all of it
            refs.append(ref)
            if len(refs) > MAX_INPUTS:
                raise InvalidInput(f"an audit takes at most {MAX_INPUTS} inputs", issue_code="too-costly")
    return list(dict.fromkeys(refs))


def search_ref(query: str | dict[str, str]) -> str:
    """``fhir-search:`` reference for a Patient search, parameters checked and normalised."""
    pairs = list(query.items()) if isinstance(query, dict) else parse_qsl(query, keep_blank_values=False)
    for name, value in pairs:
        if not _SEARCH_PARAM.match(str(name)) or len(str(value)) > 256:
            raise InvalidInput("FHIR search parameters must be plain names with short values", issue_code="value")
    return SEARCH + urlencode(sorted((str(k), str(v)) for k, v in pairs))


def label(ref: str, root: Path | None = None) -> str:
    """How a report names an input: relative to ``root`` (no server paths leak), else as stored."""
    kind, _, rest = ref.partition(":")
    if kind not in {"file", "folder", "bulk"}:
        return ref
    rest, hash_, patient = rest.rpartition("#") if kind == "bulk" else (rest, "", "")
    base = (root or Path.cwd()).resolve()
    path = Path(rest)
    return ((str(path.relative_to(base)) or ".") if path.is_relative_to(base) else rest) + hash_ + patient


def key(*parts: str) -> str:
    """A fixed-width idempotency key (SHA-1 hex) of its parts."""
    return hashlib.sha1("\x1f".join(parts).encode(), usedforsecurity=False).hexdigest()


def _folder_raws(folder: Path) -> Iterable[RawResource]:
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and (_is_ndjson(p) or (_is_json(p) and _first_resource_type(p) not in (None, "Bundle")))
    ]
    return chain.from_iterable(read_path(p) for p in files)


def read_input(ref: str, settings: Settings) -> list[PatientRecord]:
    """The patients of one input; raises the shared error family for inputs that cannot be used."""
    kind, _, rest = ref.partition(":")
    if kind == "file":
        return ingest(read_path(Path(rest)), strict=settings.strict_ingest).records
    if kind == "folder":
        return ingest(_folder_raws(Path(rest)), strict=settings.strict_ingest).records
    if kind == "bulk":
        folder, _, patient = rest.rpartition("#")
        export = BulkExport(folder, settings.bulk_index_dir)
        try:
            return export.load(patient, strict=settings.strict_ingest).records
        finally:
            export.close()
    if kind == "fhir-patient":
        with _client(settings) as client:
            resources = client.patient_resources(rest)
        return load_resources(resources, origin="server", strict=settings.strict_ingest).records
    raise InvalidInput(f"unknown input kind {kind!r}")


def expand_search(ref: str, settings: Settings) -> list[str]:
    """The ``fhir-patient:`` inputs a ``fhir-search:`` input stands for."""
    with _client(settings) as client:
        found = client.search_patients(dict(parse_qsl(ref.removeprefix(SEARCH))))
    ids = [r["id"] for r in found if r.get("resourceType") == "Patient" and isinstance(r.get("id"), str)]
    return [PATIENT + pid for pid in dict.fromkeys(ids)]


def _client(settings: Settings) -> FhirServerClient:
    if settings.fhir_base_url is None:
        raise InvalidInput(
            "FHIR server inputs need FHIR_BASE_URL",
            [Problem("not-supported", "no FHIR server configured (FHIR_BASE_URL)")],
        )
    return FhirServerClient.from_settings(settings)


def fingerprint(ref: str) -> str:
    """Changes when the files behind ``ref`` change (size, mtime), so a cache never serves stale data."""
    kind, _, rest = ref.partition(":")
    path = Path(rest)
    if kind == "file":
        files = [path]
    elif kind in {"folder", "bulk"}:
        folder = Path(rest.rpartition("#")[0]) if kind == "bulk" else path
        files = sorted(p for p in folder.iterdir() if p.is_file())
    else:
        return ref  # server data: cached for the life of the worker process's cache entry
    parts = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return key(ref, *parts)


@dataclass
class LoadedInput:
    """An ingested input, with its reviewable orders indexed on first use (a record with hundreds of
    orders must not be scanned again for each of them)."""

    records: list[PatientRecord]
    _orders: dict[tuple[str, str], list[Order]] | None = None
    _by_id: dict[str, PatientRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_id = {each.id: each for each in self.records}

    def orders(self, patient: str, reference: str) -> tuple[PatientRecord | None, list[Order]]:
        """The patient's record and its reviewable orders with this reference (usually one)."""
        if self._orders is None:
            index: dict[tuple[str, str], list[Order]] = {}
            for each in self.records:
                for order in orders_to_review(each):
                    index.setdefault((each.id, order.reference), []).append(order)
            self._orders = index
        return self._by_id.get(patient), self._orders.get((patient, reference), [])


class RecordCache:
    """A bounded, per-process LRU of ingested inputs, so the orders of one input share one ingest."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._items: LRUCache[str, LoadedInput] = LRUCache(max(1, capacity))
        self._lock = threading.Lock()
        self.misses = 0

    def get(self, ref: str, settings: Settings) -> LoadedInput:
        token = fingerprint(ref)
        with self._lock:
            loaded = self._items.get(token)
            if loaded is not None:
                return loaded
            self.misses += 1
        loaded = LoadedInput(read_input(ref, settings))
        self._store(token, loaded)
        return loaded

    def put(self, ref: str, records: list[PatientRecord]) -> None:
        """An input just read elsewhere (the expand step), so its orders need not read it again."""
        self._store(fingerprint(ref), LoadedInput(records))

    def _store(self, token: str, loaded: LoadedInput) -> None:
        if self.capacity < 1:
            return
        with self._lock:
            self._items[token] = loaded
