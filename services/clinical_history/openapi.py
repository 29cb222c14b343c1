"""OpenAPI 3 description of the Clinical-History API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from services.clinical_history.contract import Timeline
from shared.openapi import FHIR_BODY, PATIENT, STRICT, contract_schemas, document, error_texts, outcomes, query

ERRORS = error_texts("history.read")


def openapi_document() -> dict[str, Any]:
    timeline = {
        "200": {
            "description": "The patient's timeline",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Timeline"}}},
        }
    }
    notes = query("notes", {"type": "boolean", "default": True}, "Run note extraction on free-text notes")
    summary = query("summary", {"type": "boolean", "default": False}, "Add an LLM summary of the latest notes")
    findings = query(
        "findings",
        {"type": "boolean", "default": False},
        "Add imaging-finding events: imaging DiagnosticReports read by the radiology twin (its trained model "
        "when an artifact exists, else its rule labeler)",
    )
    server_errors = {
        "404": {"description": "Patient not found on the FHIR server"},
        "502": {"description": "FHIR server error"},
        "503": {"description": "No FHIR server configured"},
        "504": {"description": "FHIR server timed out"},
    }
    paths = {
        "/timeline": {
            "post": {
                "summary": "Timeline from a posted FHIR Bundle (any Bundle type)",
                "parameters": [PATIENT, STRICT, notes, summary, findings],
                "requestBody": FHIR_BODY,
                "responses": {**timeline, **outcomes(ERRORS, "400", "401", "403", "413", "415", "422")},
            }
        },
        "/patients/{id}/timeline": {
            "get": {
                "summary": "Timeline of a patient pulled from the configured FHIR server (FHIR_BASE_URL)",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    STRICT,
                    notes,
                    summary,
                    findings,
                ],
                "responses": {**timeline, **outcomes(ERRORS, "400", "401", "403", "422"), **server_errors},
            }
        },
    }
    return document(
        "OncoTwin Clinical-History twin",
        "Timeline of a patient's cancer care from FHIR R4.",
        "/history/v1",
        "history.read",
        contract_schemas([Timeline]),
        paths,
    )
