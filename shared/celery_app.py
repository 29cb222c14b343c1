"""The one Celery app: broker, queues, routing and reliability settings, all from the environment.

Tasks are named ``oncotwin.<queue>.<name>`` and routed to the queue in their name, so a worker
started with ``-Q necessity`` runs only necessity work. Tasks are thin callers of the engines.

Reliability: ``acks_late`` + ``reject_on_worker_lost`` put a task back on the queue when its worker
dies mid-task, so every task must be idempotent (writers use idempotency keys); JSON only, so no
pickle ever crosses the broker; soft/hard time limits stop runaway work; transient upstream
failures (FHIR server, LLM) retry with exponential backoff and jitter (:class:`OncoTwinTask`).

Embedded default (no ``CELERY_BROKER_URL``): kombu's SQLAlchemy transport on a SQLite file under
the data directory. It needs no server, yet the worker is a separate process (``oncotwin up``
starts and supervises it) and messages survive restarts on disk. Deployments use Redis.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery, Task
from kombu import Queue
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.config import Settings, load_settings
from shared.errors import TRANSIENT

QUEUES = ("history", "navigation", "necessity", "radiology", "llm")
PREFETCH = 4  # messages a pool process reserves ahead (late acks: they stay unacked meanwhile)
# Retried with backoff: upstreams and the network, and a database connection lost (failover, restart).
RETRIED = (*TRANSIENT, OperationalError, InterfaceError)
TASK_MODULES = [  # what a worker imports; each holds thin task wrappers around an engine
    "services.evaluations.tasks",
    "services.medical_necessity.tasks",
]


def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> dict[str, str]:
    """``oncotwin.<queue>.<task>`` -> that queue; anything else -> ``necessity`` (the default)."""
    parts = name.split(".")
    queue = parts[1] if len(parts) > 2 and parts[0] == "oncotwin" and parts[1] in QUEUES else "necessity"
    return {"queue": queue}


class OncoTwinTask(Task):
    """Base of every task: late acks, requeue on worker loss, retries for transient failures."""

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = RETRIED
    retry_backoff = 2  # seconds, doubled per attempt
    retry_backoff_max = 120
    retry_jitter = True
    max_retries = 5


def conf(settings: Settings) -> dict[str, Any]:
    """The Celery settings for ``settings`` (broker, backend, limits) plus the fixed policies."""
    if settings.celery_broker_url is None or settings.celery_result_backend is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the embedded SQLite files live there
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "necessity",
        "worker_direct": True,  # a queue per worker node, for work that must stay where its data is cached
        "task_routes": (route,),
        "worker_prefetch_multiplier": PREFETCH,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": _transport_options(settings.broker_url, settings.task_time_limit_s),
        "result_expires": 7 * 24 * 3600,
        "task_track_started": True,
        "enable_utc": True,
        "imports": [m for m in TASK_MODULES if _importable(m)],
    }


def _transport_options(broker_url: str, time_limit_s: int) -> dict[str, Any]:
    if broker_url.startswith(("redis://", "rediss://")):
        return {
            # A message not acked within this time goes back to the queue (its worker died). A prefetched
            # message may wait behind PREFETCH tasks of up to the hard limit each, so not sooner.
            "visibility_timeout": (PREFETCH + 1) * time_limit_s,
            # Message priorities (0 first): e.g. an audit's orders run before more inputs are read.
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
        }
    return {}  # the SQLite transport hands every option to create_engine, so none are set


def configure(settings: Settings) -> None:
    """Point the process's app at ``settings`` (a web app built with explicit settings does this)."""
    broker_changed = celery_app.conf.broker_url != settings.broker_url
    backend_changed = celery_app.conf.result_backend != settings.result_backend
    celery_app.conf.update(conf(settings))
    if broker_changed:  # pooled connections belong to the old broker: drop them, as Celery does after a fork
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
    if backend_changed:  # the cached result-store client too
        celery_app._backend_cache = None
        celery_app._local = threading.local()


def _importable(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# Workers (`celery -A shared.celery_app:celery_app`) read the environment, lazily on first use.
celery_app = Celery("oncotwin", task_cls=OncoTwinTask)
celery_app.add_defaults(lambda: conf(load_settings()))
