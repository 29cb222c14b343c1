"""Lines-of-therapy rules on small hand-made records (each rule can fail on its own)."""

from __future__ import annotations

from shared.fhir.record import SNOMED, CancerCondition, Code, Demographics, FhirTime, MedicationEvent, PatientRecord
from shared.terminology import terminology
from shared.therapy_lines import lines_of_therapy


def _record(*exposures: tuple[str, str], cancers=("nsclc",)) -> PatientRecord:
    rec = PatientRecord(Demographics("p", None, None))
    for i, cancer_type in enumerate(cancers):
        rec.cancers.append(
            CancerCondition(f"Condition/c{i}", Code(SNOMED, "x"), cancer_type, "primary", FhirTime.parse("2019-01-01"))
        )
    for n, (day, drug) in enumerate(exposures):
        ingredients, drug_class = terminology().drugs_in([], drug)
        rec.medications.append(
            MedicationEvent(
                f"MedicationAdministration/m{n}",
                "administration",
                Code("", "", drug),
                ingredients,
                drug_class,
                "completed",
                FhirTime.parse(day),
            )
        )
    return rec


def summary(rec: PatientRecord) -> list[tuple[int, str, str, str]]:
    return [(line.line, line.regimen, line.start.text, line.end.text) for line in lines_of_therapy(rec)]


def test_drugs_given_together_are_one_line_and_cycles_extend_it():
    rec = _record(
        ("2020-01-01", "cisplatin"),
        ("2020-01-02", "pemetrexed"),
        ("2020-01-22", "cisplatin"),
        ("2020-01-22", "pemetrexed"),
        ("2020-02-12", "pemetrexed"),
    )
    assert summary(rec) == [(1, "cisplatin + pemetrexed", "2020-01-01", "2020-02-12")]


def test_new_drug_after_the_regimen_window_starts_the_next_line():
    rec = _record(("2020-01-01", "carboplatin"), ("2020-01-01", "paclitaxel"), ("2020-05-01", "osimertinib"))
    assert [(n, r) for n, r, *_ in summary(rec)] == [(1, "carboplatin + paclitaxel"), (2, "osimertinib")]


def test_drug_added_within_the_window_joins_the_regimen():
    rec = _record(("2020-01-01", "carboplatin"), ("2020-01-20", "pembrolizumab"), ("2020-02-10", "pembrolizumab"))
    assert [(n, r) for n, r, *_ in summary(rec)] == [(1, "carboplatin + pembrolizumab")]


def test_dropping_a_drug_is_the_same_line_but_a_long_gap_is_not():
    rec = _record(
        ("2020-01-01", "cisplatin"),
        ("2020-01-01", "etoposide"),
        ("2020-02-01", "etoposide"),
        ("2020-12-01", "etoposide"),
    )
    assert [(n, r, s) for n, r, s, _ in summary(rec)] == [
        (1, "cisplatin + etoposide", "2020-01-01"),
        (2, "etoposide", "2020-12-01"),
    ]


def test_supportive_and_unknown_drugs_never_make_a_line():
    rec = _record(("2020-01-01", "ondansetron"), ("2020-01-01", "acetaminophen"))
    assert summary(rec) == []


def test_lines_are_numbered_per_cancer():
    rec = _record(("2019-02-01", "leuprolide"), ("2021-03-01", "trastuzumab"), cancers=("prostate",))
    rec.cancers.append(
        CancerCondition("Condition/b", Code(SNOMED, "y"), "breast", "primary", FhirTime.parse("2021-01-01"))
    )
    lines = lines_of_therapy(rec)
    assert [(line.line, line.regimen, line.cancer_source) for line in lines] == [
        (1, "leuprolide", "Condition/c0"),
        (1, "trastuzumab", "Condition/b"),
    ]
