"""The evaluation workflow on real parts: Redis as broker and result store, PostgreSQL as database,
and one Celery worker process per queue group (history+navigation+radiology, necessity).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from flask.testing import FlaskClient

from oncotwin.app import create_app
from shared.config import load_settings
from tests.conftest import requires_data, synthea
from tests.test_embedded_up import wait_for

pytestmark = requires_data
ROOT = Path(__file__).resolve().parents[1]
REDIS = "redis://127.0.0.1:6379/11"  # a database of its own on the local server
POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"oncotwin_eval_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        from shared.db import _ENGINES

        for url in [u for u in _ENGINES if name in u]:
            _ENGINES.pop(url).dispose()
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def environment(database: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    redis.Redis.from_url(REDIS).flushdb()
    return {
        "ONCOTWIN_DATA_DIR": str(tmp_path_factory.mktemp("var")),
        "CELERY_BROKER_URL": REDIS,
        "CELERY_RESULT_BACKEND": REDIS,
        "DATABASE_URL": database,
    }


@pytest.fixture(scope="module")
def workers(environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    logs = tmp_path_factory.mktemp("logs")
    processes = []
    for queues in ("history,navigation,radiology", "necessity"):
        command = [sys.executable, "-m", "celery", "-A", "shared.celery_app:celery_app", "worker", "-Q", queues]
        command += ["-c", "1", "--hostname", f"{queues.replace(',', '-')}@%h", "--loglevel", "INFO"]
        with (logs / f"{queues}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env={**os.environ, **environment}, stdout=log, stderr=subprocess.STDOUT
                )
            )
    try:
        yield logs
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


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
    workers: Path, client: FlaskClient, mint: Callable[..., str], database: str
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

    view = wait_for(finished, 90, "the evaluation to finish on the workers")
    assert view["status"] == "done", view.get("error")
    assert [c["cancerType"] for c in view["result"]["history"]["cancers"]] == ["nsclc"]
    assert view["result"]["navigation"]["pathways"][0]["id"] == "nsclc"
    assert view["result"]["necessity"]["patient"] == view["patient"]

    with psycopg.connect(database) as db:  # the row itself: finished, and the input no longer kept
        row = db.execute("SELECT status, body FROM evaluations WHERE id = %s", (view["id"],)).fetchone()
    assert row is not None and row[0] == "done" and row[1] == b""

    # Routing: each step ran on the worker that consumes its service's queue.
    history_log = (workers / "history,navigation,radiology.log").read_text()
    necessity_log = (workers / "necessity.log").read_text()
    assert "Task oncotwin.history.evaluation_history[" in history_log
    assert "Task oncotwin.navigation.evaluation_navigation[" in history_log
    assert "Task oncotwin.radiology.evaluation_findings[" in history_log
    assert "Task oncotwin.necessity.evaluation_necessity[" in necessity_log
    assert "Task oncotwin.necessity." not in history_log and "Task oncotwin.history." not in necessity_log
