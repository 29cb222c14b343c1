"""HTTP face of the Clinical-History twin: a blueprint and a ``create_app`` for running it alone."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from services.clinical_history.contract import NotesSummaryOut
from services.clinical_history.openapi import openapi_document
from services.clinical_history.summary import summarize_notes
from services.clinical_history.timeline import build_timeline
from shared.access_log import log_access
from shared.config import Settings
from shared.errors import UnprocessableInput
from shared.fhir.ingest import IngestResult, load_bundle, load_resources
from shared.fhir.server import FhirServerClient
from shared.http import fhir_body, flag, make_app, principal, require, settings
from shared.llm import LLMClient

blueprint = Blueprint("history", __name__, url_prefix="/history/v1")


def _llm() -> LLMClient | None:
    """The app's LLM client (None when LLM_BASE_URL is unset), built once."""
    if "oncotwin.llm" not in current_app.extensions:
        current_app.extensions["oncotwin.llm"] = LLMClient.from_settings(settings())
    client: LLMClient | None = current_app.extensions["oncotwin.llm"]
    return client


def _respond(result: IngestResult, action: str, patient_id: str | None) -> Response:
    try:
        record = result.record(patient_id)
    except UnprocessableInput:
        log_access(principal(), action, patient_id, "not-in-input", g.request_id)
        raise
    findings = None
    if flag("findings", False):  # imaging reports read by the radiology twin: asked for explicitly
        from services.radiology.service import findings_engine

        findings = findings_engine(settings().data_dir)
    timeline = build_timeline(record, include_notes=flag("notes", True), findings=findings)
    if flag("summary", False):  # an LLM call: asked for explicitly, and never fails the timeline
        summary = summarize_notes(record, _llm())
        if summary is not None:
            out = NotesSummaryOut(
                text=summary.text, sources=list(summary.sources), model=summary.model, disclaimer=summary.disclaimer
            )
            timeline = timeline.model_copy(update={"notes_summary": out})
    log_access(principal(), action, record.id, "ok", g.request_id)
    return jsonify(timeline.to_json())


@blueprint.post("/timeline")
@require("history.read")
def timeline_from_bundle() -> Response:
    strict = flag("strict", settings().strict_ingest)
    return _respond(load_bundle(fhir_body(), strict=strict), "history.timeline", request.args.get("patient"))


@blueprint.get("/patients/<patient_id>/timeline")
@require("history.read")
def timeline_from_server(patient_id: str) -> Response:
    with FhirServerClient.from_settings(settings()) as client:
        resources = client.patient_resources(patient_id)
    result = load_resources(resources, strict=flag("strict", settings().strict_ingest))
    return _respond(result, "history.timeline.server", patient_id)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    return app
