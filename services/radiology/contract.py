"""JSON contracts of the radiology API: the request bodies it validates and the findings it answers.

The OpenAPI document (``services.radiology.openapi``) is generated from these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, TypeAdapter

from services.radiology.schema import Finding
from services.radiology.service import MAX_TEXT_CHARS, Classified
from shared.contract import Contract, Request

MAX_BATCH = 256


def _text() -> Any:
    return Field(default=None, max_length=MAX_TEXT_CHARS)


class TextReportIn(Request):
    """A plain-text report; FINDINGS:/IMPRESSION:/INDICATION: headers optional (text before any header is
    findings)."""

    uid: str | int | None = Field(default=None, description="echoed in the answer; default: a new id")
    text: str | None = _text()


class SectionsReportIn(Request):
    """A report given by section (findings and/or impression needed)."""

    uid: str | int | None = Field(default=None, description="echoed in the answer; default: a new id")
    findings: str | None = _text()
    impression: str | None = _text()
    indication: str | None = _text()


class AttachmentIn(Request):
    content_type: str | None = None
    data: str | None = Field(default=None, description="base64 of UTF-8 text (text/plain attachments are read)")


class DiagnosticReportIn(Request):
    """A FHIR R4 DiagnosticReport: ``conclusion`` is the impression, base64 text/plain ``presentedForm``
    the report text; ``id`` is the answer's uid."""

    resource_type: Literal["DiagnosticReport"]
    id: str | None = None
    conclusion: str | None = _text()
    presented_form: list[AttachmentIn | Any] | None = None


ReportIn = DiagnosticReportIn | TextReportIn | SectionsReportIn
REPORT = TypeAdapter[ReportIn](ReportIn)


class BatchIn(Request):
    reports: list[ReportIn] = Field(min_length=1, max_length=MAX_BATCH)


BATCH = TypeAdapter(BatchIn)


class SpanOut(Contract):
    """Where the deciding mention is: character offsets into that section's text."""

    section: Literal["findings", "impression", "indication", "text"]
    start: int
    end: int
    text: str


class FindingOut(Contract):
    label: str = Field(description="a class of the model's schema (openi or chexpert) or normal")
    status: Literal["positive", "negative", "uncertain"]
    probability: float | None = Field(description="the trained model's probability of presence; null: rules only")
    evidence: SpanOut | None

    @classmethod
    def of(cls, finding: Finding) -> FindingOut:
        span = finding.evidence
        return cls(
            label=finding.label,
            status=finding.status,  # "absent" is never reported
            probability=None if finding.probability is None else round(float(finding.probability), 4),
            evidence=None
            if span is None
            else SpanOut(section=span.section, start=span.start, end=span.end, text=span.text),
        )


class ClassifyOut(Contract):
    uid: str
    findings: list[FindingOut]

    @classmethod
    def of(cls, result: Classified) -> ClassifyOut:
        return cls(uid=result.uid, findings=[FindingOut.of(f) for f in result.findings])


class BatchOut(Contract):
    results: list[ClassifyOut]
