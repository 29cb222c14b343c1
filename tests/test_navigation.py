"""Care-Navigation: position, next steps with due dates, gaps and off-pathway lines, per patient.

Expectations come from the pathway files (step order, ``timing`` on the edges, ``requires`` edges)
and from the clinical scenario, on constructed patients and on the real Synthea/mCODE records.
Dates are fixed with ``as_of``, so overdue flags do not drift with the calendar.
"""

from __future__ import annotations

from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from graph.networkx_store import NetworkXPathwayStore
from graph.queries import PathwayQueries
from services.care_navigation.contract import GapOut, NavigationOut, PathwayOut
from services.care_navigation.engine import navigate
from shared.fhir.ingest import load_path
from shared.fhir.record import PatientRecord
from tests.builders import give, patient, procedure
from tests.conftest import MCODE, requires_data, synthea

TWINS = Path(__file__).parent / "fixtures" / "twins"
NSCLC_MARKERS: dict[str, str | float] = {"EGFR": "negative", "ALK": "negative", "PD-L1": 30.0}


@pytest.fixture(scope="module")
def queries() -> PathwayQueries:
    return PathwayQueries(NetworkXPathwayStore.load())


@cache
def _real(path: Path) -> PatientRecord:
    (record,) = [r for r in load_path(path).records if r.cancers]
    return record


def _only(out: NavigationOut, pathway: str) -> PathwayOut:
    (found,) = [p for p in out.pathways if p.id == pathway]
    return found


def _position(p: PathwayOut) -> list[str]:
    return [x.step.id for x in p.position]


def _next(p: PathwayOut) -> dict[str, tuple[str | None, bool]]:
    return {s.step.id: (s.due, s.overdue) for s in p.next_steps}


def _gaps(p: PathwayOut, kind: str) -> dict[str, GapOut]:
    return {g.step.id: g for g in p.gaps if g.kind == kind}


def _stage_iii_colon_resected() -> PatientRecord:
    record = patient("colon", stage="IIIB", markers={"MSI": "negative"})
    procedure(record, "76164006", "Biopsy of colon", "biopsy", "2024-01-05")
    return procedure(record, "43075005", "Partial resection of colon", "surgery", "2024-02-01")


# -- the JSON contract ----------------------------------------------------------------------------
def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


@requires_data
def test_json_contract_keys_are_camel_case(queries: PathwayQueries) -> None:
    out = navigate(_real(synthea("Austin")), queries, as_of=date(1989, 7, 24)).to_json()  # alive then
    assert set(out) == {"patient", "asOf", "pathways", "disclaimer", "deceased"}
    assert out["asOf"] == "1989-07-24" and "not NCCN" in out["disclaimer"] and out["deceased"] is None
    (p,) = out["pathways"]
    assert set(p) == {
        "id",
        "version",
        "title",
        "status",
        "cancer",
        "cancerCode",
        "applies",
        "position",
        "nextSteps",
        "gaps",
        "offPathway",
        "citations",
    }
    assert set(p["position"][0]) == {"step", "status", "inferred", "since", "facts"}
    assert set(p["position"][0]["step"]) == {"id", "title", "kind"}
    assert set(p["position"][0]["facts"][0]) == {"source", "fact", "value", "date"}
    assert set(p["nextSteps"][0]) == {"step", "due", "overdue", "reason"}
    assert {k for g in p["gaps"] for k in g} == {"kind", "step", "reason", "evidence"}
    assert set(p["offPathway"][0]) == {"line", "regimen", "start", "sources", "reason"}
    assert set(p["citations"][0]) == {"title", "publisher", "url", "section"}
    assert set(p["cancerCode"]) == {"system", "code", "display"}
    assert not [k for k in _keys(out) if "_" in k]  # camelCase all the way down
    assert p["status"] == "demonstration" and p["applies"] == "satisfied"
    assert all(c["url"].startswith("https://") for c in p["citations"])


