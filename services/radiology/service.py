"""The radiology engine: reports in, findings out (free of Flask; the API and the CLI share it).

Each report is read twice: by the trained model (a probability per class) and by the weak labeler
(a status and the evidence span). The combination rule, per class:

=========================  =====================  ==================================================
model probability          labeler status         reported status (evidence)
=========================  =====================  ==================================================
>= threshold               positive / uncertain   the labeler's status (its span)
>= threshold               negative               ``uncertain``: they disagree (the negated mention)
>= threshold               absent                 ``positive`` (no span: the rules found no mention)
< threshold                positive / uncertain   ``uncertain``: they disagree (the labeler's span)
< threshold                negative               ``negative`` (the negated mention)
< threshold                absent                 not reported
=========================  =====================  ==================================================

(threshold: the model's decision threshold for that class, ``metadata.json`` ``thresholds``, chosen on weak
labels when the model was trained.)

So the model decides presence, the rules say how it is worded and where, and every disagreement
surfaces as ``uncertain`` for a reader to check. ``probability`` is always the model's.

The default model artifact lives in ``$ONCOTWIN_DATA_DIR/models/radiology``; ``default_engine``
trains it from the development reports on first use (weak labels only, a few seconds on CPU) when it
is missing or was written by an older format, or ``oncotwin radiology train`` writes it. Nothing is ever
downloaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.radiology.model import (
    RadiologyModel,
    StaleArtifact,
    WeakLabeler,
    findings_of,
    sha256_file,
    train_from_reports,
)
from services.radiology.schema import NORMAL, SCHEMAS, Finding, Report, Status
from shared.errors import InvalidInput

DEFAULT_TRAINING_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "radiology" / "openi_reports_dev.csv"


def model_dir(data_dir: Path) -> Path:
    return data_dir / "models" / "radiology"


def rules_version() -> str:
    """sha256 (first 16 hex) of the labeler's rule files: which rules produced the weak labels."""
    from services.radiology.labeler import CONTEXT_PATH, FINDINGS_PATH

    digest = hashlib.sha256()
    for path in (FINDINGS_PATH, CONTEXT_PATH):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def default_labeler() -> WeakLabeler:
    """The rule labeler's reading (findings + scope-marked tokens): weak labels and the model's input."""
    from services.radiology.labeler import weak_read_many

    return weak_read_many


def train(
    csv_path: Path, schema: str = "openi", labeler: WeakLabeler | None = None, uncertain_positive: bool | None = None
) -> RadiologyModel:
    """Train on the reports of ``csv_path`` with weak labels (no human labels are read)."""
    from services.radiology.labeler import load_reports

    labeler = labeler or default_labeler()
    source = getattr(labeler, "__module__", "?") + "." + getattr(labeler, "__qualname__", type(labeler).__name__)
    metadata = {
        "training_data": {"path": csv_path.name, "sha256": sha256_file(csv_path)},
        "weak_labels": {"source": source, "rules_version": rules_version()},
    }
    return train_from_reports(
        load_reports(csv_path), labeler, schema, metadata=metadata, uncertain_positive=uncertain_positive
    )


@dataclass(frozen=True)
class Classified:
    uid: str
    findings: tuple[Finding, ...]

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "findings": [finding_json(f) for f in self.findings]}


def finding_json(finding: Finding) -> dict[str, Any]:
    evidence = finding.evidence
    return {
        "label": finding.label,
        "status": finding.status,
        "probability": None if finding.probability is None else round(float(finding.probability), 4),
        "evidence": None
        if evidence is None
        else {
            "section": evidence.section,
            "start": evidence.start,
            "end": evidence.end,
            "text": evidence.text,
        },
    }


def combine(label: str, probability: float, rule: Finding | None, threshold: float = 0.5) -> Finding | None:
    """The combination rule of the module docstring, for one class of one report."""
    status: Status = rule.status if rule is not None else "absent"
    evidence = rule.evidence if rule is not None else None
    if probability >= threshold:
        if status in ("positive", "uncertain"):
            return Finding(label, status, probability, evidence)
        if status == "negative":
            return Finding(label, "uncertain", probability, evidence)
        return Finding(label, "positive", probability, None)
    if status in ("positive", "uncertain"):
        return Finding(label, "uncertain", probability, evidence)
    if status == "negative":
        return Finding(label, "negative", probability, evidence)
    return None


