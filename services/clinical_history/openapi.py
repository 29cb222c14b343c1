"""OpenAPI 3 description of the Clinical-History API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from services.clinical_history.contract import Timeline

_ERRORS = {
    "400": "Not JSON, not FHIR, not a Bundle, or a resource breaks its R4 schema (strict mode)",
    "401": "Missing, expired or forged bearer token",
    "403": "Token lacks scope history.read",
    "413": "Body larger than MAX_BODY_BYTES",
    "415": "Content-Type is not application/fhir+json or application/json",
    "422": "Valid FHIR without a usable Patient, or the requested patient is not in the input",
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
        [(Timeline, "serialization")], by_alias=True, ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    schemas["OperationOutcome"] = {
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
    timeline = {
        "200": {
            "description": "The patient's timeline",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Timeline"}}},
        }
    }
    flags = [
        {
            "name": "patient",
            "in": "query",
            "schema": {"type": "string"},
            "description": "Patient id, when the bundle holds several patients",
        },
        {
            "name": "strict",
            "in": "query",
            "schema": {"type": "boolean"},
            "description": "Reject the whole input if any resource is invalid",
        },
        {
            "name": "notes",
            "in": "query",
            "schema": {"type": "boolean", "default": True},
            "description": "Run note extraction on free-text notes",
        },
    ]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "OncoTwin Clinical-History twin",
            "version": "1.0.0",
            "description": "Timeline of a patient's cancer care from FHIR R4. Demonstration content: "
            "requires clinical review before use.",
        },
        "servers": [{"url": "/history/v1"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": ["history.read"]}],
        "paths": {
            "/timeline": {
                "post": {
                    "summary": "Timeline from a posted FHIR Bundle (any Bundle type)",
                    "parameters": flags,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/fhir+json": {"schema": {"type": "object"}},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "responses": {**timeline, **_outcomes("400", "401", "403", "413", "415", "422")},
                }
            },
            "/patients/{id}/timeline": {
                "get": {
                    "summary": "Timeline of a patient pulled from the configured FHIR server (FHIR_BASE_URL)",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                        *flags[1:],
                    ],
                    "responses": {
                        **timeline,
                        **_outcomes("400", "401", "403", "422"),
                        "404": {"description": "Patient not found on the FHIR server"},
                        "502": {"description": "FHIR server error"},
                        "503": {"description": "No FHIR server configured"},
                        "504": {"description": "FHIR server timed out"},
                    },
                }
            },
        },
    }
