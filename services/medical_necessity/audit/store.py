"""Audit persistence: an audit, its inputs and one row per order, on :data:`shared.db.Base`.

Idempotency is in the schema: ``(audit_id, input_key)`` and ``(audit_id, order_key)`` are unique
and rows are inserted with ON CONFLICT DO NOTHING (PostgreSQL and SQLite alike), so a redelivered
expand task never adds a row twice; an order row is finished by one UPDATE guarded by
``state = 'pending'``, so a redelivered order task never writes twice into the report.

What a reviewer needs to act on a row (option, deciding criteria, missing facts, rationale,
evidence) is one JSON document in the row's ``detail`` column, written by that same guarded UPDATE
as the determination, so a result is all there or not at all. Tables are created without
migrations (``create_all``); :func:`upgrade` adds columns introduced since (a guarded
``ALTER TABLE ... ADD COLUMN``), so a database created by an earlier release keeps working, and its
rows, without a ``detail``, still report.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Engine,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    exists,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from shared.config import Settings
from shared.db import Base
from shared.db import engine as db_engine
from shared.errors import NotFound

PENDING, DONE, ERROR, CANCELLED, EXPANDED = "pending", "done", "error", "cancelled", "expanded"
RUNNING, FINISHED = "running", "finished"
ORDER_STATES = (PENDING, DONE, ERROR, CANCELLED)


class Audit(Base):
    __tablename__ = "necessity_audits"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=RUNNING)
    created: Mapped[float] = mapped_column(Float)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    resumed: Mapped[float | None] = mapped_column(Float, nullable=True)  # last automatic resume
    owner: Mapped[str | None] = mapped_column(Text, nullable=True)  # token subject, any length


class AuditInput(Base):
    __tablename__ = "necessity_audit_inputs"
    __table_args__ = (UniqueConstraint("audit_id", "input_key"), Index("ix_audit_inputs_state", "audit_id", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[str] = mapped_column(String(32))
    input_key: Mapped[str] = mapped_column(String(40))
    ref: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=PENDING)


class AuditOrder(Base):
    __tablename__ = "necessity_audit_orders"
    __table_args__ = (UniqueConstraint("audit_id", "order_key"), Index("ix_audit_orders_state", "audit_id", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[str] = mapped_column(String(32))
    order_key: Mapped[str] = mapped_column(String(40))
    input_key: Mapped[str] = mapped_column(String(40))
    input: Mapped[str] = mapped_column(Text)  # the input's label (values read from inputs are unbounded: Text)
    patient: Mapped[str | None] = mapped_column(Text, nullable=True)
    reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    occurrence: Mapped[int] = mapped_column(Integer, default=0)  # the same reference twice in one record
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    code: Mapped[str | None] = mapped_column(Text, nullable=True)
    display: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancer: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    determination: Mapped[str | None] = mapped_column(String(40), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    needs_review: Mapped[bool | None] = mapped_column(nullable=True)
    pathway: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # JSON: option, deciding, missing, rationale, evidence (see ``details``); added after the first
    # release, so :func:`upgrade` adds it to older databases and older rows have none.
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[float] = mapped_column(Float)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    elapsed_ms: Mapped[float | None] = mapped_column(Float, nullable=True)

    @property
    def details(self) -> dict[str, Any]:
        """The row's ``detail`` document, with every key present (empty for older rows and errors)."""
        found: Any = None
        if self.detail:
            try:
                found = json.loads(self.detail)
            except ValueError:
                found = None
        found = found if isinstance(found, dict) else {}
        out: dict[str, Any] = {"option": found.get("option"), "rationale": found.get("rationale")}
        for name in ("deciding", "missing", "evidence"):
            value = found.get(name)
            out[name] = value if isinstance(value, list) else []
        return out


# Columns added to the tables after their first release: (table, column, SQL type). :func:`upgrade`
# adds whichever an existing database lacks (create_all never alters a table that exists).
ADDED_COLUMNS = (("necessity_audit_orders", "detail", "TEXT"),)
_UPGRADED: set[str] = set()
_UPGRADE_LOCK = threading.Lock()


