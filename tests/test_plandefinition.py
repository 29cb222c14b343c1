"""PlanDefinition export/import: exact round trips, R4B validity, the FHIR shapes we claim, foreign imports."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.plandefinition import PlanDefinition

from graph.conditions import condition_to_json, describe, parse_condition
from graph.loader import load_pathways, pathway_from_dict
from graph.model import WALKABLE, EdgeKind, NodeKind, Pathway, StepKind
from graph.plandefinition import (
    CONDITION_LANGUAGE,
    EXT_EDGE,
    EXT_NODE,
    EXT_PATHWAY,
    EXT_SOURCE,
    IMPORTED_STATUS,
    UCUM,
    PlanDefinitionError,
    from_plan_definition,
    to_plan_definition,
)

FIXTURES = Path(__file__).parent / "fixtures" / "plandefinition"
PATHWAYS = load_pathways()
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
DEFAULT_APPLIES = parse_condition({"fact": "cancer", "types": ["other"]})


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _actions(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Our exports: the step/decision actions under the single top-level action, by id."""
    (root,) = resource["action"]
    return {a["id"]: a for a in root["action"]}


def _contained(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in resource.get("contained", [])}


def _ext(element: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in element.get("extension", []) if e["url"] == url]


def _part(ext: dict[str, Any], name: str) -> Any:
    values = [v for p in ext["extension"] if p["url"] == name for k, v in p.items() if k.startswith("value")]
    return values[0] if values else None


def _duration_json(amount: int, unit: str) -> dict[str, Any]:
    code, word = {"D": ("d", "days"), "W": ("wk", "weeks"), "M": ("mo", "months"), "Y": ("a", "years")}[unit]
    return {"value": amount, "unit": word, "system": UCUM, "code": code}