# -- position -------------------------------------------------------------------------------------
@requires_data
def test_real_patients_positions(queries: PathwayQueries) -> None:
    sherman = navigate(_real(synthea("Sherman")), queries, as_of=date(2013, 1, 1))
    assert {p.id for p in sherman.pathways} == {"prostate", "sclc"}
    prostate, sclc = _only(sherman, "prostate"), _only(sherman, "sclc")
    assert _position(prostate) == ["prostate.local"] and prostate.position[0].inferred  # risk group never recorded
    assert prostate.position[0].since == "2003-01-07"
    assert any(f.source == "Procedure/4be52e8c-1a95-4e79-bb9b-974f02515fe5" for f in prostate.position[0].facts)
    assert _position(sclc) == ["sclc.limited.chemoradiation"] and not sclc.position[0].inferred  # stage I = limited
    mcode = navigate(_real(MCODE), queries, as_of=date(2019, 6, 1))
    (nsclc,) = mcode.pathways
    assert _position(nsclc) == ["nsclc.advanced.first-line"] and nsclc.position[0].status == "done"
    assert {f.value for f in nsclc.position[0].facts} == {"gefitinib"}
    darin = navigate(_real(synthea("Darin")), queries, as_of=date(2020, 1, 1))
    assert _position(_only(darin, "colon")) == ["colon.workup"]


def test_position_follows_the_as_of_date(queries: PathwayQueries) -> None:
    record = _stage_iii_colon_resected()
    before = _only(navigate(record, queries, as_of=date(2024, 1, 20)), "colon")
    after = _only(navigate(record, queries, as_of=date(2024, 3, 1)), "colon")
    assert _position(before) == ["colon.biomarkers"]  # biopsy, stage and MSI on record; no surgery yet
    assert _position(after) == ["colon.surgery"] and after.position[0].since == "2024-02-01"
    assert [f.source for f in after.position[0].facts] == ["Procedure/43075005-2024-02-01"]


# -- next steps and due dates -----------------------------------------------------------------------
def test_adjuvant_chemotherapy_falls_due_eight_weeks_after_colon_resection(queries: PathwayQueries) -> None:
    record = _stage_iii_colon_resected()
    early = _only(navigate(record, queries, as_of=date(2024, 3, 1)), "colon")
    assert _next(early) == {"colon.adjuvant": ("2024-03-28", False)}  # 2024-02-01 + 8 weeks
    assert "colon.adjuvant" not in _gaps(early, "overdue")
    late = _only(navigate(record, queries, as_of=date(2024, 4, 15)), "colon")
    assert _next(late) == {"colon.adjuvant": ("2024-03-28", True)}
    gap = _gaps(late, "overdue")["colon.adjuvant"]
    assert "2024-03-28" in gap.reason and "within 8 weeks of surgery" in gap.reason


def test_lung_surveillance_every_six_months_for_two_years(queries: PathwayQueries) -> None:
    record = patient("nsclc", stage="IA", markers=NSCLC_MARKERS)
    procedure(record, "432231006", "Fine needle aspiration biopsy of lung", "biopsy", "2024-01-05")
    procedure(record, "173171007", "Lobectomy of lung", "surgery", "2024-02-01")
    after_surgery = _only(navigate(record, queries, as_of=date(2024, 6, 1)), "nsclc")
    assert _position(after_surgery) == ["nsclc.early.local"]  # stage IA: no adjuvant therapy
    assert _next(after_surgery) == {"nsclc.surveillance": ("2024-08-01", False)}
    assert after_surgery.gaps == []

    procedure(record, "169069000", "Computed tomography of chest", "imaging", "2024-08-10")
    first_ct = _only(navigate(record, queries, as_of=date(2025, 3, 1)), "nsclc")
    assert _position(first_ct) == ["nsclc.surveillance"] and first_ct.position[0].since == "2024-08-10"
    assert _next(first_ct) == {"nsclc.surveillance": ("2025-02-10", True)}  # the repeat, from the last CT
    assert "nsclc.surveillance" in _gaps(first_ct, "overdue")

    procedure(record, "169069000", "Computed tomography of chest", "imaging", "2025-08-10")
    procedure(record, "169069000", "Computed tomography of chest", "imaging", "2026-01-20")
    done = _only(navigate(record, queries, as_of=date(2026, 6, 1)), "nsclc")
    assert _next(done) == {}  # two years from surgery are over: no further CT on this schedule
    assert _gaps(done, "overdue") == {}


