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

The default model artifact lives in ``$ONCOTWIN_DATA_DIR/models/radiology``; ``oncotwin radiology
train`` writes it, or the warm-up at start trains it from the development reports (weak labels only,
25-70 s on CPU) when it is missing or was written by an older format. Nothing is ever downloaded.

Warm start: a request never trains, and the first one after start is as fast as the rest.
:func:`start_warm_up` (``oncotwin up`` calls it in the web worker as it starts) loads or trains the
model in a background thread and reads one report, so the labeler's rules and spaCy are loaded too;
until it is done :func:`is_warm` is False (``/ready`` answers 503) and :func:`default_engine`, the
request path, raises :class:`WarmingUp` (503). A process that never started a warm-up (an app factory
that does not call it) loads an artifact made beforehand on first use (no training: the deployments
mount one), and otherwise starts the warm-up in the background and answers 503 meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from shared.errors import InvalidInput, OncoTwinError, check_deadline

log = logging.getLogger(__name__)

CHUNK = 32  # reports read between two deadline checks (``shared.errors.check_deadline``)
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
        """Findings per report, read ``CHUNK`` reports at a time with a deadline check before each."""
        out: list[Classified] = []
        for start in range(0, len(reports), CHUNK):
            check_deadline()
            out.extend(self._classify(reports[start : start + CHUNK]))
        return out

    def _classify(self, reports: Sequence[Report]) -> list[Classified]:
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
        out: list[Classified] = []
        for start in range(0, len(reports), CHUNK):
            check_deadline()
            chunk = reports[start : start + CHUNK]
            out.extend(
                Classified(report.uid, tuple(f for f in findings_of(labelled) if f.status != "absent"))
                for report, labelled in zip(chunk, self.labeler(chunk, self.schema), strict=True)
            )
        return out


def findings_engine(data_dir: Path) -> RadiologyEngine | LabelerEngine:
    """The trained engine when its artifact exists and is current (never trained here), else the
    labeler alone."""
    try:
        engine = _loaded(model_dir(data_dir))
    except StaleArtifact:  # retrained by the web process's warm-up (or `oncotwin radiology train`)
        engine = None
    return engine if engine is not None else LabelerEngine()


_LOCK = threading.Lock()
_ENGINES: dict[Path, RadiologyEngine] = {}
WARM_UP_REPORT = Report("warm-up", "Heart size is normal. No pleural effusion.", "No acute disease.", "")


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


class WarmingUp(OncoTwinError):
    """The model is not loaded yet (503): the warm-up at start is loading or training it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, [], 503, "transient")


@dataclass
class WarmUp:
    """One background load-or-train of a model folder, and how it went."""

    directory: Path
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    seconds: float | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """True once the engine is loaded (False: still running, or it failed: see ``error``)."""
        return self.done.wait(timeout) and self.error is None


_WARM_UPS: dict[Path, WarmUp] = {}


def warm_up(data_dir: Path, training_csv: Path | None = None) -> RadiologyEngine:
    """Load (or train from ``training_csv``, default the dev reports, when missing or stale) the model
    of ``data_dir`` and classify one report, so that nothing is left to load on the first request;
    the engine then serves this process."""
    directory = model_dir(data_dir)
    engine = RadiologyEngine(load_or_train(directory, training_csv or DEFAULT_TRAINING_CSV))
    engine.classify([WARM_UP_REPORT])  # imports spaCy and builds the rule labeler (about 2 s)
    with _LOCK:
        return _ENGINES.setdefault(directory, engine)


def start_warm_up(data_dir: Path, training_csv: Path | None = None) -> WarmUp:
    """:func:`warm_up` in a background thread, once per model folder per process (a running or
    finished one is returned as it is; one that failed is started again)."""
    directory = model_dir(data_dir)
    with _LOCK:
        current = _WARM_UPS.get(directory)
        if current is not None and current.error is None:
            return current
        state = _WARM_UPS[directory] = WarmUp(directory)
        if directory in _ENGINES:  # already loaded in this process
            state.seconds = 0.0
            state.done.set()
            return state

    def run() -> None:
        try:
            warm_up(data_dir, training_csv)
        except Exception as exc:  # the state says why; requests answer 503 with it
            state.error = f"{type(exc).__name__}: {exc}"
            log.exception("radiology model warm-up failed")
        else:
            log.info("radiology model ready in %.1f s", time.monotonic() - state.started)
        state.seconds = time.monotonic() - state.started
        state.done.set()

    threading.Thread(target=run, name="radiology-warm-up", daemon=True).start()
    return state


def is_warm(data_dir: Path) -> bool:
    """True once this process's engine for ``data_dir`` is loaded (readiness)."""
    return model_dir(data_dir) in _ENGINES


def _loaded(directory: Path) -> RadiologyEngine | None:
    """The engine of ``directory``, loading a current artifact if need be (never training); None
    when there is none. Raises :class:`StaleArtifact` for an older format."""
    with _LOCK:
        engine = _ENGINES.get(directory)
        if engine is None and (directory / "metadata.json").is_file():
            engine = _ENGINES[directory] = RadiologyEngine(RadiologyModel.load(directory))
        return engine


def default_engine(data_dir: Path) -> RadiologyEngine:
    """The request path: this process's engine for ``data_dir``. Never trains.

    Loaded (by the warm-up, or earlier): returned. A warm-up running or failed: :class:`WarmingUp`
    (503). No warm-up in this process: a current artifact is loaded (made beforehand, e.g. mounted);
    without one the warm-up is started in the background, and :class:`WarmingUp` meanwhile."""
    directory = model_dir(data_dir)
    with _LOCK:
        engine = _ENGINES.get(directory)
        state = _WARM_UPS.get(directory)
    if engine is not None:
        return engine
    if state is None:
        try:
            engine = _loaded(directory)
        except StaleArtifact:
            engine = None
        if engine is not None:
            return engine
        state = start_warm_up(data_dir)
    if state.error is not None:
        raise WarmingUp(
            "the radiology model could not be loaded or trained; run `oncotwin radiology train`, then restart"
        )
    raise WarmingUp("the radiology model is loading (trained at start when missing); retry shortly")


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
MAX_TEXT_CHARS = 100_000  # per text field, and for the text of a report's presentedForm together


def report_chars(report: Report) -> int:
    """The report text a batch counts against ``RADIOLOGY_MAX_BATCH_CHARS``."""
    return len(report.findings) + len(report.impression) + len(report.indication)


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


def _too_long(what: str) -> InvalidInput:
    return InvalidInput(f"{what} is longer than {MAX_TEXT_CHARS} characters", issue_code="too-long")


def _not_text(where: str, k: int) -> InvalidInput:
    return InvalidInput(f"{where}presentedForm[{k}].data is not base64 UTF-8 text", issue_code="value")


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{where}{key} must be a string", issue_code="structure")
    if len(value) > MAX_TEXT_CHARS:
        raise _too_long(f"{where}{key}")
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
        data = form["data"]
        # base64 of at most MAX_TEXT_CHARS characters of UTF-8 text (4 bytes each at most)
        if not isinstance(data, str) or len(data) > (MAX_TEXT_CHARS * 4 // 3 + 4) * 4:
            raise _too_long(f"{where}presentedForm[{k}].data") if isinstance(data, str) else _not_text(where, k)
        try:
            texts.append(base64.b64decode(data, validate=True).decode("utf-8"))
        except (binascii.Error, ValueError):
            raise _not_text(where, k) from None
        if sum(map(len, texts)) > MAX_TEXT_CHARS:
            raise _too_long(f"{where}presentedForm text")
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
