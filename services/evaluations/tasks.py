"""Celery face of the evaluation workflow: one task per step, each on its service's queue.

``start`` chains history -> group(navigation, necessity). The join needs no chord: the step that
writes the last part finishes the evaluation in the database (see ``EvaluationStore.set_part``), so
nothing depends on the result backend and a redelivered step cannot finish it twice.
"""

from __future__ import annotations

import os
from functools import cache

from celery import chain, group

from services.evaluations.workflow import Steps
from services.medical_necessity.judge import judge_from_env
from shared.celery_app import celery_app
from shared.config import load_settings


@cache
def _steps() -> Steps:
    return Steps(load_settings(), judge_from_env(os.environ))


@celery_app.task(name="oncotwin.history.evaluation_history")
def history(evaluation_id: str) -> bool:
    return _steps().history(evaluation_id)


@celery_app.task(name="oncotwin.navigation.evaluation_navigation")
def navigation(evaluation_id: str) -> bool:
    return _steps().navigation(evaluation_id)


@celery_app.task(name="oncotwin.necessity.evaluation_necessity")
def necessity(evaluation_id: str) -> bool:
    return _steps().necessity(evaluation_id)


@celery_app.task(name="oncotwin.llm.evaluation_necessity")
def necessity_with_llm(evaluation_id: str) -> bool:
    """The same step when an LLM jury judges free text: LLM-bound, so it waits on the ``llm`` queue,
    whose workers scale with the vLLM backend rather than with the CPU-bound twins."""
    return _steps().necessity(evaluation_id)


def start(evaluation_id: str, llm: bool = False) -> None:
    judged = necessity_with_llm if llm else necessity
    parallel = group(navigation.si(evaluation_id), judged.si(evaluation_id))
    chain(history.si(evaluation_id), parallel).apply_async(ignore_result=True)
