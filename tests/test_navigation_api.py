"""The Care-Navigation HTTP API in-process: real patients, FHIR output validated by R4B models, bad input."""

from __future__ import annotations

import copy
import json
import logging

import pytest
from fhir.resources.R4B.bundle import Bundle

from services.guidance import CARE_GAP_SYSTEM, STEP_SYSTEM
from tests.conftest import requires_data, synthea
from tests.test_history_api import assert_outcome
from tests.test_necessity_api import egfr_bundle, resolve, resources, validated

FHIR = {"Content-Type": "application/fhir+json"}
URL = "/navigation/v1/evaluate"
CANONICAL = "https://oncotwin.example.org/fhir/PlanDefinition/{}|2026.11"


@pytest.fixture
def nav(mint):
    return {"Authorization": f"Bearer {mint(['navigation.read'])}"}


def post(client, headers, body, query=""):
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(f"{URL}{query}", data=data, headers=headers | FHIR)


@requires_data
def test_austin_nsclc_stage_one(client, nav):
    # Austin died on 1989-07-25: read in 2026, the record ends there and nothing falls due after it.
    body = post(client, nav, synthea("Austin_Franecki").read_bytes(), "?asOf=2026-01-01").get_json()
    assert body["asOf"] == "1989-07-25" and body["deceased"]["date"].startswith("1989-07-25")
    (pathway,) = body["pathways"]
    assert (pathway["id"], pathway["version"], pathway["applies"]) == ("nsclc", "2026.11", "satisfied")
    # Stage "I" without substage leaves the adjuvant decision open; chemotherapy on record takes the
    # walk to adjuvant therapy (inferred), past local treatment.
    assert [p["step"]["id"] for p in pathway["position"]] == ["nsclc.early.adjuvant"]
    assert pathway["position"][0]["status"] == "done" and pathway["position"][0]["inferred"] is True
    gaps = {(g["kind"], g["step"]["id"]) for g in pathway["gaps"]}
    assert ("missing-prerequisite", "nsclc.biomarkers") in gaps  # never tested for EGFR/ALK/PD-L1
    assert {kind for kind, _ in gaps} == {"missing-prerequisite"}  # nothing actionable after death
    assert pathway["nextSteps"] == []
    (line,) = pathway["offPathway"]
    assert line["regimen"] == "cisplatin + paclitaxel" and line["line"] == 1
    assert pathway["citations"] and all(c["url"].startswith("https://") for c in pathway["citations"])


@requires_data
def test_as_of_moves_the_clock(client, nav):
    # Sherman (alive until 2012): PSA surveillance falls due on 2003-07-07.
    before = post(client, nav, synthea("Sherman_McGlynn").read_bytes(), "?asOf=2003-07-01").get_json()
    after = post(client, nav, synthea("Sherman_McGlynn").read_bytes(), "?asOf=2004-01-01").get_json()
    for body, overdue in ((before, False), (after, True)):
        assert body["deceased"] is None
        prostate = next(p for p in body["pathways"] if p["id"] == "prostate")
        (surveillance,) = [s for s in prostate["nextSteps"] if s["step"]["id"] == "prostate.surveillance"]
        assert surveillance["due"] == "2003-07-07" and surveillance["overdue"] is overdue
        assert ("overdue" in {g["kind"] for g in prostate["gaps"]}) is overdue


