"""Imaging findings on the Clinical-History timeline: radiology reports read by the radiology twin.

An imaging DiagnosticReport lands in ``record.imaging`` (source ``DiagnosticReport/<id>``, its
``conclusion``) and its text/plain ``presentedForm`` in ``record.notes`` under the same source.
Each such report with text becomes one ``Report`` (presentedForm split on FINDINGS:/IMPRESSION:
headers, the conclusion as impression) and is classified by a radiology engine; every reported
finding becomes an ``imaging-finding`` event:

- ``display``: the class (``Effusion``, ``normal``); ``source``: the DiagnosticReport; ``date``: its date;
- ``negated``/``uncertain``: the finding's status (negative / uncertain); positive sets neither;
- ``span``: the evidence in the report (section, character offsets into that section, text);
- ``detail``: ``label=<class>; status=<status>; probability=<p or ->`` (stable, easy to split).

ImagingStudy resources carry no report text and give no findings. Opt-in: the timeline only calls
this when asked (``build_timeline(record, findings=engine)``), so the default timeline never loads
spaCy rules or a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.clinical_history.contract import EventOut, TextSpan
from services.radiology.schema import Report
from services.radiology.service import Classified, report_from_text
from shared.fhir.record import PatientRecord

KIND = "imaging-finding"
_REPORT_PREFIX = "DiagnosticReport/"


class FindingsClassifier(Protocol):
    """What the timeline needs of a radiology engine (``RadiologyEngine``, ``LabelerEngine``)."""

    def classify(self, reports: Sequence[Report]) -> list[Classified]: ...


def imaging_reports(record: PatientRecord) -> list[Report]:
    """One ``Report`` per imaging DiagnosticReport with text (uid: its source), in record order."""
    texts: dict[str, list[str]] = {}
    for note in record.notes:
        if note.source.startswith(_REPORT_PREFIX) and note.content_type in ("text/plain", ""):
            texts.setdefault(note.source, []).append(note.text)
    out = []
    for study in record.imaging:
        if not study.source.startswith(_REPORT_PREFIX):
            continue
        report = report_from_text("\n".join(texts.get(study.source, ())), study.source)
        conclusion = (study.conclusion or "").strip()
        if conclusion and conclusion not in report.impression:
            impression = f"{report.impression} {conclusion}".strip()
            report = Report(report.uid, report.findings, impression, report.indication)
        if report.findings.strip() or report.impression.strip():
            out.append(report)
    return out


def imaging_finding_events(record: PatientRecord, classifier: FindingsClassifier) -> list[EventOut]:
    """``imaging-finding`` events for the record's imaging reports (none: an empty list, no classifier call)."""
    reports = imaging_reports(record)
    if not reports:
        return []
    dates = {study.source: study.date.text if study.date else None for study in record.imaging}
    events = []
    for result in classifier.classify(reports):
        for finding in result.findings:
            evidence = finding.evidence
            probability = "-" if finding.probability is None else f"{finding.probability:.3f}"
            events.append(
                EventOut(
                    date=dates.get(result.uid),
                    kind=KIND,
                    display=finding.label,
                    source=result.uid,
                    from_text=True,
                    negated=finding.status == "negative",
                    uncertain=finding.status == "uncertain",
                    span=None
                    if evidence is None
                    else TextSpan(start=evidence.start, end=evidence.end, text=evidence.text, section=evidence.section),
                    detail=f"label={finding.label}; status={finding.status}; probability={probability}",
                )
            )
    return events
