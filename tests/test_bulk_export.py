"""Bulk Data exports one patient at a time (shared.fhir.bulk): the same record as reading the whole
export, cross-patient references resolved, malformed lines reported by file and line, the index reused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.clinical_history.timeline import build_timeline
from shared.errors import InvalidInput
from shared.fhir.bulk import BulkExport, is_bulk_export
from shared.fhir.ingest import load_path
from shared.fhir.references import ReferenceIndex
from tests.conftest import BULK, requires_data

pytestmark = requires_data


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> BulkExport:
    return BulkExport(BULK, tmp_path_factory.mktemp("index"))


@pytest.fixture(scope="module")
def whole() -> object:
    return load_path(BULK)


def test_every_patient_read_alone_gives_the_timeline_of_the_whole_export(export: BulkExport, whole: object) -> None:
    patients = export.patients()
    assert len(patients) == len(whole.records) >= 10  # type: ignore[attr-defined]
    for patient in patients:
        alone = build_timeline(export.load(patient).record(patient)).to_json()
        assert alone == build_timeline(whole.record(patient)).to_json(), patient  # type: ignore[attr-defined]


def test_conditional_references_to_shared_resources_resolve(export: BulkExport) -> None:
    patient = export.patients()[0]
    raws = list(export.raws(patient))
    index = ReferenceIndex()
    for raw in raws:
        index.add(raw)
    shared = {raw.type for raw in raws} & {"Organization", "Practitioner", "Location", "PractitionerRole"}
    assert {"Organization", "Practitioner", "Location"} <= shared
    conditional = [
        ref
        for raw in raws
        if raw.type == "Encounter"
        for ref in (raw.resource.get("serviceProvider"), *(p.get("individual") for p in raw.resource["participant"]))
        if ref and "?" in ref["reference"]
    ]
    assert conditional and all(index.resolve(ref) for ref in conditional)
    others = {p for p in export.patients() if p != patient}
    assert not any(raw.type == "Patient" and raw.id in others for raw in raws)  # nobody else's record


def test_a_malformed_line_is_one_issue_and_the_rest_is_read(tmp_path: Path, export: BulkExport) -> None:
    folder = tmp_path / "export"
    shutil.copytree(BULK, folder)
    encounters = folder / "Encounter.000.ndjson"
    good_lines = encounters.read_bytes().count(b"\n")
    with encounters.open("ab") as handle:
        handle.write(b'{"resourceType": "Encounter", "id": \n')  # cut off
        handle.write(b"[1, 2, 3]\n")  # JSON, not a resource
    damaged = BulkExport(folder, tmp_path / "index")
    problems = {(i.path, i.message) for i in damaged.problems()}
    assert problems == {
        (f"Encounter.000.ndjson:{good_lines + 1}", "not JSON"),
        (f"Encounter.000.ndjson:{good_lines + 2}", "not a FHIR resource (no resourceType)"),
    }
    patient = export.patients()[0]
    result = damaged.load(patient)
    assert {i.path for i in result.issues} >= {p for p, _ in problems}
    damaged_timeline = build_timeline(result.record(patient)).to_json()
    assert [i["path"] for i in damaged_timeline.pop("issues")] == sorted(p for p, _ in problems)  # shown, not lost
    clean = build_timeline(export.load(patient).record(patient)).to_json()
    assert clean.pop("issues") == [] and damaged_timeline == clean
    with pytest.raises(InvalidInput, match="holds no resource of that patient"):
        damaged.load("not-a-patient")


def test_the_index_is_built_once_and_again_when_the_export_changes(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    shutil.copytree(BULK, folder)
    first = BulkExport(folder, tmp_path / "index")
    built = first.index_path.stat().st_mtime_ns
    again = BulkExport(folder, tmp_path / "index")
    assert again.index_path == first.index_path and again.index_path.stat().st_mtime_ns == built
    with (folder / "Patient.000.ndjson").open("ab") as handle:
        handle.write(b'{"resourceType": "Patient", "id": "new-patient"}\n')
    changed = BulkExport(folder, tmp_path / "index")
    assert changed.index_path != first.index_path and "new-patient" in changed.patients()


def test_only_folders_of_ndjson_are_bulk_exports(tmp_path: Path) -> None:
    assert is_bulk_export(BULK)
    assert not is_bulk_export(BULK.parent / "synthea")  # Bundles
    assert not is_bulk_export(tmp_path)  # empty
    assert not is_bulk_export(BULK / "Patient.000.ndjson")  # a file