def _no_empty_values(value: Any, where: str = "$") -> list[str]:
    """FHIR JSON forbids empty strings, arrays and objects; returns where any occur."""
    if value in ("", [], {}):
        return [where]
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in _no_empty_values(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [w for i, v in enumerate(value) for w in _no_empty_values(v, f"{where}[{i}]")]
    return []


# A small pathway whose every edge shape is known, so the encodings can be asserted field by field.
DEMO = {
    "pathway": {
        "id": "demo",
        "version": "1.0",
        "title": "Demonstration pathway",
        "status": "demonstration",
        "disclaimer": "Test content; a clinical team must review it.",
        "applies_when": {"fact": "cancer", "types": ["nsclc"]},
        "start": "demo.start",
        "cites": [{"source": "pdq", "section": "Overview"}],
    },
    "sources": [
        {
            "id": "pdq",
            "title": "PDQ",
            "publisher": "NCI",
            "url": "https://www.cancer.gov/pdq",
            "accessed": "2026-11-01",
        },
        {
            "id": "trial",
            "title": "A trial",
            "publisher": "NEJM",
            "url": "https://doi.org/10.1/x",
            "accessed": "2026-11-02",
        },
    ],
    "nodes": [
        {
            "id": "demo.start",
            "kind": "step",
            "step": "workup",
            "title": "Work-up",
            "summary": "Find out what it is.",
            "done_when": {"fact": "imaging"},
            "cites": [{"source": "pdq", "section": "Diagnosis"}],
        },
        {"id": "demo.decide", "kind": "decision", "title": "Which way", "question": "Is EGFR positive?"},
        {"id": "demo.a", "kind": "step", "step": "treatment", "title": "Treat", "needs_mapping": ["text/cql: X"]},
        {"id": "demo.b", "kind": "step", "step": "surveillance", "title": "Watch"},
        {"id": "demo.odd_id", "kind": "step", "step": "referral", "title": "Refer"},
        {"id": "demo.rx", "kind": "regimen", "title": "Regimen", "cites": [{"source": "trial", "section": "Results"}]},
        {
            "id": "demo.drug",
            "kind": "activity",
            "activity": "drug",
            "title": "Osimertinib",
            "codes": [{"system": "rxnorm", "code": "1721560", "display": "osimertinib"}],
        },
        {
            "id": "demo.ct",
            "kind": "activity",
            "activity": "imaging",
            "title": "CT chest",
            "codes": [{"system": "snomed", "code": "169069000", "display": "Computed tomography of chest"}],
        },
    ],
    "edges": [
        {
            "from": "demo.start",
            "to": "demo.decide",
            "kind": "next",
            "timing": {"text": "within 2 weeks", "within": "P2W"},
        },
        {
            "from": "demo.decide",
            "to": "demo.a",
            "kind": "branch",
            "label": "EGFR+",
            "when": {"fact": "biomarker", "name": "EGFR", "status": ["positive"]},
        },
        {
            "from": "demo.decide",
            "to": "demo.b",
            "kind": "branch",
            "otherwise": True,
            "timing": {"text": "every 6 months for 2 years", "every": "P6M", "for": "P2Y"},
        },
        {"from": "demo.a", "to": "demo.rx", "kind": "branch", "when": {"fact": "performance", "ecog_max": 1}},
        {"from": "demo.rx", "to": "demo.drug", "kind": "includes"},
        {"from": "demo.a", "to": "demo.start", "kind": "requires", "label": "work-up first"},
        {"from": "demo.a", "to": "demo.b", "kind": "next", "timing": {"text": "CT every 6 months", "every": "P6M"}},
        {"from": "demo.start", "to": "demo.ct", "kind": "branch"},
        {"from": "demo.b", "to": "demo.odd_id", "kind": "next"},
        {"from": "demo.b", "to": "demo.missing", "kind": "next", "label": "dangling on purpose"},
        {"from": "demo.gone", "to": "demo.a", "kind": "requires"},
    ],
}


@pytest.fixture(scope="module")
def demo() -> Pathway:
    return pathway_from_dict(DEMO, "demo.yaml")


@pytest.fixture(scope="module")
def demo_pd(demo: Pathway) -> dict[str, Any]:
    return to_plan_definition(demo)


# --- round trips and validity ---------------------------------------------------------------------


@pytest.mark.parametrize("pathway", PATHWAYS, ids=lambda p: p.key)
def test_every_real_pathway_round_trips_exactly(pathway: Pathway) -> None:
    resource = json.loads(json.dumps(to_plan_definition(pathway)))  # through JSON text, as it travels
    result = from_plan_definition(resource)
    assert result.warnings == []
    assert result.pathway.file == f"PlanDefinition/{pathway.info.id}"  # the only field that differs
    assert replace(result.pathway, file=pathway.file) == pathway


@pytest.mark.parametrize("pathway", PATHWAYS, ids=lambda p: p.key)
def test_every_real_pathway_exports_a_valid_r4_plandefinition(pathway: Pathway) -> None:
    resource = to_plan_definition(pathway)
    model = PlanDefinition.model_validate(resource)
    assert model.status == "draft" and model.experimental is True
    assert _no_empty_values(resource) == []
    text = json.dumps(resource)
    for contained in resource.get("contained", []):
        assert FHIR_ID.match(contained["id"])
        assert f'"#{contained["id"]}"' in text  # every contained resource is referenced (FHIR dom-3)
    orderable = sum(n.kind not in WALKABLE for n in pathway.nodes)
    assert len(_actions(resource)) + len(resource.get("contained", [])) == len(pathway.nodes)
    assert len(resource.get("contained", [])) == orderable


def test_demo_round_trips_with_odd_ids_and_dangling_edges(demo: Pathway, demo_pd: dict[str, Any]) -> None:
    PlanDefinition.model_validate(demo_pd)
    result = from_plan_definition(json.loads(json.dumps(demo_pd)))
    assert replace(result.pathway, file=demo.file) == demo
    assert result.warnings == []


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_imported_foreign_pathways_export_validly_and_round_trip(name: str) -> None:
    imported = from_plan_definition(_fixture(name)).pathway
    resource = to_plan_definition(imported)
    PlanDefinition.model_validate(resource)
    assert from_plan_definition(resource).pathway == imported


# --- the encodings we claim -----------------------------------------------------------------------


def test_header_carries_identity_disclaimer_and_sources(demo: Pathway, demo_pd: dict[str, Any]) -> None:
    pd = demo_pd
    assert pd["id"] == "demo" and pd["url"] == "https://oncotwin.example.org/fhir/PlanDefinition/demo"
    assert (pd["version"], pd["name"], pd["title"]) == ("1.0", "Demo", "Demonstration pathway")
    assert pd["type"]["coding"][0]["code"] == "clinical-protocol"
    assert pd["usage"] == demo.info.disclaimer and demo.info.disclaimer in pd["description"]
    (head,) = _ext(pd, EXT_PATHWAY)
    assert (_part(head, "status"), _part(head, "start")) == ("demonstration", "demo.start")
    first = pd["relatedArtifact"][0]
    assert {k: first[k] for k in ("type", "label", "display", "url")} == {
        "type": "citation",
        "label": "pdq",
        "display": "PDQ",
        "url": "https://www.cancer.gov/pdq",
    }
    assert first["citation"] == "NCI. PDQ. Accessed 2026-11-01."
    (source,) = _ext(first, EXT_SOURCE)
    assert (_part(source, "publisher"), _part(source, "accessed")) == ("NCI", "2026-11-01")


def test_applicability_is_the_top_level_action_condition(demo: Pathway, demo_pd: dict[str, Any]) -> None:
    (root,) = demo_pd["action"]
    (condition,) = root["condition"]
    assert condition["kind"] == "applicability"
    assert condition["expression"]["language"] == CONDITION_LANGUAGE
    assert json.loads(condition["expression"]["expression"]) == {"fact": "cancer", "types": ["nsclc"]}
    assert condition["expression"]["description"] == "cancer: nsclc"
    assert root["documentation"] == [
        {"type": "citation", "label": "Overview", "display": "PDQ", "url": "https://www.cancer.gov/pdq"}
    ]


def test_steps_are_actions_with_node_extension_and_citations(demo_pd: dict[str, Any]) -> None:
    start = _actions(demo_pd)["demo.start"]
    assert (start["title"], start["description"]) == ("Work-up", "Find out what it is.")
    assert start["documentation"] == [
        {"type": "citation", "label": "Diagnosis", "display": "PDQ", "url": "https://www.cancer.gov/pdq"}
    ]
    (node,) = _ext(start, EXT_NODE)
    assert (_part(node, "kind"), _part(node, "step"), _part(node, "seq")) == ("step", "workup", 0)
    done = _part(node, "doneWhen")
    assert done["language"] == CONDITION_LANGUAGE and json.loads(done["expression"]) == {"fact": "imaging"}
    (decision_node,) = _ext(_actions(demo_pd)["demo.decide"], EXT_NODE)
    assert _part(decision_node, "question") == "Is EGFR positive?"


def test_next_edge_is_related_action_after_end_with_offset_duration(demo_pd: dict[str, Any]) -> None:
    (link,) = _actions(demo_pd)["demo.decide"]["relatedAction"]
    assert (link["actionId"], link["relationship"]) == ("demo.start", "after-end")
    assert link["offsetDuration"] == {"value": 2, "unit": "weeks", "system": UCUM, "code": "wk"}
    (edge,) = _ext(link, EXT_EDGE)
    assert (_part(edge, "kind"), _part(edge, "seq")) == ("next", 0)
    assert _part(edge, "timing") == {"code": {"text": "within 2 weeks"}}


def test_every_and_for_are_timing_repeat(demo_pd: dict[str, Any]) -> None:
    watch = _actions(demo_pd)["demo.b"]
    (link,) = watch["relatedAction"]
    assert link["actionId"] == "demo.a" and "offsetDuration" not in link
    repeat = {"frequency": 1, "period": 6, "periodUnit": "mo"}
    assert watch["timingTiming"]["repeat"] == repeat  # the target's own timing mirrors its next edge
    otherwise = _actions(demo_pd)["demo.decide"]["action"][1]
    assert otherwise["timingTiming"]["repeat"] == {
        **repeat,
        "boundsDuration": {"value": 2, "unit": "years", "system": UCUM, "code": "a"},
    }
    assert otherwise["timingTiming"]["code"]["text"] == "every 6 months for 2 years"


def test_branches_are_sub_actions_with_applicability_conditions(demo: Pathway, demo_pd: dict[str, Any]) -> None:
    decide = _actions(demo_pd)["demo.decide"]
    assert decide["selectionBehavior"] == "exactly-one"  # it has an otherwise branch
    egfr, otherwise = decide["action"]
    (condition,) = egfr["condition"]
    when = next(e.when for e in demo.edges if e.target == "demo.a" and e.kind is EdgeKind.BRANCH)
    assert when is not None
    assert condition["kind"] == "applicability"
    assert condition["expression"]["language"] == CONDITION_LANGUAGE
    assert json.loads(condition["expression"]["expression"]) == condition_to_json(when)
    assert condition["expression"]["description"] == describe(when) == "EGFR positive"
    assert egfr["title"] == "EGFR+"
    assert egfr["relatedAction"] == [{"actionId": "demo.a", "relationship": "before-start"}]
    assert "condition" not in otherwise and _part(_ext(otherwise, EXT_EDGE)[0], "otherwise") is True
    treat = _actions(demo_pd)["demo.a"]
    assert treat["selectionBehavior"] == "any"
    assert treat["action"][0]["definitionCanonical"] == "#demo.rx"


def test_orderables_are_contained_activity_definitions(demo_pd: dict[str, Any]) -> None:
    contained = _contained(demo_pd)
    drug, ct, regimen = contained["demo.drug"], contained["demo.ct"], contained["demo.rx"]
    assert drug["resourceType"] == "ActivityDefinition" and drug["status"] == "draft"
    assert drug["kind"] == "MedicationRequest" and "code" not in drug
    assert drug["productCodeableConcept"]["coding"] == [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1721560", "display": "osimertinib"}
    ]
    assert ct["kind"] == "ServiceRequest" and ct["code"]["coding"][0]["code"] == "169069000"
    assert "kind" not in regimen
    assert regimen["relatedArtifact"] == [
        {"type": "citation", "label": "Results", "display": "A trial", "url": "https://doi.org/10.1/x"}
    ]
    (includes,) = [e for e in _ext(regimen, EXT_EDGE) if _part(e, "kind") == "includes"]
    assert _part(includes, "target") == "#demo.drug"


def test_requires_and_edges_without_fhir_home_use_the_edge_extension(demo_pd: dict[str, Any]) -> None:
    (requires,) = _ext(_actions(demo_pd)["demo.a"], EXT_EDGE)
    assert (_part(requires, "kind"), _part(requires, "target"), _part(requires, "label")) == (
        "requires",
        "demo.start",
        "work-up first",
    )
    (dangling,) = _ext(_actions(demo_pd)["demo.b"], EXT_EDGE)
    assert (_part(dangling, "kind"), _part(dangling, "target")) == ("next", "demo.missing")
    (root,) = demo_pd["action"]
    (loose,) = _ext(root, EXT_EDGE)
    assert (_part(loose, "source"), _part(loose, "target")) == ("demo.gone", "demo.a")


def test_node_ids_that_are_not_fhir_ids_are_made_safe_and_kept(demo_pd: dict[str, Any]) -> None:
    actions = _actions(demo_pd)
    assert "demo.odd_id" not in actions
    (node,) = _ext(actions["demo.odd-id"], EXT_NODE)
    assert _part(node, "id") == "demo.odd_id"
    assert actions["demo.odd-id"]["relatedAction"][0]["actionId"] == "demo.b"


@pytest.mark.parametrize("pathway", PATHWAYS, ids=lambda p: p.key)
def test_real_pathways_put_every_next_and_branch_edge_where_claimed(pathway: Pathway) -> None:
    resource = to_plan_definition(pathway)
    actions, contained = _actions(resource), _contained(resource)
    kinds = {n.id: n.kind for n in pathway.nodes}
    for edge in pathway.edges:
        if kinds.get(edge.source) not in WALKABLE or edge.kind not in (EdgeKind.NEXT, EdgeKind.BRANCH):
            continue
        if edge.kind is EdgeKind.NEXT and kinds.get(edge.target) in WALKABLE:
            links = [r for r in actions[edge.target].get("relatedAction", []) if r["actionId"] == edge.source]
            assert links and all(r["relationship"] == "after-end" for r in links)
            within = edge.timing.within if edge.timing else None
            expected = None if within is None else _duration_json(within.amount, within.unit)
            assert expected in [r.get("offsetDuration") for r in links]
        elif edge.kind is EdgeKind.BRANCH:
            subs = actions[edge.source]["action"]
            target = f"#{edge.target}" if edge.target in contained else edge.target
            matching = [
                s
                for s in subs
                if s.get("definitionCanonical") == target
                or any(r["actionId"] == target for r in s.get("relatedAction", []))
            ]
            assert matching, f"no branch sub-action for {edge.source} -> {edge.target}"
            if edge.when is not None:
                expressions = [json.loads(c["expression"]["expression"]) for s in matching for c in s["condition"]]
                assert condition_to_json(edge.when) in expressions


# --- foreign PlanDefinitions ----------------------------------------------------------------------


def test_who_anc_contact_imports_nested_actions_and_keeps_cql_as_text() -> None:
    result = from_plan_definition(_fixture("anc-example-plandefinition-anc-contact.json"))
    p = result.pathway
    titles = {n.title: n for n in p.nodes}
    assert set(titles) == {
        "Registration",
        "Record health history",
        "Record first contact information",
        "Record every contact information",
        "Assess danger signs",
        "Assess current pregnancy conditions, including symptoms and lab tests",
        "Case management or referral",
        "Schedule follow-up visit",
    }
    assert all(n.kind is NodeKind.STEP and n.id.startswith("anc-contact.") for n in p.nodes)
    first = titles["Record first contact information"]
    assert "text/cql: Is First Contact" in first.needs_mapping
    assert any("Is First Contact" in w for w in result.warnings)
    edges = {(e.source, e.target, e.kind) for e in p.edges}
    history = titles["Record health history"].id
    assert (history, first.id, EdgeKind.NEXT) in edges  # nesting became ordering
    assert (first.id, titles["Record every contact information"].id, EdgeKind.NEXT) in edges
    assert (titles["Registration"].id, history, EdgeKind.NEXT) in edges
    assert titles["Case management or referral"].step is StepKind.REFERRAL
    assert "definitionCanonical: http://hl7.org/fhir/uv/cpg/PlanDefinition/cpg-common-registration" in (
        titles["Registration"].needs_mapping
    )
    assert (p.info.id, p.info.status, p.info.start) == ("anc-contact", IMPORTED_STATUS, titles["Registration"].id)
    assert p.info.applies_when == DEFAULT_APPLIES
    assert any(t.startswith("applicability not mapped") for t in p.info.needs_mapping)
    assert any("77386006" in t for t in p.info.needs_mapping)  # useContext kept verbatim


def test_cpg_lasix_start_and_stop_cql_identifier_conditions_are_kept() -> None:
    result = from_plan_definition(_fixture("chf-example-plandefinition-chf-lasix.json"))
    nodes = {n.id: n for n in result.pathway.nodes}
    assert nodes["chf-lasix.lasix-iv"].needs_mapping == ("stop: text/cql-identifier: Should Stop LASIX IV",)
    assert nodes["chf-lasix.lasix-po"].needs_mapping == ("start: text/cql-identifier: Should Start LASIX PO",)
    activity = nodes["chf-lasix.chf-lasix-iv"]  # external ActivityDefinition: an activity without codes
    assert activity.kind is NodeKind.ACTIVITY and activity.codes == ()
    assert activity.needs_mapping == (
        "definitionCanonical: http://hl7.org/fhir/uv/cpg/ActivityDefinition/chf-lasix-iv",
    )
    edges = {(e.source, e.target, e.kind) for e in result.pathway.edges}
    assert ("chf-lasix.lasix-iv", "chf-lasix.chf-lasix-iv", EdgeKind.BRANCH) in edges
    assert ("chf-lasix.lasix-iv", "chf-lasix.lasix-po", EdgeKind.NEXT) in edges
    assert any("Should Stop LASIX IV" in w for w in result.warnings)
    assert any("goal not imported" in w for w in result.warnings)


def test_cpg_related_action_after_end_becomes_a_next_edge() -> None:
    result = from_plan_definition(_fixture("chf-example-plandefinition-chf-bodyweight-change.json"))
    nexts = [(e.source, e.target) for e in result.pathway.edges if e.kind is EdgeKind.NEXT]
    assert nexts == [("chf-bodyweight-change.weight-change", "chf-bodyweight-change.report-weight-change")]
    assert any("not mapped: trigger" in w for w in result.warnings)


FOREIGN: dict[str, Any] = {
    "resourceType": "PlanDefinition",
    "id": "foreign",
    "status": "active",
    "relatedArtifact": [{"type": "citation", "display": "Some guideline", "url": "https://example.org/g"}],
    "contained": [
        {
            "resourceType": "ActivityDefinition",
            "id": "cipro",
            "status": "draft",
            "title": "Ciprofloxacin",
            "kind": "MedicationRequest",
            "productCodeableConcept": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2551"}]
            },
        },
        {
            "resourceType": "ActivityDefinition",
            "id": "lab",
            "status": "draft",
            "kind": "ServiceRequest",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
        },
    ],
    "action": [
        {
            "id": "triage",
            "title": "Triage",
            "selectionBehavior": "exactly-one",
            "documentation": [{"type": "citation", "label": "Section 2", "url": "https://example.org/g"}],
            "action": [
                {
                    "title": "Severe",
                    "condition": [
                        {"kind": "applicability", "expression": {"language": "text/fhirpath", "expression": "%v > 3"}}
                    ],
                },
                {
                    "title": "Mild",
                    "condition": [
                        {
                            "kind": "applicability",
                            "expression": {"language": CONDITION_LANGUAGE, "expression": '{"fact": "age", "min": 18}'},
                        }
                    ],
                },
            ],
        },
        {
            "id": "treat",
            "selectionBehavior": "at-most-one",
            "relatedAction": [
                {"actionId": "triage", "relationship": "after-end", "offsetRange": {"high": {"value": 3, "code": "d"}}},
                {"actionId": "nowhere", "relationship": "after"},
                {"actionId": "triage", "relationship": "concurrent"},
            ],
            "action": [
                {
                    "definitionCanonical": "#cipro",
                    "condition": [{"kind": "applicability", "expression": {"language": "text/x-y", "expression": "z"}}],
                },
                {"definitionCanonical": "#lab"},
            ],
        },
    ],
}


