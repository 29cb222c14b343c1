"""Configuration from the environment (12-factor), validated once at start-up.

Every setting has one variable; a bad value stops the process with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar
from urllib.parse import urlsplit

from shared.errors import ConfigError

N = TypeVar("N", int, float)


def _number(env: Mapping[str, str], name: str, default: N, cast: Callable[[str], N], minimum: N) -> N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        kind = "whole number" if cast is int else "number"
        raise ConfigError(f"{name} must be a {kind}, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    return _number(env, name, default, int, minimum)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, 0.001)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (README "Security / limits"). Each is checked before the expensive
    work: the body (413), the JSON (depth, objects) before objects are built, Bundle entries before
    resources are made, orders before any is evaluated; the deadline at safe points of the work."""

    max_bundle_entries: int = 10_000  # MAX_BUNDLE_ENTRIES: entries of a Bundle, nested Bundles included (413)
    max_json_depth: int = 64  # MAX_JSON_DEPTH: nesting of objects/arrays in a JSON body or file (400)
    max_necessity_orders: int = 200  # MAX_NECESSITY_ORDERS: orders one necessity request evaluates (422)
    max_note_chars: int = 100_000  # MAX_NOTE_CHARS: a note/attachment longer is truncated, with a warning issue
    radiology_max_batch_chars: int = 1_000_000  # RADIOLOGY_MAX_BATCH_CHARS: report text of one batch (413)
    request_deadline_s: float = 30.0  # REQUEST_DEADLINE_SECONDS: a request still working then answers 503

    @property
    def max_json_nodes(self) -> int:
        """Objects + arrays a JSON body may hold, counted before parsing: generous per entry (a
        Synthea entry has about 22), so only bodies far beyond MAX_BUNDLE_ENTRIES are refused by it."""
        return self.max_bundle_entries * JSON_NODES_PER_ENTRY


JSON_NODES_PER_ENTRY = 256
_ACTIVE_LIMITS: ContextVar[Limits | None] = ContextVar("oncotwin_limits", default=None)
_ENV_LIMITS: list[Limits] = []


def limits() -> Limits:
    """The limits in force: the current request's (``shared.http`` sets its app's), else those of
    the environment (workers, CLI), read once per process."""
    active = _ACTIVE_LIMITS.get()
    if active is not None:
        return active
    if not _ENV_LIMITS:
        _ENV_LIMITS.append(_limits(os.environ))
    return _ENV_LIMITS[0]


@contextmanager
def limits_in_force(active: Limits) -> Iterator[Limits]:
    """Run a block (a request, a test) under ``active``."""
    token = _ACTIVE_LIMITS.set(active)
    try:
        yield active
    finally:
        _ACTIVE_LIMITS.reset(token)


def set_limits(active: Limits | None) -> None:
    """Set (or clear) the limits of the current context: the HTTP layer's per-request hook."""
    _ACTIVE_LIMITS.set(active)


