"""Every FHIR resource OncoTwin emits conforms to R4 beyond the schema (see tests/fhir_conformance.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph.loader import load_pathways
from graph.plandefinition import from_plan_definition, to_plan_definition
from tests.conftest import requires_data, synthea
from tests.fhir_conformance import EMITTED, NATIVE_EXPRESSIONS, Definitions, check, required_codes
from tests.test_necessity_api import egfr_bundle, resources

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PLAN_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "plandefinition"


def conforms(resource: dict) -> None:
    report = check(resource)
    assert report.violations == [], "\n".join(report.violations[:20])
    assert report.unevaluated == set(), report.unevaluated  # every invariant met was evaluated
    assert report.unchecked_bindings == set(), report.unchecked_bindings


# --- the checker itself ------------------------------------------------------------------------


def test_rules_come_from_the_r4_definitions() -> None:
    defs = Definitions.load()
    assert defs.by_type["GuidanceResponse"]["fhirVersion"] == "4.0.1"
    reason = defs.elements["GuidanceResponse"]["GuidanceResponse.reasonReference"]
    targets = {p.rsplit("/", 1)[-1] for t in reason["type"] for p in t["targetProfile"]}
    assert targets == {"Condition", "Observation", "DiagnosticReport", "DocumentReference"}
    # every required value set on what we emit has its codes here, except the two no emitted element uses
    codes, unavailable = required_codes()
    assert defs.required_valuesets(EMITTED) - set(codes) == set(unavailable)
    assert codes["http://hl7.org/fhir/ValueSet/guidance-response-status"] >= {"success", "data-required", "failure"}
    # invariants checked in Python are the ones the definitions state (a changed definition fails here)
    stated = {
        c["key"]: c["expression"] for sd in defs.elements.values() for e in sd.values() for c in e.get("constraint", [])
    }
    assert {k: stated[k] for k in NATIVE_EXPRESSIONS} == NATIVE_EXPRESSIONS


def test_the_checker_finds_each_kind_of_violation() -> None:
    bad = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:5d2ad2d4-0ee3-4d0c-9b7f-1f0b34e9c001",
                "resource": {
                    "resourceType": "GuidanceResponse",
                    "moduleUri": "https://example.org/module",
                    "status": "done",  # not in guidance-response-status
                    "reasonReference": [{"reference": "MedicationRequest/order-1"}],  # not an allowed target
                    "result": {"reference": "urn:uuid:5d2ad2d4-0ee3-4d0c-9b7f-1f0b34e9c002"},
                },
            },
            {
                "fullUrl": "urn:uuid:5d2ad2d4-0ee3-4d0c-9b7f-1f0b34e9c002",
                "resource": {
                    "resourceType": "RequestGroup",
                    "status": "draft",
                    "intent": "proposal",
                    "action": [{"title": "a leaf without a resource"}],  # rqg-1
                },
            },
        ],
    }
    found = check(bad).violations
    assert any("status" in v and "guidance-response-status" in v for v in found)
    assert any("reasonReference" in v and "MedicationRequest" in v for v in found)
    assert any("rqg-1" in v for v in found)
    assert len(found) == 3
    wrong_result = json.loads(json.dumps(bad))
    wrong_result["entry"][0]["resource"]["result"] = {"reference": "Patient/p"}  # CarePlan | RequestGroup only
    assert any("result" in v and "Patient" in v for v in check(wrong_result).violations)
    both = {"url": "x", "valueString": "a", "extension": [{"url": "y", "valueString": "b"}]}  # ext-1
    group = {"resourceType": "RequestGroup", "status": "draft", "intent": "proposal", "extension": [both]}
    assert [v for v in check(group).violations if "ext-1" in v] == [
        "RequestGroup.extension[0]: invariant ext-1 fails: Must have either extensions or value[x], not both"
    ]


# --- what the product emits ------------------------------------------------------------------------


@pytest.mark.parametrize("egfr", [True, False])
def test_necessity_and_navigation_bundles_conform(client, mint, egfr: bool) -> None:
    headers = {"Authorization": f"Bearer {mint(['navigation.read', 'necessity.read'])}"} | FHIR_JSON
    for url in ("/necessity/v1/evaluate?format=fhir", "/navigation/v1/evaluate?format=fhir"):
        response = client.post(url, data=json.dumps(egfr_bundle(egfr=egfr)), headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        conforms(response.get_json())


def test_necessity_guidance_references_only_allowed_targets(client, mint) -> None:
    headers = {"Authorization": f"Bearer {mint(['necessity.read'])}"} | FHIR_JSON
    bundle = client.post("/necessity/v1/evaluate?format=fhir", data=json.dumps(egfr_bundle()), headers=headers)
    (response,) = resources(bundle.get_json(), "GuidanceResponse")
    assert [r["reference"] for r in response["reasonReference"]] == ["Condition/nsclc-1"]
    (group,) = resources(bundle.get_json(), "RequestGroup")
    assert group["basedOn"] == [{"reference": "MedicationRequest/order-1"}]  # the order stays linked


def test_operation_outcomes_of_errors_conform(client, mint) -> None:
    headers = {"Authorization": f"Bearer {mint(['necessity.read'])}"} | FHIR_JSON
    for body, query in (("{", ""), (json.dumps(egfr_bundle()), "?order=MedicationRequest/none"), ("[]", "")):
        response = client.post(f"/necessity/v1/evaluate{query}", data=body, headers=headers)
        assert response.status_code >= 400 and response.get_json()["resourceType"] == "OperationOutcome"
        conforms(response.get_json())
    conforms(client.post("/necessity/v1/evaluate", data="{}").get_json())  # 401


@pytest.mark.parametrize("pathway", load_pathways(), ids=lambda p: p.info.id)
def test_every_pathway_exports_a_conformant_plandefinition(pathway) -> None:
    conforms(to_plan_definition(pathway))


@pytest.mark.parametrize("name", sorted(p.name for p in PLAN_FIXTURES.glob("*.json")))
def test_imported_plandefinitions_export_conformant(name: str) -> None:
    imported = from_plan_definition(json.loads((PLAN_FIXTURES / name).read_text(encoding="utf-8")))
    conforms(to_plan_definition(imported.pathway))


@requires_data
def test_deceased_patient_guidance_says_so_and_has_nothing_urgent(client, mint) -> None:
    headers = {"Authorization": f"Bearer {mint(['navigation.read'])}"} | FHIR_JSON
    body = synthea("Austin_Franecki").read_bytes()
    bundle = client.post("/navigation/v1/evaluate?asOf=2026-01-01&format=fhir", data=body, headers=headers).get_json()
    conforms(bundle)
    for response in resources(bundle, "GuidanceResponse"):
        notes = [n["text"] for n in response["note"]]
        assert any(n.startswith("Patient deceased on ") and "no next steps are proposed" in n for n in notes)
    text = json.dumps(bundle)
    assert '"urgent"' not in text and "Next steps" not in text


@requires_data
@pytest.mark.slow
def test_fhir_output_of_every_developer_patient_conforms() -> None:
    from graph.networkx_store import NetworkXPathwayStore
    from graph.queries import PathwayQueries
    from services.care_navigation.engine import navigate
    from services.guidance import navigation_bundle, necessity_bundle
    from services.medical_necessity.engine import assess
    from shared.fhir.ingest import load_path
    from tests.conftest import BULK, MCODE, SYNTHEA

    queries = PathwayQueries(NetworkXPathwayStore.load())
    records = [r for path in (*sorted(SYNTHEA.glob("*.json")), BULK, MCODE) for r in load_path(path).records]
    problems: list[str] = []
    for record in records:
        for bundle in (navigation_bundle(navigate(record, queries)), necessity_bundle(assess(record, queries))):
            report = check(bundle)
            problems += [f"{record.patient.id}: {v}" for v in report.violations]
            assert not report.unevaluated and not report.unchecked_bindings
    assert len(records) > 20 and problems == [], "\n".join(problems[:20])
