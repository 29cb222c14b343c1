"""OpenAPI 3.1 description of the Medical-Necessity twin API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from services.medical_necessity.contract import NecessityOut
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
    "necessity.read",
    bad_request=", or a bad query parameter (order not MedicationRequest/<id> or ServiceRequest/<id>, "
    "format not json/fhir)",
    unprocessable=", or the requested order is not a draft or active order of that patient",
)
FORMAT = query(
    "format",
    {"type": "string", "enum": ["json", "fhir"], "default": "json"},
    "json: the necessity contract; fhir: a Bundle of GuidanceResponse + RequestGroup",
)

GUIDANCE_BUNDLE = collection_bundle(
    "FHIR R4 Bundle (type collection): one GuidanceResponse per order (moduleCanonical = the "
    "pathway's PlanDefinition|version; status success (meets / does-not-meet / not an option), data-required "
    "(insufficient documentation, with dataRequirement) or failure (no pathway applies); reasonReference = the "
    "cancer Condition, reasonCode = the order's code; note = determination, rationale, deciding criteria, sources; "
    "outputParameters = Parameters with the determination; result = RequestGroup), the RequestGroup (basedOn the "
    "order; actions: the order with the matched pathway option, and one Task per criterion to document), Tasks, "
    "Parameters and OperationOutcomes, referenced by urn:uuid full URLs.",
    ["GuidanceResponse", "RequestGroup", "Task", "Parameters", "OperationOutcome"],
)


def openapi_document() -> dict[str, Any]:
    schemas = contract_schemas([NecessityOut])
    schemas["GuidanceBundle"] = GUIDANCE_BUNDLE
    order = query(
        "order",
        {"type": "string", "pattern": "^(MedicationRequest|ServiceRequest)/[A-Za-z0-9\\-.]{1,64}$"},
        "The one order to review; default: every draft, active or on-hold oncology order",
    )
    paths = evaluate_paths(
        "Review the orders of a patient in a posted FHIR Bundle (any Bundle type)",
        [PATIENT, order, STRICT, FORMAT],
        "One determination per reviewed order",
        "NecessityOut",
        ERRORS,
        "necessity.read",
    )
    return document(
        "OncoTwin Medical-Necessity twin",
        "Whether ordered drugs, tests and procedures are supported by the care pathways, with the criteria "
        "that decided it and their evidence, from FHIR R4; not payer policy.",
        "/necessity/v1",
        schemas,
        paths,
    )
