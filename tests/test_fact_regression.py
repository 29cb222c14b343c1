"""The developer data gives the same facts as before the fact layer was rebuilt (issue 13), or
better, and every difference is one listed here with its reason."""

from __future__ import annotations

import json
from pathlib import Path

from shared.fhir.ingest import load_path
from tests.conftest import FHIR, requires_data
from tests.facts_summary import summarise

pytestmark = requires_data
BEFORE = json.loads((Path(__file__).parent / "data" / "facts_before_issue_13.json").read_text())
STU1 = "fhir/mcode-stu1-examples|mCODEPatientExample01"
PRIMARY = "Condition/mCODEPrimaryCancerConditionExample01"
VARIANT = "Observation/mCODECancerGeneticVariantExample0"
# (record, fact before, fact now): intended changes.
INTENDED = [
    # A variant's value is now its DNA/protein change, not the word "Present".
    (
        STU1,
        repr(["biomarker", PRIMARY, f"{VARIANT}1", "STK11", "positive", "Present", None]),
        repr(["biomarker", PRIMARY, f"{VARIANT}1", "STK11", "positive", "g.1171707G>A", None]),
    ),
    (
        STU1,
        repr(["biomarker", PRIMARY, f"{VARIANT}2", "BRCA1", "positive", "Present", None]),
        repr(["biomarker", PRIMARY, f"{VARIANT}2", "BRCA1", "positive", "g.126148_126152GTAAA[1]", None]),
    ),
    # A stage summary cites the Condition itself (the element says stage[0].summary), not "#stage[0]".
    (
        STU1,
        repr(["stage", PRIMARY, f"{PRIMARY}#stage[0]", "IIIC", "summary", None, None, None]),
        repr(["stage", PRIMARY, PRIMARY, "IIIC", "summary", None, None, None]),
    ),
]


def _now() -> dict[str, list[str]]:
    inputs = [*sorted((FHIR / "synthea").glob("*.json")), FHIR / "synthea-bulk-10", FHIR / "mcode-stu1-examples"]
    return {f"{path.parent.name}/{path.name}|{r.id}": summarise(r) for path in inputs for r in load_path(path).records}


def test_the_developer_data_gives_the_same_facts_or_the_intended_changes():
    now = _now()
    before = {k: v for k, v in BEFORE.items() if not k.startswith("_")}
    assert set(now) == set(before)
    expected = {k: set(v) for k, v in before.items()}
    for record, old, new in INTENDED:
        assert old in expected[record], f"intended change no longer applies: {old}"
        expected[record] = (expected[record] - {old}) | {new}
    for record in sorted(before):
        assert set(now[record]) == expected[record], record
