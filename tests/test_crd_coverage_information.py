"""The Da Vinci CRD coverage-information extension keeps every CRD STU 2.1 invariant (crd-ci-q1..q8).

The expressions are the IG's own (CRD 2.1.0, ext-coverage-information), evaluated with fhirpathpy on
the extension each determination produces; ``memberOf`` (q7) needs a terminology server, so q7 is
checked by its meaning (``reason`` carries text).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models

from services.cds_hooks.crd import (
    COVERED,
    CRD_COVERAGE_INFORMATION,
    CRD_VERSION,
    coverage_information,
    with_coverage_information,
)
from services.medical_necessity.contract import DeterminationOut

INVARIANTS = {  # CRD STU 2.1 (2.1.0), StructureDefinition ext-coverage-information
    "crd-ci-q1": "extension.where(url='questionnaire').exists() implies extension.where(url = 'doc-needed').exists()",
    "crd-ci-q2": "extension.where(url = 'covered' and value = 'not-covered').exists() implies "
    "extension.where(url = 'pa-needed').exists().not()",
    "crd-ci-q3": "extension.where((url = 'covered' or url = 'pa-needed' or url = 'doc-needed') and value = "
    "'conditional').count() >= 1 implies extension.where(url = 'info-needed').exists()",
    "crd-ci-q3-converse": "extension.where(url = 'info-needed').exists() implies extension.where((url = 'covered' or "
    "url = 'pa-needed' or url = 'doc-needed') and value = 'conditional').count() >= 1",
    "crd-ci-q4": "extension.where(url = 'pa-needed' and (value = 'satisfied' or value = 'noauth' or value = "
    "'not-covered')) and extension.where(url = 'doc-purpose').exists() implies extension.where(url = "
    "'doc-purpose').all(value != 'withpa')",
    "crd-ci-q5": "extension.where(url = 'pa-needed' and value = 'satisfied').exists() = extension.where(url = "
    "'satisfied-pa-id').exists()",
    "crd-ci-q6": "extension.where(url = 'info-needed' and value = 'OTH').exists() implies "
    "extension.where(url = 'reason').exists()",
    "crd-ci-q8": "extension.where(url = 'doc-purpose' and value != 'conditional').exists() implies "
    "extension.where(url = 'reason').exists()",
}
COVERAGE = {"resourceType": "Coverage", "id": "cov-1", "status": "active", "beneficiary": {"reference": "Patient/p"}}


def determination(kind: str) -> DeterminationOut:
    return DeterminationOut.model_construct(
        determination=kind, pathway="nsclc@2026.11", deciding=["EGFR positive"] if kind != "meets" else []
    )


def subs(extension: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for sub in extension["extension"]:
        out.setdefault(sub["url"], []).append(next(v for k, v in sub.items() if k.startswith("value")))
    return out


def test_the_crd_version_is_stated() -> None:
    assert CRD_VERSION == "2.1.0"


@pytest.mark.parametrize("kind", sorted(COVERED))
@pytest.mark.parametrize("key", sorted(INVARIANTS))
def test_every_invariant_holds_for_every_determination(kind: str, key: str) -> None:
    extension = coverage_information(determination(kind), COVERAGE, date(2026, 12, 7))
    typed = {"base": "Extension", "expression": INVARIANTS[key]}  # typed, so ``value`` finds valueCode
    assert fhirpathpy.evaluate(extension, typed, model=models["r4"]) == [True], (key, subs(extension))


def test_the_invariants_are_not_vacuous() -> None:
    conditional = coverage_information(determination("insufficient-documentation"), COVERAGE, date(2026, 12, 7))
    without = {**conditional, "extension": [e for e in conditional["extension"] if e["url"] != "info-needed"]}
    typed = {"base": "Extension", "expression": INVARIANTS["crd-ci-q3"]}
    assert fhirpathpy.evaluate(without, typed, model=models["r4"]) == [False]  # conditional without info-needed
    met = coverage_information(determination("meets"), COVERAGE, date(2026, 12, 7))
    extra = {**met, "extension": [*met["extension"], {"url": "info-needed", "valueCode": "OTH"}]}
    typed = {"base": "Extension", "expression": INVARIANTS["crd-ci-q3-converse"]}
    assert fhirpathpy.evaluate(extra, typed, model=models["r4"]) == [False]


@pytest.mark.parametrize("kind", sorted(COVERED))
def test_reason_has_text_and_the_coverage_is_a_real_reference(kind: str) -> None:
    extension = coverage_information(determination(kind), COVERAGE, date(2026, 12, 7))
    parts = subs(extension)
    assert extension["url"] == CRD_COVERAGE_INFORMATION
    assert parts["reason"][0]["text"]  # crd-ci-q7: text, as no coding from coverageAssertionReasons is sent
    assert parts["coverage"] == [{"reference": "Coverage/cov-1"}]  # 1..1 Reference(Coverage), never display-only
    assert len(parts["covered"]) == len(parts["date"]) == len(parts["coverage-assertion-id"]) == 1


def test_conditional_says_what_information_is_needed() -> None:
    parts = subs(coverage_information(determination("insufficient-documentation"), COVERAGE, date(2026, 12, 7)))
    assert parts["covered"] == ["conditional"] and parts["info-needed"] == ["OTH"]
    assert "EGFR positive" in parts["reason"][0]["text"]  # crd-ci-q6: OTH needs a reason naming it
    for kind in ("meets", "does-not-meet", "not-on-any-pathway"):
        assert "info-needed" not in subs(coverage_information(determination(kind), COVERAGE, date(2026, 12, 7)))


def test_no_coverage_no_assertion() -> None:
    with pytest.raises(ValueError, match="Coverage"):
        coverage_information(determination("meets"), {"resourceType": "Coverage"}, date(2026, 12, 7))


def test_an_earlier_assertion_for_the_same_coverage_is_replaced() -> None:
    draft = {"resourceType": "MedicationRequest", "id": "d", "status": "draft", "intent": "order"}
    once = with_coverage_information(draft, determination("meets"), COVERAGE, date(2026, 12, 7))
    twice = with_coverage_information(once, determination("does-not-meet"), COVERAGE, date(2026, 12, 7))
    (ext,) = [e for e in twice["extension"] if e["url"] == CRD_COVERAGE_INFORMATION]
    assert subs(ext)["covered"] == ["not-covered"]
