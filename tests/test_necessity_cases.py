"""Medical-Necessity determinations, case by case, from the table in ``tests/data/necessity_cases.yaml``.

Each case is one order on one record (a constructed patient, a real Synthea/mCODE record, or a small
FHIR bundle under ``tests/fixtures/twins``), the determination the pathway files call for, and the
criterion that decides it. The table says why for every case; the test checks the determination,
the deciding criterion, the option matched, and that the criteria tree holds the deciding leaf with
the FHIR resources it rests on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from graph.networkx_store import NetworkXPathwayStore
from graph.queries import PathwayQueries
from services.medical_necessity.contract import CriterionOut, DeterminationOut
from services.medical_necessity.engine import assess
from tests.builders import give, note, order_for, patient
from tests.conftest import requires_data
from tests.necessity_specs import build_order, build_record, real_record

HERE = Path(__file__).parent
CASES: list[dict[str, Any]] = yaml.safe_load((HERE / "data" / "necessity_cases.yaml").read_text(encoding="utf-8"))
TWINS = HERE / "fixtures" / "twins"
DETERMINATIONS = {"meets", "does-not-meet", "insufficient-documentation", "not-on-any-pathway"}
CANCERS = {"nsclc", "sclc", "colon", "prostate", "breast"}  # the covered ones; "rectum" is not
LEAF_STATUS = {"does-not-meet": "unsatisfied", "insufficient-documentation": "unknown"}
FHIR_REFERENCE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(#\S+)?$")


@pytest.fixture(scope="module")
def queries() -> PathwayQueries:
    return PathwayQueries(NetworkXPathwayStore.load())


def _params() -> Iterator[Any]:
    for case in CASES:
        real = str(case["record"].get("file", "")).startswith(("synthea/", "mcode"))
        yield pytest.param(case, id=case["id"], marks=[requires_data] if real else [])


def _leaves(node: CriterionOut) -> list[CriterionOut]:
    if node.op == "leaf":
        return [node]
    return [leaf for child in node.children for leaf in _leaves(child)]


def _deciding_leaf(best: CriterionOut, label: str, determination: str) -> CriterionOut:
    """The leaf of the best alternative behind a ``deciding`` label ("not X" under a NOT)."""
    status = LEAF_STATUS[determination]
    for leaf in _leaves(best):
        if leaf.label == label and leaf.status == status:
            return leaf
        flipped = {"unsatisfied": "satisfied"}.get(status, status)
        if f"not {leaf.label}" == label and leaf.status == flipped:
            return leaf
    raise AssertionError(f"no leaf {label!r} ({status}) in the best alternative {best.label!r}")


def _assess(case: dict[str, Any], queries: PathwayQueries) -> DeterminationOut:
    record = build_record(case["record"])
    out = assess(record, queries, [build_order(case["order"], record)])
    (determination,) = out.determinations
    return determination


# -- the table ----------------------------------------------------------------------------------
def test_the_case_table_covers_five_cancers_and_four_determinations() -> None:
    assert len(CASES) >= 30
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert CANCERS <= {c["cancer"] for c in CASES}
    assert {c["expect"] for c in CASES} == DETERMINATIONS
    for cancer in CANCERS:  # every covered cancer has cases on both sides of the line, and off it
        outcomes = Counter((c["expect"], bool(c.get("off_pathway"))) for c in CASES if c["cancer"] == cancer)
        assert outcomes[("meets", False)] and outcomes[("does-not-meet", False)], cancer
        assert outcomes[("does-not-meet", True)], cancer  # an item this cancer's pathway does not offer
    assert all(c["cancer"] not in CANCERS for c in CASES if c["expect"] == "not-on-any-pathway")
    for case in CASES:
        assert case.get("why"), case["id"]
        outside = case["expect"] == "not-on-any-pathway" or case.get("off_pathway")
        decided = case["expect"] in LEAF_STATUS and not outside
        assert bool(case.get("deciding")) == decided, case["id"]  # a reason exactly where one decides
        assert outside or FHIR_REFERENCE.match(case["evidence"]), case["id"]


@pytest.mark.parametrize("case", list(_params()))
def test_necessity_case(case: dict[str, Any], queries: PathwayQueries) -> None:
    det = _assess(case, queries)
    expect = case["expect"]
    assert det.determination == expect, det.rationale
    assert det.needs_review is case.get("needs_review", False), det.rationale

    if expect == "not-on-any-pathway":
        assert det.deciding == [] and det.criteria is None and det.option is None and det.pathway is None
        assert case["rationale"] in det.rationale
        return
    if case.get("off_pathway"):  # the pathway of the patient's cancer does not offer the item
        assert det.criteria is None and det.option is None and det.pathway is not None
        assert det.deciding and det.deciding[0].startswith("on the ") and case["rationale"] in det.rationale
        return

    assert det.criteria is not None and det.pathway is not None and det.citations
    assert det.option == case.get("option", det.option)
    best = det.criteria.children[0]  # alternatives are listed best first
    assert det.option is not None and det.pathway.split("@")[0] == det.option.split(".")[0]

    if expect == "meets":
        assert det.deciding == []
        assert det.criteria.status == best.status == "satisfied"
        cited = {e.source for leaf in _leaves(best) if leaf.status == "satisfied" for e in leaf.evidence}
        assert case["evidence"] in cited, sorted(cited)
    else:
        label = next((d for d in det.deciding if case["deciding"] in d), None)
        assert label is not None, det.deciding
        for more in case.get("also_deciding", ()):
            assert any(more in d for d in det.deciding), det.deciding
        assert det.criteria.status == best.status == LEAF_STATUS[expect]
        leaf = _deciding_leaf(best, label, expect)
        sources = [e.source for e in leaf.evidence]
        assert sources and all(FHIR_REFERENCE.match(s) for s in sources), sources
        assert case["evidence"] in sources, sources
        assert label in det.rationale

    for alternative in case.get("alternatives", ()):
        found = [c for c in det.criteria.children if alternative["label"] in c.label]
        assert found, [c.label for c in det.criteria.children]
        assert {c.status for c in found} == {alternative["status"]}
        for c in found:
            failing = alternative.get("failing")
            assert failing is None or any(failing in f.label and f.status == "unsatisfied" for f in _leaves(c))

    if "passage" in case:
        judged = [leaf for leaf in _leaves(best) if leaf.passages]
        assert judged, "no passages attached"
        assert any(case["passage"] in p.text for leaf in judged for p in leaf.passages)
        for leaf in judged:
            assert leaf.judgement is not None and leaf.judgement.verdict == "needs-review"
            assert leaf.judgement.judge == "none" and leaf.status == "unknown"
            assert all(p.source.startswith("DocumentReference/") and p.end > p.start for p in leaf.passages)
        assert det.confidence == 0.5 and "note passages are attached" in det.rationale


# -- beyond single cases ------------------------------------------------------------------------
@requires_data
def test_sherman_orders_under_review_are_the_oncology_ones(queries: PathwayQueries) -> None:
    """Without a chosen order, every draft/active oncology order is reviewed, nothing else."""
    record = real_record("synthea/Sherman")
    out = assess(record, queries)
    got = {d.order.reference: d for d in out.determinations}
    assert set(got) == {
        "MedicationRequest/307ed80c-7a07-4d9f-b62a-04449fc207ee",  # docetaxel
        "MedicationRequest/45ca430e-5772-4640-a5ce-59e36da7101b",  # leuprolide
    }
    for det in got.values():  # both at the prostate cancer diagnosis, before any stage or metastasis is known
        assert det.determination == "insufficient-documentation" and "metastatic disease" in det.deciding
        assert det.pathway is not None and det.pathway.startswith("prostate@")


def test_a_note_written_after_the_order_is_not_its_support(queries: PathwayQueries) -> None:
    """Coded facts are read as of the order date, and so are the notes."""
    record = patient("nsclc", stage="IVA", markers={"EGFR": "negative", "ALK": "negative", "PD-L1": 30.0})
    give(record, "carboplatin", "pemetrexed", "pembrolizumab", on="2024-02-01")
    note(record, "Restaging CT shows disease progression in the liver.", "2024-09-01")
    (late,) = assess(record, queries, [order_for("docetaxel", on="2024-08-15")]).determinations
    (timely,) = assess(record, queries, [order_for("docetaxel", on="2024-09-02")]).determinations
    for det in (late, timely):
        assert det.determination == "insufficient-documentation" and det.needs_review

    def passages(det: DeterminationOut) -> list[str]:
        assert det.criteria is not None
        return [p.text for leaf in _leaves(det.criteria) for p in leaf.passages]

    assert passages(late) == []
    assert passages(timely) == ["Restaging CT shows disease progression in the liver."]


def test_determination_json_is_camel_case(queries: PathwayQueries) -> None:
    record = patient("nsclc", stage="IVA")
    out = assess(record, queries, [order_for("osimertinib")]).to_json()
    (det,) = out["determinations"]
    assert set(out) == {"patient", "determinations", "disclaimer", "issues"}
    assert set(det) == {
        "order",
        "determination",
        "confidence",
        "needsReview",
        "pathway",
        "option",
        "deciding",
        "criteria",
        "rationale",
        "citations",
    }
    assert det["determination"] == "insufficient-documentation"
    assert det["deciding"] == ["EGFR positive", "EGFR mutation result on record"]
    leaf = det["criteria"]["children"][0]["children"][-1]
    assert set(leaf) >= {"op", "label", "status", "fact", "evidence", "passages", "judgement", "children"}
