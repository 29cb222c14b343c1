"""HTTP face of the Care-Navigation twin: a blueprint and a ``create_app`` for running it alone."""

from __future__ import annotations

import re
from datetime import date

from flask import Blueprint, Flask, Response, g, jsonify, request

from services.care_navigation.engine import navigate
from services.care_navigation.openapi import openapi_document
from services.guidance import navigation_bundle, parse_format
from services.web import pathway_queries
from shared.access_log import log_access
from shared.config import Settings
from shared.errors import InvalidInput, UnprocessableInput
from shared.fhir.ingest import load_bundle
from shared.http import FHIR_JSON, fhir_body, flag, make_app, principal, require, settings

blueprint = Blueprint("navigation", __name__, url_prefix="/navigation/v1")
ACTION = "navigation.evaluate"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_as_of(raw: str | None) -> date | None:
    """``asOf=YYYY-MM-DD`` (a calendar date); absent means today."""
    if raw is None:
        return None
    try:
        if not _DATE.match(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidInput("query parameter asOf must be a date written YYYY-MM-DD", issue_code="value") from None


@blueprint.post("/evaluate")
@require("navigation.read")
def evaluate() -> Response:
    output = parse_format(request.args.get("format"))
    as_of = parse_as_of(request.args.get("asOf"))
    patient_id = request.args.get("patient")
    result = load_bundle(fhir_body(), strict=flag("strict", settings().strict_ingest))
    try:
        record = result.record(patient_id)
    except UnprocessableInput:
        log_access(principal(), ACTION, patient_id, "not-in-input", g.request_id)
        raise
    navigation = navigate(record, pathway_queries(), as_of)
    log_access(principal(), ACTION, record.id, "ok", g.request_id)
    if output == "fhir":
        response = jsonify(navigation_bundle(navigation, request_id=g.request_id))
        response.mimetype = FHIR_JSON
        return response
    return jsonify(navigation.to_json())


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    return app