@requires_data
def test_austin_as_fhir_guidance(client, nav):
    # As of the day before his death, Austin's record still asks for the stage's substage.
    bundle = validated(post(client, nav, synthea("Austin_Franecki").read_bytes(), "?asOf=1989-07-24&format=fhir"))
    (response,) = resources(bundle, "GuidanceResponse")
    assert bundle["entry"][0]["resource"]["id"] == response["id"]  # the response first, then what it references
    assert response["moduleCanonical"] == CANONICAL.format("nsclc")
    assert response["status"] == "data-required"  # the adjuvant decision needs the stage's substage
    (message,) = resolve(bundle, response["evaluationMessage"][0])["issue"]
    assert message["code"] == "incomplete" and "needs stage IB" in message["diagnostics"]
    assert response["subject"]["reference"].startswith("Patient/")
    assert response["occurrenceDateTime"].endswith("Z")
    assert response["requestIdentifier"]["value"]
    notes = " ".join(n["text"] for n in response["note"])
    assert "Position: Adjuvant systemic therapy [treatment] (done, inferred, since 1989-07-20)" in notes
    assert "Off-pathway: line 1 (cisplatin + paclitaxel)" in notes
    assert "Sources:" in notes and "demonstration" in notes
    group = resolve(bundle, response["result"])
    assert group["resourceType"] == "RequestGroup" and group["intent"] == "proposal" and group["status"] == "draft"
    assert group["instantiatesCanonical"] == [CANONICAL.format("nsclc")]
    steps, gaps = group["action"]
    assert (steps["title"], gaps["title"]) == ("Next steps", "Care gaps")
    (surveillance,) = steps["action"]
    assert surveillance["timingDateTime"] == "1990-01-20" and surveillance["priority"] == "routine"
    assert surveillance["code"][0]["coding"][0] == {
        "system": STEP_SYSTEM,
        "code": "nsclc.surveillance",
        "display": "Surveillance imaging after curative-intent treatment",
    }
    priorities = {a["code"][0]["coding"][0]["code"]: a["priority"] for a in gaps["action"]}
    assert {a["code"][0]["coding"][0]["system"] for a in gaps["action"]} == {CARE_GAP_SYSTEM}
    assert priorities == {"missing-prerequisite": "urgent", "missing-information": "routine"}


@requires_data
def test_a_deceased_patient_gets_no_urgent_request(client, nav):
    bundle = validated(post(client, nav, synthea("Austin_Franecki").read_bytes(), "?asOf=2026-01-01&format=fhir"))
    groups = resources(bundle, "RequestGroup")
    actions = [a for g in groups for section in g.get("action", []) for a in section.get("action", [])]
    assert all(a["code"][0]["coding"][0]["code"] != "nsclc.surveillance" for a in actions)  # no next step
    assert all(a.get("priority") != "urgent" or "missing-prerequisite" in json.dumps(a) for a in actions)


@requires_data
def test_sherman_has_two_pathways(client, nav):
    body = post(client, nav, synthea("Sherman_McGlynn").read_bytes()).get_json()
    assert [p["id"] for p in body["pathways"]] == ["prostate", "sclc"]
    assert all(p["position"] for p in body["pathways"])


@requires_data
def test_sherman_as_fhir_has_one_response_per_pathway(client, nav):
    bundle = validated(post(client, nav, synthea("Sherman_McGlynn").read_bytes(), "?format=fhir"))
    responses = resources(bundle, "GuidanceResponse")
    assert [r["moduleCanonical"] for r in responses] == [CANONICAL.format("prostate"), CANONICAL.format("sclc")]
    assert len(resources(bundle, "RequestGroup")) == 2
    for response in responses:
        assert resolve(bundle, response["result"])["resourceType"] == "RequestGroup"


def test_lung_cancer_without_histology_is_data_required(client, nav):
    body = egfr_bundle()
    body["entry"][1]["resource"]["code"]["coding"][0].update(code="363358000", display="Malignant tumor of lung")
    bundle = validated(post(client, nav, body, "?format=fhir"))
    responses = resources(bundle, "GuidanceResponse")
    assert {r["moduleCanonical"] for r in responses} == {CANONICAL.format("nsclc"), CANONICAL.format("sclc")}
    for response in responses:
        assert response["status"] == "data-required"
        outcome = resolve(bundle, response["evaluationMessage"][0])
        assert outcome["resourceType"] == "OperationOutcome"
        first = outcome["issue"][0]
        assert first["code"] == "incomplete" and "applies is unknown" in first["diagnostics"]


def test_no_pathway_is_one_failure_response(client, nav):
    body = egfr_bundle()
    del body["entry"][1:4]  # no cancer on record
    assert post(client, nav, body).get_json()["pathways"] == []
    bundle = validated(post(client, nav, body, "?format=fhir"))
    (response,) = resources(bundle, "GuidanceResponse")
    assert response["status"] == "failure" and "moduleCodeableConcept" in response
    assert "No care pathway applies" in resolve(bundle, response["evaluationMessage"][0])["issue"][0]["diagnostics"]


def test_patient_selection(client, nav):
    two = egfr_bundle()
    other = {"resourceType": "Patient", "id": "someone-else"}
    two["entry"].append({"resource": other})
    assert_outcome(post(client, nav, two), 422, "several patients")
    assert post(client, nav, two, "?patient=egfr-1").get_json()["patient"] == "egfr-1"
    assert_outcome(post(client, nav, two, "?patient=nobody"), 422, "not in input")


