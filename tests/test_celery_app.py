"""The Celery app's policies: routing by task name, reliability settings, brokers from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.celery_app import PREFETCH, QUEUES, celery_app, conf, route
from shared.config import load_settings
from shared.errors import ConfigError


@pytest.mark.parametrize("queue", QUEUES)
def test_a_task_goes_to_the_queue_its_name_says(queue: str) -> None:
    assert route(f"oncotwin.{queue}.anything", (), {}, {}) == {"queue": queue}


@pytest.mark.parametrize("name", ["celery.chord_unlock", "oncotwin.billing.run", "oncotwin.history", "x"])
def test_other_names_go_to_the_default_queue(name: str) -> None:
    assert route(name, (), {}, {}) == {"queue": "necessity"}


def test_every_registered_oncotwin_task_routes_to_a_known_queue() -> None:
    celery_app.loader.import_default_modules()
    names = [n for n in celery_app.tasks if n.startswith("oncotwin.")]
    assert "oncotwin.llm.evaluation_necessity" in names and "oncotwin.history.evaluation_history" in names
    for name in names:
        assert name.split(".")[1] in QUEUES, name


def test_reliability_policies(tmp_path: Path) -> None:
    c = conf(load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path), "TASK_SOFT_TIME_LIMIT_SECONDS": "30"}))
    assert c["task_acks_late"] and c["task_reject_on_worker_lost"]
    assert c["accept_content"] == ["json"] and c["task_serializer"] == "json" == c["result_serializer"]
    assert c["task_soft_time_limit"] == 30 and c["task_time_limit"] == 180
    assert [q.name for q in c["task_queues"]] == list(QUEUES)
    # The embedded default needs no server: SQLite files in the data directory.
    assert c["broker_url"] == f"sqla+sqlite:///{tmp_path}/broker.sqlite"
    assert c["result_backend"] == f"db+sqlite:///{tmp_path}/results.sqlite"
    assert c["broker_transport_options"] == {}  # the SQLite transport passes options to create_engine


def test_redis_redelivers_only_after_every_reserved_task_could_have_run(tmp_path: Path) -> None:
    env = {"ONCOTWIN_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": "redis://h:6379/0"}
    env["TASK_TIME_LIMIT_SECONDS"] = "200"
    c = conf(load_settings(env))
    assert c["broker_url"] == "redis://h:6379/0"
    assert c["broker_transport_options"]["visibility_timeout"] == (PREFETCH + 1) * 200 > 200


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"CELERY_BROKER_URL": "http://x"}, "CELERY_BROKER_URL"),
        ({"CELERY_RESULT_BACKEND": "mongodb://x"}, "CELERY_RESULT_BACKEND"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"TASK_SOFT_TIME_LIMIT_SECONDS": "300"}, "TASK_TIME_LIMIT_SECONDS"),
        ({"AUDIT_STALL_SECONDS": "100"}, "AUDIT_STALL_SECONDS"),
    ],
)
def test_bad_coordination_settings_fail_naming_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(env)