def test_selection_behaviour_contained_definitions_and_other_languages() -> None:
    result = from_plan_definition(FOREIGN)
    p = result.pathway
    nodes = {n.id: n for n in p.nodes}
    assert nodes["foreign.triage"].kind is NodeKind.DECISION  # exactly-one over steps
    assert nodes["foreign.treat"].kind is NodeKind.STEP and nodes["foreign.treat"].title == "treat"  # id as title
    assert nodes["foreign.triage"].cites[0].section == "Section 2"
    assert p.sources[0].url == "https://example.org/g" and nodes["foreign.triage"].cites[0].source == p.sources[0].id
    cipro, lab = nodes["foreign.cipro"], nodes["foreign.lab"]
    assert (cipro.kind, cipro.activity.value if cipro.activity else None) == (NodeKind.ACTIVITY, "drug")
    assert [c.code for c in cipro.codes] == ["2551"] and [c.code for c in lab.codes] == ["2160-0"]
    edges = {(e.source, e.target): e for e in p.edges}
    severe = edges["foreign.triage", "foreign.severe"]
    assert severe.kind is EdgeKind.BRANCH and severe.needs_mapping == ("text/fhirpath: %v > 3",)
    mild = edges["foreign.triage", "foreign.mild"]
    assert mild.when == parse_condition({"fact": "age", "min": 18}) and mild.needs_mapping == ()
    assert edges["foreign.treat", "foreign.cipro"].needs_mapping == ("text/x-y: z",)
    ordering = edges["foreign.triage", "foreign.treat"]
    assert ordering.kind is EdgeKind.NEXT and ordering.timing is not None and str(ordering.timing.within) == "P3D"
    assert any("'nowhere'" in w for w in result.warnings)
    assert any("'concurrent'" in w for w in result.warnings)
    assert any("selectionBehavior 'exactly-one'" in w for w in result.warnings)


