"""The Medical-Necessity JSON contract (camelCase, documented in the README)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.contract import CodeOut, Contract, IssueOut

Determination = Literal["meets", "does-not-meet", "insufficient-documentation", "not-on-any-pathway"]


class OrderOut(Contract):
    reference: str
    code: CodeOut
    status: str | None = None
    authored: str | None = None


class EvidenceOut(Contract):
    source: str
    fact: str
    value: str | None = None
    date: str | None = None


class PassageOut(Contract):
    """A piece of a note or report retrieved for a criterion coded data could not decide."""

    source: str
    date: str | None
    text: str
    start: int
    end: int
    score: float


class JudgementOut(Contract):
    judge: str  # "llm-jury" | "none"
    verdict: str  # satisfied | unsatisfied | needs-review
    votes: list[str] = Field(default_factory=list)
    confidence: float
    rationale: str | None = None


class CriterionOut(Contract):
    """One node of the evaluated AND/OR tree; leaves carry their evidence."""

    op: str  # all | any | not | leaf
    label: str
    status: str  # satisfied | unsatisfied | unknown
    fact: str | None = None
    evidence: list[EvidenceOut] = Field(default_factory=list)
    passages: list[PassageOut] = Field(default_factory=list)
    judgement: JudgementOut | None = None
    children: list[CriterionOut] = Field(default_factory=list)


class CitationOut(Contract):
    title: str
    publisher: str
    url: str
    section: str


class DeterminationOut(Contract):
    order: OrderOut
    determination: Determination
    # How far a reviewer can rely on the determination as given, on [0, 1]: 0.95 when coded facts
    # decide it, 0.9 for an item off the pathway, 0.9 x the jury's majority share when judged notes
    # decide it, 0.6 for insufficient documentation (the missing fact may exist outside the record),
    # 0.5 when a person must read notes or no pathway applies. Not a probability of the clinical fact.
    confidence: float = Field(ge=0, le=1)
    needs_review: bool  # a person must look: free-text criteria nobody could judge
    pathway: str | None  # the pathway key of the best alternative, e.g. "nsclc@2026.11"
    option: str | None  # the regimen/activity node it was matched to
    deciding: list[str]  # the criteria that decided it (unmet or undocumented ones; empty when met)
    criteria: CriterionOut | None
    rationale: str
    citations: list[CitationOut]


class NecessityOut(Contract):
    patient: str
    determinations: list[DeterminationOut]
    disclaimer: str
    issues: list[IssueOut] = Field(default_factory=list)  # what the input could not tell (unread drugs, stages...)
