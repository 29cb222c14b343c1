"""HTTP face of the Medical-Necessity twin: a blueprint and a ``create_app`` for running it alone."""

from __future__ import annotations

import re

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.blueprints import BlueprintSetupState

from services.guidance import necessity_bundle, parse_format
from services.medical_necessity.audit_app import blueprint as audits
from services.medical_necessity.engine import assess, orders_to_review
from services.medical_necessity.judge import app_judge
from services.medical_necessity.openapi import openapi_document
from services.web import answer, pathway_queries, posted_record
from shared.access_log import log_access
from shared.config import Settings, limits
from shared.errors import InvalidInput, Problem, UnprocessableInput
from shared.http import make_app, principal, require, settings

blueprint = Blueprint("necessity", __name__, url_prefix="/necessity/v1")
ACTION = "necessity.evaluate"
ORDER_REF = re.compile(r"^(MedicationRequest|ServiceRequest)/[A-Za-z0-9\-.]{1,64}$")


@blueprint.record_once
def _build_judge(state: BlueprintSetupState) -> None:
    app_judge(state.app.extensions, state.app.extensions["oncotwin.settings"])  # once, at registration


def parse_order(raw: str | None) -> str | None:
    """``order=MedicationRequest/<id>`` or ``ServiceRequest/<id>``; absent: every reviewable order."""
    if raw is None:
        return None
    if not ORDER_REF.match(raw):
        raise InvalidInput(
            "query parameter order must be MedicationRequest/<id> or ServiceRequest/<id>", issue_code="value"
        )
    return raw


def check_order_count(count: int) -> None:
    """At most ``MAX_NECESSITY_ORDERS`` orders per request (the CDS hooks cap theirs too): 422 before
    any is evaluated."""
    cap = limits().max_necessity_orders
    if count > cap:
        message = (
            f"the input holds {count} orders to review; a request evaluates at most {cap} "
            "(MAX_NECESSITY_ORDERS): name one with ?order= or send fewer"
        )
        raise UnprocessableInput(message, [Problem("too-costly", message)], issue_code="too-costly")


@blueprint.post("/evaluate")
@require("necessity.read")
def evaluate() -> Response:
    output = parse_format(request.args.get("format"))
    reference = parse_order(request.args.get("order"))
    record = posted_record(ACTION)
    try:
        orders = orders_to_review(record, reference)
    except UnprocessableInput:
        log_access(principal(), ACTION, record.id, "order-not-in-input", g.request_id)
        raise
    try:
        check_order_count(len(orders))
    except UnprocessableInput:
        log_access(principal(), ACTION, record.id, "too-many-orders", g.request_id)
        raise
    necessity = assess(record, pathway_queries(), orders, app_judge(current_app.extensions, settings()))
    log_access(principal(), ACTION, record.id, "ok", g.request_id)
    return answer(output, necessity, necessity_bundle)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    app.register_blueprint(audits)
    return app
