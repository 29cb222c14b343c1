"""The dashboard's HTTP behaviour without a browser: sessions, CSRF, scopes, opaque ids, sources, SMART.

The SMART EHR launch runs against a fake authorization + FHIR server served locally (werkzeug in a
thread), which checks the PKCE verifier against the challenge like a real one would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, jsonify, redirect, request
from flask.testing import FlaskClient

from services.clinical_history.timeline import build_timeline
from services.dashboard.app import EXT, SESSION_COOKIE
from services.dashboard.patients import FolderSource, split_inputs
from services.dashboard.sessions import SessionStore
from shared.auth import Principal
from shared.config import Settings, load_settings
from shared.errors import ConfigError, UpstreamError
from shared.fhir.ingest import load_path
from shared.ttl_store import MemoryTtlStore, RedisTtlStore
from tests.browser_harness import serve
from tests.conftest import BULK, FHIR, SYNTHEA, requires_data

REDIS = "redis://127.0.0.1:6379/12"  # the local server (.ci/run starts it), a database of its own

TEMPLATES = Path(__file__).resolve().parents[1] / "services" / "dashboard" / "templates"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    env = {"ONCOTWIN_DATA_DIR": str(tmp_path / "var")}
    if SYNTHEA.is_dir():  # tests that read it are marked requires_data
        env["PATIENT_DATA_DIR"] = str(SYNTHEA)
    return load_settings(env)


def _csrf(html: str, name: str) -> str:
    pattern = r'name="csrf" value="([^"]+)"' if name == "form" else r'name="csrf-token" content="([^"]+)"'
    found = re.search(pattern, html)
    assert found, "page carries no CSRF token"
    return found.group(1)


def sign_in(client: FlaskClient, token: str) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    form = client.get("/dashboard/signin")
    response = client.post("/dashboard/signin", data={"csrf": _csrf(form.text, "form"), "token": token})
    assert response.status_code == 303, response.text
    return _csrf(client.get("/dashboard/patients").text, "meta")


def patients(client: FlaskClient, csrf: str, query: str = "") -> dict[str, str]:
    response = client.post("/dashboard/api/patients/search", json={"query": query}, headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200, response.text
    return {p["name"]: p["id"] for p in response.json["patients"]}


def test_pages_need_a_session_and_api_calls_get_an_operation_outcome(client: FlaskClient) -> None:
    page = client.get("/dashboard/patients")
    assert page.status_code == 303 and page.headers["Location"].endswith("/dashboard/signin?next=/dashboard/patients")
    api = client.get("/dashboard/api/patients/0123456789abcdef01234567")
    assert api.status_code == 401 and api.json["resourceType"] == "OperationOutcome"
    # A bearer token is not a session: the dashboard API is for the signed-in browser only.
    search = client.post("/dashboard/api/patients/search", json={"query": ""})
    assert search.status_code == 401


@requires_data
def test_sign_in_returns_to_the_page_asked_for_and_nowhere_else(client: FlaskClient, mint: Callable[..., str]) -> None:
    asked = client.get("/dashboard/patients/ffb8ae8f-8c7f-4475-8c42-d38419108e94")  # e.g. a CDS card link
    assert asked.status_code == 303
    form = client.get(asked.headers["Location"])
    assert 'name="next" value="/dashboard/patients/ffb8ae8f-8c7f-4475-8c42-d38419108e94"' in form.text
    done = client.post(
        "/dashboard/signin",
        data={
            "csrf": _csrf(form.text, "form"),
            "token": mint(),
            "next": "/dashboard/patients/ffb8ae8f-8c7f-4475-8c42-d38419108e94",
        },
    )
    assert done.headers["Location"] == "/dashboard/patients/ffb8ae8f-8c7f-4475-8c42-d38419108e94"
    for evil in ("https://evil.example/", "//evil.example/x", "/dashboard/../health", "/dashboard/patients/x?y=1"):
        form = client.get("/dashboard/signin", query_string={"next": evil})
        assert 'name="next" value="/dashboard/patients"' in form.text


def test_sign_in_checks_csrf_token_and_scope(client: FlaskClient, mint: Callable[..., str]) -> None:
    client.get("/dashboard/signin")
    assert client.post("/dashboard/signin", data={"csrf": "forged", "token": mint()}).status_code == 403
    form = client.get("/dashboard/signin")
    bad = client.post("/dashboard/signin", data={"csrf": _csrf(form.text, "form"), "token": "x.y.z"})
    assert bad.status_code == 401 and "not valid" in bad.text
    form = client.get("/dashboard/signin")
    narrow = client.post(
        "/dashboard/signin", data={"csrf": _csrf(form.text, "form"), "token": mint(["radiology.read"])}
    )
    assert narrow.status_code == 403 and "history.read" in narrow.text
    assert client.get_cookie(SESSION_COOKIE, path="/dashboard") is None


def test_session_cookie_is_httponly_strict_and_secure_unless_loopback(app: Flask, mint: Callable[..., str]) -> None:
    # Secure by default (a TLS-terminating proxy forwards plain http); only loopback http goes without.
    cases = (
        ("http://localhost", False),
        ("http://127.0.0.1:8080", False),
        ("http://[::1]:8080", False),
        ("https://localhost", True),
        ("http://dashboard.example.org", True),
    )
    for base, secure in cases:
        client = app.test_client()
        form = client.get("/dashboard/signin", base_url=base)
        response = client.post(
            "/dashboard/signin", data={"csrf": _csrf(form.text, "form"), "token": mint()}, base_url=base
        )
        cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{SESSION_COOKIE}="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
        assert ("Secure" in cookie) is secure


@requires_data
def test_search_needs_csrf_and_ids_are_opaque(client: FlaskClient, mint: Callable[..., str]) -> None:
    csrf = sign_in(client, mint())
    refused = client.post("/dashboard/api/patients/search", json={"query": ""})
    assert refused.status_code == 403 and refused.json["resourceType"] == "OperationOutcome"
    found = patients(client, csrf)
    assert len(found) == 8 and "Sherman McGlynn" in found
    assert all(re.fullmatch(r"[0-9a-f]{24}", pid) for pid in found.values())
    assert "8ef2ef98" not in found["Sherman McGlynn"]  # not the FHIR id or file name either
    assert list(patients(client, csrf, "mcglynn")) == ["Sherman McGlynn"]
    too_long = client.post("/dashboard/api/patients/search", json={"query": "x" * 201}, headers={"X-CSRF-Token": csrf})
    assert too_long.status_code == 400


@requires_data
def test_patient_page_data_and_sources(client: FlaskClient, mint: Callable[..., str]) -> None:
    csrf = sign_in(client, mint())
    pid = patients(client, csrf, "sherman")["Sherman McGlynn"]
    page = client.get(f"/dashboard/api/patients/{pid}")
    assert page.status_code == 200
    data = page.json
    assert {c["cancerType"] for c in data["timeline"]["cancers"]} == {"prostate", "sclc"}
    assert any(line["regimen"] == "cisplatin + etoposide" for line in data["timeline"]["linesOfTherapy"])
    assert {e["lane"] for e in data["timeline"]["events"]} >= {"diagnosis", "medication", "procedure"}
    assert data["navigation"]["pathways"] and data["necessity"]["determinations"]
    stage = next(e for e in data["timeline"]["events"] if e["kind"] == "stage")
    source = client.get(f"/dashboard/api/patients/{pid}/source", query_string={"ref": stage["source"]})
    assert source.status_code == 200 and source.json["resource"]["resourceType"] in {"Condition", "Observation"}
    # Only resources the page cites: another patient's resource is not reachable through this one.
    other = patients(client, csrf, "vito")["Vito Feeney"]
    vito_ref = client.get(f"/dashboard/api/patients/{other}").json["timeline"]["events"][0]["source"]
    refused = client.get(f"/dashboard/api/patients/{pid}/source", query_string={"ref": vito_ref})
    assert refused.status_code == 404 and refused.json["resourceType"] == "OperationOutcome"
    assert client.get("/dashboard/api/patients/not-an-id").status_code == 404
    # CDS Hooks cards link with the EHR's FHIR id: the page redirects to the opaque id.
    by_fhir_id = client.get("/dashboard/patients/ffb8ae8f-8c7f-4475-8c42-d38419108e94")
    assert by_fhir_id.status_code == 303 and by_fhir_id.headers["Location"] == f"/dashboard/patients/{pid}"
    assert client.get("/dashboard/api/patients/0123456789abcdef01234567").status_code == 404


@requires_data
def test_scopes_decide_the_sections(client: FlaskClient, mint: Callable[..., str]) -> None:
    csrf = sign_in(client, mint(["history.read"]))
    pid = patients(client, csrf, "sherman")["Sherman McGlynn"]
    data = client.get(f"/dashboard/api/patients/{pid}").json
    assert data["timeline"]["events"] and data["navigation"] is None and data["necessity"] is None
    assert client.get(f"/dashboard/api/patients/{pid}/pathways/0").status_code == 403


@requires_data
def test_pathway_view_marks_the_patients_path(client: FlaskClient, mint: Callable[..., str]) -> None:
    csrf = sign_in(client, mint())
    pid = patients(client, csrf, "sherman")["Sherman McGlynn"]
    listed = client.get(f"/dashboard/api/patients/{pid}").json["pathways"]
    index = next(i for i, p in enumerate(listed) if "sclc" in p["key"])
    # URLs carry the pathway's place in the list, never its key (which names the diagnosis).
    view = client.get(f"/dashboard/api/patients/{pid}/pathways/{index}").json
    assert view["pathway"]["key"] == listed[index]["key"]
    statuses = {n["id"]: n["status"] for n in view["nodes"]}
    assert view["position"] and all(statuses[p] == "position" for p in view["position"])
    on_path = [e for e in view["edges"] if e["onPath"]]
    assert on_path and all(statuses[e["from"]] in {"done", "decided", "position"} for e in on_path)
    assert client.get(f"/dashboard/api/patients/{pid}/pathways/{len(listed)}").status_code == 404
    # The old key-in-URL form is no route at all (refused before any view runs).
    assert client.get(f"/dashboard/api/patients/{pid}/pathways/{listed[index]['key']}").status_code in {401, 404}
    assert client.get(f"/dashboard/patients/{pid}/pathways/{listed[index]['key']}").status_code in {401, 404}


def test_session_ends_when_idle_at_token_expiry_and_at_sign_out(app: Flask, mint: Callable[..., str]) -> None:
    now = [1_000_000.0]
    app.extensions[EXT].sessions = SessionStore(clock=lambda: now[0])
    client = app.test_client()
    csrf = sign_in(client, mint())
    idle = app.extensions["oncotwin.settings"].dashboard_session_idle_s
    now[0] += idle - 1
    assert client.get("/dashboard/patients").status_code == 200  # activity restarts the idle timer
    now[0] += idle - 1
    assert client.get("/dashboard/patients").status_code == 200
    now[0] += idle + 1
    assert client.get("/dashboard/patients").status_code == 303
    csrf = sign_in(client, mint())
    # A stale form (or a forged one) goes back to sign-in, not to raw JSON, and signs nobody out.
    stale = client.post("/dashboard/signout", data={"csrf": "wrong"})
    assert stale.status_code == 303 and stale.headers["Location"] == "/dashboard/signin"
    assert client.get("/dashboard/patients").status_code == 200
    assert client.post("/dashboard/signout", data={"csrf": csrf}).status_code == 303
    assert client.get("/dashboard/patients").status_code == 303
    expired = client.post("/dashboard/signout", data={"csrf": csrf})  # the session is gone already
    assert expired.status_code == 303 and expired.headers["Location"] == "/dashboard/signin"


def test_signed_in_session_ends_at_the_tokens_exp(app: Flask, mint: Callable[..., str]) -> None:
    import time

    now = [time.time()]
    app.extensions[EXT].sessions = SessionStore(clock=lambda: now[0])
    client = app.test_client()
    sign_in(client, mint(ttl=120))  # well inside the 900 s idle timeout
    now[0] += 100
    assert client.get("/dashboard/patients").status_code == 200
    now[0] += 30
    assert client.get("/dashboard/patients").status_code == 303


def test_session_never_outlives_its_token() -> None:
    now = [100.0]
    backend = MemoryTtlStore()
    store = SessionStore(backend, clock=lambda: now[0])
    session = store.create(Principal("dr", frozenset({"history.read"})), token_exp=160.0, idle_s=900)
    now[0] = 159.0
    again = store.get(session.id)
    assert again is not None and again.id == session.id and again.principal == session.principal
    assert again.csrf == session.csrf
    now[0] = 160.0
    assert store.get(session.id) is None and len(backend) == 0


def test_sessions_and_launch_states_are_shared_through_redis_when_configured(settings: Settings) -> None:
    """Two stores on one Redis stand for two replicas: a session made by one is seen by the other,
    sign-out on one ends it on both, and a launch state can be taken once only."""
    prefix = f"oncotwin:test:{uuid.uuid4().hex}:"
    one = SessionStore(RedisTtlStore(REDIS, prefix))
    two = SessionStore(RedisTtlStore(REDIS, prefix))
    session = one.create(Principal("dr", frozenset({"history.read"}), "ehr"), time.time() + 60, 900, patient="p1")
    seen = two.get(session.id)
    assert seen is not None and seen.principal == session.principal and seen.patient == "p1"
    two.drop(session.id)
    assert one.get(session.id) is None
    launches = RedisTtlStore(REDIS, prefix)
    launches.put("state", {"iss": "x"}, 60)
    assert RedisTtlStore(REDIS, prefix).take("state") == {"iss": "x"} and launches.take("state") is None


def test_a_redis_that_is_down_fails_closed_with_503() -> None:
    store = SessionStore(RedisTtlStore("redis://127.0.0.1:1/0", "x:", timeout_s=0.2))
    with pytest.raises(UpstreamError) as raised:
        store.get("some-session")
    assert raised.value.status == 503


def test_headers_forbid_inline_script_and_framing(client: FlaskClient) -> None:
    response = client.get("/dashboard/signin")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["Cache-Control"] == "no-store"
    for template in TEMPLATES.glob("*.html"):
        html = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), f"inline script in {template.name}"
        assert not re.search(r"\son[a-z]+=", html), f"inline event handler in {template.name}"
        assert "http://" not in html and "https://" not in html, f"external URL in {template.name}"
    assert client.get("/dashboard/static/timeline.js").status_code == 200
    assert client.get("/dashboard/static/../app.py").status_code == 404


@requires_data
def test_folder_is_split_into_inputs() -> None:
    inputs = split_inputs(FHIR)
    names = {p.name for p in inputs}
    assert "synthea-bulk-10" in names and "mcode-stu1-examples" in names  # folders read as one input
    assert sum(1 for p in inputs if p.parent.name == "synthea") == 8  # bundles one by one
    source = FolderSource(FHIR, cache_inputs=1)
    # Synthea bundles, the bulk export's Patient file, mCODE STU1 (2), STU2 (4) and STU3 (5) example patients
    assert len(source.entries()) == 8 + 13 + 2 + 4 + 5
    sherman = next(e for e in source.entries().values() if e.name == "Sherman McGlynn")
    vito = next(e for e in source.entries().values() if e.name == "Vito Feeney")
    first = source.load(sherman.id)
    assert source.load(sherman.id).record is first.record  # cached
    source.load(vito.id)
    assert source.load(sherman.id).record is not first.record  # evicted by the bound of 1


@requires_data
def test_a_patient_of_a_bulk_export_is_read_alone(tmp_path: Path) -> None:
    """The dashboard reads one exported patient through the export's index, never the whole export."""
    source = FolderSource(BULK, cache_inputs=4, index_dir=tmp_path)
    entries = list(source.entries().values())
    assert len(entries) == 13
    whole = load_path(BULK)
    for entry in entries[:3]:
        loaded = source.load(entry.id)
        assert build_timeline(loaded.record).to_json() == build_timeline(whole.record(entry.fhir_id)).to_json()
        own = {key for key, resource in loaded.resources.items() if resource["resourceType"] == "Patient"}
        assert own == {f"Patient/{entry.fhir_id}"}  # nobody else's record was read
    assert source.load(entries[0].id).record is source.load(entries[0].id).record  # cached per patient
    assert list(tmp_path.glob("*.sqlite"))  # through the on-disk index


