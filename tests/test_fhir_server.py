"""FhirServerClient against a real local HTTP server that serves the Synthea bulk export.

No mocks of ``requests``: a small Flask app behaves like a FHIR server (searchset Bundles paged
with absolute ``_getpages`` links, bearer-token check, 404/400 for unknown patients and types) so
paging, retries, timeouts and the token-leak guard are exercised over real sockets.
"""

from __future__ import annotations

import copy
import datetime
import email.utils
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask, Response, request
from werkzeug.serving import make_server

from shared.config import load_settings
from shared.errors import InvalidInput, NotFound, UpstreamError
from shared.fhir.server import PATIENT_SEARCHES, FhirServerClient

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fhir" / "synthea-bulk-10"

pytestmark = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"Synthea bulk export not found at {DATA_DIR} (shared data set)"
)

PATIENT = "129c6ac7-8d06-89de-ad63-0204a93e76c3"
TOKEN = "test-token-123"


@dataclass
class Bulk:
    """The bulk export indexed the way a server would search it."""

    patients: dict[str, dict[str, Any]]
    by_type: dict[str, dict[str, list[dict[str, Any]]]]  # type -> patient id -> resources


@dataclass
class Seen:
    path: str
    args: dict[str, str]
    authorization: str | None
    accept: str | None


@dataclass
class FakeFhir:
    """Behaviour knobs of the test server and what it saw."""

    bulk: Bulk
    base_url: str = ""
    page_size: int = 50
    seen: list[Seen] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # served first, in order
    next_origin: str | None = None  # send next links to this origin instead of our own
    relative_next: bool = False
    invalid_body_for: dict[str, bytes] = field(default_factory=dict)  # type -> body of its search
    medication_refs: bool = False  # rewrite MedicationRequests to use medicationReference
    included_medications: set[str] = field(default_factory=set)  # served as search.mode include
    missing_medications: set[str] = field(default_factory=set)  # 404 on read
    medications: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocking: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    searches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


def _load_bulk() -> Bulk:
    patients: dict[str, dict[str, Any]] = {}
    by_type: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(DATA_DIR.glob("*.ndjson")):
        resource_type = path.name.split(".")[0]
        index = by_type.setdefault(resource_type, {})
        with path.open("rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                resource = orjson.loads(line)
                if resource_type == "Patient":
                    patients[resource["id"]] = resource
                    continue
                ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
                if ref.startswith("Patient/"):
                    index.setdefault(ref.removeprefix("Patient/"), []).append(resource)
    by_type.pop("Patient", None)
    return Bulk(patients, by_type)


def _fhir_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, content_type="application/fhir+json")


def _outcome(status: int, code: str, headers: dict[str, str] | None = None) -> Response:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]}
    return _fhir_json(body, status, headers)