def test_nested_children_ordered_by_related_action_are_not_chained_by_position() -> None:
    resource = {
        "resourceType": "PlanDefinition",
        "id": "n",
        "action": [
            {
                "title": "Parent",
                "action": [
                    {"id": "b", "title": "B", "relatedAction": [{"actionId": "a", "relationship": "after-end"}]},
                    {"id": "a", "title": "A"},
                ],
            }
        ],
    }
    edges = [(e.source, e.target, e.kind) for e in from_plan_definition(resource).pathway.edges]
    assert sorted(edges) == [("n.a", "n.b", EdgeKind.NEXT), ("n.parent", "n.a", EdgeKind.NEXT)]


def test_an_unreadable_oncotwin_condition_is_kept_as_text(demo_pd: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(demo_pd))
    branch = _actions(broken)["demo.decide"]["action"][0]
    branch["condition"][0]["expression"]["expression"] = '{"fact": "no-such-fact"}'
    result = from_plan_definition(broken)
    edge = next(e for e in result.pathway.edges if e.source == "demo.decide" and e.target == "demo.a")
    assert edge.when is None
    assert edge.needs_mapping == (f'{CONDITION_LANGUAGE}: {{"fact": "no-such-fact"}}',)
    assert any("not readable" in w for w in result.warnings)


