"""The parts every service's OpenAPI 3 document shares: errors, security, bodies, the envelope.

Each service writes only what is its own (paths, parameters, its contract's schemas); error
responses are FHIR OperationOutcomes described once here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

OPERATION_OUTCOME: dict[str, Any] = {
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
FHIR_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/fhir+json": {"schema": {"type": "object"}},
        "application/json": {"schema": {"type": "object"}},
    },
}


def error_texts(scope: str, bad_request: str = "", unprocessable: str = "") -> dict[str, str]:
    """The standard error descriptions; ``bad_request``/``unprocessable`` add a service's own causes."""
    return {
        "400": "Not JSON, not FHIR, not a Bundle, or a resource breaks its R4 schema (strict mode)" + bad_request,
        "401": "Missing, expired or forged bearer token",
        "403": f"Token lacks scope {scope}",
        "413": "Body larger than MAX_BODY_BYTES",
        "415": "Content-Type is not application/fhir+json or application/json",
        "422": "Valid FHIR without a usable Patient, or the requested patient is not in the input" + unprocessable,
    }


def outcomes(texts: dict[str, str], *codes: str) -> dict[str, Any]:
    """Error responses, each an OperationOutcome."""
    schema = {"$ref": "#/components/schemas/OperationOutcome"}
    return {
        code: {"description": texts[code], "content": {"application/fhir+json": {"schema": schema}}} for code in codes
    }


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


PATIENT = query("patient", {"type": "string"}, "Patient id, when the bundle holds several patients")
STRICT = query("strict", {"type": "boolean"}, "Reject the whole input if any resource is invalid")


def contract_schemas(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """JSON schemas of the contracts (camelCase, as serialised) plus OperationOutcome."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in models], by_alias=True, ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    schemas["OperationOutcome"] = OPERATION_OUTCOME
    return schemas


def document(
    title: str, description: str, server: str, scope: str, schemas: dict[str, Any], paths: dict[str, Any]
) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": "1.0.0",
            "description": description + " Demonstration content: requires clinical review before use.",
        },
        "servers": [{"url": server}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": [scope]}],
        "paths": paths,
    }


def collection_bundle(description: str, resource_types: list[str]) -> dict[str, Any]:
    """Schema of a FHIR Bundle of type collection holding the named resource types."""
    resource = {"type": "object", "properties": {"resourceType": {"enum": resource_types}}}
    entry = {"type": "object", "properties": {"fullUrl": {"type": "string"}, "resource": resource}}
    return {
        "type": "object",
        "description": description,
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"const": "collection"},
            "timestamp": {"type": "string"},
            "entry": {"type": "array", "items": entry},
        },
    }


def evaluate_paths(
    summary: str, parameters: list[dict[str, Any]], ok: str, contract: str, errors: dict[str, str]
) -> dict[str, Any]:
    """``POST /evaluate`` (a posted Bundle -> the contract as JSON, or a GuidanceBundle with
    ``format=fhir``) and ``GET /openapi.json``: the shape both decision twins share."""
    content = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{contract}"}},
        "application/fhir+json": {"schema": {"$ref": "#/components/schemas/GuidanceBundle"}},
    }
    return {
        "/evaluate": {
            "post": {
                "summary": summary,
                "parameters": parameters,
                "requestBody": FHIR_BODY,
                "responses": {
                    "200": {"description": ok, "content": content},
                    **outcomes(errors, "400", "401", "403", "413", "415", "422"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3 document"}, **outcomes(errors, "401")},
            }
        },
    }
