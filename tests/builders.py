"""Small, explicit PatientRecord builders for constructed clinical scenarios."""

from __future__ import annotations

from shared.fhir.record import (
    LOINC,
    RXNORM,
    SNOMED,
    BiomarkerResult,
    CancerCondition,
    ClinicalNote,
    Code,
    Demographics,
    DiseaseStatus,
    FhirTime,
    MedicationEvent,
    Order,
    PatientRecord,
    PerformanceStatus,
    ProcedureEvent,
    StageAssessment,
)
from shared.terminology import terminology

CANCER_CODES = {
    "nsclc": Code(SNOMED, "254637007", "Non-small cell lung cancer"),
    "sclc": Code(SNOMED, "254632001", "Small cell carcinoma of lung"),
    "colon": Code(SNOMED, "363406005", "Malignant tumor of colon"),
    "prostate": Code(SNOMED, "399068003", "Malignant tumor of prostate"),
    "breast": Code(SNOMED, "254837009", "Malignant neoplasm of breast"),
    "lung": Code(SNOMED, "363358000", "Malignant tumor of lung"),
    "rectum": Code(SNOMED, "363351006", "Malignant tumor of rectum"),
}


def t(text: str) -> FhirTime:
    value = FhirTime.parse(text)
    assert value is not None
    return value


def patient(
    cancer_type: str,
    *,
    gender: str = "female",
    born: str = "1960-05-01",
    onset: str = "2024-01-10",
    stage: str | None = None,
    tnm: tuple[str | None, str | None, str | None] | None = None,
    markers: dict[str, str | float] | None = None,
    ecog: int | None = None,
    role: str = "primary",
) -> PatientRecord:
    """One patient with one cancer. ``markers``: name -> status ("positive") or a quantity (55.0)."""
    cancer = CancerCondition(
        source="Condition/c1",
        code=CANCER_CODES[cancer_type],
        cancer_type=cancer_type,
        role=role,  # type: ignore[arg-type]
        onset=t(onset),
    )
    if stage or tnm:
        t_, n_, m_ = tnm or (None, None, None)
        cancer.stages.append(
            StageAssessment(
                stage, t(onset), "clinical", "Observation/stage1", t=t_, n=n_, m=m_, cancer_source="Condition/c1"
            )
        )
    for i, (name, value) in enumerate((markers or {}).items()):
        quantity = float(value) if isinstance(value, int | float) else None
        status = "measured" if quantity is not None else str(value)
        cancer.biomarkers.append(
            BiomarkerResult(
                name,
                status,
                t(onset),
                Code(LOINC, "0000-0", name),
                f"Observation/m{i}",
                value=str(value),
                quantity=quantity,
                cancer_source="Condition/c1",
            )
        )
    rec = PatientRecord(Demographics("p1", t(born), gender, source="Patient/p1"), cancers=[cancer])
    rec.stages = list(cancer.stages)
    rec.biomarkers = list(cancer.biomarkers)
    if ecog is not None:
        rec.performance.append(PerformanceStatus("ECOG", ecog, t(onset), "Observation/ecog"))
    return rec


def give(rec: PatientRecord, *drugs: str, on: str, source: str | None = None) -> PatientRecord:
    """Record an administration of each drug (by ingredient name) on a date."""
    terms = terminology()
    for name in drugs:
        drug = terms.drug_by_name(name)
        assert drug is not None, name
        rec.medications.append(
            MedicationEvent(
                source or f"MedicationAdministration/{name}-{on}",
                "administration",
                Code(RXNORM, drug.rxcuis[0] if drug.rxcuis else "0", name),
                (drug.name,),
                drug.drug_class,
                "completed",
                t(on),
            )
        )
    return rec


def procedure(rec: PatientRecord, code: str, display: str, category: str, on: str) -> PatientRecord:
    rec.procedures.append(
        ProcedureEvent(f"Procedure/{code}-{on}", Code(SNOMED, code, display), category, t(on), t(on), "completed")
    )
    return rec


def order_for(drug: str, on: str = "2024-03-01", reference: str = "MedicationRequest/o1") -> Order:
    found = terminology().drug_by_name(drug)
    assert found is not None, drug
    code = Code(RXNORM, found.rxcuis[0] if found.rxcuis else "0", drug)
    return Order(reference, code, "draft", "order", t(on), (), (found.name,))


# mCODE CancerDiseaseStatus values (SNOMED CT), by the word the pathway conditions use.
DISEASE_STATUS_CODES = {
    "progression": Code(SNOMED, "271299001", "Patient's condition worsened"),
    "stable": Code(SNOMED, "359746009", "Patient's condition stable"),
    "response": Code(SNOMED, "268910001", "Patient's condition improved"),
}


def disease_status(rec: PatientRecord, status: str, on: str, source: str | None = None) -> PatientRecord:
    """Record a coded disease status (progression, stable, response) for the first cancer."""
    rec.disease_status.append(
        DiseaseStatus(DISEASE_STATUS_CODES[status], t(on), source or f"Observation/status-{on}", rec.cancers[0].source)
    )
    return rec


def note(rec: PatientRecord, text: str, on: str, source: str | None = None) -> PatientRecord:
    """A plain-text clinical note (a progress note), the only place some facts are written."""
    kind = Code(LOINC, "11506-3", "Progress note")
    rec.notes.append(ClinicalNote(source or f"DocumentReference/note-{on}", t(on), kind, text, "text/plain"))
    return rec


def service_request(
    code: str, display: str, on: str = "2024-03-01", reference: str = "ServiceRequest/s1", system: str = LOINC
) -> Order:
    """An order for a test or procedure (a ServiceRequest), coded in LOINC or SNOMED CT."""
    return Order(reference, Code(system, code, display), "active", "order", t(on), ())
