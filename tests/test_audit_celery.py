"""Batch necessity audits on real Celery workers, a private Redis and a fresh PostgreSQL database:
the whole developer data set, a worker killed with SIGKILL mid-audit, Redis restarted mid-audit,
and a corrupt bundle in the batch."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from services.medical_necessity import tasks
from services.medical_necessity.audit import store
from services.medical_necessity.audit.inputs import enumerate_paths
from services.medical_necessity.audit.run import Auditor
from tests.celery_support import (
    CeleryWorker,
    RedisServer,
    postgres_database,
    replicate,
    server_env,
    servers_available,
    use_broker,
    wait_until,
)
from tests.conftest import FHIR, requires_data, synthea
from tests.test_audit_engine import ORDER_BUNDLES, orders_by_definition, orders_by_engine

pytestmark = [requires_data, pytest.mark.skipif(servers_available() is not None, reason=str(servers_available()))]
FINISH_S = 240


class Servers:
    def __init__(self, redis: RedisServer, env: dict[str, str], settings: Any, logs: Path) -> None:
        self.redis, self.env, self.settings, self.logs = redis, env, settings, logs
        self.auditor = Auditor(settings)

    def worker(self, **options: Any) -> CeleryWorker:
        return CeleryWorker(self.env, self.logs, **options).start()

    def status(self, audit_id: str) -> dict[str, Any]:
        return store.status(self.auditor.db, audit_id)

    def finished(self, audit_id: str) -> dict[str, Any]:
        return wait_until(
            lambda: (s := self.status(audit_id))["state"] == store.FINISHED and s, FINISH_S, f"audit {audit_id}"
        )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with running_servers(tmp_path_factory.mktemp("audit-celery")) as started:
        yield started


@contextmanager
def running_servers(base: Path) -> Iterator[Servers]:
    """A private redis-server and a fresh PostgreSQL database, with the app configured for them."""
    redis = RedisServer().start()
    try:
        with postgres_database() as database_url:
            env = server_env(redis.url, database_url, base / "var")
            yield Servers(redis, env, use_broker(env), base / "logs")
    finally:
        redis.stop()


def assert_each_order_once(
    servers: Servers, audit_id: str, expected: Counter[tuple[str, str]], input_errors: int = 0
) -> None:
    rows = store.rows(servers.auditor.db, audit_id)
    got = Counter((r.input.rsplit("/", 1)[-1], r.reference or "") for r in rows if r.reference)
    assert got == expected  # every order, none twice
    assert len(rows) == sum(expected.values()) + input_errors
    assert all(r.state == store.DONE and r.determination and r.finished for r in rows if r.reference)


def expected_orders(paths: list[Path]) -> Counter[tuple[str, str]]:
    """(file name, order reference) for every order of every bundle, counted by the engine."""
    return Counter((p.name, ref) for p in paths for _, ref in orders_by_engine([p]))


def test_an_audit_of_all_the_developer_data(servers: Servers) -> None:
    inputs = [p for p in FHIR.iterdir() if p.is_dir()]
    by_engine, by_definition = orders_by_engine(inputs), orders_by_definition(inputs)
    assert {ref for _, ref in by_engine} == by_definition and len(by_engine) > 8  # Synthea's 8 and mCODE's
    worker = servers.worker()
    try:
        audit_id, queued = tasks.start(servers.settings, [str(FHIR)])
        status = servers.finished(audit_id)
    finally:
        worker.stop()
    rows = store.rows(servers.auditor.db, audit_id)
    assert len(queued) == len(enumerate_paths([FHIR]))  # one input per Bundle file and per folder
    total = len(by_engine)
    assert status["orders"] | {"total": total} == {
        "total": total,
        "pending": 0,
        "done": total,
        "error": 0,
        "cancelled": 0,
    }
    assert sorted((r.patient, r.reference) for r in rows) == sorted(by_engine)
    assert {r.reference for r in rows} == by_definition


def test_a_worker_killed_mid_audit_then_restarted_finishes_every_order_once(servers: Servers, tmp_path: Path) -> None:
    paths = replicate([synthea(n) for n in ORDER_BUNDLES], tmp_path / "batch", copies=10)
    expected = expected_orders(paths)
    assert sum(expected.values()) == 80
    worker = servers.worker(concurrency=1)
    audit_id, _ = tasks.start(servers.settings, [str(tmp_path / "batch")])
    wait_until(lambda: servers.status(audit_id)["orders"]["done"] >= 10, FINISH_S, "10 orders done")
    worker.kill9()  # main process and pool child together, tasks in flight and prefetched
    killed_at = servers.status(audit_id)
    assert killed_at["state"] == store.RUNNING
    assert killed_at["orders"]["pending"] + killed_at["inputs"]["pending"] > 0
    replacement = servers.worker(concurrency=1)  # resumes running audits when it connects
    try:
        status = servers.finished(audit_id)
    finally:
        replacement.stop()
    assert status["orders"]["done"] == 80 and status["orders"]["total"] == 80
    assert_each_order_once(servers, audit_id, expected)
    assert f"audit {audit_id} resumed" in replacement.log_tail(200_000)


def test_redis_restarted_mid_audit_the_audit_finishes(servers: Servers, tmp_path: Path) -> None:
    paths = replicate([synthea(n) for n in ORDER_BUNDLES], tmp_path / "batch", copies=10)
    expected = expected_orders(paths)
    worker = servers.worker(concurrency=1)
    try:
        audit_id, _ = tasks.start(servers.settings, [str(tmp_path / "batch")])
        wait_until(lambda: servers.status(audit_id)["orders"]["done"] >= 10, FINISH_S, "10 orders done")
        servers.redis.restart()  # no persistence: every queued and unacked message is gone
        assert servers.status(audit_id)["state"] == store.RUNNING
        status = servers.finished(audit_id)
    finally:
        worker.stop()
    assert f"audit {audit_id} resumed" in worker.log_tail(200_000)  # on reconnecting to the new Redis
    assert status["orders"]["done"] == sum(expected.values()) == 80
    assert_each_order_once(servers, audit_id, expected)


def test_a_corrupt_bundle_in_the_batch_is_one_error_row(servers: Servers, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    paths = replicate([synthea(n) for n in ORDER_BUNDLES], batch, copies=1)
    (batch / "corrupt.json").write_bytes(paths[0].read_bytes()[: 64 * 1024])  # a truncated download
    shutil.copy(FHIR / "mcode-stu1-examples" / "Patient-mCODEPatientExample01.json", batch / "patient.json")
    worker = servers.worker(concurrency=2)
    try:
        audit_id, _ = tasks.start(servers.settings, [str(batch)])
        status = servers.finished(audit_id)
    finally:
        worker.stop()
    rows = store.rows(servers.auditor.db, audit_id)
    errors = [r for r in rows if r.state == store.ERROR]
    assert [(r.input.rsplit("/", 1)[-1], r.reference) for r in errors] == [("corrupt.json", None)]
    assert "not valid JSON" in (errors[0].error or "")
    assert status["orders"] | {"total": 9} == {"total": 9, "pending": 0, "done": 8, "error": 1, "cancelled": 0}
    assert_each_order_once(servers, audit_id, expected_orders(paths), input_errors=1)