def test_limited_sclc_pci_and_consolidation_due_after_chemoradiation(queries: PathwayQueries) -> None:
    record = patient("sclc", stage="IIB")
    procedure(record, "173160006", "Diagnostic fiberoptic bronchoscopy", "biopsy", "2024-01-08")
    give(record, "cisplatin", "etoposide", on="2024-02-01")
    for day in ("2024-02-01", "2024-03-15"):
        procedure(record, "703423002", "Combined chemotherapy and radiation therapy", "chemoradiation", day)
    on_time = _only(navigate(record, queries, as_of=date(2024, 4, 1)), "sclc")
    assert _position(on_time) == ["sclc.limited.chemoradiation"] and on_time.position[0].since == "2024-03-15"
    assert _next(on_time) == {  # six weeks from the end of chemoradiation, not its start
        "sclc.brain": ("2024-04-26", False),
        "sclc.limited.consolidation": ("2024-04-26", False),
    }
    late = _only(navigate(record, queries, as_of=date(2024, 5, 1)), "sclc")
    assert set(_gaps(late, "overdue")) == {"sclc.brain", "sclc.limited.consolidation"}


def test_psa_surveillance_after_radiation_for_high_risk_prostate(queries: PathwayQueries) -> None:
    record = patient("prostate", gender="male", tnm=("T3a", "N0", "M0"), markers={"PSA": 25.0, "Gleason": 8.0})
    procedure(record, "65575008", "Biopsy of prostate", "biopsy", "2024-01-05")
    give(record, "leuprolide", on="2024-02-01")
    procedure(record, "33195004", "External beam radiation therapy", "radiation", "2024-03-01")
    p = _only(navigate(record, queries, as_of=date(2024, 6, 1)), "prostate")
    assert _position(p) == ["prostate.local"] and not p.position[0].inferred  # high risk, decided
    assert _next(p) == {"prostate.surveillance": ("2024-09-01", False)}
    assert p.gaps == [] and p.off_pathway == []  # ADT with radiation is the high-risk option
    later = _only(navigate(record, queries, as_of=date(2024, 10, 1)), "prostate")
    assert _next(later) == {"prostate.surveillance": ("2024-09-01", True)}


def test_metastatic_breast_palliative_referral_due(queries: PathwayQueries) -> None:
    record = patient("breast", stage="IV", markers={"ER": "positive", "PR": "positive", "HER2": "negative"})
    give(record, "letrozole", "palbociclib", on="2024-02-01")
    p = _only(navigate(record, queries, as_of=date(2024, 3, 1)), "breast")
    assert _position(p) == ["breast.metastatic.first-line"]
    assert _next(p) == {"breast.referral.palliative": ("2024-03-28", False)}
    assert p.off_pathway == []  # aromatase inhibitor + CDK4/6 inhibitor for HR+/HER2- metastatic disease
    late = _only(navigate(record, queries, as_of=date(2024, 5, 1)), "breast")
    assert "breast.referral.palliative" in _gaps(late, "overdue")


# Work-up imaging before any treatment must not read as surveillance (the walk anchors surveillance
# on a done treatment step; with none on record there is nothing to survey yet).
@pytest.mark.parametrize(
    ("cancer", "imaging", "expected_position", "expected_next"),
    [
        ("nsclc", ("169069000", "Computed tomography of chest", "imaging"), "nsclc.biomarkers", "nsclc.early.local"),
        ("colon", ("73761001", "Colonoscopy", "endoscopy"), "colon.biomarkers", "colon.surgery"),
    ],
)
def test_work_up_imaging_before_treatment_is_not_surveillance(
    queries: PathwayQueries,
    cancer: str,
    imaging: tuple[str, str, str],
    expected_position: str,
    expected_next: str,
) -> None:
    """Newly diagnosed, staged and tested, awaiting surgery: the next step is surgery, nothing is missing."""
    markers: dict[str, str | float] = NSCLC_MARKERS if cancer == "nsclc" else {"MSI": "negative"}
    record = patient(cancer, stage="IA" if cancer == "nsclc" else "IIIB", markers=markers)
    procedure(record, *imaging, "2024-01-03")
    procedure(record, "432231006" if cancer == "nsclc" else "76164006", "Biopsy", "biopsy", "2024-01-05")
    p = _only(navigate(record, queries, as_of=date(2024, 1, 20)), cancer)
    assert _position(p) == [expected_position]
    assert expected_next in _next(p)
    assert _gaps(p, "missing-prerequisite") == {}


