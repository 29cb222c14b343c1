"""The trained radiology classifier: one-vs-rest logistic regression on the labeler's reading of a report.

CPU and numpy only, nothing downloaded. The features of a report come from the weak labeler's reading
(``labeler.Reading``), so the model sees what the rules saw and more:

- context-marked words: every word of the findings and impression, prefixed ``neg_`` inside a ConText
  negation scope and ``unc_`` inside an uncertainty scope (the labeler's own cues and scopes, so "no
  effusion" and "effusion" are different features), each also marked by its section (``f:``/``i:``,
  the impression is the radiologist's summary), word bigrams within a clause, and 4-character stems
  (tolerance to inflection: "atelectatic", "atelectasis"); kept when seen in >= ``min_df`` reports;
- the labeler's evidence: ``@<class>=<status>`` and ``@<class>=<status>:<section>`` per class the rules
  mention, always kept. They carry a 100x weaker L2 penalty (``l2_evidence``) than the words: the rules
  are the prior, and the words must outweigh them to overrule them (an ensemble of the n-gram model
  and the labeler's evidence in one linear model).

A labeler that returns only findings (a test stand-in) gives words from this module's own small cue
list (``features``) and the evidence of those findings.

Training is full-batch gradient descent (Adam) on the summed logistic loss with L2 penalties, on targets
that come from the WEAK labeler only, under the one uncertain policy (``schema.present_statuses``;
U-Zeros by default, the same policy that scores the labeler and exports LLM instructions); the ``normal``
target is 1 when the labeler found nothing positive or uncertain. Optional class balance up-weights
rare positives. The decision threshold is one per class, chosen by inner cross-validation on the
training reports' WEAK labels (``inner_folds``), or ``threshold`` for all. Human labels are never read.

An artifact is a folder: ``weights.npy`` (features x classes, float32), ``bias.npy``, ``vocab.json``
(feature strings in weight-row order) and ``metadata.json`` (schema, classes, per-class thresholds,
training-data sha256, weak-label source and rules version, training metrics, creation time).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.radiology.schema import NORMAL, SCHEMAS, Finding, Report, present_statuses

FORMAT_VERSION = 2
# What a weak labeler gives per report: the labeler's ``Reading`` (findings + scope-marked tokens), or just
# its findings (a stand-in labeler).
Labelled = Any
# labels many reports at once: (reports, schema) -> one Labelled per report (labeler.weak_read_many)
WeakLabeler = Callable[[Sequence[Report], str], Sequence[Labelled]]

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[.;:!?]|\d+")
_CLAUSE_END = {".", ";", ":", "!", "?", "but", "however", "although", "which", "except", "though"}
_NEG_CUES = {"no", "without", "not", "negative", "free", "absent", "resolved", "resolution", "clear", "nor", "none"}
_NEG_BIGRAMS = {("rule", "out"), ("ruled", "out"), ("no", "evidence"), ("has", "resolved")}
_UNC_CUES = {
    "may",
    "might",
    "possible",
    "possibly",
    "probable",
    "probably",
    "likely",
    "suspicious",
    "questionable",
    "suggest",
    "suggests",
    "suggestive",
    "versus",
    "vs",
    "concerning",
    "could",
    "cannot",
    "differential",
    "suspected",
    "borderline",
    "equivocal",
    "favor",
    "favored",
    "represent",
    "question",
}


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("x-xxxx", "xray"))


def findings_of(labelled: Labelled) -> Sequence[Finding]:
    """The findings of a labeler's output for one report (a ``Reading`` or a Finding list)."""
    findings: Sequence[Finding] | None = getattr(labelled, "findings", None)
    return labelled if findings is None else findings


def _own_scoped(text: str) -> list[str]:
    """Words of ``text`` marked with this module's small cue list (for labelers that give no tokens)."""
    out: list[str] = []
    scope = ""
    prev = "<s>"
    for tok in tokens(text):
        if tok in _CLAUSE_END:
            scope = ""
            prev = "<s>"
            out.append(".")
            continue
        if tok in _NEG_CUES or (prev, tok) in _NEG_BIGRAMS:
            scope = "neg_"
        elif tok in _UNC_CUES and scope != "neg_":
            scope = "unc_"
        out.append(scope + tok)
        prev = tok
    return out