def _limits(env: Mapping[str, str]) -> Limits:
    return Limits(
        max_bundle_entries=_int(env, "MAX_BUNDLE_ENTRIES", Limits.max_bundle_entries),
        max_json_depth=_int(env, "MAX_JSON_DEPTH", Limits.max_json_depth, minimum=8),
        max_necessity_orders=_int(env, "MAX_NECESSITY_ORDERS", Limits.max_necessity_orders),
        max_note_chars=_int(env, "MAX_NOTE_CHARS", Limits.max_note_chars, minimum=1000),
        radiology_max_batch_chars=_int(env, "RADIOLOGY_MAX_BATCH_CHARS", Limits.radiology_max_batch_chars, 1000),
        request_deadline_s=_float(env, "REQUEST_DEADLINE_SECONDS", Limits.request_deadline_s),
    )


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    max_body_bytes: int
    strict_ingest: bool
    # Auth: tokens are verified against a JWKS (URL or file). With neither set, the embedded
    # default keeps a local signing key in data_dir and publishes its JWKS there.
    jwks_url: str | None
    jwks_file: Path | None
    token_issuer: str
    token_audience: str
    token_leeway_s: int
    # FHIR server to pull patients from (optional).
    fhir_base_url: str | None
    fhir_token: str | None
    fhir_timeout_s: float
    fhir_page_limit: int
    log_level: str
    # Care-pathway graph: the embedded NetworkX store by default; Neo4j when NEO4J_URI is set.
    pathway_dir: Path | None = None  # None: the pathway files shipped in graph/pathways
    neo4j_uri: str | None = None  # bolt://, neo4j://; TLS with bolt+s:// or neo4j+s://
    neo4j_user: str = "neo4j"
    neo4j_password: str | None = None
    neo4j_database: str = "neo4j"
    neo4j_namespace: str = "default"
    neo4j_timeout_s: float = 10.0
    # CDS Hooks: hook calls carry a client JWT (not a user token). Off (every hook call 401) until a
    # key source, the accepted issuers and the public base URL (for the exact `aud`) are all set.
    cds_base_url: str | None = None  # public base URL (with any mount prefix), e.g. https://oncotwin.example.org
    cds_jwks_file: Path | None = None
    cds_jwks_url: str | None = None
    cds_allowed_jku: tuple[str, ...] = ()  # JWK Set URLs a token's `jku` header may name
    cds_allowed_issuers: tuple[str, ...] = ()
    cds_algorithms: tuple[str, ...] = ("RS384", "ES384")
    cds_leeway_s: int = 30
    cds_allowed_fhir_servers: tuple[str, ...] = ()  # empty: any https fhirServer of an authenticated client
    cds_fhir_timeout_s: float = 10.0
    cds_llm_judge: bool = False  # hooks answer in ~1 s: the LLM jury only when asked for
    dashboard_base_url: str | None = None  # card links: {this}/dashboard/patients/{id}; default cds_base_url
    redis_url: str | None = None  # shared state (CDS jti replay store) across workers
    # Dashboard (services/dashboard): patient bundles/NDJSON shown by the embedded default; None: data_dir/patients.
    patient_data_dir: Path | None = None
    dashboard_session_idle_s: int = 900  # a signed-in session ends after this much inactivity (and at token exp)
    dashboard_cache_inputs: int = 8  # ingested inputs (files/folders) kept in memory per process
    smart_client_id: str | None = None  # SMART on FHIR EHR launch: on when set (public client, PKCE)
    smart_redirect_uri: str | None = None
    smart_allowed_issuers: tuple[str, ...] = ()  # `iss` values a launch may name (FHIR base URLs)
    smart_scopes: str = "launch openid fhirUser patient/*.read"
    # Coordination (Celery) and persistence (SQLAlchemy). None: the embedded default, which needs no
    # server: a SQLite-backed broker and result store and a SQLite database under data_dir.
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None
    database_url: str | None = None
    task_soft_time_limit_s: int = 120
    task_time_limit_s: int = 180
    audit_stall_s: int = 600  # an audit with no progress for this long is resumed by a worker
    # Batch necessity audits: paths an HTTP caller may name must lie under this folder; None: no paths over HTTP.
    audit_input_root: Path | None = None
    # LLM jury (OpenAI-compatible endpoint, e.g. vLLM); llm_base_url None: no LLM, free text goes to review.
    llm_base_url: str | None = None
    llm_model: str = "oncotwin-judge"
    llm_api_key: str | None = None
    llm_timeout_s: float = 20.0  # per attempt
    llm_max_retries: int = 2  # after the first attempt
    llm_dsbd: bool = False  # jury votes from the W beams of one DSBD call
    llm_breaker_failures: int = 5  # the circuit opens after this many failed calls
    llm_breaker_cooldown_s: float = 30.0  # then one trial call after this long
    # What one request may ask for; validated with the rest at start-up.
    limits: Limits = field(default_factory=Limits)

    @property
    def bulk_index_dir(self) -> Path:
        """The on-disk indexes of Bulk Data exports (``shared.fhir.bulk``), one file per export version."""
        return self.data_dir / "bulk-index"

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"

    @property
    def result_backend(self) -> str:
        return self.celery_result_backend or f"db+sqlite:///{self.data_dir / 'results.sqlite'}"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'oncotwin.sqlite'}"

    @property
    def cds_enabled(self) -> bool:
        """True when CDS Hooks calls can be verified (a key source is configured)."""
        return bool(self.cds_jwks_file or self.cds_jwks_url or self.cds_allowed_jku)

    @property
    def local_keys(self) -> bool:
        """True when this process signs its own tokens (embedded default)."""
        return self.jwks_url is None and self.jwks_file is None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    jwks_file = env.get("AUTH_JWKS_FILE") or None
    if jwks_file and not Path(jwks_file).is_file():
        raise ConfigError(f"AUTH_JWKS_FILE points to {jwks_file!r}, which is not a file")
    level = (env.get("LOG_LEVEL") or "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    return Settings(
        data_dir=Path(env.get("ONCOTWIN_DATA_DIR") or "var").resolve(),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 32 * 1024 * 1024),
        strict_ingest=_bool(env, "STRICT_INGEST", False),
        jwks_url=_url(env, "AUTH_JWKS_URL"),
        jwks_file=Path(jwks_file) if jwks_file else None,
        token_issuer=env.get("AUTH_ISSUER") or "oncotwin-local",
        token_audience=env.get("AUTH_AUDIENCE") or "oncotwin",
        token_leeway_s=_int(env, "AUTH_LEEWAY_SECONDS", 30, minimum=0),
        fhir_base_url=_url(env, "FHIR_BASE_URL"),
        fhir_token=env.get("FHIR_BEARER_TOKEN") or None,
        fhir_timeout_s=_float(env, "FHIR_TIMEOUT_SECONDS", 20.0),
        fhir_page_limit=_int(env, "FHIR_MAX_PAGES", 200),
        log_level=level,
        pathway_dir=_directory(env, "PATHWAY_DIR"),
        neo4j_uri=_neo4j_uri(env),
        neo4j_user=env.get("NEO4J_USER") or "neo4j",
        neo4j_password=env.get("NEO4J_PASSWORD") or None,
        neo4j_database=env.get("NEO4J_DATABASE") or "neo4j",
        neo4j_namespace=env.get("NEO4J_NAMESPACE") or "default",
        neo4j_timeout_s=_float(env, "NEO4J_TIMEOUT_SECONDS", 10.0),
        audit_input_root=_directory(env, "AUDIT_INPUT_ROOT"),
        limits=_limits(env),
        **_cds(env),
        **_dashboard(env),
        **_coordination(env),
        **_llm(env),
    )