def test_smart_settings_fail_fast() -> None:
    with pytest.raises(ConfigError, match="SMART_REDIRECT_URI"):
        load_settings({"SMART_CLIENT_ID": "app"})
    with pytest.raises(ConfigError, match="SMART_ALLOWED_ISSUERS"):
        load_settings(
            {
                "SMART_CLIENT_ID": "app",
                "SMART_REDIRECT_URI": "https://x/cb",
                "SMART_ALLOWED_ISSUERS": "http://ehr.example.org/fhir",
            }
        )
    with pytest.raises(ConfigError, match="PATIENT_DATA_DIR"):
        load_settings({"PATIENT_DATA_DIR": "/no/such/folder"})


# --- SMART on FHIR EHR launch against a fake EHR -------------------------------------------------


def _fake_ehr() -> tuple[Flask, dict[str, Any]]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm

    ehr = Flask("fake-ehr")
    seen: dict[str, Any] = {"codes": {}, "id_token_aud": None}
    key = ec.generate_private_key(ec.SECP256R1())
    public = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "ehr-1", "alg": "ES256", "use": "sig"}

    @ehr.get("/fhir/.well-known/smart-configuration")
    def configuration() -> Any:
        base = request.host_url.rstrip("/")
        return jsonify(
            authorization_endpoint=f"{base}/authorize",
            token_endpoint=seen.get("token_endpoint") or f"{base}/token",
            code_challenge_methods_supported=["S256"],
            jwks_uri=f"{base}/jwks",
            issuer=f"{base}/fhir",
        )

    @ehr.get("/jwks")
    def jwks() -> Any:
        return jsonify(keys=[public])

    @ehr.get("/authorize")
    def authorize() -> Any:
        code = f"code-{len(seen['codes'])}"
        seen["codes"][code] = dict(request.args)
        return jsonify(code=code, state=request.args["state"])  # stands in for the redirect back

    @ehr.post("/token-moved")
    def token_moved() -> Any:
        return redirect("/token", 307)

    @ehr.post("/token")
    def token() -> Any:
        granted = seen["codes"].pop(request.form.get("code", ""), None)
        verifier = request.form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            granted is None
            or digest != granted["code_challenge"]
            or request.form["redirect_uri"] != granted["redirect_uri"]
        ):
            return jsonify(error="invalid_grant"), 400
        seen["token_requests"] = seen.get("token_requests", 0) + 1
        now = int(time.time())
        claims = {
            "iss": f"{request.host_url.rstrip('/')}/fhir",
            "aud": seen["id_token_aud"] or request.form["client_id"],
            "sub": "u-42",
            "fhirUser": "Practitioner/dr-ehr",
            "iat": now,
            "exp": now + 300,
        }
        if seen.get("rsa_id_token"):  # RS256 without a kid, while the JWKS holds an EC key only
            id_token = jwt.encode(claims, rsa.generate_private_key(65537, 2048), algorithm="RS256")
        else:
            id_token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "ehr-1"})
        return jsonify(
            access_token="ehr-token",
            token_type="Bearer",
            expires_in=600,
            patient=None if seen.get("no_patient") else "p1",
            scope="launch",
            id_token=id_token,
        )

    @ehr.get("/fhir/Patient/<pid>")
    def patient(pid: str) -> Any:
        seen["auth"] = request.headers.get("Authorization")
        if pid != "p1":
            return jsonify(resourceType="OperationOutcome"), 404
        return jsonify(resourceType="Patient", id="p1", name=[{"given": ["Ada"], "family": "Launch"}], gender="female")

    @ehr.get("/fhir/<rtype>")
    def search(rtype: str) -> Any:
        entries: list[dict[str, Any]] = []
        if rtype == "Patient":
            seen["patient_search"] = dict(request.args)
            entries = [{"resource": {"resourceType": "Patient", "id": "p1", "name": [{"text": "Ada Launch"}]}}]
        if rtype == "Condition":
            condition = {
                "resourceType": "Condition",
                "id": "c1",
                "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254637007", "display": "NSCLC"}]},
                "onsetDateTime": "2020-01-05",
            }
            entries = [{"resource": condition}]
        return jsonify(resourceType="Bundle", type="searchset", entry=entries)

    return ehr, seen


