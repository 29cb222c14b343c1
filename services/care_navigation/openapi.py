"""OpenAPI 3 description of the Care-Navigation API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from services.care_navigation.contract import NavigationOut

_ERRORS = {
    "400": "Not JSON, not FHIR, not a Bundle, a resource breaks its R4 schema (strict mode), or a bad query "
    "parameter (asOf not YYYY-MM-DD, format not json/fhir)",
    "401": "Missing, expired or forged bearer token",
    "403": "Token lacks scope navigation.read",
    "413": "Body larger than MAX_BODY_BYTES",
    "415": "Content-Type is not application/fhir+json or application/json",
    "422": "Valid FHIR without a usable Patient, or the requested patient is not in the input",
}

OPERATION_OUTCOME = {
    "type": "object",
    "description": "FHIR R4 OperationOutcome",
    "properties": {
        "resourceType": {"const": "OperationOutcome"},
        "issue": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "severity": {"type": "string"},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

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


def _outcomes(*codes: str) -> dict[str, Any]:
    return {
        code: {
            "description": _ERRORS[code],
            "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}},
        }
        for code in codes
    }


def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(NavigationOut, "serialization")], by_alias=True, ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    schemas["OperationOutcome"] = OPERATION_OUTCOME
    schemas["GuidanceBundle"] = GUIDANCE_BUNDLE
    parameters = [
        {
            "name": "patient",
            "in": "query",
            "schema": {"type": "string"},
            "description": "Patient id, when the bundle holds several patients",
        },
        {
            "name": "asOf",
            "in": "query",
            "schema": {"type": "string", "format": "date"},
            "description": "Evaluate as of this date (YYYY-MM-DD): what is done, due and overdue then; default today",
        },
        {
            "name": "strict",
            "in": "query",
            "schema": {"type": "boolean"},
            "description": "Reject the whole input if any resource is invalid",
        },
        {
            "name": "format",
            "in": "query",
            "schema": {"type": "string", "enum": ["json", "fhir"], "default": "json"},
            "description": "json: the navigation contract; fhir: a Bundle of GuidanceResponse + RequestGroup",
        },
    ]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "OncoTwin Care-Navigation twin",
            "version": "1.0.0",
            "description": "Where a patient stands on each applicable care pathway, what is due, care gaps and "
            "off-pathway lines, from FHIR R4. Demonstration content: requires clinical review before use.",
        },
        "servers": [{"url": "/navigation/v1"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": ["navigation.read"]}],
        "paths": {
            "/evaluate": {
                "post": {
                    "summary": "Navigate a patient in a posted FHIR Bundle (any Bundle type) along the pathways",
                    "parameters": parameters,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/fhir+json": {"schema": {"type": "object"}},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The patient's position, next steps, gaps and off-pathway lines per pathway",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/NavigationOut"}},
                                "application/fhir+json": {"schema": {"$ref": "#/components/schemas/GuidanceBundle"}},
                            },
                        },
                        **_outcomes("400", "401", "403", "413", "415", "422"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3 document"}, **_outcomes("401")},
                }
            },
        },
    }
