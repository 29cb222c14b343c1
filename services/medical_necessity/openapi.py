"""OpenAPI 3 description of the Medical-Necessity API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from services.medical_necessity.contract import NecessityOut

_ERRORS = {
    "400": "Not JSON, not FHIR, not a Bundle, a resource breaks its R4 schema (strict mode), or a bad query "
    "parameter (order not MedicationRequest/<id> or ServiceRequest/<id>, format not json/fhir)",
    "401": "Missing, expired or forged bearer token",
    "403": "Token lacks scope necessity.read",
    "413": "Body larger than MAX_BODY_BYTES",
    "415": "Content-Type is not application/fhir+json or application/json",
    "422": "Valid FHIR without a usable Patient, the requested patient is not in the input, or the requested "
    "order is not a draft or active order of that patient",
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
        [(NecessityOut, "serialization")], by_alias=True, ref_template="#/components/schemas/{model}"
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
            "name": "order",
            "in": "query",
            "schema": {"type": "string", "pattern": "^(MedicationRequest|ServiceRequest)/[A-Za-z0-9\\-.]{1,64}$"},
            "description": "The one order to review; default: every draft, active or on-hold oncology order",
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
            "description": "json: the necessity contract; fhir: a Bundle of GuidanceResponse + RequestGroup",
        },
    ]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "OncoTwin Medical-Necessity twin",
            "version": "1.0.0",
            "description": "Whether ordered drugs, tests and procedures are supported by the care pathways, with "
            "the criteria that decided it and their evidence, from FHIR R4. Demonstration content: requires "
            "clinical review before use; not payer policy.",
        },
        "servers": [{"url": "/necessity/v1"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": ["necessity.read"]}],
        "paths": {
            "/evaluate": {
                "post": {
                    "summary": "Review the orders of a patient in a posted FHIR Bundle (any Bundle type)",
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
                            "description": "One determination per reviewed order",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/NecessityOut"}},
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