def _make_app(fake: FakeFhir) -> Flask:
    app = Flask(__name__)
    bulk = fake.bulk

    @app.before_request
    def guard() -> Response | None:
        with fake.lock:
            fake.seen.append(
                Seen(
                    request.path,
                    request.args.to_dict(),
                    request.headers.get("Authorization"),
                    request.headers.get("Accept"),
                )
            )
            failure = fake.failures.pop(0) if fake.failures else None
        if fake.blocking:
            fake.release.wait(timeout=30)
            return _outcome(504, "timeout")
        if failure is not None:
            return _outcome(failure[0], "transient", failure[1])
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _outcome(401, "login", {"WWW-Authenticate": "Bearer"})
        return None

    def with_reference(resource: dict[str, Any]) -> dict[str, Any]:
        resource = copy.deepcopy(resource)
        concept = resource.pop("medicationCodeableConcept")
        medication_id = f"rx-{concept['coding'][0]['code']}"
        fake.medications[medication_id] = {"resourceType": "Medication", "id": medication_id, "code": concept}
        resource["medicationReference"] = {"reference": f"Medication/{medication_id}"}
        return resource

    def page(key: str, offset: int) -> Response:
        matches = fake.searches.get(key)
        if matches is None:
            return _outcome(410, "not-found")
        chunk = matches[offset : offset + fake.page_size]
        entries: list[dict[str, Any]] = [{"resource": r, "search": {"mode": "match"}} for r in chunk]
        included = {
            r["medicationReference"]["reference"].split("/")[1] for r in chunk if "medicationReference" in r
        } & fake.included_medications
        entries += [{"resource": fake.medications[i], "search": {"mode": "include"}} for i in sorted(included)]
        if offset == 0:  # what HAPI does with search warnings
            warning = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "information", "code": "informational"}],
            }
            entries.append({"resource": warning, "search": {"mode": "outcome"}})
        links = []
        if offset + fake.page_size < len(matches):
            query = f"?_getpages={key}&_getpagesoffset={offset + fake.page_size}&_count={fake.page_size}"
            if fake.relative_next:
                links.append({"relation": "next", "url": query})
            else:
                origin = fake.next_origin or request.host_url.rstrip("/")
                links.append({"relation": "next", "url": f"{origin}/fhir{query}"})
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "link": links,
            "entry": entries,
        }
        return _fhir_json(bundle)

    @app.get("/fhir/", strict_slashes=False)
    def getpages() -> Response:
        return page(request.args.get("_getpages", ""), int(request.args.get("_getpagesoffset", "0")))

    @app.get("/fhir/Patient/<patient_id>")
    def read_patient(patient_id: str) -> Response:
        patient = bulk.patients.get(patient_id)
        return _fhir_json(patient) if patient else _outcome(404, "not-found")

    @app.get("/fhir/Medication/<medication_id>")
    def read_medication(medication_id: str) -> Response:
        medication = fake.medications.get(medication_id)
        if medication is None or medication_id in fake.missing_medications:
            return _outcome(404, "not-found")
        return _fhir_json(medication)

    @app.get("/fhir/<resource_type>")
    def search(resource_type: str) -> Response:
        if resource_type in fake.invalid_body_for:
            return Response(fake.invalid_body_for[resource_type], content_type="text/html")
        args = {k: v for k, v in request.args.items() if k != "_count"}
        if resource_type == "Patient":
            if set(args) - {"gender"}:
                return _outcome(400, "not-supported")
            matches = [p for p in bulk.patients.values() if p.get("gender") == args.get("gender", p.get("gender"))]
        else:
            if resource_type not in bulk.by_type or set(args) != {"patient"}:
                return _outcome(400, "not-supported")
            matches = bulk.by_type[resource_type].get(args["patient"], [])
            if resource_type == "MedicationRequest" and fake.medication_refs:
                matches = [with_reference(r) for r in matches]
        key = uuid.uuid4().hex
        fake.searches[key] = matches
        return page(key, 0)

    return app


@pytest.fixture(scope="module")
def bulk() -> Bulk:
    return _load_bulk()


@contextmanager
def serving(fake: FakeFhir) -> Iterator[FakeFhir]:
    """Runs the fake server on a free local port (sets ``fake.base_url``) while the block runs."""
    server = make_server("127.0.0.1", 0, _make_app(fake), threaded=True)
    # A short poll interval keeps shutdown() (which waits for the next poll) from adding 0.5 s a test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.port}/fhir"
    try:
        yield fake
    finally:
        fake.release.set()  # unblock handlers of the timeout test before shutting down
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fhir(bulk: Bulk) -> Iterator[FakeFhir]:
    with serving(FakeFhir(bulk)) as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(fhir: FakeFhir, sleeps: list[float]) -> Iterator[FhirServerClient]:
    with FhirServerClient(fhir.base_url, token=TOKEN, sleep=sleeps.append) as c:
        yield c


def _of_type(resources: list[dict[str, Any]], resource_type: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == resource_type]


# -- paging and collection -----------------------------------------------------------------------


@pytest.mark.parametrize("relative_next", [False, True], ids=["absolute-next", "relative-next"])
def test_pulls_every_resource_of_the_patient_exactly_once(
    fhir: FakeFhir, client: FhirServerClient, bulk: Bulk, sleeps: list[float], relative_next: bool
) -> None:
    fhir.relative_next = relative_next
    resources = client.patient_resources(PATIENT)

    assert resources[0]["resourceType"] == "Patient" and resources[0]["id"] == PATIENT
    requests_ = _of_type(resources, "MedicationRequest")
    assert len(requests_) == 447
    assert sorted(r["id"] for r in requests_) == sorted(r["id"] for r in bulk.by_type["MedicationRequest"][PATIENT])
    documents = _of_type(resources, "DocumentReference")
    assert len(documents) == 90
    assert {r["id"] for r in documents} == {r["id"] for r in bulk.by_type["DocumentReference"][PATIENT]}
    for resource_type in ("Condition", "Encounter", "Procedure"):
        assert len(_of_type(resources, resource_type)) == len(bulk.by_type[resource_type][PATIENT])
    assert not _of_type(resources, "OperationOutcome")  # search.mode outcome entries are dropped
    # 447 MedicationRequests at 50 a page: the first page plus 8 next pages.
    assert sum(1 for s in fhir.seen if "_getpages" in s.args) >= 8
    assert sleeps == []