def test_an_empty_plandefinition_still_gives_a_pathway() -> None:
    result = from_plan_definition({"resourceType": "PlanDefinition", "action": [7, "x", {}]})
    p = result.pathway
    assert (p.info.id, p.info.status, p.info.version) == ("imported", IMPORTED_STATUS, "0")
    assert [n.id for n in p.nodes] == ["imported.action"] and p.nodes[0].title == "imported.action"
    assert p.info.start == "imported.action" and p.info.applies_when == DEFAULT_APPLIES


# --- malformed input ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "PlanDefinition", [{"resourceType": "PlanDefinition"}], 3])
def test_not_a_json_object_is_refused(value: Any) -> None:
    with pytest.raises(PlanDefinitionError, match="JSON object"):
        from_plan_definition(value)


def test_another_resource_type_is_refused() -> None:
    with pytest.raises(PlanDefinitionError, match="'Patient'"):
        from_plan_definition({"resourceType": "Patient", "id": "p1"})
    with pytest.raises(PlanDefinitionError, match="None"):
        from_plan_definition({"action": []})


def test_an_action_that_is_not_an_array_is_refused() -> None:
    with pytest.raises(PlanDefinitionError, match=r"PlanDefinition\.action must be a JSON array"):
        from_plan_definition({"resourceType": "PlanDefinition", "action": {"title": "x"}})
    assert issubclass(PlanDefinitionError, ValueError)
