"""The PathwayStore contract, run against every store.

Always on the embedded NetworkX store. Against a real Neo4j too whenever NEO4J_URI (with
NEO4J_PASSWORD, optional NEO4J_USER/NEO4J_DATABASE) is set: each test loads its pathways into a
fresh namespace and drops it afterwards, so a shared server is left as it was. Example:

    docker run -d -p 7687:7687 -e NEO4J_AUTH=neo4j/testpassword neo4j:5
    NEO4J_URI=bolt://localhost:7687 NEO4J_PASSWORD=testpassword python -m pytest tests/test_graph_contract.py

Expected values come from the pathway files themselves (an independent oracle) or from the
clinical scenario, never from another store's answer.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest

from graph.loader import load_pathways
from graph.model import EdgeKind, NodeKind, Pathway, PathwayInfo
from graph.networkx_store import NetworkXPathwayStore
from graph.queries import PathwayQueries, explain_criteria, explain_location
from graph.store import PathwayStore, UnknownPathway
from shared.fhir.ingest import load_path
from shared.fhir.record import RXNORM
from tests.builders import give, order_for, patient, procedure
from tests.conftest import MCODE, requires_data, synthea

PATHWAYS = load_pathways()
NSCLC = next(p for p in PATHWAYS if p.info.id == "nsclc")
StoreFactory = Callable[[list[Pathway]], PathwayStore]


def _networkx(pathways: list[Pathway]) -> Iterator[PathwayStore]:
    yield NetworkXPathwayStore(pathways)


def _neo4j(pathways: list[Pathway]) -> Iterator[PathwayStore]:
    from graph.neo4j_store import Neo4jPathwayStore

    store = Neo4jPathwayStore.connect(
        os.environ["NEO4J_URI"],
        os.environ.get("NEO4J_USER", "neo4j"),
        os.environ["NEO4J_PASSWORD"],
        database=os.environ.get("NEO4J_DATABASE", "neo4j"),
        namespace=f"test-{uuid.uuid4().hex}",
    )
    try:
        store.ensure_schema()
        store.write_pathways(pathways)
        yield store
    finally:
        store.drop_namespace()
        store.close()


BACKENDS = [pytest.param(_networkx, id="networkx")]
if os.environ.get("NEO4J_URI"):
    BACKENDS.append(pytest.param(_neo4j, id="neo4j"))


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    opened: list[Iterator[PathwayStore]] = []

    def factory(pathways: list[Pathway]) -> PathwayStore:
        gen = request.param(pathways)
        opened.append(gen)
        return next(gen)

    yield factory
    for gen in opened:
        gen.close()  # runs the backend's cleanup


@pytest.fixture
def store(make_store: StoreFactory) -> PathwayStore:
    return make_store(PATHWAYS)


@pytest.fixture
def queries(store: PathwayStore) -> PathwayQueries:
    return PathwayQueries(store)


def _bumped(pathway: Pathway, version: str) -> Pathway:
    info = dataclasses.replace(pathway.info, version=version, title=pathway.info.title + " (next)")
    return Pathway(info, pathway.nodes, pathway.edges, pathway.sources, pathway.file)


# -- the protocol itself ------------------------------------------------------------------------
def test_store_satisfies_the_protocol(store: PathwayStore) -> None:
    assert isinstance(store, PathwayStore)
    assert {i.id for i in store.pathways()} >= {"nsclc", "sclc", "colon", "prostate", "breast"}


def test_pathway_round_trips_whole(store: PathwayStore) -> None:
    for pathway in PATHWAYS:
        got = store.pathway(pathway.key)
        assert got.info == pathway.info
        assert got.nodes == pathway.nodes
        assert got.edges == pathway.edges
        assert set(got.sources) == set(pathway.sources)


def test_nodes_and_edges_match_the_files(store: PathwayStore) -> None:
    key = NSCLC.key
    for node in NSCLC.nodes:
        assert store.node(key, node.id) == node
        for kinds in ((), (EdgeKind.NEXT,), (EdgeKind.BRANCH, EdgeKind.REQUIRES)):
            expected_out = [e for e in NSCLC.edges if e.source == node.id and (not kinds or e.kind in kinds)]
            expected_in = [e for e in NSCLC.edges if e.target == node.id and (not kinds or e.kind in kinds)]
            assert store.edges_from(key, node.id, kinds) == expected_out
            assert store.edges_to(key, node.id, kinds) == expected_in
    assert store.node(key, "nsclc.no-such-node") is None


def test_unknown_pathway_is_refused(store: PathwayStore) -> None:
    with pytest.raises(UnknownPathway):
        store.node("nsclc@0.0", "nsclc.staging")
    with pytest.raises(UnknownPathway):
        store.edges_from("nope@1", "x")


def test_find_orderables_by_code(store: PathwayStore) -> None:
    cisplatin = f"{RXNORM}|2555"
    found = store.find_orderables(NSCLC.key, [cisplatin, f"{RXNORM}|does-not-exist"])
    assert [n.id for n in found] == [n.id for n in NSCLC.nodes if cisplatin in n.code_keys]
    assert found and all(n.kind is NodeKind.ACTIVITY for n in found)


def test_routes_to_are_paths_from_the_start_through_steps_and_decisions(store: PathwayStore) -> None:
    routes = store.routes_to(NSCLC.key, "nsclc.surveillance")
    assert len(routes) >= 3  # early stage with and without adjuvant therapy, and stage III
    for route in routes:
        assert route[0].source == NSCLC.info.start and route[-1].target == "nsclc.surveillance"
        for a, b in itertools.pairwise(route):
            assert a.target == b.source
        inner = [NSCLC.node(e.target) for e in route[:-1]]
        assert all(n is not None and n.kind in (NodeKind.STEP, NodeKind.DECISION) for n in inner)
    assert routes == sorted(routes, key=lambda r: tuple(e.seq for e in r))
    assert store.routes_to(NSCLC.key, NSCLC.info.start) == [()]


def test_sources_are_the_files_sources(store: PathwayStore) -> None:
    assert store.sources(NSCLC.key) == {s.id: s for s in NSCLC.sources}


def test_versions_side_by_side(make_store: StoreFactory) -> None:
    newer = _bumped(NSCLC, "2027.1")
    store = make_store([NSCLC, newer])
    infos = [i for i in store.pathways() if i.id == "nsclc"]
    assert [i.version for i in infos] == ["2027.1", "2026.11"]  # newest first
    assert store.pathway(newer.key).info.title.endswith("(next)")
    assert store.pathway(NSCLC.key).info == NSCLC.info
    assert PathwayQueries(store).active[0].version == "2027.1"
    assert PathwayQueries(store, versions={"nsclc": "2026.11"}).active[0].version == "2026.11"
    with pytest.raises(LookupError):
        PathwayQueries(store, versions={"nsclc": "1999.1"})


# -- real patients ------------------------------------------------------------------------------------
def _one(path: Path):  # type: ignore[no-untyped-def]
    (record,) = [r for r in load_path(path).records if r.cancers]
    return record


@requires_data
def test_austin_stage_i_nsclc_after_chemoradiation(queries: PathwayQueries) -> None:
    record = _one(synthea("Austin"))
    (location,) = queries.locate(record)
    assert location.info.id == "nsclc"
    # stage "I" without substage: IB (adjuvant therapy) cannot be ruled out, so the walk follows the
    # chemotherapy on record into adjuvant therapy, marked inferred
    assert [w.node.id for w in location.position] == ["nsclc.early.adjuvant"]
    assert location.position[0].inferred
    local = next(w for w in location.walk if w.node.id == "nsclc.early.local")
    assert local.done and any("radiation" in (e.value or "") for e in _evidence(local.evaluation))
    adjuvant = next(w for w in location.walk if w.node.id == "nsclc.early.adjuvant-decision")
    assert adjuvant.status == "undetermined"
    assert "nsclc.biomarkers" in [w.node.id for w in location.skipped]  # never tested
    decision = next(w for w in location.walk if w.node.id == "nsclc.stage-decision")
    assert decision.status == "decided" and decision.evaluation is not None
    assert any(e.value == "I" for e in _evidence(decision.evaluation))
    (due,) = queries.next_steps_for(location, as_of=date(2026, 1, 1))
    assert due.node.id == "nsclc.surveillance"
    assert due.due == date(1990, 1, 20) and due.overdue  # 6 months after the last treatment, 1989-07-20


@requires_data
def test_mcode_example_metastatic_nsclc_on_first_line(queries: PathwayQueries) -> None:
    record = next(r for r in load_path(MCODE).records if r.cancers)
    (location,) = queries.locate(record)
    assert [w.node.id for w in location.position] == ["nsclc.advanced.first-line"]
    assert "nsclc.biomarkers" in [w.node.id for w in location.skipped]  # EGFR only: ALK, PD-L1 missing
    options = {o.node.id: o.status for o in queries.options(record, "nsclc.advanced.first-line")}
    assert options["nsclc.rx.osimertinib"] == "satisfied"  # EGFR positive, tested
    assert options["nsclc.rx.pembrolizumab"] == "unsatisfied"  # needs EGFR negative
    assert options["nsclc.rx.alectinib"] == "unknown"  # ALK never tested


# -- constructed scenarios -----------------------------------------------------------------------------
def test_egfr_positive_metastatic_nsclc_gets_osimertinib(queries: PathwayQueries) -> None:
    record = patient("nsclc", stage="IVA", markers={"EGFR": "positive", "ALK": "negative", "PD-L1": 10.0})
    (location,) = queries.locate(record)
    assert "nsclc.advanced.first-line" in [w.node.id for w in location.walk]
    options = {o.node.id: o.status for o in queries.options(record, "nsclc.advanced.first-line")}
    assert options["nsclc.rx.osimertinib"] == "satisfied"
    assert options["nsclc.rx.alectinib"] == "unsatisfied"
    assert options["nsclc.rx.pembrolizumab"] == "unsatisfied"
    first = queries.options(record, "nsclc.advanced.first-line")[0]
    assert first.status == "satisfied"  # satisfied options come first


def test_pd_l1_high_driver_negative_nsclc_gets_pembrolizumab(queries: PathwayQueries) -> None:
    record = patient("nsclc", stage="IV", markers={"EGFR": "negative", "ALK": "negative", "PD-L1": 60.0})
    options = {o.node.id: o.status for o in queries.options(record, "nsclc.advanced.first-line")}
    assert options["nsclc.rx.pembrolizumab"] == "satisfied"
    assert options["nsclc.rx.osimertinib"] == "unsatisfied"
    low = patient("nsclc", stage="IV", markers={"EGFR": "negative", "ALK": "negative", "PD-L1": 20.0})
    assert {o.node.id: o.status for o in queries.options(low, "nsclc.advanced.first-line")}[
        "nsclc.rx.pembrolizumab"
    ] == "unsatisfied"


def test_stage_decision_waits_for_a_stage(queries: PathwayQueries) -> None:
    record = patient("nsclc")  # no stage, no treatment
    (location,) = queries.locate(record)
    decision = next(w for w in location.walk if w.node.id == "nsclc.stage-decision")
    assert decision.status == "undetermined"
    assert [w.node.id for w in location.position] == ["nsclc.workup"]
    steps = queries.next_steps_for(location)
    assert steps[0].node.id == "nsclc.workup" and steps[0].due is None


def test_undetermined_decision_followed_by_later_evidence(queries: PathwayQueries) -> None:
    record = procedure(patient("nsclc"), "173171007", "Lobectomy of lung", "surgery", "2024-02-01")
    (location,) = queries.locate(record)
    local = next(w for w in location.walk if w.node.id == "nsclc.early.local")
    assert local.done and local.inferred
    assert [w.node.id for w in location.position] == ["nsclc.early.local"]
    (nxt,) = queries.next_steps_for(location)
    assert nxt.node.id == "nsclc.early.adjuvant-decision" and "stage" in nxt.reason


def test_criteria_for_an_order(queries: PathwayQueries, store: PathwayStore) -> None:
    positive = patient("nsclc", stage="IV", markers={"EGFR": "positive"})
    criteria = queries.criteria_for(order_for("osimertinib"), positive)
    assert criteria.tree is not None and criteria.tree.status == "satisfied"
    assert {a.orderable.id for a in criteria.alternatives} >= {"nsclc.rx.osimertinib", "nsclc.rx.adjuvant-osimertinib"}
    satisfied = [a for a in criteria.alternatives if a.evaluation.status == "satisfied"]
    assert [a.step.id for a in satisfied] == ["nsclc.advanced.first-line"]
    text = explain_criteria(store, criteria)
    assert queries.explain(criteria) == text
    assert "doi.org/10.1056/NEJMoa1713137" in text and "EGFR positive" in text

    negative = patient("nsclc", stage="IV", markers={"EGFR": "negative"})
    assert queries.criteria_for(order_for("osimertinib"), negative).tree.status == "unsatisfied"  # type: ignore[union-attr]
    untested = patient("nsclc", stage="IV")
    assert queries.criteria_for(order_for("osimertinib"), untested).tree.status == "unknown"  # type: ignore[union-attr]


def test_an_order_on_no_pathway(queries: PathwayQueries) -> None:
    record = patient("nsclc", stage="IV", markers={"EGFR": "positive"})
    criteria = queries.criteria_for(order_for("tamoxifen"), record)
    assert criteria.tree is None and criteria.alternatives == ()


def test_the_order_is_not_its_own_history(queries: PathwayQueries) -> None:
    """Adjuvant therapy requires resection first; a drug given before the order counts as prior."""
    record = patient("nsclc", stage="IIA", markers={"EGFR": "positive"})
    procedure(record, "173171007", "Lobectomy of lung", "surgery", "2024-02-01")
    give(record, "osimertinib", on="2024-03-01", source="MedicationRequest/o1")  # the order itself
    criteria = queries.criteria_for(order_for("osimertinib", on="2024-03-01"), record)
    adjuvant = next(a for a in criteria.alternatives if a.orderable.id == "nsclc.rx.adjuvant-osimertinib")
    assert adjuvant.evaluation.status == "satisfied"
    later = queries.criteria_for(order_for("osimertinib", on="2024-01-20"), record)  # before the surgery
    assert (
        next(a for a in later.alternatives if a.orderable.id == "nsclc.rx.adjuvant-osimertinib").evaluation.status
        == "unsatisfied"
    )


def test_explain_location_cites_sources(queries: PathwayQueries, store: PathwayStore) -> None:
    record = patient("nsclc", stage="IV", markers={"EGFR": "positive"})
    (location,) = queries.locate(record)
    text = explain_location(store, location, queries.next_steps_for(location))
    assert queries.explain(location) == text
    assert "demonstration" in text and "https://www.cancer.gov/types/lung/hp/non-small-cell-lung-treatment-pdq" in text
    assert "Position:" in text and "[1]" in text


def test_lung_cancer_without_histology_is_possible_on_both_lung_pathways(queries: PathwayQueries) -> None:
    matches = queries.pathways_for(patient("lung", stage="I"))
    assert {m.info.id for m in matches} == {"nsclc", "sclc"}
    assert {m.applies.status for m in matches} == {"unknown"}


def _evidence(evaluation):  # type: ignore[no-untyped-def]
    if evaluation.op == "leaf":
        return list(evaluation.evidence)
    return [e for child in evaluation.children for e in _evidence(child)]


def test_pathway_info_is_complete() -> None:
    for pathway in PATHWAYS:
        info: PathwayInfo = pathway.info
        assert info.status == "demonstration" and "review" in info.disclaimer


# -- the other four cancers ------------------------------------------------------------------------
def _options(queries: PathwayQueries, record, step: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {o.node.id: o.status for o in queries.options(record, step)}


def _position(queries: PathwayQueries, record, pathway: str) -> list[str]:  # type: ignore[no-untyped-def]
    (location,) = [loc for loc in queries.locate(record) if loc.info.id == pathway]
    return [w.node.id for w in location.position]


def test_her2_positive_breast_gets_anti_her2_therapy(queries: PathwayQueries) -> None:
    record = patient("breast", stage="IIA", markers={"ER": "negative", "PR": "negative", "HER2": "positive"})
    (location,) = queries.locate(record)
    assert "breast.her2.systemic" in [w.node.id for w in location.walk]
    assert _options(queries, record, "breast.her2.systemic")["breast.rx.trastuzumab-pertuzumab-taxane"] == "satisfied"
    # receptor testing incomplete: the regimen's prerequisite (ER, PR and HER2 results) is not met
    partial = patient("breast", stage="IIA", markers={"HER2": "positive"})
    assert _options(queries, partial, "breast.her2.systemic")["breast.rx.trastuzumab-pertuzumab-taxane"] == "unknown"
    # hormone-receptor-positive HER2-negative disease does not walk the HER2 branch
    luminal = patient("breast", stage="IIA", markers={"ER": "positive", "PR": "positive", "HER2": "negative"})
    (luminal_location,) = queries.locate(luminal)
    walked = [w.node.id for w in luminal_location.walk]
    assert "breast.local" in walked and "breast.her2.systemic" not in walked


def test_stage_iii_colon_after_resection_gets_adjuvant_chemotherapy(queries: PathwayQueries) -> None:
    record = procedure(
        patient("colon", stage="IIIB"), "43075005", "Partial resection of colon", "surgery", "2024-02-01"
    )
    assert _position(queries, record, "colon") == ["colon.surgery"]
    options = _options(queries, record, "colon.adjuvant")
    assert options["colon.rx.folfox"] == "satisfied" and options["colon.rx.capox"] == "satisfied"
    (location,) = queries.locate(record)
    (due,) = queries.next_steps_for(location, as_of=date(2024, 2, 10))
    assert due.node.id == "colon.adjuvant" and due.due is not None and due.due > date(2024, 2, 1) and not due.overdue
    oxaliplatin = queries.criteria_for(order_for("oxaliplatin", on="2024-03-01"), record)
    assert oxaliplatin.tree is not None and oxaliplatin.tree.status == "satisfied"
    early = procedure(patient("colon", stage="I"), "43075005", "Partial resection of colon", "surgery", "2024-02-01")
    assert queries.criteria_for(order_for("oxaliplatin", on="2024-03-01"), early).tree.status == "unsatisfied"  # type: ignore[union-attr]


def test_high_risk_prostate_gets_adt_with_radiation(queries: PathwayQueries) -> None:
    record = patient("prostate", gender="male", tnm=("T3a", "N0", "M0"), markers={"PSA": 25.0, "Gleason": 8.0})
    procedure(record, "65575008", "Biopsy of prostate", "biopsy", "2024-01-05")
    (location,) = queries.locate(record)
    decision = next(w for w in location.walk if w.node.id == "prostate.risk-decision")
    assert decision.status == "decided"
    assert "prostate.local" in [w.node.id for w in location.walk]
    options = _options(queries, record, "prostate.local")
    assert options["prostate.rx.adt-radiation"] == "satisfied"
    assert options["prostate.rx.radiation-short-adt"] == "unsatisfied"  # intermediate-risk only


def test_low_risk_prostate_goes_to_active_surveillance(queries: PathwayQueries) -> None:
    record = patient("prostate", gender="male", tnm=("T1c", "N0", "M0"), markers={"PSA": 5.0, "Gleason": 6.0})
    (location,) = queries.locate(record)
    walked = [w.node.id for w in location.walk]
    assert "prostate.active-surveillance" in walked and "prostate.local" not in walked


def test_extensive_sclc_gets_chemo_immunotherapy(queries: PathwayQueries) -> None:
    record = patient("sclc", stage="IVA")
    (location,) = queries.locate(record)
    assert "sclc.extensive.first-line" in [w.node.id for w in location.walk]
    options = _options(queries, record, "sclc.extensive.first-line")
    assert options["sclc.rx.platinum-etoposide-atezolizumab"] == "satisfied"
    assert options["sclc.rx.platinum-etoposide-durvalumab"] == "satisfied"
    limited = patient("sclc", stage="IIB")
    assert "sclc.limited.chemoradiation" in [w.node.id for w in queries.locate(limited)[0].walk]


@requires_data
def test_real_patients_land_on_the_right_pathway_and_step(queries: PathwayQueries) -> None:
    sherman = _one(synthea("Sherman"))
    assert {loc.info.id for loc in queries.locate(sherman)} == {"prostate", "sclc"}
    assert _position(queries, sherman, "sclc") == [
        "sclc.limited.chemoradiation"
    ]  # stage I = limited; cisplatin+etoposide
    assert _position(queries, sherman, "prostate") == ["prostate.local"]  # prostatectomy, risk group never recorded
    micah = _one(synthea("Micah"))  # only a secondary colon cancer: metastatic disease
    assert _position(queries, micah, "colon") == ["colon.metastatic.first-line"]
    whitney = _one(synthea("Whitney"))  # resection then leucovorin + oxaliplatin, stage never recorded
    (location,) = queries.locate(whitney)
    assert [w.node.id for w in location.position] == ["colon.adjuvant"] and location.position[0].inferred
    assert {"colon.staging", "colon.biomarkers"} <= {w.node.id for w in location.skipped}
    darin = _one(synthea("Darin"))  # colonoscopy and biopsy only
    assert _position(queries, darin, "colon") == ["colon.workup"]
    vito = _one(synthea("Vito"))  # a primary and its metastasis: one disease, one location
    assert [loc.info.id for loc in queries.locate(vito)] == ["prostate"]
