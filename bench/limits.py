"""Benchmark: the worst request of each kind at its cap (README "Security / limits"), in process on
the embedded default app (``oncotwin.app.create_app``, default limits), one at a time.

- biggest allowed Bundle: ``MAX_BUNDLE_ENTRIES`` entries, every one a resource ingestion validates and
  reads (Conditions, staging Observations, MedicationRequests), to ``POST /history/v1/timeline``;
- most orders: ``MAX_NECESSITY_ORDERS`` draft orders plus ten notes of ``MAX_NOTE_CHARS`` (free-text
  criteria search them) to ``POST /necessity/v1/evaluate``;
- longest notes: ``MAX_NOTE_CHARS`` x 1.5 in a DocumentReference and a DiagnosticReport presentedForm
  (truncated, with an issue) to the timeline;
- biggest radiology batch: 256 reports, ``RADIOLOGY_MAX_BATCH_CHARS`` characters of report text in all
  (a model trained on 600 dev reports stands in for the default artifact; same features, same cost).

Prints status and seconds of each (goal: under 5 s each, far below ``REQUEST_DEADLINE_SECONDS``).
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oncotwin.app import create_app  # noqa: E402
from shared.auth import SCOPES, LocalKeys  # noqa: E402
from shared.config import load_settings  # noqa: E402
from tests.test_necessity_api import RXNORM, egfr_bundle  # noqa: E402

REPORTS = ROOT.parent / "shared" / "data" / "radiology" / "openi_reports_dev.csv"
DRUGS = (("1721560", "osimertinib"), ("1597876", "pembrolizumab"), ("40048", "carboplatin"), ("1547220", "nivolumab"))
NOTE = (
    "Patient seen in clinic. CT shows progression of disease on prior therapy with new liver lesions. "
    "ECOG performance status 1. EGFR exon 19 deletion confirmed. Plan discussed with the patient. "
)


def note_text(chars: int) -> str:
    return (NOTE * (chars // len(NOTE) + 1))[:chars]


def attachment(text: str) -> dict[str, str]:
    return {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}


def biggest_bundle(entries: int) -> dict[str, Any]:
    bundle = egfr_bundle()
    templates = [e["resource"] for e in bundle["entry"][1:]]
    templates[-1] = templates[-1] | {"status": "completed"}  # not an order to review: ingestion cost only
    while len(bundle["entry"]) < entries:
        i = len(bundle["entry"])
        resource = copy.deepcopy(templates[i % len(templates)]) | {"id": f"r-{i}"}
        bundle["entry"].append({"resource": resource})
    return bundle


def most_orders(orders: int, note_chars: int) -> dict[str, Any]:
    bundle = egfr_bundle()
    order = bundle["entry"][-1]["resource"]
    for i in range(orders - 1):
        code, name = DRUGS[i % len(DRUGS)]
        extra = copy.deepcopy(order) | {"id": f"order-{i + 2}"}
        extra["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": code, "display": name}]}
        bundle["entry"].append({"resource": extra})
    for i in range(10):
        bundle["entry"].append({"resource": document(f"note-{i}", note_text(note_chars))})
    return bundle


def document(rid: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": "current",
        "subject": {"reference": "Patient/egfr-1"},
        "date": "2024-02-15T10:00:00Z",
        "content": [{"attachment": attachment(text)}],
    }


def longest_notes(chars: int) -> dict[str, Any]:
    bundle = egfr_bundle()
    bundle["entry"].append({"resource": document("note-long", note_text(chars))})
    report = {
        "resourceType": "DiagnosticReport",
        "id": "report-long",
        "status": "final",
        "subject": {"reference": "Patient/egfr-1"},
        "code": {"text": "CT chest"},
        "presentedForm": [attachment(note_text(chars))],
    }
    bundle["entry"].append({"resource": report})
    return bundle


def radiology_batch(total_chars: int, count: int = 256) -> dict[str, Any]:
    from services.radiology.labeler import load_reports

    corpus = " ".join(f"{r.findings} {r.impression}" for r in load_reports(REPORTS))
    each = total_chars // count
    return {
        "reports": [
            {"uid": str(i), "text": corpus[i * 977 % len(corpus) :][:each] or "No effusion."} for i in range(count)
        ]
    }


def main() -> None:
    logging.getLogger("oncotwin.access").setLevel(logging.WARNING)  # one line per patient read otherwise
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings({"ONCOTWIN_DATA_DIR": tmp})
        limits = settings.limits
        app = create_app(settings)
        client = app.test_client()
        keys = LocalKeys(settings.data_dir)
        keys.ensure()
        token = keys.mint("bench", list(SCOPES), 3600, issuer=settings.token_issuer, audience=settings.token_audience)
        auth = {"Authorization": f"Bearer {token}"}
        fhir, plain = auth | {"Content-Type": "application/fhir+json"}, auth | {"Content-Type": "application/json"}
        client.post("/necessity/v1/evaluate", data=json.dumps(egfr_bundle()), headers=fhir)  # warm: pathways, terms

        cases: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
            (
                f"biggest Bundle: {limits.max_bundle_entries} validated entries",
                "/history/v1/timeline",
                biggest_bundle(limits.max_bundle_entries),
                fhir,
            ),
            (
                f"most orders: {limits.max_necessity_orders} drafts + 10 notes of {limits.max_note_chars} chars",
                "/necessity/v1/evaluate",
                most_orders(limits.max_necessity_orders, limits.max_note_chars),
                fhir,
            ),
            (
                f"longest notes: 2 x {limits.max_note_chars * 3 // 2} chars (truncated)",
                "/history/v1/timeline",
                longest_notes(limits.max_note_chars * 3 // 2),
                fhir,
            ),
        ]
        if REPORTS.is_file():
            from services.radiology.app import ENGINE
            from services.radiology.labeler import load_reports
            from services.radiology.model import TrainConfig, train_from_reports
            from services.radiology.service import RadiologyEngine, default_labeler

            model = train_from_reports(load_reports(REPORTS)[:600], default_labeler(), config=TrainConfig(epochs=120))
            app.extensions[ENGINE] = RadiologyEngine(model)
            client.post("/radiology/v1/classify", data=json.dumps({"text": "No effusion."}), headers=plain)  # warm
            cases.append(
                (
                    f"biggest radiology batch: 256 reports, {limits.radiology_max_batch_chars} chars",
                    "/radiology/v1/classify/batch",
                    radiology_batch(limits.radiology_max_batch_chars),
                    plain,
                )
            )
        print(f"limits: {limits}")
        for name, url, body, headers in cases:
            data = json.dumps(body)
            started = time.perf_counter()
            answer = client.post(url, data=data, headers=headers)
            seconds = time.perf_counter() - started
            goal = "ok" if seconds < 5 and answer.status_code == 200 else "OVER GOAL"
            print(f"{name:<70} {len(data) / 1e6:6.1f} MB  {answer.status_code}  {seconds:6.2f} s  {goal}")


if __name__ == "__main__":
    main()
