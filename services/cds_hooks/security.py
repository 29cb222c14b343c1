"""Trusting CDS Clients: the signed JWT every CDS Hooks call carries (CDS Hooks 2.0, "Security").

A hook call is evaluated only after its ``Authorization: Bearer <JWT>`` passes, in this order:

1. header: ``alg`` in ``CDS_JWT_ALGORITHMS`` (asymmetric only: ``none`` and HMAC are refused before
   any key is looked at), ``kid`` present, ``jku`` (if any) on the ``CDS_ALLOWED_JKU`` list;
2. key: the ``kid`` in the ``jku`` JWK Set when one is named, else in the configured JWKS
   (``CDS_JWKS_FILE`` / ``CDS_JWKS_URL``); the key's type and curve must fit ``alg`` (no confusion);
3. claims: signature, ``iss`` in ``CDS_ALLOWED_ISSUERS``, ``aud`` equal to the exact endpoint URL
   (``CDS_BASE_URL`` + path), ``exp``/``iat`` within ``CDS_LEEWAY_SECONDS``, at most
   ``MAX_TOKEN_AHEAD_S`` ahead, ``jti`` present;
4. replay: the ``(iss, jti)`` pair is recorded until the token expires; a second use is refused.
   Recorded only after 1-3 pass, so unauthenticated junk cannot fill the store.

Every failure is ``Unauthorized`` with a short fixed message (nothing from the token or a library).
With no key source configured every call is refused: secure by default.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from shared.auth import CachedRemoteJwks, WatchedJwksFile
from shared.config import CDS_ASYMMETRIC_ALGORITHMS, Settings
from shared.errors import ConfigError, Unauthorized, UpstreamError

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16 * 1024
MAX_TOKEN_AHEAD_S = 3600  # CDS JWTs are per call (minutes); bounds how long a jti must be remembered
MAX_JTI_CHARS = 256
MIN_RSA_BITS = 2048
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
NOT_CONFIGURED = (
    "CDS Hooks client authentication is not configured: set CDS_JWKS_FILE or CDS_JWKS_URL "
    "(or CDS_ALLOWED_JKU), CDS_ALLOWED_ISSUERS and CDS_BASE_URL"
)
_FAILURES: tuple[tuple[type[Exception], str], ...] = (  # most specific first
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience is not this service endpoint"),
    (jwt.InvalidIssuedAtError, "token issued-at invalid"),
    (jwt.InvalidSignatureError, "token signature invalid"),
    (jwt.InvalidAlgorithmError, "unsupported token algorithm"),
    (jwt.DecodeError, "malformed token"),
)


@dataclass(frozen=True)
class CdsClient:
    """The verified CDS Client: who called (for the access log), never what it sent."""

    issuer: str
    subject: str
    tenant: str | None


# --- replay protection --------------------------------------------------------------------------


class ReplayStore(Protocol):
    def first_use(self, key: str, ttl_s: int) -> bool:
        """Record ``key`` for ``ttl_s`` seconds; False if it was already recorded (a replay)."""
        ...


class MemoryReplayStore:
    """One process's memory (the embedded default). Entries leave when their token expires."""

    def __init__(self, max_entries: int = 200_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._max = max_entries
        self._clock = clock

    def first_use(self, key: str, ttl_s: int) -> bool:
        with self._lock:
            now = self._clock()
            while self._expiry and self._expiry[0][0] <= now:
                _, old = heapq.heappop(self._expiry)
                if self._seen.get(old, now + 1) <= now:
                    del self._seen[old]
            if key in self._seen:
                return False
            if len(self._seen) >= self._max:  # fail closed rather than forget live jtis
                raise UpstreamError("CDS replay store is full; retry shortly", status=503)
            self._seen[key] = now + ttl_s
            heapq.heappush(self._expiry, (now + ttl_s, key))
            return True


class RedisReplayStore:
    """Shared by every worker and replica: ``SET key 1 NX EX ttl`` is atomic, so two workers given
    the same token cannot both accept it. Redis down: 503 (fail closed), never an unchecked call."""

    def __init__(self, url: str, prefix: str = "oncotwin:cds:jti:", timeout_s: float = 2.0) -> None:
        import redis  # deferred: only deployments with REDIS_URL need the client

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.prefix = prefix

    def first_use(self, key: str, ttl_s: int) -> bool:
        try:
            return bool(self._redis.set(self.prefix + key, b"1", nx=True, ex=max(1, ttl_s)))
        except self._errors:
            log.warning("CDS replay store (Redis) unavailable")
            raise UpstreamError("CDS replay store unavailable", status=503) from None


# --- JWK Sets -------------------------------------------------------------------------------------


def _jwk_entries(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return []
    return [k for k in document["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)]


class _JwkSource(Protocol):
    def entries(self, *, refresh: bool = False) -> list[dict[str, Any]]: ...


class FileJwks:
    """``CDS_JWKS_FILE``: the client keys on disk, re-read when they change (see ``WatchedJwksFile``)."""

    def __init__(self, path: Path) -> None:
        self._file = WatchedJwksFile(path, _jwk_entries, f"CDS_JWKS_FILE {path} holds no key with a kid")

    def entries(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        return self._file.read()


class RemoteJwks:
    """A JWK Set at a URL (``CDS_JWKS_URL`` or an allow-listed ``jku``): cached, bounded, no redirects."""

    def __init__(self, url: str, session: requests.Session, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._remote = CachedRemoteJwks(url, _jwk_entries, "CDS client keys unavailable", session=session, clock=clock)

    def entries(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        return self._remote.read(refresh=refresh)


def _public_key(entry: dict[str, Any], alg: str) -> Any | None:
    """The key of ``entry`` if it may verify ``alg`` tokens: the JWK's own ``alg`` (if stated) must
    be ``alg``, its type and curve must fit, RSA at least 2048 bits. None otherwise."""
    if entry.get("use", "sig") != "sig" or entry.get("alg", alg) != alg:
        return None
    try:
        key = jwt.PyJWK(entry, algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    if alg.startswith("ES"):
        return key if isinstance(key, EllipticCurvePublicKey) and key.curve.name == EC_CURVES[alg] else None
    return key if isinstance(key, RSAPublicKey) and key.key_size >= MIN_RSA_BITS else None


# --- the verifier ---------------------------------------------------------------------------------


class ClientVerifier:
    """Turns an ``Authorization`` header plus the endpoint URL into a ``CdsClient``. Thread-safe."""

    def __init__(
        self,
        *,
        issuers: tuple[str, ...],
        algorithms: tuple[str, ...],
        jwks: _JwkSource | None,
        allowed_jku: tuple[str, ...],
        replay: ReplayStore,
        leeway_s: int = 30,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        if not set(algorithms) <= CDS_ASYMMETRIC_ALGORITHMS:
            raise ConfigError("CDS_JWT_ALGORITHMS may only name asymmetric algorithms")
        self.issuers = frozenset(issuers)
        self.algorithms = frozenset(algorithms)
        self.allowed_jku = frozenset(allowed_jku)
        self.enabled = bool(issuers) and (jwks is not None or bool(allowed_jku))
        self._jwks = jwks
        self._replay = replay
        self._leeway = leeway_s
        self._clock = clock
        self._session = session or requests.Session()
        self._jku_sources = {url: RemoteJwks(url, self._session) for url in allowed_jku}

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientVerifier:
        session = requests.Session()
        jwks: _JwkSource | None = None
        if settings.cds_jwks_file is not None:
            jwks = FileJwks(settings.cds_jwks_file)
        elif settings.cds_jwks_url is not None:
            jwks = RemoteJwks(settings.cds_jwks_url, session)
        replay: ReplayStore = RedisReplayStore(settings.redis_url) if settings.redis_url else MemoryReplayStore()
        return cls(
            issuers=settings.cds_allowed_issuers,
            algorithms=settings.cds_algorithms,
            jwks=jwks,
            allowed_jku=settings.cds_allowed_jku,
            replay=replay,
            leeway_s=settings.cds_leeway_s,
            session=session,
        )

    def verify(self, authorization_header: str | None, audience: str) -> CdsClient:
        if not self.enabled:
            raise Unauthorized(NOT_CONFIGURED)
        token = _bearer(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg, kid, jku = header.get("alg"), header.get("kid"), header.get("jku")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthorized(f"token algorithm must be one of {', '.join(sorted(self.algorithms))}")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("token header has no kid")
        if jku is not None and (not isinstance(jku, str) or jku not in self.allowed_jku):
            raise Unauthorized("token jku is not an allowed JWK Set URL")
        key = self._key(kid, alg, jku)
        claims = self._claims(token, key, alg, audience)
        self._check_replay(claims)
        subject = claims.get("sub")
        tenant = claims.get("tenant")
        return CdsClient(
            issuer=claims["iss"],
            subject=subject if isinstance(subject, str) and subject else claims["iss"],
            tenant=tenant if isinstance(tenant, str) else None,
        )

    def _key(self, kid: str, alg: str, jku: str | None) -> Any:
        source = self._jku_sources[jku] if jku is not None else self._jwks
        if source is None:
            raise Unauthorized("token names no jku and no CDS_JWKS_FILE/CDS_JWKS_URL is configured")
        for refresh in (False, True):
            candidates = [e for e in source.entries(refresh=refresh) if e.get("kid") == kid]
            if candidates:
                for entry in candidates:
                    key = _public_key(entry, alg)
                    if key is not None:
                        return key
                raise Unauthorized("token algorithm does not match its key")
        raise Unauthorized("token signed by an unknown key")

    def _claims(self, token: str, key: Any, alg: str, audience: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],  # the one the key was chosen for
                audience=audience,
                leeway=self._leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"], "verify_signature": True},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token missing required claim {exc.claim!r}") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(next((m for t, m in _FAILURES if isinstance(exc, t)), "token invalid")) from None
        # Claim types first: a signed token from a trusted key may still carry a list, an object or a
        # string where a string or a number belongs, and every comparison below must see the right type.
        if not isinstance(claims["iss"], str) or claims["iss"] not in self.issuers:
            raise Unauthorized("token issuer not accepted")
        aud = claims["aud"]
        if not (isinstance(aud, str) or (isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud))):
            raise Unauthorized("token audience is not this service endpoint")
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _number(claims[name]):
                raise Unauthorized(f"token {name} must be a number")
        now = self._clock()
        if claims["iat"] > now + self._leeway:
            raise Unauthorized("token issued-at invalid")
        if claims["exp"] > now + MAX_TOKEN_AHEAD_S + self._leeway:
            raise Unauthorized("token lifetime too long")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise Unauthorized("token jti invalid")
        return claims

    def _check_replay(self, claims: dict[str, Any]) -> None:
        digest = hashlib.sha256(f"{claims['iss']}\n{claims['jti']}".encode()).hexdigest()
        ttl = int(claims["exp"] - self._clock()) + self._leeway + 1
        if not self._replay.first_use(digest, max(1, ttl)):
            raise Unauthorized("token already used (jti replay)")


def _number(value: Any) -> bool:
    """A JSON number (NumericDate), not a bool, a numeric string, NaN or infinity."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value and abs(value) < 1e15


def _bearer(authorization_header: str | None) -> str:
    if not authorization_header or not authorization_header.strip():
        raise Unauthorized("missing bearer token (a CDS Client JWT)")
    parts = authorization_header.split()
    if parts[0].lower() != "bearer" or len(parts) != 2:
        raise Unauthorized("authorization must be 'Bearer <JWT>'")
    if len(parts[1]) > MAX_TOKEN_CHARS:
        raise Unauthorized("token too large")
    return parts[1]
