"""The steps of an audit, free of Celery: start, expand one input, evaluate one order, resume.

The tasks are thin callers of :class:`Auditor`; a step returns the work it creates (inputs to
expand, orders to evaluate) and the caller enqueues it. Every step is idempotent: it can run again
after a crash or a redelivery and the report still holds each order exactly once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from graph import open_store
from graph.facts import deciding
from graph.queries import PathwayQueries
from services.medical_necessity.audit import store
from services.medical_necessity.audit.inputs import (
    SEARCH,
    RecordCache,
    enumerate_paths,
    expand_search,
    key,
    label,
    read_input,
    search_ref,
)
from services.medical_necessity.contract import DeterminationOut
from services.medical_necessity.engine import assess, orders_to_review
from services.medical_necessity.judge import Judge, NoJudge
from shared.config import Settings
from shared.db import engine as db_engine
from shared.db import sessions
from shared.errors import TRANSIENT, InvalidInput, OncoTwinError
from shared.fhir.record import PatientRecord

logger = logging.getLogger(__name__)
InputSpec = tuple[str, str, str]  # input key, reference, label
T = TypeVar("T")


@dataclass
class Work:
    """What a step leaves to do: inputs to expand and orders to evaluate."""

    inputs: list[InputSpec] = field(default_factory=list)
    orders: list[store.PendingOrder] = field(default_factory=list)


def cancer_of(record: PatientRecord) -> str:
    """The report's "cancer" column: the patient's primary cancer types (or every cancer's)."""
    primaries = [c for c in record.cancers if c.role == "primary"] or record.cancers
    return "+".join(sorted({c.cancer_type for c in primaries})) or "none"


def review_detail(out: DeterminationOut) -> dict[str, Any]:
    """What a reviewer needs to act on a row, beyond the determination: the option, the deciding
    criteria, the missing facts (for ``insufficient-documentation``: the undocumented leaves of the
    best route, as labelled in the criteria tree), the rationale, and the evidence (the FHIR
    references behind the best route's deciding leaves, note passages included)."""
    # The tree is "any" over the routes, best first (see the engine); the first route decided it.
    best = out.criteria.children[0] if out.criteria is not None and out.criteria.children else None
    missing: list[str] = []
    if out.determination == "insufficient-documentation":
        unknown = deciding(best, "unknown") if best is not None else []
        # the fact to document, as its leaf names it (also under a NOT: what is missing is the fact)
        missing = list(dict.fromkeys(leaf.label for _, leaf in unknown)) or list(out.deciding)
    evidence: dict[tuple[str, str], dict[str, Any]] = {}  # one entry per criterion and reference
    for criterion, leaf in deciding(best, best.status) if best is not None else []:
        found = [(e.source, e.value, e.date) for e in leaf.evidence] + [(p.source, None, p.date) for p in leaf.passages]
        for source, value, date in found:
            entry = {"criterion": criterion, "reference": source, "value": value, "date": date}
            evidence.setdefault((criterion, source), entry)
    return {
        "option": out.option,
        "deciding": list(out.deciding),
        "missing": missing,
        "rationale": out.rationale,
        "evidence": list(evidence.values()),
    }


def _given_up(exc: Exception, final: bool) -> str:
    """Re-raise a transient failure for the task to retry; once retries are spent, the row's error."""
    if not final:
        raise exc
    return f"a service the audit needs kept failing; gave up after retries ({type(exc).__name__})"


class Auditor:
    """One per process: the database, the pathway queries, the judge and the record cache."""

    def __init__(
        self,
        settings: Settings,
        judge: Judge | None = None,
        queries: PathwayQueries | None = None,
        cache: RecordCache | None = None,
    ) -> None:
        self.settings = settings
        self.db = sessions(settings)
        store.upgrade(db_engine(settings))  # an older database gets the columns added since
        self.rows = store.OrderRows(settings)
        self.judge = judge or NoJudge()
        self._queries = queries
        self.cache = cache or RecordCache()

    @property
    def queries(self) -> PathwayQueries:
        if self._queries is None:
            self._queries = PathwayQueries(open_store(self.settings))
        return self._queries

    # -- starting ---------------------------------------------------------------------------------

    def start(
        self,
        paths: Sequence[str | Path] = (),
        searches: Sequence[str | dict[str, str]] = (),
        root: Path | None = None,
        owner: str | None = None,
    ) -> tuple[str, Work]:
        """A new audit over files/folders (confined to ``root`` when given) and FHIR searches."""
        if searches and self.settings.fhir_base_url is None:
            raise InvalidInput(
                "FHIR searches need a FHIR server (FHIR_BASE_URL is not set)", issue_code="not-supported"
            )
        refs = enumerate_paths(paths, root, self.settings.bulk_index_dir) if paths else []
        refs += [search_ref(s) for s in searches]
        if not refs:
            raise InvalidInput("name at least one input (a path or a FHIR search)", issue_code="required")
        specs = [(key(ref), ref, label(ref, root)) for ref in refs]
        audit_id = store.create_audit(self.db, specs, owner)
        return audit_id, Work(inputs=specs)

    def resume(self, audit_id: str) -> Work:
        """Everything still pending: inputs not yet expanded and orders not yet evaluated."""
        store.get_audit(self.db, audit_id)
        work = Work(store.pending_inputs(self.db, audit_id), store.pending_orders(self.db, audit_id))
        if not work.inputs and not work.orders:
            store.finish_if_complete(self.db, audit_id)
        return work

    # -- steps ------------------------------------------------------------------------------------

    def expand(self, audit_id: str, input_key: str, ref: str, input_label: str, *, final: bool = False) -> Work:
        """Read one input, add a pending row per order to review (or one error row), return them.

        A transient failure (FHIR server down) is raised for the task to retry, unless ``final``
        (retries spent): then it becomes the input's error row, so the audit can finish."""
        if not store.is_active(self.db, audit_id):
            return Work()
        if ref.startswith(SEARCH):
            return self._expand_search(audit_id, input_key, ref, input_label, final)
        records = self._read(audit_id, (input_key, ref, input_label), final, lambda: read_input(ref, self.settings))
        if records is None:
            return Work()
        self.cache.put(ref, records)
        rows = []
        for record in records:
            seen: Counter[str] = Counter()
            cancer = cancer_of(record)
            for order in orders_to_review(record):
                occurrence = seen[order.reference]
                seen[order.reference] += 1
                rows.append(
                    {
                        "order_key": key(ref, record.id, order.reference, str(occurrence)),
                        "input": input_label,
                        "patient": record.id,
                        "reference": order.reference,
                        "occurrence": occurrence,
                        "system": order.code.system,
                        "code": order.code.code,
                        "display": order.code.display,
                        "cancer": cancer,
                    }
                )
        store.add_orders(self.db, audit_id, input_key, rows)
        pending = store.pending_orders(self.db, audit_id, input_key)
        if not pending:
            store.finish_if_complete(self.db, audit_id)
        return Work(orders=pending)

    def _expand_search(self, audit_id: str, input_key: str, ref: str, input_label: str, final: bool) -> Work:
        found = self._read(audit_id, (input_key, ref, input_label), final, lambda: expand_search(ref, self.settings))
        if found is None:
            return Work()
        children = [(key(child), child, child) for child in found]
        store.add_inputs(self.db, audit_id, input_key, children)
        if not children:
            store.finish_if_complete(self.db, audit_id)
        return Work(inputs=children)

    def _read(self, audit_id: str, spec: InputSpec, final: bool, read: Callable[[], T]) -> T | None:
        """``read()``; or, when the input cannot be read, None after writing its error row (transient
        failures are raised for a retry until ``final``). An unreadable input never stops the audit."""
        try:
            return read()
        except TRANSIENT as exc:
            message = _given_up(exc, final)
        except OncoTwinError as exc:
            message = exc.message
        except Exception as exc:
            logger.warning("audit input could not be read (%s)", type(exc).__name__)
            message = f"input could not be read ({type(exc).__name__})"
        self._input_error(audit_id, *spec, message)
        return None

    def _input_error(self, audit_id: str, input_key: str, ref: str, input_label: str, message: str) -> None:
        store.add_input_error(self.db, audit_id, input_key, key(ref, "input-error"), input_label, message)
        store.finish_if_complete(self.db, audit_id)

    def evaluate(
        self,
        audit_id: str,
        order_key: str,
        ref: str,
        patient: str,
        reference: str,
        occurrence: int,
        *,
        final: bool = False,
    ) -> bool:
        """Determine one order and write it if its row is still pending; True if this call wrote it.
        Transient failures are raised for a retry, or written as the row's error when ``final``."""
        with self.rows.connect() as conn:  # autocommit: each statement commits on its own
            row_state, audit_state = self.rows.state(conn, audit_id, order_key)
            if row_state != store.PENDING:
                return False  # done by an earlier delivery, or cancelled
            if audit_state != store.RUNNING:  # a row added while the audit was being cancelled
                self.rows.finish(conn, audit_id, order_key, {"state": store.CANCELLED, "error": "cancelled"})
                return False
            values = self._outcome(ref, patient, reference, occurrence, final)
            return self.rows.finish(conn, audit_id, order_key, values)

    def _outcome(self, ref: str, patient: str, reference: str, occurrence: int, final: bool) -> dict[str, Any]:
        """The row's values: a determination, or the error that stopped it (transient ones re-raised)."""
        started = time.perf_counter()
        values: dict[str, Any]
        try:
            values = self._determine(ref, patient, reference, occurrence)
        except TRANSIENT as exc:
            values = {"state": store.ERROR, "error": _given_up(exc, final)}
        except OncoTwinError as exc:
            values = {"state": store.ERROR, "error": exc.message}
        except Exception as exc:  # one bad order must not stop the audit
            logger.warning("audit order could not be evaluated (%s)", type(exc).__name__)
            values = {"state": store.ERROR, "error": f"evaluation failed ({type(exc).__name__})"}
        values["elapsed_ms"] = (time.perf_counter() - started) * 1000
        return values

    def _determine(self, ref: str, patient: str, reference: str, occurrence: int) -> dict[str, Any]:
        record, matches = self.cache.get(ref, self.settings).orders(patient, reference)
        if record is None or occurrence >= len(matches):
            return {"state": store.ERROR, "error": "the order is no longer in the input"}
        out = assess(record, self.queries, [matches[occurrence]], self.judge).determinations[0]
        return {
            "state": store.DONE,
            "determination": out.determination,
            "confidence": out.confidence,
            "needs_review": out.needs_review,
            "pathway": out.pathway,
            "detail": json.dumps(review_detail(out), separators=(",", ":")),
        }
