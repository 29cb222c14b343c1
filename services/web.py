"""What the services' HTTP layers share beyond ``shared.http``: the app's pathway queries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, g, jsonify, request

from graph import open_store
from graph.queries import PathwayQueries
from shared.access_log import log_access
from shared.contract import Contract
from shared.errors import UnprocessableInput
from shared.fhir.ingest import load_bundle
from shared.fhir.record import PatientRecord
from shared.http import FHIR_JSON, fhir_body, flag, principal, settings

EXTENSION = "oncotwin.pathways"
C = TypeVar("C", bound=Contract)


def pathway_queries() -> PathwayQueries:
    """The pathway queries of this app, opened once from its settings (NetworkX or Neo4j)."""
    queries = current_app.extensions.get(EXTENSION)
    if queries is None:
        queries = current_app.extensions[EXTENSION] = PathwayQueries(open_store(settings()))
    return queries


def posted_record(action: str) -> PatientRecord:
    """The patient of the posted FHIR Bundle (``?patient=`` picks one of several; ``?strict=``)."""
    patient_id = request.args.get("patient")
    result = load_bundle(fhir_body(), strict=flag("strict", settings().strict_ingest), reuse=True)
    try:
        return result.record(patient_id)
    except UnprocessableInput:
        log_access(principal(), action, patient_id, "not-in-input", g.request_id)
        raise


def answer(output: str, contract: C, as_fhir: Callable[..., dict[str, Any]]) -> Response:
    """The contract as JSON, or (``format=fhir``) its FHIR rendering as ``application/fhir+json``."""
    if output != "fhir":
        return jsonify(contract.to_json())
    response = jsonify(as_fhir(contract, request_id=g.request_id))
    response.mimetype = FHIR_JSON
    return response