def features(report: Report, labelled: Labelled | None = None) -> list[str]:
    """The report's feature strings (with repeats): context-marked words, section words, bigrams and stems
    from the labeler's tokens (or this module's own cues), plus the labeler's evidence features."""
    scoped = getattr(labelled, "tokens", None)
    sections = scoped if scoped is not None else [(name, _own_scoped(text)) for name, text in report.sections()]
    out: list[str] = []
    for name, words in sections:
        sec = name[0]  # f | i
        prev = "<s>"
        for word in words:
            if word == ".":
                prev = "<s>"
                continue
            mark, bare = (word[:4], word[4:]) if word.startswith(("neg_", "unc_")) else ("", word)
            out.append(word)
            out.append(f"{sec}:{word}")
            out.append(f"{prev} {word}")
            if len(bare) > 4:
                out.append(f"{mark}{bare[:4]}~")
            prev = word
    if labelled is not None:
        for finding in findings_of(labelled):
            if finding.status != "absent":
                out.append(f"@{finding.label}={finding.status}")
                if finding.evidence is not None:
                    out.append(f"@{finding.label}={finding.status}:{finding.evidence.section[0]}")
    return out


@dataclass
class Design:
    """A sparse report-by-feature matrix in CSR form (binary values), built with numpy only."""

    indptr: np.ndarray
    indices: np.ndarray
    n_features: int
    rows: np.ndarray = field(init=False)
    order: np.ndarray = field(init=False)
    starts: np.ndarray = field(init=False)
    present: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        counts = np.diff(self.indptr)
        self.rows = np.repeat(np.arange(len(counts)), counts)
        # column-sorted view for X^T @ G
        self.order = np.argsort(self.indices, kind="stable")
        sorted_cols = self.indices[self.order]
        self.present, self.starts = np.unique(sorted_cols, return_index=True)

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """X @ W for W of shape (features, classes)."""
        out = np.zeros((self.n_rows, weights.shape[1]), dtype=np.float32)
        if len(self.indices):
            gathered = weights[self.indices]
            nonempty = np.flatnonzero(np.diff(self.indptr))
            out[nonempty] = np.add.reduceat(gathered, self.indptr[nonempty], axis=0)
        return out

    def tdot(self, grad: np.ndarray) -> np.ndarray:
        """X^T @ G for G of shape (rows, classes)."""
        out = np.zeros((self.n_features, grad.shape[1]), dtype=np.float32)
        if len(self.indices):
            gathered = grad[self.rows[self.order]]
            out[self.present] = np.add.reduceat(gathered, self.starts, axis=0)
        return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weak_targets(
    findings: Iterable[Finding], classes: Sequence[str], uncertain_positive: bool | None = None
) -> np.ndarray:
    """0/1 targets from weak-labeler findings under the uncertain policy (``schema.present_statuses``: positive
    -> 1, uncertain too only with ``uncertain_positive``); ``normal`` as the labeler says, or, when it says
    nothing about it, 1 when it found nothing positive or uncertain."""
    ones = present_statuses(uncertain_positive)
    row = np.zeros(len(classes), dtype=np.float32)
    index = {c: i for i, c in enumerate(classes)}
    said_normal: bool | None = None
    any_finding = False
    for finding in findings:
        if finding.label == NORMAL:
            said_normal = finding.status == "positive"
        elif finding.label in index and finding.status in ones:
            row[index[finding.label]] = 1.0
            any_finding = True
        elif finding.status == "uncertain":
            any_finding = True
    if NORMAL in index:
        row[index[NORMAL]] = float(said_normal if said_normal is not None else not any_finding)
    return row


def weak_matrix(
    labelled: Sequence[Labelled], classes: Sequence[str], uncertain_positive: bool | None = None
) -> np.ndarray:
    if not labelled:
        return np.zeros((0, len(classes)), dtype=np.float32)
    return np.stack([weak_targets(findings_of(x), classes, uncertain_positive) for x in labelled])


def _read(reports: Sequence[Report], schema: str) -> list[Labelled]:
    from services.radiology.labeler import weak_read_many  # spaCy loads only when a reading is needed

    return list(weak_read_many(reports, schema))


