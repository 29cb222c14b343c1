"""OpenAPI 3 description of the Care-Navigation twin API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from services.care_navigation.contract import NavigationOut
from shared.openapi import FHIR_BODY, PATIENT, STRICT, contract_schemas, document, error_texts, outcomes, query

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

GUIDANCE_BUNDLE = {
    "type": "object",
    "description": "FHIR R4 Bundle (type collection): one GuidanceResponse per pathway (moduleCanonical = the "
    "pathway's PlanDefinition|version; status success, data-required or failure; note = position, off-pathway "
    "lines, sources; evaluationMessage = OperationOutcome of missing information; result = RequestGroup), the "
    "RequestGroup (actions: next steps with timingDateTime due dates, care gaps with priority) and "
    "OperationOutcomes, referenced by urn:uuid full URLs.",
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
                            "resourceType": {"enum": ["GuidanceResponse", "RequestGroup", "OperationOutcome"]}
                        },
                    },
                },
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    schemas = contract_schemas([NavigationOut])
    schemas["GuidanceBundle"] = GUIDANCE_BUNDLE
    content = {
        "application/json": {"schema": {"$ref": "#/components/schemas/NavigationOut"}},
        "application/fhir+json": {"schema": {"$ref": "#/components/schemas/GuidanceBundle"}},
    }
    paths = {
        "/evaluate": {
            "post": {
                "summary": "Navigate a patient in a posted FHIR Bundle (any Bundle type) along the pathways",
                "parameters": [
                    PATIENT,
                    query(
                        "asOf",
                        {"type": "string", "format": "date"},
                        "Evaluate as of this date (YYYY-MM-DD): what is done, due and overdue then; default today",
                    ),
                    STRICT,
                    FORMAT,
                ],
                "requestBody": FHIR_BODY,
                "responses": {
                    "200": {
                        "description": "The patient's position, next steps, gaps and off-pathway lines per pathway",
                        "content": content,
                    },
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
        "OncoTwin Care-Navigation twin",
        "Where a patient stands on each applicable care pathway, what is due, care gaps and off-pathway lines, "
        "from FHIR R4.",
        "/navigation/v1",
        "navigation.read",
        schemas,
        paths,
    )
