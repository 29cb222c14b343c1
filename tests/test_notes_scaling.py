"""Note processing grows linearly with the note: a hostile 1M-character note cannot hold a worker
for minutes (it took ~26 minutes when the note text was rebuilt for every mention and every
mention was checked against every modifier). Work is counted, not timed: every function call
(spaCy's Cython code reports its calls too) plus every line run inside the notes package."""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path
from types import FrameType
from typing import Any

from services.clinical_history.notes import pipeline
from services.clinical_history.notes.pipeline import build_pipeline, extract_mentions
from shared.fhir.record import ClinicalNote

NOTES_PACKAGE = str(Path(pipeline.__file__).parent)
UNIT = (
    "Started cisplatin and etoposide for small cell lung cancer. No evidence of disease progression. "
    "Possible metastasis to the liver. History of prostate cancer treated with leuprolide. "
)


def work(text: str) -> tuple[int, int]:
    """(calls, lines) spent extracting the mentions of one note of this text."""
    calls = lines = 0

    def profiler(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    def line_tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return line_tracer

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return line_tracer if frame.f_code.co_filename.startswith(NOTES_PACKAGE) else None

    note = ClinicalNote("DocumentReference/n", None, None, text, "text/plain")
    sys.setprofile(profiler)
    sys.settrace(tracer)
    try:
        found = extract_mentions(note)
    finally:
        sys.settrace(None)
        sys.setprofile(None)
    assert found  # the note is read, not skipped
    return calls, lines


def test_note_work_grows_linearly_with_its_length():
    build_pipeline()
    sizes = (10_000, 100_000, 1_000_000)
    measured = [work((UNIT * (n // len(UNIT) + 1))[:n]) for n in sizes]
    for (small, n_small), (large, n_large) in pairwise(zip(measured, sizes, strict=True)):
        growth = n_large / n_small  # 10x
        for kind, a, b in (("calls", small[0], large[0]), ("lines", small[1], large[1])):
            assert b / a <= growth * 1.25, f"{kind}: {a} -> {b} for {n_small} -> {n_large} characters"
