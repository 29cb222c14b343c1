"""The Clinical-History JSON contract (camelCase, stable). Also the source of the OpenAPI schemas."""

from __future__ import annotations

from pydantic import Field

from shared.contract import CodeOut, Contract, IssueOut

__all__ = ["CodeOut", "Contract", "IssueOut"]


class PatientOut(Contract):
    id: str
    birth_date: str | None = None
    gender: str | None = None
    deceased: str | None = None
    is_deceased: bool = False  # also true for deceasedBoolean, which has no date


class StageOut(Contract):
    stage: str | None
    date: str | None
    kind: str
    t: str | None = None
    n: str | None = None
    m: str | None = None
    source: str
    system: str = "AJCC"  # or Rai, Binet, FIGO, ISS...: other staging systems
    read_from: str | None = None  # the element the value was read from, or how it was derived
    derived_from: list[str] = Field(default_factory=list)  # for a group computed from T/N/M


class BiomarkerOut(Contract):
    name: str
    status: str
    value: str | None = None
    date: str | None
    code: CodeOut
    source: str
    read_from: str | None = None
    derived_from: list[str] = Field(default_factory=list)


class RiskGroupOut(Contract):
    group: str
    scheme: str
    derived_from: list[str]
    date: str | None = None


class CancerOut(Contract):
    code: CodeOut
    cancer_type: str
    role: str
    onset: str | None
    clinical_status: str | None = None
    stage: StageOut | None = None  # the current stage: latest, pathological preferred on the same day
    stage_history: list[StageOut]
    risk_group: RiskGroupOut | None = None  # derived (prostate: T, Grade Group, PSA)
    biomarkers: list[BiomarkerOut]
    source: str
    also_recorded_as: list[str] = Field(default_factory=list)


class LineOut(Contract):
    line: int
    cancer: str | None
    regimen: str
    start: str
    end: str
    drugs: list[str]
    drug_classes: list[str]
    exposures: int
    sources: list[str]


class TextSpan(Contract):
    start: int
    end: int
    text: str
    sentence: str | None = None
    section: str | None = None


class EventOut(Contract):
    date: str | None
    kind: str  # diagnosis | stage | biomarker | performance | disease-status | medication | procedure |
    #            radiation | surgery | imaging | encounter | report | note | imaging-finding
    #            (imaging-finding, only with ?findings=true: display the class, detail
    #            "label=..; status=..; probability=..", span the evidence in the DiagnosticReport)
    code: CodeOut | None = None
    display: str
    source: str
    from_text: bool = False
    negated: bool = False
    uncertain: bool = False
    span: TextSpan | None = None
    detail: str | None = None


class NotesSummaryOut(Contract):
    text: str
    sources: list[str]  # the notes summarised, newest first
    model: str
    disclaimer: str


class Timeline(Contract):
    patient: PatientOut
    cancers: list[CancerOut]
    lines_of_therapy: list[LineOut]
    events: list[EventOut]
    issues: list[IssueOut]
    notes_summary: NotesSummaryOut | None = None  # only with ?summary=true and an LLM configured
    disclaimer: str = (
        "Demonstration output of OncoTwin: derived automatically from the record; "
        "requires review by the treating clinical team."
    )
