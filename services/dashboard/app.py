"""HTTP face of the clinician dashboard: a blueprint at ``/dashboard`` and a ``create_app``.

Pages are static HTML shells; plain JS served from ``static/`` fetches JSON from ``/dashboard/api``.
Every view authenticates itself (a session cookie, not a bearer header): pages without a live
session redirect to sign-in, API calls get a 401 OperationOutcome, and every POST must carry the
session's CSRF token. Patient ids in URLs are opaque; names travel only in response bodies and
in POST bodies (search).
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import jwt
from cachetools import LRUCache, TTLCache
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Response as BaseResponse

from services.dashboard.patients import (
    FHIR_ID,
    OPAQUE_ID,
    FolderSource,
    LoadedPatient,
    PatientEntry,
    ServerSource,
)
from services.dashboard.payload import pathway_view, patient_page, source_view
from services.dashboard.sessions import Session, SessionStore
from services.dashboard.smart import MAX_PENDING, PENDING_TTL_S, SmartLauncher
from services.medical_necessity.judge import Judge, app_judge
from services.web import pathway_queries
from shared.access_log import log_access
from shared.auth import Principal, TokenVerifier
from shared.config import Settings
from shared.errors import Forbidden, InvalidInput, NotFound, OncoTwinError, Unauthorized
from shared.fhir.server import FhirServerClient
from shared.http import authenticates_itself, make_app, settings
from shared.ttl_store import ttl_store

HERE = Path(__file__).parent
blueprint = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")
SESSION_COOKIE = "ot_session"
SIGNIN_COOKIE = "ot_signin"  # double-submit CSRF token of the sign-in form (no session yet)
LAUNCH_COOKIE = "ot_launch"  # binds a SMART launch state to the browser that started it
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
SERVER_PAGE_TTL_S = 60.0
REQUIRED_SCOPE = "history.read"
SMART_SCOPES = frozenset({"history.read", "navigation.read", "necessity.read"})
PAGE_CACHE = 32
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
OPEN_ENDPOINTS = {
    "dashboard.signin",
    "dashboard.signin_post",
    "dashboard.launch",
    "dashboard.callback",
    "dashboard.asset",
    "dashboard.root",
}
EXT = "oncotwin.dashboard"
NEXT_PAGE = re.compile(r"/dashboard/patients(?:/[A-Za-z0-9\-.]{1,67}(?:/pathways/[0-9]{1,3})?)?")


class Dashboard:
    """Per-app state: sessions, the patient folder, the SMART launcher, a small page cache."""

    def __init__(self, app_settings: Settings) -> None:
        self.sessions = SessionStore(ttl_store(app_settings, "oncotwin:dashboard:session:"))
        root = app_settings.patient_data_dir or app_settings.data_dir / "patients"
        self.folder = FolderSource(root, app_settings.dashboard_cache_inputs, app_settings.bulk_index_dir)
        launches = ttl_store(app_settings, "oncotwin:dashboard:smart:", MAX_PENDING)
        self.smart = SmartLauncher(app_settings, pending=launches) if app_settings.smart_client_id else None
        # Pages of folder patients, per (patient, scopes, day): a bounded LRU shared by the sessions.
        self.pages: LRUCache[tuple[str, frozenset[str], str], dict[str, Any]] = LRUCache(PAGE_CACHE)
        self.pages_lock = threading.Lock()  # cachetools caches are not thread-safe
        # A server's patient per session, briefly: "show the source" clicks must not re-pull the record.
        self.server_pages: TTLCache[tuple[str, str], tuple[LoadedPatient, dict[str, Any]]] = TTLCache(
            PAGE_CACHE, SERVER_PAGE_TTL_S
        )


def _state() -> Dashboard:
    state: Dashboard = current_app.extensions[EXT]
    return state


@blueprint.record_once
def _setup(state: BlueprintSetupState) -> None:
    state.app.extensions.setdefault(EXT, Dashboard(state.app.extensions["oncotwin.settings"]))


def _open(view: Callable[..., Any]) -> Callable[..., Any]:
    return authenticates_itself(view)


# --- session handling ---------------------------------------------------------------------------


def _session() -> Session | None:
    return _state().sessions.get(request.cookies.get(SESSION_COOKIE))


@blueprint.before_request
def _require_session() -> BaseResponse | None:
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    session = _session()
    if request.endpoint == "dashboard.signout" and (
        session is None or not session.csrf_ok(request.form.get("csrf") or request.headers.get("X-CSRF-Token"))
    ):
        # Expired session or stale form: back to sign-in, never a raw JSON error (nor a forced sign-out).
        return redirect(url_for("dashboard.signin"), 303)
    if session is None:
        if request.path.startswith("/dashboard/api/") or request.method != "GET":
            raise Unauthorized("sign in to the dashboard first")
        return redirect(url_for("dashboard.signin", next=request.path), 303)
    if request.method == "POST" and not session.csrf_ok(
        request.headers.get("X-CSRF-Token") or request.form.get("csrf")
    ):
        raise Forbidden("missing or wrong CSRF token")
    g.session = session
    g.principal = session.principal
    return None


@blueprint.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _secure_cookies() -> bool:
    """Secure unless the browser talks to this machine over loopback (the embedded default, plain
    http); ``request.is_secure`` would be False behind a TLS-terminating proxy."""
    host = (request.host or "").lower()
    host = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    return request.is_secure or host not in LOOPBACK_HOSTS


def _set_cookie(
    response: BaseResponse, name: str, value: str, max_age: int | None = None, samesite: str = "Strict"
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/dashboard",
        httponly=True,
        samesite=samesite,
        secure=_secure_cookies(),
    )


def _start_session(principal: Principal, expires_at: float, **context: str | None) -> Session:
    idle = settings().dashboard_session_idle_s
    return _state().sessions.create(principal, expires_at, idle, **context)


def _current() -> Session:
    session: Session = g.session
    return session


# --- sign-in, sign-out, SMART launch ------------------------------------------------------------


def _next_page(raw: str | None) -> str:
    """Where to go after sign-in: a dashboard page of this site only (never an open redirect)."""
    if raw and NEXT_PAGE.fullmatch(raw):
        return raw
    return url_for("dashboard.patients")


def _signin_page(error: str | None = None, status: int = 200) -> Response:
    import secrets

    token = secrets.token_urlsafe(32)
    smart = _state().smart is not None
    response = make_response(
        render_template(
            "signin.html", csrf=token, error=error, smart=smart, next=_next_page(request.values.get("next"))
        ),
        status,
    )
    _set_cookie(response, SIGNIN_COOKIE, token, max_age=900)
    return response


@blueprint.get("/signin")
@_open
def signin() -> Response:
    return _signin_page()


@blueprint.post("/signin")
@_open
def signin_post() -> BaseResponse:
    presented, expected = request.form.get("csrf", ""), request.cookies.get(SIGNIN_COOKIE, "")
    if not presented or not expected or not hmac.compare_digest(presented, expected):
        return _signin_page("The sign-in form expired; please try again.", 403)
    raw = (request.form.get("token") or "").strip()
    if raw.lower().startswith("bearer "):
        raw = raw[7:].strip()
    verifier: TokenVerifier = current_app.extensions["oncotwin.verifier"]
    try:
        principal = verifier.verify(f"Bearer {raw}")
    except Unauthorized:
        return _signin_page("That token is not valid (wrong, expired or not for this service).", 401)
    if REQUIRED_SCOPE not in principal.scopes:
        return _signin_page(f"That token lacks the {REQUIRED_SCOPE} scope the dashboard needs.", 403)
    # Verified above; read exp so the session never outlives the token.
    exp = jwt.decode(raw, options={"verify_signature": False}).get("exp")
    expires_at = float(exp) if isinstance(exp, int | float) else time.time() + 3600
    session = _start_session(principal, expires_at)
    log_access(principal, "dashboard.signin", None, "ok", g.request_id)
    response = redirect(_next_page(request.form.get("next")), 303)
    _set_cookie(response, SESSION_COOKIE, session.id)
    response.delete_cookie(SIGNIN_COOKIE, path="/dashboard")
    return response


@blueprint.post("/signout")
@_open
def signout() -> BaseResponse:
    _state().sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = redirect(url_for("dashboard.signin"), 303)
    response.delete_cookie(SESSION_COOKIE, path="/dashboard")
    return response


@blueprint.get("/launch")
@_open
def launch() -> BaseResponse:
    smart = _state().smart
    if smart is None:
        raise InvalidInput("SMART launch is not configured (SMART_CLIENT_ID)", issue_code="not-supported")
    target, state = smart.start(request.args.get("iss"), request.args.get("launch"))
    response = redirect(target, 302)
    # Lax: a Strict cookie is not sent on the EHR's cross-site redirect back to the callback.
    _set_cookie(response, LAUNCH_COOKIE, state, max_age=int(PENDING_TTL_S), samesite="Lax")
    return response


@blueprint.get("/callback")
@_open
def callback() -> Response:
    smart = _state().smart
    if smart is None:
        raise InvalidInput("SMART launch is not configured (SMART_CLIENT_ID)", issue_code="not-supported")
    state, bound = request.args.get("state") or "", request.cookies.get(LAUNCH_COOKIE) or ""
    if not state or not bound or not hmac.compare_digest(state.encode(), bound.encode()):
        # Not the browser that started this launch (login CSRF): the pending state stays untouched.
        raise Unauthorized("this launch was not started in this browser")
    launched = smart.finish(request.args.get("code"), state, request.args.get("error"))
    subject = launched.user or f"smart:{launched.iss}"
    principal = Principal(subject=subject, scopes=SMART_SCOPES, client=smart.client_id)
    session = _start_session(
        principal,
        launched.expires_at,
        fhir_base=launched.iss,
        fhir_token=launched.access_token,
        patient=launched.patient,
    )
    log_access(principal, "dashboard.smart-launch", launched.patient, "ok", g.request_id)
    target = (
        url_for("dashboard.patient", pid=f"s-{launched.patient}") if launched.patient else url_for("dashboard.patients")
    )
    # A same-site hop: the browser withholds SameSite=Strict cookies on a redirect chain that an
    # authorization server on another site started, so a plain 302 would land on the sign-in page.
    response = make_response(render_template("continue.html", target=target))
    _set_cookie(response, SESSION_COOKIE, session.id)
    response.delete_cookie(LAUNCH_COOKIE, path="/dashboard", secure=_secure_cookies(), httponly=True, samesite="Lax")
    return response


# --- pages --------------------------------------------------------------------------------------


@blueprint.get("/")
@_open
def home() -> BaseResponse:
    return redirect(url_for("dashboard.patients"), 303)


@blueprint.get("", strict_slashes=True)
@_open
def root() -> BaseResponse:
    """``/dashboard`` (no slash): Werkzeug's own slash redirect comes too late (after the token
    check, a JSON 401), so the dashboard redirects it itself."""
    return redirect(url_for("dashboard.home"), 308)


def _page(template: str, **context: Any) -> Response:
    return make_response(render_template(template, csrf=_current().csrf, signout=True, **context))


@blueprint.get("/patients")
@_open
def patients() -> Response:
    return _page("patients.html")


def _canonical(pid: str) -> str:
    """The dashboard id for ``pid``; a bare FHIR id (CDS card links) maps to the patient it names."""
    if OPAQUE_ID.match(pid) or not FHIR_ID.match(pid):
        return pid
    if _server_source(_current()) is not None:
        return f"s-{pid}"
    entry = _state().folder.by_fhir_id(pid)
    return entry.id if entry is not None else pid


@blueprint.get("/patients/<pid>")
@_open
def patient(pid: str) -> BaseResponse:
    canonical = _canonical(pid)
    if canonical != pid:
        return redirect(url_for("dashboard.patient", pid=canonical), 303)
    return _page("patient.html", pid=pid)


@blueprint.get("/patients/<pid>/pathways/<int:index>")
@_open
def pathway(pid: str, index: int) -> Response:
    # The pathway's place in the patient page's list, not its key: keys name the diagnosis.
    return _page("pathway.html", pid=pid, index=index)


@blueprint.get("/static/<path:filename>")
@_open
def asset(filename: str) -> Response:
    return send_from_directory(HERE / "static", filename)


# --- JSON API -----------------------------------------------------------------------------------


def _server_source(session: Session) -> ServerSource | None:
    if session.fhir_base:
        base, token, timeout = session.fhir_base, session.fhir_token, settings().fhir_timeout_s
        return ServerSource(lambda: FhirServerClient(base, token=token, timeout_s=timeout))
    if settings().fhir_base_url:
        return ServerSource(lambda: FhirServerClient.from_settings(settings()))
    return None


def _load(pid: str) -> LoadedPatient:
    session = _current()
    if session.patient is not None and pid != f"s-{session.patient}":
        raise Forbidden("this launch is limited to the patient in context")
    if session.fhir_base and not pid.startswith("s-"):
        raise Forbidden("a SMART launch reads patients of its EHR only")
    server = _server_source(session)
    if pid.startswith("s-") and server is not None:
        return server.load(pid)
    return _state().folder.load(pid)


def _judge() -> Judge:
    return app_judge(current_app.extensions, settings())


def _page_data(pid: str) -> tuple[LoadedPatient, dict[str, Any]]:
    session = _current()
    if pid.startswith("s-"):  # a server's patient: fresh within a minute, never shared between sessions
        return _server_page(session, pid)
    loaded = _load(pid)
    key = (pid, session.principal.scopes, date.today().isoformat())
    state = _state()
    with state.pages_lock:
        page = state.pages.get(key)
    if page is None:
        page = patient_page(loaded, pathway_queries(), _judge(), session.principal.scopes)
        with state.pages_lock:
            state.pages[key] = page
    return loaded, page


def _server_page(session: Session, pid: str) -> tuple[LoadedPatient, dict[str, Any]]:
    state, key = _state(), (session.id, pid)
    with state.pages_lock:
        hit = state.server_pages.get(key)  # expired entries are gone (TTLCache)
    if hit is not None:
        return hit
    loaded = _load(pid)
    page = patient_page(loaded, pathway_queries(), _judge(), session.principal.scopes)
    with state.pages_lock:
        state.server_pages[key] = (loaded, page)
    return loaded, page


@blueprint.post("/api/patients/search")
@_open
def api_search() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("query", ""), str) or len(body.get("query", "")) > 200:
        raise InvalidInput('the body must be JSON {"query": "<up to 200 characters>"}')
    text = body.get("query", "").strip().lower()
    session = _current()
    server = _server_source(session)
    found: list[PatientEntry]
    if session.patient is not None:
        found = [] if server is None else [server.load(f"s-{session.patient}").entry]
    elif server is not None:
        found = server.search(text)
    else:
        found = [e for e in _state().folder.entries().values() if text in e.name.lower()]
    log_access(session.principal, "dashboard.search", None, "ok", g.request_id)
    return jsonify({"patients": [e.to_json() for e in found], "source": "server" if server else "folder"})


@blueprint.get("/api/patients/<pid>")
@_open
def api_patient(pid: str) -> Response:
    try:
        _, page = _page_data(pid)
    except OncoTwinError:
        log_access(_current().principal, "dashboard.patient", pid, "failed", g.request_id)
        raise
    log_access(_current().principal, "dashboard.patient", pid, "ok", g.request_id)
    return jsonify(page)


@blueprint.get("/api/patients/<pid>/source")
@_open
def api_source(pid: str) -> Response:
    reference = request.args.get("ref") or ""
    loaded, page = _page_data(pid)
    view = source_view(loaded, reference, page["sources"])
    log_access(_current().principal, "dashboard.source", pid, "ok", g.request_id)
    return jsonify(view)


@blueprint.get("/api/patients/<pid>/pathways/<int:index>")
@_open
def api_pathway(pid: str, index: int) -> Response:
    if "navigation.read" not in _current().principal.scopes:
        raise Forbidden("scope 'navigation.read' required")
    loaded, page = _page_data(pid)
    if index >= len(page["pathways"]):
        raise NotFound("that pathway does not apply to this patient")
    view = pathway_view(pathway_queries(), loaded, page["pathways"][index]["key"])
    log_access(_current().principal, "dashboard.pathway", pid, "ok", g.request_id)
    return jsonify(view)


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app(__name__, app_settings)
    app.register_blueprint(blueprint)
    return app
