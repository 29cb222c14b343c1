"""Structured conditions: parsing refuses what it does not know; evaluation is three-valued."""

from __future__ import annotations

from datetime import date

import pytest

from graph.conditions import ConditionError, condition_to_json, describe, parse_condition
from graph.facts import PatientFacts, combine
from graph.model import Duration
from shared.fhir.record import CancerCondition, Code, DiseaseStatus, PerformanceStatus
from tests.builders import give, patient, procedure, t


def _status(record, condition: dict, **kw) -> str:  # type: ignore[no-untyped-def]
    return PatientFacts(record, record.cancers[0], **kw).evaluate(parse_condition(condition)).status


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fact": "stagee", "in": ["I"]}, "unknown fact 'stagee'"),
        ({"fact": "stage", "in": ["V"]}, "'V' is not a valid value"),
        ({"fact": "stage"}, "needs 'in'"),
        ({"fact": "biomarker", "name": "EGFR", "status": ["pos"]}, "'pos' is not one of"),
        ({"fact": "biomarker", "name": "EGFR", "colour": "red"}, "unexpected key(s) colour"),
        ({"fact": "performance", "ecog_max": 1.5}, "an integer is required"),
        ({"fact": "age"}, "needs at least one of"),
        ({"all": []}, "non-empty list"),
        ({"any": [{"fact": "sex", "is": "other"}]}, "any[0].is: 'other' is not one of"),
        ({"fact": "procedure", "codes": [{"system": "local", "code": "12345"}]}, "not one of snomed"),
        ("stage I", "a condition is a mapping"),
        ({"fact": "stage", "in": ["I"], "text": "progression"}, "list of search terms"),
    ],
)
def test_malformed_conditions_are_refused_with_the_place(data: object, message: str) -> None:
    with pytest.raises(ConditionError) as err:
        parse_condition(data, "edges[3].when")
    assert message in str(err.value) and str(err.value).startswith("edges[3].when")


def test_round_trip_and_description() -> None:
    data = {
        "all": [
            {"fact": "biomarker", "name": "PD-L1", "min": 50},
            {"not": {"fact": "therapy", "drugs": ["osimertinib"], "max_lines": 0}},
            {"fact": "procedure", "codes": [{"system": "http://snomed.info/sct", "code": "173171007"}]},
        ],
        "label": "",
    }
    cond = parse_condition(data)
    assert parse_condition(condition_to_json(cond)) == cond
    assert describe(cond) == (
        "(PD-L1 >= 50 and not prior osimertinib (at most 0 line(s)) and procedure done: 173171007)"
    )
    assert describe(parse_condition({"fact": "stage", "in": ["I"], "label": "early"})) == "early"


@pytest.mark.parametrize(
    ("stage", "wanted", "expected"),
    [
        ("IIIB", ["III"], "satisfied"),
        ("II", ["I"], "unsatisfied"),  # 'I' never covers 'II'
        ("IV", ["I"], "unsatisfied"),
        ("IA2", ["IA"], "satisfied"),
        ("IB", ["IA"], "unsatisfied"),
        (None, ["I"], "unknown"),
    ],
)
def test_stage_groups_match_by_group_not_by_string_prefix(stage: str | None, wanted: list[str], expected: str) -> None:
    assert _status(patient("nsclc", stage=stage), {"fact": "stage", "in": wanted}) == expected


def test_sclc_stage_maps_to_limited_or_extensive() -> None:
    assert _status(patient("sclc", stage="IIIA"), {"fact": "stage", "in": ["limited"]}) == "satisfied"
    assert _status(patient("sclc", stage="IVB"), {"fact": "stage", "in": ["extensive"]}) == "satisfied"
    assert _status(patient("sclc", stage="IVB"), {"fact": "stage", "in": ["limited"]}) == "unsatisfied"


def test_biomarker_untested_is_unknown_not_negative() -> None:
    rec = patient("nsclc", markers={"EGFR": "negative", "PD-L1": 55.0})
    assert _status(rec, {"fact": "biomarker", "name": "EGFR", "status": ["positive"]}) == "unsatisfied"
    assert _status(rec, {"fact": "biomarker", "name": "ALK", "status": ["negative"]}) == "unknown"
    assert _status(rec, {"fact": "biomarker", "name": "PD-L1", "min": 50}) == "satisfied"
    assert _status(rec, {"fact": "biomarker", "name": "PD-L1", "max": 49}) == "unsatisfied"
    assert _status(rec, {"fact": "biomarker", "name": "egfr"}) == "satisfied"  # tested; names are case-blind
    # a quantity bound on a result reported only as positive/negative cannot be decided
    assert _status(rec, {"fact": "biomarker", "name": "EGFR", "min": 1}) == "unknown"


def test_the_latest_result_decides() -> None:
    rec = patient("breast", markers={"HER2": "negative"})
    cancer = rec.cancers[0]
    later = cancer.biomarkers[0]
    cancer.biomarkers.append(type(later)("HER2", "positive", t("2024-06-01"), later.code, "Observation/her2-retest"))
    assert _status(rec, {"fact": "biomarker", "name": "HER2", "status": ["positive"]}) == "satisfied"
    assert _status(rec, {"fact": "biomarker", "name": "HER2", "status": ["positive"]}, as_of=date(2024, 3, 1)) == (
        "unsatisfied"
    )


