"""JSON contracts of the batch-audit API: the request it validates, the status and JSON report it answers.

The OpenAPI document (``services.medical_necessity.audit.openapi``) is generated from these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from shared.contract import Contract, Request

MAX_PATHS = 1000


class AuditIn(Request):
    """What to audit: files/folders under AUDIT_INPUT_ROOT and/or FHIR Patient searches (at least one)."""

    paths: list[str] = Field(default=[], max_length=MAX_PATHS, description="relative to AUDIT_INPUT_ROOT")
    fhir_searches: list[str | dict[str, Any]] = Field(
        default=[], max_length=MAX_PATHS, description="Patient searches: query strings (name=x) or {param: value}"
    )


AUDIT_IN = TypeAdapter(AuditIn)


class InputCounts(Contract):
    total: int
    pending: int
    expanded: int
    error: int
    cancelled: int


class OrderCounts(Contract):
    total: int
    pending: int
    done: int
    error: int
    cancelled: int


class AuditStatusOut(Contract):
    """An audit's progress (``store.status``)."""

    id: str
    state: Literal["running", "finished", "cancelled"]
    created: str | None
    finished: str | None
    inputs: InputCounts
    orders: OrderCounts
    determinations: dict[str, int]
    throughput_per_second: float
    eta_seconds: float | None


class ReportCounts(Contract):
    model_config = ConfigDict(extra="allow")  # more breakdowns may follow (by pathway...)

    orders: int
    by_state: dict[str, int]
    by_determination: dict[str, int]
    by_pathway: dict[str, int] | None = None


class ReportAudit(Contract):
    id: str
    state: Literal["running", "finished", "cancelled"]
    started: str | None
    finished: str | None
    counts: ReportCounts


class ReportCode(Contract):
    system: str | None
    code: str | None
    display: str | None


class ReportOrder(Contract):
    reference: str
    code: ReportCode


class ReportRow(Contract):
    """One order (or one input's error); what a reviewer needs to act on it."""

    model_config = ConfigDict(extra="allow")  # the report may carry more per-row detail

    input: str | None
    patient: str | None
    order: ReportOrder | None
    determination: str | None
    confidence: float | None
    needs_review: bool | None = None
    pathway: str | None = None
    option: Any = None
    deciding: Any = None
    missing_facts: Any = None
    rationale: Any = None
    evidence: Any = None
    error: str | None


class AuditReportOut(Contract):
    """``format=json`` report: one row per order (``report.report_json``)."""

    audit: ReportAudit
    rows: list[ReportRow]
