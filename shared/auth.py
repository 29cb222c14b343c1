"""Bearer-token authentication: who is calling, and with which scopes.

Tokens are JWTs verified against a JWKS from the identity provider (``AUTH_JWKS_URL``), a file
(``AUTH_JWKS_FILE``) or, with neither, the embedded default's own key in ``data_dir/keys`` so a
single-node install is secure out of the box. Only RS256 and ES256 are accepted, and the algorithm
used to verify comes from the key, never from the token header alone (algorithm confusion).

Every verification failure is an ``Unauthorized`` with a short fixed message: token contents and
library exception text never reach a caller or a log.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm

from shared.config import Settings
from shared.errors import ConfigError, Forbidden, Unauthorized, UpstreamError

T = TypeVar("T")

log = logging.getLogger(__name__)

SCOPES: Mapping[str, str] = MappingProxyType(
    {
        "history.read": "read a patient's clinical history and timeline",
        "navigation.read": "read care-navigation status and next steps",
        "necessity.read": "read medical-necessity assessments",
        "necessity.audit": "run batch necessity audits over many patients and read their reports",
        "radiology.read": "read radiology findings and follow-up recommendations",
        "admin": "operate the service (ingest, keys, configuration)",
    }
)

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256"})
MAX_TOKEN_CHARS = 16 * 1024  # far above any real access token; bounds parsing work on junk
JWKS_TTL_S = 600.0
JWKS_REFETCH_COOLDOWN_S = 30.0  # min gap between fetches, so forged kids cannot hammer the IdP
JWKS_TIMEOUT_S = 5.0
JWKS_MAX_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class Principal:
    """The verified caller. ``client`` is the OAuth client (``azp``/``client_id``) acting for it."""

    subject: str
    scopes: frozenset[str]
    client: str | None = None


def require_scope(principal: Principal, scope: str) -> None:
    """Raise ``Forbidden`` unless the caller holds ``scope`` (no implied or wildcard scopes)."""
    if scope not in principal.scopes:
        raise Forbidden(f"scope {scope!r} required")


# --- the embedded default's own key -------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint: a ``kid`` that is stable and derived from the key itself."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[str(jwk["kty"])]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _write_atomic(path: Path, data: bytes, mode: int, *, exclusive: bool) -> bool:
    """Write via a temp file so readers never see half a file. ``exclusive``: never overwrite,
    so two processes creating the key at once agree on one (returns False if it already existed)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # file system without hard links: best effort
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class LocalKeys:
    """The EC P-256 signing key of the embedded default, kept in ``data_dir/keys``.

    The private key never leaves the directory (0700, key file 0600); ``jwks.json`` beside it is the
    public half the verifier reads, so the CLI that mints and the server that verifies agree.
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "keys"
        self.key_path = self.dir / "signing-key.pem"
        self.jwks_path = self.dir / "jwks.json"
        self._loaded: tuple[ec.EllipticCurvePrivateKey, dict[str, str]] | None = None

    def ensure(self) -> None:
        """Create the key on first use, else load it; (re)write ``jwks.json`` if it is out of date."""
        self._load()

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, dict[str, str]]:
        if self._loaded is not None:
            return self._loaded
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not self.key_path.exists():
            new = ec.generate_private_key(ec.SECP256R1())
            pem = new.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_atomic(self.key_path, pem, 0o600, exclusive=True)
        if self.key_path.stat().st_mode & 0o077:
            os.chmod(self.key_path, 0o600)
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(f"{self.key_path} is not an EC P-256 private key")
        jwk: dict[str, str] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk = {k: jwk[k] for k in ("kty", "crv", "x", "y")}
        jwk.update(kid=jwk_thumbprint(jwk), alg="ES256", use="sig")
        document = json.dumps({"keys": [jwk]}, indent=2).encode("utf-8") + b"\n"
        try:
            current = self.jwks_path.read_bytes()
        except FileNotFoundError:
            current = b""
        if current != document:
            _write_atomic(self.jwks_path, document, 0o644, exclusive=False)
        self._loaded = key, jwk
        return self._loaded

    @property
    def kid(self) -> str:
        return self._load()[1]["kid"]

    @property
    def jwks(self) -> dict[str, Any]:
        """The public JWK set (what ``jwks.json`` holds)."""
        return {"keys": [dict(self._load()[1])]}

    def mint(
        self,
        subject: str,
        scopes: Iterable[str],
        ttl_seconds: int = 3600 * 8,
        *,
        issuer: str,
        audience: str,
        now: int | None = None,
    ) -> str:
        """Sign an ES256 access token. ``now`` (epoch seconds) lets callers pin the clock."""
        scope_list = sorted(set(scopes))
        if not subject or any(s.split() != [s] for s in scope_list):
            raise ValueError("subject must be non-empty and scopes single words")
        key, jwk = self._load()
        iat = int(time.time()) if now is None else now
        claims = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl_seconds,
            "jti": secrets.token_urlsafe(16),
            "scope": " ".join(scope_list),
        }
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": jwk["kid"], "typ": "JWT"})


# --- JWKS sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str
    key: Any  # a cryptography public key


def _parse_jwks(document: Any) -> list[_Key]:
    """Usable signing keys of a JWK set; anything we would not verify with is dropped here."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return []
    keys: list[_Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(entry)  # alg from the JWK's "alg", else from kty/crv
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if parsed.algorithm_name not in ALLOWED_ALGORITHMS:
            continue
        if isinstance(parsed.key, RSAPublicKey) and parsed.key.key_size < MIN_RSA_BITS:
            continue
        kid = entry.get("kid")
        keys.append(_Key(kid if isinstance(kid, str) else None, parsed.algorithm_name, parsed.key))
    return keys


class _KeySource(Protocol):
    def keys(self, *, refresh: bool = False) -> list[_Key]: ...


class WatchedJwksFile(Generic[T]):
    """A JWK Set on disk, re-read when its mtime changes so keys rotate without a restart; a broken
    or empty rewrite keeps the last good keys. ``parse`` turns the JSON document into key entries."""

    def __init__(self, path: Path, parse: Callable[[Any], list[T]], empty: str) -> None:
        self.path = path
        self._parse = parse
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._items: list[T] = []
        if not self.read():
            raise ConfigError(empty)

    def read(self) -> list[T]:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime_ns
                if mtime != self._mtime:
                    parsed = self._parse(json.loads(self.path.read_bytes()))
                    if parsed:
                        self._items, self._mtime = parsed, mtime
            except (OSError, ValueError):
                log.warning("cannot read JWKS file %s; keeping previous keys", self.path)
            return self._items


class _FileJwks:
    def __init__(self, path: Path) -> None:
        self._file = WatchedJwksFile(path, _parse_jwks, f"{path} holds no usable RS256/ES256 signing key")

    def keys(self, *, refresh: bool = False) -> list[_Key]:
        return self._file.read()


class CachedRemoteJwks(Generic[T]):
    """A JWK Set at a URL, cached for ``JWKS_TTL_S``; an unknown kid (``refresh``) refetches at most
    once per ``JWKS_REFETCH_COOLDOWN_S``; bounded body, no redirects. A failed or empty fetch keeps
    the cached keys; with none at all the caller gets 503 (a key-server outage is not its fault)."""

    def __init__(
        self,
        url: str,
        parse: Callable[[Any], list[T]],
        unavailable: str,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._parse = parse
        self._unavailable = unavailable
        self._session = session or requests.Session()
        self._clock = clock
        self._lock = threading.Lock()
        self._items: list[T] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None

    def read(self, *, refresh: bool = False) -> list[T]:
        with self._lock:
            now = self._clock()
            stale = self._items is None or now - self._fetched_at >= JWKS_TTL_S
            cooled = self._attempted_at is None or now - self._attempted_at >= JWKS_REFETCH_COOLDOWN_S
            if (stale or refresh) and cooled:
                self._attempted_at = now
                self._fetch(now)
            if self._items is None:
                raise UpstreamError(self._unavailable, status=503)
            return self._items

    def _fetch(self, now: float) -> None:
        try:
            with self._session.get(
                self.url,
                timeout=JWKS_TIMEOUT_S,
                stream=True,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as resp:
                resp.raise_for_status()
                body = b""
                for chunk in resp.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise ValueError("JWKS too large")
            parsed = self._parse(json.loads(body))
            if not parsed:
                raise ValueError("no usable keys")
        except (requests.RequestException, ValueError) as exc:
            log.warning("JWKS fetch from %s failed (%s); keeping cached keys", self.url, type(exc).__name__)
            return
        self._items, self._fetched_at = parsed, now


class _RemoteJwks:
    def __init__(self, url: str, clock: Callable[[], float]) -> None:
        self._remote = CachedRemoteJwks(url, _parse_jwks, "identity provider keys unavailable", clock=clock)

    def keys(self, *, refresh: bool = False) -> list[_Key]:
        return self._remote.read(refresh=refresh)


# --- verification -------------------------------------------------------------------------------

# Most specific first: several of these subclass others.
_FAILURES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuedAtError, "token issued-at invalid"),
    (jwt.InvalidSignatureError, "token signature invalid"),
    (jwt.InvalidAlgorithmError, "unsupported token algorithm"),
    (jwt.DecodeError, "malformed token"),
)


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """``scope`` (OAuth2/SMART, space-separated) and ``scp`` (list, or string on some IdPs)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            found.update(v for v in value if v)
        else:
            raise Unauthorized("token scope claim malformed")
    return frozenset(found)


class TokenVerifier:
    """Turns an ``Authorization`` header into a ``Principal`` or raises ``Unauthorized``. Thread-safe."""

    def __init__(self, source: _KeySource, *, issuer: str, audience: str, leeway_s: int) -> None:
        self._source = source
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> TokenVerifier:
        """JWKS from the URL, else the file, else the local key. ``clock`` drives the JWKS cache."""
        source: _KeySource
        if settings.jwks_url:
            source = _RemoteJwks(settings.jwks_url, clock)
        elif settings.jwks_file:
            source = _FileJwks(settings.jwks_file)
        else:
            local = LocalKeys(settings.data_dir)
            local.ensure()
            source = _FileJwks(local.jwks_path)
        return cls(
            source,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            leeway_s=settings.token_leeway_s,
        )

    def verify(self, authorization_header: str | None) -> Principal:
        token = _bearer(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized("unsupported token algorithm")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("malformed token")
        key = self._find_key(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],  # from the key: the header only selected it
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"], "verify_signature": True},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token missing required claim {exc.claim!r}") from None
        except jwt.PyJWTError as exc:
            message = next((m for t, m in _FAILURES if isinstance(exc, t)), "token invalid")
            raise Unauthorized(message) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("token subject missing")
        client = claims.get("azp") or claims.get("client_id")
        return Principal(subject, _scopes(claims), client if isinstance(client, str) else None)

    def _find_key(self, kid: str | None, alg: str) -> _Key:
        for refresh in (False, True):
            keys = self._source.keys(refresh=refresh)
            if kid is None:
                candidates = keys if len(keys) == 1 else []  # no kid: only unambiguous with one key
            else:
                candidates = [k for k in keys if k.kid == kid]
            if candidates:
                for key in candidates:
                    if key.alg == alg:
                        return key
                raise Unauthorized("token algorithm does not match its key")
        raise Unauthorized("token signed by an unknown key")


def _bearer(authorization_header: str | None) -> str:
    if not authorization_header or not authorization_header.strip():
        raise Unauthorized("missing bearer token")
    parts = authorization_header.split()
    if parts[0].lower() != "bearer":
        raise Unauthorized("authorization scheme must be Bearer")
    if len(parts) != 2:
        raise Unauthorized("malformed bearer token")
    if len(parts[1]) > MAX_TOKEN_CHARS:
        raise Unauthorized("token too large")
    return parts[1]
