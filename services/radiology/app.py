"""HTTP face of the radiology twin: findings from chest X-ray report text (``/radiology/v1``)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify

from services.radiology.service import RadiologyEngine, default_engine, report_from_json
from shared.access_log import log_access
from shared.config import Settings
from shared.errors import InvalidInput, PayloadTooLarge
from shared.http import fhir_body, make_app, principal, require, settings
from shared.openapi import OPERATION_OUTCOME

blueprint = Blueprint("radiology", __name__, url_prefix="/radiology/v1")
ACTION = "radiology.classify"
ENGINE = "oncotwin.radiology.engine"  # app.extensions key: tests/deployments may set their own engine
MAX_BATCH = 256


def _engine() -> RadiologyEngine:
    engine: RadiologyEngine | None = current_app.extensions.get(ENGINE)
    if engine is None:
        engine = current_app.extensions[ENGINE] = default_engine(settings().data_dir)
    return engine


def _json_body() -> Any:
    raw = fhir_body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body is not JSON", issue_code="structure") from None


def _patient(body: Any) -> str | None:
    subject = body.get("subject") if isinstance(body, dict) else None
    reference = subject.get("reference") if isinstance(subject, dict) else None
    return reference.removeprefix("Patient/") if isinstance(reference, str) and reference else None


@blueprint.post("/classify")
@require("radiology.read")
def classify() -> Response:
    body = _json_body()
    report = report_from_json(body, uuid.uuid4().hex)
    result = _engine().classify([report])[0]
    log_access(principal(), ACTION, _patient(body), "ok", g.request_id)
    return jsonify(result.to_json())


@blueprint.post("/classify/batch")
@require("radiology.read")
def classify_batch() -> Response:
    body = _json_body()
    items = body.get("reports") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise InvalidInput('body must be {"reports": [...]} with at least one report', issue_code="structure")
    if len(items) > MAX_BATCH:
        raise PayloadTooLarge(f"a batch holds at most {MAX_BATCH} reports; got {len(items)}")
    reports = [report_from_json(item, str(i), f"reports[{i}].") for i, item in enumerate(items)]
    uids = [r.uid for r in reports]
    if len(set(uids)) != len(uids):
        raise InvalidInput("report uids must be unique within a batch", issue_code="duplicate")
    results = _engine().classify(reports)
    for item in items:
        log_access(principal(), ACTION, _patient(item), "ok", g.request_id)
    return jsonify({"results": [r.to_json() for r in results]})


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


_SPAN = {
    "type": "object",
    "nullable": True,
    "properties": {
        "section": {"type": "string", "enum": ["findings", "impression", "indication", "text"]},
        "start": {"type": "integer"},
        "end": {"type": "integer"},
        "text": {"type": "string"},
    },
}
_FINDING = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "description": "a class of the model's schema (openi or chexpert) or normal"},
        "status": {"type": "string", "enum": ["positive", "negative", "uncertain"]},
        "probability": {"type": "number", "description": "the trained model's probability of presence"},
        "evidence": {"$ref": "#/components/schemas/Span"},
    },
}
_RESULT = {
    "type": "object",
    "properties": {
        "uid": {"type": "string"},
        "findings": {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}},
    },
}
_REPORT_IN = {
    "description": "{text} (FINDINGS:/IMPRESSION:/INDICATION: headers optional), {findings, impression, "
    "indication}, each with an optional uid, or a FHIR R4 DiagnosticReport (conclusion; base64 text/plain "
    "presentedForm)",
    "oneOf": [
        {"type": "object", "required": ["text"], "properties": {"uid": {"type": "string"}, "text": {"type": "string"}}},
        {
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("uid", "findings", "impression", "indication")},
        },
        {
            "type": "object",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"const": "DiagnosticReport"},
                "id": {"type": "string"},
                "conclusion": {"type": "string"},
                "presentedForm": {"type": "array", "items": {"type": "object"}},
            },
        },
    ],
}
_ERRORS = {
    "400": "Not JSON, or no report text in it, or a field of the wrong type",
    "401": "Missing, expired or forged bearer token",
    "403": "Token lacks scope radiology.read",
    "413": f"Body larger than MAX_BODY_BYTES, or a batch of more than {MAX_BATCH} reports",
    "415": "Content-Type is not application/json or application/fhir+json",
}


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "findings", "content": {"application/json": {"schema": ok}}}}
    for code, text in _ERRORS.items():
        out[code] = {
            "description": text,
            "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}},
        }
    return out


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "OncoTwin radiology twin",
            "version": "1.0.0",
            "description": "Findings (label, status, probability, evidence span) from chest X-ray report text: a "
            "classifier trained on weak labels of a rule-based labeler, combined with the labeler's status and "
            "evidence. Demonstration: requires clinical review before use.",
        },
        "security": [{"bearer": ["radiology.read"]}],
        "paths": {
            "/radiology/v1/classify": {
                "post": {
                    "summary": "Findings of one report",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _REPORT_IN}}},
                    "responses": _responses({"$ref": "#/components/schemas/Result"}),
                }
            },
            "/radiology/v1/classify/batch": {
                "post": {
                    "summary": f"Findings of up to {MAX_BATCH} reports",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["reports"],
                                    "properties": {
                                        "reports": {"type": "array", "maxItems": MAX_BATCH, "items": _REPORT_IN}
                                    },
                                }
                            }
                        },
                    },
                    "responses": _responses(
                        {
                            "type": "object",
                            "properties": {
                                "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}}
                            },
                        }
                    ),
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Span": _SPAN, "Finding": _FINDING, "Result": _RESULT, "OperationOutcome": OPERATION_OUTCOME},
        },
    }


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    return app
