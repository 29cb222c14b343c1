"""FHIR ingestion against the real developer data: Synthea bundles, the bulk export, mCODE."""

from __future__ import annotations

import base64
import copy
import json

import orjson
import pytest

from shared.errors import InvalidInput, UnprocessableInput
from shared.fhir.ingest import load_bundle, load_path
from shared.fhir.parse import RawResource
from shared.fhir.references import ReferenceIndex
from tests.conftest import BULK, BULK_PATIENT, LARGEST_BUNDLE, MCODE, SYNTHEA, requires_data, synthea

pytestmark = requires_data


@pytest.mark.parametrize("path", sorted(SYNTHEA.glob("*.json")) if SYNTHEA.is_dir() else [], ids=lambda p: p.name[:20])
def test_every_synthea_bundle_ingests_without_errors(path):
    result = load_path(path)
    assert len(result.records) == 1
    assert [i for i in result.issues if i.severity == "error"] == []
    record = result.records[0]
    assert record.cancers, "every developer bundle is a cancer patient"
    # Billing resources are skipped, counted, never validated.
    assert result.skipped["Claim"] > 0 and result.skipped["ExplanationOfBenefit"] > 0
    assert result.used["Claim"] == 0


def test_transaction_bundle_resolves_urn_uuid_subjects():
    raw = json.loads(LARGEST_BUNDLE.read_bytes())
    assert raw["type"] == "transaction"
    subjects = [e["resource"]["subject"]["reference"] for e in raw["entry"] if "subject" in e["resource"]]
    assert subjects and all(s.startswith("urn:uuid:") for s in subjects)
    record = load_path(LARGEST_BUNDLE).records[0]
    assert record.id == raw["entry"][0]["resource"]["id"]
    assert len(record.encounters) == 73 and len(record.procedures) == 28


@pytest.mark.parametrize("bundle_type", ["collection", "batch", "searchset", "document", "transaction"])
def test_any_bundle_type_gives_the_same_record(bundle_type):
    raw = json.loads(synthea("Austin_Franecki").read_bytes())
    raw["type"] = bundle_type
    if bundle_type == "document":
        raw["entry"].insert(
            0,
            {
                "fullUrl": "urn:uuid:comp-1",
                "resource": {
                    "resourceType": "Composition",
                    "id": "comp-1",
                    "status": "final",
                    "type": {"text": "Summary"},
                    "subject": {"reference": raw["entry"][0]["fullUrl"]},
                    "date": "2020-01-01",
                    "author": [{"display": "x"}],
                    "title": "Oncology summary",
                    "section": [
                        {
                            "title": "Plan",
                            "text": {
                                "status": "generated",
                                "div": '<div xmlns="http://www.w3.org/1999/xhtml">Continue cisplatin.</div>',
                            },
                        }
                    ],
                },
            },
        )
    record = load_bundle(orjson.dumps(raw)).records[0]
    assert [c.cancer_type for c in record.cancers] == ["nsclc"]
    assert len([m for m in record.medications if m.antineoplastic]) == 96
    if bundle_type == "document":
        assert "Continue cisplatin." in record.notes[0].text


def test_nsclc_stage_from_synthea_condition_code():
    record = load_path(synthea("Austin_Franecki")).records[0]
    (cancer,) = record.cancers
    assert (cancer.code.code, cancer.cancer_type, cancer.role) == ("254637007", "nsclc", "primary")
    assert cancer.onset.text.startswith("1985-07-25")
    assert [(s.stage, s.kind) for s in cancer.stages] == [("I", "condition-code")]
    assert {s.code.code for s in cancer.stages} == {"424132000"}


def test_duplicate_prostate_conditions_are_one_cancer_and_psa_is_not_a_lung_marker():
    record = load_path(synthea("Sherman_McGlynn")).records[0]
    types = [(c.cancer_type, c.code.code, len(c.merged_sources)) for c in record.cancers]
    assert types == [("prostate", "92691004", 1), ("sclc", "254632001", 0)]
    prostate, sclc = record.cancers
    assert {b.name for b in prostate.biomarkers} == {"PSA"}
    assert sclc.biomarkers == [] and [s.stage for s in sclc.stages] == ["I"]


def test_metastatic_prostate_is_a_secondary_cancer():
    record = load_path(LARGEST_BUNDLE).records[0]
    assert [(c.cancer_type, c.role) for c in record.cancers] == [("prostate", "primary"), ("prostate", "secondary")]
    psa = record.cancers[0].biomarkers
    assert len(psa) == 7 and all(b.status == "measured" and b.unit == "ng/mL" for b in psa)


