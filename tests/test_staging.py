"""AJCC 8 stage-group derivation (shared/staging.py) against answers written from public sources.

Expected answers come from Goldstraw 2016 (lung), Amin 2017 / NCI PDQ (colorectal), Giuliano 2017 (breast
anatomic), Buyyounouski 2017 / NCI dictionary (prostate), Epstein 2016 (Grade Groups) and the AUA/ASTRO 2022
guideline (risk groups). Demonstration content; requires clinical review.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared import staging
from shared.fhir.record import LOINC, NCIT, SNOMED, Code
from shared.staging import (
    DerivedStage,
    derive_stage_group,
    gleason_from_grade_group,
    grade_group_from_gleason,
    normalise_category,
    prostate_risk_group,
)
from shared.terminology import terminology

DATA = Path(__file__).resolve().parents[1] / "shared" / "terminology" / "staging.json"


def group(cancer: str, t: str | None, n: str | None, m: str | None, **kw: object) -> str | None:
    got = derive_stage_group(cancer, t, n, m, **kw)  # type: ignore[arg-type]
    return None if got is None else got.group


# ---------------------------------------------------------------- normalise_category


@pytest.mark.parametrize(
    ("value", "part", "expected"),
    [
        ("cT3", "t", "T3"),
        ("pT2a", "t", "T2a"),
        ("ypN1", "n", "N1"),
        ("T1mi", "t", "T1mi"),
        ("Tis", "t", "Tis"),
        ("TX", "t", "TX"),
        ("cM1c", "m", "M1c"),
        ("American Joint Committee on Cancer cT3", "t", "T3"),
        ("American Joint Committee on Cancer pN0 (qualifier value)", "n", "N0"),
        ("T3 (qualifier value)", "t", "T3"),
        ("pTis(DCIS)", "t", "Tis"),
        ("pN0(i+)", "n", "N0"),
        ("cM0(i+)", "m", "M0"),
        ("pN1mi", "n", "N1mi"),
        ("ct2B", "t", "T2b"),
        ("  yc T4a ", "t", "T4a"),
        ("pN1a(sn)", "n", "N1a"),
        ("MX", "m", "MX"),
        ("T1a(mi)", "t", "T1mi"),
        ("cM1a(0)", "m", "M1a"),
    ],
)
def test_normalise_category(value: str, part: str, expected: str) -> None:
    assert normalise_category(value, part) == expected


@pytest.mark.parametrize(
    ("value", "part"),
    [(None, "t"), ("", "t"), ("   ", "n"), ("cN1", "t"), ("T3", "m"), ("stage IIIC", "t"), ("T9", "t"), ("N4", "n")],
)
def test_normalise_category_rejects(value: str | None, part: str) -> None:
    assert normalise_category(value, part) is None


def test_normalise_category_bad_part() -> None:
    with pytest.raises(ValueError, match="part"):
        normalise_category("T1", "x")


# ---------------------------------------------------------------- lung (Goldstraw 2016)


@pytest.mark.parametrize(
    ("t", "n", "m", "expected"),
    [
        ("Tis", "N0", "M0", "0"),
        ("T1mi", "N0", "M0", "IA1"),
        ("T1a", "N0", "M0", "IA1"),
        ("T1b", "N0", "M0", "IA2"),
        ("cT1c", "cN0", "cM0", "IA3"),
        ("T2a", "N0", "M0", "IB"),
        ("T2b", "N0", "M0", "IIA"),
        ("T1a", "N1", "M0", "IIB"),
        ("T3", "N0", "M0", "IIB"),
        ("T2a", "N2", "M0", "IIIA"),
        ("T3", "N1", "M0", "IIIA"),
        ("T4", "N1", "M0", "IIIA"),
        ("T3", "N2", "M0", "IIIB"),
        ("T1c", "N3", "M0", "IIIB"),
        ("T3", "N3", "M0", "IIIC"),
        ("T4", "N3", "M0", "IIIC"),
        ("T1a", "N0", "M1a", "IVA"),
        ("T4", "N3", "M1b", "IVA"),
        ("T2a", "N0", "M1c", "IVB"),
    ],
)
def test_lung_table(t: str, n: str, m: str, expected: str) -> None:
    assert group("nsclc", t, n, m) == expected


def test_lung_shares_table_across_types() -> None:
    for cancer in ("nsclc", "sclc", "lung"):
        assert group(cancer, "pT2b", "pN0", "cM0") == "IIA"


def test_lung_result_fields() -> None:
    got = derive_stage_group("sclc", "T2b", "N0", "M0")
    assert isinstance(got, DerivedStage)
    assert got.edition == "AJCC 8"
    assert got.rule == "lung: T2b N0 M0"
    assert "Goldstraw" in got.citation


def test_lung_coarse_inputs() -> None:
    # T1 N0 M0 spans IA1/IA2/IA3: the shared prefix IA is returned and the rule says it is coarse.
    got = derive_stage_group("lung", "T1", "N0", "M0")
    assert got is not None and got.group == "IA"
    assert "coarse" in got.rule
    # T2 N0 spans IB and IIA: no shared stage, so no answer.
    assert group("lung", "T2", "N0", "M0") is None
    # T2 N1 is IIB for both T2a and T2b, so the coarse input is enough.
    assert group("lung", "T2", "N1", "M0") == "IIB"
    # plain M1 spans IVA and IVB -> "IV"
    assert group("lung", "T1a", "N0", "M1") == "IV"


def test_lung_missing_or_unknown() -> None:
    assert group("lung", "TX", "N0", "M0") is None  # occult carcinoma is not tabulated
    assert group("lung", "T2a", "NX", "M0") is None
    assert group("lung", "T2a", "N0", "MX") is None  # MX is never read as M0
    assert group("lung", "T2a", "N0", None) is None
    assert group("lung", None, None, "M1c") == "IVB"  # any T, any N
    assert group("lung", "TX", "NX", "M1a") == "IVA"


# ---------------------------------------------------------------- colorectal


@pytest.mark.parametrize(
    ("t", "n", "m", "expected"),
    [
        ("Tis", "N0", "M0", "0"),
        ("T1", "N0", "M0", "I"),
        ("T2", "N0", "M0", "I"),
        ("T3", "N0", "M0", "IIA"),
        ("T4a", "N0", "M0", "IIB"),
        ("T4b", "N0", "M0", "IIC"),
        ("T1", "N1", "M0", "IIIA"),
        ("T2", "N1c", "M0", "IIIA"),
        ("T1", "N2a", "M0", "IIIA"),
        ("T3", "N1a", "M0", "IIIB"),
        ("T2", "N2a", "M0", "IIIB"),
        ("T2", "N2b", "M0", "IIIB"),
        ("T4a", "N2a", "M0", "IIIC"),
        ("T3", "N2b", "M0", "IIIC"),
        ("T4b", "N1b", "M0", "IIIC"),
        ("T3", "N0", "M1a", "IVA"),
        ("T3", "N0", "M1b", "IVB"),
        ("T3", "N2b", "M1c", "IVC"),
    ],
)
def test_colorectal_table(t: str, n: str, m: str, expected: str) -> None:
    assert group("colon", t, n, m) == expected
    assert group("rectum", t, n, m) == expected


def test_colorectal_coarse() -> None:
    assert group("colon", "T4", "N0", "M0") == "II"  # IIB or IIC
    assert group("colon", "T1", "N2", "M0") == "III"  # IIIA or IIIB
    assert group("colon", "T4", "N2", "M0") == "IIIC"  # T4a/T4b with N2a/N2b all give IIIC
    assert group("colon", "T3", "N0", "M1") == "IV"
    assert group("colon", "T3", None, "M0") is None  # missing N is not guessed


# ---------------------------------------------------------------- breast, anatomic (Giuliano 2017)


@pytest.mark.parametrize(
    ("t", "n", "m", "expected"),
    [
        ("pTis(DCIS)", "pN0", "cM0", "0"),
        ("T1mi", "N0", "M0", "IA"),
        ("T1c", "N0", "M0", "IA"),
        ("T0", "N1mi", "M0", "IB"),
        ("T1b", "N1mi", "M0", "IB"),
        ("T0", "N1", "M0", "IIA"),
        ("T1", "N1a", "M0", "IIA"),
        ("T2", "N0", "M0", "IIA"),
        ("T2", "N1", "M0", "IIB"),
        ("T2", "N1mi", "M0", "IIB"),
        ("T3", "N0", "M0", "IIB"),
        ("T0", "N2a", "M0", "IIIA"),
        ("T2", "N2", "M0", "IIIA"),
        ("T3", "N1", "M0", "IIIA"),
        ("T3", "N2b", "M0", "IIIA"),
        ("T4b", "N0", "M0", "IIIB"),
        ("T4d", "N2", "M0", "IIIB"),
        ("T1", "N3a", "M0", "IIIC"),
        ("T4", "N3c", "M0", "IIIC"),
        ("T2", "N1", "M1", "IV"),
        ("T1", "N0", "cM0(i+)", "IA"),
    ],
)
def test_breast_anatomic_table(t: str, n: str, m: str, expected: str) -> None:
    assert group("breast", t, n, m) == expected


def test_breast_unknowns() -> None:
    assert group("breast", "T0", "N0", "M0") is None  # not a stage group
    assert group("breast", None, "N3", "M0") == "IIIC"  # any T
    assert group("breast", "T2", "N1", "MX") is None
    assert group("breast", "T2", None, "M0") is None


# ---------------------------------------------------------------- prostate (Buyyounouski 2017)


@pytest.mark.parametrize(
    ("t", "n", "m", "gg", "psa", "expected"),
    [
        ("cT1c", "N0", "M0", 1, 5.0, "I"),
        ("T2a", "N0", "M0", 1, 9.9, "I"),
        ("pT2", "pN0", "M0", 1, 6.0, "I"),
        ("T2a", "N0", "M0", 1, 12.0, "IIA"),
        ("T1c", "N0", "M0", 1, 10.0, "IIA"),
        ("T2b", "N0", "M0", 1, 4.0, "IIA"),
        ("T2c", "N0", "M0", 1, 19.9, "IIA"),
        ("T1c", "N0", "M0", 2, 15.0, "IIB"),
        ("T2", "N0", "M0", 2, 3.0, "IIB"),
        ("T2b", "N0", "M0", 3, 8.0, "IIC"),
        ("T1c", "N0", "M0", 4, 8.0, "IIC"),
        ("T1c", "N0", "M0", 1, 20.0, "IIIA"),
        ("T2c", "N0", "M0", 4, 45.0, "IIIA"),
        ("T3a", "N0", "M0", 1, 4.0, "IIIB"),
        ("T4", "N0", "M0", 4, 100.0, "IIIB"),
        ("T1c", "N0", "M0", 5, 3.0, "IIIC"),
        ("T3b", "N1", "M0", 5, 50.0, "IVA"),
        ("T1c", "N0", "M1b", 1, 3.0, "IVB"),
    ],
)
def test_prostate_table(t: str, n: str, m: str, gg: int, psa: float, expected: str) -> None:
    assert group("prostate", t, n, m, grade_group=gg, psa=psa) == expected


def test_prostate_pathological_t2_alias() -> None:
    got = derive_stage_group("prostate", "pT2", "pN0", "cM0", grade_group=1, psa=12.0)
    assert got is not None and got.group == "IIA"  # pT2 sits with cT1-cT2a: PSA 10-<20 GG1 -> IIA
    assert got.rule == "prostate: pT2=T2a N0 M0 PSA 12.0 GG1"
    # a Grade Group read from a Quantity arrives as a float
    got = derive_stage_group("prostate", "cT1c", "cN0", "cM0", grade_group=4.0, psa=8.0)  # type: ignore[arg-type]
    assert got is not None and (got.group, got.rule) == ("IIC", "prostate: T1c N0 M0 PSA 8.0 GG4")
    # a plain clinical T2 is not aliased: it stays coarse (T2a -> I, T2b/c -> IIA)
    assert group("prostate", "T2", "N0", "M0", grade_group=1, psa=5.0) is None


def test_prostate_missing_psa_or_grade_group() -> None:
    # N1 M0 and M1 need neither PSA nor Grade Group
    assert group("prostate", "T2a", "N1", "M0") == "IVA"
    assert group("prostate", None, None, "M1c") == "IVB"
    # stage I-III needs them unless the answer cannot differ
    assert group("prostate", "T1c", "N0", "M0", grade_group=1) is None
    assert group("prostate", "T1c", "N0", "M0", psa=5.0) is None
    assert group("prostate", "T3a", "N0", "M0", psa=5.0) is None  # IIIB or IIIC depends on Grade Group
    assert group("prostate", "T3a", "N0", "M0", grade_group=2) == "IIIB"  # any PSA
    assert group("prostate", "T1c", "N0", "M0", grade_group=5) == "IIIC"  # any T, any PSA
    assert group("prostate", "T2a", "N0", "MX", grade_group=1, psa=5.0) is None
    # cT2 without a/b/c and GG1 PSA < 10 is I (T2a) or IIA (T2b/c): no shared stage
    assert group("prostate", "cT2", "N0", "M0", grade_group=1, psa=5.0) is None


def test_unknown_cancer_type() -> None:
    assert derive_stage_group("melanoma", "T1a", "N0", "M0") is None
    assert derive_stage_group("", "T1a", "N0", "M0") is None


# ---------------------------------------------------------------- Gleason / Grade Group (Epstein 2016)


@pytest.mark.parametrize(
    ("primary", "secondary", "expected"),
    [(3, 3, 1), (2, 3, 1), (3, 4, 2), (4, 3, 3), (4, 4, 4), (3, 5, 4), (5, 3, 4), (4, 5, 5), (5, 4, 5), (5, 5, 5)],
)
def test_grade_group_from_gleason(primary: int, secondary: int, expected: int) -> None:
    assert grade_group_from_gleason(primary, secondary) == expected


def test_grade_group_from_gleason_invalid() -> None:
    assert grade_group_from_gleason(6, 3) is None
    assert grade_group_from_gleason(0, 3) is None


def test_gleason_from_grade_group() -> None:
    assert gleason_from_grade_group(1) == (6, None)
    assert gleason_from_grade_group(2) == (7, None)
    assert gleason_from_grade_group(3) == (7, None)
    assert gleason_from_grade_group(4) == (8, None)
    assert gleason_from_grade_group(5) == (9, 10)
    with pytest.raises(ValueError):
        gleason_from_grade_group(6)


# ---------------------------------------------------------------- risk groups (AUA/ASTRO 2022)


@pytest.mark.parametrize(
    ("t", "gg", "psa", "expected"),
    [
        ("cT1c", 1, 5.0, "low"),
        ("T2a", 1, 9.9, "low"),
        ("T2a", 1, 10.0, "intermediate"),
        ("T2b", 1, 5.0, "intermediate"),
        ("T1c", 2, 5.0, "intermediate"),
        ("T1c", 3, 19.9, "intermediate"),
        ("T1c", 4, 5.0, "high"),
        ("T1c", 1, 20.0, "high"),
        ("T3a", 1, 4.0, "high"),
        ("T4", 1, 4.0, "high"),
        # a single high-risk feature decides even when another input is missing
        (None, 5, None, "high"),
        ("T1c", None, 25.0, "high"),
        # otherwise a missing input means no answer
        ("T1c", 1, None, None),
        (None, 2, 5.0, None),
        ("T2", 1, 5.0, None),  # T2a (low) or T2b/c (intermediate)
        ("TX", 1, 5.0, None),
    ],
)
def test_prostate_risk_group(t: str | None, gg: int | None, psa: float | None, expected: str | None) -> None:
    assert prostate_risk_group(t, gg, psa) == expected


# ---------------------------------------------------------------- data file


def test_data_file_provenance_and_citations() -> None:
    raw = json.loads(DATA.read_text())
    assert raw["_provenance"]["review"] == "demonstration; requires clinical review"
    assert raw["_provenance"]["sources"]
    for name, table in raw["tables"].items():
        assert table["citation"].strip(), name
    # mCODE STU3 example codes
    assert raw["ajcc_values"]["1222806003"] == "IIIC"
    assert raw["ajcc_values"]["1228938002"] == "cT3"
    assert raw["ajcc_values"]["1229967007"] == "cN0"
    assert raw["ajcc_values"]["1229901006"] == "cM0"
    assert raw["observations"]["snomed|399537006"] == {
        "kind": "clinical",
        "part": "group",
        "display": "Clinical TNM stage grouping (observable entity)",
    }
    assert raw["observations"]["loinc|21900-6"]["kind"] == "pathological"
    assert raw["other_systems"]["ncit|C141207"] == "Rai"
    assert raw["grade_group"]["values"]["1279718003"] == 4


def test_ingestion_reads_the_staging_codes_of_this_file() -> None:
    """The terminology loads the observation and value codes of staging.json (one reader of codes)."""
    terms = terminology()
    kind = terms.observation_kind([Code(LOINC, "21905-5")])
    assert kind is not None and (kind.kind, kind.params["kind"], kind.params["part"]) == ("staging", "clinical", "t")
    kind = terms.observation_kind([Code(SNOMED, "371497001")])
    assert kind is not None and (kind.params["kind"], kind.params["part"]) == ("pathological", "m")
    assert terms.observation_kind([Code(LOINC, "718-7")]) is None  # haemoglobin
    assert terms.ajcc_values["1229859000"] == "pT3"
    assert normalise_category(terms.ajcc_values["1229984001"], "n") == "N3"
    assert staging.normalise_stage("American Joint Committee on Cancer stage IIIC (qualifier value)") == "IIIC"
    assert staging.normalise_stage("Stage 2B") == "IIB"  # the one stage reader: ingestion's, Arabic numerals too
    assert staging.normalise_stage("stage unknown") is None
    rai = terms.observation_kind([Code(NCIT, "C141392")])
    assert rai is not None and rai.params["system"] == "R-ISS"
    figo = terms.observation_kind([Code(SNOMED, "385361009")])
    assert figo is not None and figo.params["system"] == "FIGO"
    assert terms.grade_group_values[(SNOMED, "1279720000")] == 5
    grade = terms.observation_kind([Code(SNOMED, "385377005")])
    assert grade is not None and grade.kind == "grade-group"


def _write(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    raw = json.loads(DATA.read_text())
    mutate(raw)
    path = tmp_path / "staging.json"
    path.write_text(json.dumps(raw))
    return path


def test_malformed_row_rejected(tmp_path: Path) -> None:
    def bad_category(raw: dict[str, Any]) -> None:
        raw["tables"]["lung"]["rows"][3]["t"] = ["T9z"]

    with pytest.raises(ValueError, match=r"lung.*row 3.*T9z"):
        staging.load_staging_data(_write(tmp_path, bad_category))


def test_malformed_group_and_psa_rejected(tmp_path: Path) -> None:
    def bad_group(raw: dict[str, Any]) -> None:
        raw["tables"]["colorectal"]["rows"][0]["group"] = "Stage 0"

    with pytest.raises(ValueError, match=r"colorectal.*row 0"):
        staging.load_staging_data(_write(tmp_path, bad_group))

    def bad_psa(raw: dict[str, Any]) -> None:
        raw["tables"]["prostate"]["rows"][1]["psa"] = [20, 10]

    with pytest.raises(ValueError, match=r"prostate.*row 1.*psa"):
        staging.load_staging_data(_write(tmp_path, bad_psa))

    def missing_citation(raw: dict[str, Any]) -> None:
        del raw["tables"]["breast_anatomic"]["citation"]

    with pytest.raises(ValueError, match=r"breast_anatomic.*citation"):
        staging.load_staging_data(_write(tmp_path, missing_citation))


def test_loaded_copy_is_used_not_hardcoded(tmp_path: Path) -> None:
    def relabel(raw: dict[str, Any]) -> None:
        raw["tables"]["lung"]["rows"][5]["group"] = "IIB"  # T2b N0 M0, deliberately wrong

    data = staging.load_staging_data(_write(tmp_path, relabel))
    got = staging.derive_stage_group("lung", "T2b", "N0", "M0", data=data)
    assert got is not None and got.group == "IIB"
    assert group("lung", "T2b", "N0", "M0") == "IIA"  # the cached project file is untouched
