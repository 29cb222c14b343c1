"""Patient evaluations: the store's idempotent join, the steps on the engines, and the REST face.

These run without a worker (the steps are called in-process, as a worker would); the workflow on
real Celery workers with Redis and PostgreSQL, and under ``oncotwin up``, is in
``test_evaluations_workers.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from services.evaluations.store import DONE, FAILED, FHIR_SERVER, QUEUED, RUNNING, EvaluationStore
from services.evaluations.workflow import _RECORDS, Steps
from shared.config import Settings, load_settings
from shared.errors import UpstreamError
from shared.fhir.record import FhirTime
from tests.conftest import requires_data, synthea
from tests.test_fhir_server import PATIENT as SERVER_PATIENT
from tests.test_fhir_server import TOKEN, FakeFhir, _load_bulk, serving
from tests.test_radiology_timeline import bundle as imaging_bundle

pytestmark = requires_data
FHIR_JSON = {"Content-Type": "application/fhir+json"}
ALL_THREE = ["history.read", "navigation.read", "necessity.read"]


@pytest.fixture
def austin() -> bytes:
    return synthea("Austin").read_bytes()


@pytest.fixture
def steps(settings: Settings) -> Steps:
    return Steps(settings)


def test_steps_fill_every_part_and_the_last_one_finishes_the_evaluation(steps: Steps, austin: bytes) -> None:
    evaluation_id = steps.store.create(austin, "dr-test", None, False)
    assert steps.store.get(evaluation_id).status == QUEUED  # type: ignore[union-attr]
    assert steps.history(evaluation_id)
    assert steps.store.get(evaluation_id).status == RUNNING  # type: ignore[union-attr]
    assert steps.necessity(evaluation_id)
    assert steps.navigation(evaluation_id)
    assert steps.store.get(evaluation_id).status == RUNNING  # type: ignore[union-attr]  # findings still due
    assert steps.findings(evaluation_id)
    done = steps.store.get(evaluation_id)
    assert done is not None and done.status == DONE and done.finished is not None
    assert done.result is not None
    assert [c["cancerType"] for c in done.result["history"]["cancers"]] == ["nsclc"]
    assert done.result["navigation"]["patient"] == done.patient == done.result["necessity"]["patient"]
    assert {p["id"] for p in done.result["navigation"]["pathways"]} == {"nsclc"}


def test_a_redelivered_step_changes_nothing_once_the_part_is_written(steps: Steps, austin: bytes) -> None:
    evaluation_id = steps.store.create(austin, "dr-test", None, False)
    steps.history(evaluation_id)
    first = steps.store.get(evaluation_id)
    assert not steps.store.set_part(evaluation_id, "history", {"tampered": True})  # the first write stays
    steps.navigation(evaluation_id)
    steps.necessity(evaluation_id)
    steps.findings(evaluation_id)
    finished = steps.store.get(evaluation_id)
    assert finished is not None and first is not None and finished.result is not None
    assert "tampered" not in finished.result["history"]
    # After the end, a late redelivery finds no input and stops the workflow.
    assert steps.navigation(evaluation_id) is False
    assert steps.store.get(evaluation_id) == finished


def test_imaging_findings_from_the_radiology_step_join_the_history_timeline(steps: Steps) -> None:
    evaluation_id = steps.store.create(json.dumps(imaging_bundle()).encode(), "dr", None, False)
    for step in (steps.history, steps.findings, steps.navigation, steps.necessity):
        assert step(evaluation_id)
    done = steps.store.get(evaluation_id)
    assert done is not None and done.result is not None
    events = done.result["history"]["events"]
    found = {e["display"]: e for e in events if e["kind"] == "imaging-finding"}
    assert found["Effusion"]["source"] == "DiagnosticReport/cxr1" and not found["Effusion"]["negated"]
    assert found["Pneumothorax"]["negated"]
    dated = [e["date"] for e in events if e["date"]]
    assert dated == sorted(dated, key=FhirTime.parse)  # merged in timeline order


def test_malformed_input_fails_the_evaluation_with_an_operation_outcome(steps: Steps) -> None:
    evaluation_id = steps.store.create(b'{"resourceType": "Bundle", "entry": [{"resource": 42}]}', "dr", None, False)
    assert steps.history(evaluation_id) is False
    failed = steps.store.get(evaluation_id)
    assert failed is not None and failed.status == FAILED and failed.result is None
    assert failed.error is not None and failed.error["resourceType"] == "OperationOutcome"
    assert steps.navigation(evaluation_id) is False  # the parallel steps see the end and stop


def test_a_patient_not_in_the_bundle_fails_naming_the_problem(steps: Steps, austin: bytes) -> None:
    evaluation_id = steps.store.create(austin, "dr", "not-this-patient", False)
    assert steps.history(evaluation_id) is False
    failed = steps.store.get(evaluation_id)
    assert failed is not None and failed.error is not None
    assert "patient" in json.dumps(failed.error).lower()


def test_store_rejects_unknown_parts(settings: Settings) -> None:
    store = EvaluationStore(settings)
    with pytest.raises(ValueError, match="unknown part"):
        store.set_part(store.create(b"{}", "dr", None, False), "billing", {})


# --- REST ----------------------------------------------------------------------------------------


def _headers(mint: Callable[..., str], scopes: list[str] = ALL_THREE, subject: str = "dr-test") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(scopes, subject=subject)}", **FHIR_JSON}


def test_post_answers_202_with_a_location_then_get_shows_the_result(
    client: FlaskClient, mint: Callable[..., str], settings: Settings, austin: bytes
) -> None:
    headers = _headers(mint)
    posted = client.post("/v1/evaluations", data=austin, headers=headers)
    assert posted.status_code == 202
    location = posted.headers["Location"]
    evaluation_id = posted.get_json()["id"]
    assert location.endswith(f"/v1/evaluations/{evaluation_id}")
    pending = client.get(location, headers=headers)
    assert pending.status_code == 200 and pending.get_json()["status"] == QUEUED
    assert pending.headers["Retry-After"] == "1"

    steps = Steps(settings)  # what the workers do, in-process
    for step in (steps.history, steps.navigation, steps.necessity, steps.findings):
        step(evaluation_id)
    done = client.get(location, headers=headers)
    body = done.get_json()
    assert body["status"] == DONE and "Retry-After" not in done.headers
    assert set(body["result"]) == {"history", "navigation", "necessity"}
    assert body["created"].endswith("+00:00") and body["finished"].endswith("+00:00")


def test_an_evaluation_is_visible_only_to_its_creator(
    client: FlaskClient, mint: Callable[..., str], austin: bytes
) -> None:
    posted = client.post("/v1/evaluations", data=austin, headers=_headers(mint))
    other = client.get(posted.headers["Location"], headers=_headers(mint, subject="someone-else"))
    assert other.status_code == 404
    assert other.get_json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"not json", 400, "not JSON"),
        (b'{"resourceType": "Patient", "id": "p"}', 400, "Bundle"),
        (b"[]", 400, "Bundle"),
    ],
)
def test_bad_bodies_get_an_operation_outcome(
    client: FlaskClient, mint: Callable[..., str], body: bytes, status: int, words: str
) -> None:
    response = client.post("/v1/evaluations", data=body, headers=_headers(mint))
    assert response.status_code == status
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert words in outcome["issue"][0]["diagnostics"]


def test_each_of_the_three_read_scopes_is_required(
    client: FlaskClient, mint: Callable[..., str], austin: bytes
) -> None:
    for missing in ALL_THREE:
        scopes = [s for s in ALL_THREE if s != missing]
        response = client.post("/v1/evaluations", data=austin, headers=_headers(mint, scopes))
        assert response.status_code == 403, missing
        assert missing in response.get_json()["issue"][0]["diagnostics"]


def test_unknown_and_malformed_ids_are_404(client: FlaskClient, mint: Callable[..., str]) -> None:
    for evaluation_id in ("0" * 32, "../../etc/passwd", "x"):
        response = client.get(f"/v1/evaluations/{evaluation_id}", headers=_headers(mint))
        assert response.status_code == 404


def test_a_bad_patient_parameter_is_refused(client: FlaskClient, mint: Callable[..., str], austin: bytes) -> None:
    response = client.post("/v1/evaluations?patient=a%20b", data=austin, headers=_headers(mint))
    assert response.status_code == 400
    assert "patient" in response.get_json()["issue"][0]["diagnostics"]


# --- patients pulled from a FHIR server --------------------------------------------------------


_bulk = cache(_load_bulk)


@pytest.fixture
def fhir() -> Iterator[FakeFhir]:
    with serving(FakeFhir(_bulk())) as fake:  # the FHIR server double of test_fhir_server
        yield fake


@pytest.fixture
def from_server(fhir: FakeFhir, tmp_path: Path) -> Steps:
    _RECORDS.clear()
    env = {"ONCOTWIN_DATA_DIR": str(tmp_path / "var"), "FHIR_BASE_URL": fhir.base_url, "FHIR_BEARER_TOKEN": TOKEN}
    return Steps(load_settings(env))


def test_a_patient_from_the_fhir_server_is_pulled_once_and_every_step_reads_that_snapshot(
    from_server: Steps, fhir: FakeFhir
) -> None:
    evaluation_id = from_server.store.create(b"", "dr", SERVER_PATIENT, False, FHIR_SERVER)
    assert from_server.history(evaluation_id)
    pulled = len(fhir.seen)
    assert pulled > 0
    _RECORDS.clear()  # as if the parallel steps ran in other worker processes
    assert from_server.navigation(evaluation_id) and from_server.necessity(evaluation_id)
    assert from_server.findings(evaluation_id)
    assert len(fhir.seen) == pulled  # no second pull
    done = from_server.store.get(evaluation_id)
    assert done is not None and done.status == DONE and done.patient == SERVER_PATIENT


def test_a_fhir_server_that_is_down_leaves_the_step_to_be_retried(from_server: Steps, fhir: FakeFhir) -> None:
    fhir.failures = [(503, {"Retry-After": "3600"})]  # longer than the client waits: it gives up at once
    evaluation_id = from_server.store.create(b"", "dr", SERVER_PATIENT, False, FHIR_SERVER)
    with pytest.raises(UpstreamError):
        from_server.history(evaluation_id)
    assert from_server.store.get(evaluation_id).status == QUEUED  # type: ignore[union-attr]
    assert from_server.history(evaluation_id)  # the retry finds the server back


def test_without_a_body_a_patient_and_a_fhir_server_are_needed(client: FlaskClient, mint: Callable[..., str]) -> None:
    response = client.post("/v1/evaluations?patient=p1", headers=_headers(mint))
    assert response.status_code == 400
    assert "FHIR server" in response.get_json()["issue"][0]["diagnostics"]


def test_a_step_that_fails_for_good_ends_the_evaluation_saying_whether_to_retry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, austin: bytes
) -> None:
    from services.evaluations import tasks

    monkeypatch.setenv("ONCOTWIN_DATA_DIR", str(tmp_path / "var"))
    tasks._steps.cache_clear()
    try:
        store = tasks._steps().store
        for exc, code in ((UpstreamError("down", 503), "transient"), (KeyError("bug"), "exception")):
            evaluation_id = store.create(austin, "dr", None, False)
            tasks.history.on_failure(exc, "task-id", [evaluation_id], {}, None)
            failed = store.get(evaluation_id)
            assert failed is not None and failed.status == FAILED and failed.error is not None
            assert failed.error["issue"][0]["code"] == code
    finally:
        tasks._steps.cache_clear()
