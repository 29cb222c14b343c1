"""Bearer-token verification, the embedded signing key, scopes and the access log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from shared.access_log import configure_access_log, log_access
from shared.auth import SCOPES, LocalKeys, Principal, TokenVerifier, require_scope
from shared.config import Settings, load_settings
from shared.errors import Forbidden, Unauthorized, UpstreamError

ISSUER, AUDIENCE = "oncotwin-local", "oncotwin"
IDP = "https://idp.example.org"


def _settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path), **env})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """Hand-built JWT, for algorithms PyJWT rightly refuses to produce (none, HS256 with a PEM)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    return signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "dr-who", "iat": now, "exp": now + 600, **extra}


def _rejects(verifier: TokenVerifier, token: str, fragment: str) -> None:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(f"Bearer {token}")
    assert fragment in info.value.message
    assert token not in info.value.message
    assert info.value.status == 401


@pytest.fixture
def local(tmp_path: Path) -> LocalKeys:
    keys = LocalKeys(tmp_path)
    keys.ensure()
    return keys


@pytest.fixture
def verifier(tmp_path: Path, local: LocalKeys) -> TokenVerifier:
    return TokenVerifier.from_settings(_settings(tmp_path))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _private_key(local: LocalKeys) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(local.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _rsa_jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid, "use": "sig"}]}


# --- the local key --------------------------------------------------------------------------------


def test_local_key_is_created_once_and_reused(tmp_path: Path) -> None:
    first = LocalKeys(tmp_path)
    first.ensure()
    pem = first.key_path.read_bytes()
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.dir.stat().st_mode) == 0o700

    second = LocalKeys(tmp_path)
    assert second.kid == first.kid
    assert second.key_path.read_bytes() == pem
    published = json.loads(first.jwks_path.read_text())
    assert published == first.jwks
    (jwk,) = published["keys"]
    assert jwk["kid"] == first.kid and jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert "d" not in jwk  # the public set never carries the private scalar
    assert not list(first.dir.glob(".*"))  # no temp files left behind


def test_minted_token_verifies_with_its_scopes(local: LocalKeys, verifier: TokenVerifier) -> None:
    token = local.mint("dr-who", ["history.read", "radiology.read"], issuer=ISSUER, audience=AUDIENCE)
    assert jwt.get_unverified_header(token)["kid"] == local.kid
    principal = verifier.verify(f"Bearer {token}")
    assert principal == Principal("dr-who", frozenset({"history.read", "radiology.read"}), None)


def test_mint_rejects_scopes_with_whitespace(local: LocalKeys) -> None:
    with pytest.raises(ValueError):
        local.mint("dr-who", ["history.read admin"], issuer=ISSUER, audience=AUDIENCE)


# --- rejections -----------------------------------------------------------------------------------


def test_expired_token_is_rejected(local: LocalKeys, verifier: TokenVerifier) -> None:
    token = local.mint("dr-who", ["admin"], ttl_seconds=-3600, issuer=ISSUER, audience=AUDIENCE)
    _rejects(verifier, token, "expired")


def test_token_from_the_future_is_rejected(local: LocalKeys, verifier: TokenVerifier) -> None:
    token = local.mint("dr-who", ["admin"], issuer=ISSUER, audience=AUDIENCE, now=int(time.time()) + 3600)
    _rejects(verifier, token, "not yet valid")


def test_leeway_tolerates_small_clock_skew(local: LocalKeys, verifier: TokenVerifier) -> None:
    token = local.mint("dr-who", ["admin"], issuer=ISSUER, audience=AUDIENCE, now=int(time.time()) + 10)
    assert verifier.verify(f"Bearer {token}").subject == "dr-who"


def test_forged_token_with_the_local_kid_is_rejected(local: LocalKeys, verifier: TokenVerifier) -> None:
    forger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(scope="admin"), forger, algorithm="ES256", headers={"kid": local.kid})
    _rejects(verifier, token, "signature invalid")


@pytest.mark.parametrize("secret_file", ["jwks.json", "public.pem"])
def test_hs256_with_the_public_key_as_secret_is_rejected(
    local: LocalKeys, verifier: TokenVerifier, secret_file: str
) -> None:
    """Algorithm confusion: a verifier trusting the header would HMAC-check with the public key."""
    if secret_file == "jwks.json":
        secret = local.jwks_path.read_bytes()
    else:
        secret = (
            _private_key(local)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    token = _raw_token({"alg": "HS256", "typ": "JWT", "kid": local.kid}, _claims(scope="admin"), secret)
    _rejects(verifier, token, "unsupported token algorithm")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_token_is_rejected(local: LocalKeys, verifier: TokenVerifier, alg: str) -> None:
    token = _raw_token({"alg": alg, "kid": local.kid}, _claims(scope="admin"), None)
    _rejects(verifier, token, "unsupported token algorithm")


def test_wrong_issuer_is_rejected(local: LocalKeys, verifier: TokenVerifier) -> None:
    token = local.mint("dr-who", ["admin"], issuer="https://evil.example", audience=AUDIENCE)
    _rejects(verifier, token, "issuer not accepted")


def test_wrong_audience_is_rejected(local: LocalKeys, verifier: TokenVerifier) -> None:
    token = local.mint("dr-who", ["admin"], issuer=ISSUER, audience="some-other-api")
    _rejects(verifier, token, "audience not accepted")


@pytest.mark.parametrize("missing", ["exp", "sub", "iss", "aud"])
def test_required_claims(local: LocalKeys, verifier: TokenVerifier, missing: str) -> None:
    claims = _claims()
    del claims[missing]
    token = jwt.encode(claims, _private_key(local), algorithm="ES256", headers={"kid": local.kid})
    _rejects(verifier, token, missing)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("   ", "missing bearer token"),
        ("Basic ZHI6d2hv", "must be Bearer"),
        ("Bearer", "malformed bearer token"),
        ("Bearer a b", "malformed bearer token"),
        ("Bearer not-a-jwt", "malformed token"),
    ],
)
def test_missing_or_non_bearer_header(verifier: TokenVerifier, header: str | None, fragment: str) -> None:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(header)
    assert fragment in info.value.message