@pytest.fixture
def ehr() -> Iterator[tuple[str, dict[str, Any]]]:
    app, seen = _fake_ehr()
    with serve(app) as base:
        yield base, seen


def _smart_app(base: str, tmp_path: Path, **env: str) -> Flask:
    from oncotwin.app import create_app

    settings = load_settings(
        {
            "ONCOTWIN_DATA_DIR": str(tmp_path / "var"),
            "SMART_CLIENT_ID": "oncotwin-dashboard",
            "SMART_REDIRECT_URI": "http://localhost/dashboard/callback",
            "SMART_ALLOWED_ISSUERS": f"{base}/fhir",
            **env,
        }
    )
    return create_app(settings)


@pytest.fixture
def smart_client(ehr: tuple[str, dict[str, Any]], tmp_path: Path) -> FlaskClient:
    return _smart_app(ehr[0], tmp_path).test_client()


def _launch(client: FlaskClient, base: str, launch: str = "L-1") -> dict[str, str]:
    """Start a launch in ``client``'s browser and approve it at the EHR: the callback's query."""
    import requests

    start = client.get("/dashboard/launch", query_string={"iss": f"{base}/fhir", "launch": launch})
    assert start.status_code == 302, start.text
    granted: dict[str, str] = requests.get(start.headers["Location"], timeout=10).json()
    return granted


