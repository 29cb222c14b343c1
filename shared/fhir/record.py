"""The typed, FHIR-free view of one patient that every twin reads.

Ingestion (``shared.fhir.ingest``) builds it; engines never look at raw FHIR again. Every fact
keeps a ``source`` (``Type/id``) so that decisions can cite the resource they stand on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
AJCC = "http://cancerstaging.org"
ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
HGNC = "http://www.genenames.org"
CPT = "http://www.ama-assn.org/go/cpt"
# A project-local system for drug ingredient names ("pembrolizumab"): pathway items and orders meet
# on the ingredient when no RxNorm CUI is known for it (no public code list to copy it from).
INGREDIENT = "urn:oncotwin:ingredient"
# Likewise for tests: a test item and a ServiceRequest meet on the marker tested ("EGFR"), whatever
# LOINC or CPT code the order uses (each lab codes its own EGFR assay).
MARKER = "urn:oncotwin:marker"


@dataclass(frozen=True, slots=True)
class Code:
    system: str
    code: str
    display: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.system, self.code)


@dataclass(frozen=True, slots=True, order=True)
class FhirTime:
    """A FHIR date/dateTime/instant: sorts by its instant, prints as the source wrote it.

    Date-only and partial values ("2019", "2019-04") sort at the start of that period in UTC.
    """

    instant: datetime
    text: str = field(compare=False)

    @staticmethod
    def parse(value: str | None) -> FhirTime | None:
        if not value or not isinstance(value, str):
            return None
        text = value.strip()
        try:
            if len(text) == 4:
                instant = datetime(int(text), 1, 1, tzinfo=UTC)
            elif len(text) == 7:
                instant = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
            elif len(text) == 10:
                instant = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
            else:
                instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
                if instant.tzinfo is None:
                    instant = instant.replace(tzinfo=UTC)
        except ValueError:
            return None
        return FhirTime(instant, text)

    @property
    def day(self) -> date:
        return self.instant.date()

    def __str__(self) -> str:
        return self.text


Role = Literal["primary", "secondary"]


@dataclass(slots=True)
class StageAssessment:
    """One staging fact: a stage group and/or TNM categories at a point in time.

    ``system`` is "AJCC" for TNM staging (groups and categories); other systems (Rai, Binet, FIGO,
    ISS...) are kept as facts of the record but never answer an AJCC stage question. A group
    computed from T/N/M says so: ``derived_from`` names the observations and ``rule`` the table row.
    """

    stage: str | None  # normalised group, e.g. "I", "IIIC", "IV", "limited", "extensive"
    date: FhirTime | None
    kind: str  # clinical | pathological | summary | condition-code
    source: str
    t: str | None = None
    n: str | None = None
    m: str | None = None
    code: Code | None = None
    cancer_source: str | None = None  # the Condition it stages, when the data says so
    system: str = "AJCC"
    element: str = ""  # where the value was read: "Observation.valueCodeableConcept", "Condition.stage.summary"
    derived_from: tuple[str, ...] = ()
    rule: str | None = None
    result_status: str | None = None  # final | amended | corrected | preliminary

    @property
    def derived(self) -> bool:
        return bool(self.derived_from)


@dataclass(slots=True)
class BiomarkerResult:
    name: str  # normalised marker name: ER, PR, HER2, EGFR, ALK, ROS1, PD-L1, MSI, KRAS, BRAF, PSA...
    status: str  # positive | negative | equivocal | indeterminate | measured
    date: FhirTime | None
    code: Code
    source: str
    value: str | None = None  # the reported value as text ("3+", "55 %", "4.2 ng/mL", "HGVS ...")
    quantity: float | None = None
    unit: str | None = None
    cancer_source: str | None = None
    element: str = ""  # where the value was read, e.g. "Observation.component[48005-3]"
    derived_from: tuple[str, ...] = ()  # e.g. a Gleason score computed from a Grade Group
    result_status: str | None = None
    issued: FhirTime | None = None

    @property
    def derived(self) -> bool:
        return bool(self.derived_from)


@dataclass(slots=True)
class PendingResult:
    """A result that was ordered or started but has no value yet (registered, preliminary)."""

    name: str
    status: str
    date: FhirTime | None
    source: str


@dataclass(slots=True)
class Finding:
    """A tumour fact that is neither a stage nor a biomarker: size, histologic grade, comorbidity."""

    kind: str  # tumour-size | histologic-grade | comorbidity
    code: Code
    value: str | None
    date: FhirTime | None
    source: str
    element: str = ""


@dataclass(slots=True)
class RiskGroup:
    """A risk group derived from other facts (prostate: T category, Grade Group and PSA)."""

    group: str  # low | intermediate | high
    scheme: str  # the published scheme the rule follows
    derived_from: tuple[str, ...]
    date: FhirTime | None


@dataclass(slots=True)
class CancerCondition:
    source: str
    code: Code
    cancer_type: str  # nsclc, sclc, lung, colon, rectum, prostate, breast, other...
    role: Role
    onset: FhirTime | None
    abatement: FhirTime | None = None
    clinical_status: str | None = None
    verification_status: str | None = None
    body_site: Code | None = None
    histology: Code | None = None
    related_primary: str | None = None  # secondary -> its primary Condition
    stages: list[StageAssessment] = field(default_factory=list)
    biomarkers: list[BiomarkerResult] = field(default_factory=list)
    recognised_by: str = "code"  # code | profile | text: how we knew it was a cancer
    merged_sources: tuple[str, ...] = ()  # other Conditions recording the same cancer
    type_from: str = "Condition.code"  # the element that gave the cancer type (code, histology, bodySite)
    risk_group: RiskGroup | None = None
    histology_from: str | None = None  # the element the histology came from


@dataclass(slots=True)
class ConditionFact:
    """A non-cancer condition, or a cancer-related situation such as 'suspected lung cancer'."""

    source: str
    code: Code
    onset: FhirTime | None
    abatement: FhirTime | None
    clinical_status: str | None
    oncology_related: bool = False


@dataclass(slots=True)
class PerformanceStatus:
    scale: Literal["ECOG", "Karnofsky"]
    value: int
    date: FhirTime | None
    source: str
    element: str = ""


@dataclass(slots=True)
class DiseaseStatus:
    code: Code
    date: FhirTime | None
    source: str
    cancer_source: str | None = None
    element: str = ""


@dataclass(slots=True)
class MedicationEvent:
    """A MedicationRequest, MedicationAdministration or MedicationStatement."""

    source: str
    kind: Literal["request", "administration", "statement"]
    code: Code
    ingredients: tuple[str, ...]  # normalised ingredient names, e.g. ("cisplatin",)
    drug_class: str | None  # chemotherapy | targeted | immunotherapy | hormonal | supportive | None
    status: str | None
    start: FhirTime | None
    end: FhirTime | None = None
    intent: str | None = None
    reasons: tuple[str, ...] = ()  # Condition references, resolved to Type/id
    identified_by: str = ""  # the element the drug was identified from ("medicationReference -> Medication.code")
    non_oncologic_reason: str | None = None  # a dual-use drug given for a condition that is not a cancer

    @property
    def antineoplastic(self) -> bool:
        return self.non_oncologic_reason is None and self.drug_class in {
            "chemotherapy",
            "targeted",
            "immunotherapy",
            "hormonal",
        }


@dataclass(slots=True)
class ProcedureEvent:
    source: str
    code: Code
    category: str  # surgery | radiation | chemoradiation | imaging | biopsy | endoscopy | other
    start: FhirTime | None
    end: FhirTime | None
    status: str | None
    reasons: tuple[str, ...] = ()
    body_site: Code | None = None
    sessions: int | None = None  # a radiotherapy course summary's number of fractions
    modality: str | None = None  # a radiotherapy course summary's modality


@dataclass(slots=True)
class EncounterEvent:
    source: str
    code: Code | None
    encounter_class: str | None
    start: FhirTime | None
    end: FhirTime | None


@dataclass(slots=True)
class ImagingEvent:
    """An ImagingStudy or an imaging DiagnosticReport."""

    source: str
    date: FhirTime | None
    modalities: tuple[str, ...]
    body_sites: tuple[str, ...]
    description: str | None
    code: Code | None = None
    conclusion: str | None = None


@dataclass(slots=True)
class ReportEvent:
    """A non-imaging DiagnosticReport kept for the record (pathology, genomics, labs with text)."""

    source: str
    code: Code
    category: str | None
    date: FhirTime | None
    conclusion: str | None
    results: tuple[str, ...] = ()


@dataclass(slots=True)
class ClinicalNote:
    source: str  # DocumentReference/id or DiagnosticReport/id
    date: FhirTime | None
    type: Code | None
    text: str
    content_type: str


@dataclass(slots=True)
class Order:
    """A draft/active order that a necessity review may be asked about."""

    reference: str  # MedicationRequest/id or ServiceRequest/id
    code: Code
    status: str | None
    intent: str | None
    authored: FhirTime | None
    reasons: tuple[str, ...] = ()
    ingredients: tuple[str, ...] = ()
    codes: tuple[Code, ...] = ()  # every coding of the ordered item (LOINC and CPT, product and ingredient)


@dataclass(frozen=True, slots=True)
class IngestIssue:
    """A problem with one resource; in lenient mode the rest of the input is still used."""

    severity: Literal["error", "warning"]
    resource_type: str | None
    resource_id: str | None
    path: str  # where in the input: "Bundle.entry[12].resource" or "Condition.000.ndjson:41"
    message: str

    def to_json(self) -> dict[str, str | None]:
        return {
            "severity": self.severity,
            "resourceType": self.resource_type,
            "id": self.resource_id,
            "path": self.path,
            "message": self.message,
        }


@dataclass(slots=True)
class Demographics:
    id: str
    birth_date: FhirTime | None
    gender: str | None
    deceased: FhirTime | None = None
    source: str = ""
    deceased_flag: bool = False  # deceasedBoolean true (a death without a date)

    @property
    def is_deceased(self) -> bool:
        return self.deceased is not None or self.deceased_flag


@dataclass(slots=True)
class PatientRecord:
    patient: Demographics
    cancers: list[CancerCondition] = field(default_factory=list)
    conditions: list[ConditionFact] = field(default_factory=list)
    stages: list[StageAssessment] = field(default_factory=list)  # every staging fact, linked or not
    biomarkers: list[BiomarkerResult] = field(default_factory=list)
    pending: list[PendingResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    performance: list[PerformanceStatus] = field(default_factory=list)
    disease_status: list[DiseaseStatus] = field(default_factory=list)
    medications: list[MedicationEvent] = field(default_factory=list)
    procedures: list[ProcedureEvent] = field(default_factory=list)
    encounters: list[EncounterEvent] = field(default_factory=list)
    imaging: list[ImagingEvent] = field(default_factory=list)
    reports: list[ReportEvent] = field(default_factory=list)
    notes: list[ClinicalNote] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    issues: list[IngestIssue] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.patient.id

    def cancers_by_source(self) -> dict[str, CancerCondition]:
        """Every Condition reference that records a cancer (merged duplicates too) -> that cancer."""
        return {s: c for c in self.cancers for s in (c.source, *c.merged_sources)}


def latest_cancer_before(cancers: list[CancerCondition], when: FhirTime | None) -> CancerCondition | None:
    """The cancer most recently diagnosed on or before ``when``: the default owner of a fact
    (a stage, a marker, a drug) that does not say which cancer it is about."""
    if when is None:
        return None
    dated = [(c.onset, c) for c in cancers if c.onset is not None and c.onset <= when]
    return max(dated, key=lambda pair: pair[0])[1] if dated else None