def upgrade(engine: Engine) -> None:
    """Add :data:`ADDED_COLUMNS` that the database lacks; once per database per process.

    Guarded: the columns are read first, so a database that has them is not locked at all; on
    PostgreSQL ``ADD COLUMN IF NOT EXISTS`` (nullable, no default: a catalogue change only) and on
    SQLite a "duplicate column" error mean that another process added it at the same moment. A
    later issue replaces this with Alembic migrations."""
    url = engine.url.render_as_string(hide_password=False)
    if url in _UPGRADED:
        return
    with _UPGRADE_LOCK:
        if url in _UPGRADED:
            return
        postgres = engine.dialect.name == "postgresql"
        for table, column, sql_type in ADDED_COLUMNS:
            with engine.connect() as conn:
                have = {c["name"] for c in inspect(conn).get_columns(table)}
            if column in have:
                continue
            guard = "IF NOT EXISTS " if postgres else ""
            try:
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {guard}{column} {sql_type}"))
            except (OperationalError, ProgrammingError):
                with engine.connect() as conn:  # added by another process meanwhile? else a real error
                    if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
                        raise
        _UPGRADED.add(url)


@dataclass(frozen=True)
class PendingOrder:
    """What an order task needs to find its order again (all JSON-safe)."""

    order_key: str
    ref: str
    patient: str
    reference: str
    occurrence: int

    def args(self, audit_id: str) -> list[Any]:
        return [audit_id, self.order_key, self.ref, self.patient, self.reference, self.occurrence]


