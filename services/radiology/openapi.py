"""OpenAPI 3.1 description of the radiology API, with schemas generated from its contract."""

from __future__ import annotations

from typing import Any

from services.radiology.contract import (
    MAX_BATCH,
    REPORT,
    BatchIn,
    BatchOut,
    ClassifyOut,
    DiagnosticReportIn,
    SectionsReportIn,
    TextReportIn,
)
from shared.openapi import (
    contract_schemas,
    document,
    error_texts,
    json_response,
    openapi_path,
    outcomes,
    ref,
    secured,
)

SCOPE = "radiology.read"
ERRORS = error_texts(SCOPE)
ERRORS["400"] = "Not JSON, no report text in it, or a field of the wrong type"
ERRORS["413"] = f"Body larger than MAX_BODY_BYTES, or a batch of more than {MAX_BATCH} reports"
ERRORS["415"] = "Content-Type is not application/json or application/fhir+json"


def _body(schema: dict[str, Any], description: str, example: dict[str, Any]) -> dict[str, Any]:
    content = {"schema": schema, "example": example}
    return {
        "required": True,
        "description": description,
        "content": {"application/json": content, "application/fhir+json": content},
    }


EXAMPLE = {"uid": "r1", "text": "FINDINGS: Small left pleural effusion. No pneumothorax.\nIMPRESSION: Effusion."}


def openapi_document() -> dict[str, Any]:
    schemas = contract_schemas([ClassifyOut, BatchOut], [TextReportIn, SectionsReportIn, DiagnosticReportIn, BatchIn])
    report = REPORT.json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
    errors = outcomes(ERRORS, "400", "401", "403", "413", "415")
    paths = {
        "/classify": {
            "post": secured(
                {
                    "summary": "Findings of one report",
                    "operationId": "classify",
                    "requestBody": _body(
                        report, "{text}, {findings, impression, indication} or a FHIR R4 DiagnosticReport", EXAMPLE
                    ),
                    "responses": {"200": json_response("findings", ref("ClassifyOut")), **errors},
                },
                SCOPE,
            )
        },
        "/classify/batch": {
            "post": secured(
                {
                    "summary": f"Findings of up to {MAX_BATCH} reports",
                    "operationId": "classifyBatch",
                    "requestBody": _body(
                        ref("BatchIn"), "{reports: [...]}, each as /classify takes it", {"reports": [EXAMPLE]}
                    ),
                    "responses": {"200": json_response("findings per report", ref("BatchOut")), **errors},
                },
                SCOPE,
            )
        },
        "/openapi.json": openapi_path(ERRORS),
    }
    return document(
        "OncoTwin radiology twin",
        "Findings (label, status, probability, evidence span) from chest X-ray report text: a classifier trained "
        "on weak labels of a rule-based labeler, combined with the labeler's status and evidence.",
        "/radiology/v1",
        schemas,
        paths,
    )
