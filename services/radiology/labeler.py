"""Rule-based weak labeler for chest X-ray reports (NegBio-style, on a blank spaCy pipeline).

Finding phrases per class and schema live in ``rules/findings.json`` (regular expressions), the
ConText cues (negation, uncertainty, pseudo-negation, termination) in ``rules/context.json``, read
by the clinical-notes loader and applied by the same ``ConText`` class as the note pipeline.

Only the findings and impression sections are read; the indication states why the study was
done, not what it showed, and is never a source of a label.

Per mention: negated -> negative (negation beats uncertainty: "no definite infiltrate"), else
uncertain, else positive. Per report and class: positive if any positive mention, else uncertain
if any uncertain mention, else negative if any negated mention, else absent. The evidence is the
first mention of the deciding status. ``normal`` is positive when no class is positive or
uncertain, negative otherwise; its evidence is a normal phrase ("lungs are clear") when there is
one, else the first deciding abnormal mention. Asserted findings outside the schema
(``other_abnormal`` in findings.json: granuloma, scoliosis, opacity, tortuous aorta ...) also make
``normal`` negative, as the human Open-i labels do; negated or uncertain ones are ignored.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import spacy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.tokens import Span as SpacySpan

from shared.nlp.context import ConText
from shared.nlp.rules import load_context_rules

from .schema import NORMAL, SCHEMAS, Finding, Report, Span, Status, present_statuses

RULES_DIR = Path(__file__).parent / "rules"
FINDINGS_PATH = RULES_DIR / "findings.json"
CONTEXT_PATH = RULES_DIR / "context.json"
OTHER = "_other_abnormal"  # findings outside the schema that still make a report not normal
_RANK: dict[Status, int] = {"positive": 3, "uncertain": 2, "negative": 1, "absent": 0}


@dataclass(frozen=True, slots=True)
class Reading:
    """One report as the labeler read it: its findings, and per section the scope-marked tokens."""

    findings: list[Finding]
    tokens: tuple[tuple[str, tuple[str, ...]], ...]  # (section, tokens): "no", "neg_effusion", "."


@dataclass(frozen=True, slots=True)
class Mention:
    label: str
    status: Status
    evidence: Span


def _compile(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])(?:" + "|".join(patterns) + r")(?![\w-])", re.IGNORECASE)


class Labeler:
    """The compiled rules and the blank pipeline; build once (``labeler()``), share freely."""

    def __init__(self, findings_path: Path = FINDINGS_PATH, context_path: Path = CONTEXT_PATH) -> None:
        data = json.loads(findings_path.read_text(encoding="utf-8"))
        self.patterns: dict[str, dict[str, re.Pattern[str]]] = {}
        for schema, classes in data["patterns"].items():
            if schema in SCHEMAS and set(classes) != set(SCHEMAS[schema]):
                raise ValueError(f"{findings_path.name}: {schema} classes differ from schema.py")
            self.patterns[schema] = {label: _compile(pats) for label, pats in classes.items()}
        other = _compile(data["other_abnormal"])
        for classes in self.patterns.values():
            classes[OTHER] = other
        self.normal = _compile(data["normal_phrases"])
        self.nlp: Language = spacy.blank("en")
        self.nlp.add_pipe("sentencizer")
        self.context = ConText(self.nlp, load_context_rules(context_path))

    def mentions(self, section: str, text: str, schema: str) -> list[Mention]:
        return self._read(section, self.nlp(text), schema)[0]

    def _read(self, section: str, doc: Doc, schema: str) -> tuple[list[Mention], tuple[str, ...]]:
        """The doc's mentions with their status, and its tokens marked by the ConText scopes."""
        text = doc.text
        spans: list[SpacySpan] = []
        for label, pattern in self.patterns[schema].items():
            for m in pattern.finditer(text):
                span = doc.char_span(m.start(), m.end(), label=label, alignment_mode="expand")
                if span is not None:
                    spans.append(span)
        scopes = self.context.scopes(doc, spans)
        out = []
        for span in spans:
            flags = {flag for begin, end, flag in scopes if span.start < end and span.end > begin}
            status: Status = (
                "negative"
                if "oncotwin_negated" in flags
                else "uncertain"
                if "oncotwin_uncertain" in flags
                else "positive"
            )
            evidence = Span(section, span.start_char, span.end_char, span.text)
            out.append(Mention(span.label_, status, evidence))
        return out, _scoped_tokens(doc, scopes)

    def label_docs(self, report: Report, docs: Sequence[tuple[str, Doc]], schema: str) -> list[Finding]:
        return self.read_docs(report, docs, schema).findings

    def read_docs(self, report: Report, docs: Sequence[tuple[str, Doc]], schema: str) -> Reading:
        if schema not in self.patterns:
            raise ValueError(f"unknown schema {schema!r}; one of {sorted(self.patterns)}")
        best: dict[str, Mention] = {}
        normal_evidence: Span | None = None
        tokens: list[tuple[str, tuple[str, ...]]] = []
        for section, doc in docs:
            mentions, scoped = self._read(section, doc, schema)
            tokens.append((section, scoped))
            for mention in mentions:
                held = best.get(mention.label)
                if held is None or _RANK[mention.status] > _RANK[held.status]:
                    best[mention.label] = mention
            if normal_evidence is None and (m := self.normal.search(doc.text)):
                normal_evidence = Span(section, m.start(), m.end(), m.group(0))
        findings = []
        abnormal: Span | None = None
        for label in SCHEMAS[schema]:
            held = best.get(label)
            if held is None:
                findings.append(Finding(label, "absent"))
                continue
            findings.append(Finding(label, held.status, None, held.evidence))
            if abnormal is None and held.status in ("positive", "uncertain"):
                abnormal = held.evidence
        other = best.get(OTHER)
        if abnormal is None and other is not None and other.status == "positive":
            abnormal = other.evidence
        if abnormal is not None:
            findings.append(Finding(NORMAL, "negative", None, abnormal))
        else:
            findings.append(Finding(NORMAL, "positive", None, normal_evidence))
        return Reading(findings, tuple(tokens))

    def label(self, report: Report, schema: str = "openi") -> list[Finding]:
        docs = [(name, self.nlp(text)) for name, text in report.sections()]
        return self.label_docs(report, docs, schema)

    def label_many(
        self, reports: Iterable[Report], schema: str = "openi", batch_size: int = 256
    ) -> list[list[Finding]]:
        """Label many reports, tokenising all sections with ``nlp.pipe`` (the fast path)."""
        return [reading.findings for reading in self.read_many(reports, schema, batch_size)]

    def read_many(self, reports: Iterable[Report], schema: str = "openi", batch_size: int = 256) -> list[Reading]:
        """``label_many`` plus each section's scope-marked tokens (the trained model's features)."""
        reports = list(reports)
        keys = [(i, name) for i, r in enumerate(reports) for name, _ in r.sections()]
        texts = [text for r in reports for _, text in r.sections()]
        per_report: list[list[tuple[str, Doc]]] = [[] for _ in reports]
        for (i, name), doc in zip(keys, self.nlp.pipe(texts, batch_size=batch_size), strict=True):
            per_report[i].append((name, doc))
        return [self.read_docs(r, docs, schema) for r, docs in zip(reports, per_report, strict=True)]