def _insert_ignore(session: Session, table: Any, rows: Sequence[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(table).on_conflict_do_nothing(index_elements=keys), list(rows))


def create_audit(db: sessionmaker[Session], inputs: Iterable[tuple[str, str, str]], owner: str | None = None) -> str:
    """A new running audit over ``inputs`` (key, ref, label); returns its id."""
    audit_id = uuid.uuid4().hex
    with db.begin() as session:
        session.add(Audit(id=audit_id, state=RUNNING, created=time.time(), owner=owner))
        session.flush()
        rows = [{"audit_id": audit_id, "input_key": k, "ref": r, "label": lb, "state": PENDING} for k, r, lb in inputs]
        _insert_ignore(session, AuditInput.__table__, rows, ["audit_id", "input_key"])
    return audit_id


def get_audit(db: sessionmaker[Session], audit_id: str) -> Audit:
    with db() as session:
        audit = session.get(Audit, audit_id)
    if audit is None:
        raise NotFound("no such audit")
    return audit


def is_active(db: sessionmaker[Session], audit_id: str) -> bool:
    with db() as session:
        return session.scalar(select(Audit.state).where(Audit.id == audit_id)) == RUNNING


def add_inputs(
    db: sessionmaker[Session], audit_id: str, parent_key: str, inputs: Iterable[tuple[str, str, str]]
) -> None:
    """Inputs found by expanding another (a FHIR search); the parent is then expanded."""
    with db.begin() as session:
        rows = [{"audit_id": audit_id, "input_key": k, "ref": r, "label": lb, "state": PENDING} for k, r, lb in inputs]
        _insert_ignore(session, AuditInput.__table__, rows, ["audit_id", "input_key"])
        _set_input(session, audit_id, parent_key, EXPANDED)


def _set_input(session: Session, audit_id: str, input_key: str, state: str) -> None:
    session.execute(
        update(AuditInput)
        .where(AuditInput.audit_id == audit_id, AuditInput.input_key == input_key, AuditInput.state == PENDING)
        .values(state=state)
    )


def add_orders(db: sessionmaker[Session], audit_id: str, input_key: str, rows: Sequence[dict[str, Any]]) -> None:
    """Pending order rows of one input (ignored if already there); the input is then expanded."""
    now = time.time()
    with db.begin() as session:
        full = [{"audit_id": audit_id, "input_key": input_key, "state": PENDING, "created": now, **r} for r in rows]
        _insert_ignore(session, AuditOrder.__table__, full, ["audit_id", "order_key"])
        _set_input(session, audit_id, input_key, EXPANDED)


def add_input_error(
    db: sessionmaker[Session], audit_id: str, input_key: str, order_key: str, label: str, message: str
) -> None:
    """An input that cannot be read: one error row, and the input counts as done."""
    now = time.time()
    row = {
        "audit_id": audit_id,
        "order_key": order_key,
        "input_key": input_key,
        "input": label,
        "state": ERROR,
        "error": message,
        "created": now,
        "finished": now,
    }
    with db.begin() as session:
        _insert_ignore(session, AuditOrder.__table__, [row], ["audit_id", "order_key"])
        _set_input(session, audit_id, input_key, ERROR)


def _build_mark_finished() -> Any:
    audit_id: Any = bindparam("audit_id")
    idle = ~exists().where(AuditOrder.audit_id == audit_id, AuditOrder.state == PENDING) & ~exists().where(
        AuditInput.audit_id == audit_id, AuditInput.state == PENDING
    )
    last = select(func.max(AuditOrder.finished)).where(AuditOrder.audit_id == audit_id).scalar_subquery()
    return (
        update(Audit)
        .where(Audit.id == audit_id, Audit.state == RUNNING, idle)
        .values(state=FINISHED, finished=func.coalesce(last, bindparam("now")))
    )


# Built once: they run once per order, and building a statement costs more than running it here.
MARK_FINISHED = _build_mark_finished()
ORDER_STATE = (
    select(AuditOrder.state, Audit.state)
    .join(Audit, Audit.id == AuditOrder.audit_id)
    .where(AuditOrder.audit_id == bindparam("audit_id"), AuditOrder.order_key == bindparam("order_key"))
)


def _mark_finished(audit_id: str) -> dict[str, Any]:
    """The parameters of :data:`MARK_FINISHED`."""
    return {"audit_id": audit_id, "now": time.time()}


class OrderRows:
    """The hot path of an audit, one state read and one write per order, in as few round trips as
    possible: every statement is its own autocommit transaction.

    On PostgreSQL its connections (a small pool of its own) run with ``synchronous_commit = off``: a
    database crash can then lose the last few results, whose rows are simply pending again and are
    evaluated once more on resume; consistency is never at risk, and each order saves a WAL flush.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:  # created on first use: in the worker's pool process, after the fork
            url = make_url(self.settings.database)
            if url.get_backend_name() == "postgresql":
                self._engine = create_engine(
                    url.set(drivername="postgresql+psycopg"),
                    pool_pre_ping=True,
                    pool_size=2,
                    max_overflow=2,
                    isolation_level="AUTOCOMMIT",
                    connect_args={"options": "-c synchronous_commit=off"},
                )
            else:
                self._engine = db_engine(self.settings).execution_options(isolation_level="AUTOCOMMIT")
        return self._engine

    def connect(self) -> Connection:
        """One checkout (and one liveness ping) for an order's read and write together."""
        return self.engine.connect()

    def state(self, conn: Connection, audit_id: str, order_key: str) -> tuple[str | None, str | None]:
        """(the row's state, its audit's state); Nones when there is no such row."""
        found = conn.execute(ORDER_STATE, {"audit_id": audit_id, "order_key": order_key}).first()
        return (found[0], found[1]) if found else (None, None)

    def finish(self, conn: Connection, audit_id: str, order_key: str, values: dict[str, Any]) -> bool:
        """Write one result if the row is still pending (False when another delivery got there first);
        then, in a statement of its own (so after the write is committed), mark the audit finished
        if nothing else is pending. Of two writers finishing the last rows at once, the later to
        commit sees both rows done, so the audit is always marked."""
        result = conn.execute(
            update(AuditOrder)
            .where(AuditOrder.audit_id == audit_id, AuditOrder.order_key == order_key, AuditOrder.state == PENDING)
            .values(finished=time.time(), **values)
        )
        written = bool(result.rowcount)
        if written:
            conn.execute(MARK_FINISHED, _mark_finished(audit_id))
        return written


def finish_if_complete(db: sessionmaker[Session], audit_id: str) -> bool:
    """Mark a running audit finished (at its last row's time) once nothing is pending; True if this call did."""
    with db.begin() as session:
        return bool(getattr(session.execute(MARK_FINISHED, _mark_finished(audit_id)), "rowcount", 0))


def cancel(db: sessionmaker[Session], audit_id: str) -> None:
    """Stop a running audit: pending rows and inputs become cancelled; tasks still queued skip them."""
    get_audit(db, audit_id)
    now = time.time()
    with db.begin() as session:
        changed = session.execute(
            update(Audit).where(Audit.id == audit_id, Audit.state == RUNNING).values(state=CANCELLED, finished=now)
        )
        if not getattr(changed, "rowcount", 0):
            return  # finished or cancelled already
        session.execute(
            update(AuditOrder)
            .where(AuditOrder.audit_id == audit_id, AuditOrder.state == PENDING)
            .values(state=CANCELLED, error="cancelled", finished=now)
        )
        session.execute(
            update(AuditInput)
            .where(AuditInput.audit_id == audit_id, AuditInput.state == PENDING)
            .values(state=CANCELLED)
        )


def pending_inputs(db: sessionmaker[Session], audit_id: str) -> list[tuple[str, str, str]]:
    with db() as session:
        found = session.execute(
            select(AuditInput.input_key, AuditInput.ref, AuditInput.label)
            .where(AuditInput.audit_id == audit_id, AuditInput.state == PENDING)
            .order_by(AuditInput.id)
        )
        return [(k, r, lb) for k, r, lb in found]


def pending_orders(db: sessionmaker[Session], audit_id: str, input_key: str | None = None) -> list[PendingOrder]:
    query = (
        select(AuditOrder.order_key, AuditInput.ref, AuditOrder.patient, AuditOrder.reference, AuditOrder.occurrence)
        .join(
            AuditInput,
            (AuditInput.audit_id == AuditOrder.audit_id) & (AuditInput.input_key == AuditOrder.input_key),
        )
        .where(AuditOrder.audit_id == audit_id, AuditOrder.state == PENDING)
        .order_by(AuditOrder.id)
    )
    if input_key is not None:
        query = query.where(AuditOrder.input_key == input_key)
    with db() as session:
        return [PendingOrder(k, r, p or "", ref or "", n) for k, r, p, ref, n in session.execute(query)]


def claim_resume(db: sessionmaker[Session], audit_id: str, quiet_s: float) -> bool:
    """True for one caller per ``quiet_s``: when several workers connect at once (a scale-up, a
    broker back for everyone), one of them re-enqueues an audit's pending work, not each."""
    now = time.time()
    with db.begin() as session:
        result = session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.state == RUNNING)
            .where((Audit.resumed.is_(None)) | (Audit.resumed < now - quiet_s))
            .values(resumed=now)
        )
        return bool(getattr(result, "rowcount", 0))


