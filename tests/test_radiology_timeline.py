"""Imaging findings on the Clinical-History timeline: imaging DiagnosticReports read by the radiology twin."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from flask.testing import FlaskClient

from services.clinical_history.imaging_findings import KIND, imaging_finding_events, imaging_reports
from services.clinical_history.timeline import build_timeline
from services.radiology.schema import Finding, Report, Span
from services.radiology.service import Classified, LabelerEngine
from shared.fhir.ingest import load_bundle

FINDINGS_TEXT = "FINDINGS: Small left pleural effusion. No pneumothorax.\nIMPRESSION: Left effusion."


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def bundle(*, with_text: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": "cxr1",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
    }
    if with_text:
        report["presentedForm"] = [{"contentType": "text/plain", "data": _b64(FINDINGS_TEXT)}]
        report["conclusion"] = "Mild cardiomegaly."
    lab = {  # not imaging: never read by the radiology twin
        "resourceType": "DiagnosticReport",
        "id": "lab1",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
        "code": {"text": "Pathology"},
        "subject": {"reference": "Patient/p1"},
        "conclusion": "Pleural effusion cytology negative.",
    }
    entries = [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female"}},
        {"resource": report},
        {"resource": lab},
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def record(**kwargs: Any) -> Any:
    return load_bundle(json.dumps(bundle(**kwargs))).record()


class Recording:
    """A classifier stand-in that records what it was asked and answers fixed findings."""

    def __init__(self) -> None:
        self.calls: list[list[Report]] = []

    def classify(self, reports: Sequence[Report]) -> list[Classified]:
        self.calls.append(list(reports))
        ev = Span("impression", 0, 8, "Left eff")
        return [
            Classified(r.uid, (Finding("Effusion", "positive", 0.91, ev), Finding("Mass", "uncertain", 0.4)))
            for r in reports
        ]


def test_imaging_reports_join_presented_form_and_conclusion() -> None:
    (report,) = imaging_reports(record())
    assert report.uid == "DiagnosticReport/cxr1"
    assert report.findings == "Small left pleural effusion. No pneumothorax."
    assert report.impression == "Left effusion. Mild cardiomegaly."  # conclusion appended to the impression


def test_events_carry_label_status_probability_and_span() -> None:
    stub = Recording()
    events = imaging_finding_events(record(), stub)
    assert len(stub.calls) == 1 and [r.uid for r in stub.calls[0]] == ["DiagnosticReport/cxr1"]
    effusion, mass = events
    assert (effusion.kind, effusion.display, effusion.source) == (KIND, "Effusion", "DiagnosticReport/cxr1")
    assert effusion.date is not None and effusion.date.startswith("2024-03-01")
    assert effusion.detail == "label=Effusion; status=positive; probability=0.910"
    assert effusion.span is not None and (effusion.span.section, effusion.span.start, effusion.span.text) == (
        "impression",
        0,
        "Left eff",
    )
    assert effusion.from_text and not effusion.negated and not effusion.uncertain
    assert mass.uncertain and mass.span is None and mass.detail == "label=Mass; status=uncertain; probability=0.400"


def test_no_report_text_means_no_classifier_call() -> None:
    stub = Recording()
    assert imaging_finding_events(record(with_text=False), stub) == []
    assert stub.calls == []
    engine = LabelerEngine()
    assert imaging_finding_events(record(with_text=False), engine) == []
    assert engine._labeler is None  # nothing to read: the rules (spaCy) were never loaded


def test_timeline_is_opt_in_with_the_labeler_engine() -> None:
    rec = record()
    plain = build_timeline(rec, include_notes=False)
    assert KIND not in {e.kind for e in plain.events}
    timeline = build_timeline(rec, include_notes=False, findings=LabelerEngine())
    found = {e.display: e for e in timeline.events if e.kind == KIND}
    assert found["Effusion"].detail == "label=Effusion; status=positive; probability=-"
    span = found["Effusion"].span
    assert span is not None and span.text.lower() == "effusion" and span.section == "findings"
    assert FINDINGS_TEXT.split("\n")[0].removeprefix("FINDINGS: ")[span.start : span.end] == span.text
    assert found["Pneumothorax"].negated and found["Cardiomegaly"].detail.startswith("label=Cardiomegaly; status=pos")
    assert found["normal"].negated  # something abnormal was found
    assert len(timeline.events) == len(plain.events) + len(found)


@pytest.fixture
def history(client: FlaskClient, mint: Callable[..., str]) -> tuple[FlaskClient, dict[str, str]]:
    return client, {"Authorization": f"Bearer {mint(['history.read'])}", "Content-Type": "application/fhir+json"}


def test_api_findings_flag(history: tuple[FlaskClient, dict[str, str]]) -> None:
    client, headers = history
    body = json.dumps(bundle())
    plain = client.post("/history/v1/timeline", data=body, headers=headers)
    assert plain.status_code == 200 and KIND not in {e["kind"] for e in plain.get_json()["events"]}
    response = client.post("/history/v1/timeline?findings=true&notes=false", data=body, headers=headers)
    assert response.status_code == 200
    events = [e for e in response.get_json()["events"] if e["kind"] == KIND]
    effusion = next(e for e in events if e["display"] == "Effusion")
    assert effusion["source"] == "DiagnosticReport/cxr1" and effusion["fromText"] is True
    assert effusion["detail"].startswith("label=Effusion; status=positive") and effusion["span"]["section"]
