"""SMART on FHIR EHR launch (App Launch 2.0): discovery, authorization code with PKCE, token exchange.

The EHR opens ``/dashboard/launch?launch=..&iss=..``. ``iss`` must be one of the configured issuers
(else anyone could point us at their own authorization server). We read its
``.well-known/smart-configuration``, remember a single-use ``state`` with the PKCE verifier, and
send the browser to the authorization endpoint. The callback trades the code (with the verifier)
for an access token whose response names the patient in context. No Flask here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
import requests

from shared.config import Settings
from shared.errors import Forbidden, InvalidInput, Unauthorized, UpstreamError
from shared.ttl_store import MemoryTtlStore, TtlStore

PENDING_TTL_S = 600.0
MAX_PENDING = 1000
ID_TOKEN_ALGORITHMS = ("RS256", "ES256")
MAX_RESPONSE_BYTES = 256 * 1024
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DISCOVERY_TTL_S = 300.0
KEY_TYPES = {"RS": "RSA", "ES": "EC"}  # alg family -> JWK kty


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") in LOOPBACK


def _safe_endpoint(url: Any, iss: str, same_host: bool = False) -> str:
    """Endpoints must be https; plain http only when the configured issuer itself is loopback http
    (tests, sidecars). With ``same_host`` the endpoint must be on the issuer's host (no SSRF through
    a discovery document that points our server-side calls elsewhere)."""
    if not isinstance(url, str):
        raise UpstreamError("SMART configuration lacks an endpoint")
    parts = urlsplit(url)
    if not parts.hostname or not (parts.scheme == "https" or (_is_loopback_http(url) and _is_loopback_http(iss))):
        raise UpstreamError("SMART configuration names an endpoint that is not https")
    if same_host and parts.hostname.lower() != (urlsplit(iss).hostname or "").lower():
        raise UpstreamError("SMART configuration names an endpoint on another host than the issuer")
    return url


@dataclass(frozen=True)
class Pending:
    iss: str
    verifier: str
    token_endpoint: str
    created: float
    jwks_uri: str | None = None  # OpenID Connect: where the id_token's keys are
    issuer: str | None = None


@dataclass(frozen=True)
class Launched:
    iss: str
    access_token: str
    expires_at: float
    patient: str | None
    scope: str
    user: str | None = None  # fhirUser (else sub) of a verified id_token


class SmartLauncher:
    def __init__(
        self,
        settings: Settings,
        http: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        pending: TtlStore | None = None,
    ) -> None:
        if not settings.smart_client_id or not settings.smart_redirect_uri:
            raise ValueError("SMART launch is not configured")
        self.client_id = settings.smart_client_id
        self.redirect_uri = settings.smart_redirect_uri
        self.scopes = settings.smart_scopes
        self.issuers = frozenset(settings.smart_allowed_issuers)
        self.timeout_s = settings.fhir_timeout_s
        self._http = http or requests.Session()
        self._clock = clock
        # Launch states, single-use: Redis when configured, so the callback may reach any replica.
        self._pending = pending if pending is not None else MemoryTtlStore(MAX_PENDING)
        self._discovery: dict[str, tuple[float, dict[str, Any]]] = {}  # per issuer, a few minutes
        self._discovery_lock = threading.Lock()

    def _configuration(self, iss: str) -> dict[str, Any]:
        with self._discovery_lock:
            cached = self._discovery.get(iss)
        if cached is not None and self._clock() - cached[0] < DISCOVERY_TTL_S:
            return cached[1]
        config = self._json("GET", f"{iss}/.well-known/smart-configuration")
        with self._discovery_lock:
            self._discovery[iss] = (self._clock(), config)
        return config

    def start(self, iss: str | None, launch: str | None) -> tuple[str, str]:
        """The authorization URL to send the browser to, and the state (to bind to that browser)."""
        if not iss or not launch or len(launch) > 2048:
            raise InvalidInput("an EHR launch needs the launch and iss parameters", issue_code="required")
        iss = iss.rstrip("/")
        if iss not in self.issuers:
            raise Forbidden("iss is not an allowed FHIR server for SMART launch")
        config = self._configuration(iss)
        authorize = _safe_endpoint(config.get("authorization_endpoint"), iss)
        token = _safe_endpoint(config.get("token_endpoint"), iss, same_host=True)
        methods = config.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise UpstreamError("the authorization server does not support PKCE S256")
        jwks = _safe_endpoint(config["jwks_uri"], iss, same_host=True) if config.get("jwks_uri") else None
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        issuer = config.get("issuer") if isinstance(config.get("issuer"), str) else None
        self._pending.put(state, asdict(Pending(iss, verifier, token, self._clock(), jwks, issuer)), PENDING_TTL_S)
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scopes,
            "state": state,
            "aud": iss,
            "launch": launch,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        return f"{authorize}{'&' if '?' in authorize else '?'}{urlencode(query)}", state

    def finish(self, code: str | None, state: str | None, error: str | None = None) -> Launched:
        """Trade the code for a token; the state is single-use and must be one we issued."""
        taken = self._pending.take(state) if state else None
        pending = Pending(**taken) if taken is not None else None
        if pending is None or self._clock() - pending.created > PENDING_TTL_S:
            raise Unauthorized("unknown or expired launch state")
        if error or not code:
            raise Unauthorized("the authorization server did not grant access")
        body = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": pending.verifier,
        }
        answer = self._json("POST", pending.token_endpoint, data=body)
        token = answer.get("access_token")
        if not isinstance(token, str) or not token or str(answer.get("token_type", "")).lower() != "bearer":
            raise UpstreamError("the token response holds no bearer access token")
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 3600.0
        patient = answer.get("patient")
        return Launched(
            pending.iss,
            token,
            self._clock() + lifetime,
            patient if isinstance(patient, str) and patient else None,
            str(answer.get("scope") or ""),
            self._user(pending, answer.get("id_token")),
        )

    def _user(self, pending: Pending, id_token: Any) -> str | None:
        """Who signed in at the EHR, from an id_token verified against the server's keys; None when
        the server sent none or publishes no keys (the session is then named after the EHR)."""
        if not isinstance(id_token, str) or pending.jwks_uri is None:
            return None
        try:
            header = jwt.get_unverified_header(id_token)
            alg, kid = header.get("alg"), header.get("kid")
            if alg not in ID_TOKEN_ALGORITHMS:
                raise ValueError("id_token algorithm not allowed")
            kty = KEY_TYPES[alg[:2]]
            keys = jwt.PyJWKSet.from_dict(self._json("GET", pending.jwks_uri))
            key = next(k for k in keys.keys if k.key_type == kty and (kid is None or k.key_id == kid))
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=[alg],
                audience=self.client_id,
                issuer=pending.issuer or pending.iss,
                options={"require": ["exp", "iat", "sub"]},
            )
        except (jwt.PyJWTError, StopIteration, ValueError, TypeError, KeyError):
            raise Unauthorized("the EHR's id_token could not be verified") from None
        user = claims.get("fhirUser") or claims.get("sub")
        return str(user)[:256] if user else None

    def _json(self, method: str, url: str, data: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            response = self._http.request(
                method,
                url,
                data=data,
                timeout=self.timeout_s,
                headers={"Accept": "application/json"},
                stream=True,
                allow_redirects=False,  # a redirect could send our server-side call anywhere
            )
            content = response.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
        except requests.RequestException:
            raise UpstreamError("the SMART authorization server could not be reached") from None
        if response.status_code != 200 or len(content) > MAX_RESPONSE_BYTES:
            raise UpstreamError(f"the SMART authorization server answered {response.status_code}")
        try:
            parsed = json.loads(content)
        except ValueError:
            raise UpstreamError("the SMART authorization server sent invalid JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamError("the SMART authorization server sent invalid JSON")
        return parsed
