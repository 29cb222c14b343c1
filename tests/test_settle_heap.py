"""Long-lived objects leave the cyclic collector's view after a process's first answers (shared.http)."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

import shared.http as http


def test_the_heap_is_settled_after_the_1st_10th_100th_and_1000th_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen_at: list[int] = []
    answers = iter(range(1, 2001))
    current = [0]

    def freeze() -> None:
        gc.freeze()  # the real thing, so the count below is real too
        frozen_at.append(current[0])

    monkeypatch.setattr(http, "_answers", 0)
    monkeypatch.setattr(http, "gc", SimpleNamespace(collect=gc.collect, freeze=freeze))
    gc.unfreeze()
    try:
        for _ in range(2000):
            current[0] = next(answers)
            http.settle_heap()
        assert frozen_at == [1, 10, 100, 1000]
        assert gc.get_freeze_count() > 0  # objects alive now are out of the collector's view
    finally:
        gc.unfreeze()