def test_bulk_export_many_patients_notes_and_conditional_references():
    result = load_path(BULK)
    assert len(result.records) == 13
    assert [i for i in result.issues if i.severity == "error"] == []
    record = result.record(BULK_PATIENT)
    assert [(c.cancer_type, c.onset.text[:10]) for c in record.cancers] == [
        ("nsclc", "1984-10-31"),
        ("breast", "1989-04-10"),
    ]
    exposures = [m for m in record.medications if m.antineoplastic]
    assert len(exposures) == 442 and {m.ingredients for m in exposures} == {("cisplatin",), ("paclitaxel",)}
    assert len(record.notes) == 90
    assert all(n.content_type == "text/plain" and n.text for n in record.notes)
    assert any("cisplatin 50 mg injection" in n.text for n in record.notes)
    # Orders name their reason: the NSCLC stage condition, which links to the NSCLC cancer.
    assert all(m.reasons for m in exposures)


def test_conditional_reference_resolves_by_identifier():
    index = ReferenceIndex()
    practitioner = {
        "resourceType": "Practitioner",
        "id": "p1",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999974592"}],
    }
    index.add(RawResource(practitioner, "x"))
    assert (
        index.resolve({"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999974592"})
        == "Practitioner/p1"
    )
    assert index.resolve("Practitioner?identifier=9999974592") == "Practitioner/p1"
    assert index.resolve("Practitioner?identifier=http://other|9999974592") is None
    assert index.resolve("http://server/fhir/Practitioner/p1") == "Practitioner/p1"
    assert index.resolve("Practitioner/p2") is None


def test_bulk_practitioner_conditional_references_exist_in_the_export():
    index = ReferenceIndex()
    for line in (BULK / "Practitioner.000.ndjson").read_text().splitlines():
        index.add(RawResource(json.loads(line), "p"))
    request = json.loads((BULK / "MedicationRequest.000.ndjson").read_text().splitlines()[0])
    assert request["requester"]["reference"].startswith("Practitioner?identifier=")
    assert index.resolve(request["requester"]).startswith("Practitioner/")


def test_mcode_examples_stage_tnm_biomarkers_performance():
    result = load_path(MCODE)
    assert [i for i in result.issues if i.severity == "error"] == []
    record = result.record("mCODEPatientExample01")
    primary, secondary = record.cancers
    assert (primary.cancer_type, primary.role, secondary.role) == ("nsclc", "primary", "secondary")
    assert secondary.related_primary == primary.source
    groups = {(s.kind, s.stage, s.t, s.n, s.m) for s in primary.stages}
    assert ("clinical", "IIIC", "cT3", "cN3", "cM0") in groups
    assert any(kind == "pathological" and stage == "IIIC" for kind, stage, *_ in groups)
    names = {(b.name, b.status) for b in primary.biomarkers}
    assert ("STK11", "positive") in names
    assert [(p.scale, p.value) for p in sorted(record.performance, key=lambda p: p.scale)] == [
        ("ECOG", 0),
        ("Karnofsky", 90),
    ]
    assert record.disease_status[0].code.code == "268910001"
    assert {m.ingredients for m in record.medications} == {("gefitinib",)}
    assert {p.category for p in record.procedures} == {"radiation", "surgery"}


def _bundle(*resources):
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


PATIENT = {"resourceType": "Patient", "id": "pt-1", "gender": "female", "birthDate": "1960-02-03"}
BREAST = {
    "resourceType": "Condition",
    "id": "c-1",
    "subject": {"reference": "Patient/pt-1"},
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254837009"}]},
    "onsetDateTime": "2020-01-05",
}


def test_bad_resource_is_reported_and_the_rest_is_used():
    broken = copy.deepcopy(BREAST) | {"id": "c-2", "onsetDateTime": "not-a-date"}
    result = load_bundle(orjson.dumps(_bundle(PATIENT, BREAST, broken)))
    (issue,) = [i for i in result.issues if i.severity == "error"]
    assert (issue.resource_type, issue.resource_id, issue.path) == ("Condition", "c-2", "Bundle.entry[2].resource")
    assert "onsetDateTime" in issue.message and "not-a-date" not in issue.message
    assert [c.source for c in result.records[0].cancers] == ["Condition/c-1"]
    with pytest.raises(InvalidInput) as err:
        load_bundle(orjson.dumps(_bundle(PATIENT, BREAST, broken)), strict=True)
    assert err.value.problems[0].expression == "Bundle.entry[2].resource"


