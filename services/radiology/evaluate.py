"""Evaluation: the weak labeler and the trained model, side by side, scored against HUMAN labels.

The model is cross-validated: the reports are split into ``folds`` seeded, disjoint folds; for each
fold a model is trained on the WEAK labels of the other folds and scores the held-out fold, so no
model is ever scored on a report it was trained on. Human labels are read only to score (never to
train, pick thresholds or tune). The weak labeler is a fixed rule set, so it is scored on every
report directly. A labeler prediction is 1 when it says positive (uncertain too with
``uncertain_positive``: the same policy as the model's training targets); a model prediction is 1 when
its probability is >= the model's threshold (``TrainConfig.threshold``, chosen on weak labels).

Metrics: precision, recall and F1 per class; micro (pooled counts) and macro (mean of per-class F1)
over a class set: the 8 ChestX-ray8 classes and all 13 Open-i classes (+ ``normal``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.radiology.model import TrainConfig, WeakLabeler, fit, weak_matrix
from services.radiology.schema import CHESTXRAY8, NORMAL, OPENI, Report


@dataclass(frozen=True)
class ClassScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # human positives
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class Scores:
    per_class: tuple[ClassScore, ...]
    micro_precision: float
    micro_recall: float
    micro_f1: float
    macro_f1: float


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def score(gold: np.ndarray, pred: np.ndarray, classes: Sequence[str], subset: Sequence[str] | None = None) -> Scores:
    """P/R/F1 of 0/1 ``pred`` against 0/1 ``gold`` (both reports x ``classes``) over ``subset``."""
    subset = tuple(subset or classes)
    per: list[ClassScore] = []
    for label in subset:
        j = list(classes).index(label)
        g, p = gold[:, j] >= 0.5, pred[:, j] >= 0.5
        tp, fp, fn = int((g & p).sum()), int((~g & p).sum()), int((g & ~p).sum())
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per.append(ClassScore(label, precision, recall, _f1(precision, recall), int(g.sum()), tp, fp, fn))
    tp, fp, fn = (sum(getattr(c, k) for c in per) for k in ("tp", "fp", "fn"))
    mp, mr = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    macro = float(np.mean([c.f1 for c in per])) if per else 0.0
    return Scores(tuple(per), mp, mr, _f1(mp, mr), macro)


def kfold(n: int, folds: int, seed: int = 13) -> list[np.ndarray]:
    """``folds`` disjoint index arrays covering ``range(n)``, shuffled with ``seed``."""
    if folds < 2 or folds > max(n, 2):
        raise ValueError(f"folds must be between 2 and the number of reports ({n})")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def gold_matrix(reports: Sequence[Report], gold: Mapping[str, Mapping[str, int]], classes: Sequence[str]) -> np.ndarray:
    missing = [r.uid for r in reports if r.uid not in gold]
    if missing:
        raise ValueError(f"{len(missing)} report(s) have no human labels, e.g. uid {missing[0]!r}")
    return np.array([[float(gold[r.uid].get(c, 0)) for c in classes] for r in reports], dtype=np.float32)


@dataclass(frozen=True)
class Comparison:
    classes: tuple[str, ...]
    gold: np.ndarray
    weak: np.ndarray  # the labeler's 0/1 on every report
    model: np.ndarray  # out-of-fold 0/1 of the cross-validated model
    folds: int

    def table(self, subset: Sequence[str]) -> tuple[Scores, Scores]:
        return score(self.gold, self.weak, self.classes, subset), score(self.gold, self.model, self.classes, subset)


def cross_validate(
    reports: Sequence[Report],
    gold: Mapping[str, Mapping[str, int]],
    labeler: WeakLabeler,
    folds: int = 5,
    seed: int = 13,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen)
    uncertain_positive: bool = False,
) -> Comparison:
    classes = (*OPENI, NORMAL)
    weak = weak_matrix(labeler(reports, "openi"), classes, uncertain_positive)
    human = gold_matrix(reports, gold, classes)
    model_pred = np.zeros_like(weak)
    for test in kfold(len(reports), folds, seed):
        train = np.setdiff1d(np.arange(len(reports)), test)
        model = fit([reports[i] for i in train], weak[train], classes, config)  # weak labels only
        model_pred[test] = model.predict_proba([reports[i] for i in test]) >= model.threshold
    return Comparison(classes, human, weak, model_pred, folds)


def format_tables(comparison: Comparison) -> str:
    lines: list[str] = []
    tables = (("ChestX-ray8 (8 classes)", CHESTXRAY8), ("Open-i (13 classes + normal)", comparison.classes))
    for title, subset in tables:
        weak, model = comparison.table(subset)
        lines.append(f"== {title}: weak labeler vs trained model ({comparison.folds}-fold CV), against human labels")
        lines.append(f"{'class':<20}{'support':>8} | {'weak P':>7}{'R':>7}{'F1':>7} | {'model P':>8}{'R':>7}{'F1':>7}")
        for w, m in zip(weak.per_class, model.per_class, strict=True):
            lines.append(
                f"{w.label:<20}{w.support:>8} | {w.precision:>7.3f}{w.recall:>7.3f}{w.f1:>7.3f}"
                f" | {m.precision:>8.3f}{m.recall:>7.3f}{m.f1:>7.3f}"
            )
        lines.append(
            f"{'micro':<20}{'':>8} | {weak.micro_precision:>7.3f}{weak.micro_recall:>7.3f}{weak.micro_f1:>7.3f}"
            f" | {model.micro_precision:>8.3f}{model.micro_recall:>7.3f}{model.micro_f1:>7.3f}"
        )
        lines.append(f"{'macro F1':<20}{'':>8} | {'':>14}{weak.macro_f1:>7.3f} | {'':>15}{model.macro_f1:>7.3f}")
        lines.append("")
    return "\n".join(lines)
