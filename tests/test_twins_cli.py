"""``oncotwin navigate`` and ``oncotwin necessity``, run as a user would run them."""

from __future__ import annotations

import json

from tests.conftest import BULK, BULK_PATIENT, requires_data, synthea
from tests.test_cli import run
from tests.test_necessity_api import SHERMAN_DOCETAXEL, egfr_bundle


@requires_data
def test_navigate_json():
    result = run("navigate", str(synthea("Austin_Franecki")), "--as-of", "1989-07-24", "--format", "json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["asOf"] == "1989-07-24" and body["deceased"] is None  # he died the next day
    (pathway,) = body["pathways"]
    assert [p["step"]["id"] for p in pathway["position"]] == ["nsclc.early.adjuvant"]
    assert {g["step"]["id"] for g in pathway["gaps"]} >= {"nsclc.biomarkers", "nsclc.early.adjuvant-decision"}
    assert [line["regimen"] for line in pathway["offPathway"]] == ["cisplatin + paclitaxel"]


@requires_data
def test_navigate_text_for_a_clinician():
    result = run("navigate", str(synthea("Sherman_McGlynn")), "--as-of", "2012-01-01")  # alive until July 2012
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "care navigation as of 2012-01-01" in out
    assert "Prostate cancer pathway 2026.11" in out and "Small cell lung cancer pathway 2026.11" in out
    assert "Position:" in out and "Next steps:" in out and "Gaps:" in out and "Off-pathway lines:" in out
    assert "due 2003-07-07  OVERDUE PSA surveillance after definitive treatment" in out
    assert "Sources:" in out and "https://www.cancer.gov/" in out
    assert "A clinician decides" in out


@requires_data
def test_navigate_text_shows_off_pathway_lines():
    result = run("navigate", str(synthea("Austin_Franecki")), "--format", "text")
    assert result.returncode == 0, result.stderr
    assert "line 1: cisplatin + paclitaxel from 1985-07-26" in result.stdout
    assert "missing-prerequisite: Biomarker testing (EGFR, ALK, PD-L1)" in result.stdout


@requires_data
def test_navigate_one_patient_of_a_bulk_folder():
    result = run("navigate", str(BULK), "--patient", BULK_PATIENT, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert [p["id"] for p in json.loads(result.stdout)["pathways"]] == ["nsclc", "breast"]


def test_navigate_bad_date_and_missing_file(tmp_path):
    bad = run("navigate", str(tmp_path / "x.json"), "--as-of", "1/2/2024")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    missing = run("navigate", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr and "Traceback" not in missing.stderr


@requires_data
def test_necessity_json_on_real_orders():
    result = run("necessity", str(synthea("Sherman_McGlynn")), "--format", "json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert [d["determination"] for d in body["determinations"]] == ["insufficient-documentation"] * 2


@requires_data
def test_necessity_text_for_one_order():
    result = run("necessity", str(synthea("Sherman_McGlynn")), "--order", SHERMAN_DOCETAXEL)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("\nOrder MedicationRequest/") == 1 and SHERMAN_DOCETAXEL in out
    assert "Determination: INSUFFICIENT-DOCUMENTATION" in out
    assert "Deciding criteria:\n    - metastatic disease" in out
    assert "Criteria (best route):" in out and "[?]" in out and "[met]" in out
    assert "Rationale: " in out and "CHAARTED" in out and "https://doi.org/" in out


def test_necessity_on_a_constructed_bundle(tmp_path):
    path = tmp_path / "egfr.json"
    path.write_text(json.dumps(egfr_bundle()))
    result = run("necessity", str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    (d,) = json.loads(result.stdout)["determinations"]
    assert d["determination"] == "meets" and d["option"] == "nsclc.rx.osimertinib"
    text = run("necessity", str(path))
    assert "Determination: MEETS" in text.stdout and "FLAURA" in text.stdout


def test_necessity_unknown_order_is_a_clear_error(tmp_path):
    path = tmp_path / "egfr.json"
    path.write_text(json.dumps(egfr_bundle()))
    result = run("necessity", str(path), "--order", "MedicationRequest/not-there")
    assert result.returncode == 2
    assert "not a draft or active order" in result.stderr and "Traceback" not in result.stderr
