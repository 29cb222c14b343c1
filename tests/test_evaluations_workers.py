"""The evaluation workflow on real parts: a Redis of its own as broker and result store, a fresh
PostgreSQL database, and one Celery worker process per queue group (history+navigation+radiology,
necessity).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from flask.testing import FlaskClient

from oncotwin.app import create_app
from shared.config import load_settings
from tests.celery_support import CeleryWorker, RedisServer, postgres_database, server_env, wait_until
from tests.conftest import requires_data, synthea

pytestmark = requires_data
QUEUE_GROUPS = ("history,navigation,radiology", "necessity")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with postgres_database("oncotwin_eval") as url:
        yield url


@pytest.fixture(scope="module")
def environment(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    redis = RedisServer().start()
    try:
        yield server_env(redis.url, database, tmp_path_factory.mktemp("var"))
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def workers(environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    logs = tmp_path_factory.mktemp("logs")
    started = [CeleryWorker(environment, logs, queues=queues).start() for queues in QUEUE_GROUPS]
    try:
        yield {queues: worker.log for queues, worker in zip(QUEUE_GROUPS, started, strict=True)}
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture
def client(environment: dict[str, str]) -> FlaskClient:
    return create_app(load_settings(environment)).test_client()


@pytest.fixture
def mint(environment: dict[str, str]) -> Callable[..., str]:
    from shared.auth import LocalKeys

    settings = load_settings(environment)
    keys = LocalKeys(settings.data_dir)
    keys.ensure()
    issuer, audience = settings.token_issuer, settings.token_audience
    return lambda scopes: keys.mint("dr-test", scopes, 600, issuer=issuer, audience=audience)


def test_an_evaluation_runs_across_the_queues_and_lands_in_postgresql(
    workers: dict[str, Path], client: FlaskClient, mint: Callable[..., str], database: str
) -> None:
    headers = {
        "Authorization": f"Bearer {mint(['history.read', 'navigation.read', 'necessity.read'])}",
        "Content-Type": "application/fhir+json",
    }
    posted = client.post("/v1/evaluations", data=synthea("Austin").read_bytes(), headers=headers)
    assert posted.status_code == 202
    location = posted.headers["Location"]

    def finished() -> dict[str, object] | None:
        view = client.get(location, headers=headers).get_json()
        return view if view["status"] in ("done", "failed") else None

    view = wait_until(finished, 90, "the evaluation to finish on the workers")
    assert view["status"] == "done", view.get("error")
    assert [c["cancerType"] for c in view["result"]["history"]["cancers"]] == ["nsclc"]
    assert view["result"]["navigation"]["pathways"][0]["id"] == "nsclc"
    assert view["result"]["necessity"]["patient"] == view["patient"]

    with psycopg.connect(database) as db:  # the row itself: finished, and the input no longer kept
        row = db.execute("SELECT status, body FROM evaluations WHERE id = %s", (view["id"],)).fetchone()
    assert row is not None and row[0] == "done" and row[1] == b""

    # Routing: each step ran on the worker that consumes its service's queue.
    history_log = workers["history,navigation,radiology"].read_text()
    necessity_log = workers["necessity"].read_text()
    assert "Task oncotwin.history.evaluation_history[" in history_log
    assert "Task oncotwin.navigation.evaluation_navigation[" in history_log
    assert "Task oncotwin.radiology.evaluation_findings[" in history_log
    assert "Task oncotwin.necessity.evaluation_necessity[" in necessity_log
    assert "Task oncotwin.necessity." not in history_log and "Task oncotwin.history." not in necessity_log