def test_sends_bearer_token_and_fhir_accept_on_every_request(fhir: FakeFhir, client: FhirServerClient) -> None:
    client.patient_resources(PATIENT)
    assert len(fhir.seen) > 20
    assert {s.authorization for s in fhir.seen} == {f"Bearer {TOKEN}"}
    assert {s.accept for s in fhir.seen} == {"application/fhir+json"}
    first = fhir.requests_to("/fhir/MedicationRequest")[0]
    assert first.args == {"patient": PATIENT, "_count": "200"}


def test_unsupported_types_are_skipped_and_listed(fhir: FakeFhir, client: FhirServerClient, bulk: Bulk) -> None:
    resources = client.patient_resources(PATIENT)
    unsupported = [t for t in PATIENT_SEARCHES if t not in bulk.by_type]
    assert "Observation" in unsupported and "DiagnosticReport" in unsupported
    assert client.skipped_types == unsupported
    assert not _of_type(resources, "Observation")
    assert len(fhir.requests_to("/fhir/Observation")) == 1  # a 400 is not retried


def test_unknown_patient_is_not_found(fhir: FakeFhir, client: FhirServerClient) -> None:
    with pytest.raises(NotFound) as err:
        client.patient_resources("no-such-patient")
    assert err.value.status == 404
    assert "no-such-patient" not in err.value.message
    assert [s.path for s in fhir.seen] == ["/fhir/Patient/no-such-patient"]  # no searches after


def test_invalid_patient_id_is_rejected_before_any_request(fhir: FakeFhir, client: FhirServerClient) -> None:
    with pytest.raises(InvalidInput):
        client.patient_resources("../Patient?_id=x")
    assert fhir.seen == []


def test_wrong_token_is_an_upstream_credentials_error(fhir: FakeFhir, sleeps: list[float]) -> None:
    with FhirServerClient(fhir.base_url, token="wrong-token", sleep=sleeps.append) as client:
        with pytest.raises(UpstreamError) as err:
            client.patient_resources(PATIENT)
    assert err.value.status == 502
    assert err.value.message == "FHIR server refused our credentials"
    assert "wrong-token" not in str(err.value)
    assert len(fhir.seen) == 1 and sleeps == []  # credentials errors are not retried


@pytest.mark.parametrize(
    "origin",
    ["http://localhost:{port}", "https://127.0.0.1:{port}", "http://127.0.0.1:1", "http://evil.example"],
)
def test_next_link_to_another_origin_is_refused(fhir: FakeFhir, client: FhirServerClient, origin: str) -> None:
    port = fhir.base_url.split(":")[2].split("/")[0]
    fhir.next_origin = origin.format(port=port)
    with pytest.raises(UpstreamError) as err:
        client.patient_resources(PATIENT)
    assert "another server" in err.value.message
    assert not any("_getpages" in s.args for s in fhir.seen)  # the token never followed the link


def test_page_limit_stops_a_runaway_search(fhir: FakeFhir, sleeps: list[float]) -> None:
    with FhirServerClient(fhir.base_url, token=TOKEN, max_pages=3, sleep=sleeps.append) as client:
        with pytest.raises(UpstreamError) as err:
            client.patient_resources(PATIENT)
    assert "page limit" in err.value.message
    assert sum(1 for s in fhir.seen if "_getpages" in s.args) == 2


@pytest.mark.parametrize(
    "body", [b"<html>Service Unavailable</html>", b'{"resourceType": "Patient", "id": "x"}', b"[]"]
)
def test_non_bundle_search_response_is_invalid(fhir: FakeFhir, client: FhirServerClient, body: bytes) -> None:
    fhir.invalid_body_for["Condition"] = body
    with pytest.raises(UpstreamError) as err:
        client.patient_resources(PATIENT)
    assert err.value.message == "FHIR server returned an invalid search response"


# -- retries and timeouts ------------------------------------------------------------------------


def test_transient_503_is_retried_with_growing_backoff(
    fhir: FakeFhir, client: FhirServerClient, sleeps: list[float]
) -> None:
    fhir.failures = [(503, {}), (503, {})]
    resources = client.patient_resources(PATIENT)
    assert len(_of_type(resources, "MedicationRequest")) == 447
    assert len(fhir.requests_to(f"/fhir/Patient/{PATIENT}")) == 3
    assert len(sleeps) == 2
    assert 0 < sleeps[0] < sleeps[1]


def test_retry_after_is_honoured(fhir: FakeFhir, client: FhirServerClient, sleeps: list[float]) -> None:
    fhir.failures = [(429, {"Retry-After": "7"})]
    client.patient_resources(PATIENT)
    assert sleeps == [7.0]


def test_retry_after_as_an_http_date_is_honoured(fhir: FakeFhir, client: FhirServerClient, sleeps: list[float]) -> None:
    when = email.utils.format_datetime(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30), usegmt=True
    )
    fhir.failures = [(503, {"Retry-After": when})]
    client.patient_resources(PATIENT)
    assert len(sleeps) == 1 and 25 < sleeps[0] <= 30


