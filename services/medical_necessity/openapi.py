"""OpenAPI 3 description of the Medical-Necessity twin API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from services.medical_necessity.contract import NecessityOut
from shared.openapi import FHIR_BODY, PATIENT, STRICT, contract_schemas, document, error_texts, outcomes, query

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

GUIDANCE_BUNDLE = {
    "type": "object",
    "description": "FHIR R4 Bundle (type collection): one GuidanceResponse per order (moduleCanonical = the "
    "pathway's PlanDefinition|version; status success (meets / does-not-meet / not an option), data-required "
    "(insufficient documentation, with dataRequirement) or failure (no pathway applies); reasonReference = the "
    "order and the cancer Condition; note = determination, rationale, deciding criteria, sources; "
    "outputParameters = Parameters with the determination; result = RequestGroup), the RequestGroup (action: "
    "the determination for the order with the matched pathway option and the criteria to document or not met), "
    "Parameters and OperationOutcomes, referenced by urn:uuid full URLs.",
    "properties": {
        "resourceType": {"const": "Bundle"},
        "type": {"const": "collection"},
        "timestamp": {"type": "string"},
        "entry": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "fullUrl": {"type": "string"},
                    "resource": {
                        "type": "object",
                        "properties": {
                            "resourceType": {
                                "enum": ["GuidanceResponse", "RequestGroup", "Parameters", "OperationOutcome"]
                            }
                        },
                    },
                },
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    schemas = contract_schemas([NecessityOut])
    schemas["GuidanceBundle"] = GUIDANCE_BUNDLE
    content = {
        "application/json": {"schema": {"$ref": "#/components/schemas/NecessityOut"}},
        "application/fhir+json": {"schema": {"$ref": "#/components/schemas/GuidanceBundle"}},
    }
    paths = {
        "/evaluate": {
            "post": {
                "summary": "Review the orders of a patient in a posted FHIR Bundle (any Bundle type)",
                "parameters": [
                    PATIENT,
                    query(
                        "order",
                        {"type": "string", "pattern": "^(MedicationRequest|ServiceRequest)/[A-Za-z0-9\\-.]{1,64}$"},
                        "The one order to review; default: every draft, active or on-hold oncology order",
                    ),
                    STRICT,
                    FORMAT,
                ],
                "requestBody": FHIR_BODY,
                "responses": {
                    "200": {"description": "One determination per reviewed order", "content": content},
                    **outcomes(ERRORS, "400", "401", "403", "413", "415", "422"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3 document"}, **outcomes(ERRORS, "401")},
            }
        },
    }
    return document(
        "OncoTwin Medical-Necessity twin",
        "Whether ordered drugs, tests and procedures are supported by the care pathways, with the criteria "
        "that decided it and their evidence, from FHIR R4; not payer policy.",
        "/necessity/v1",
        "necessity.read",
        schemas,
        paths,
    )
