"""The Da Vinci CRD coverage-information extension on a draft order, as CRD STU 2.1 (2.1.0) defines it.

``covered``: covered (meets) / not-covered (does not meet, on no pathway) / conditional
(insufficient documentation). ``doc-needed``: ``no-doc`` when met, ``clinical`` when the record
lacks the documentation; absent for not-covered, where no documentation changes the answer.
This is a pathway assessment, not a payer decision, and ``reason`` says so.

The STU 2.1 invariants this keeps (``tests/test_crd_coverage_information.py`` checks each):
crd-ci-q1 questionnaire only with doc-needed (we send none); crd-ci-q2 no pa-needed when
not-covered (we never send pa-needed); crd-ci-q3 ``info-needed`` SHALL exist if and only if
covered, pa-needed or doc-needed is ``conditional``: ours is ``OTH`` (the missing clinical
documentation is none of performer/location/timeframe/contract-window/detail-code);
crd-ci-q4 doc-purpose (none sent); crd-ci-q5 satisfied-pa-id only with pa-needed satisfied (neither);
crd-ci-q6 info-needed ``OTH`` needs ``reason`` (always sent); crd-ci-q7 ``reason`` has text;
crd-ci-q8 doc-purpose (none sent).

``coverage`` is 1..1 ``Reference(Coverage)`` in the extension (STU 2.1: "Reference to Coverage", the
coverage the assertion is about), so the extension exists only for a real Coverage the client
gave: with none, no assertion is made (no system action), never a display-only reference.
"""

from __future__ import annotations

import copy
import uuid
from datetime import date
from typing import Any

from services.medical_necessity.contract import DeterminationOut

CRD_VERSION = "2.1.0"  # Da Vinci CRD STU 2.1: the extension's definition and invariants followed here
CRD_COVERAGE_INFORMATION = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
INFO_NEEDED_OTHER = "OTH"  # CRD 2.1 info-needed code "other": reason says what (crd-ci-q6)
COVERED = {
    "meets": "covered",
    "insufficient-documentation": "conditional",
    "does-not-meet": "not-covered",
    "not-on-any-pathway": "not-covered",
}
DOC_NEEDED = {"meets": "no-doc", "insufficient-documentation": "clinical"}
CONDITIONAL = "conditional"


def coverage_reference(coverage: dict[str, Any] | None) -> dict[str, str] | None:
    """The literal reference to the client's Coverage; None without one (then no extension at all)."""
    if coverage is not None and isinstance(coverage.get("id"), str) and coverage["id"]:
        return {"reference": f"Coverage/{coverage['id']}"}
    return None


def coverage_information(det: DeterminationOut, coverage: dict[str, Any], today: date) -> dict[str, Any]:
    coverage_ref = coverage_reference(coverage)
    if coverage_ref is None:
        raise ValueError("CRD coverage-information needs a Coverage (sub-extension coverage is 1..1)")
    covered = COVERED[det.determination]
    subs: list[dict[str, Any]] = [
        {"url": "coverage", "valueReference": coverage_ref},
        {"url": "covered", "valueCode": covered},
    ]
    if det.determination in DOC_NEEDED:
        subs.append({"url": "doc-needed", "valueCode": DOC_NEEDED[det.determination]})
    if CONDITIONAL in {covered, DOC_NEEDED.get(det.determination)}:  # crd-ci-q3, both directions
        subs.append({"url": "info-needed", "valueCode": INFO_NEEDED_OTHER})
    subs += [
        {"url": "reason", "valueCodeableConcept": {"text": _reason(det)}},
        {"url": "date", "valueDate": today.isoformat()},
        {"url": "coverage-assertion-id", "valueString": str(uuid.uuid4())},
    ]
    return {"url": CRD_COVERAGE_INFORMATION, "extension": subs}


def with_coverage_information(
    draft: dict[str, Any], det: DeterminationOut, coverage: dict[str, Any], today: date
) -> dict[str, Any]:
    """The whole draft (an ``update`` replaces the resource) with this assessment added; an earlier
    assessment for the same coverage is replaced, any other extension is kept."""
    extension = coverage_information(det, coverage, today)
    coverage_ref = extension["extension"][0]["valueReference"]

    def same_coverage(e: Any) -> bool:
        return (
            isinstance(e, dict)
            and e.get("url") == CRD_COVERAGE_INFORMATION
            and any(
                isinstance(sub, dict) and sub.get("url") == "coverage" and sub.get("valueReference") == coverage_ref
                for sub in e.get("extension") or []
            )
        )

    updated = copy.deepcopy(draft)
    updated["extension"] = [e for e in updated.get("extension") or [] if not same_coverage(e)] + [extension]
    return updated


def _reason(det: DeterminationOut) -> str:
    head = "Pathway assessment, not a payer determination (OncoTwin demonstration pathways"
    tail = f": {'; '.join(det.deciding[:3])}" if det.deciding else ""
    return f"{head}, {det.pathway or 'no applicable pathway'}): {det.determination}{tail}"[:500]
