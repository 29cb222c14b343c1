"""Celery face of the evaluation workflow: one task per step, each on its service's queue.

``start`` chains history -> group(navigation, necessity, imaging findings). The join needs no chord: the step that
writes the last part finishes the evaluation in the database (see ``EvaluationStore.set_part``), so
nothing depends on the result backend and a redelivered step cannot finish it twice.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import chain, group

from services.evaluations.workflow import Steps
from services.medical_necessity.judge import judge_from_settings
from shared.celery_app import RETRIED, OncoTwinTask, celery_app
from shared.config import load_settings
from shared.errors import OncoTwinError, UpstreamError


@cache
def _steps() -> Steps:
    settings = load_settings()
    return Steps(settings, judge_from_settings(settings))


class EvaluationTask(OncoTwinTask):
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Out of retries, or a bug: the evaluation ends as failed instead of running forever."""
        outcome: OncoTwinError
        if isinstance(exc, RETRIED):
            outcome = UpstreamError("a service the evaluation needs kept failing; try again later", 503)
        else:  # deterministic: the same input would fail again, so do not invite a retry
            outcome = OncoTwinError("the evaluation failed on an internal error (logged)", issue_code="exception")
        _steps().store.fail(args[0], outcome.to_operation_outcome())


@celery_app.task(name="oncotwin.history.evaluation_history", base=EvaluationTask, ignore_result=True)
def history(evaluation_id: str) -> bool:
    return _steps().history(evaluation_id)


@celery_app.task(name="oncotwin.navigation.evaluation_navigation", base=EvaluationTask, ignore_result=True)
def navigation(evaluation_id: str) -> bool:
    return _steps().navigation(evaluation_id)


@celery_app.task(name="oncotwin.necessity.evaluation_necessity", base=EvaluationTask, ignore_result=True)
def necessity(evaluation_id: str) -> bool:
    return _steps().necessity(evaluation_id)


@celery_app.task(name="oncotwin.llm.evaluation_necessity", base=EvaluationTask, ignore_result=True)
def necessity_with_llm(evaluation_id: str) -> bool:
    """The same step when an LLM jury judges free text: LLM-bound, so it waits on the ``llm`` queue,
    whose workers scale with the vLLM backend rather than with the CPU-bound twins."""
    return _steps().necessity(evaluation_id)


@celery_app.task(name="oncotwin.radiology.evaluation_findings", base=EvaluationTask, ignore_result=True)
def findings(evaluation_id: str) -> bool:
    return _steps().findings(evaluation_id)


def start(evaluation_id: str, llm: bool = False) -> None:
    judged = necessity_with_llm if llm else necessity
    parallel = group(navigation.si(evaluation_id), judged.si(evaluation_id), findings.si(evaluation_id))
    chain(history.si(evaluation_id), parallel).apply_async()  # results live in the database