def _directory(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    if not Path(raw).is_dir():
        raise ConfigError(f"{name} points to {raw!r}, which is not a directory")
    return Path(raw)


def _neo4j_uri(env: Mapping[str, str]) -> str | None:
    raw = (env.get("NEO4J_URI") or "").strip()
    if not raw:
        return None
    schemes = ("bolt://", "bolt+s://", "bolt+ssc://", "neo4j://", "neo4j+s://", "neo4j+ssc://")
    if not raw.startswith(schemes):
        raise ConfigError(f"NEO4J_URI must start with one of {', '.join(schemes)}, got {raw.split('://')[0]!r}")
    if not env.get("NEO4J_PASSWORD"):
        raise ConfigError("NEO4J_PASSWORD must be set when NEO4J_URI is set")
    return raw


# --- CDS Hooks ----------------------------------------------------------------------------------

# Asymmetric JWS algorithms only: the CDS Hooks spec forbids `none` and every symmetric (HMAC) one.
CDS_ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in (env.get(name) or "").split(",") if p.strip()))


def _key_urls(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """URLs keys are fetched from: https, or http on this machine (tests, sidecars); never elsewhere
    in clear text, where anyone on the path could swap the keys."""
    urls = _list(env, name)
    for url in urls:
        parts = urlsplit(url)
        local = parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK_HOSTS
        if not (parts.scheme == "https" and parts.hostname) and not local:
            raise ConfigError(f"{name} must list https URLs (http only on localhost), got {url!r}")
    return urls


class _CdsFields(TypedDict):
    cds_base_url: str | None
    cds_jwks_file: Path | None
    cds_jwks_url: str | None
    cds_allowed_jku: tuple[str, ...]
    cds_allowed_issuers: tuple[str, ...]
    cds_algorithms: tuple[str, ...]
    cds_leeway_s: int
    cds_allowed_fhir_servers: tuple[str, ...]
    cds_fhir_timeout_s: float
    cds_llm_judge: bool
    dashboard_base_url: str | None
    redis_url: str | None


def _cds(env: Mapping[str, str]) -> _CdsFields:
    jwks_file = env.get("CDS_JWKS_FILE") or None
    if jwks_file and not Path(jwks_file).is_file():
        raise ConfigError(f"CDS_JWKS_FILE points to {jwks_file!r}, which is not a file")
    jwks_url = _key_urls(env, "CDS_JWKS_URL")
    if len(jwks_url) > 1:
        raise ConfigError("CDS_JWKS_URL must be one URL")
    algorithms = tuple(a.upper() for a in _list(env, "CDS_JWT_ALGORITHMS")) or ("RS384", "ES384")
    bad = [a for a in algorithms if a not in CDS_ASYMMETRIC_ALGORITHMS]
    if bad:
        allowed = ", ".join(sorted(CDS_ASYMMETRIC_ALGORITHMS))
        raise ConfigError(f"CDS_JWT_ALGORITHMS may only name asymmetric algorithms ({allowed}), got {bad[0]!r}")
    base = _url(env, "CDS_BASE_URL")
    issuers = _list(env, "CDS_ALLOWED_ISSUERS")
    allowed_jku = _key_urls(env, "CDS_ALLOWED_JKU")
    keyed = bool(jwks_file or jwks_url or allowed_jku)
    if keyed and not issuers:
        raise ConfigError("CDS_ALLOWED_ISSUERS must be set when CDS_JWKS_FILE, CDS_JWKS_URL or CDS_ALLOWED_JKU is")
    if keyed and base is None:
        raise ConfigError("CDS_BASE_URL must be set when CDS client keys are configured (it fixes the token `aud`)")
    if issuers and not keyed:
        raise ConfigError("CDS_ALLOWED_ISSUERS is set but no CDS_JWKS_FILE, CDS_JWKS_URL or CDS_ALLOWED_JKU")
    servers = _list(env, "CDS_ALLOWED_FHIR_SERVERS")
    for server in servers:
        if not server.startswith(("http://", "https://")):
            raise ConfigError(f"CDS_ALLOWED_FHIR_SERVERS must list http(s) URLs, got {server!r}")
    redis_url = (env.get("REDIS_URL") or "").strip() or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
    return {
        "cds_base_url": base,
        "cds_jwks_file": Path(jwks_file) if jwks_file else None,
        "cds_jwks_url": jwks_url[0].rstrip("/") if jwks_url else None,
        "cds_allowed_jku": allowed_jku,
        "cds_allowed_issuers": issuers,
        "cds_algorithms": algorithms,
        "cds_leeway_s": _int(env, "CDS_LEEWAY_SECONDS", 30, minimum=0),
        "cds_allowed_fhir_servers": tuple(s.rstrip("/") for s in servers),
        "cds_fhir_timeout_s": _float(env, "CDS_FHIR_TIMEOUT_SECONDS", 10.0),
        "cds_llm_judge": _bool(env, "CDS_LLM_JUDGE", False),
        "dashboard_base_url": _url(env, "DASHBOARD_BASE_URL") or base,
        "redis_url": redis_url,
    }


# --- Coordination and persistence ---------------------------------------------------------------


class _CoordinationFields(TypedDict):
    celery_broker_url: str | None
    celery_result_backend: str | None
    database_url: str | None
    task_soft_time_limit_s: int
    task_time_limit_s: int
    audit_stall_s: int


_BROKERS = ("redis://", "rediss://", "amqp://", "amqps://", "sqla+", "filesystem://")
_RESULT_BACKENDS = ("redis://", "rediss://", "db+")
_DATABASES = ("postgresql", "sqlite")


def _prefixed(env: Mapping[str, str], name: str, prefixes: tuple[str, ...]) -> str | None:
    raw = (env.get(name) or "").strip() or None
    if raw and not raw.startswith(prefixes):
        raise ConfigError(f"{name} must start with one of {', '.join(prefixes)}, got {raw.split(':')[0]!r}")
    return raw


def _coordination(env: Mapping[str, str]) -> _CoordinationFields:
    soft = _int(env, "TASK_SOFT_TIME_LIMIT_SECONDS", 120)
    hard = _int(env, "TASK_TIME_LIMIT_SECONDS", 180)
    if hard <= soft:
        raise ConfigError("TASK_TIME_LIMIT_SECONDS must be greater than TASK_SOFT_TIME_LIMIT_SECONDS")
    stall = _int(env, "AUDIT_STALL_SECONDS", 600)
    if stall <= hard:  # an order may run up to the hard limit: that is not a stall
        raise ConfigError("AUDIT_STALL_SECONDS must be greater than TASK_TIME_LIMIT_SECONDS")
    return {
        "celery_broker_url": _prefixed(env, "CELERY_BROKER_URL", _BROKERS),
        "celery_result_backend": _prefixed(env, "CELERY_RESULT_BACKEND", _RESULT_BACKENDS),
        "database_url": _prefixed(env, "DATABASE_URL", _DATABASES),
        "task_soft_time_limit_s": soft,
        "task_time_limit_s": hard,
        "audit_stall_s": stall,
    }


# --- Dashboard ----------------------------------------------------------------------------------


class _DashboardFields(TypedDict):
    patient_data_dir: Path | None
    dashboard_session_idle_s: int
    dashboard_cache_inputs: int
    smart_client_id: str | None
    smart_redirect_uri: str | None
    smart_allowed_issuers: tuple[str, ...]
    smart_scopes: str


def _dashboard(env: Mapping[str, str]) -> _DashboardFields:
    client_id = (env.get("SMART_CLIENT_ID") or "").strip() or None
    redirect = _url(env, "SMART_REDIRECT_URI")
    issuers = tuple(i.rstrip("/") for i in _key_urls(env, "SMART_ALLOWED_ISSUERS"))
    if client_id and (redirect is None or not issuers):
        raise ConfigError("SMART_REDIRECT_URI and SMART_ALLOWED_ISSUERS must be set when SMART_CLIENT_ID is set")
    return {
        "patient_data_dir": _directory(env, "PATIENT_DATA_DIR"),
        "dashboard_session_idle_s": _int(env, "DASHBOARD_SESSION_IDLE_SECONDS", 900, minimum=30),
        "dashboard_cache_inputs": _int(env, "DASHBOARD_CACHE_INPUTS", 8),
        "smart_client_id": client_id,
        "smart_redirect_uri": redirect,
        "smart_allowed_issuers": issuers,
        "smart_scopes": (env.get("SMART_SCOPES") or "").strip() or "launch openid fhirUser patient/*.read",
    }


# --- LLM jury ------------------------------------------------------------------------------------


class _LlmFields(TypedDict):
    llm_base_url: str | None
    llm_model: str
    llm_api_key: str | None
    llm_timeout_s: float
    llm_max_retries: int
    llm_dsbd: bool
    llm_breaker_failures: int
    llm_breaker_cooldown_s: float


def _llm(env: Mapping[str, str]) -> _LlmFields:
    base = (env.get("LLM_BASE_URL") or "").strip().rstrip("/") or None
    if base and not base.startswith(("http://", "https://")):
        raise ConfigError(f"LLM_BASE_URL must be an http(s) URL, got {base!r}")
    if base and base.endswith("/v1"):
        # OpenAI's convention names the base URL with /v1 (compose and Kubernetes do); the client adds
        # /v1/... itself and the DSBD route lives beside it, at /plugins/dsbd/v1.
        base = base[: -len("/v1")]
    return {
        "llm_base_url": base,
        "llm_model": (env.get("LLM_MODEL") or "").strip() or "oncotwin-judge",
        "llm_api_key": env.get("LLM_API_KEY") or None,
        "llm_timeout_s": _float(env, "LLM_TIMEOUT_SECONDS", 20.0),
        "llm_max_retries": _int(env, "LLM_MAX_RETRIES", 2, minimum=0),
        "llm_dsbd": _bool(env, "LLM_DSBD", False),
        "llm_breaker_failures": _int(env, "LLM_BREAKER_FAILURES", 5),
        "llm_breaker_cooldown_s": _float(env, "LLM_BREAKER_COOLDOWN_SECONDS", 30.0),
    }
