"""OpenAPI 3.1 description of the Care-Navigation twin API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from services.care_navigation.contract import NavigationOut
from shared.openapi import (
    PATIENT,
    STRICT,
    collection_bundle,
    contract_schemas,
    document,
    error_texts,
    evaluate_paths,
    query,
)

ERRORS = error_texts(
    "navigation.read",
    bad_request=", or a bad query parameter (asOf not YYYY-MM-DD, format not json/fhir)",
    unprocessable="",
)
FORMAT = query(
    "format",
    {"type": "string", "enum": ["json", "fhir"], "default": "json"},
    "json: the navigation contract; fhir: a Bundle of GuidanceResponse + RequestGroup",
)

GUIDANCE_BUNDLE = collection_bundle(
    "FHIR R4 Bundle (type collection): one GuidanceResponse per pathway (moduleCanonical = the "
    "pathway's PlanDefinition|version; status success, data-required or failure; note = position, off-pathway "
    "lines, sources; evaluationMessage = OperationOutcome of missing information; result = RequestGroup), the "
    "RequestGroup (actions: next steps with timingDateTime due dates, care gaps with priority, each pointing to "
    "a draft Task), the Tasks and OperationOutcomes, referenced by urn:uuid full URLs. A deceased patient's "
    "response notes the death and proposes nothing.",
    ["GuidanceResponse", "RequestGroup", "Task", "OperationOutcome"],
)


def openapi_document() -> dict[str, Any]:
    schemas = contract_schemas([NavigationOut])
    schemas["GuidanceBundle"] = GUIDANCE_BUNDLE
    paths = evaluate_paths(
        "Navigate a patient in a posted FHIR Bundle (any Bundle type) along the pathways",
        [
            PATIENT,
            query(
                "asOf",
                {"type": "string", "format": "date"},
                "Evaluate as of this date (YYYY-MM-DD): what is done, due and overdue then; default today",
            ),
            STRICT,
            FORMAT,
        ],
        "The patient's position, next steps, gaps and off-pathway lines per pathway",
        "NavigationOut",
        ERRORS,
        "navigation.read",
    )
    return document(
        "OncoTwin Care-Navigation twin",
        "Where a patient stands on each applicable care pathway, what is due, care gaps and off-pathway lines, "
        "from FHIR R4.",
        "/navigation/v1",
        schemas,
        paths,
    )
