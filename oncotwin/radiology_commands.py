"""``oncotwin radiology train|eval|classify|llm-classify``: the radiology twin's command line."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from services.radiology.schema import Report
from shared.config import load_settings
from shared.errors import ConfigError

CSV_COLUMNS = ("uid", "label", "status", "probability", "section", "start", "end", "text")


def _default_data() -> Path:
    from services.radiology.service import DEFAULT_TRAINING_CSV

    return DEFAULT_TRAINING_CSV


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    return path


def _train(args: argparse.Namespace) -> int:
    from services.radiology.service import model_dir, train

    data = _existing(Path(args.data) if args.data else _default_data(), "training reports")
    out = Path(args.out) if args.out else model_dir(load_settings().data_dir)
    model = train(data, args.schema, uncertain_positive=args.uncertain_positive)
    model.save(out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    training = model.metadata["training"]
    print(
        f"trained on {training['reports']} reports ({training['features']} features, schema {args.schema}, "
        f"weak labels only); train agreement with weak labels {training['train_agreement_with_weak_labels']:.3f}; "
        f"saved to {out} ({size / 1024:.0f} KiB)"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from services.radiology.evaluate import cross_validate, format_tables
    from services.radiology.labeler import load_gold, load_reports
    from services.radiology.service import default_labeler

    data = _existing(Path(args.data) if args.data else _default_data(), "reports")
    labels = _existing(
        Path(args.labels) if args.labels else data.with_name(data.name.replace("reports", "labels")), "human labels"
    )
    predictions = _existing(Path(args.predictions), "LLM predictions") if args.predictions else None
    reports = load_reports(data)
    try:
        comparison = cross_validate(
            reports,
            load_gold(labels),
            default_labeler(),
            args.folds,
            args.seed,
            uncertain_positive=args.uncertain_positive,
        )
        if predictions is not None:
            from services.radiology.evaluate import with_predictions
            from services.radiology.llm_path import read_predictions

            comparison = with_predictions(comparison, reports, read_predictions(predictions, comparison.classes))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"{len(reports)} reports; model trained on weak labels of the other folds, scored on held-out human labels")
    print(format_tables(comparison))
    return 0


def _read_reports(path: Path) -> list[Report]:
    from services.radiology.service import report_from_text

    text = path.read_text(encoding="utf-8")
    first = text.split("\n", 1)[0]
    if path.suffix.lower() == ".csv" or first.strip().lower().startswith("uid,"):
        rows = list(csv.DictReader(text.splitlines()))
        if rows and "uid" not in rows[0]:
            raise ConfigError(f"{path}: a CSV needs a uid column and findings and/or impression columns")
        return [
            Report(
                (row.get("uid") or str(i)).strip(),
                (row.get("findings") or "").strip(),
                (row.get("impression") or "").strip(),
                (row.get("indication") or "").strip(),
            )
            for i, row in enumerate(rows)
        ]
    return [report_from_text(text, path.stem)]


def _classify(args: argparse.Namespace) -> int:
    from services.radiology.model import RadiologyModel
    from services.radiology.service import RadiologyEngine, load_or_train, model_dir

    path = _existing(Path(args.file), "input")
    reports = _read_reports(path)
    if args.model:
        directory = Path(args.model)
        if not (directory / "metadata.json").is_file():
            raise ConfigError(f"no model artifact in {directory} (train one: oncotwin radiology train --out DIR)")
        model = RadiologyModel.load(directory)
    else:
        model = load_or_train(model_dir(load_settings().data_dir))
    results = RadiologyEngine(model).classify(reports)
    if args.format == "json":
        json.dump([r.to_json() for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in results:
        for item in result.to_json()["findings"]:
            ev = item["evidence"] or {}
            writer.writerow(
                [
                    result.uid,
                    item["label"],
                    item["status"],
                    item["probability"],
                    ev.get("section", ""),
                    ev.get("start", ""),
                    ev.get("end", ""),
                    ev.get("text", ""),
                ]
            )
    return 0


def _llm_classify(args: argparse.Namespace) -> int:

    from services.radiology.llm_path import ADAPTER_NAME, classify_with_llm, write_predictions
    from shared.llm import LLMClient

    client = LLMClient.from_settings(load_settings())
    if client is None:
        raise ConfigError("LLM_BASE_URL is not set: the LLM path needs a served model (vLLM with the adapter)")
    reports = _read_reports(_existing(Path(args.file), "input"))
    results = classify_with_llm(
        reports, client, args.schema, args.model or ADAPTER_NAME, answer_format=args.answer_format
    )
    written = write_predictions(reports, results, Path(args.out))
    print(f"{written} predictions written to {args.out} (score them: oncotwin radiology eval --predictions FILE)")
    return 0


def add_radiology_parser(sub: argparse._SubParsersAction) -> None:
    radiology = sub.add_parser("radiology", help="chest X-ray report findings: train, evaluate, classify")
    commands = radiology.add_subparsers(dest="radiology_command", required=True)

    train = commands.add_parser("train", help="train the classifier on weak labels of a reports CSV")
    train.add_argument("--data", help="reports CSV (uid, findings, impression...); default the Open-i dev reports")
    train.add_argument("--out", help="artifact folder; default $ONCOTWIN_DATA_DIR/models/radiology")
    train.add_argument("--schema", choices=["openi", "chexpert"], default="openi")
    train.add_argument(
        "--uncertain-positive",
        action="store_true",
        default=None,
        help="uncertain weak labels count as present (default: schema.UNCERTAIN_POSITIVE, U-Zeros)",
    )
    train.set_defaults(func=_train)

    ev = commands.add_parser("eval", help="weak labeler vs cross-validated model, scored on human labels")
    ev.add_argument("--data", help="reports CSV; default the Open-i dev reports")
    ev.add_argument("--labels", help="human labels CSV; default the reports file's *labels* sibling")
    ev.add_argument("--folds", type=int, default=5)
    ev.add_argument("--seed", type=int, default=13)
    ev.add_argument(
        "--uncertain-positive",
        action="store_true",
        default=None,
        help="uncertain weak labels count as present (default: schema.UNCERTAIN_POSITIVE, U-Zeros)",
    )
    ev.add_argument(
        "--predictions",
        help="also score the LLM path's answers: JSONL (llm_path.write_predictions: "
        "uid + labels, or uid + answer) or CSV (uid + labels/answer/per-class 0/1 columns)",
    )
    ev.set_defaults(func=_eval)

    cl = commands.add_parser("classify", help="findings of reports in a CSV (uid, findings, impression) or a text file")
    cl.add_argument("file", help="a CSV with uid + findings/impression[/indication] columns, or a plain-text report")
    cl.add_argument("--model", help="artifact folder; default $ONCOTWIN_DATA_DIR/models/radiology (trained if missing)")
    cl.add_argument("--format", choices=["json", "csv"], default="json")
    cl.set_defaults(func=_classify)

    llm = commands.add_parser("llm-classify", help="the LLM path's answers for reports, as a predictions file")
    llm.add_argument("file", help="a CSV with uid + findings/impression columns, or a plain-text report")
    llm.add_argument("--out", required=True, help="predictions JSONL (uid, labels) for eval --predictions")
    llm.add_argument("--schema", choices=["openi", "chexpert"], default="openi")
    llm.add_argument("--model", help="served model name (default: the LoRA adapter's, radiology-findings)")
    llm.add_argument("--answer-format", choices=["json", "list"], default="json")
    llm.set_defaults(func=_llm_classify)
