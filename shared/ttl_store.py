"""Short-lived state shared by every process of a service: JSON values with a time to live.

In memory for the embedded default (one process); in Redis when ``REDIS_URL`` is set, so that
replicas and gunicorn workers behind a load balancer see the same browser sessions and SMART
launch states. ``take`` is atomic (GETDEL in Redis): a single-use value can be taken only once.
Redis unreachable: 503 (fail closed), never a silently empty store.

Durability is the backend's: a restart of the process (memory) or of a Redis without persistence
empties the store. For what lives here that fails safe (a session ends: sign in again; a pending
SMART launch is refused: launch again), and every entry's time to live is its own bound (a session
never outlives its token's ``exp``). The CDS Hooks ``jti`` replay store is not this one
(``services.cds_hooks.security``); there a lost entry reopens replay of a captured token until that
token's ``exp`` + leeway, no longer (README, Security).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from cachetools import TLRUCache

from shared.config import Settings
from shared.errors import UpstreamError


class TtlStore(Protocol):
    def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None: ...

    def get(self, key: str) -> dict[str, Any] | None: ...

    def take(self, key: str) -> dict[str, Any] | None: ...

    def delete(self, key: str) -> None: ...


class MemoryTtlStore:
    """One process's memory, bounded: past ``max_entries`` the least recently used entries go first.

    A ``cachetools.TLRUCache`` (each entry expires at its own put time + ``ttl_s``) behind a lock:
    sessions and launch states are read and written from request threads.
    """

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: TLRUCache[str, tuple[float, str]] = TLRUCache(max_entries, _expires_at, timer=clock)
        self._lock = threading.Lock()
        self._max = max_entries

    def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        with self._lock:
            self._entries[key] = (ttl_s, json.dumps(value))  # ttl_s <= 0: not stored (already gone)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            self._entries.expire()
            entry = self._entries.get(key)
        return None if entry is None else _loads(entry[1])

    def take(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            self._entries.expire()
            entry = self._entries.pop(key, None)
        return None if entry is None else _loads(entry[1])

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        """Live entries (expired ones are dropped first)."""
        with self._lock:
            self._entries.expire()
            return len(self._entries)


def _expires_at(_key: str, entry: tuple[float, str], now: float) -> float:
    return now + entry[0]


class RedisTtlStore:
    def __init__(self, url: str, prefix: str, timeout_s: float = 2.0) -> None:
        import redis  # deferred: only deployments with REDIS_URL need the client

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.prefix = prefix

    def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        self._call(lambda r: r.set(self.prefix + key, json.dumps(value), px=max(1, int(ttl_s * 1000))))

    def get(self, key: str) -> dict[str, Any] | None:
        return _loads(self._call(lambda r: r.get(self.prefix + key)))

    def take(self, key: str) -> dict[str, Any] | None:
        return _loads(self._call(lambda r: r.getdel(self.prefix + key)))

    def delete(self, key: str) -> None:
        self._call(lambda r: r.delete(self.prefix + key))

    def _call(self, command: Callable[[Any], Any]) -> Any:
        try:
            return command(self._redis)
        except self._errors:
            raise UpstreamError("session store unavailable", status=503) from None


def _loads(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    value: dict[str, Any] = json.loads(raw)
    return value


def ttl_store(settings: Settings, prefix: str, max_entries: int = 10_000) -> TtlStore:
    """Redis when ``REDIS_URL`` is set (state shared across processes), else this process's memory."""
    if settings.redis_url:
        return RedisTtlStore(settings.redis_url, prefix)
    return MemoryTtlStore(max_entries)
