"""``oncotwin radiology eval --predictions``: the LLM path's answers scored next to the labeler and the model.

The fixture (``tests/fixtures/radiology_eval``) is nine constructed reports with hand-set labels and an LLM
answer file in both accepted forms; uid 9 has no answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oncotwin.cli import main
from services.radiology import evaluate
from services.radiology.labeler import load_gold, load_reports
from services.radiology.llm_path import read_predictions, write_predictions
from services.radiology.model import TrainConfig
from services.radiology.schema import CHESTXRAY8, NORMAL, OPENI, Finding, Report
from services.radiology.service import default_labeler

FIXTURE = Path(__file__).parent / "fixtures" / "radiology_eval"
CLASSES = (*OPENI, NORMAL)


@pytest.mark.parametrize("name", ["llm_predictions.jsonl", "llm_predictions.csv"])
def test_read_predictions_in_both_forms(name: str) -> None:
    predictions = read_predictions(FIXTURE / name, CLASSES)
    assert set(predictions) == {str(i) for i in range(1, 9)}
    assert predictions["4"] == {"Pneumothorax"}  # a JSON answer (jsonl) or a list answer (csv)
    assert predictions["5"] == {"Nodule", "Mass"}
    assert predictions["1"] == {NORMAL} and predictions["7"] == set()


def test_read_predictions_per_class_columns_and_errors(tmp_path: Path) -> None:
    columns = tmp_path / "p.csv"
    columns.write_text("uid,Mass,Nodule\na,1,0\nb,0,0\n")
    assert read_predictions(columns, CLASSES) == {"a": {"Mass"}, "b": set()}
    for body, message in [
        ('{"uid": "a", "labels": ["Masses"]}\n', "unknown class"),
        ('{"uid": "a", "labels": []}\n{"uid": "a", "labels": []}\n', "repeated"),
        ('{"labels": []}\n', "no uid"),
        ("[1]\n", "not a JSON object"),
        ("{oops\n", "not JSON"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(body)
        with pytest.raises(ValueError, match=message):
            read_predictions(bad, CLASSES)


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    reports = [Report("x", "a"), Report("y", "b")]
    out = tmp_path / "preds.jsonl"
    write_predictions(reports, [[Finding("Mass", "positive")], [Finding(NORMAL, "positive")]], out)
    assert read_predictions(out, CLASSES) == {"x": {"Mass"}, "y": {NORMAL}}
    with pytest.raises(ValueError, match="results"):
        write_predictions(reports, [[]], out)


def test_with_predictions_scores_a_third_system() -> None:
    reports = load_reports(FIXTURE / "reports.csv")
    comparison = evaluate.cross_validate(
        reports, load_gold(FIXTURE / "labels.csv"), default_labeler(), folds=3, config=TrainConfig(epochs=10, min_df=1)
    )
    scored = evaluate.with_predictions(
        comparison, reports, read_predictions(FIXTURE / "llm_predictions.jsonl", CLASSES)
    )
    assert scored.llm is not None and scored.llm_missing == 1
    normal = CLASSES.index(NORMAL)
    assert scored.llm[0, normal] == 1 and scored.llm[6, normal] == 1  # "normal", and an answer naming nothing
    assert scored.llm[8, normal] == 0 and not scored.llm[8].any()  # uid 9: no answer, so nothing at all
    eight = scored.llm_table(CHESTXRAY8)
    assert eight is not None
    per = {c.label: c for c in eight.per_class}
    assert (per["Mass"].tp, per["Mass"].fp, per["Mass"].fn) == (0, 1, 1)
    assert (per["Effusion"].tp, per["Effusion"].fn) == (1, 1)
    assert eight.micro_precision == pytest.approx(7 / 8) and eight.micro_recall == pytest.approx(7 / 9)
    assert np.array_equal(scored.model, comparison.model)  # the other systems are untouched
    table = evaluate.format_tables(scored)
    assert "LLM P" in table and "1 report(s) have no LLM prediction" in table


def test_cli_eval_with_predictions(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = [
        "radiology",
        "eval",
        "--data",
        str(FIXTURE / "reports.csv"),
        "--labels",
        str(FIXTURE / "labels.csv"),
        "--folds",
        "3",
    ]
    assert main([*args, "--predictions", str(FIXTURE / "llm_predictions.csv")]) == 0
    printed = capsys.readouterr().out
    micro_rows = [line for line in printed.splitlines() if line.startswith("micro ")]
    assert len(micro_rows) == 2 and all(line.count("|") == 3 for line in micro_rows)  # weak | model | LLM
    assert micro_rows[0].split("|")[3].split() == ["0.875", "0.778", "0.824"]  # 8 classes: P 7/8, R 7/9
    assert main(args) == 0
    assert "LLM" not in capsys.readouterr().out
    assert main([*args, "--predictions", str(tmp_path / "missing.jsonl")]) == 78
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"uid": "1", "labels": ["Hernia"]}\n')
    assert main([*args, "--predictions", str(bad)]) == 78


def test_cli_llm_classify_needs_a_served_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LLM_BASE_URL", raising=False)
    out = tmp_path / "preds.jsonl"
    assert main(["radiology", "llm-classify", str(FIXTURE / "reports.csv"), "--out", str(out)]) == 78
    assert "LLM_BASE_URL" in capsys.readouterr().err and not out.exists()
