"""REST face of batch necessity audits (``/necessity/v1/audits``); the work runs on Celery workers.

``POST`` -> 202 with the audit's status; ``GET /{id}`` status (counts by state and determination,
throughput, ETA); ``GET /{id}/report?format=json|csv|html`` (HTML with a Content-Security-Policy
that allows only its own inline style and filter script); ``POST /{id}/cancel``;
``POST /{id}/resume`` re-enqueues what is pending (workers also resume when they start). Paths are
relative to ``AUDIT_INPUT_ROOT`` and must stay inside it; without that setting only FHIR server
searches are accepted. An audit is visible to the subject that started it. Scope: ``necessity.audit``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from flask.blueprints import BlueprintSetupState

from services.medical_necessity import tasks
from services.medical_necessity.audit import store
from services.medical_necessity.audit.contract import AUDIT_IN, MAX_PATHS, AuditStatusOut
from services.medical_necessity.audit.openapi import openapi_document
from services.medical_necessity.audit.report import FORMATS, HTML_CSP, render
from services.medical_necessity.audit.run import Auditor, Work
from shared.access_log import log_access
from shared.celery_app import configure
from shared.config import Settings
from shared.contract import validated
from shared.errors import InvalidInput, NotFound, UpstreamError
from shared.fhir.parse import load_json
from shared.http import make_app, principal, require, settings

blueprint = Blueprint("necessity_audits", __name__, url_prefix="/necessity/v1/audits")
SCOPE = "necessity.audit"
ACTION = "necessity.audit"
ENQUEUE = "oncotwin.audits.enqueue"  # app.extensions: (audit_id, Work) -> None; tests may replace it
AUDIT_ID = re.compile(r"^[0-9a-f]{32}$")
SEARCH_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_:.\-]{0,63}")
log = logging.getLogger(__name__)


@blueprint.record_once
def _setup(state: BlueprintSetupState) -> None:
    configure(state.app.extensions["oncotwin.settings"])  # producers use this app's broker
    state.app.extensions.setdefault(ENQUEUE, tasks.enqueue)


def _auditor() -> Auditor:
    return Auditor(settings())


def _enqueue(audit_id: str, work: Work) -> None:
    send: Callable[[str, Work], None] = current_app.extensions[ENQUEUE]
    try:
        send(audit_id, work)
    except Exception:  # the broker is down; the audit stays resumable
        log.exception("could not queue audit %s", audit_id)
        raise UpstreamError("the task queue is unavailable; resume the audit later", 503) from None


def _owned(audit_id: str) -> store.Audit:
    if not AUDIT_ID.match(audit_id):
        raise NotFound("no such audit")
    audit = store.get_audit(_auditor().db, audit_id)
    if audit.owner != principal().subject:  # others' audits look unknown
        raise NotFound("no such audit")
    return audit


def _strings(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list) or len(value) > MAX_PATHS:
        raise InvalidInput(f"{name} must be an array of at most {MAX_PATHS} items", issue_code="structure")
    if name == "paths" and not all(isinstance(v, str) and v for v in value):
        raise InvalidInput("paths must be non-empty strings", issue_code="value")
    if name == "fhirSearches" and not all(isinstance(v, str) or _search_object(v) for v in value):
        raise InvalidInput(
            "fhirSearches must hold query strings or objects of parameter names (letters, digits, _:.-) "
            "to string values",
            issue_code="value",
        )
    return value


def _search_object(value: Any) -> bool:
    """A ``{param: value}`` search whose names are plain, so no error can quote a caller's key."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and SEARCH_PARAM.fullmatch(k) and isinstance(v, str) for k, v in value.items()
    )


def _json_body() -> Any:
    """The body as JSON (nesting checked before parsing); None when it is not JSON at all."""
    if not request.is_json:
        return None
    try:
        return load_json(request.get_data(cache=False), "request body")
    except InvalidInput as exc:
        if any(p.code == "too-costly" for p in exc.problems):
            raise
        return None


def _status(audit_id: str, code: int = 200) -> Response:
    response = jsonify(AuditStatusOut.model_validate(store.status(_auditor().db, audit_id)).to_json())
    response.status_code = code
    return response


@blueprint.post("")
@require(SCOPE)
def create() -> Response:
    body = _json_body()
    if not isinstance(body, dict):
        raise InvalidInput('body must be a JSON object {"paths": [...], "fhirSearches": [...]}', issue_code="structure")
    paths, searches = _strings(body, "paths"), _strings(body, "fhirSearches")
    validated(AUDIT_IN, body)  # and the body is the shape the OpenAPI document describes
    root = settings().audit_input_root
    if paths and root is None:
        raise InvalidInput(
            "path inputs are off on this server (AUDIT_INPUT_ROOT is not set)", issue_code="not-supported"
        )
    auditor = _auditor()
    audit_id, work = auditor.start(paths, searches, root, owner=principal().subject)
    _enqueue(audit_id, work)
    log_access(principal(), ACTION + ".create", None, "queued", g.request_id)
    response = _status(audit_id, 202)
    response.headers["Location"] = url_for(".read", audit_id=audit_id)
    return response


@blueprint.get("/<audit_id>")
@require(SCOPE)
def read(audit_id: str) -> Response:
    _owned(audit_id)
    return _status(audit_id)


@blueprint.get("/<audit_id>/report")
@require(SCOPE)
def report(audit_id: str) -> Response:
    fmt = request.args.get("format", "json")
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}", issue_code="value")
    _owned(audit_id)
    db = _auditor().db
    body, media_type = render(fmt, store.status(db, audit_id), store.rows(db, audit_id))
    log_access(principal(), ACTION + ".report", None, "ok", g.request_id)
    response = Response(body, mimetype=media_type.split(";")[0], content_type=media_type)
    if fmt == "html":  # its inline style and filter script, allowed by hash; nothing else
        response.headers["Content-Security-Policy"] = HTML_CSP
    return response


@blueprint.post("/<audit_id>/cancel")
@require(SCOPE)
def cancel(audit_id: str) -> Response:
    _owned(audit_id)
    store.cancel(_auditor().db, audit_id)
    log_access(principal(), ACTION + ".cancel", None, "ok", g.request_id)
    return _status(audit_id)


@blueprint.post("/<audit_id>/resume")
@require(SCOPE)
def resume(audit_id: str) -> Response:
    _owned(audit_id)
    auditor = _auditor()
    work = auditor.resume(audit_id) if store.is_active(auditor.db, audit_id) else Work()
    _enqueue(audit_id, work)
    return _status(audit_id, 202)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    return app
