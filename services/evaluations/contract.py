"""JSON contract of ``/v1/evaluations``: the evaluation it answers (the OpenAPI document is generated
from these models, ``services.evaluations.openapi``)."""

from __future__ import annotations

from typing import Literal

from services.care_navigation.contract import NavigationOut
from services.clinical_history.contract import Timeline
from services.medical_necessity.contract import NecessityOut
from shared.contract import Contract, OperationOutcome


class EvaluationResult(Contract):
    """The three twins' answers: the timeline (with imaging-finding events), navigation and necessity."""

    history: Timeline
    navigation: NavigationOut
    necessity: NecessityOut


class EvaluationQueued(Contract):
    id: str
    status: Literal["queued"]


class EvaluationOut(Contract):
    """An evaluation: ``result`` once done, ``error`` once failed (absent otherwise)."""

    id: str
    status: Literal["queued", "running", "done", "failed"]
    created: str | None
    finished: str | None
    patient: str | None
    result: EvaluationResult | None = None
    error: OperationOutcome | None = None