def _scoped_tokens(doc: Doc, scopes: Sequence[tuple[int, int, str]]) -> tuple[str, ...]:
    """Lower-cased words, ``neg_``/``unc_``-prefixed inside a negation/uncertainty scope (negation wins);
    punctuation as ``.`` (a clause break for n-grams)."""
    prefix = [""] * len(doc)
    for begin, end, flag in scopes:
        mark = "neg_" if flag == "oncotwin_negated" else "unc_" if flag == "oncotwin_uncertain" else ""
        for i in range(begin, min(end, len(doc))):
            if mark == "neg_" or (mark and not prefix[i]):
                prefix[i] = mark
    return tuple("." if token.is_punct else prefix[token.i] + token.lower_ for token in doc if not token.is_space)


@lru_cache(maxsize=1)
def labeler() -> Labeler:
    return Labeler()


def weak_label(report: Report, schema: str = "openi") -> list[Finding]:
    """One Finding per class of ``schema`` plus ``normal``, with the deciding evidence span."""
    return labeler().label(report, schema)


def weak_label_many(reports: Iterable[Report], schema: str = "openi") -> list[list[Finding]]:
    return labeler().label_many(reports, schema)


def weak_read_many(reports: Iterable[Report], schema: str = "openi") -> list[Reading]:
    return labeler().read_many(reports, schema)


def _clean(value: str | None) -> str:
    return (value or "").strip()


def load_reports(csv_path: str | Path) -> list[Report]:
    """Read an Open-i style CSV (uid, indication, comparison, findings, impression)."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        return [
            Report(
                uid=_clean(row["uid"]),
                findings=_clean(row.get("findings")),
                impression=_clean(row.get("impression")),
                indication=_clean(row.get("indication")),
            )
            for row in csv.DictReader(f)
        ]


def load_gold(csv_path: str | Path) -> dict[str, dict[str, int]]:
    """Read the human labels: uid -> {label: 0/1}; ``Hernia`` is dropped (always 0 in the source)."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        return {
            row["uid"].strip(): {k: int(v) for k, v in row.items() if k not in ("uid", "Hernia")}
            for row in csv.DictReader(f)
        }


def binary(findings: Sequence[Finding], uncertain_positive: bool | None = None) -> dict[str, int]:
    """A Finding list as 0/1 under the uncertain policy (``schema.present_statuses``)."""
    ones = present_statuses(uncertain_positive)
    return {f.label: int(f.status in ones) for f in findings}


def score(
    predicted: dict[str, dict[str, int]], gold: dict[str, dict[str, int]], labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per-label precision/recall/F1 plus ``micro`` and ``macro`` rows over ``labels``."""
    rows: dict[str, dict[str, float]] = {}
    total = [0, 0, 0]
    for label in labels:
        tp = fp = fn = 0
        for uid, truth in gold.items():
            p, t = predicted.get(uid, {}).get(label, 0), truth.get(label, 0)
            tp += p and t
            fp += p and not t
            fn += t and not p
        rows[label] = _prf(tp, fp, fn)
        total = [total[0] + tp, total[1] + fp, total[2] + fn]
    rows["micro"] = _prf(*total)
    per = [rows[label] for label in labels]
    rows["macro"] = {k: sum(r[k] for r in per) / len(per) for k in ("precision", "recall", "f1")}
    return rows


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": float(tp + fn)}
