"""Hostile input (issue 16): each malformed request gets a 4xx FHIR OperationOutcome naming the problem,
never a 500, a stack trace or the input echoed back. One test per finding of the attack run."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient

from shared.config import load_settings
from tests.test_cds_hooks import Cds, claims_for, error, jwks_file, keys, make_cds  # noqa: F401 (fixtures)
from tests.test_history_api import assert_outcome
from tests.test_necessity_api import egfr_bundle

FHIR = {"Content-Type": "application/fhir+json"}
JSON = {"Content-Type": "application/json"}
MARK = "zz-hostile-marker"  # what an attacker would like to see reflected


def bearer(mint: Callable[..., str], *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(list(scopes))}"}


def deep_contained(depth: int) -> dict[str, Any]:
    """A Bundle whose MedicationRequest holds ``depth`` nested contained Medications (JSON depth ~2x)."""
    bundle = egfr_bundle()
    inner: dict[str, Any] = {"resourceType": "Medication", "id": "m0"}
    for i in range(depth):
        inner = {"resourceType": "Medication", "id": f"m{i + 1}", "contained": [inner]}
    bundle["entry"][-1]["resource"]["contained"] = [inner]
    return bundle


# --- 500s that must be 4xx ------------------------------------------------------------------------


def test_resource_nested_120_levels_is_400_not_recursion_error(client: FlaskClient, mint: Callable[..., str]) -> None:
    body = json.dumps(deep_contained(120))
    for url, scope in (("/history/v1/timeline", "history.read"), ("/necessity/v1/evaluate", "necessity.read")):
        answer = client.post(url, data=body, headers=bearer(mint, scope) | FHIR)
        assert_outcome(answer, 400, "MAX_JSON_DEPTH")


def test_deep_json_to_radiology_is_400(client: FlaskClient, mint: Callable[..., str]) -> None:
    body = '{"text": "no effusion", "uid": ' + "[" * 5000 + "]" * 5000 + "}"
    answer = client.post("/radiology/v1/classify", data=body, headers=bearer(mint, "radiology.read") | JSON)
    assert_outcome(answer, 400, "MAX_JSON_DEPTH")


def test_lone_surrogate_in_radiology_text_is_400(client: FlaskClient, mint: Callable[..., str]) -> None:
    headers = bearer(mint, "radiology.read") | JSON
    for body in ('{"text": "effusion \\ud800 here"}', '{"reports": [{"text": "x \\udc00"}]}'):
        url = "/radiology/v1/classify" + ("/batch" if "reports" in body else "")
        assert_outcome(client.post(url, data=body, headers=headers), 400, "surrogate")


def test_nul_byte_in_an_audit_path_is_400_without_the_path(tmp_path: Path, mint: Callable[..., str]) -> None:
    from oncotwin.app import create_app

    root = tmp_path / "inputs"
    root.mkdir()
    settings = load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path / "var"), "AUDIT_INPUT_ROOT": str(root)})
    from shared.auth import LocalKeys

    keys_ = LocalKeys(settings.data_dir)
    keys_.ensure()
    token = keys_.mint("dr", ["necessity.audit"], 600, issuer=settings.token_issuer, audience=settings.token_audience)
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {token}"}
    for path in (f"{MARK}\x00.json", f"a/{MARK}\n", f"{MARK}-missing.json", f"../{MARK}"):
        answer = client.post("/necessity/v1/audits", json={"paths": [path]}, headers=headers)
        body = assert_outcome(answer, 400, "the audit path")
        assert MARK not in json.dumps(body)


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": ["https://ehr.example.org"]},
        {"iss": {"name": "https://ehr.example.org"}},
        {"iss": 7},
        {"exp": "9999999999"},
        {"exp": True},
        {"iat": "0"},
        {"nbf": "0"},
        {"aud": {"url": "x"}},
        {"aud": [1, 2]},
        {"aud": 3},
    ],
    ids=lambda c: "-".join(f"{k}={type(v).__name__}" for k, v in c.items()),
)
def test_cds_jwt_claims_of_the_wrong_type_are_401(make_cds: Callable[..., Cds], claims: dict[str, Any]) -> None:  # noqa: F811
    cds = make_cds()
    path = "/cds-services/oncotwin-navigation"
    # Signed by a trusted key as raw JWS: PyJWT's own encoder refuses such claims.
    payload = json.dumps(claims_for(path) | claims).encode()
    token = jwt.PyJWS().encode(payload, cds.key.private, algorithm=cds.key.alg, headers={"kid": cds.key.kid})
    body = {"hook": "patient-view", "hookInstance": "x", "context": {"patientId": "p"}}
    answer = cds.post("oncotwin-navigation", body, token=token)
    error(answer, 401, "token")  # the CDS Hooks error shape of this service ({error, message, requestId})
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert not cds.calls  # nothing evaluated


# --- request ids and echoes -----------------------------------------------------------------------


def test_request_id_is_bounded(client: FlaskClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123.x_y"}).headers["X-Request-ID"] == "abc-123.x_y"
    for hostile in ("a" * 65, f"<{MARK}>", f"{MARK} two", "é", ""):
        answer = client.get("/health", headers={"X-Request-ID": hostile})
        given = answer.headers["X-Request-ID"]
        assert given != hostile and MARK not in given and len(given) == 32 and given.isalnum()


def test_unknown_search_keys_are_not_echoed(tmp_path: Path, mint: Callable[..., str]) -> None:
    from oncotwin.app import create_app

    settings = load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path / "var")})
    from shared.auth import LocalKeys

    keys_ = LocalKeys(settings.data_dir)
    keys_.ensure()
    token = keys_.mint("dr", ["necessity.audit"], 600, issuer=settings.token_issuer, audience=settings.token_audience)
    client = create_app(settings).test_client()
    for search in ({f"<{MARK}>": 1}, {f"<{MARK}>": "x"}, {"name": {MARK: 1}}):
        answer = client.post(
            "/necessity/v1/audits", json={"fhirSearches": [search]}, headers={"Authorization": f"Bearer {token}"}
        )
        body = assert_outcome(answer, 400, "fhirSearches")
        assert MARK not in json.dumps(body)


def test_invalid_resource_ids_are_not_echoed_in_strict_mode(client: FlaskClient, mint: Callable[..., str]) -> None:
    bundle = egfr_bundle()
    bundle["entry"][1]["resource"]["id"] = f"<script>{MARK}</script>"
    answer = client.post(
        "/history/v1/timeline?strict=true", data=json.dumps(bundle), headers=bearer(mint, "history.read") | FHIR
    )
    body = assert_outcome(answer, 400, "Condition")
    assert MARK not in json.dumps(body)
    # and lenient: the issue list of a 200 does not carry it either
    answer = client.post("/history/v1/timeline", data=json.dumps(bundle), headers=bearer(mint, "history.read") | FHIR)
    assert answer.status_code == 200 and MARK not in answer.get_data(as_text=True)


def test_presented_form_counts_against_the_report_length(client: FlaskClient, mint: Callable[..., str]) -> None:
    from services.radiology.service import MAX_TEXT_CHARS

    text = ("No pleural effusion. " * (MAX_TEXT_CHARS // 20 + 10)).encode()
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "presentedForm": [{"contentType": "text/plain", "data": base64.b64encode(text).decode()}],
    }
    answer = client.post("/radiology/v1/classify", json=report, headers=bearer(mint, "radiology.read"))
    assert_outcome(answer, 400, f"longer than {MAX_TEXT_CHARS} characters")
