"""The Care-Navigation JSON contract (camelCase, documented in the README)."""

from __future__ import annotations

from pydantic import Field

from shared.contract import CodeOut, Contract


class EvidenceOut(Contract):
    source: str  # the FHIR resource, Type/id
    fact: str
    value: str | None = None
    date: str | None = None


class StepRef(Contract):
    id: str  # pathway node id, e.g. "nsclc.advanced.first-line"
    title: str
    kind: str  # workup | staging | biomarker | treatment | surveillance | referral | decision


class PositionOut(Contract):
    step: StepRef
    status: str  # done | not-started
    inferred: bool  # reached past an undecided branch because later evidence says so
    since: str | None  # the latest evidence date
    facts: list[EvidenceOut]


class NextStepOut(Contract):
    step: StepRef
    due: str | None  # ISO date, from the record's own events and the pathway's timing
    overdue: bool
    reason: str


class GapOut(Contract):
    kind: str  # missing-prerequisite | overdue | missing-information
    step: StepRef
    reason: str
    evidence: list[EvidenceOut] = Field(default_factory=list)


class OffPathwayOut(Contract):
    line: int
    regimen: str  # "cisplatin + paclitaxel"
    start: str
    sources: list[str]
    reason: str


class CitationOut(Contract):
    title: str
    publisher: str
    url: str
    section: str


class PathwayOut(Contract):
    id: str
    version: str
    title: str
    status: str  # "demonstration": the content needs clinical review
    cancer: str  # the Condition the pathway is applied to
    cancer_code: CodeOut
    applies: str  # satisfied | unknown (e.g. lung cancer without histology)
    position: list[PositionOut]
    next_steps: list[NextStepOut]
    gaps: list[GapOut]
    off_pathway: list[OffPathwayOut]
    citations: list[CitationOut]


class DeceasedOut(Contract):
    """The patient has died: navigation gives no next step and no actionable gap."""

    date: str | None  # None for deceasedBoolean without a date
    source: str


class NavigationOut(Contract):
    patient: str
    as_of: str
    pathways: list[PathwayOut]
    disclaimer: str
    deceased: DeceasedOut | None = None