class _UsesLabeler:
    _labeler: WeakLabeler | None  # None: the rule labeler, imported (spaCy) on first use

    @property
    def labeler(self) -> WeakLabeler:
        if self._labeler is None:
            self._labeler = default_labeler()
        return self._labeler


class RadiologyEngine(_UsesLabeler):
    """A trained model plus the weak labeler of the same schema; thread-safe for reading."""

    def __init__(self, model: RadiologyModel, labeler: WeakLabeler | None = None) -> None:
        self.model = model
        self._labeler = labeler
        self.schema = str(model.metadata.get("schema", "openi"))
        if self.schema not in SCHEMAS:
            raise ValueError(f"model schema {self.schema!r} is not one of {sorted(SCHEMAS)}")

    def classify(self, reports: Sequence[Report]) -> list[Classified]:
        if not reports:
            return []
        labelled = list(self.labeler(reports, self.schema))  # read once: the model's features and the rules' say
        proba = self.model.predict_proba(reports, labelled)
        thresholds = self.model.thresholds
        out: list[Classified] = []
        for report, row, rules in zip(reports, proba, labelled, strict=True):
            by_label = {f.label: f for f in findings_of(rules)}
            findings = []
            for j, label in enumerate(self.model.classes):
                combined = combine(label, float(row[j]), by_label.get(label), float(thresholds[j]))
                if combined is not None:
                    findings.append(combined)
            # abnormal findings first, normal last: the order a reader scans
            findings.sort(key=lambda f: (f.label == NORMAL, self.model.classes.index(f.label)))
            out.append(Classified(report.uid, tuple(findings)))
        return out


class LabelerEngine(_UsesLabeler):
    """The weak labeler alone, shaped like ``RadiologyEngine`` (no model: ``probability`` is None).

    For callers that want findings without loading or training a model (the Clinical-History timeline
    when no artifact exists): every class the rules mention, abnormal first, ``normal`` last."""

    def __init__(self, schema: str = "openi", labeler: WeakLabeler | None = None) -> None:
        if schema not in SCHEMAS:
            raise ValueError(f"schema {schema!r} is not one of {sorted(SCHEMAS)}")
        self.schema = schema
        self._labeler = labeler

    def classify(self, reports: Sequence[Report]) -> list[Classified]:
        if not reports:
            return []
        return [
            Classified(report.uid, tuple(f for f in findings_of(labelled) if f.status != "absent"))
            for report, labelled in zip(reports, self.labeler(reports, self.schema), strict=True)
        ]


def findings_engine(data_dir: Path) -> RadiologyEngine | LabelerEngine:
    """The trained engine when its artifact exists (never trained here), else the labeler alone."""
    if (model_dir(data_dir) / "metadata.json").is_file():
        return default_engine(data_dir)
    return LabelerEngine()


_LOCK = threading.Lock()
_ENGINES: dict[Path, RadiologyEngine] = {}


def load_or_train(directory: Path, training_csv: Path = DEFAULT_TRAINING_CSV) -> RadiologyModel:
    """The artifact in ``directory``; trained from ``training_csv`` (weak labels) and saved if missing or stale."""
    if (directory / "metadata.json").is_file():
        try:
            return RadiologyModel.load(directory)
        except StaleArtifact:  # written by an older format: retrained below when the reports are here
            if not training_csv.is_file():
                raise
    if not training_csv.is_file():
        raise FileNotFoundError(
            f"no radiology model in {directory} and no training reports at {training_csv}; "
            "run `oncotwin radiology train --data CSV`"
        )
    model = train(training_csv)
    model.save(directory)
    return model


