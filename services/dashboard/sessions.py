"""Server-side dashboard sessions: the browser holds only a random id in an HttpOnly cookie.

A session ends at the earlier of its token's expiry and ``idle_s`` without a request, or at
sign-out. Each has its own CSRF token, sent back by the page in a header or form field on every
POST. Sessions live in a :mod:`shared.ttl_store`: this process's memory (bounded, the oldest go
first) for the embedded default, Redis when ``REDIS_URL`` is set so every replica and worker sees
them. No clinical data is kept beyond the SMART patient context.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.auth import Principal
from shared.ttl_store import MemoryTtlStore, TtlStore

MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    principal: Principal
    expires_at: float  # the token's exp: a hard end
    idle_s: int
    last_seen: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # SMART EHR launch: the EHR's FHIR server and access token, and the launch patient (FHIR id).
    fhir_base: str | None = None
    fhir_token: str | None = None
    patient: str | None = None

    def alive(self, now: float) -> bool:
        return now < self.expires_at and now - self.last_seen < self.idle_s

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf, presented or "")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["principal"]["scopes"] = sorted(self.principal.scopes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        p = data["principal"]
        principal = Principal(p["subject"], frozenset(p["scopes"]), p.get("client"))
        return cls(**{**data, "principal": principal})


class SessionStore:
    def __init__(
        self,
        backend: TtlStore | None = None,
        clock: Callable[[], float] = time.time,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self._backend = backend if backend is not None else MemoryTtlStore(max_sessions)
        self._clock = clock

    def create(self, principal: Principal, token_exp: float, idle_s: int, **context: str | None) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), principal, token_exp, idle_s, now, **context)  # type: ignore[arg-type]
        self._save(session, now)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, touched (idle timer restarts); expired ones are dropped."""
        if not session_id:
            return None
        data = self._backend.get(session_id)
        if data is None:
            return None
        session, now = Session.from_json(data), self._clock()
        if not session.alive(now):
            self._backend.delete(session_id)
            return None
        session.last_seen = now
        self._save(session, now)
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._backend.delete(session_id)

    def _save(self, session: Session, now: float) -> None:
        # The store forgets it by itself once it can no longer be alive; ``alive`` stays the authority.
        self._backend.put(session.id, session.to_json(), max(1.0, min(session.expires_at - now, session.idle_s)))
