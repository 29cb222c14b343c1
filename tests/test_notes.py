"""Note extraction: real Synthea notes, ConText negation/uncertainty/history, stages, rule files.

The pipeline is built once per test session (``build_pipeline`` is cached); tests that need a
pipeline from other rule files build their own with ``make_pipeline``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.clinical_history.notes import (
    NoteMention,
    NoteRulesError,
    build_pipeline,
    extract_many,
    extract_mentions,
    load_context_rules,
    load_patterns,
    make_pipeline,
)
from services.clinical_history.notes.pipeline import COMPONENTS
from services.clinical_history.notes.rules import PATTERNS_PATH
from shared.fhir.record import RXNORM, ClinicalNote, Code, FhirTime
from shared.nlp.rules import CONTEXT_RULES_PATH

ROOT = Path(__file__).resolve().parents[1]
BULK = ROOT.parent / "shared/data/fhir/synthea-bulk-10"
DOCUMENTS = BULK / "DocumentReference.000.ndjson"
PATIENT = "Patient/129c6ac7-8d06-89de-ad63-0204a93e76c3"


# --- helpers and fixtures ------------------------------------------------------------------


def _note(text: str, source: str = "DocumentReference/test") -> ClinicalNote:
    return ClinicalNote(source, None, None, text, "text/plain")


def _mentions(text: str, kind: str | None = None) -> list[NoteMention]:
    found = extract_mentions(_note(text))
    for m in found:  # every mention, everywhere, must point at its own words
        assert text[m.start : m.end] == m.text
        assert m.sentence in text and len(m.sentence) <= 300
    return [m for m in found if kind is None or m.kind == kind]


def _one(text: str, kind: str) -> NoteMention:
    found = _mentions(text, kind)
    assert len(found) == 1, found
    return found[0]


def _read_documents() -> Iterator[tuple[str, ClinicalNote]]:
    with DOCUMENTS.open(encoding="utf-8") as lines:
        for line in lines:
            res = json.loads(line)
            text = base64.b64decode(res["content"][0]["attachment"]["data"]).decode("utf-8")
            note = ClinicalNote(
                f"DocumentReference/{res['id']}", FhirTime.parse(res.get("date")), None, text, "text/plain"
            )
            yield res["subject"]["reference"], note


@pytest.fixture(scope="module")
def nlp() -> Any:
    return build_pipeline()


@pytest.fixture(scope="module")
def bulk_notes() -> list[tuple[str, ClinicalNote]]:
    if not DOCUMENTS.exists():
        pytest.skip(f"Synthea bulk export not present at {BULK} (shared data set not checked out)")
    return list(_read_documents())


@pytest.fixture(scope="module")
def patient_notes(bulk_notes: list[tuple[str, ClinicalNote]]) -> list[ClinicalNote]:
    return [note for subject, note in bulk_notes if subject == PATIENT]


@pytest.fixture(scope="module")
def patient_mentions(nlp: Any, patient_notes: list[ClinicalNote]) -> dict[str, list[NoteMention]]:
    return extract_many(patient_notes)


def _by_id(notes: list[ClinicalNote], doc_id: str) -> ClinicalNote:
    return next(n for n in notes if n.source == f"DocumentReference/{doc_id}")


def _medications_section(text: str) -> str:
    match = re.search(r"^# Medications\n(.*?)(?=^#)", text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


# --- the 90-note Synthea patient -------------------------------------------------------------


def test_patient_has_90_notes_and_every_note_gets_an_entry(
    patient_notes: list[ClinicalNote], patient_mentions: dict[str, list[NoteMention]]
) -> None:
    assert len(patient_notes) == 90
    assert set(patient_mentions) == {n.source for n in patient_notes}


@pytest.mark.parametrize(("drug", "rxcui"), [("paclitaxel", "56946"), ("cisplatin", "2555")])
def test_medications_section_mentions_match_the_note_text(
    patient_notes: list[ClinicalNote], patient_mentions: dict[str, list[NoteMention]], drug: str, rxcui: str
) -> None:
    with_drug = []
    for note in patient_notes:
        found = [m for m in patient_mentions[note.source] if m.section == "Medications" and m.normalized == drug]
        # Independent check: the "# Medications" section text, read with a plain regex.
        assert len(found) == _medications_section(note.text).count(drug), note.source
        for m in found:
            assert note.text[m.start : m.end] == m.text == drug
            assert m.kind == "medication"
            assert m.code == Code(RXNORM, rxcui, drug)
            assert not (m.negated or m.uncertain or m.historical or m.family)
            assert m.note_source == note.source
            assert "100 mg injection" in m.sentence or "50 mg injection" in m.sentence
        if found:
            with_drug.append(note.source)
    # 54 of the patient's notes list both drugs under "# Medications" (one more names paclitaxel in its plan only).
    assert len(with_drug) == 54
    assert "DocumentReference/00212c89-d070-985e-b695-b5f12fffd23e" in with_drug


def test_plan_list_items_are_their_own_sentences(
    patient_notes: list[ClinicalNote], patient_mentions: dict[str, list[NoteMention]]
) -> None:
    note = _by_id(patient_notes, "00212c89-d070-985e-b695-b5f12fffd23e")
    plan = [m for m in patient_mentions[note.source] if m.section == "Plan"]
    cisplatin = [m for m in plan if m.normalized == "cisplatin"]
    chemoradiation = [m for m in plan if m.normalized == "chemoradiation"]
    assert len(cisplatin) == 11 and len(chemoradiation) == 11
    assert {m.sentence for m in cisplatin} == {"- cisplatin 50 mg injection"}
    assert {m.text for m in chemoradiation} == {"combined chemotherapy and radiation therapy"}
    assert all(m.kind == "procedure" for m in chemoradiation)


def test_cancer_and_stage_mentions_in_assessment(
    patient_notes: list[ClinicalNote], patient_mentions: dict[str, list[NoteMention]]
) -> None:
    nsclc = _by_id(patient_notes, "184143b8-d840-7632-ceb5-cd2037cfb012")
    cancer, stage = (m for m in patient_mentions[nsclc.source] if m.kind in {"cancer", "stage"})
    assert (cancer.text, cancer.normalized, cancer.section) == (
        "non-small cell carcinoma of lung",
        "nsclc",
        "Assessment and Plan",
    )
    assert (stage.text, stage.normalized) == ("tnm stage 1", "I")
    assert cancer.sentence == "Patient is presenting with non-small cell carcinoma of lung, tnm stage 1 (disorder)."
    assert not (cancer.negated or cancer.uncertain or cancer.historical)

    suspected = _by_id(patient_notes, "a04e9007-9eed-a6bb-3dcc-ccef21c778e1")
    (lung,) = (m for m in patient_mentions[suspected.source] if m.kind == "cancer")
    assert (lung.text, lung.normalized, lung.uncertain, lung.negated) == ("lung cancer", "lung", True, False)

    confirmed = _by_id(patient_notes, "b1b97ad5-ab4a-23df-eea0-fdaf7d6fc15d")
    (nsclc_text,) = (m for m in patient_mentions[confirmed.source] if m.kind == "cancer")
    assert (nsclc_text.text, nsclc_text.normalized, nsclc_text.asserted) == (
        "non-small cell lung cancer",
        "nsclc",
        True,
    )

    breast = _by_id(patient_notes, "e01f74c1-a89b-41a0-477f-03fb8951b62a")
    mentions = patient_mentions[breast.source]
    assert [(m.text, m.normalized) for m in mentions if m.kind == "cancer"] == [
        ("malignant neoplasm of breast", "breast")
    ]
    assert [(m.text, m.normalized) for m in mentions if m.kind == "procedure"] == [
        ("screening mammography", "imaging"),
        ("ultrasonography", "imaging"),
        ("biopsy", "biopsy"),
    ]


def test_patient_timeline_nlp_is_fast(nlp: Any, patient_notes: list[ClinicalNote]) -> None:
    started = time.perf_counter()
    extract_many(patient_notes)
    assert time.perf_counter() - started < 1.0  # typically ~0.05 s; generous for slow CI machines


@pytest.mark.slow
def test_whole_bulk_export(nlp: Any, bulk_notes: list[tuple[str, ClinicalNote]]) -> None:
    notes = [note for _, note in bulk_notes]
    assert len(notes) == 1215
    result = extract_many(notes)
    stages = [m for found in result.values() for m in found if m.kind == "stage"]
    # Thousands of "chronic kidney disease stage N" phrases; the only cancer stage is the NSCLC one.
    assert [(m.text, m.normalized) for m in stages] == [("tnm stage 1", "I")]
    by_source = {n.source: n for n in notes}
    for source, found in result.items():
        for m in found:
            assert by_source[source].text[m.start : m.end] == m.text
    sample = notes[:40]
    assert extract_many(sample) == {n.source: extract_mentions(n) for n in sample}


# --- ConText: negation, uncertainty, history, family -------------------------------------------


def test_denies_negates_the_drug() -> None:
    m = _one("Patient denies taking cisplatin.", "medication")
    assert (m.normalized, m.negated, m.uncertain) == ("cisplatin", True, False)


def test_no_evidence_of_negates_the_cancer() -> None:
    m = _one("No evidence of metastatic breast cancer.", "cancer")
    assert (m.text, m.normalized, m.negated) == ("breast cancer", "breast", True)


def test_negation_reaches_forward_only() -> None:
    found = _mentions("Started carboplatin and pemetrexed; no osimertinib.", "medication")
    assert [(m.normalized, m.negated) for m in found] == [
        ("carboplatin", False),
        ("pemetrexed", False),
        ("osimertinib", True),
    ]
    assert found[2].code == Code(RXNORM, "1721560", "osimertinib")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CT shows possible recurrence of lung cancer.", ("lung cancer", "lung")),
        ("Biopsy cannot exclude small cell carcinoma.", ("small cell carcinoma", "sclc")),
        ("Rule out non-small cell lung cancer.", ("non-small cell lung cancer", "nsclc")),
        ("Findings may represent colon cancer.", ("colon cancer", "colon")),
        ("Small cell carcinoma of lung cannot be excluded.", ("Small cell carcinoma of lung", "sclc")),
    ],
)
def test_uncertainty(text: str, expected: tuple[str, str]) -> None:
    m = _one(text, "cancer")
    assert (m.text, m.normalized) == expected
    assert m.uncertain and not m.negated


def test_backward_negation() -> None:
    m = _one("Small cell lung cancer was ruled out.", "cancer")
    assert m.negated and not m.uncertain


def test_history_and_termination() -> None:
    cancer = _one("History of breast cancer, now on tamoxifen.", "cancer")
    drug = _one("History of breast cancer, now on tamoxifen.", "medication")
    assert cancer.historical and not cancer.negated
    assert not drug.historical


def test_but_ends_the_negation_scope() -> None:
    assert not _one("No nausea but started cisplatin.", "medication").negated


def test_family_history_is_not_the_patient() -> None:
    m = _one("Family history of breast cancer.", "cancer")
    assert m.family and not m.historical and not m.asserted


def test_synthea_history_lists_are_not_negated_by_not_in_labor_force() -> None:
    text = (
        "Patient has a history of not in labor force (finding), stress (finding), "
        "malignant neoplasm of breast (disorder)."
    )
    m = _one(text, "cancer")
    assert m.historical and not m.negated


def test_list_items_do_not_share_a_sentence() -> None:
    text = "# Plan\n- no fever\n- cisplatin 50 mg injection\n"
    m = _one(text, "medication")
    assert not m.negated
    assert m.sentence == "- cisplatin 50 mg injection"
    assert m.section == "Plan"


# --- stages, cancers, procedures, medications -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stage", "cancer"),
    [
        ("stage IIIA NSCLC", "IIIA", "nsclc"),
        ("Non-small cell lung cancer, TNM stage 1", "I", "nsclc"),
        ("extensive-stage SCLC", "extensive", "sclc"),
        ("limited stage small cell lung cancer", "limited", "sclc"),
        ("Breast cancer, stage 3b.", "IIIB", "breast"),
        ("Colon cancer stage IV.", "IV", "colon"),
        ("Prostate cancer, stage 0", "0", "prostate"),
    ],
)
def test_stage_normalisation(text: str, stage: str, cancer: str) -> None:
    assert _one(text, "stage").normalized == stage
    assert _one(text, "cancer").normalized == cancer


@pytest.mark.parametrize(
    "text",
    [
        "Chronic kidney disease stage 3 (disorder).",
        "Stage 2 hypertension.",
        "Pressure ulcer stage 4 on sacrum.",
        "End-stage renal disease (disorder).",
    ],
)
def test_non_cancer_stages_are_not_stages(text: str) -> None:
    assert _mentions(text, "stage") == []


@pytest.mark.parametrize(
    ("text", "cancer_type"),
    [
        ("non-small cell lung cancer", "nsclc"),
        ("small cell carcinoma of lung", "sclc"),
        ("malignant neoplasm of breast", "breast"),
        ("breast cancer", "breast"),
        ("colon cancer", "colon"),
        ("adenocarcinoma of the prostate", "prostate"),
        ("lung adenocarcinoma", "nsclc"),  # histology refines lung to NSCLC
        ("rectal cancer", "rectum"),
        ("NSCLC", "nsclc"),
    ],
)
def test_cancer_phrases(text: str, cancer_type: str) -> None:
    m = _one(f"Diagnosed with {text}.", "cancer")
    assert (m.text, m.normalized) == (text, cancer_type)


@pytest.mark.parametrize(
    ("text", "mention", "category"),
    [
        ("Underwent screening mammography.", "screening mammography", "imaging"),
        ("PET/CT showed uptake.", "PET/CT", "imaging"),
        ("PET was negative.", "PET", "imaging"),
        ("Right upper lobectomy in 2019.", "lobectomy", "surgery"),
        ("Core needle biopsy of the mass.", "Core needle biopsy", "biopsy"),
        ("Plan for stereotactic body radiation therapy.", "stereotactic body radiation therapy", "radiation"),
        (
            "combined chemotherapy and radiation therapy (procedure)",
            "combined chemotherapy and radiation therapy",
            "chemoradiation",
        ),
    ],
)
def test_procedures(text: str, mention: str, category: str) -> None:
    m = _one(text, "procedure")
    assert (m.text, m.normalized, m.code) == (mention, category, None)


def test_lower_case_pet_is_an_animal() -> None:
    assert _mentions("Lives with a pet dog.", "procedure") == []


def test_status_post_is_historical() -> None:
    assert _one("Status post lobectomy.", "procedure").historical


@pytest.mark.parametrize(
    ("text", "name", "code"),
    [
        ("Taxol 175 mg/m2", "paclitaxel", Code(RXNORM, "56946", "paclitaxel")),
        ("nab-paclitaxel weekly", "paclitaxel", Code(RXNORM, "56946", "paclitaxel")),
        ("5-FU infusion", "fluorouracil", Code(RXNORM, "4492", "fluorouracil")),
        ("lurbinectedin second line", "lurbinectedin", Code(RXNORM, "2374729", "lurbinectedin")),
    ],
)
def test_medication_synonyms_and_codes(text: str, name: str, code: Code | None) -> None:
    m = _one(text, "medication")
    assert (m.normalized, m.code) == (name, code)


def test_sections_and_headings() -> None:
    text = (
        "# Medications\ncisplatin 50 mg injection\n\n# Assessment and Plan\n"
        "Patient is presenting with breast cancer. No osimertinib.\n\n## Plan\n- paclitaxel 100 mg injection\n"
    )
    found = _mentions(text)
    assert [(m.normalized, m.section, m.negated) for m in found] == [
        ("cisplatin", "Medications", False),
        ("breast", "Assessment and Plan", False),
        ("osimertinib", "Assessment and Plan", True),
        ("paclitaxel", "Plan", False),
    ]
    assert found[0].sentence == "cisplatin 50 mg injection"  # the heading line is not part of it


def test_long_sentences_are_trimmed_around_the_mention() -> None:
    text = "Patient has a history of " + ", ".join(["stress (finding)"] * 40) + ", breast cancer (disorder)."
    m = _one(text, "cancer")
    assert len(m.sentence) <= 300 and "breast cancer" in m.sentence and m.historical


def test_empty_and_plain_notes() -> None:
    assert extract_mentions(_note("")) == []
    assert extract_mentions(_note("No complaints.")) == []
    assert extract_many([]) == {}
    assert extract_many([_note("", "DocumentReference/a")]) == {"DocumentReference/a": []}


def test_mentions_are_frozen() -> None:
    m = _one("cisplatin", "medication")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.negated = True  # type: ignore[misc]


# --- the pipeline and its rule files -------------------------------------------------------------


def test_pipeline_is_built_once_and_named(nlp: Any) -> None:
    assert build_pipeline() is nlp
    assert tuple(nlp.pipe_names) == COMPONENTS
    assert all(name.startswith("oncotwin_") for name in nlp.pipe_names)


def test_import_has_no_global_side_effects() -> None:
    code = (
        "import services.clinical_history.notes\n"
        "from spacy.language import Language\nfrom spacy.tokens import Span\n"
        "print(Language.has_factory('oncotwin_context'), Span.has_extension('oncotwin_negated'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _patterns() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PATTERNS_PATH.read_text(encoding="utf-8"))
    return data


def test_packaged_rule_files_load() -> None:
    assert load_patterns().procedures
    assert any(r.literal == "denies" for r in load_context_rules())


def test_bad_procedure_category_is_named(tmp_path: Path) -> None:
    data = _patterns()
    data["procedures"].append({"category": "radiology", "phrases": ["ct chest"]})
    path = _write(tmp_path, "patterns.json", data)
    with pytest.raises(NoteRulesError, match=r"patterns\.json: procedures\[\d+\].*'radiology'"):
        load_patterns(path)
    with pytest.raises(NoteRulesError, match="radiology"):
        make_pipeline(patterns_path=path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("_provenance"), "missing _provenance"),
        (lambda d: d["medications"].update({"notadrug": ["x"]}), r"medications\.notadrug.*'notadrug'"),
        (lambda d: d["stage"]["numerals"].update({"5": "V"}), r"stage\.numerals\.5.*'V'"),
        (lambda d: d["cancer"]["nouns"].append(""), r"cancer\.nouns\[\d+\]"),
        (lambda d: d.update({"extra": 1}), r"patterns\.json: extra: Extra inputs are not permitted"),
        (
            lambda d: d["cancer"]["histologies"].update({"sclc": "martian"}),
            r"histologies\.sclc.*'martian'",
        ),
        (lambda d: d["stage"]["substages"].append("ab"), r"stage\.substages\[\d+\]"),
    ],
)
def test_malformed_patterns_raise(tmp_path: Path, change: Any, message: str) -> None:
    data = _patterns()
    change(data)
    with pytest.raises(NoteRulesError, match=message):
        load_patterns(_write(tmp_path, "patterns.json", data))


def test_unreadable_patterns_file(tmp_path: Path) -> None:
    path = tmp_path / "patterns.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(NoteRulesError, match="cannot be read as JSON"):
        load_patterns(path)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"category": "NEGATED_EXISTENCE", "direction": "sideways", "literals": ["x"]}, "sideways"),
        ({"category": "MAYBE", "direction": "forward", "literals": ["x"]}, "MAYBE"),
        ({"category": "NEGATED_EXISTENCE", "direction": "forward", "literals": ["denies"]}, "'denies'.*already"),
        ({"category": "TERMINATE", "direction": "forward", "literals": ["x"]}, "no direction"),
        ({"category": "HISTORICAL", "direction": "forward", "max_scope": 0, "literals": ["x"]}, "max_scope"),
        ({"category": "HISTORICAL", "literals": ["x"]}, r"rules\[\d+\]: .*HISTORICAL rules need a direction"),
        ({"category": "FAMILY", "direction": "forward", "literals": ["x"], "colour": 1}, r"rules\[\d+\]\.colour"),
        ({"category": "FAMILY", "direction": "forward", "literals": []}, r"rules\[\d+\]\.literals"),
    ],
)
def test_malformed_context_rules_raise(tmp_path: Path, rule: dict[str, Any], message: str) -> None:
    data = json.loads(CONTEXT_RULES_PATH.read_text(encoding="utf-8"))
    data["rules"].append(rule)
    path = _write(tmp_path, "context_rules.json", data)
    with pytest.raises(NoteRulesError, match=message):
        load_context_rules(path)