def test_retry_after_longer_than_we_wait_gives_up(
    fhir: FakeFhir, client: FhirServerClient, sleeps: list[float]
) -> None:
    fhir.failures = [(503, {"Retry-After": "3600"})]
    with pytest.raises(UpstreamError) as err:
        client.patient_resources(PATIENT)
    assert err.value.status == 503
    assert sleeps == [] and len(fhir.seen) == 1


def test_persistent_503_gives_up_after_three_retries(
    fhir: FakeFhir, client: FhirServerClient, sleeps: list[float]
) -> None:
    fhir.failures = [(503, {})] * 10
    with pytest.raises(UpstreamError) as err:
        client.patient_resources(PATIENT)
    assert err.value.status == 503
    assert len(fhir.seen) == 4
    assert len(sleeps) == 3 and sleeps == sorted(sleeps) and len(set(sleeps)) == 3


def test_server_that_never_answers_times_out(fhir: FakeFhir, sleeps: list[float]) -> None:
    fhir.blocking = True
    with FhirServerClient(fhir.base_url, token=TOKEN, timeout_s=0.2, sleep=sleeps.append) as client:
        with pytest.raises(UpstreamError) as err:
            client.patient_resources(PATIENT)
    assert err.value.status == 504
    assert err.value.message == "FHIR server did not answer in time"
    assert err.value.__cause__ is None  # the requests error (with the URL and patient id) is not chained
    assert len(sleeps) == 3  # retried before giving up


def test_connection_refused_is_a_504_after_retries(sleeps: list[float]) -> None:
    with FhirServerClient("http://127.0.0.1:1/fhir", token=TOKEN, timeout_s=0.5, sleep=sleeps.append) as client:
        with pytest.raises(UpstreamError) as err:
            client.patient_resources(PATIENT)
    assert err.value.status == 504
    assert len(sleeps) == 3


# -- referenced Medications ----------------------------------------------------------------------


def test_referenced_medications_are_fetched_once_unless_included(
    fhir: FakeFhir, client: FhirServerClient, bulk: Bulk
) -> None:
    fhir.medication_refs = True
    codes = sorted(
        {r["medicationCodeableConcept"]["coding"][0]["code"] for r in bulk.by_type["MedicationRequest"][PATIENT]}
    )
    assert len(codes) >= 3
    ids = [f"rx-{c}" for c in codes]
    fhir.included_medications = {ids[0]}
    fhir.missing_medications = {ids[1]}

    resources = client.patient_resources(PATIENT)

    medications = _of_type(resources, "Medication")
    assert sorted(m["id"] for m in medications) == sorted(set(ids) - {ids[1]})  # each exactly once
    assert fhir.requests_to(f"/fhir/Medication/{ids[0]}") == []  # came as search.mode include
    assert len(fhir.requests_to(f"/fhir/Medication/{ids[1]}")) == 1  # dangling: tolerated
    for medication_id in ids[2:]:
        assert len(fhir.requests_to(f"/fhir/Medication/{medication_id}")) == 1
    assert all("medicationReference" in r for r in _of_type(resources, "MedicationRequest"))


# -- patient search and configuration ------------------------------------------------------------


def test_search_patients_follows_pages(fhir: FakeFhir, client: FhirServerClient, bulk: Bulk) -> None:
    fhir.page_size = 3
    found = client.search_patients({"gender": "female"})
    expected = {p["id"] for p in bulk.patients.values() if p.get("gender") == "female"}
    assert len(expected) > 3
    assert [p["id"] for p in found if p["id"] in expected] == [p["id"] for p in found]
    assert {p["id"] for p in found} == expected and len(found) == len(expected)


def test_search_patients_with_rejected_parameters_is_invalid_input(client: FhirServerClient) -> None:
    with pytest.raises(InvalidInput):
        client.search_patients({"shoe-size": "42"})


def test_from_settings(fhir: FakeFhir) -> None:
    with pytest.raises(UpstreamError) as err:
        FhirServerClient.from_settings(load_settings({}))
    assert err.value.status == 503
    settings = load_settings(
        {
            "FHIR_BASE_URL": fhir.base_url + "/",
            "FHIR_BEARER_TOKEN": TOKEN,
            "FHIR_TIMEOUT_SECONDS": "5",
            "FHIR_MAX_PAGES": "2",
        }
    )
    with FhirServerClient.from_settings(settings) as client:
        assert (client.base_url, client.timeout_s, client.max_pages) == (fhir.base_url, 5.0, 2)
        assert client.search_patients({"gender": "male"})  # token from settings is accepted
        with pytest.raises(UpstreamError, match="page limit"):
            client.patient_resources(PATIENT)
