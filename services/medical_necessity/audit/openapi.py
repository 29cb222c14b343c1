"""OpenAPI 3.1 description of the batch necessity-audit API, with schemas generated from its contract."""

from __future__ import annotations

from typing import Any

from services.medical_necessity.audit.contract import AuditIn, AuditReportOut, AuditStatusOut
from services.medical_necessity.audit.report import FORMATS
from shared.openapi import (
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

SCOPE = "necessity.audit"
ERRORS = error_texts(SCOPE)
ERRORS["400"] = (
    "Not a JSON object of paths and fhirSearches, no input named, a path outside AUDIT_INPUT_ROOT or path inputs "
    "off (no AUDIT_INPUT_ROOT), FHIR searches without FHIR_BASE_URL, or a bad format"
)
ERRORS["404"] = "No such audit (or another subject's)"
ERRORS["503"] = "The task queue is unavailable; resume the audit later"
AUDIT_ID = path_id("id", "The audit's id (32 lowercase hex digits)")


def _status(code: str, description: str) -> dict[str, Any]:
    return {code: json_response(description, ref("AuditStatusOut"))}


def _on_audit(summary: str, operation_id: str, ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    return secured(
        {
            "summary": summary,
            "operationId": operation_id,
            "parameters": [AUDIT_ID],
            "responses": {**ok, **outcomes(ERRORS, "401", "403", "404", *errors)},
        },
        SCOPE,
    )


def openapi_document() -> dict[str, Any]:
    report = {
        "200": {
            "description": "The report: JSON (one row per order), CSV, or a self-contained HTML summary",
            "content": {
                "application/json": {"schema": ref("AuditReportOut")},
                "text/csv": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
            },
        }
    }
    paths = {
        "/audits": {
            "post": secured(
                {
                    "summary": "Start an audit of many patients' orders (runs on the workers)",
                    "operationId": "createAudit",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": ref("AuditIn")}}},
                    "responses": {
                        **_status("202", "Queued; Location names the audit"),
                        **outcomes(ERRORS, "400", "401", "403", "413", "503"),
                    },
                },
                SCOPE,
            )
        },
        "/audits/{id}": {"get": _on_audit("The audit's progress", "readAudit", _status("200", "Progress"))},
        "/audits/{id}/report": {
            "get": {
                **_on_audit("The audit's report", "auditReport", report, "400"),
                "parameters": [
                    AUDIT_ID,
                    query("format", {"type": "string", "enum": list(FORMATS), "default": "json"}, "Report format"),
                ],
            }
        },
        "/audits/{id}/cancel": {"post": _on_audit("Stop the audit", "cancelAudit", _status("200", "Cancelled"))},
        "/audits/{id}/resume": {
            "post": _on_audit("Re-enqueue what is pending", "resumeAudit", _status("202", "Re-enqueued"), "503")
        },
        "/audits/openapi.json": openapi_path(ERRORS),
    }
    return document(
        "OncoTwin batch necessity audits",
        "Medical-necessity determinations for every draft/active oncology order of many patients (files under "
        "AUDIT_INPUT_ROOT, FHIR server searches), run on the task workers; an audit is visible to the subject "
        "that started it.",
        "/necessity/v1",
        contract_schemas([AuditStatusOut, AuditReportOut], [AuditIn]),
        paths,
    )
