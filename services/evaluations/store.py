"""Evaluations in the database: the posted input, each step's part, and the combined status.

Every write is idempotent (a part is set once; a redelivered step finds it set and does nothing),
so a step that Celery runs twice after a worker died never changes a finished result.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, LargeBinary, String, Text, select, update
from sqlalchemy.orm import Mapped, defer, mapped_column

from services.clinical_history.timeline import with_events
from shared.config import Settings
from shared.db import Base, sessions

PARTS = ("history", "navigation", "necessity", "findings")  # findings: imaging-finding events
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
BUNDLE, FHIR_SERVER = "bundle", "fhir"


def _now() -> datetime:
    return datetime.now(UTC)


class EvaluationRow(Base):
    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    owner: Mapped[str] = mapped_column(Text)  # token subject (any length); only they may read it
    patient_param: Mapped[str | None] = mapped_column(String(128), nullable=True)
    patient: Mapped[str | None] = mapped_column(Text, nullable=True)  # from the input: unbounded
    strict: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16), default=BUNDLE)  # bundle, or fhir: pull from the server
    body: Mapped[bytes] = mapped_column(LargeBinary)  # zlib-compressed FHIR Bundle; dropped when done
    history: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    navigation: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    necessity: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    findings: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[Any | None] = mapped_column(JSON, nullable=True)  # an OperationOutcome


@dataclass(frozen=True)
class Input:
    source: str
    body: bytes
    patient: str | None
    strict: bool


@dataclass(frozen=True)
class Evaluation:
    id: str
    status: str
    created: datetime
    finished: datetime | None
    owner: str
    patient: str | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None


class EvaluationStore:
    def __init__(self, settings: Settings) -> None:
        self._sessions = sessions(settings)

    def create(self, body: bytes, owner: str, patient: str | None, strict: bool, source: str = BUNDLE) -> str:
        evaluation_id = uuid.uuid4().hex
        with self._sessions.begin() as s:
            s.add(
                EvaluationRow(
                    id=evaluation_id,
                    owner=owner,
                    patient_param=patient,
                    strict=strict,
                    source=source,
                    body=zlib.compress(body, 3),
                )
            )
        return evaluation_id

    def input(self, evaluation_id: str) -> Input | None:
        """What to evaluate; None once the evaluation has ended (or never existed)."""
        with self._sessions() as s:
            row = s.get(EvaluationRow, evaluation_id)
            if row is None or row.status in (DONE, FAILED):
                return None
            return Input(row.source, zlib.decompress(row.body), row.patient_param, row.strict)

    def snapshot(self, evaluation_id: str, bundle: bytes) -> None:
        """Keeps what was pulled from the FHIR server, so every step reads the same data."""
        with self._sessions.begin() as s:
            s.execute(
                update(EvaluationRow)
                .where(EvaluationRow.id == evaluation_id, EvaluationRow.source == FHIR_SERVER)
                .values(source=BUNDLE, body=zlib.compress(bundle, 3))
            )

    def is_open(self, evaluation_id: str) -> bool:
        with self._sessions() as s:
            status = s.execute(select(EvaluationRow.status).where(EvaluationRow.id == evaluation_id)).scalar()
            return status in (QUEUED, RUNNING)

    def set_part(self, evaluation_id: str, part: str, value: Any, patient: str | None = None) -> bool:
        """Stores one step's output once (True when this call wrote it); the last part in finishes."""
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}")
        column = getattr(EvaluationRow, part)
        values: dict[str, Any] = {part: value, "status": RUNNING}
        if patient is not None:
            values["patient"] = patient
        with self._sessions.begin() as s:
            written = s.execute(
                update(EvaluationRow)
                .where(EvaluationRow.id == evaluation_id, column.is_(None), EvaluationRow.status.in_((QUEUED, RUNNING)))
                .values(**values)
            )
            # The last part in finishes the evaluation; the guard makes this happen exactly once.
            s.execute(
                update(EvaluationRow)
                .where(
                    EvaluationRow.id == evaluation_id,
                    EvaluationRow.status == RUNNING,
                    *(getattr(EvaluationRow, p).is_not(None) for p in PARTS),
                )
                .values(status=DONE, finished=_now(), body=b"")
            )
            return bool(written.rowcount)

    def fail(self, evaluation_id: str, outcome: dict[str, Any]) -> None:
        with self._sessions.begin() as s:
            s.execute(
                update(EvaluationRow)
                .where(EvaluationRow.id == evaluation_id, EvaluationRow.status.in_((QUEUED, RUNNING)))
                .values(status=FAILED, error=outcome, finished=_now(), body=b"")
            )

    def get(self, evaluation_id: str) -> Evaluation | None:
        with self._sessions() as s:
            query = select(EvaluationRow).where(EvaluationRow.id == evaluation_id).options(defer(EvaluationRow.body))
            row = s.execute(query).scalar_one_or_none()
            if row is None:
                return None
            result = None
            if row.status == DONE:  # the radiology queue's findings join the history timeline
                history = with_events(row.history, row.findings)
                result = {"history": history, "navigation": row.navigation, "necessity": row.necessity}
            return Evaluation(row.id, row.status, row.created, row.finished, row.owner, row.patient, result, row.error)
