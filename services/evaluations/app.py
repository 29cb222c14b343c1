"""REST face of patient evaluations: ``POST /v1/evaluations`` -> 202, ``GET /v1/evaluations/{id}``.

The work runs on the Celery workers (``tasks``); this app only stores the input, queues the
workflow and reads the stored result. An evaluation is visible to the subject that created it.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from flask.blueprints import BlueprintSetupState

from services.evaluations import tasks
from services.evaluations.contract import EvaluationOut, EvaluationQueued
from services.evaluations.openapi import openapi_document
from services.evaluations.store import BUNDLE, DONE, FAILED, FHIR_SERVER, Evaluation, EvaluationStore
from shared.access_log import log_access
from shared.celery_app import configure
from shared.config import Settings
from shared.errors import InvalidInput, NotFound, UpstreamError
from shared.http import fhir_body, flag, make_app, principal, require, settings

blueprint = Blueprint("evaluations", __name__, url_prefix="/v1/evaluations")
STORE = "oncotwin.evaluations.store"
ACTION = "evaluation"
EVALUATION_ID = re.compile(r"^[0-9a-f]{32}$")
PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # the FHIR id grammar
log = logging.getLogger(__name__)


@blueprint.record_once
def _queue_from_app_settings(state: BlueprintSetupState) -> None:
    configure(state.app.extensions["oncotwin.settings"])  # producers use this app's broker


def _store() -> EvaluationStore:
    store: EvaluationStore | None = current_app.extensions.get(STORE)
    if store is None:
        store = current_app.extensions[STORE] = EvaluationStore(settings())
    return store


def _bundle() -> bytes:
    if not request.content_length and "chunked" not in request.headers.get("Transfer-Encoding", ""):
        return b""  # no body: the patient is pulled from the FHIR server
    body = fhir_body()
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body is not JSON", issue_code="structure") from None
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        raise InvalidInput("body must be a FHIR Bundle", issue_code="structure")
    return body


def _patient_param() -> str | None:
    patient = request.args.get("patient")
    if patient is not None and not PATIENT_ID.match(patient):
        raise InvalidInput("query parameter patient must be a FHIR id", issue_code="value")
    return patient


def _utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()  # SQLite drops the zone


def _view(evaluation: Evaluation) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": evaluation.id,
        "status": evaluation.status,
        "created": _utc(evaluation.created),
        "finished": _utc(evaluation.finished),
        "patient": evaluation.patient,
    }
    if evaluation.result is not None:
        view["result"] = evaluation.result
    if evaluation.error is not None:
        view["error"] = evaluation.error
    return EvaluationOut.model_validate(view).model_dump(by_alias=True, mode="json", exclude_unset=True)


# Scopes: an evaluation returns all three twins' answers, so it needs all three read scopes.
@blueprint.post("")
@require("history.read")
@require("navigation.read")
@require("necessity.read")
def create() -> Response:
    body, patient = _bundle(), _patient_param()
    source = BUNDLE if body else FHIR_SERVER
    if source == FHIR_SERVER and (patient is None or settings().fhir_base_url is None):
        message = "post a FHIR Bundle, or name a patient (?patient=ID) when a FHIR server is configured"
        raise InvalidInput(message, issue_code="required")
    store = _store()
    strict = flag("strict", settings().strict_ingest)
    evaluation_id = store.create(body, principal().subject, patient, strict, source)
    try:
        tasks.start(evaluation_id, llm=settings().llm_base_url is not None)
    except Exception:  # the broker is down: say so, and do not leave a queued evaluation behind
        log.exception("could not queue evaluation %s", evaluation_id)
        store.fail(evaluation_id, UpstreamError("task queue unavailable", 503).to_operation_outcome())
        raise UpstreamError("the task queue is unavailable; try again later", 503) from None
    log_access(principal(), ACTION + ".create", patient, "queued", g.request_id)
    response = jsonify(EvaluationQueued(id=evaluation_id, status="queued").to_json())
    response.status_code = 202
    response.headers["Location"] = url_for("evaluations.read", evaluation_id=evaluation_id)
    response.headers["Retry-After"] = "1"
    return response


@blueprint.get("/<evaluation_id>")
@require("history.read")
@require("navigation.read")
@require("necessity.read")
def read(evaluation_id: str) -> Response:
    evaluation = _store().get(evaluation_id) if EVALUATION_ID.match(evaluation_id) else None
    if evaluation is None or evaluation.owner != principal().subject:  # others' ids look unknown
        raise NotFound("no such evaluation")
    log_access(principal(), ACTION + ".read", evaluation.patient, evaluation.status, g.request_id)
    response = jsonify(_view(evaluation))
    if evaluation.status not in (DONE, FAILED):
        response.headers["Retry-After"] = "1"
    return response


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    return app
