"""HTTP face of CDS Hooks 2.0: discovery, the three services, feedback.

Hook calls authenticate with the CDS Client's JWT (``security.ClientVerifier``), not the user
bearer token of ``shared.http``: the views are marked ``authenticates_itself`` and verify first,
before the body is read. Discovery is open (it holds no patient data). Errors are JSON
(``{"error", "message", "requestId"}``) without exception text, as for every OncoTwin endpoint.
"""

from __future__ import annotations

import logging
import traceback
from datetime import date
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.sansio.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from services.care_navigation.engine import navigate
from services.cds_hooks import cards
from services.cds_hooks.catalog import SERVICES, CdsService, discovery
from services.cds_hooks.data import HookData, gather
from services.cds_hooks.models import FeedbackRequest, HookRequest, parse
from services.cds_hooks.security import CdsClient, ClientVerifier
from services.medical_necessity.engine import assess, orders_to_review
from services.medical_necessity.judge import Judge, LLMJury, NoJudge
from services.web import pathway_queries
from shared.access_log import log_access
from shared.auth import Principal
from shared.config import Settings
from shared.errors import InvalidInput, NotFound, OncoTwinError, PayloadTooLarge
from shared.http import authenticates_itself, fhir_body, make_app
from shared.http import settings as current_settings
from shared.llm import LLMClient

log = logging.getLogger("oncotwin.cds")
VERIFIER = "oncotwin.cds.verifier"
blueprint = Blueprint("cds_hooks", __name__, url_prefix="/cds-services")


@blueprint.record_once
def _setup(state: BlueprintSetupState) -> None:
    """One verifier (and so one replay store) per app, built when the blueprint is registered: a
    bad CDS_JWKS_FILE stops start-up instead of failing the first call."""
    app_settings: Settings = state.app.extensions["oncotwin.settings"]
    state.app.extensions[VERIFIER] = ClientVerifier.from_settings(app_settings)


def _authenticate() -> CdsClient:
    base = current_settings().cds_base_url or ""
    verifier: ClientVerifier = current_app.extensions[VERIFIER]
    client = verifier.verify(request.headers.get("Authorization"), audience=f"{base}{request.path}")
    g.cds_client = client
    return client


def _service(service_id: str) -> CdsService:
    service = SERVICES.get(service_id)
    if service is None:
        raise NotFound("no such CDS Service")
    return service


def _json_body() -> Any:
    try:
        return orjson.loads(fhir_body())
    except orjson.JSONDecodeError:
        raise InvalidInput("request body is not JSON") from None


def _principal(client: CdsClient) -> Principal:
    return Principal(client.subject, frozenset(), client.issuer)


@blueprint.get("")
@authenticates_itself
def services_discovery() -> Response:
    return jsonify(discovery())


@blueprint.post("/<service_id>")
@authenticates_itself
def call_service(service_id: str) -> Response:
    client = _authenticate()  # first: nothing is read or evaluated for an unverified caller
    service = _service(service_id)
    hook = parse(HookRequest, _json_body(), "CDS Hooks request")
    if hook.hook != service.hook:
        raise InvalidInput(f"{service.id} answers the {service.hook} hook, not {hook.hook}")
    patient_id = hook.context.patient_id
    action = f"cds.{service.id}"
    try:
        data = gather(hook, service, current_settings())
    except OncoTwinError as exc:
        log_access(_principal(client), action, patient_id, f"failed-{exc.status}", g.request_id)
        raise
    link = cards.dashboard_link(current_settings().dashboard_base_url, patient_id)
    if service.kind == "navigation":
        response = {"cards": cards.navigation_cards(navigate(data.record, pathway_queries()), link)}
    else:
        response = _necessity(hook, service, data, link)
    log.info(
        "cds %s hook %s: %d card(s) from %s", service.id, hook.hook_instance[:64], len(response["cards"]), data.source
    )
    log_access(_principal(client), action, patient_id, "ok", g.request_id)
    return jsonify(response)


def _necessity(hook: HookRequest, service: CdsService, data: HookData, link: dict[str, str] | None) -> dict[str, Any]:
    if service.hook == "order-select":
        selections = hook.context.selections or []
        unknown = [s for s in selections if s not in data.drafts]
        if unknown:
            raise InvalidInput("context.selections names orders that are not in context.draftOrders")
        wanted = set(selections)
    else:
        wanted = set(data.drafts)
    # Only oncology orders: a supportive drug or an unknown one has no pathway and no card.
    orders = [o for o in orders_to_review(data.record) if o.reference in wanted]
    if not orders:
        return {"cards": []}
    queries = pathway_queries()
    out = assess(data.record, queries, orders=orders, judge=_judge())
    return cards.necessity_response(
        out,
        record=data.record,
        queries=queries,
        drafts=data.drafts,
        coverage=data.coverage,
        link=link,
        today=date.today(),
    )


def _judge() -> Judge:
    if not current_settings().cds_llm_judge:
        return NoJudge()
    client = LLMClient.from_settings(current_settings())
    return LLMJury(client) if client is not None else NoJudge()


@blueprint.post("/<service_id>/feedback")
@authenticates_itself
def feedback(service_id: str) -> Response:
    client = _authenticate()
    service = _service(service_id)
    body = parse(FeedbackRequest, _json_body(), "CDS Hooks feedback")
    for item in body.feedback:
        reason = item.override_reason.reason.code if item.override_reason and item.override_reason.reason else None
        # card/suggestion ids, outcome and reason code only: a user comment may hold PHI
        log.info(
            "cds feedback %s from %s: card %s %s, %d suggestion(s) accepted, reason %s",
            service.id,
            client.issuer,
            item.card[:64],
            item.outcome,
            len(item.accepted_suggestions or []),
            (reason or "-")[:64],
        )
    return jsonify({"received": len(body.feedback)})


# --- errors: JSON, never exception text ------------------------------------------------------------


def _error(status: int, error: str, message: str) -> Response:
    response = jsonify({"error": error, "message": message, "requestId": g.get("request_id")})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="oncotwin-cds"'
    return response


@blueprint.errorhandler(OncoTwinError)
def _domain_error(exc: OncoTwinError) -> Response:
    log.info("cds request %s failed: %s %s", g.get("request_id"), exc.status, type(exc).__name__)
    details = [p.diagnostics + (f" ({p.expression})" if p.expression else "") for p in exc.problems]
    message = exc.message if details == [exc.message] else f"{exc.message}: {'; '.join(details[:10])}"
    return _error(exc.status, type(exc).__name__, message)


@blueprint.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> Response:
    return _domain_error(PayloadTooLarge(f"request body exceeds {current_app.config['MAX_CONTENT_LENGTH']} bytes"))


@blueprint.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _error(exc.code or 400, type(exc).__name__, exc.name)


@blueprint.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f"{frame.filename}:{frame.lineno}" if frame else "?"
    log.error("cds request %s: unexpected %s at %s", g.get("request_id"), type(exc).__name__, where)
    return _error(500, "InternalError", f"internal error; quote request id {g.get('request_id')}")


def create_app(settings: Settings | None = None) -> Flask:
    """This service alone (the embedded default registers ``blueprint`` beside the others)."""
    app = make_app(__name__, settings)
    app.register_blueprint(blueprint)
    return app
