"""The hot path reuses an ingested record for the same content (issue 18): the same answers as a fresh
ingestion on every fixture Bundle, before and after the engines have read the record (they never change it)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from services.care_navigation.engine import navigate
from services.clinical_history.timeline import build_timeline
from services.medical_necessity.engine import assess
from shared.fhir.ingest import load_bundle, load_resources
from tests.conftest import FHIR, requires_data
from tests.necessity_eval import queries

pytestmark = requires_data
AS_OF = date(2026, 12, 1)
BUNDLES = sorted(
    p for folder in ("synthea", "mcode-stu2-examples", "mcode-stu3-examples") for p in (FHIR / folder).glob("*.json")
)


def _answers(record) -> tuple:  # type: ignore[no-untyped-def]
    return (
        build_timeline(record).to_json(),
        navigate(record, queries(), as_of=AS_OF).to_json(),
        assess(record, queries()).to_json(),
    )


@pytest.mark.parametrize("path", BUNDLES, ids=lambda p: f"{p.parent.name}/{p.stem[:24]}")
def test_a_reused_record_answers_as_a_fresh_one(path: Path) -> None:
    data = path.read_bytes()
    first = load_bundle(data, reuse=True)
    fresh = {r.id: _answers(r) for r in load_bundle(data).records}
    assert {r.id: _answers(r) for r in first.records} == fresh  # the engines ran on the shared record ...
    again = load_bundle(data, reuse=True)
    assert again is first  # ... which the next call gets without ingesting
    assert {r.id: _answers(r) for r in again.records} == fresh  # ... unchanged by them


def test_other_content_or_strictness_is_another_record() -> None:
    data = BUNDLES[0].read_bytes()
    first = load_bundle(data, reuse=True)
    assert load_bundle(data + b" ", reuse=True) is not first  # other bytes
    assert load_bundle(data, reuse=True, strict=True) is not first  # other rules
    resources = [e["resource"] for e in __import__("json").loads(data)["entry"]]
    a = load_resources(resources, origin="cds", reuse=True)
    assert load_resources(list(reversed(resources)), origin="cds", reuse=True) is not a  # order is content
    assert load_resources([dict(r) for r in resources], origin="cds", reuse=True) is a  # equal JSON: same
