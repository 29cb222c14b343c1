"""The CDS Services OncoTwin publishes, with the prefetch each one asks for.

CDS Hooks 2.0 gives every service entry exactly one ``hook``, so medical necessity is published twice
(``oncotwin-necessity-select`` on ``order-select``, ``oncotwin-necessity-sign`` on ``order-sign``):
one engine, two entries; only which draft orders are evaluated differs.

``required`` names the prefetch keys without which the engines could answer wrongly (no stage, no
biomarkers, no prior therapy); when a client leaves one out, the service fetches from ``fhirServer``
or answers 412. The optional keys only add evidence (notes, reports, imaging, payer coverage).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

PATIENT = "{{context.patientId}}"
_RECORD: dict[str, str] = {
    "patient": f"Patient/{PATIENT}",
    "conditions": f"Condition?patient={PATIENT}",
    "labObservations": f"Observation?patient={PATIENT}&category=laboratory",  # biomarkers, mCODE variants
    "surveyObservations": f"Observation?patient={PATIENT}&category=survey",  # mCODE TNM stage, ECOG
    "examObservations": f"Observation?patient={PATIENT}&category=exam",
    "medicationRequests": f"MedicationRequest?patient={PATIENT}",
    "medicationAdministrations": f"MedicationAdministration?patient={PATIENT}",
    "medicationStatements": f"MedicationStatement?patient={PATIENT}",  # mCODE cancer-related medications
    "procedures": f"Procedure?patient={PATIENT}",
    "imagingStudies": f"ImagingStudy?patient={PATIENT}",
    "diagnosticReports": f"DiagnosticReport?patient={PATIENT}",
    "documentReferences": f"DocumentReference?patient={PATIENT}",
}
_REQUIRED = frozenset(
    {"patient", "conditions", "labObservations", "surveyObservations", "medicationRequests", "procedures"}
)
_COVERAGE = {"coverage": f"Coverage?patient={PATIENT}&status=active"}

Kind = Literal["navigation", "necessity"]


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    kind: Kind
    title: str
    description: str
    prefetch: Mapping[str, str]
    required: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "title": self.title,
            "description": self.description,
            "id": self.id,
            "prefetch": dict(self.prefetch),
            "usageRequirements": (
                "Demonstration pathways written from public sources; not reviewed by a clinical team. "
                "Calls must carry a CDS Client JWT (RS384 or ES384) from an allow-listed issuer."
            ),
        }


_NECESSITY = (
    "Checks draft oncology orders (drugs, tests, procedures) against OncoTwin's care pathways: meets, "
    "insufficient documentation, does not meet, or on no pathway, with the deciding criteria and sources; "
    "returns the order with a Da Vinci CRD coverage-information extension as a system action."
)
SERVICES: Mapping[str, CdsService] = MappingProxyType(
    {
        s.id: s
        for s in (
            CdsService(
                id="oncotwin-navigation",
                hook="patient-view",
                kind="navigation",
                title="OncoTwin care navigation",
                description=(
                    "Where the patient stands on each applicable oncology care pathway, the next steps with due "
                    "dates, and care gaps (missing prerequisites, overdue steps, missing information)."
                ),
                prefetch=MappingProxyType(dict(_RECORD)),
                required=_REQUIRED,
            ),
            CdsService(
                id="oncotwin-necessity-select",
                hook="order-select",
                kind="necessity",
                title="OncoTwin pathway check of selected orders",
                description=_NECESSITY + " Evaluates the orders in context.selections.",
                prefetch=MappingProxyType({**_RECORD, **_COVERAGE}),
                required=_REQUIRED,
            ),
            CdsService(
                id="oncotwin-necessity-sign",
                hook="order-sign",
                kind="necessity",
                title="OncoTwin pathway check before signing",
                description=_NECESSITY + " Evaluates every draft order in context.draftOrders.",
                prefetch=MappingProxyType({**_RECORD, **_COVERAGE}),
                required=_REQUIRED,
            ),
        )
    }
)


def discovery() -> dict[str, Any]:
    return {"services": [s.to_json() for s in SERVICES.values()]}
