"""The medical-necessity evaluation set (tests/data/necessity_eval/*.yaml): every case's expected
determination was written from its public clinical source before the engine ran. One runner for
the test suite (each case a test) and for ``make eval`` (accuracy, per cancer, per determination,
the confusion matrix)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from graph.networkx_store import NetworkXPathwayStore
from graph.queries import PathwayQueries
from services.medical_necessity.contract import DeterminationOut
from services.medical_necessity.engine import assess
from tests.necessity_specs import build_order, build_record

EVAL_DIR = Path(__file__).parent / "data" / "necessity_eval"
DETERMINATIONS = ("meets", "does-not-meet", "insufficient-documentation", "not-on-any-pathway")
HARMFUL = {("meets", "does-not-meet"), ("does-not-meet", "meets")}  # (expected, got): a reviewer acts wrongly


@cache
def cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(EVAL_DIR.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text(encoding="utf-8")) or ():
            out.append({**case, "file": path.name})
    return out


@cache
def queries() -> PathwayQueries:
    return PathwayQueries(NetworkXPathwayStore.load())


def determine(case: dict[str, Any]) -> DeterminationOut:
    record = build_record(case["record"])
    (determination,) = assess(record, queries(), [build_order(case["order"], record)]).determinations
    return determination


@dataclass(frozen=True)
class Scores:
    total: int
    correct: int
    harmful: int
    by_cancer: dict[str, tuple[int, int]]  # cancer -> (correct, total)
    by_expected: dict[str, tuple[int, int]]
    confusion: Counter[tuple[str, str]]  # (expected, got) -> count
    misses: list[tuple[str, str, str]]  # (case id, expected, got)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def score() -> Scores:
    confusion: Counter[tuple[str, str]] = Counter()
    per_cancer: dict[str, list[int]] = {}
    per_expected: dict[str, list[int]] = {}
    misses = []
    for case in cases():
        got = determine(case).determination
        expected = case["expect"]
        confusion[(expected, got)] += 1
        hit = int(got == expected)
        for table, key in ((per_cancer, case["cancer"]), (per_expected, expected)):
            row = table.setdefault(key, [0, 0])
            row[0] += hit
            row[1] += 1
        if not hit:
            misses.append((case["id"], expected, got))
    correct = sum(n for (e, g), n in confusion.items() if e == g)
    return Scores(
        total=sum(confusion.values()),
        correct=correct,
        harmful=sum(n for pair, n in confusion.items() if pair in HARMFUL),
        by_cancer={k: (v[0], v[1]) for k, v in sorted(per_cancer.items())},
        by_expected={k: (v[0], v[1]) for k, v in per_expected.items()},
        confusion=confusion,
        misses=misses,
    )