def test_smart_launch_with_pkce_and_patient_context(
    smart_client: FlaskClient, ehr: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    import requests

    base, seen = ehr
    start = smart_client.get("/dashboard/launch", query_string={"iss": f"{base}/fhir", "launch": "L-123"})
    assert start.status_code == 302
    target = urlsplit(start.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{base}/authorize"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["aud"] == f"{base}/fhir" and query["launch"] == "L-123" and query["client_id"] == "oncotwin-dashboard"
    granted = requests.get(start.headers["Location"], timeout=10).json()  # the user approves at the EHR
    done = smart_client.get("/dashboard/callback", query_string=granted)
    assert done.status_code == 200 and seen["token_requests"] == 1
    # The verified id_token names the user: the access log says who, not just which EHR.
    launches = [json.loads(r.getMessage()) for r in caplog.records if "dashboard.smart-launch" in r.getMessage()]
    assert [entry["subject"] for entry in launches] == ["Practitioner/dr-ehr"]
    assert 'http-equiv="refresh"' in done.text and "/dashboard/patients/s-p1" in done.text
    # The session reads the launch patient from the EHR's FHIR server with the EHR's token.
    page = smart_client.get("/dashboard/api/patients/s-p1")
    assert page.status_code == 200, page.text
    assert page.json["patient"]["name"] == "Ada Launch" and seen["auth"] == "Bearer ehr-token"
    assert [c["cancerType"] for c in page.json["timeline"]["cancers"]] == ["nsclc"]
    # Limited to the patient in context, and the state cannot be replayed.
    assert smart_client.get("/dashboard/api/patients/s-p2").status_code == 403
    assert smart_client.get("/dashboard/callback", query_string=granted).status_code == 401


def test_smart_launch_refuses_unknown_issuers_and_states(smart_client: FlaskClient) -> None:
    evil = smart_client.get("/dashboard/launch", query_string={"iss": "https://evil.example/fhir", "launch": "x"})
    assert evil.status_code == 403 and evil.json["resourceType"] == "OperationOutcome"
    assert smart_client.get("/dashboard/launch", query_string={"launch": "x"}).status_code == 400
    forged = smart_client.get("/dashboard/callback", query_string={"code": "c", "state": "forged"})
    assert forged.status_code == 401


def test_launch_without_smart_configured_is_a_400(client: FlaskClient) -> None:
    response = client.get("/dashboard/launch", query_string={"iss": "https://ehr/fhir", "launch": "x"})
    assert response.status_code == 400 and response.json["resourceType"] == "OperationOutcome"


def test_fhir_server_patients_with_local_sign_in(ehr: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    from oncotwin.app import create_app
    from shared.auth import LocalKeys

    base, seen = ehr
    settings = load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path / "var"), "FHIR_BASE_URL": f"{base}/fhir"})
    client = create_app(settings).test_client()
    keys = LocalKeys(settings.data_dir)
    token = keys.mint("dr", ["history.read"], 600, issuer=settings.token_issuer, audience=settings.token_audience)
    csrf = sign_in(client, token)
    assert patients(client, csrf, "ada") == {"Ada Launch": "s-p1"}
    assert seen["patient_search"]["name"] == "ada"  # the name went server to server, not in a browser URL
    page = client.get("/dashboard/api/patients/s-p1")
    assert page.status_code == 200 and page.json["timeline"]["cancers"][0]["cancerType"] == "nsclc"
    assert client.get("/dashboard/patients/p1").headers["Location"] == "/dashboard/patients/s-p1"