# -- gaps ---------------------------------------------------------------------------------------------
def test_nsclc_first_line_without_biomarkers_is_a_missing_prerequisite(queries: PathwayQueries) -> None:
    def first_line(markers: dict[str, str | float] | None) -> PathwayOut:
        record = patient("nsclc", stage="IVA", markers=markers)
        procedure(record, "432231006", "Fine needle aspiration biopsy of lung", "biopsy", "2024-01-05")
        give(record, "carboplatin", "pemetrexed", "pembrolizumab", on="2024-02-01")
        return _only(navigate(record, queries, as_of=date(2024, 3, 1)), "nsclc")

    untested = first_line(None)
    assert _position(untested) == ["nsclc.advanced.first-line"]
    gap = _gaps(untested, "missing-prerequisite")["nsclc.biomarkers"]
    assert gap.step.kind == "biomarker"
    for marker in ("EGFR", "ALK", "PD-L1"):
        assert f"no {marker} result on record" in gap.reason
    assert {e.source for e in gap.evidence} == {"Condition/c1"}
    assert _next(untested)["nsclc.referral.palliative"] == ("2024-03-28", False)

    tested = first_line(NSCLC_MARKERS)
    assert _position(tested) == ["nsclc.advanced.first-line"]
    assert _gaps(tested, "missing-prerequisite") == {} and tested.off_pathway == []

    egfr_only = first_line({"EGFR": "negative"})  # as in the mCODE example: ALK and PD-L1 missing
    reason = _gaps(egfr_only, "missing-prerequisite")["nsclc.biomarkers"].reason
    assert "no ALK result" in reason and "no PD-L1 result" in reason and "no EGFR result" not in reason


def test_breast_treatment_without_receptor_status_is_a_missing_prerequisite(queries: PathwayQueries) -> None:
    def treated(markers: dict[str, str | float] | None) -> PathwayOut:
        record = patient("breast", born="1955-01-01", stage="IA", markers=markers)
        procedure(record, "24623002", "Screening mammography", "imaging", "2024-01-02")
        procedure(record, "122548005", "Biopsy of breast", "biopsy", "2024-01-05")
        procedure(record, "392021009", "Lumpectomy of breast", "surgery", "2024-02-01")
        give(record, "letrozole", on="2024-03-01")
        return _only(navigate(record, queries, as_of=date(2024, 4, 1)), "breast")

    untested = treated(None)
    assert _position(untested) == ["breast.endocrine"] and untested.position[0].inferred  # subtype unknown
    gap = _gaps(untested, "missing-prerequisite")["breast.biomarkers"]
    assert all(f"no {m} result on record" in gap.reason for m in ("ER", "PR", "HER2"))
    assert gap.step.kind == "biomarker"

    tested = treated({"ER": "positive", "PR": "positive", "HER2": "negative"})
    assert _position(tested) == ["breast.endocrine"] and not tested.position[0].inferred
    assert _gaps(tested, "missing-prerequisite") == {}
    assert _next(tested) == {"breast.surveillance": ("2025-03-01", False)}  # yearly mammography


def test_overdue_surveillance_after_adjuvant_chemotherapy(queries: PathwayQueries) -> None:
    record = _stage_iii_colon_resected()
    give(record, "oxaliplatin", "fluorouracil", "leucovorin", on="2024-03-01")
    give(record, "oxaliplatin", "fluorouracil", "leucovorin", on="2024-08-01")
    during = _only(navigate(record, queries, as_of=date(2024, 9, 1)), "colon")
    assert _position(during) == ["colon.adjuvant"] and during.position[0].since == "2024-08-01"
    assert _next(during) == {"colon.surveillance": ("2024-11-01", False)}  # 3 months after the last dose
    assert during.gaps == [] and during.off_pathway == []  # FOLFOX after resection of stage III disease

    overdue = _only(navigate(record, queries, as_of=date(2025, 6, 1)), "colon")
    gap = _gaps(overdue, "overdue")["colon.surveillance"]
    assert gap.step.kind == "surveillance" and "was due 2024-11-01" in gap.reason

    procedure(record, "418023006", "Computed tomography of chest, abdomen and pelvis", "imaging", "2024-10-20")
    scanned = _only(navigate(record, queries, as_of=date(2024, 12, 1)), "colon")
    assert _position(scanned) == ["colon.surveillance"]
    assert _next(scanned) == {"colon.surveillance": ("2025-01-20", False)} and scanned.gaps == []


