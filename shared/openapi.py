"""The parts every OpenAPI 3.1 document of OncoTwin shares: version, security, errors, parameters.

Each service writes only what is its own (paths, parameters) and names the pydantic contracts it
parses and answers with; their schemas come from ``model_json_schema`` (JSON Schema 2020-12, the
dialect OpenAPI 3.1 uses), so a document cannot drift from the code. Error responses are FHIR
OperationOutcomes (``shared.contract.OperationOutcome``), described once here.

Security. Every operation names the ``bearer`` scheme: an ``http`` scheme with ``scheme: bearer``
(the JWT in ``Authorization``). OpenAPI puts scope names in a security requirement only for
``oauth2``/``openIdConnect`` schemes; for an ``http`` scheme the list holds roles "not otherwise
defined in-band", which tools do not read as OAuth scopes. Declaring an ``oauth2`` scheme instead
would need a token URL, and OncoTwin has none of its own: tokens come from the deployment's identity
provider (``AUTH_JWKS_URL``) or, in the embedded default, from ``oncotwin token``. So the requirement
is ``{"bearer": []}`` and the scope an operation needs is written in ``x-required-scopes`` (a list:
every scope in it is required) and in the operation's description, next to the 403 it answers
without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.contract import OperationOutcome

OPENAPI_VERSION = "3.1.0"
BEARER = "bearer"
SECURITY_SCHEMES: dict[str, Any] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT (RS256/ES256) from the identity provider (AUTH_JWKS_URL / AUTH_JWKS_FILE) or, in the "
        "embedded default, from `oncotwin token`. Its `scope` claim must hold the scopes an operation lists in "
        "x-required-scopes.",
    }
}
OUTCOME_REF = {"$ref": "#/components/schemas/OperationOutcome"}
FHIR_JSON = "application/fhir+json"
# A small patient (NSCLC, stage IV, EGFR positive, an osimertinib order): the fuzz run's explicit example,
# so every twin's 200 answer is checked against its contract too.
EXAMPLE_BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-01-01"}},
        {
            "resource": {
                "resourceType": "Condition",
                "id": "c1",
                "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254637007"}]},
                "onsetDateTime": "2024-01-10",
                "stage": [{"summary": {"text": "Stage IV"}}],
            }
        },
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "m1",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": "Patient/p1"},
                "authoredOn": "2024-02-01",
                "medicationCodeableConcept": {"text": "osimertinib"},
            }
        },
    ],
}
FHIR_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        FHIR_JSON: {"schema": {"type": "object"}, "example": EXAMPLE_BUNDLE},
        "application/json": {"schema": {"type": "object"}, "example": EXAMPLE_BUNDLE},
    },
}


def error_texts(scopes: str | Sequence[str], bad_request: str = "", unprocessable: str = "") -> dict[str, str]:
    """The standard error descriptions; ``bad_request``/``unprocessable`` add a service's own causes."""
    names = [scopes] if isinstance(scopes, str) else list(scopes)
    return {
        "400": "Not JSON, not FHIR, not a Bundle, or a resource breaks its R4 schema (strict mode)" + bad_request,
        "401": "Missing, expired or forged bearer token",
        "403": f"Token lacks scope {' or '.join(names)}" if names else "Token lacks a required scope",
        "404": "Not found",
        "413": "Body larger than MAX_BODY_BYTES",
        "415": "Content-Type is not application/fhir+json or application/json",
        "422": "Valid FHIR without a usable Patient, or the requested patient is not in the input" + unprocessable,
        "502": "An upstream server (FHIR server) failed",
        "503": "A server this operation needs is not configured or not available",
        "504": "An upstream server (FHIR server) timed out",
    }


def outcomes(texts: dict[str, str], *codes: str) -> dict[str, Any]:
    """Error responses, each an OperationOutcome."""
    return {code: {"description": texts[code], "content": {FHIR_JSON: {"schema": OUTCOME_REF}}} for code in codes}


