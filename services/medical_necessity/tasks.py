"""Celery face of batch necessity audits: thin callers of :class:`~services.medical_necessity.audit.run.Auditor`.

``audit_input`` reads one input once, adds a pending row per order and enqueues one
``audit_order`` task per row; ``audit_order`` evaluates one order (its record from the worker
process's bounded cache, so the orders of one input share one ingest) and writes its row.

Resume is automatic: each time a worker that consumes the ``necessity`` queue connects to the
broker (at start, and again after the broker restarted), it re-enqueues every pending input and
order of every running audit (:class:`ResumeAudits`); ``POST
/necessity/v1/audits/<id>/resume`` and ``oncotwin audit --resume`` do the same on demand (e.g.
after a broker restart lost its queue). A duplicate delivery costs one SELECT: the guarded UPDATE
in the store writes each order once.

Of workers connecting within ``RESUME_QUIET_S`` of each other one resumes a given audit (a scale-up
must not multiply the queue). On Redis that claim is a key in the broker itself (``SET NX EX``): it
lives exactly as long as the queue it vouches for, so a broker that restarts empty (or fails over
without the key) has lost the claim together with the messages, and the next connect resumes at
once, however recently the last resume was. (Kept in the database, as before, the claim outlived
the queue: a Redis restarted within 30 s of a worker's resume stalled the audit until the stall
watchdog, ``AUDIT_STALL_SECONDS``.) Other brokers keep their queue across a restart and keep the
claim in the database.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from typing import Any

from celery import Task, bootsteps
from celery.utils import worker_direct
from kombu import Queue

from services.medical_necessity.audit import store
from services.medical_necessity.audit.run import Auditor, InputSpec, Work
from services.medical_necessity.judge import judge_from_settings
from shared.celery_app import celery_app
from shared.config import Settings, load_settings

logger = logging.getLogger(__name__)
QUEUE = "necessity"
INPUT_PRIORITY = 9
RESUME_QUIET_S = 30.0  # workers connecting within this window resume an audit once between them
RESUME_KEY = "oncotwin:audit-resume:{audit_id}"  # the claim, in the broker's Redis (gone when its queue is)
STALL_CHECK_S = 60.0  # how often each necessity worker looks for stalled audits


@cache
def auditor() -> Auditor:
    """The worker process's auditor (settings from the environment, LLM jury only if configured)."""
    settings = load_settings()
    return Auditor(settings, judge_from_settings(settings))


def _final(task: Task) -> bool:
    """The last attempt: transient failures are then written as errors, so the audit can finish."""
    return task.request.retries >= (task.max_retries or 0)


@celery_app.task(name="oncotwin.necessity.audit_input", ignore_result=True, bind=True)
def audit_input(self: Task, audit_id: str, input_key: str, ref: str, label: str) -> None:
    work = auditor().expand(audit_id, input_key, ref, label, final=_final(self))
    # The input's orders go to this worker's own queue (``worker_direct``): its record is in this
    # worker's cache, so no other worker ingests the same file again. Resume uses the shared queue.
    own = worker_direct(self.request.hostname) if self.request.hostname else None
    enqueue(audit_id, work, orders_queue=own)


@celery_app.task(name="oncotwin.necessity.audit_order", ignore_result=True, bind=True)
def audit_order(
    self: Task, audit_id: str, order_key: str, ref: str, patient: str, reference: str, occurrence: int
) -> bool:
    return auditor().evaluate(audit_id, order_key, ref, patient, reference, occurrence, final=_final(self))


def enqueue(audit_id: str, work: Work, orders_queue: Queue | None = None) -> None:
    """Send the work over one producer connection (thousands of orders: one connection, not one each)."""
    if not work.inputs and not work.orders:
        return
    with celery_app.producer_or_acquire() as producer, _batch(producer):
        for spec in work.inputs:
            # Lowest priority (Redis serves 0 first): an input's orders run before inputs still waiting
            # to be read, while its record is in the worker's cache. Brokers without priorities ignore it.
            audit_input.apply_async(args=[audit_id, *spec], producer=producer, priority=INPUT_PRIORITY)
        for order in work.orders:
            audit_order.apply_async(args=order.args(audit_id), producer=producer, queue=orders_queue)


def _batch(producer: Any) -> AbstractContextManager[Any]:
    """One broker round trip for many messages where the transport can (kombu's batches: Redis
    pipelines); elsewhere each message goes out on its own."""
    batch = getattr(producer, "batch", None)
    return batch() if batch is not None else nullcontext()