def test_stage_not_recorded_is_missing_information(queries: PathwayQueries) -> None:
    unstaged = procedure(patient("nsclc"), "173171007", "Lobectomy of lung", "surgery", "2024-02-01")
    p = _only(navigate(unstaged, queries, as_of=date(2024, 3, 1)), "nsclc")
    assert _position(p) == ["nsclc.early.local"] and p.position[0].inferred
    info = _gaps(p, "missing-information")["nsclc.early.adjuvant-decision"]
    assert info.step.kind == "decision" and "stage IB" in info.reason and "stage II" in info.reason
    assert _next(p) == {"nsclc.early.adjuvant-decision": (None, False)}
    assert "nsclc.staging" in _gaps(p, "missing-prerequisite")

    staged = procedure(patient("nsclc", stage="IIA"), "173171007", "Lobectomy of lung", "surgery", "2024-02-01")
    q = _only(navigate(staged, queries, as_of=date(2024, 3, 1)), "nsclc")
    assert _gaps(q, "missing-information") == {}
    assert _next(q) == {"nsclc.early.adjuvant": ("2024-03-28", False)}  # stage II: adjuvant within 8 weeks


@requires_data
def test_lavelle_resected_colon_cancer_without_a_stage(queries: PathwayQueries) -> None:
    p = _only(navigate(_real(synthea("Lavelle")), queries, as_of=date(2020, 1, 1)), "colon")
    assert _position(p) == ["colon.surgery"]
    assert "stage III" in _gaps(p, "missing-information")["colon.adjuvant-decision"].reason
    assert {"colon.staging", "colon.biomarkers"} <= set(_gaps(p, "missing-prerequisite"))


@requires_data
def test_whitney_overdue_surveillance_after_adjuvant_folfox(queries: PathwayQueries) -> None:
    # As of mid-2016 (alive): surveillance imaging fell due in March and is overdue.
    p = _only(navigate(_real(synthea("Whitney")), queries, as_of=date(2016, 6, 1)), "colon")
    assert _position(p) == ["colon.adjuvant"] and p.position[0].since == "2015-12-22"
    assert _next(p) == {"colon.surveillance": ("2016-03-22", True)}
    assert "colon.surveillance" in _gaps(p, "overdue")
    assert {"colon.staging", "colon.biomarkers"} <= set(_gaps(p, "missing-prerequisite"))


@requires_data
def test_a_deceased_patient_gets_no_next_step_and_no_actionable_gap(queries: PathwayQueries) -> None:
    """Whitney died on 2016-11-30: read in 2020, the record ends at the death, nothing falls due."""
    out = navigate(_real(synthea("Whitney")), queries, as_of=date(2020, 1, 1))
    assert out.deceased is not None and out.deceased.date.startswith("2016-11-30") and out.as_of == "2016-11-30"
    p = _only(out, "colon")
    assert p.next_steps == [] and _gaps(p, "overdue") == {} and _gaps(p, "missing-information") == {}
    assert {"colon.staging", "colon.biomarkers"} <= set(_gaps(p, "missing-prerequisite"))  # what happened stays
    assert _position(p) == ["colon.adjuvant"]


def test_death_without_a_date_also_ends_advice(queries: PathwayQueries) -> None:
    record = patient("nsclc", stage="IVA", markers={"EGFR": "positive", "ALK": "negative", "PD-L1": 5.0})
    alive = _only(navigate(record, queries, as_of=date(2024, 3, 1)), "nsclc")
    record.patient.deceased_flag = True
    dead = navigate(record, queries, as_of=date(2024, 3, 1))
    assert alive.next_steps and dead.deceased is not None and dead.deceased.date is None
    assert _only(dead, "nsclc").next_steps == []