@dataclass
class RadiologyModel:
    classes: tuple[str, ...]
    vocab: dict[str, int]
    weights: np.ndarray  # (features, classes) float32
    bias: np.ndarray  # (classes,) float32
    metadata: dict[str, Any] = field(default_factory=dict)
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # per class

    def __post_init__(self) -> None:
        if len(self.thresholds) != len(self.classes):
            self.thresholds = np.full(len(self.classes), 0.5, dtype=np.float32)

    @property
    def schema(self) -> str:
        return str(self.metadata.get("schema", "openi"))

    # ---- inference -------------------------------------------------------------------------------
    def design(self, reports: Sequence[Report], labelled: Sequence[Labelled]) -> Design:
        indptr = [0]
        indices: list[int] = []
        vocab = self.vocab
        for report, reading in zip(reports, labelled, strict=True):
            cols = {vocab[f] for f in features(report, reading) if f in vocab}
            indices.extend(sorted(cols))
            indptr.append(len(indices))
        return Design(np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64), len(vocab))

    def predict_proba(self, reports: Sequence[Report], labelled: Sequence[Labelled] | None = None) -> np.ndarray:
        """(reports, classes) probabilities, in ``self.classes`` order (present: >= ``self.thresholds``).

        ``labelled``: the weak labeler's output for ``reports`` (None: the rule labeler reads them here)."""
        if not reports:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        labelled = _read(reports, self.schema) if labelled is None else labelled
        logits = self.design(reports, labelled).dot(self.weights) + self.bias
        return (1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))).astype(np.float32)

    def predict(self, reports: Sequence[Report], labelled: Sequence[Labelled] | None = None) -> np.ndarray:
        """0/1 (reports, classes): probability >= the class's threshold."""
        return (self.predict_proba(reports, labelled) >= self.thresholds).astype(np.float32)

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "weights.npy", self.weights.astype(np.float32), allow_pickle=False)
        np.save(directory / "bias.npy", self.bias.astype(np.float32), allow_pickle=False)
        ordered = sorted(self.vocab, key=self.vocab.__getitem__)
        (directory / "vocab.json").write_text(json.dumps(ordered), encoding="utf-8")
        meta = {
            **self.metadata,
            "format_version": FORMAT_VERSION,
            "classes": list(self.classes),
            "thresholds": {c: round(float(t), 4) for c, t in zip(self.classes, self.thresholds, strict=True)},
        }
        (directory / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: Path) -> RadiologyModel:
        meta = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise StaleArtifact(f"model artifact format {meta.get('format_version')!r} is not {FORMAT_VERSION}")
        vocab_list = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        weights = np.load(directory / "weights.npy", allow_pickle=False)
        bias = np.load(directory / "bias.npy", allow_pickle=False)
        classes = tuple(meta["classes"])
        thresholds = meta.get("thresholds")
        if (
            weights.shape != (len(vocab_list), len(classes))
            or bias.shape != (len(classes),)
            or not isinstance(thresholds, dict)
            or set(thresholds) != set(classes)
        ):
            raise ValueError("model artifact weights do not match its vocabulary/classes")
        per_class = np.array([float(thresholds[c]) for c in classes], dtype=np.float32)
        return cls(classes, {f: i for i, f in enumerate(vocab_list)}, weights, bias, meta, per_class)


class StaleArtifact(ValueError):
    """An artifact written by an older format of this module (retrain it)."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. The defaults were chosen WITHOUT human labels, by ``evaluate.weak_agreement``:
    micro-F1 (all 14 classes) of out-of-fold predictions against the held-out reports' WEAK labels, 5-fold
    CV on the dev reports with split seed 99 (the evaluation uses seed 13). Measured: l2_evidence 1e-6 /
    1e-5 / 3e-5 / 1e-4 / 1e-3 -> 0.9985 / 0.9998 / 0.9993 / 0.9920 / 0.9590; balance 0.3 lowers every one
    (best 0.9954); l2 1e-4 -> 0.9866; inner_folds 3 -> 1.0000, tied with min_df 3 (1.0000; an exact copy of
    the rules); the tie went to the per-class thresholds. More agreement with the teacher is all this
    criterion can reward, so it cannot pick a student that overrules its teacher more often."""

    epochs: int = 200
    learning_rate: float = 0.2
    l2: float = 1e-3  # on the words
    l2_evidence: float = 1e-5  # on the labeler's evidence features: the rules are the strong prior
    min_df: int = 10  # words seen in fewer training reports are dropped (evidence features are always kept)
    seed: int = 13
    balance: float = 0.0  # positives weighted ((negatives / positives) ** balance) per class; 0: unweighted
    # per-class thresholds: chosen by ``inner_folds``-fold CV on the training reports' WEAK labels (best F1
    # against the weak labels on held-out inner folds); 0 or 1: ``threshold`` for every class.
    inner_folds: int = 3
    threshold: float = 0.5


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))


def _fit_weights(
    design: Design, y: np.ndarray, evidence_rows: np.ndarray, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    n, k = y.shape
    weights = np.zeros((design.n_features, k), dtype=np.float32)
    prior = np.clip(y.mean(axis=0), 1e-3, 1 - 1e-3) if n else np.full(k, 0.5)
    bias = np.log(prior / (1 - prior)).astype(np.float32)
    pos = np.clip(y.sum(axis=0), 1, None)
    pos_weight = (((n - pos) / pos).clip(1, None) ** config.balance).astype(np.float32)
    sample_weight = y * pos_weight + (1 - y)
    l2 = np.full((design.n_features, 1), config.l2, dtype=np.float32)
    l2[evidence_rows] = config.l2_evidence
    params = [weights, bias]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, config.epochs + 1):
        err = (_sigmoid(design.dot(weights) + bias) - y) * sample_weight / max(1, n)
        grads = [design.tdot(err) + l2 * weights, err.sum(axis=0)]
        for param, grad, (m, v) in zip(params, grads, moments, strict=True):
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            param -= config.learning_rate * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
    return weights, bias


