"""The Clinical-History HTTP API in-process: the happy path and every documented bad input."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.serving import make_server

from tests.conftest import BULK, BULK_PATIENT, LARGEST_BUNDLE, requires_data, synthea

FHIR = {"Content-Type": "application/fhir+json"}


def assert_outcome(response, status, text=None):
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"]
    joined = " ".join(i.get("diagnostics", "") for i in body["issue"])
    assert "Traceback" not in joined and 'File "' not in joined
    if text:
        assert text in joined, joined
    return body


def test_health_needs_no_token_but_everything_else_does(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    assert_outcome(client.get("/ready"), 401)
    assert_outcome(client.get("/history/v1/openapi.json"), 401)
    assert_outcome(client.post("/history/v1/timeline", data="{}", headers=FHIR), 401, "bearer token")


def test_openapi_document_describes_the_contract(client, auth):
    doc = client.get("/history/v1/openapi.json", headers=auth).get_json()
    assert doc["openapi"].startswith("3.")
    assert {"/timeline", "/patients/{id}/timeline"} <= set(doc["paths"])
    timeline = doc["components"]["schemas"]["Timeline"]["properties"]
    assert {"patient", "cancers", "linesOfTherapy", "events", "issues"} <= set(timeline)


@requires_data
def test_timeline_of_the_largest_bundle(client, auth):
    response = client.post("/history/v1/timeline", data=LARGEST_BUNDLE.read_bytes(), headers=auth | FHIR)
    assert response.status_code == 200
    body = response.get_json()
    assert body["patient"]["gender"] == "male"
    assert [(c["cancerType"], c["role"]) for c in body["cancers"]] == [
        ("prostate", "primary"),
        ("prostate", "secondary"),
    ]
    assert body["cancers"][0]["code"] == {
        "system": "http://snomed.info/sct",
        "code": "126906006",
        "display": "Neoplasm of prostate",
    }
    kinds = {e["kind"] for e in body["events"]}
    assert {"diagnosis", "biomarker", "encounter"} <= kinds
    assert response.headers["Cache-Control"] == "no-store"


@requires_data
def test_lines_of_therapy_in_the_contract(client, auth):
    body = client.post(
        "/history/v1/timeline",
        data=synthea("Austin_Franecki").read_bytes(),
        headers=auth | {"Content-Type": "application/json"},
    ).get_json()
    (line,) = body["linesOfTherapy"]
    assert line["drugs"] == ["cisplatin", "paclitaxel"] and line["line"] == 1
    assert line["start"].startswith("1985-07-26") and line["end"].startswith("1989-07-20")
    assert body["cancers"][0]["stage"]["stage"] == "I"


def test_not_json(client, auth):
    assert_outcome(client.post("/history/v1/timeline", data=b"{not json", headers=auth | FHIR), 400, "not valid JSON")


def test_json_but_not_fhir(client, auth):
    assert_outcome(client.post("/history/v1/timeline", data=b'{"hello": 1}', headers=auth | FHIR), 400, "resourceType")


def test_wrong_resource_type(client, auth):
    body = json.dumps({"resourceType": "Patient", "id": "x"})
    assert_outcome(client.post("/history/v1/timeline", data=body, headers=auth | FHIR), 400, "expected a FHIR Bundle")


def test_unknown_bundle_type(client, auth):
    body = json.dumps({"resourceType": "Bundle", "type": "pile", "entry": []})
    assert_outcome(client.post("/history/v1/timeline", data=body, headers=auth | FHIR), 400, "Bundle.type")


BROKEN = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"}},
        {
            "resource": {
                "resourceType": "Condition",
                "id": "c1",
                "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254637007"}]},
                "onsetDateTime": "2020-02-30",
            }
        },
    ],
}


def test_schema_break_is_an_issue_when_lenient_and_400_when_strict(client, auth):
    lenient = client.post("/history/v1/timeline", data=json.dumps(BROKEN), headers=auth | FHIR)
    assert lenient.status_code == 200
    (issue,) = lenient.get_json()["issues"]
    assert issue["resourceType"] == "Condition" and issue["id"] == "c1" and issue["path"] == "Bundle.entry[1].resource"
    body = assert_outcome(
        client.post("/history/v1/timeline?strict=true", data=json.dumps(BROKEN), headers=auth | FHIR),
        400,
        "onsetDateTime",
    )
    assert body["issue"][0]["expression"] == ["Bundle.entry[1].resource"]


def test_dangling_references(client, auth):
    dangling = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": "c1",
                    "subject": {"reference": "Patient/ghost"},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254637007"}]},
                }
            }
        ],
    }
    assert_outcome(
        client.post("/history/v1/timeline", data=json.dumps(dangling), headers=auth | FHIR), 422, "no usable Patient"
    )
    with_patient = json.loads(json.dumps(dangling))
    with_patient["entry"].insert(0, {"resource": {"resourceType": "Patient", "id": "p1"}})
    assert_outcome(
        client.post("/history/v1/timeline?strict=1", data=json.dumps(with_patient), headers=auth | FHIR),
        400,
        "subject does not resolve",
    )


def test_oversized_body(client, auth, settings):
    big = b" " * (settings.max_body_bytes + 1)
    assert_outcome(client.post("/history/v1/timeline", data=big, headers=auth | FHIR), 413, "exceeds the limit")


def test_wrong_content_type(client, auth):
    assert_outcome(
        client.post("/history/v1/timeline", data="{}", headers=auth | {"Content-Type": "text/plain"}),
        415,
        "Content-Type",
    )


def test_expired_token(client, mint):
    token = mint(["history.read"], ttl=-120)
    assert_outcome(
        client.post("/history/v1/timeline", data="{}", headers={"Authorization": f"Bearer {token}"} | FHIR),
        401,
        "expired",
    )


def test_forged_token(client, mint, settings):
    genuine = jwt.get_unverified_header(mint(["history.read"]))
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(
        {
            "sub": "mallory",
            "scope": "history.read",
            "iss": settings.token_issuer,
            "aud": settings.token_audience,
            "exp": 4102444800,
            "iat": 1700000000,
        },
        forger,
        algorithm="ES256",
        headers={"kid": genuine["kid"]},
    )
    response = client.post("/history/v1/timeline", data="{}", headers={"Authorization": f"Bearer {forged}"} | FHIR)
    assert_outcome(response, 401, "signature")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_missing_scope(client, mint):
    token = mint(["necessity.read"])
    assert_outcome(
        client.post("/history/v1/timeline", data="{}", headers={"Authorization": f"Bearer {token}"} | FHIR),
        403,
        "history.read",
    )


def test_unknown_route_is_an_outcome(client, auth):
    assert_outcome(client.get("/history/v1/nothing", headers=auth), 404)


def test_access_log_names_reader_and_patient_but_no_clinical_content(client, auth, caplog):
    body = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "id": "p-77", "name": [{"family": "Secretname"}]}}],
        }
    )
    with caplog.at_level(logging.INFO):
        assert client.post("/history/v1/timeline", data=body, headers=auth | FHIR).status_code == 200
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "oncotwin.access"]
    assert access and access[-1]["subject"] == "dr-test" and access[-1]["patient"] == "p-77"
    assert "Secretname" not in caplog.text


def test_unexpected_errors_are_generic_500s_without_details(app, auth, caplog):
    @app.get("/history/v1/boom")
    def boom():
        raise RuntimeError("patient Jane Doe has secret data")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/history/v1/boom", headers=auth)
    body = assert_outcome(response, 500, "internal error")
    assert "Jane" not in json.dumps(body) and "Jane" not in caplog.text


@pytest.fixture
def fhir_server() -> Iterator[str]:
    """A real FHIR server stand-in on loopback, serving the bulk export's patient by search."""
    from flask import Flask, jsonify, request

    resources: dict[str, list[dict]] = {}
    for path in BULK.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            res = json.loads(line)
            resources.setdefault(res["resourceType"], []).append(res)
    server_app = Flask("fake-fhir")

    @server_app.get("/fhir/Patient/<pid>")
    def read_patient(pid):
        found = [p for p in resources["Patient"] if p["id"] == pid]
        return (jsonify(found[0]), 200) if found else (jsonify({"resourceType": "OperationOutcome"}), 404)

    @server_app.get("/fhir/<rtype>")
    def search(rtype):
        if rtype not in resources:
            return jsonify({"resourceType": "OperationOutcome"}), 400
        pid = request.args["patient"]
        hits = [r for r in resources[rtype] if r.get("subject", {}).get("reference") == f"Patient/{pid}"]
        return jsonify(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in hits],
            }
        )

    server = make_server("127.0.0.1", 0, server_app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/fhir"
    server.shutdown()


@requires_data
def test_timeline_pulled_from_a_fhir_server(fhir_server, settings, mint, monkeypatch):
    from dataclasses import replace

    from oncotwin.app import create_app

    app = create_app(replace(settings, fhir_base_url=fhir_server))
    headers = {"Authorization": f"Bearer {mint(['history.read'])}"}
    body = (
        app.test_client().get(f"/history/v1/patients/{BULK_PATIENT}/timeline?notes=false", headers=headers).get_json()
    )
    assert [c["cancerType"] for c in body["cancers"]] == ["nsclc", "breast"]
    assert body["linesOfTherapy"][0]["drugs"] == ["cisplatin", "paclitaxel"]
    missing = app.test_client().get("/history/v1/patients/nobody-here/timeline", headers=headers)
    assert_outcome(missing, 404)


def test_no_fhir_server_configured_is_503(client, auth):
    assert_outcome(client.get("/history/v1/patients/abc/timeline", headers=auth), 503, "FHIR_BASE_URL")


@requires_data
def test_notes_summary_only_when_asked_and_never_failing(client, auth, monkeypatch):
    from services.clinical_history import app as history_app
    from services.clinical_history.summary import NotesSummary

    url = "/history/v1/timeline"
    body = synthea("Austin_Franecki").read_bytes()
    headers = auth | {"Content-Type": "application/json"}
    assert client.post(url, data=body, headers=headers).get_json()["notesSummary"] is None
    # asked for, but no LLM configured (or it is down): the timeline still answers, without a summary
    monkeypatch.delenv("LLM_BASE_URL", raising=False)
    response = client.post(url + "?summary=true", data=body, headers=headers)
    assert response.status_code == 200 and response.get_json()["notesSummary"] is None
    calls = []

    def fake(record, llm):
        calls.append(record.id)
        return NotesSummary("Stage I NSCLC on cisplatin and paclitaxel.", ("DocumentReference/n1",), "tiny")

    monkeypatch.setattr(history_app, "summarize_notes", fake)
    summary = client.post(url + "?summary=true", data=body, headers=headers).get_json()["notesSummary"]
    assert summary["text"].startswith("Stage I NSCLC") and summary["sources"] == ["DocumentReference/n1"]
    assert "verify" in summary["disclaimer"] and len(calls) == 1
