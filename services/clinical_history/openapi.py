"""OpenAPI 3.1 description of the Clinical-History API, with schemas generated from the contract."""

from __future__ import annotations

from typing import Any

from services.clinical_history.contract import Timeline
from shared.openapi import (
    FHIR_BODY,
    PATIENT,
    STRICT,
    contract_schemas,
    document,
    error_texts,
    json_response,
    openapi_path,
    outcomes,
    path_id,
    query,
    ref,
    secured,
)

SCOPE = "history.read"
ERRORS = error_texts(SCOPE)
ERRORS["404"] = "Patient not found on the FHIR server"
ERRORS["502"] = "FHIR server error"
ERRORS["503"] = "No FHIR server configured (FHIR_BASE_URL)"
ERRORS["504"] = "FHIR server timed out"


def openapi_document() -> dict[str, Any]:
    timeline = {"200": json_response("The patient's timeline", ref("Timeline"))}
    notes = query("notes", {"type": "boolean", "default": True}, "Run note extraction on free-text notes")
    summary = query("summary", {"type": "boolean", "default": False}, "Add an LLM summary of the latest notes")
    findings = query(
        "findings",
        {"type": "boolean", "default": False},
        "Add imaging-finding events: imaging DiagnosticReports read by the radiology twin (its trained model "
        "when an artifact exists, else its rule labeler)",
    )
    paths = {
        "/timeline": {
            "post": secured(
                {
                    "summary": "Timeline from a posted FHIR Bundle (any Bundle type)",
                    "operationId": "timelineFromBundle",
                    "parameters": [PATIENT, STRICT, notes, summary, findings],
                    "requestBody": FHIR_BODY,
                    "responses": {**timeline, **outcomes(ERRORS, "400", "401", "403", "413", "415", "422")},
                },
                SCOPE,
            )
        },
        "/patients/{id}/timeline": {
            "get": secured(
                {
                    "summary": "Timeline of a patient pulled from the configured FHIR server (FHIR_BASE_URL)",
                    "operationId": "timelineFromServer",
                    "parameters": [path_id("id", "FHIR Patient id"), STRICT, notes, summary, findings],
                    "responses": {
                        **timeline,
                        **outcomes(ERRORS, "400", "401", "403", "404", "422", "502", "503", "504"),
                    },
                },
                SCOPE,
            )
        },
        "/openapi.json": openapi_path(ERRORS),
    }
    return document(
        "OncoTwin Clinical-History twin",
        "Timeline of a patient's cancer care from FHIR R4.",
        "/history/v1",
        contract_schemas([Timeline]),
        paths,
    )
