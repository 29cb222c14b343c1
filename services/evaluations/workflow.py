"""The evaluation steps on the engines: each reads the stored input, writes its part, once.

A step is safe to run again (Celery redelivers after a worker dies): the store keeps the first
part written. Input problems (malformed FHIR, patient not in the bundle) end the evaluation as
``failed`` with the OperationOutcome a synchronous call would have returned; a FHIR server that
is down raises, so the task retries. A patient pulled from the server is stored as a Bundle by the
first step, so the parallel steps read the same snapshot.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache

from graph import open_store
from graph.queries import PathwayQueries
from services.care_navigation.engine import navigate
from services.clinical_history.imaging_findings import FindingsClassifier, imaging_finding_events
from services.clinical_history.timeline import build_timeline
from services.evaluations.store import FHIR_SERVER, EvaluationStore
from services.medical_necessity.engine import assess
from services.medical_necessity.judge import Judge, NoJudge
from services.radiology.service import findings_engine
from shared.config import Settings
from shared.errors import OncoTwinError, UpstreamError
from shared.fhir.ingest import load_bundle
from shared.fhir.record import PatientRecord
from shared.fhir.server import FhirServerClient

log = logging.getLogger(__name__)
_RECORDS_MAX = 8
# per process: a worker often runs both steps; threads of a worker share it, hence the lock
_RECORDS: LRUCache[str, PatientRecord] = LRUCache(maxsize=_RECORDS_MAX)
_RECORDS_LOCK = threading.Lock()


class Steps:
    """The three steps over one store and one set of pathway queries (built once per worker)."""

    def __init__(self, settings: Settings, judge: Judge | None = None) -> None:
        self.store = EvaluationStore(settings)
        self._settings = settings
        self._queries: PathwayQueries | None = None
        self._judge = judge or NoJudge()
        self._findings: FindingsClassifier | None = None

    @property
    def queries(self) -> PathwayQueries:
        if self._queries is None:
            self._queries = PathwayQueries(open_store(self._settings))
        return self._queries

    def history(self, evaluation_id: str) -> bool:
        """Timeline first: it also proves the input readable before the parallel steps start."""
        return self._step(evaluation_id, "history", lambda r: build_timeline(r).to_json())

    def navigation(self, evaluation_id: str) -> bool:
        return self._step(evaluation_id, "navigation", lambda r: navigate(r, self.queries).to_json())

    def necessity(self, evaluation_id: str) -> bool:
        return self._step(evaluation_id, "necessity", lambda r: assess(r, self.queries, None, self._judge).to_json())

    def findings(self, evaluation_id: str) -> bool:
        """Imaging reports read by the radiology twin: ``imaging-finding`` events for the timeline."""
        if self._findings is None:
            self._findings = findings_engine(self._settings.data_dir)
        engine = self._findings
        return self._step(evaluation_id, "findings", lambda r: [e.to_json() for e in imaging_finding_events(r, engine)])

    def _step(self, evaluation_id: str, part: str, run: Callable[[PatientRecord], Any]) -> bool:
        """True when this call wrote the part (False: a redelivery, or the evaluation has ended)."""
        try:
            record = self._record(evaluation_id)
            if record is None:
                return False  # finished, failed or unknown: a redelivery after the end
            return self.store.set_part(evaluation_id, part, run(record), patient=record.id)
        except UpstreamError:
            raise  # transient (FHIR server): the task retries with backoff
        except OncoTwinError as error:
            log.info("evaluation %s failed at %s: %s", evaluation_id, part, error.status)
            self.store.fail(evaluation_id, error.to_operation_outcome())
            return False

    def _record(self, evaluation_id: str) -> PatientRecord | None:
        with _RECORDS_LOCK:
            cached = _RECORDS.get(evaluation_id)  # a hit makes it the most recently used
        if cached is not None:
            return cached if self.store.is_open(evaluation_id) else None
        stored = self.store.input(evaluation_id)
        if stored is None:
            return None
        body = stored.body
        if stored.source == FHIR_SERVER:
            with FhirServerClient.from_settings(self._settings) as client:
                resources = client.patient_resources(stored.patient or "")
            entries = [{"resource": resource} for resource in resources]
            body = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()
            self.store.snapshot(evaluation_id, body)
        record = load_bundle(body, strict=stored.strict).record(stored.patient)
        with _RECORDS_LOCK:
            _RECORDS[evaluation_id] = record  # past _RECORDS_MAX the least recently used goes
        return record
