"""Timeline engine on real data: coded facts and note-derived facts merged, marked, ordered."""

from __future__ import annotations

import pytest

from services.clinical_history.timeline import build_timeline
from shared.fhir.ingest import load_path
from shared.fhir.record import FhirTime
from tests.conftest import BULK, BULK_PATIENT, MCODE, requires_data

pytestmark = requires_data


@pytest.fixture(scope="module")
def bulk_record():
    return load_path(BULK).record(BULK_PATIENT)


@pytest.fixture(scope="module")
def bulk_timeline(bulk_record):
    return build_timeline(bulk_record)


def test_bulk_patient_cancers_stage_and_line(bulk_timeline):
    tl = bulk_timeline
    assert tl.patient.birth_date == "1927-05-21" and tl.patient.gender == "female"
    assert [(c.cancer_type, c.stage.stage if c.stage else None) for c in tl.cancers] == [
        ("nsclc", "I"),
        ("breast", None),
    ]
    (line,) = tl.lines_of_therapy
    assert line.drugs == ["cisplatin", "paclitaxel"] and line.exposures == 442
    assert line.start.startswith("1984-11-01") and line.end.startswith("1989-04-01")
    assert line.cancer == tl.cancers[0].source


def test_note_mentions_are_events_with_spans_into_their_note(bulk_record, bulk_timeline):
    notes = {n.source: n.text for n in bulk_record.notes}
    text_events = [e for e in bulk_timeline.events if e.from_text]
    drugs = {e.display for e in text_events if e.kind == "medication"}
    assert {"cisplatin", "paclitaxel"} <= drugs
    for event in text_events:
        assert event.source.startswith("DocumentReference/")
        assert notes[event.source][event.span.start : event.span.end] == event.span.text
    # Which notes mention the chemotherapy: exactly those whose text names it.
    mentioning = {e.source for e in text_events if e.display == "cisplatin" and not e.negated}
    assert mentioning == {src for src, text in notes.items() if "cisplatin" in text.lower()}
    assert mentioning, "the patient's notes list cisplatin"


def test_events_are_in_time_order(bulk_timeline):
    instants = [FhirTime.parse(e.date).instant for e in bulk_timeline.events if e.date]
    assert instants == sorted(instants)
    kinds = {e.kind for e in bulk_timeline.events}
    assert {"diagnosis", "stage", "medication", "procedure", "note", "encounter"} <= kinds


def test_mcode_timeline_current_stage_prefers_pathological_and_lists_tnm():
    record = load_path(MCODE).record("mCODEPatientExample01")
    tl = build_timeline(record)
    nsclc = tl.cancers[0]
    assert nsclc.stage.stage == "IIIC" and nsclc.stage.kind == "pathological"
    assert any(s.t == "cT3" and s.kind == "clinical" for s in nsclc.stage_history)
    assert {b.name for b in nsclc.biomarkers} >= {"STK11"}
    assert any(e.kind == "performance" and e.display == "ECOG 0" for e in tl.events)
