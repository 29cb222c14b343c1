"""Weak labeler of the radiology twin: ConText cues on sentences from Open-i reports, and a floor on dev."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.radiology.labeler import binary, load_gold, load_reports, score, weak_label, weak_label_many
from services.radiology.schema import CHESTXRAY8, CHEXPERT, NORMAL, OPENI, Report

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "radiology"
REPORTS = DATA / "openi_reports_dev.csv"
LABELS = DATA / "openi_labels_dev.csv"

# Sentences taken from the Open-i development reports (findings section).
CASES = [
    ("There are no XXXX of a pleural effusion.", "Effusion", "negative"),
    ("Borderline cardiomegaly.", "Cardiomegaly", "positive"),
    ("Cannot exclude early infiltrate.", "Infiltration", "uncertain"),
    ("No change in the small left pleural effusion.", "Effusion", "positive"),
    ("Interval resolved pneumothorax.", "Pneumothorax", "negative"),
    ("The right pneumothorax has resolved.", "Pneumothorax", "negative"),
    ("There is no evidence of pneumothorax.", "Pneumothorax", "negative"),
    ("No displaced rib fractures, pneumothorax, or pleural effusion identified.", "Effusion", "negative"),
    ("Bibasilar opacities may represent atelectasis.", "Atelectasis", "uncertain"),
    ("Right lower lobe opacity suggestive of pneumonia.", "Pneumonia", "uncertain"),
    ("Blunting of the right costophrenic angle.", "Effusion", "positive"),
    ("The heart is enlarged.", "Cardiomegaly", "positive"),
    ("The heart is not enlarged.", "Cardiomegaly", "absent"),
    ("Stable chronic left basilar atelectasis.", "Atelectasis", "positive"),
    ("No focal consolidation but there is a small left effusion.", "Effusion", "positive"),
    ("No focal consolidation but there is a small left effusion.", "Consolidation", "negative"),
    ("Lungs are clear without focal consolidation, pneumothorax or pleural effusion.", "Pneumothorax", "negative"),
    ("Questionable small nodule in the right upper lobe.", "Nodule", "uncertain"),
    # "A versus B" names a differential the Open-i labels file as present; a hedge before it still hedges
    ("Atelectasis versus scarring in the left base.", "Atelectasis", "positive"),
    (
        "There is mild right basilar airspace disease which may represent atelectasis versus infiltrate.",
        "Infiltration",
        "uncertain",
    ),
    ("Lateral view somewhat limited however small bilateral pleural effusions suspected.", "Effusion", "uncertain"),
    ("Suspected mild patchy right upper lobe pneumonia.", "Pneumonia", "uncertain"),
    ("This does not look like an acute infiltrate, and more XXXX represents a granuloma.", "Infiltration", "negative"),
    ("Considerations would include pericardial effusion or dilated cardiomyopathy.", "Effusion", "uncertain"),
    ("Probable right lower lobe pneumonia.", "Pneumonia", "positive"),
    # a hedge ending in a terminating literal ("compatible with") still reaches the finding
    (
        "XXXX opacities in the left base may be compatible with scarring or subsegmental atelectasis.",
        "Atelectasis",
        "uncertain",
    ),
    ("Question small right pleural effusion versus pleural thickening.", "Effusion", "uncertain"),
    # the adjective "nodular" describes an opacity, not a Nodule; the noun is a Nodule
    ("Nodular density overlying the anterior left 4th rib.", "Nodule", "absent"),
    ("No masses or suspicious nodules.", "Nodule", "negative"),
    ("Heart size remains slightly large.", "Cardiomegaly", "positive"),
    ("Considering technical factors heart size XXXX mildly enlarged.", "Cardiomegaly", "positive"),
    ("The heart is borderline in size.", "Cardiomegaly", "positive"),
    ("There is an marked interval increase in heart size.", "Cardiomegaly", "positive"),
    ("Heart size is normal.", "Cardiomegaly", "absent"),
    ("Lungs are free of focal airspace disease, pneumothorax or effusion.", "Effusion", "negative"),
    ("There is a 1 cm nodule in the right upper lobe.", "Nodule", "positive"),
    ("Emphysematous changes are again noted.", "Emphysema", "positive"),
]


def status_of(text: str, label: str, schema: str = "openi") -> str:
    findings = {f.label: f for f in weak_label(Report(uid="t", findings=text), schema)}
    return findings[label].status


@pytest.mark.parametrize(("text", "label", "status"), CASES)
def test_context_on_report_sentences(text: str, label: str, status: str) -> None:
    assert status_of(text, label) == status


def test_one_finding_per_class_plus_normal_with_evidence() -> None:
    report = Report(uid="1", findings="Borderline cardiomegaly. Clear lungs.", impression="No acute findings.")
    findings = weak_label(report)
    assert [f.label for f in findings] == [*OPENI, NORMAL]
    card = findings[OPENI.index("Cardiomegaly")]
    assert card.evidence is not None and card.evidence.section == "findings"
    assert report.findings[card.evidence.start : card.evidence.end] == card.evidence.text
    assert findings[-1].status == "negative"


def test_normal_report_is_normal() -> None:
    report = Report(
        uid="1", findings="The heart is normal in size. No pneumothorax or effusion.", impression="Normal chest"
    )
    findings = {f.label: f for f in weak_label(report)}
    assert findings[NORMAL].status == "positive"
    assert findings["Effusion"].status == "negative"
    assert findings["Atelectasis"].status == "absent"


def test_nodular_opacity_is_abnormal_but_not_a_nodule() -> None:
    findings = {f.label: f.status for f in weak_label(Report(uid="1", findings="Nodular opacity in the left base."))}
    assert findings["Nodule"] == "absent" and findings[NORMAL] == "negative"


def test_uncertain_policy_is_one_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.radiology import schema
    from services.radiology.llm_path import positive_labels
    from services.radiology.model import weak_targets

    findings = weak_label(Report(uid="1", findings="May represent atelectasis. Small left effusion."))
    classes = (*OPENI, NORMAL)
    atelectasis = classes.index("Atelectasis")
    assert binary(findings)["Atelectasis"] == 0 and weak_targets(findings, classes)[atelectasis] == 0
    assert positive_labels(findings) == {"Effusion"}
    monkeypatch.setattr(schema, "UNCERTAIN_POSITIVE", True)  # U-Ones for labeler scoring, trainer and export
    assert binary(findings)["Atelectasis"] == 1 and weak_targets(findings, classes)[atelectasis] == 1
    assert positive_labels(findings) == {"Effusion", "Atelectasis"}
    assert binary(findings, uncertain_positive=False)["Atelectasis"] == 0  # an explicit choice still wins


def test_indication_is_never_a_positive_source() -> None:
    report = Report(uid="1", indication="Pneumonia?", findings="The lungs are clear.")
    assert {f.label: f.status for f in weak_label(report)}["Pneumonia"] == "absent"


def test_chexpert_schema() -> None:
    report = Report(uid="1", findings="Right PICC line in place. Left lower lobe opacity. No pneumothorax.")
    findings = {f.label: f.status for f in weak_label(report, "chexpert")}
    assert list(findings) == [*CHEXPERT, NORMAL]
    assert findings["Support Devices"] == "positive"
    assert findings["Lung Opacity"] == "positive"
    assert findings["Pneumothorax"] == "negative"


def test_unknown_schema_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown schema"):
        weak_label(Report(uid="1", findings="x"), "nope")


@pytest.mark.slow
@pytest.mark.skipif(not REPORTS.exists(), reason="shared Open-i data not present")
def test_dev_set_micro_f1_floor() -> None:
    reports = load_reports(REPORTS)
    gold = load_gold(LABELS)
    predicted = {r.uid: binary(f) for r, f in zip(reports, weak_label_many(reports), strict=True)}
    eight = score(predicted, gold, CHESTXRAY8)
    assert eight["micro"]["f1"] >= 0.93  # measured 0.945
    everything = score(predicted, gold, (*OPENI, NORMAL))
    assert everything["micro"]["f1"] >= 0.90  # measured 0.914
