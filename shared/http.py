"""The one HTTP seam every service app shares: app factory basics, auth, errors, limits.

- every ``OncoTwinError`` becomes its status + FHIR ``OperationOutcome``; anything else is a
  generic 500 OperationOutcome with a request id (the log gets the exception type and place only:
  exception text may quote PHI);
- bodies over ``MAX_BODY_BYTES`` get 413 before they are read; every request runs under its app's
  ``Limits`` (``shared.config.limits()``) and its deadline (``REQUEST_DEADLINE_SECONDS``): work past
  it stops at the next safe point with 503 + ``Retry-After`` (``shared.errors.check_deadline``);
- ``X-Request-ID`` is taken only when it is 1-64 of ``[A-Za-z0-9._-]``, else a new one is made;
- every route except ``/health`` needs a bearer token; ``require`` adds the scope check. Views marked
  ``authenticates_itself`` (CDS Hooks: a client JWT, not a user token) do their own check instead.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import traceback
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.auth import Principal, TokenVerifier, require_scope
from shared.config import Settings, load_settings, set_limits
from shared.errors import (
    DeadlineExceeded,
    InvalidInput,
    OncoTwinError,
    PayloadTooLarge,
    Problem,
    UnsupportedMediaType,
    operation_outcome,
    start_deadline,
)
from shared.logs import configure_logging
from shared.openapi import probes_document

log = logging.getLogger("oncotwin.http")
FHIR_JSON = "application/fhir+json"
JSON_TYPES = {FHIR_JSON, "application/json"}
OPEN_PATHS = {"/health"}
SELF_AUTHENTICATING = "oncotwin_authenticates_itself"
F = TypeVar("F", bound=Callable[..., Any])
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is short and plain, else a new one (never echo junk)."""
    return header if header is not None and REQUEST_ID.fullmatch(header) else uuid.uuid4().hex


def outcome_response(status: int, problems: list[Problem]) -> Response:
    response = jsonify(operation_outcome(problems))
    response.status_code = status
    response.mimetype = FHIR_JSON
    return response


SETTLE_AT = frozenset({1, 10, 100, 1000})  # answers of this process after which the heap is settled
_answers = 0
_answers_lock = threading.Lock()


def settle_heap() -> None:
    """After this process's 1st, 10th, 100th and 1000th answer: what is alive then (code tables, pathways,
    caches, loaded lazily by the first requests of each kind) lives as long as the process, so it leaves
    the cyclic collector's view (``gc.collect`` then ``gc.freeze``). A full collection scanned it all:
    3 of them in 2,000 necessity requests here, up to 97 ms each, the whole p99 of a busy service. Reference counting
    still frees those objects; only cycles among them would wait for the process to end."""
    global _answers
    with _answers_lock:
        _answers += 1
        due = _answers in SETTLE_AT
    if due:
        gc.collect()
        gc.freeze()


def make_app(import_name: str, settings: Settings | None = None, verifier: TokenVerifier | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging(settings.log_level)  # gunicorn configures nothing: the access log must still reach stderr
    app = Flask(import_name)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["oncotwin.settings"] = settings
    app.extensions["oncotwin.verifier"] = verifier or TokenVerifier.from_settings(settings)

    @app.before_request
    def _start() -> None:
        g.request_id = request_id(request.headers.get("X-Request-ID"))
        limits = cast(Settings, current_app.extensions["oncotwin.settings"]).limits
        set_limits(limits)
        start_deadline(limits.request_deadline_s)

    @app.teardown_request
    def _finish(_exc: BaseException | None) -> None:
        start_deadline(None)
        set_limits(None)

    @app.before_request
    def _authenticate() -> None:
        view = current_app.view_functions.get(request.endpoint or "")
        if request.path in OPEN_PATHS or getattr(view, SELF_AUTHENTICATING, False):
            return
        verifier_: TokenVerifier = current_app.extensions["oncotwin.verifier"]
        g.principal = verifier_.verify(request.headers.get("Authorization"))

    @app.after_request
    def _settle_heap(response: Response) -> Response:
        settle_heap()
        return response

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"  # responses carry PHI
        response.headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
        return response

    @app.errorhandler(OncoTwinError)
    def _domain_error(exc: OncoTwinError) -> Response:
        log.info("request %s failed: %s %s", g.get("request_id"), exc.status, type(exc).__name__)
        response = outcome_response(exc.status, exc.problems)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="oncotwin"'
        if isinstance(exc, DeadlineExceeded):
            log.warning("request %s stopped at its deadline", g.get("request_id"))
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.errorhandler(RecursionError)
    def _too_deep(_exc: RecursionError) -> Response:
        # A backstop: JSON bodies are checked against MAX_JSON_DEPTH before parsing.
        return _domain_error(
            InvalidInput("the input is nested too deeply to process (see MAX_JSON_DEPTH)", issue_code="too-costly")
        )

    @app.errorhandler(UnicodeError)
    def _bad_text(exc: UnicodeError) -> Response:
        # A backstop: text that is not valid Unicode (a lone surrogate) that got past a parser.
        log.info("request %s: %s", g.get("request_id"), type(exc).__name__)
        return _domain_error(InvalidInput("the input holds text that is not valid Unicode", issue_code="invalid"))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return _domain_error(PayloadTooLarge(f"request body exceeds the limit of {limit} bytes"))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.code or 400, "processing")
        return outcome_response(exc.code or 400, [Problem(code, exc.name)])

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f"{frame.filename}:{frame.lineno}" if frame else "?"
        log.error("request %s: unexpected %s at %s", g.get("request_id"), type(exc).__name__, where)
        return outcome_response(500, [Problem("exception", f"internal error; quote request id {g.get('request_id')}")])

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        # Ready once settings loaded and the token keys can be read (verifier built above).
        return jsonify({"status": "ready"})

    @app.get("/openapi.json")
    def openapi() -> Response:
        # The probes above (OpenAPI 3.1); each service blueprint serves its own document under its prefix.
        return jsonify(probes_document())

    return app


def settings() -> Settings:
    return cast(Settings, current_app.extensions["oncotwin.settings"])


def principal() -> Principal:
    return cast(Principal, g.principal)


def authenticates_itself(view: F) -> F:
    """Mark a view that verifies its caller itself (e.g. CDS Hooks client JWTs), so the user-token
    check above skips it. The view must authenticate before it reads or evaluates anything."""
    setattr(view, SELF_AUTHENTICATING, True)
    return view


def require(scope: str) -> Callable[[F], F]:
    """Route decorator: the already-authenticated caller must hold ``scope``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            require_scope(principal(), scope)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def fhir_body() -> bytes:
    """The raw request body, after checking it claims to be (FHIR) JSON."""
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES:
        raise UnsupportedMediaType(f"Content-Type must be {FHIR_JSON} or application/json")
    return request.get_data(cache=False)


def flag(name: str, default: bool = False) -> bool:
    raw = request.args.get(name)
    return default if raw is None else raw.lower() in {"1", "true", "yes"}
