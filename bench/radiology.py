"""Benchmark: the radiology twin's ``classify`` (trained model + weak labeler), in process.

Throughput in reports/second (goal: >= 500/s) over the Open-i development reports, in batches of
``--batch`` (the API's batch form) and one report per call (the API's single form), after one warm-up
pass; plus the model artifact's size on disk and the time to train it. The model is trained from the
development reports (weak labels only) into a temporary folder unless ``--model DIR`` names one.

Prints figures only; no assertions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.radiology.labeler import load_reports  # noqa: E402
from services.radiology.model import RadiologyModel  # noqa: E402
from services.radiology.service import DEFAULT_TRAINING_CSV, RadiologyEngine, train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT_TRAINING_CSV))
    parser.add_argument("--model", help="an artifact folder; default: train one into a temporary folder")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    reports = load_reports(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            folder = Path(args.model)
        else:
            started = time.perf_counter()
            folder = train(Path(args.data)).save(Path(tmp) / "radiology")
            print(f"train: {len(reports)} reports in {time.perf_counter() - started:.1f} s (weak labels only)")
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        engine = RadiologyEngine(RadiologyModel.load(folder))
        print(
            f"model artifact: {size / 1024:.0f} KiB ({len(engine.model.vocab)} features x "
            f"{len(engine.model.classes)} classes) in {folder}"
        )
        engine.classify(reports[: args.batch])  # warm-up: rules compiled, spaCy pipeline built

        started = time.perf_counter()
        for i in range(0, len(reports), args.batch):
            engine.classify(reports[i : i + args.batch])
        batched = len(reports) / (time.perf_counter() - started)

        single = reports[:500]
        started = time.perf_counter()
        for report in single:
            engine.classify([report])
        one_by_one = len(single) / (time.perf_counter() - started)
    print(f"classify, batches of {args.batch}: {batched:,.0f} reports/s over {len(reports)} reports (goal >= 500/s)")
    print(f"classify, one report per call: {one_by_one:,.0f} reports/s over {len(single)} reports")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