def test_smart_launch_refuses_an_id_token_for_another_client(
    smart_client: FlaskClient, ehr: tuple[str, dict[str, Any]]
) -> None:
    import requests

    base, seen = ehr
    seen["id_token_aud"] = "some-other-app"
    start = smart_client.get("/dashboard/launch", query_string={"iss": f"{base}/fhir/", "launch": "L-9"})
    granted = requests.get(start.headers["Location"], timeout=10).json()
    refused = smart_client.get("/dashboard/callback", query_string=granted)
    assert refused.status_code == 401 and refused.json["resourceType"] == "OperationOutcome"
    assert SESSION_COOKIE not in refused.headers.get("Set-Cookie", "")


def test_launch_state_is_bound_to_the_browser_that_started_it(
    smart_client: FlaskClient, ehr: tuple[str, dict[str, Any]]
) -> None:
    """Login CSRF: an attacker's approved launch, replayed in the victim's browser, is refused
    and neither replaces the victim's session nor uses up the attacker's state."""
    base, seen = ehr
    start = smart_client.get("/dashboard/launch", query_string={"iss": f"{base}/fhir", "launch": "L-1"})
    cookie = next(c for c in start.headers.getlist("Set-Cookie") if c.startswith("ot_launch="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/dashboard" in cookie
    import requests

    victim = requests.get(start.headers["Location"], timeout=10).json()
    assert smart_client.get("/dashboard/callback", query_string=victim).status_code == 200
    session = smart_client.get_cookie(SESSION_COOKIE, path="/dashboard")
    assert session is not None
    assert smart_client.get_cookie("ot_launch", path="/dashboard") is None  # deleted at the callback
    attacker = smart_client.application.test_client()
    forged = _launch(attacker, base, "L-evil")
    refused = smart_client.get("/dashboard/callback", query_string=forged)
    assert refused.status_code == 401 and refused.json["resourceType"] == "OperationOutcome"
    assert SESSION_COOKIE not in refused.headers.get("Set-Cookie", "")
    assert smart_client.get_cookie(SESSION_COOKIE, path="/dashboard").value == session.value
    assert smart_client.get("/dashboard/api/patients/s-p1").status_code == 200
    assert seen["token_requests"] == 1  # the forged code was never traded
    assert attacker.get("/dashboard/callback", query_string=forged).status_code == 200  # state not taken


def test_smart_session_without_a_launch_patient_reads_only_its_ehr(
    ehr: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    from services.dashboard.patients import opaque_id

    base, seen = ehr
    folder = tmp_path / "patients"
    folder.mkdir()
    bundle = folder / "local.json"
    local = {"resourceType": "Patient", "id": "local-1", "name": [{"text": "Lou Local"}]}
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": local}]}))
    seen["no_patient"] = True
    client = _smart_app(base, tmp_path, PATIENT_DATA_DIR=str(folder)).test_client()
    assert client.get("/dashboard/callback", query_string=_launch(client, base)).status_code == 200
    refused = client.get(f"/dashboard/api/patients/{opaque_id(bundle, 'local-1')}")
    assert refused.status_code == 403 and refused.json["resourceType"] == "OperationOutcome"
    assert client.get("/dashboard/api/patients/s-p1").status_code == 200


@pytest.mark.parametrize("endpoint", ["other-host", "redirect"])
def test_smart_server_side_calls_stay_on_the_issuers_host(
    ehr: tuple[str, dict[str, Any]], tmp_path: Path, endpoint: str
) -> None:
    base, seen = ehr
    port = urlsplit(base).port
    seen["token_endpoint"] = f"http://localhost:{port}/token" if endpoint == "other-host" else f"{base}/token-moved"
    client = _smart_app(base, tmp_path).test_client()
    start = client.get("/dashboard/launch", query_string={"iss": f"{base}/fhir", "launch": "L-1"})
    if endpoint == "other-host":  # refused at discovery: the token call would go to another host
        assert start.status_code == 502 and start.json["resourceType"] == "OperationOutcome"
        return
    import requests

    granted = requests.get(start.headers["Location"], timeout=10).json()
    done = client.get("/dashboard/callback", query_string=granted)
    assert done.status_code == 502 and "token_requests" not in seen  # the 307 was not followed


def test_plain_http_endpoints_only_for_a_loopback_issuer() -> None:
    from services.dashboard.smart import _safe_endpoint

    assert _safe_endpoint("http://127.0.0.1:9/token", "http://127.0.0.1:9/fhir", same_host=True)
    with pytest.raises(UpstreamError):
        _safe_endpoint("http://127.0.0.1:9/token", "https://ehr.example.org/fhir")
    with pytest.raises(UpstreamError):
        _safe_endpoint("https://metadata.internal/token", "https://ehr.example.org/fhir", same_host=True)
    assert _safe_endpoint("https://login.example.org/authorize", "https://ehr.example.org/fhir")


def test_id_token_whose_alg_matches_no_key_type_is_a_401(
    smart_client: FlaskClient, ehr: tuple[str, dict[str, Any]]
) -> None:
    base, seen = ehr
    seen["rsa_id_token"] = True
    refused = smart_client.get("/dashboard/callback", query_string=_launch(smart_client, base))
    assert refused.status_code == 401 and refused.json["resourceType"] == "OperationOutcome"


def test_launch_states_are_bounded_and_discovery_is_cached(
    smart_client: FlaskClient, ehr: tuple[str, dict[str, Any]]
) -> None:
    from services.dashboard.smart import MAX_PENDING

    base, _ = ehr
    smart = smart_client.application.extensions[EXT].smart
    assert smart._pending._max == MAX_PENDING
    calls = []
    original = smart._json
    smart._json = lambda method, url, data=None: calls.append(url) or original(method, url, data)
    for n in range(3):
        assert (
            smart_client.get("/dashboard/launch", query_string={"iss": f"{base}/fhir", "launch": f"L{n}"}).status_code
            == 302
        )
    assert calls == [f"{base}/fhir/.well-known/smart-configuration"]


def test_ehr_page_is_computed_once_for_its_source_clicks(
    smart_client: FlaskClient, ehr: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.dashboard.app as dashboard_app

    base, _ = ehr
    assert smart_client.get("/dashboard/callback", query_string=_launch(smart_client, base)).status_code == 200
    computed = []
    original = dashboard_app.patient_page
    monkeypatch.setattr(dashboard_app, "patient_page", lambda *a: computed.append(1) or original(*a))
    page = smart_client.get("/dashboard/api/patients/s-p1").json
    ref = next(e["source"] for e in page["timeline"]["events"] if e.get("source"))
    for _ in range(3):
        assert smart_client.get("/dashboard/api/patients/s-p1/source", query_string={"ref": ref}).status_code == 200
    assert len(computed) == 1


def test_judge_is_built_once(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    import services.medical_necessity.judge as judge_module
    from services.dashboard.app import _judge

    built = []
    original = judge_module.judge_from_settings
    monkeypatch.setattr(judge_module, "judge_from_settings", lambda s: built.append(1) or original(s))
    app.extensions.pop(judge_module.JUDGE_EXTENSION, None)
    with app.app_context():
        assert _judge() is _judge() is _judge()
    assert len(built) == 1


def test_ingesting_one_input_does_not_block_other_patients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import services.dashboard.patients as patients_module

    for name in ("big", "small"):
        patient = {"resourceType": "Patient", "id": name, "name": [{"text": name.title()}]}
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
        (tmp_path / f"{name}.json").write_text(json.dumps(bundle))
    source = FolderSource(tmp_path)
    ids = {e.fhir_id: e.id for e in source.entries().values()}
    source.load(ids["small"])  # cached
    started, release = threading.Event(), threading.Event()
    original = patients_module.ingest

    def slow_ingest(raws: Any, strict: bool = True, problems: Any = ()) -> Any:
        started.set()
        release.wait(10)
        return original(raws, strict=strict, problems=problems)

    monkeypatch.setattr(patients_module, "ingest", slow_ingest)
    big = threading.Thread(target=source.load, args=(ids["big"],))
    big.start()
    try:
        assert started.wait(10)
        done: list[Any] = []
        small = threading.Thread(target=lambda: done.append(source.load(ids["small"])))
        small.start()
        small.join(2)
        assert done, "a cached patient waited for another input's ingest"
    finally:
        release.set()
        big.join(10)
    assert source.load(ids["big"]).entry.name == "Big"
