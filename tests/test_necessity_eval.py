"""Every case of the medical-necessity evaluation set is a test; the set as a whole meets the
accuracy goals (``make eval`` prints the figures)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.terminology import terminology
from tests.necessity_eval import DETERMINATIONS, cases, determine, score

CANCERS = {"nsclc", "sclc", "colon", "prostate", "breast", "other"}


def test_the_set_is_large_spread_and_well_formed():
    found = cases()
    assert len(found) >= 150
    assert len({c["id"] for c in found}) == len(found), "case ids are unique"
    assert {c["cancer"] for c in found} == CANCERS
    assert {c["expect"] for c in found} == set(DETERMINATIONS)
    for case in found:
        assert case.get("why"), case["id"]  # the clinical reason and its public source
        drug = case["order"].get("drug")
        assert drug is None or terminology().drug_by_name(drug) is not None, case["id"]


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["id"])
def test_case(case: dict[str, Any]):
    det = determine(case)
    assert det.determination == case["expect"], f"{case['why']} | engine: {det.rationale}"
    if case.get("deciding"):
        assert any(case["deciding"].lower() in d.lower() for d in det.deciding), det.deciding


def test_accuracy_goals():
    scores = score()
    assert scores.accuracy >= 0.95, scores.misses
    assert scores.harmful / scores.total <= 0.02, scores.misses