def start(
    settings: Settings,
    paths: list[str] | None = None,
    searches: list[Any] | None = None,
    root: Any = None,
    owner: str | None = None,
) -> tuple[str, list[InputSpec]]:
    """Create an audit and enqueue its inputs; returns its id and inputs."""
    audit_id, work = Auditor(settings).start(paths or [], searches or [], root, owner)
    enqueue(audit_id, work)
    return audit_id, work.inputs


def resume(settings: Settings, audit_id: str) -> Work:
    """Re-enqueue what is still pending of one audit."""
    work = Auditor(settings).resume(audit_id)
    enqueue(audit_id, work)
    return work


def resume_running(settings: Settings) -> int:
    """Re-enqueue the pending work of every running audit that no other worker resumed on this
    broker in the last ``RESUME_QUIET_S`` seconds; returns how many audits this call resumed."""
    audits = Auditor(settings)
    resumed = 0
    with resume_claims(audits) as claim:
        for audit_id in store.running_audits(audits.db):
            if not claim(audit_id):
                continue
            work = audits.resume(audit_id)
            enqueue(audit_id, work)
            resumed += 1
            inputs, orders = len(work.inputs), len(work.orders)
            logger.info("audit %s resumed: %d inputs, %d orders re-enqueued", audit_id, inputs, orders)
    return resumed


@contextmanager
def resume_claims(audits: Auditor) -> Iterator[Callable[[str], bool]]:
    """``claim(audit_id)``: True for one caller per broker and ``RESUME_QUIET_S`` window.

    Redis brokers: ``SET NX EX`` of :data:`RESUME_KEY` in the broker's own database, over a
    connection of the app's broker settings (so Sentinel, TLS and transport options apply). A
    restart that empties the queue empties the claim with it, so a resume is never skipped because
    of a resume whose messages the broker has since lost. The database's ``resumed`` stamp is still
    written: the stall watchdog counts a resume as progress. Other brokers: the database claim."""
    with celery_app.connection_for_write() as connection:
        if connection.transport.driver_type != "redis":
            yield lambda audit_id: store.claim_resume(audits.db, audit_id, RESUME_QUIET_S)
            return
        with connection.default_channel.conn_or_acquire() as client:
            holder = f"{socket.gethostname()}:{os.getpid()}"

            def claim(audit_id: str) -> bool:
                key = RESUME_KEY.format(audit_id=audit_id)
                if not client.set(key, holder, nx=True, ex=max(int(RESUME_QUIET_S), 1)):
                    return False
                store.claim_resume(audits.db, audit_id, 0.0)  # the stamp only: this claim decided
                return True

            yield claim


def resume_stalled(settings: Settings) -> int:
    """Re-enqueue the pending work of audits that made no progress for ``AUDIT_STALL_SECONDS``
    (one worker per audit and window does it); returns how many audits this call resumed."""
    audits = Auditor(settings)
    resumed = 0
    for audit_id in store.stalled_audits(audits.db, settings.audit_stall_s):
        if store.claim_resume(audits.db, audit_id, settings.audit_stall_s):
            work = audits.resume(audit_id)
            enqueue(audit_id, work)
            resumed += 1
            inputs, orders = len(work.inputs), len(work.orders)
            logger.warning("audit %s stalled; resumed: %d inputs, %d orders", audit_id, inputs, orders)
    return resumed


class ResumeAudits(bootsteps.StartStopStep):
    """Runs each time the worker's consumer (re)connects: at start, and after the broker came back
    (a restarted Redis without persistence has lost the queue; a killed worker's messages wait for
    the visibility timeout). Only workers that consume the necessity queue resume audits."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stall_check: Any = None

    def start(self, c: Any) -> None:
        queues = set(c.app.amqp.queues.consume_from or {QUEUE: None})
        if QUEUE not in queues:
            return
        try:
            resume_running(load_settings())
        except Exception:  # the database may be down too; the stall check or a manual resume retries
            logger.exception("could not resume running audits")
        # Work can also be lost while every worker stays connected (a scaled-down node's own queue, a
        # database outage past the retries): look for audits without progress now and then.
        if self._stall_check is None:
            self._stall_check = c.timer.call_repeatedly(STALL_CHECK_S, _check_stalled)

    def stop(self, c: Any) -> None:
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None


def _check_stalled() -> None:
    try:
        resume_stalled(load_settings())
    except Exception:  # the next check tries again
        logger.exception("could not check for stalled audits")


celery_app.steps["consumer"].add(ResumeAudits)
