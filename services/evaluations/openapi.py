"""OpenAPI 3.1 description of ``/v1/evaluations``, with schemas generated from its contract."""

from __future__ import annotations

from typing import Any

from services.evaluations.contract import EvaluationOut, EvaluationQueued
from shared.openapi import (
    FHIR_BODY,
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

SCOPES = ("history.read", "navigation.read", "necessity.read")
ERRORS = error_texts(SCOPES)
ERRORS["400"] = (
    "Not JSON, not a FHIR Bundle, a patient that is not a FHIR id, or neither a Bundle nor a patient on a "
    "configured FHIR server"
)
ERRORS["403"] = "Token lacks one of the scopes " + ", ".join(SCOPES)
ERRORS["404"] = "No such evaluation (or another subject's)"
ERRORS["503"] = "The task queue is unavailable; try again later"


def openapi_document() -> dict[str, Any]:
    body = dict(FHIR_BODY)
    body["required"] = False  # no body: the patient (?patient=ID) is pulled from FHIR_BASE_URL
    body["description"] = "A FHIR R4 Bundle (any type); leave it out to pull ?patient=ID from FHIR_BASE_URL"
    paths = {
        "/evaluations": {
            "post": secured(
                {
                    "summary": "Queue a patient evaluation (history, then navigation and necessity) on the workers",
                    "operationId": "createEvaluation",
                    "parameters": [
                        query("patient", {"type": "string"}, "Patient id: in the Bundle, or on the FHIR server"),
                        STRICT,
                    ],
                    "requestBody": body,
                    "responses": {
                        "202": json_response("Queued; Location names the evaluation", ref("EvaluationQueued")),
                        **outcomes(ERRORS, "400", "401", "403", "413", "415", "503"),
                    },
                },
                *SCOPES,
            )
        },
        "/evaluations/{id}": {
            "get": secured(
                {
                    "summary": "The evaluation: status, and its result or error when finished",
                    "operationId": "readEvaluation",
                    "parameters": [path_id("id", "The evaluation's id (32 lowercase hex digits)")],
                    "responses": {
                        "200": json_response("The evaluation", ref("EvaluationOut")),
                        **outcomes(ERRORS, "401", "403", "404"),
                    },
                },
                *SCOPES,
            )
        },
        "/evaluations/openapi.json": openapi_path(ERRORS),
    }
    return document(
        "OncoTwin patient evaluations",
        "A patient's evaluation by the three twins (Clinical-History, Care-Navigation, Medical-Necessity), run on "
        "the task workers; an evaluation is visible to the subject that created it.",
        "/v1",
        contract_schemas([EvaluationOut, EvaluationQueued]),
        paths,
    )