def _fit_once(
    reports: Sequence[Report], labelled: Sequence[Labelled], y: np.ndarray, classes: Sequence[str], config: TrainConfig
) -> RadiologyModel:
    rows = [features(r, x) for r, x in zip(reports, labelled, strict=True)]
    df: Counter[str] = Counter()
    for row in rows:
        df.update(set(row))
    kept = sorted(f for f, n in df.items() if n >= config.min_df or f.startswith("@"))
    vocab = {f: i for i, f in enumerate(kept)}
    indptr = np.cumsum([0] + [len({f for f in row if f in vocab}) for row in rows])
    indices = np.asarray([c for row in rows for c in sorted({vocab[f] for f in row if f in vocab})], dtype=np.int64)
    design = Design(indptr.astype(np.int64), indices, len(vocab))
    evidence_rows = np.asarray([i for f, i in vocab.items() if f.startswith("@")], dtype=np.int64)
    weights, bias = _fit_weights(design, y.astype(np.float32), evidence_rows, config)
    thresholds = np.full(len(classes), config.threshold, dtype=np.float32)
    return RadiologyModel(tuple(classes), vocab, weights, bias, thresholds=thresholds)


def _best_thresholds(proba: np.ndarray, y: np.ndarray, fallback: float) -> np.ndarray:
    """Per class, the threshold on a 0.05 grid with the best F1 against ``y`` (ties: the one nearest 0.5)."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    out = np.full(y.shape[1], fallback, dtype=np.float32)
    for j in range(y.shape[1]):
        truth = y[:, j] >= 0.5
        if not truth.any():
            continue
        best = (-1.0, 1.0)
        for t in grid:
            pred = proba[:, j] >= t
            f1 = 2 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())
            key = (f1, -abs(t - 0.5))
            if key > best:
                best, out[j] = key, t
    return out


def fit(
    reports: Sequence[Report],
    targets: np.ndarray,
    classes: Sequence[str],
    labelled: Sequence[Labelled],
    config: TrainConfig = TrainConfig(),
) -> RadiologyModel:
    """Fit the classifier on (reports, 0/1 targets). Targets must come from the weak labeler; ``labelled`` is
    that labeler's output for ``reports`` (its reading gives the features)."""
    if len(reports) != targets.shape[0] or targets.shape[1] != len(classes):
        raise ValueError("targets must be (reports, classes)")
    if len(labelled) != len(reports):
        raise ValueError("labelled must have one entry per report")
    model = _fit_once(reports, labelled, targets, classes, config)
    if config.inner_folds >= 2 and len(reports) >= 2 * config.inner_folds:
        # out-of-fold probabilities on the training reports, scored against their WEAK labels only
        order = np.random.default_rng(config.seed).permutation(len(reports))
        oof = np.zeros(targets.shape, dtype=np.float32)
        for part in np.array_split(order, config.inner_folds):
            rest = np.setdiff1d(order, part)
            inner = _fit_once([reports[i] for i in rest], [labelled[i] for i in rest], targets[rest], classes, config)
            oof[part] = inner.predict_proba([reports[i] for i in part], [labelled[i] for i in part])
        model.thresholds = _best_thresholds(oof, targets, config.threshold)
    return model


def train_from_reports(
    reports: Sequence[Report],
    labeler: WeakLabeler,
    schema: str = "openi",
    config: TrainConfig = TrainConfig(),
    metadata: dict[str, Any] | None = None,
    uncertain_positive: bool | None = None,
) -> RadiologyModel:
    """Weak-label ``reports`` with ``labeler`` and fit on those labels (the only supervision)."""
    classes = (*SCHEMAS[schema], NORMAL)
    labelled = list(labeler(reports, schema))
    targets = weak_matrix(labelled, classes, uncertain_positive)
    model = fit(reports, targets, classes, labelled, config)
    predicted = model.predict(reports, labelled)
    agreement = float((predicted == (targets >= 0.5)).mean()) if len(reports) else 0.0
    model.metadata = {
        "schema": schema,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": {
            "reports": len(reports),
            "features": len(model.vocab),
            "config": config.__dict__,
            "uncertain_positive": present_statuses(uncertain_positive) == ("positive", "uncertain"),
            "weak_positive_counts": {c: int(targets[:, i].sum()) for i, c in enumerate(classes)},
            "train_agreement_with_weak_labels": round(agreement, 4),
        },
        **(metadata or {}),
    }
    return model
