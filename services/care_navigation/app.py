"""HTTP face of the Care-Navigation twin: a blueprint and a ``create_app`` for running it alone."""

from __future__ import annotations

import re
from datetime import date

from flask import Blueprint, Flask, Response, g, jsonify, request

from services.care_navigation.engine import navigate
from services.care_navigation.openapi import openapi_document
from services.guidance import navigation_bundle, parse_format
from services.web import answer, pathway_queries, posted_record
from shared.access_log import log_access
from shared.config import Settings
from shared.errors import InvalidInput
from shared.http import make_app, principal, require

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
    record = posted_record(ACTION)
    navigation = navigate(record, pathway_queries(), as_of)
    log_access(principal(), ACTION, record.id, "ok", g.request_id)
    return answer(output, navigation, navigation_bundle)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    return app
