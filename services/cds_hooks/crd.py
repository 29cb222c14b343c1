"""The Da Vinci CRD coverage-information extension on a draft order (CRD STU 2.0.1 codes).

``covered``: covered (meets) / not-covered (does not meet, on no pathway) / conditional
(insufficient documentation). ``doc-needed``: ``no-doc`` when met, ``clinical`` when the record
lacks the documentation; absent for not-covered, where no documentation changes the answer.
``coverage`` points at the patient's Coverage when the client gave one, else says there was none.
This is a pathway assessment, not a payer decision, and ``reason`` says so.
"""

from __future__ import annotations

import copy
import uuid
from datetime import date
from typing import Any

from services.medical_necessity.contract import DeterminationOut

CRD_COVERAGE_INFORMATION = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
COVERED = {
    "meets": "covered",
    "insufficient-documentation": "conditional",
    "does-not-meet": "not-covered",
    "not-on-any-pathway": "not-covered",
}
DOC_NEEDED = {"meets": "no-doc", "insufficient-documentation": "clinical"}
NO_COVERAGE = "no Coverage provided; pathway assessment only"


def coverage_information(det: DeterminationOut, coverage: dict[str, Any] | None, today: date) -> dict[str, Any]:
    if coverage is not None and isinstance(coverage.get("id"), str):
        coverage_ref = {"reference": f"Coverage/{coverage['id']}"}
    else:
        coverage_ref = {"display": NO_COVERAGE}
    subs: list[dict[str, Any]] = [
        {"url": "coverage", "valueReference": coverage_ref},
        {"url": "covered", "valueCode": COVERED[det.determination]},
    ]
    if det.determination in DOC_NEEDED:
        subs.append({"url": "doc-needed", "valueCode": DOC_NEEDED[det.determination]})
    subs += [
        {"url": "reason", "valueCodeableConcept": {"text": _reason(det)}},
        {"url": "date", "valueDate": today.isoformat()},
        {"url": "coverage-assertion-id", "valueString": str(uuid.uuid4())},
    ]
    return {"url": CRD_COVERAGE_INFORMATION, "extension": subs}


def with_coverage_information(
    draft: dict[str, Any], det: DeterminationOut, coverage: dict[str, Any] | None, today: date
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