def json_response(description: str, schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def ref(model: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model}"}


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def path_id(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


PATIENT = query("patient", {"type": "string"}, "Patient id, when the bundle holds several patients")
STRICT = query("strict", {"type": "boolean"}, "Reject the whole input if any resource is invalid")


def secured(operation: dict[str, Any], *scopes: str) -> dict[str, Any]:
    """``operation`` behind the bearer scheme, needing every scope in ``scopes`` (none: any valid token).

    See the module docstring for why the scopes are in ``x-required-scopes`` and not in the requirement."""
    out = dict(operation)
    out["security"] = [{BEARER: []}]
    out["x-required-scopes"] = list(scopes)
    needs = f"Requires scope {' and '.join(scopes)}." if scopes else "Any valid bearer token."
    out["description"] = f"{out['description']} {needs}" if out.get("description") else needs
    return out


def contract_schemas(answers: Iterable[type[BaseModel]] = (), inputs: Iterable[type[BaseModel]] = ()) -> dict[str, Any]:
    """JSON schemas of the contracts (camelCase, as serialised) plus OperationOutcome. ``answers`` are
    described as the code serialises them, ``inputs`` as the code validates request bodies with them."""
    described: list[type[BaseModel]] = [*answers, OperationOutcome]
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "serialization") for m in described]
    pairs += [(m, "validation") for m in inputs]
    _, defs = models_json_schema(pairs, by_alias=True, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = defs.get("$defs", {})
    return schemas


def openapi_path(texts: dict[str, str]) -> dict[str, Any]:
    """``GET /openapi.json``: the document itself (any valid token)."""
    return {
        "get": secured(
            {
                "summary": "This OpenAPI 3.1 document",
                "operationId": "openapi",
                "responses": {
                    "200": json_response("OpenAPI 3.1 document", {"type": "object"}),
                    **outcomes(texts, "401"),
                },
            }
        )
    }


def document(
    title: str, description: str, server: str, schemas: dict[str, Any], paths: dict[str, Any]
) -> dict[str, Any]:
    """An OpenAPI 3.1 document; ``paths`` are relative to ``server`` (the blueprint's prefix)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": "1.0.0",
            "description": description + " Demonstration content: requires clinical review before use.",
        },
        "servers": [{"url": server}],
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
        "security": [{BEARER: []}],
        "paths": paths,
    }


def collection_bundle(description: str, resource_types: list[str]) -> dict[str, Any]:
    """Schema of a FHIR Bundle of type collection holding the named resource types."""
    resource = {"type": "object", "properties": {"resourceType": {"enum": resource_types}}}
    entry = {"type": "object", "properties": {"fullUrl": {"type": "string"}, "resource": resource}}
    return {
        "type": "object",
        "description": description,
        "required": ["resourceType", "type"],
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"const": "collection"},
            "timestamp": {"type": "string"},
            "entry": {"type": "array", "items": entry},
        },
    }


def evaluate_paths(
    summary: str, parameters: list[dict[str, Any]], ok: str, contract: str, errors: dict[str, str], scope: str
) -> dict[str, Any]:
    """``POST /evaluate`` (a posted Bundle -> the contract as JSON, or a GuidanceBundle with
    ``format=fhir``) and ``GET /openapi.json``: the shape both decision twins share."""
    content = {
        "application/json": {"schema": ref(contract)},
        FHIR_JSON: {"schema": ref("GuidanceBundle")},
    }
    return {
        "/evaluate": {
            "post": secured(
                {
                    "summary": summary,
                    "operationId": "evaluate",
                    "parameters": parameters,
                    "requestBody": FHIR_BODY,
                    "responses": {
                        "200": {"description": ok, "content": content},
                        **outcomes(errors, "400", "401", "403", "413", "415", "422"),
                    },
                },
                scope,
            )
        },
        "/openapi.json": openapi_path(errors),
    }


def probes_document() -> dict[str, Any]:
    """``/openapi.json`` of the app itself: the probes every OncoTwin app answers, and where the
    service documents are."""
    texts = error_texts(())
    return document(
        "OncoTwin probes",
        "Liveness and readiness of any OncoTwin app. The services describe themselves at "
        "/history/v1/openapi.json, /navigation/v1/openapi.json, /necessity/v1/openapi.json, "
        "/necessity/v1/audits/openapi.json, /radiology/v1/openapi.json and /v1/evaluations/openapi.json; "
        "CDS Hooks services at GET /cds-services (CDS Hooks discovery).",
        "/",
        contract_schemas(),
        {
            "/health": {
                "get": {
                    "summary": "Liveness (no token needed)",
                    "operationId": "health",
                    "security": [],
                    "responses": {"200": json_response("Alive", _STATUS)},
                }
            },
            "/ready": {
                "get": secured(
                    {
                        "summary": "Readiness: settings loaded and token keys readable",
                        "operationId": "ready",
                        "responses": {"200": json_response("Ready", _STATUS), **outcomes(texts, "401")},
                    }
                )
            },
            "/openapi.json": openapi_path(texts),
        },
    )


_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