# -- off-pathway lines --------------------------------------------------------------------------------
@requires_data
def test_austin_cisplatin_paclitaxel_for_stage_i_is_off_pathway(queries: PathwayQueries) -> None:
    p = _only(navigate(_real(synthea("Austin")), queries, as_of=date(2026, 1, 1)), "nsclc")
    # Stage "I" without substage cannot rule out IB: the adjuvant decision is undetermined, and the
    # walk follows it to adjuvant therapy because chemotherapy is on record (inferred).
    assert _position(p) == ["nsclc.early.adjuvant"] and p.position[0].since == "1989-07-20"
    assert p.position[0].inferred
    assert _gaps(p, "missing-information") == {}  # Austin died in 1989: no decision is waiting
    (line,) = p.off_pathway
    assert line.line == 1 and line.regimen == "cisplatin + paclitaxel" and line.start.startswith("1985-07-26")
    assert line.sources and all(s.startswith("MedicationRequest/") for s in line.sources)
    # The line is judged as one regimen: only the metastatic first-line doublet gives both drugs.
    assert line.reason.startswith("cisplatin + paclitaxel matches Carboplatin or cisplatin + paclitaxel at First-line")
    assert line.reason.endswith("not met: metastatic disease")
    assert "nsclc.biomarkers" in _gaps(p, "missing-prerequisite")
    assert _next(p) == {}  # surveillance would fall due in 1990, after the death


def test_a_drug_no_pathway_offers_is_off_pathway(queries: PathwayQueries) -> None:
    record = patient("nsclc", stage="IVA", markers={"EGFR": "positive", "ALK": "negative", "PD-L1": 5.0})
    give(record, "tamoxifen", on="2024-02-01")
    (line,) = _only(navigate(record, queries, as_of=date(2024, 3, 1)), "nsclc").off_pathway
    assert line.regimen == "tamoxifen"
    assert line.reason == "tamoxifen is not an option of the Non-small cell lung cancer pathway"
    assert line.sources == ["MedicationAdministration/tamoxifen-2024-02-01"]

    on_pathway = patient("nsclc", stage="IVA", markers={"EGFR": "positive", "ALK": "negative", "PD-L1": 5.0})
    give(on_pathway, "osimertinib", on="2024-02-01")
    assert _only(navigate(on_pathway, queries, as_of=date(2024, 3, 1)), "nsclc").off_pathway == []


@requires_data
def test_off_pathway_is_judged_as_of_the_line_start(queries: PathwayQueries) -> None:
    """mCODE example: gefitinib started 2019-04-01 for stage IIIC; the brain metastasis came a month later."""
    (p,) = navigate(_real(MCODE), queries, as_of=date(2019, 6, 1)).pathways
    (line,) = p.off_pathway
    assert line.regimen == "gefitinib" and line.start == "2019-04-01"
    assert "not met: metastatic disease" in line.reason
    assert "nsclc.biomarkers" in _gaps(p, "missing-prerequisite")  # EGFR only; ALK and PD-L1 never tested


def test_second_line_fixture_bundle(queries: PathwayQueries) -> None:
    """The FHIR bundle used by the necessity and jury tests: after first line, progression only in notes."""
    out = navigate(_real(TWINS / "nsclc-second-line.json"), queries, as_of=date(2024, 8, 15))
    p = _only(out, "nsclc")
    assert _position(p) == ["nsclc.advanced.first-line"] and p.position[0].since == "2024-04-04"
    assert p.off_pathway == [] and _gaps(p, "missing-prerequisite") == {}
    assert _next(p)["nsclc.advanced.subsequent"] == (None, False)


def test_a_line_is_judged_as_the_regimens_that_give_its_drugs(queries: PathwayQueries) -> None:
    """ADT + docetaxel for metastatic hormone-sensitive prostate cancer is one standard line: the
    ADT backbone and the docetaxel option, not docetaxel matched to one regimen and leuprolide to
    another; the same line for a stage I tumour fails on the docetaxel option's setting."""
    metastatic = patient("prostate", gender="male", stage="IVB", ecog=1)
    give(metastatic, "leuprolide", "docetaxel", on="2024-02-01")
    assert _only(navigate(metastatic, queries, as_of=date(2024, 6, 1)), "prostate").off_pathway == []
    localized = patient("prostate", gender="male", stage="I", ecog=1, markers={"PSA": 5.0, "Gleason": 6.0})
    give(localized, "leuprolide", "docetaxel", on="2024-02-01")
    (line,) = _only(navigate(localized, queries, as_of=date(2024, 6, 1)), "prostate").off_pathway
    assert line.regimen == "docetaxel + leuprolide"
    docetaxel = next(part for part in line.reason.split(" | ") if part.startswith("docetaxel matches"))
    assert "metastatic" in docetaxel and "leuprolide matches" not in docetaxel
