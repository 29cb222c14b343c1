"""The Medical-Necessity HTTP API in-process: constructed and real orders, FHIR output, bad input."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from services.guidance import DETERMINATION_SYSTEM
from tests.conftest import requires_data, synthea
from tests.test_history_api import assert_outcome

FHIR = {"Content-Type": "application/fhir+json"}
URL = "/necessity/v1/evaluate"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NSCLC = "https://oncotwin.example.org/fhir/PlanDefinition/nsclc|2026.11"
SHERMAN_DOCETAXEL = "MedicationRequest/307ed80c-7a07-4d9f-b62a-04449fc207ee"
SHERMAN_LEUPROLIDE = "MedicationRequest/45ca430e-5772-4640-a5ce-59e36da7101b"


def egfr_bundle(*, egfr: bool = True, drug: tuple[str, str] = ("1721560", "osimertinib")) -> dict[str, Any]:
    """Stage IV NSCLC, EGFR positive (or untested), with a draft order (osimertinib by default)."""
    subject = {"reference": "Patient/egfr-1"}
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "egfr-1", "gender": "female", "birthDate": "1958-04-02"},
        {
            "resourceType": "Condition",
            "id": "nsclc-1",
            "subject": subject,
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "code": {
                "coding": [
                    {"system": "http://snomed.info/sct", "code": "254637007", "display": "Non-small cell lung cancer"}
                ]
            },
            "onsetDateTime": "2024-01-10",
        },
        {
            "resourceType": "Observation",
            "id": "stage-1",
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": "http://loinc.org", "code": "21908-9"}]},
            "focus": [{"reference": "Condition/nsclc-1"}],
            "effectiveDateTime": "2024-01-20",
            "valueCodeableConcept": {"text": "IV"},
        },
        {
            "resourceType": "Observation",
            "id": "egfr-obs",
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": "http://loinc.org", "code": "39004-7", "display": "EGFR gene mutations"}]},
            "effectiveDateTime": "2024-02-01",
            "valueCodeableConcept": {
                "coding": [{"system": "http://snomed.info/sct", "code": "10828004", "display": "Positive"}]
            },
        },
        {
            "resourceType": "MedicationRequest",
            "id": "order-1",
            "status": "draft",
            "intent": "order",
            "subject": subject,
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": drug[0], "display": drug[1]}]},
            "reasonReference": [{"reference": "Condition/nsclc-1"}],
            "authoredOn": "2024-03-01",
        },
    ]
    if not egfr:
        resources = [r for r in resources if r["id"] != "egfr-obs"]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


@pytest.fixture
def nec(mint):
    return {"Authorization": f"Bearer {mint(['necessity.read'])}"}


def post(client, headers, body, query=""):
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(f"{URL}{query}", data=data, headers=headers | FHIR)


def validated(response):
    """The FHIR Bundle of a response, after validating it (and each resource) with the R4B models."""
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    Bundle.model_validate(body)
    for entry in body.get("entry", []):
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
    assert body["type"] == "collection"
    return body


def resources(bundle, kind):
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == kind]


def resolve(bundle, reference):
    (found,) = [e["resource"] for e in bundle["entry"] if e["fullUrl"] == reference["reference"]]
    return found


def test_egfr_positive_osimertinib_meets(client, nec):
    body = post(client, nec, egfr_bundle()).get_json()
    assert body["patient"] == "egfr-1"
    (d,) = body["determinations"]
    assert d["order"]["reference"] == "MedicationRequest/order-1"
    assert d["order"]["code"] == {"system": RXNORM, "code": "1721560", "display": "osimertinib"}
    assert (d["determination"], d["pathway"], d["option"]) == ("meets", "nsclc@2026.11", "nsclc.rx.osimertinib")
    assert d["deciding"] == [] and d["needsReview"] is False
    assert "meets the Non-small cell lung cancer pathway" in d["rationale"]
    assert any("FLAURA" in c["title"] for c in d["citations"])
    assert d["criteria"]["status"] == "satisfied"


def test_without_egfr_result_documentation_is_insufficient(client, nec):
    (d,) = post(client, nec, egfr_bundle(egfr=False)).get_json()["determinations"]
    assert d["determination"] == "insufficient-documentation"
    assert "EGFR positive" in d["deciding"]
    assert "not documented: EGFR positive" in d["rationale"]


def test_an_unidentified_drug_and_an_underivable_stage_are_issues_not_errors(client, nec):
    bundle = egfr_bundle()
    stage = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "stage-1")
    stage["code"] = {"coding": [{"system": "http://loinc.org", "code": "21905-5"}]}  # a cT category...
    stage["valueCodeableConcept"] = {"text": "cTX"}  # ...that cannot be assessed: no stage group derives
    extra = dict(next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "order-1"))
    extra |= {"id": "order-2", "medicationCodeableConcept": {"text": "Investigational agent XB-0042"}}
    bundle["entry"].append({"resource": extra})
    response = post(client, nec, bundle, "?order=MedicationRequest/order-2")
    assert response.status_code == 200
    body = response.get_json()
    issues = {(i["id"], i["message"].split(";")[0]) for i in body["issues"]}
    assert ("order-2", "drug not identified from its codes or text") in issues
    assert any(i["id"] == "stage-1" and "could not be derived" in i["message"] for i in body["issues"])
    (d,) = body["determinations"]
    # a drug no one can identify is never approved: the record does not say what was ordered
    assert d["determination"] == "insufficient-documentation" and d["needsReview"] is True
    assert d["deciding"] == ["the ordered drug is identified (RxNorm code or a known drug name)"]


def test_meets_as_fhir(client, nec):
    bundle = validated(post(client, nec, egfr_bundle(), "?format=fhir"))
    (response,) = resources(bundle, "GuidanceResponse")
    assert bundle["entry"][0]["resource"]["id"] == response["id"]
    assert response["status"] == "success"
    assert response["moduleCanonical"] == NSCLC
    assert response["subject"] == {"reference": "Patient/egfr-1"}
    # R4 allows only Condition | Observation | DiagnosticReport | DocumentReference here; the order is the reasonCode
    assert [r["reference"] for r in response["reasonReference"]] == ["Condition/nsclc-1"]
    assert response["reasonCode"][0]["coding"][0]["code"] == "1721560"
    notes = " ".join(n["text"] for n in response["note"])
    assert "meets (confidence" in notes and "Sources: [1]" in notes and "FLAURA" in notes
    assert "dataRequirement" not in response and "evaluationMessage" not in response
    parameters = {p["name"]: p for p in resolve(bundle, response["outputParameters"])["parameter"]}
    assert parameters["determination"]["valueCode"] == "meets"
    assert parameters["option"]["valueString"] == "nsclc.rx.osimertinib"
    group = resolve(bundle, response["result"])
    assert group["resourceType"] == "RequestGroup" and group["basedOn"] == [{"reference": "MedicationRequest/order-1"}]
    (action,) = group["action"]
    assert action["code"][0]["coding"][0] == {"system": DETERMINATION_SYSTEM, "code": "meets"}
    assert action["resource"] == {"reference": "MedicationRequest/order-1"}
    assert action["title"] == "Meets pathway criteria: osimertinib"
    assert {d["type"] for d in action["documentation"]} == {"citation"}
    assert "action" not in action  # R4 rqg-1: a resource or sub-actions, not both
    assert action["code"][1]["coding"][0]["code"] == "nsclc.rx.osimertinib"  # the pathway option
    assert "Pathway option: " in action["description"]


def test_insufficient_as_fhir_names_the_missing_data(client, nec):
    bundle = validated(post(client, nec, egfr_bundle(egfr=False), "?format=fhir"))
    (response,) = resources(bundle, "GuidanceResponse")
    assert response["status"] == "data-required"
    (requirement,) = response["dataRequirement"]
    assert requirement["type"] == "Observation"
    codes = {c["code"] for c in requirement["codeFilter"][0]["code"]}
    assert "39004-7" in codes  # the EGFR result we would read
    outcome = resolve(bundle, response["evaluationMessage"][0])
    assert {i["code"] for i in outcome["issue"]} == {"incomplete"}
    assert "Not documented: EGFR positive" in [i["diagnostics"] for i in outcome["issue"]]
    action, *documents = resolve(bundle, response["result"])["action"]
    assert action["code"][0]["coding"][0]["code"] == "insufficient-documentation"
    assert "EGFR positive" in [a["title"] for a in documents if a["prefix"] == "Document"]
    for document in documents:  # each proposes a Task (R4 rqg-1: a leaf action has a resource)
        task = resolve(bundle, document["resource"])
        assert task["resourceType"] == "Task" and (task["status"], task["intent"]) == ("draft", "proposal")


def test_drug_of_another_cancers_pathway(client, nec):
    body = post(client, nec, egfr_bundle(drug=("752899", "leuprolide"))).get_json()
    (d,) = body["determinations"]
    # the patient's NSCLC has a pathway that does not offer leuprolide: does-not-meet, saying where it is
    assert d["determination"] == "does-not-meet" and "Prostate cancer" in d["rationale"]
    assert d["deciding"] == ["on the Non-small cell lung cancer pathway"] and d["pathway"].startswith("nsclc@")
    bundle = validated(post(client, nec, egfr_bundle(drug=("752899", "leuprolide")), "?format=fhir"))
    (response,) = resources(bundle, "GuidanceResponse")
    assert response["status"] == "success" and response["moduleCanonical"].startswith(NSCLC.split("|")[0])


def test_no_pathway_applies_is_a_failure(client, nec):
    body = egfr_bundle()
    del body["entry"][1:4]
    bundle = validated(post(client, nec, body, "?format=fhir"))
    (response,) = resources(bundle, "GuidanceResponse")
    assert response["status"] == "failure"
    assert "No care pathway applies" in json.dumps(resolve(bundle, response["evaluationMessage"][0]))


@requires_data
def test_real_orders_and_order_selection(client, nec):
    data = synthea("Sherman_McGlynn").read_bytes()
    body = post(client, nec, data).get_json()
    assert [d["order"]["reference"] for d in body["determinations"]] == [SHERMAN_DOCETAXEL, SHERMAN_LEUPROLIDE]
    assert {d["pathway"] for d in body["determinations"]} == {"prostate@2026.11"}
    one = post(client, nec, data, f"?order={SHERMAN_DOCETAXEL}").get_json()
    (d,) = one["determinations"]
    assert d["order"]["reference"] == SHERMAN_DOCETAXEL
    assert d["determination"] == "insufficient-documentation" and d["deciding"] == ["metastatic disease"]
    bundle = validated(post(client, nec, data, "?format=fhir"))
    assert len(resources(bundle, "GuidanceResponse")) == 2 and len(resources(bundle, "RequestGroup")) == 2


@requires_data
def test_unknown_order_is_422(client, nec):
    assert_outcome(
        post(client, nec, synthea("Sherman_McGlynn").read_bytes(), "?order=MedicationRequest/not-there"),
        422,
        "not a draft or active order",
    )


@requires_data
def test_austin_has_no_open_oncology_order(client, nec):
    body = post(client, nec, synthea("Austin_Franecki").read_bytes()).get_json()
    assert body["determinations"] == []
    bundle = validated(post(client, nec, synthea("Austin_Franecki").read_bytes(), "?format=fhir"))
    assert "entry" not in bundle  # FHIR JSON has no empty arrays


@pytest.mark.parametrize("query", ["?order=Patient/egfr-1", "?order=order-1", "?format=html"])
def test_bad_query_parameters(client, nec, query):
    assert_outcome(post(client, nec, egfr_bundle(), query), 400, "query parameter")


def test_scopes_and_tokens(client, mint):
    wrong = {"Authorization": f"Bearer {mint(['navigation.read', 'necessity.audit'])}"}
    assert_outcome(post(client, wrong, egfr_bundle()), 403, "necessity.read")
    assert_outcome(post(client, {}, egfr_bundle()), 401, "bearer token")
    assert_outcome(client.get("/necessity/v1/openapi.json"), 401)


def test_malformed_bodies(client, nec):
    assert_outcome(post(client, nec, b"[1, 2"), 400, "not valid JSON")
    assert_outcome(post(client, nec, {"hello": 1}), 400, "resourceType")
    assert_outcome(
        client.post(URL, data=json.dumps(egfr_bundle()), headers=nec | {"Content-Type": "application/xml"}),
        415,
        "Content-Type",
    )


def test_oversized_body(client, nec, settings):
    assert_outcome(post(client, nec, b" " * (settings.max_body_bytes + 1)), 413, "exceeds the limit")


def test_patient_selection(client, nec):
    two = egfr_bundle()
    two["entry"].append({"resource": {"resourceType": "Patient", "id": "someone-else"}})
    assert_outcome(post(client, nec, two), 422, "several patients")
    assert post(client, nec, two, "?patient=egfr-1").get_json()["determinations"][0]["determination"] == "meets"
    assert post(client, nec, two, "?patient=someone-else").get_json()["determinations"] == []


def test_openapi_document(client, nec):
    doc = client.get("/necessity/v1/openapi.json", headers=nec).get_json()
    assert doc["openapi"].startswith("3.") and doc["servers"] == [{"url": "/necessity/v1"}]
    assert {"/evaluate", "/openapi.json"} <= set(doc["paths"])
    names = {p["name"] for p in doc["paths"]["/evaluate"]["post"]["parameters"]}
    assert names == {"patient", "order", "strict", "format"}
    determination = doc["components"]["schemas"]["DeterminationOut"]["properties"]
    assert {"order", "determination", "deciding", "criteria", "rationale", "citations"} <= set(determination)
    assert "422" in doc["paths"]["/evaluate"]["post"]["responses"]


def test_access_log(client, nec, caplog):
    with caplog.at_level(logging.INFO):
        post(client, nec, egfr_bundle())
        post(client, nec, egfr_bundle(), "?order=MedicationRequest/other")
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "oncotwin.access"]
    assert [(a["action"], a["patient"], a["outcome"]) for a in access[-2:]] == [
        ("necessity.evaluate", "egfr-1", "ok"),
        ("necessity.evaluate", "egfr-1", "order-not-in-input"),
    ]
    assert all(a["subject"] == "dr-test" for a in access[-2:])
    assert "osimertinib" not in "".join(r.getMessage() for r in caplog.records if r.name == "oncotwin.access")


def test_judge_is_built_once_per_app_from_its_settings(settings):
    from dataclasses import replace

    from services.medical_necessity.app import create_app
    from services.medical_necessity.judge import JUDGE_EXTENSION as JUDGE
    from services.medical_necessity.judge import LLMJury, NoJudge

    assert isinstance(create_app(replace(settings, llm_base_url=None)).extensions[JUDGE], NoJudge)
    app = create_app(replace(settings, llm_base_url="http://127.0.0.1:9"))
    judge = app.extensions[JUDGE]
    assert isinstance(judge, LLMJury) and judge.client.base_url == "http://127.0.0.1:9"
