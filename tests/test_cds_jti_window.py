"""CDS Hooks ``jti`` replay protection: how long a jti is remembered, and what a store restart costs.

A jti is remembered until its token stops verifying (``exp`` + leeway) and not longer, in memory and
in Redis. Replay protection is only as durable as the store: a Redis restarted without persistence
(or the process, for the memory store) forgets the jtis, and a captured token can then be replayed,
but only until its own ``exp`` (+ leeway): the window a restart reopens is the token's remaining
lifetime, at most ``MAX_TOKEN_AHEAD_S`` (1 h) + leeway.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.cds_hooks.security import (
    MAX_TOKEN_AHEAD_S,
    ClientVerifier,
    FileJwks,
    MemoryReplayStore,
    RedisReplayStore,
    ReplayStore,
)
from shared.errors import Unauthorized
from tests.celery_support import RedisServer

ISSUER = "https://ehr.example.org"
AUDIENCE = "https://oncotwin.example.org/cds-services/oncotwin-navigation"
LEEWAY_S = 5
KEY = ec.generate_private_key(ec.SECP384R1())
PREFIX = "oncotwin:cds:jti:"


def token(lifetime_s: float) -> tuple[str, dict[str, Any]]:
    now = time.time()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": int(now), "exp": int(now + lifetime_s), "jti": uuid.uuid4().hex}
    return jwt.encode(claims, KEY, algorithm="ES384", headers={"kid": "ehr", "typ": "JWT"}), claims


def verifier(
    tmp_path: Path, replay: ReplayStore, leeway_s: int = LEEWAY_S, clock: Callable[[], float] = time.time
) -> ClientVerifier:
    jwks = tmp_path / "jwks.json"
    jwk = {**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "ehr", "alg": "ES384", "use": "sig"}
    jwks.write_text(json.dumps({"keys": [jwk]}))
    return ClientVerifier(
        issuers=(ISSUER,),
        algorithms=("ES384",),
        jwks=FileJwks(jwks),
        allowed_jku=(),
        replay=replay,
        leeway_s=leeway_s,
        clock=clock,
    )


class Recorded(MemoryReplayStore):
    """The memory store, noting the time to live it is given for each jti."""

    def __init__(self) -> None:
        super().__init__()
        self.ttls: list[int] = []

    def first_use(self, key: str, ttl_s: int) -> bool:
        self.ttls.append(ttl_s)
        return super().first_use(key, ttl_s)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_jti_is_remembered_until_its_token_stops_verifying_and_no_longer(tmp_path: Path) -> None:
    store = Recorded()
    now = time.time()
    check = verifier(tmp_path, store, clock=lambda: now)
    bearer, claims = token(120)
    check.verify(f"Bearer {bearer}", AUDIENCE)
    (ttl,) = store.ttls
    # remembered past the last moment the token verifies (exp + leeway), by at most a second
    assert claims["exp"] + LEEWAY_S < now + ttl <= claims["exp"] + LEEWAY_S + 1
    with pytest.raises(Unauthorized, match="already used"):
        check.verify(f"Bearer {bearer}", AUDIENCE)


def test_on_redis_the_jti_expires_at_the_tokens_exp(tmp_path: Path, redis: RedisServer) -> None:
    import redis as redis_client

    client = redis_client.Redis.from_url(redis.url)
    check = verifier(tmp_path, RedisReplayStore(redis.url))
    bearer, claims = token(120)
    check.verify(f"Bearer {bearer}", AUDIENCE)
    (key,) = [k.decode() for k in client.scan_iter(PREFIX + "*")]
    expires_at = time.time() + client.pttl(key) / 1000
    assert claims["exp"] + LEEWAY_S - 0.5 <= expires_at <= claims["exp"] + LEEWAY_S + 1.5
    with pytest.raises(Unauthorized, match="already used"):
        check.verify(f"Bearer {bearer}", AUDIENCE)
    client.delete(key)


def test_a_redis_restart_reopens_replay_only_for_the_tokens_remaining_lifetime(
    tmp_path: Path, redis: RedisServer
) -> None:
    check = verifier(tmp_path, RedisReplayStore(redis.url), leeway_s=0)
    bearer, claims = token(3)
    header = f"Bearer {bearer}"
    check.verify(header, AUDIENCE)
    with pytest.raises(Unauthorized, match="already used"):
        check.verify(header, AUDIENCE)
    redis.restart()  # no persistence: every remembered jti is gone
    check.verify(header, AUDIENCE)  # the limit of the protection: a replay inside the lifetime passes again
    time.sleep(max(0.0, claims["exp"] - time.time()) + 1.1)
    with pytest.raises(Unauthorized, match="expired"):  # past exp nothing is accepted, remembered or not
        check.verify(header, AUDIENCE)


def test_no_token_may_live_longer_than_the_bound_on_the_window(tmp_path: Path) -> None:
    check = verifier(tmp_path, MemoryReplayStore())
    bearer, _ = token(MAX_TOKEN_AHEAD_S + LEEWAY_S + 60)
    with pytest.raises(Unauthorized, match="lifetime too long"):
        check.verify(f"Bearer {bearer}", AUDIENCE)
