"""Audit resume after a broker restart, on real processes: a private Redis, a fresh PostgreSQL
database and real Celery workers (the fixtures of ``tests/test_audit_celery.py``).

The case of issue 16: a worker restarts (and resumes the running audit when it connects), then the
broker restarts empty a few seconds later. The resume claim used to be kept in the database for 30 s,
so the reconnect after the broker restart was taken for a duplicate of the resume just made and
skipped, and the audit sat with an empty queue until the stall watchdog (600 s). The claim now lives
in the broker itself and is emptied with the queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.medical_necessity import tasks
from services.medical_necessity.audit import store
from services.medical_necessity.audit.run import Auditor
from tests.celery_support import (
    replicate,
    servers_available,
    wait_until,
)
from tests.conftest import requires_data, synthea
from tests.test_audit_celery import Servers, assert_each_order_once, expected_orders, running_servers
from tests.test_audit_engine import ORDER_BUNDLES

pytestmark = [requires_data, pytest.mark.skipif(servers_available() is not None, reason=str(servers_available()))]
RESUMED_WITHIN_S = 60  # from the broker restart to the audit finished (the stall watchdog waits 600 s)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with running_servers(tmp_path_factory.mktemp("audit-resume")) as started:
        yield started


def resumes(worker_log: str, audit_id: str) -> int:
    return worker_log.count(f"audit {audit_id} resumed")


def test_the_resume_claim_lives_and_dies_with_the_broker(servers: Servers) -> None:
    auditor = Auditor(servers.settings)
    audit_id, _ = auditor.start([synthea(ORDER_BUNDLES[0])])
    with tasks.resume_claims(auditor) as claim:
        assert claim(audit_id)  # the first worker to connect resumes it
        assert not claim(audit_id)  # a second one connecting now does not (a scale-up)
    assert store.get_audit(auditor.db, audit_id).resumed is not None  # the stall watchdog sees the resume
    assert not store.claim_resume(auditor.db, audit_id, 30)  # ... and does not resume it again now
    servers.redis.restart()  # empty: the queue and the claim are gone together
    with tasks.resume_claims(auditor) as claim:
        assert claim(audit_id)  # so the next connect resumes at once, 30 s window or not
    store.cancel(auditor.db, audit_id)


def test_a_broker_restarted_right_after_a_worker_restart_resumes_the_audit_at_once(
    servers: Servers, tmp_path: Path
) -> None:
    paths = replicate([synthea(n) for n in ORDER_BUNDLES], tmp_path / "batch", copies=40)
    expected = expected_orders(paths)
    total = sum(expected.values())
    worker = servers.worker(concurrency=1)
    try:
        audit_id, _ = tasks.start(servers.settings, [str(tmp_path / "batch")])
        wait_until(lambda: servers.status(audit_id)["orders"]["done"] >= 10, 240, "10 orders done")
    finally:
        worker.stop()  # a rolling restart: the replacement connects and resumes the running audit
    replacement = servers.worker(concurrency=1)
    try:
        wait_until(lambda: resumes(replacement.log_tail(10**7), audit_id) >= 1, 60, "the resume on connecting")
        servers.redis.restart()  # right after: the queue the resume just filled is gone
        restarted = time.monotonic()
        left = servers.status(audit_id)
        assert left["state"] == store.RUNNING and left["orders"]["pending"] + left["inputs"]["pending"] > 0
        wait_until(
            lambda: resumes(replacement.log_tail(10**7), audit_id) >= 2, RESUMED_WITHIN_S, "a resume after the restart"
        )
        resumed_s = time.monotonic() - restarted
        status = servers.finished(audit_id)
        finished_s = time.monotonic() - restarted
    finally:
        replacement.stop()
    print(
        f"\nbroker restart -> resumed in {resumed_s:.1f} s, audit finished in {finished_s:.1f} s "
        f"({left['orders']['pending']} orders and {left['inputs']['pending']} inputs pending at the restart)"
    )
    assert finished_s < RESUMED_WITHIN_S
    assert status["orders"]["done"] == status["orders"]["total"] == total
    assert_each_order_once(servers, audit_id, expected)