def default_engine(data_dir: Path) -> RadiologyEngine:
    """One engine per model folder per process, loaded (or trained) on first use."""
    directory = model_dir(data_dir)
    with _LOCK:
        engine = _ENGINES.get(directory)
        if engine is None:
            engine = _ENGINES[directory] = RadiologyEngine(load_or_train(directory))
        return engine


# ---- inputs: plain text, sections, or a FHIR DiagnosticReport -> Report ------------------------------

_HEADER = re.compile(r"(?im)^[ \t]*(findings|impression|indication|conclusion|history|clinical history)[ \t]*:[ \t]*")
_SECTION_OF = {
    "findings": "findings",
    "impression": "impression",
    "conclusion": "impression",
    "indication": "indication",
    "history": "indication",
    "clinical history": "indication",
}
MAX_TEXT_CHARS = 100_000


def report_from_text(text: str, uid: str) -> Report:
    """A plain-text report: ``FINDINGS:``/``IMPRESSION:``/``INDICATION:`` headers split it; text before
    any header (or all of it, without headers) counts as findings."""
    parts: dict[str, list[str]] = {"findings": [], "impression": [], "indication": []}
    matches = list(_HEADER.finditer(text))
    head = text[: matches[0].start()] if matches else text
    if head.strip():
        parts["findings"].append(head.strip())
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        if body:
            parts[_SECTION_OF[match.group(1).lower()]].append(body)
    return Report(uid, *(" ".join(parts[k]) for k in ("findings", "impression", "indication")))


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{where}{key} must be a string", issue_code="structure")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{where}{key} is longer than {MAX_TEXT_CHARS} characters", issue_code="too-long")
    return value


def _diagnostic_report(obj: dict[str, Any], uid: str, where: str) -> Report:
    texts: list[str] = []
    forms = obj.get("presentedForm") or []
    if not isinstance(forms, list):
        raise InvalidInput(f"{where}presentedForm must be an array", issue_code="structure")
    for k, form in enumerate(forms):
        if not isinstance(form, dict) or "data" not in form:
            continue
        content_type = str(form.get("contentType", "text/plain")).split(";")[0].strip().lower()
        if content_type not in ("text/plain", ""):
            continue
        try:
            texts.append(base64.b64decode(str(form["data"]), validate=True).decode("utf-8"))
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{where}presentedForm[{k}].data is not base64 UTF-8 text", issue_code="value") from None
    report = report_from_text("\n".join(texts), uid)
    conclusion = _string(obj, "conclusion", where)
    if conclusion:
        impression = f"{report.impression} {conclusion}".strip() if report.impression != conclusion else conclusion
        report = Report(uid, report.findings, impression, report.indication)
    if not (report.findings or report.impression):
        raise InvalidInput(
            f"{where}DiagnosticReport has no conclusion and no text/plain presentedForm", issue_code="required"
        )
    return report


def report_from_json(obj: Any, default_uid: str, where: str = "") -> Report:
    """One request item: ``{text}``, ``{findings, impression, indication}`` (each optional ``uid``), or a
    FHIR ``DiagnosticReport`` (``conclusion`` -> impression; base64 text/plain ``presentedForm``)."""
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where or 'body'} must be a JSON object", issue_code="structure")
    if obj.get("resourceType") == "DiagnosticReport":
        rid = obj.get("id")
        return _diagnostic_report(obj, rid if isinstance(rid, str) and rid else default_uid, where)
    if "resourceType" in obj:
        raise InvalidInput(f"{where}resourceType must be DiagnosticReport", issue_code="not-supported")
    uid = obj.get("uid", default_uid)
    if not isinstance(uid, str | int) or isinstance(uid, bool) or not str(uid):
        raise InvalidInput(f"{where}uid must be a non-empty string", issue_code="value")
    if "text" in obj:
        report = report_from_text(_string(obj, "text", where), str(uid))
    else:
        report = Report(str(uid), *(_string(obj, k, where) for k in ("findings", "impression", "indication")))
    if not (report.findings.strip() or report.impression.strip()):
        raise InvalidInput(f"{where}give text, or findings and/or impression", issue_code="required")
    return report
