"""The radiology classifier: training on weak labels, the artifact, cross-validation, metrics, CLI."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from oncotwin.cli import main
from services.radiology import evaluate, service
from services.radiology.evaluate import kfold, score
from services.radiology.model import (
    RadiologyModel,
    StaleArtifact,
    TrainConfig,
    features,
    fit,
    sha256_file,
    train_from_reports,
    weak_matrix,
    weak_targets,
)
from services.radiology.schema import NORMAL, OPENI, Finding, Report, Span

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "radiology"
REPORTS = DEV / "openi_reports_dev.csv"
requires_dev = pytest.mark.skipif(not REPORTS.is_file(), reason=f"radiology dev data {REPORTS} not present")

KEYWORDS = {"Cardiomegaly": "cardiomegaly", "Effusion": "effusion", "Pneumothorax": "pneumothorax"}


def stand_in(reports: Sequence[Report], schema: str = "openi") -> list[list[Finding]]:
    """A trivial weak labeler: keyword present -> positive, after 'no' in the sentence -> negative."""
    out = []
    for report in reports:
        findings = []
        for label, word in KEYWORDS.items():
            status = "absent"
            for sentence in report.findings.lower().split("."):
                if word in sentence:
                    status = "negative" if sentence.strip().startswith("no ") else "positive"
            if status != "absent":
                at = report.findings.lower().find(word)
                findings.append(Finding(label, status, None, Span("findings", at, at + len(word), word)))  # type: ignore[arg-type]
        out.append(findings)
    return out


def toy_reports(n: int = 60) -> list[Report]:
    texts = [
        "Heart size is enlarged, cardiomegaly. Lungs are clear.",
        "No cardiomegaly. Lungs are clear.",
        "Small right effusion. Heart normal.",
        "No effusion. No pneumothorax. Normal chest.",
        "Large left pneumothorax. Heart normal.",
        "Cardiomegaly and bilateral effusion.",
    ]
    return [Report(str(i), texts[i % len(texts)]) for i in range(n)]


def test_features_scope_negation_to_the_clause() -> None:
    feats = features(Report("1", "No effusion but cardiomegaly."))
    assert "neg_effusion" in feats and "effusion" not in feats
    assert "cardiomegaly" in feats and "neg_cardiomegaly" not in feats


def test_weak_targets_policy() -> None:
    classes = (*OPENI, NORMAL)
    findings = [Finding("Effusion", "positive"), Finding("Edema", "uncertain"), Finding("Mass", "negative")]
    zeros = weak_targets(findings, classes)
    ones = weak_targets(findings, classes, uncertain_positive=True)
    assert zeros[classes.index("Effusion")] == 1 and zeros[classes.index("Edema")] == 0
    assert ones[classes.index("Edema")] == 1 and ones[classes.index("Mass")] == 0
    assert zeros[classes.index(NORMAL)] == 0  # something abnormal was said, so not normal
    assert weak_targets([Finding("Mass", "negative")], classes)[classes.index(NORMAL)] == 1
    assert weak_targets([Finding(NORMAL, "negative")], classes)[classes.index(NORMAL)] == 0  # labeler's word wins


def test_model_learns_the_weak_labels_and_round_trips(tmp_path: Path) -> None:
    reports = toy_reports()
    model = train_from_reports(
        reports,
        stand_in,
        config=TrainConfig(epochs=80, min_df=1),
        metadata={"weak_labels": {"source": "stand_in", "rules_version": "t1"}},
    )
    probe = [Report("a", "Cardiomegaly is present."), Report("b", "No cardiomegaly.")]
    proba = model.predict_proba(probe)
    j = model.classes.index("Cardiomegaly")
    assert proba[0, j] > 0.5 > proba[1, j]

    folder = model.save(tmp_path / "artifact")
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["schema"] == "openi" and meta["classes"][-1] == NORMAL and len(meta["classes"]) == 14
    assert meta["weak_labels"] == {"source": "stand_in", "rules_version": "t1"}
    assert meta["training"]["reports"] == 60 and "created" in meta and meta["thresholds"]["Cardiomegaly"] == 0.5
    loaded = RadiologyModel.load(folder)
    assert loaded.classes == model.classes and loaded.vocab == model.vocab
    np.testing.assert_array_equal(loaded.thresholds, model.thresholds)
    np.testing.assert_allclose(loaded.predict_proba(probe), proba, rtol=1e-6)


def test_load_rejects_a_mismatched_artifact(tmp_path: Path) -> None:
    model = train_from_reports(toy_reports(12), stand_in, config=TrainConfig(epochs=5, min_df=1))
    folder = model.save(tmp_path / "m")
    np.save(folder / "bias.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="do not match"):
        RadiologyModel.load(folder)


def test_features_from_the_labelers_reading() -> None:
    from services.radiology.labeler import weak_read_many

    report = Report("1", "No pneumothorax. May represent atelectasis.", "Small left effusion.")
    (reading,) = weak_read_many([report])
    feats = features(report, reading)
    assert "neg_pneumothorax" in feats and "pneumothorax" not in feats  # the labeler's ConText scope
    assert "unc_atelectasis" in feats and "i:effusion" in feats and "f:neg_pneumothorax" in feats
    assert {"@Pneumothorax=negative", "@Atelectasis=uncertain", "@Effusion=positive:i"} <= set(feats)
    assert not any(f.startswith("@Mass") for f in feats)  # absent classes give no evidence feature


def test_evidence_features_are_kept_and_lightly_penalised() -> None:
    reports = toy_reports()
    labelled = stand_in(reports)
    targets = weak_matrix(labelled, (*OPENI, NORMAL))
    config = TrainConfig(epochs=60, min_df=1000)  # every word dropped: only the evidence is left
    model = fit(reports, targets, (*OPENI, NORMAL), labelled, config)
    assert model.vocab and all(f.startswith("@") for f in model.vocab)
    j = model.classes.index("Effusion")
    proba = model.predict_proba(reports[:6], labelled[:6])[:, j]
    assert proba[2] > 0.5 > proba[3]  # "Small right effusion" vs "No effusion": the evidence decides


def test_inner_cv_thresholds_come_from_weak_labels_only() -> None:
    reports = toy_reports(60)
    model = train_from_reports(reports, stand_in, config=TrainConfig(epochs=40, min_df=1, inner_folds=3))
    j = model.classes.index("Cardiomegaly")
    assert model.thresholds.shape == (len(model.classes),)
    assert 0.05 <= model.thresholds[j] <= 0.95 and round(float(model.thresholds[j]) * 20) == model.thresholds[j] * 20
    assert model.thresholds[model.classes.index("Mass")] == 0.5  # no weak positive: the fallback threshold
    assert model.metadata["training"]["config"]["inner_folds"] == 3


def test_an_older_artifact_is_stale_and_retrained(tmp_path: Path) -> None:
    folder = train_from_reports(toy_reports(12), stand_in, config=TrainConfig(epochs=5, min_df=1)).save(tmp_path / "m")
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(StaleArtifact):
        RadiologyModel.load(folder)
    with pytest.raises(StaleArtifact):  # no reports to retrain from: the error stands
        service.load_or_train(folder, tmp_path / "missing.csv")


def test_kfold_is_disjoint_covering_and_seeded() -> None:
    folds = kfold(103, 5, seed=7)
    assert len(folds) == 5
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(103))  # every report once: disjoint and covering
    assert all(20 <= len(f) <= 21 for f in folds)
    assert all((a == b).all() for a, b in zip(folds, kfold(103, 5, seed=7), strict=True))
    assert any((a != b).any() for a, b in zip(folds, kfold(103, 5, seed=8), strict=True))
    with pytest.raises(ValueError):
        kfold(10, 1)


def test_score_arithmetic_on_a_hand_made_example() -> None:
    classes = ("A", "B", "C")
    gold = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    pred = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0]], dtype=np.float32)
    s = score(gold, pred, classes)
    a, b, c = s.per_class
    assert (a.tp, a.fp, a.fn) == (1, 1, 1) and a.precision == a.recall == a.f1 == 0.5
    assert (b.tp, b.fp, b.fn) == (2, 1, 0) and b.precision == pytest.approx(2 / 3) and b.recall == 1.0
    assert b.f1 == pytest.approx(0.8)
    assert (c.tp, c.fp, c.fn) == (0, 1, 1) and c.f1 == 0.0
    assert s.micro_precision == pytest.approx(3 / 6) and s.micro_recall == pytest.approx(3 / 5)
    assert s.micro_f1 == pytest.approx(2 * 0.5 * 0.6 / 1.1)
    assert s.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    only_b = score(gold, pred, classes, ("B",))
    assert only_b.micro_f1 == pytest.approx(0.8) and len(only_b.per_class) == 1


def test_cross_validation_never_scores_a_training_report(monkeypatch: pytest.MonkeyPatch) -> None:
    reports = toy_reports(30)
    seen: list[set[str]] = []
    real_fit = evaluate.fit

    def spy_fit(train: Sequence[Report], *args: object, **kwargs: object) -> RadiologyModel:
        seen.append({r.uid for r in train})
        return real_fit(train, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluate, "fit", spy_fit)
    scored: list[set[str]] = []
    real_predict = RadiologyModel.predict_proba

    def spy_predict(self: RadiologyModel, batch: Sequence[Report], *args: object) -> np.ndarray:
        scored.append({r.uid for r in batch})
        return real_predict(self, batch, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(RadiologyModel, "predict_proba", spy_predict)
    gold = {r.uid: {"Cardiomegaly": int("ardiomegaly" in r.findings and "No" not in r.findings)} for r in reports}
    config = TrainConfig(epochs=20, min_df=1, inner_folds=0)  # inner CV scores training reports only, by design
    comparison = evaluate.cross_validate(reports, gold, stand_in, folds=3, config=config)
    assert len(seen) == len(scored) == 3
    for train_ids, test_ids in zip(seen, scored, strict=True):
        assert not train_ids & test_ids
    assert set().union(*scored) == {r.uid for r in reports}
    assert comparison.model.shape == comparison.gold.shape == (30, 14)


def test_combination_rule() -> None:
    ev = Span("findings", 0, 3, "abc")
    assert service.combine("Mass", 0.9, Finding("Mass", "uncertain", None, ev)).status == "uncertain"  # type: ignore[union-attr]
    assert service.combine("Mass", 0.9, Finding("Mass", "negative", None, ev)).status == "uncertain"  # type: ignore[union-attr]
    found = service.combine("Mass", 0.9, None)
    assert found is not None and found.status == "positive" and found.evidence is None and found.probability == 0.9
    assert service.combine("Mass", 0.1, Finding("Mass", "positive", None, ev)).status == "uncertain"  # type: ignore[union-attr]
    negative = service.combine("Mass", 0.1, Finding("Mass", "negative", None, ev))
    assert negative is not None and negative.status == "negative" and negative.evidence == ev
    assert service.combine("Mass", 0.1, Finding("Mass", "absent")) is None
    assert service.combine("Mass", 0.35, None, threshold=0.3) is not None  # the model's threshold decides
    assert service.combine("Mass", 0.35, None, threshold=0.5) is None


def test_report_from_text_splits_sections() -> None:
    report = service.report_from_text("INDICATION: cough\nFINDINGS: Small effusion.\nIMPRESSION: Effusion.", "u")
    assert (report.indication, report.findings, report.impression) == ("cough", "Small effusion.", "Effusion.")
    assert service.report_from_text("Heart is enlarged.", "u").findings == "Heart is enlarged."


# ---- on the development data -------------------------------------------------------------------


def _slice(tmp_path: Path, n: int) -> tuple[Path, Path]:
    with REPORTS.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    reports = tmp_path / "slice_reports.csv"
    with reports.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    uids = {r["uid"] for r in rows}
    with (DEV / "openi_labels_dev.csv").open(encoding="utf-8", newline="") as f:
        labels = [r for r in csv.DictReader(f) if r["uid"] in uids]
    gold = tmp_path / "slice_labels.csv"
    with gold.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(labels[0]))
        writer.writeheader()
        writer.writerows(labels)
    return reports, gold


@requires_dev
def test_train_reads_no_human_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.radiology import labeler

    data, gold = _slice(tmp_path, 150)
    gold.unlink()  # the labels file is absent ...

    def forbidden(*_args: object) -> None:
        raise AssertionError("train read human labels")

    monkeypatch.setattr(labeler, "load_gold", forbidden)  # ... and reading any would fail
    model = service.train(data)
    assert model.metadata["training_data"]["sha256"] == sha256_file(data)
    assert model.metadata["weak_labels"]["rules_version"] == service.rules_version()
    assert model.metadata["training"]["reports"] == 150


@requires_dev
def test_cli_train_eval_classify_on_a_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, gold = _slice(tmp_path, 200)
    out = tmp_path / "model"
    hidden = tmp_path / "elsewhere.csv"
    gold.rename(hidden)  # train runs with no labels file anywhere near its data
    assert main(["radiology", "train", "--data", str(data), "--out", str(out)]) == 0
    assert "trained on 200 reports" in capsys.readouterr().out
    assert json.loads((out / "metadata.json").read_text())["training_data"]["sha256"] == sha256_file(data)

    assert main(["radiology", "eval", "--data", str(data), "--labels", str(hidden), "--folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "ChestX-ray8 (8 classes)" in printed and "Open-i (13 classes + normal)" in printed
    assert sum(line.startswith("micro ") for line in printed.splitlines()) == 2 and "Pleural_Thickening" in printed
    assert printed.count("micro-F1 model - weak: ") == 2  # the exact difference, to 4 places, per table

    assert main(["radiology", "classify", str(data), "--model", str(out)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 200 and results[1]["uid"] == "2"
    cardio = [f for f in results[1]["findings"] if f["label"] == "Cardiomegaly"]  # "Borderline cardiomegaly."
    assert cardio and cardio[0]["status"] in ("positive", "uncertain") and cardio[0]["evidence"]["text"]

    text = tmp_path / "report.txt"
    text.write_text("FINDINGS: Large right pneumothorax.\nIMPRESSION: Right pneumothorax.\n")
    assert main(["radiology", "classify", str(text), "--model", str(out), "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert {r["uid"] for r in rows} == {"report"}
    assert any(r["label"] == "Pneumothorax" and r["status"] in ("positive", "uncertain") for r in rows)

    assert main(["radiology", "classify", str(text), "--model", str(tmp_path / "none")]) == 78


@requires_dev
def test_default_model_is_trained_once_then_loaded(tmp_path: Path) -> None:
    data, _ = _slice(tmp_path, 80)
    folder = tmp_path / "models" / "radiology"
    first = service.load_or_train(folder, data)
    assert (folder / "metadata.json").is_file()
    again = service.load_or_train(folder, tmp_path / "missing.csv")  # loaded: the CSV is not needed now
    assert again.vocab == first.vocab
    with pytest.raises(FileNotFoundError):
        service.load_or_train(tmp_path / "empty", tmp_path / "missing.csv")
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "format_version": 1}))
    service.load_or_train(folder, data)  # an older format with the reports at hand: retrained and replaced
    assert json.loads((folder / "metadata.json").read_text())["format_version"] == 2
