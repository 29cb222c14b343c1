"""Evaluation: the weak labeler and the trained model, side by side, scored against HUMAN labels.

The model is cross-validated: the reports are split into ``folds`` seeded, disjoint folds; for each
fold a model is trained on the WEAK labels of the other folds and scores the held-out fold, so no
model is ever scored on a report it was trained on. Human labels are read only to score (never to
train, pick thresholds or tune). The weak labeler is a fixed rule set, so it is scored on every
report directly. A labeler prediction is 1 when its status counts as present under the one uncertain
policy (``schema.present_statuses``, the same policy as the model's training targets); a model prediction
is 1 when its probability is >= the model's per-class threshold (chosen on weak labels only).

Metrics: precision, recall and F1 per class; micro (pooled counts) and macro (mean of per-class F1)
over a class set: the 8 ChestX-ray8 classes and all 13 Open-i classes (+ ``normal``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

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
    llm: np.ndarray | None = None  # the LLM path's 0/1 (``--predictions``), None when not given
    llm_missing: int = 0  # reports with no LLM prediction (scored as predicting nothing)

    def table(self, subset: Sequence[str]) -> tuple[Scores, Scores]:
        return score(self.gold, self.weak, self.classes, subset), score(self.gold, self.model, self.classes, subset)

    def llm_table(self, subset: Sequence[str]) -> Scores | None:
        return None if self.llm is None else score(self.gold, self.llm, self.classes, subset)


def with_predictions(
    comparison: Comparison, reports: Sequence[Report], predictions: Mapping[str, Iterable[str]]
) -> Comparison:
    """``comparison`` plus a third system: per-uid predicted classes (the LLM path's answers, read by
    ``llm_path.read_predictions``). ``normal`` is 1 exactly when no other class is predicted, as the LLM's
    multiple choice means; a report with no prediction predicts nothing (not even normal) and is counted."""
    from services.radiology.llm_path import label_matrix

    missing = sum(r.uid not in predictions for r in reports)
    matrix = label_matrix([set(predictions.get(r.uid, ())) for r in reports], comparison.classes)
    if NORMAL in comparison.classes:
        j = comparison.classes.index(NORMAL)
        matrix[[i for i, r in enumerate(reports) if r.uid not in predictions], j] = 0.0
    return replace(comparison, llm=matrix, llm_missing=missing)


def cross_validate(
    reports: Sequence[Report],
    gold: Mapping[str, Mapping[str, int]],
    labeler: WeakLabeler,
    folds: int = 5,
    seed: int = 13,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen)
    uncertain_positive: bool | None = None,
) -> Comparison:
    classes = (*OPENI, NORMAL)
    labelled = list(labeler(reports, "openi"))
    weak = weak_matrix(labelled, classes, uncertain_positive)
    human = gold_matrix(reports, gold, classes)
    model_pred = np.zeros_like(weak)
    for test in kfold(len(reports), folds, seed):
        train = np.setdiff1d(np.arange(len(reports)), test)
        # weak labels only; the labeler's reading of each report is input, never a human label
        model = fit([reports[i] for i in train], weak[train], classes, [labelled[i] for i in train], config)
        model_pred[test] = model.predict([reports[i] for i in test], [labelled[i] for i in test])
    return Comparison(classes, human, weak, model_pred, folds)


def weak_agreement(
    reports: Sequence[Report],
    labeler: WeakLabeler,
    configs: Sequence[TrainConfig],
    folds: int = 5,
    seed: int = 99,
    uncertain_positive: bool | None = None,
) -> list[float]:
    """How to choose training settings WITHOUT human labels: per config, the micro-F1 (all classes) of the
    model's out-of-fold predictions against the WEAK labels of the held-out reports. ``seed`` differs from
    the evaluation split on purpose. Nothing here reads a human label."""
    classes = (*OPENI, NORMAL)
    labelled = list(labeler(reports, "openi"))
    weak = weak_matrix(labelled, classes, uncertain_positive)
    out = []
    for config in configs:
        pred = np.zeros_like(weak)
        for test in kfold(len(reports), folds, seed):
            train = np.setdiff1d(np.arange(len(reports)), test)
            model = fit([reports[i] for i in train], weak[train], classes, [labelled[i] for i in train], config)
            pred[test] = model.predict([reports[i] for i in test], [labelled[i] for i in test])
        out.append(score(weak, pred, classes).micro_f1)
    return out


def _counts(scores: Scores) -> str:
    tp, fp, fn = (sum(getattr(c, k) for c in scores.per_class) for k in ("tp", "fp", "fn"))
    return f"{scores.micro_f1:.4f}, tp {tp} fp {fp} fn {fn}"


def format_tables(comparison: Comparison) -> str:
    lines: list[str] = []
    tables = (("ChestX-ray8 (8 classes)", CHESTXRAY8), ("Open-i (13 classes + normal)", comparison.classes))
    llm_head = f" | {'LLM P':>8}{'R':>7}{'F1':>7}" if comparison.llm is not None else ""
    for title, subset in tables:
        weak, model = comparison.table(subset)
        llm = comparison.llm_table(subset)
        systems = "weak labeler vs trained model" + (" vs LLM predictions" if llm else "")
        lines.append(f"== {title}: {systems} ({comparison.folds}-fold CV), against human labels")
        lines.append(
            f"{'class':<20}{'support':>8} | {'weak P':>7}{'R':>7}{'F1':>7} | {'model P':>8}{'R':>7}{'F1':>7}{llm_head}"
        )
        llm_rows: Sequence[ClassScore | None] = llm.per_class if llm else [None] * len(weak.per_class)
        for w, m, a in zip(weak.per_class, model.per_class, llm_rows, strict=True):
            extra = f" | {a.precision:>8.3f}{a.recall:>7.3f}{a.f1:>7.3f}" if a else ""
            lines.append(
                f"{w.label:<20}{w.support:>8} | {w.precision:>7.3f}{w.recall:>7.3f}{w.f1:>7.3f}"
                f" | {m.precision:>8.3f}{m.recall:>7.3f}{m.f1:>7.3f}{extra}"
            )
        extra = f" | {llm.micro_precision:>8.3f}{llm.micro_recall:>7.3f}{llm.micro_f1:>7.3f}" if llm else ""
        lines.append(
            f"{'micro':<20}{'':>8} | {weak.micro_precision:>7.3f}{weak.micro_recall:>7.3f}{weak.micro_f1:>7.3f}"
            f" | {model.micro_precision:>8.3f}{model.micro_recall:>7.3f}{model.micro_f1:>7.3f}{extra}"
        )
        extra = f" | {'':>15}{llm.macro_f1:>7.3f}" if llm else ""
        lines.append(f"{'macro F1':<20}{'':>8} | {'':>14}{weak.macro_f1:>7.3f} | {'':>15}{model.macro_f1:>7.3f}{extra}")
        lines.append(
            f"micro-F1 model - weak: {model.micro_f1 - weak.micro_f1:+.4f} (weak {_counts(weak)}; "
            f"model {_counts(model)})"
        )
        lines.append("")
    if comparison.llm is not None and comparison.llm_missing:
        lines.append(f"note: {comparison.llm_missing} report(s) have no LLM prediction (scored as predicting nothing)")
    return "\n".join(lines)
