"""Server-side dashboard sessions: the browser holds only a random id in an HttpOnly cookie.

A session ends at the earlier of its token's expiry and ``idle_s`` without a request, or at
sign-out. Each has its own CSRF token, sent back by the page in a header or form field on every
POST. The store is per process and bounded (the oldest sessions go first); no clinical data is
kept in it beyond the SMART patient context.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.auth import Principal

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


class SessionStore:
    def __init__(self, clock: Callable[[], float] = time.time, max_sessions: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self._max = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, principal: Principal, token_exp: float, idle_s: int, **context: str | None) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), principal, token_exp, idle_s, now, **context)  # type: ignore[arg-type]
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, touched (idle timer restarts); expired ones are dropped."""
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if not session.alive(now):
                del self._sessions[session_id]
                return None
            session.last_seen = now
            self._sessions.move_to_end(session_id)
            return session

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def __len__(self) -> int:
        return len(self._sessions)