def test_metastatic_from_stage_tnm_or_secondary_cancer() -> None:
    assert _status(patient("nsclc", stage="IVA"), {"fact": "metastatic", "is": True}) == "satisfied"
    assert _status(patient("nsclc", stage="IIB"), {"fact": "metastatic", "is": True}) == "unsatisfied"
    assert _status(patient("nsclc"), {"fact": "metastatic", "is": True}) == "unknown"
    assert _status(patient("colon", tnm=("T3", "N1", "M1a")), {"fact": "metastatic", "is": False}) == "unsatisfied"
    rec = patient("nsclc", stage="IIIA")
    rec.cancers.append(
        CancerCondition(
            "Condition/brain", Code("http://snomed.info/sct", "94225005"), "other", "secondary", t("2024-05-01")
        )
    )
    assert _status(rec, {"fact": "metastatic", "is": True}) == "satisfied"
    assert _status(rec, {"fact": "metastatic", "is": True}, as_of=date(2024, 4, 1)) == "unsatisfied"
    assert _status(patient("colon", role="secondary"), {"fact": "metastatic", "is": True}) == "satisfied"


def test_tnm_prefixes() -> None:
    rec = patient("prostate", tnm=("cT3a", "N0", None))
    assert _status(rec, {"fact": "tnm", "t": ["T3", "T4"]}) == "satisfied"
    assert _status(rec, {"fact": "tnm", "t": ["T1", "T2a"]}) == "unsatisfied"
    assert _status(rec, {"fact": "tnm", "m": ["M1"]}) == "unknown"


def test_performance_age_sex() -> None:
    rec = patient("breast", ecog=2, born="1950-06-15", gender="female")
    assert _status(rec, {"fact": "performance", "ecog_max": 1}) == "unsatisfied"
    assert _status(rec, {"fact": "performance", "ecog_max": 2}) == "satisfied"
    rec.performance.append(PerformanceStatus("Karnofsky", 90, t("2024-05-01"), "Observation/kps"))
    assert _status(rec, {"fact": "performance", "ecog_max": 0}) == "satisfied"  # KPS 90 ~ ECOG 0, and later
    assert _status(rec, {"fact": "age", "min": 74}, as_of=date(2024, 6, 14)) == "unsatisfied"  # 73 the day before
    assert _status(rec, {"fact": "age", "min": 74}, as_of=date(2024, 6, 15)) == "satisfied"
    assert _status(rec, {"fact": "sex", "is": "male"}) == "unsatisfied"
    assert _status(patient("nsclc", ecog=None), {"fact": "performance", "ecog_max": 2}) == "unknown"


def test_therapy_is_per_cancer_and_counts_lines() -> None:
    rec = give(patient("nsclc", stage="IV"), "carboplatin", "pemetrexed", on="2024-02-01")
    give(rec, "docetaxel", on="2024-09-01")
    assert _status(rec, {"fact": "therapy", "classes": ["chemotherapy"]}) == "satisfied"
    assert _status(rec, {"fact": "therapy", "drugs": ["osimertinib"]}) == "unsatisfied"
    assert _status(rec, {"fact": "therapy", "min_lines": 2}) == "satisfied"
    assert _status(rec, {"fact": "therapy", "min_lines": 2}, as_of=date(2024, 8, 1)) == "unsatisfied"
    second_line = "MedicationAdministration/docetaxel-2024-09-01"
    assert _status(rec, {"fact": "therapy", "max_lines": 1}, exclude=[second_line]) == "satisfied"


def test_procedures_belong_to_the_cancer_they_precede() -> None:
    rec = patient("nsclc", onset="2024-01-10")
    procedure(rec, "432231006", "Fine needle aspiration biopsy of lung", "biopsy", "2023-12-20")  # led to diagnosis
    procedure(rec, "73761001", "Colonoscopy", "endoscopy", "2020-05-01")  # years before: not this cancer's
    assert _status(rec, {"fact": "procedure", "categories": ["biopsy"]}) == "satisfied"
    assert _status(rec, {"fact": "procedure", "categories": ["endoscopy"]}) == "unsatisfied"


def test_disease_status_and_free_text_terms() -> None:
    rec = patient("nsclc", stage="IV")
    cond = {"fact": "disease_status", "in": ["progression"], "text": ["progressive disease"]}
    facts = PatientFacts(rec, rec.cancers[0])
    unknown = facts.evaluate(parse_condition(cond))
    assert unknown.status == "unknown" and unknown.text == ("progressive disease",)
    worsened = Code("http://snomed.info/sct", "271299001")
    rec.disease_status.append(DiseaseStatus(worsened, t("2024-04-01"), "Observation/ds"))
    assert _status(rec, cond) == "satisfied"


def test_kleene_logic() -> None:
    facts = PatientFacts(patient("nsclc", stage="IV"), patient("nsclc", stage="IV").cancers[0])
    sat = facts.evaluate(parse_condition({"fact": "stage", "in": ["IV"]}))
    unsat = facts.evaluate(parse_condition({"fact": "stage", "in": ["I"]}))
    unk = facts.evaluate(parse_condition({"fact": "biomarker", "name": "ALK", "status": ["positive"]}))
    assert combine("all", "", [sat, unk]).status == "unknown"
    assert combine("all", "", [unsat, unk]).status == "unsatisfied"
    assert combine("any", "", [sat, unk]).status == "satisfied"
    assert combine("any", "", [unsat, unk]).status == "unknown"
    assert facts.evaluate(parse_condition({"not": {"fact": "biomarker", "name": "ALK"}})).status == "unknown"


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        ("P4W", date(2024, 1, 31), date(2024, 2, 28)),
        ("P1M", date(2024, 1, 31), date(2024, 2, 29)),  # clamps to the month's last day
        ("P6M", date(2023, 8, 31), date(2024, 2, 29)),
        ("P2Y", date(2024, 2, 29), date(2026, 2, 28)),
        ("P10D", date(2024, 12, 25), date(2025, 1, 4)),
    ],
)
def test_durations_are_calendar_aware(text: str, start: date, expected: date) -> None:
    assert Duration.parse(text).after(start) == expected


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="P<n>D"):
        Duration.parse("6 months")