def test_dangling_subject_is_an_issue_and_strict_rejects_it():
    orphan = copy.deepcopy(BREAST) | {"id": "c-3", "subject": {"reference": "Patient/nobody"}}
    result = load_bundle(orjson.dumps(_bundle(PATIENT, BREAST, orphan)))
    assert any(i.resource_id == "c-3" and "subject" in i.path for i in result.issues)
    with pytest.raises(InvalidInput):
        load_bundle(orjson.dumps(_bundle(PATIENT, orphan)), strict=True)
    with pytest.raises(UnprocessableInput):
        load_bundle(orjson.dumps(_bundle(orphan)))


def test_note_text_is_decoded_and_bad_base64_is_an_issue():
    def doc(rid, data):
        return {
            "resourceType": "DocumentReference",
            "id": rid,
            "status": "current",
            "subject": {"reference": "Patient/pt-1"},
            "date": "2021-03-04T10:00:00Z",
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": data}}],
        }

    good = doc("d-1", base64.b64encode(b"Started osimertinib 80 mg daily.").decode())
    bad = doc("d-2", "@@not base64@@")
    result = load_bundle(orjson.dumps(_bundle(PATIENT, good, bad)))
    record = result.records[0]
    assert [n.text for n in record.notes] == ["Started osimertinib 80 mg daily."]
    assert any(i.resource_id == "d-2" for i in result.issues)


def test_unused_types_are_skipped_and_counted_without_validation():
    junk = {"resourceType": "Claim", "id": "x", "status": 12345}  # would fail validation if validated
    result = load_bundle(orjson.dumps(_bundle(PATIENT, junk)))
    assert result.skipped["Claim"] == 1 and result.issues == []


def _dup_bundle(second_code: str, meta: tuple[dict, dict] | None = None) -> dict:
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254637007", "display": "NSCLC"}]},
        "onsetDateTime": "2024-01-10",
    }
    other = copy.deepcopy(condition)
    other["code"]["coding"][0] = {"system": "http://snomed.info/sct", "code": "254837009", "display": "Breast cancer"}
    other["code"]["coding"][0]["code"] = second_code
    if meta:
        condition["meta"], other["meta"] = meta
    entries = [{"resourceType": "Patient", "id": "p1"}, condition, other]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in entries]}


def test_a_duplicate_id_is_reported_and_the_first_copy_wins():
    result = load_bundle(orjson.dumps(_dup_bundle("254837009")))
    (cancer,) = result.records[0].cancers  # not two cancers from one Condition id
    assert cancer.cancer_type == "nsclc"
    (issue,) = [i for i in result.issues if "duplicate resource id" in i.message]
    assert (issue.severity, issue.resource_type, issue.resource_id) == ("error", "Condition", "c1")
    with pytest.raises(InvalidInput, match="strict mode"):
        load_bundle(orjson.dumps(_dup_bundle("254837009")), strict=True)


def test_versions_of_one_resource_keep_the_latest():
    versions = (
        {"versionId": "2", "lastUpdated": "2024-03-01T00:00:00Z"},
        {"versionId": "3", "lastUpdated": "2024-04-01T00:00:00Z"},
    )
    result = load_bundle(orjson.dumps(_dup_bundle("254837009", versions)))
    (cancer,) = result.records[0].cancers
    assert cancer.cancer_type == "breast"  # version 3, the later one
    assert [i.severity for i in result.issues if "another version" in i.message] == ["warning"]
    reversed_bundle = _dup_bundle("254837009", versions[::-1])  # the later version first in the file
    (cancer,) = load_bundle(orjson.dumps(reversed_bundle)).records[0].cancers
    assert cancer.cancer_type == "nsclc"  # now the NSCLC copy carries version 3


def test_html_notes_keep_the_text_a_reader_sees():
    from shared.fhir.html_text import html_to_text

    markup = (
        "<html><head><title>x</title><style>p {color: red}</style></head><body>"
        "<p>Plan: start <b>osimertinib</b> &amp; re-stage.</p><script>var cisplatin = 1;</script>"
        "<ul><li>EGFR L858R</li><li>PD-L1 &lt;1%</li></ul></body></html>"
    )
    text = html_to_text(markup)
    assert text.splitlines() == ["Plan: start osimertinib & re-stage.", "EGFR L858R", "PD-L1 <1%"]
    assert "cisplatin" not in text and "color" not in text  # script and style are not note text