def stalled_audits(db: sessionmaker[Session], quiet_s: float) -> list[str]:
    """Running audits with no progress (no row added or finished, no resume) for ``quiet_s``: their
    queued work was lost (a worker node's own queue gone with its pod, a database outage past the
    retries), so only a resume will finish them."""
    cutoff = time.time() - quiet_s
    last_row = (
        select(func.max(func.coalesce(AuditOrder.finished, AuditOrder.created)))
        .where(AuditOrder.audit_id == Audit.id)
        .scalar_subquery()
    )
    query = select(Audit.id).where(
        Audit.state == RUNNING,
        func.coalesce(last_row, Audit.created) < cutoff,
        func.coalesce(Audit.resumed, Audit.created) < cutoff,
    )
    with db() as session:
        return list(session.scalars(query.order_by(Audit.created)))


def running_audits(db: sessionmaker[Session]) -> list[str]:
    with db() as session:
        return list(session.scalars(select(Audit.id).where(Audit.state == RUNNING).order_by(Audit.created)))


def rows(db: sessionmaker[Session], audit_id: str) -> list[AuditOrder]:
    with db() as session:
        return list(session.scalars(select(AuditOrder).where(AuditOrder.audit_id == audit_id).order_by(AuditOrder.id)))


def status(db: sessionmaker[Session], audit_id: str) -> dict[str, Any]:
    """Counts by state and determination, inputs, throughput and an estimate of the time left."""
    if get_audit(db, audit_id).state == RUNNING:
        finish_if_complete(db, audit_id)
    audit = get_audit(db, audit_id)
    with db() as session:
        by_state = dict.fromkeys(ORDER_STATES, 0)
        by_state.update(
            {
                s: n
                for s, n in session.execute(
                    select(AuditOrder.state, func.count())
                    .where(AuditOrder.audit_id == audit_id)
                    .group_by(AuditOrder.state)
                )
            }
        )
        determinations = {
            d: n
            for d, n in session.execute(
                select(AuditOrder.determination, func.count())
                .where(AuditOrder.audit_id == audit_id, AuditOrder.determination.is_not(None))
                .group_by(AuditOrder.determination)
            )
        }
        inputs = dict.fromkeys((PENDING, EXPANDED, ERROR, CANCELLED), 0)
        inputs.update(
            {
                s: n
                for s, n in session.execute(
                    select(AuditInput.state, func.count())
                    .where(AuditInput.audit_id == audit_id)
                    .group_by(AuditInput.state)
                )
            }
        )
        last = session.scalar(select(func.max(AuditOrder.finished)).where(AuditOrder.audit_id == audit_id))
    completed = by_state[DONE] + by_state[ERROR]
    end = audit.finished if audit.finished is not None else time.time()
    span = max((last or end) if audit.state != RUNNING else end, audit.created) - audit.created
    rate = completed / span if span > 0 and completed else 0.0
    eta = by_state[PENDING] / rate if rate and audit.state == RUNNING else (0.0 if audit.state != RUNNING else None)
    return {
        "id": audit.id,
        "state": audit.state,
        "created": iso(audit.created),
        "finished": iso(audit.finished),
        "inputs": {"total": sum(inputs.values()), **inputs},
        "orders": {"total": sum(by_state.values()), **by_state},
        "determinations": determinations,
        "throughputPerSecond": round(rate, 2),
        "etaSeconds": round(eta, 1) if eta is not None else None,
    }


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