# --- JWKS file (an external IdP, RS256) -----------------------------------------------------------


def test_rs256_token_verifies_against_a_jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_file = tmp_path / "idp-jwks.json"
    jwks_file.write_text(json.dumps(_rsa_jwks(rsa_key, "idp-1")))
    settings = _settings(tmp_path, AUTH_JWKS_FILE=str(jwks_file), AUTH_ISSUER=IDP)
    verifier = TokenVerifier.from_settings(settings)
    assert not (tmp_path / "keys").exists()  # an external IdP means no local key is created

    claims = _claims(iss=IDP, scp=["necessity.read", "necessity.audit"], azp="tumor-board-app")
    token = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "idp-1"})
    principal = verifier.verify(f"Bearer {token}")
    assert principal == Principal("dr-who", frozenset({"necessity.read", "necessity.audit"}), "tumor-board-app")

    # The header may not pick a different algorithm for an RSA key.
    ec_token = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), "ES256", headers={"kid": "idp-1"})
    _rejects(verifier, ec_token, "does not match")
    # PS256 is not on the allow-list even though the key is RSA.
    ps_token = jwt.encode(claims, rsa_key, algorithm="PS256", headers={"kid": "idp-1"})
    _rejects(verifier, ps_token, "unsupported token algorithm")


# --- JWKS URL -------------------------------------------------------------------------------------


class _JwksServer:
    """A real HTTP server on 127.0.0.1 that counts how often the JWKS is fetched."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey, no_proxy: None) -> Iterator[_JwksServer]:
    server = _JwksServer(_rsa_jwks(rsa_key, "idp-1"))
    yield server
    server.close()


def test_jwks_url_is_cached_and_an_unknown_kid_refetches_once(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, jwks_server: _JwksServer
) -> None:
    now = [1000.0]
    settings = _settings(tmp_path, AUTH_JWKS_URL=jwks_server.url, AUTH_ISSUER=IDP)
    verifier = TokenVerifier.from_settings(settings, clock=lambda: now[0])

    good = jwt.encode(_claims(iss=IDP, scope="history.read"), rsa_key, "RS256", headers={"kid": "idp-1"})
    assert verifier.verify(f"Bearer {good}").scopes == {"history.read"}
    assert verifier.verify(f"Bearer {good}").subject == "dr-who"
    assert jwks_server.fetches == 1  # cached

    now[0] += 60  # past the refetch cooldown
    for i in range(20):  # a flood of forged kids
        forged = jwt.encode(_claims(iss=IDP), rsa_key, "RS256", headers={"kid": f"forged-{i}"})
        _rejects(verifier, forged, "unknown key")
    assert jwks_server.fetches == 2  # exactly one refetch

    # Key rotation: the IdP publishes a new key; after the cooldown its first token refetches.
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.document = {"keys": _rsa_jwks(rsa_key, "idp-1")["keys"] + _rsa_jwks(rotated, "idp-2")["keys"]}
    now[0] += 60
    new = jwt.encode(_claims(iss=IDP), rotated, "RS256", headers={"kid": "idp-2"})
    assert verifier.verify(f"Bearer {new}").subject == "dr-who"
    assert jwks_server.fetches == 3

    now[0] += 601  # TTL expired: the next verification refetches
    verifier.verify(f"Bearer {good}")
    assert jwks_server.fetches == 4


def test_unreachable_idp_is_an_upstream_error_not_a_401(tmp_path: Path, no_proxy: None) -> None:
    server = _JwksServer({"keys": []})
    url = server.url
    server.close()  # nothing listens on that port any more
    verifier = TokenVerifier.from_settings(_settings(tmp_path, AUTH_JWKS_URL=url))
    token = _raw_token({"alg": "RS256", "kid": "idp-1"}, _claims(), b"x")
    with pytest.raises(UpstreamError) as info:
        verifier.verify(f"Bearer {token}")
    assert info.value.status == 503


# --- scopes and the access log ---------------------------------------------------------------------


def test_require_scope() -> None:
    principal = Principal("dr-who", frozenset({"history.read"}), None)
    require_scope(principal, "history.read")
    with pytest.raises(Forbidden) as info:
        require_scope(principal, "necessity.audit")
    assert info.value.status == 403 and "necessity.audit" in info.value.message
    expected = {"history.read", "navigation.read", "necessity.read", "necessity.audit", "radiology.read"}
    assert set(SCOPES) == expected | {"admin"}


def test_access_log_is_one_json_line_without_clinical_data(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.log"
    configure_access_log(path)
    try:
        principal = Principal("dr-who", frozenset({"history.read"}), "tumor-board-app")
        log_access(principal, "history.read", "patient-42\nforged", "ok", request_id="req-1")
        log_access(principal, "necessity.audit", None, "denied")
    finally:
        configure_access_log(None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # a newline in an id cannot forge a line
    entry = json.loads(lines[0])
    assert set(entry) == {"time", "subject", "client", "action", "patient", "outcome", "requestId"}
    assert entry["subject"] == "dr-who" and entry["patient"] == "patient-42\nforged"
    assert entry["client"] == "tumor-board-app" and entry["requestId"] == "req-1"
    assert entry["time"].endswith("Z")
    assert json.loads(lines[1])["patient"] is None