@pytest.mark.parametrize("query", ["?asOf=2024-3-1", "?asOf=yesterday", "?asOf=2024-02-30", "?format=xml"])
def test_bad_query_parameters(client, nav, query):
    assert_outcome(post(client, nav, egfr_bundle(), query), 400, "query parameter")


def test_scopes_and_tokens(client, mint):
    wrong = {"Authorization": f"Bearer {mint(['necessity.read', 'history.read'])}"}
    assert_outcome(post(client, wrong, egfr_bundle()), 403, "navigation.read")
    assert_outcome(post(client, {}, egfr_bundle()), 401, "bearer token")
    assert_outcome(client.get("/navigation/v1/openapi.json"), 401)


def test_malformed_bodies(client, nav):
    assert_outcome(post(client, nav, b"{not json"), 400, "not valid JSON")
    assert_outcome(post(client, nav, {"resourceType": "Patient", "id": "x"}), 400, "expected a FHIR Bundle")
    assert_outcome(
        client.post(URL, data=json.dumps(egfr_bundle()), headers=nav | {"Content-Type": "text/plain"}),
        415,
        "Content-Type",
    )


def test_oversized_body(client, nav, settings):
    assert_outcome(post(client, nav, b" " * (settings.max_body_bytes + 1)), 413, "exceeds the limit")


def test_strict_rejects_a_broken_resource(client, nav):
    body = egfr_bundle()
    body["entry"][1]["resource"]["onsetDateTime"] = "2024-02-30"
    assert post(client, nav, body).status_code == 200
    assert_outcome(post(client, nav, body, "?strict=true"), 400, "onsetDateTime")


def test_openapi_document(client, nav):
    doc = client.get("/navigation/v1/openapi.json", headers=nav).get_json()
    assert doc["openapi"].startswith("3.") and doc["servers"] == [{"url": "/navigation/v1"}]
    assert {"/evaluate", "/openapi.json"} <= set(doc["paths"])
    names = {p["name"] for p in doc["paths"]["/evaluate"]["post"]["parameters"]}
    assert names == {"patient", "asOf", "strict", "format"}
    pathway = doc["components"]["schemas"]["PathwayOut"]["properties"]
    assert {"position", "nextSteps", "gaps", "offPathway", "citations"} <= set(pathway)
    content = doc["paths"]["/evaluate"]["post"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "application/fhir+json"}


def test_access_log_without_clinical_content(client, nav, caplog):
    body = copy.deepcopy(egfr_bundle())
    body["entry"][0]["resource"]["name"] = [{"family": "Secretname"}]
    with caplog.at_level(logging.INFO):
        assert post(client, nav, body).status_code == 200
        assert post(client, nav, body, "?patient=ghost").status_code == 422
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "oncotwin.access"]
    assert [(a["action"], a["patient"], a["outcome"]) for a in access[-2:]] == [
        ("navigation.evaluate", "egfr-1", "ok"),
        ("navigation.evaluate", "ghost", "not-in-input"),
    ]
    assert "Secretname" not in caplog.text and "osimertinib" not in caplog.text.lower()


def test_runs_alone(settings, mint):
    from services.care_navigation.app import create_app

    app = create_app(settings)
    headers = {"Authorization": f"Bearer {mint(['navigation.read'])}"}
    assert post(app.test_client(), headers, egfr_bundle()).get_json()["patient"] == "egfr-1"
    assert app.test_client().post("/history/v1/timeline", headers=headers | FHIR, data="{}").status_code == 404


@requires_data
@pytest.mark.slow
def test_fhir_output_of_every_developer_patient_validates():
    """Both twins' FHIR renderings validate with the R4B models for every patient of the developer data."""
    from graph.networkx_store import NetworkXPathwayStore
    from graph.queries import PathwayQueries
    from services.care_navigation.engine import navigate
    from services.guidance import navigation_bundle, necessity_bundle
    from services.medical_necessity.engine import assess
    from shared.fhir.ingest import load_path
    from tests.conftest import BULK, MCODE, SYNTHEA

    queries = PathwayQueries(NetworkXPathwayStore.load())
    records = [r for path in (*sorted(SYNTHEA.glob("*.json")), BULK, MCODE) for r in load_path(path).records]
    statuses = set()
    for record in records:
        for bundle in (navigation_bundle(navigate(record, queries)), necessity_bundle(assess(record, queries))):
            Bundle.model_validate(bundle)
            statuses |= {r["status"] for r in resources(bundle, "GuidanceResponse")}
    assert len(records) > 20 and statuses >= {"success", "data-required", "failure"}
