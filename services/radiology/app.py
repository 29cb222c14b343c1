"""HTTP face of the radiology twin: findings from chest X-ray report text (``/radiology/v1``)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify

from services.radiology.contract import BATCH, MAX_BATCH, REPORT, BatchOut, ClassifyOut
from services.radiology.openapi import openapi_document
from services.radiology.service import RadiologyEngine, default_engine, report_chars, report_from_json
from shared.access_log import log_access
from shared.config import Settings, limits
from shared.contract import validated
from shared.errors import InvalidInput, PayloadTooLarge
from shared.fhir.parse import load_json
from shared.http import fhir_body, make_app, principal, require, settings

blueprint = Blueprint("radiology", __name__, url_prefix="/radiology/v1")
ACTION = "radiology.classify"
ENGINE = "oncotwin.radiology.engine"  # app.extensions key: tests/deployments may set their own engine
__all__ = ["ENGINE", "MAX_BATCH", "blueprint", "create_app"]


def _engine() -> RadiologyEngine:
    engine: RadiologyEngine | None = current_app.extensions.get(ENGINE)
    if engine is None:
        engine = current_app.extensions[ENGINE] = default_engine(settings().data_dir)
    return engine


def _json_body() -> Any:
    """The body as JSON: nesting checked (``MAX_JSON_DEPTH``) before it is parsed; lone surrogates
    and other invalid text are a 400 naming the problem."""
    return load_json(fhir_body(), "request body")


def _patient(body: Any) -> str | None:
    subject = body.get("subject") if isinstance(body, dict) else None
    reference = subject.get("reference") if isinstance(subject, dict) else None
    return reference.removeprefix("Patient/") if isinstance(reference, str) and reference else None


@blueprint.post("/classify")
@require("radiology.read")
def classify() -> Response:
    body = _json_body()
    report = report_from_json(body, uuid.uuid4().hex)  # its messages name what is wrong in the report's terms
    validated(REPORT, body)  # and the body is one of the shapes the OpenAPI document describes
    result = _engine().classify([report])[0]
    log_access(principal(), ACTION, _patient(body), "ok", g.request_id)
    return jsonify(ClassifyOut.of(result).to_json())


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
    total, cap = sum(map(report_chars, reports)), limits().radiology_max_batch_chars
    if total > cap:
        raise PayloadTooLarge(f"a batch holds at most {cap} characters of report text (RADIOLOGY_MAX_BATCH_CHARS)")
    validated(BATCH, body)
    uids = [r.uid for r in reports]
    if len(set(uids)) != len(uids):
        raise InvalidInput("report uids must be unique within a batch", issue_code="duplicate")
    results = _engine().classify(reports)
    for item in items:
        log_access(principal(), ACTION, _patient(item), "ok", g.request_id)
    return jsonify(BatchOut(results=[ClassifyOut.of(r) for r in results]).to_json())


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    return app
