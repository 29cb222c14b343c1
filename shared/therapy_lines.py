"""Lines of therapy from antineoplastic medication exposures.

Rules (documented in the README; tunable per call):
- a line starts with the first exposure; every drug first given within ``regimen_window_days``
  (28) of the line's start belongs to its regimen (paclitaxel + cisplatin given together = one line);
- after that window, a drug not in the regimen starts the next line (dropping a drug does not:
  that is de-escalation within the line);
- a gap of ``gap_days`` (180) or more with no exposure also starts a new line, even with the same
  drugs (re-treatment after a break);
- lines are computed per cancer: an exposure belongs to the cancer its order names as reason, else
  to the most recent cancer diagnosed on or before it. Supportive drugs never make a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.fhir.record import CancerCondition, FhirTime, MedicationEvent, PatientRecord, latest_cancer_before

EXCLUDED_STATUSES = {"entered-in-error", "cancelled", "draft", "not-taken"}


@dataclass(slots=True)
class TherapyLine:
    line: int
    cancer_source: str | None
    start: FhirTime
    end: FhirTime
    drugs: list[str]
    drug_classes: list[str]
    exposures: int
    sources: list[str] = field(default_factory=list)

    @property
    def regimen(self) -> str:
        return " + ".join(self.drugs)


class CancerFinder:
    """Which cancer an exposure treats: its stated reason, else the latest diagnosed before it."""

    def __init__(self, record: PatientRecord) -> None:
        self.by_source = record.cancers_by_source()
        self.stage_owner = {s.source: s.cancer_source for s in record.stages if s.cancer_source}
        # Primaries own treatments; a record with only a secondary cancer gives them to it.
        self.primaries = [c for c in record.cancers if c.role == "primary"] or list(record.cancers)

    def __call__(self, med: MedicationEvent) -> CancerCondition | None:
        for reason in med.reasons:
            owner = self.by_source.get(reason) or self.by_source.get(self.stage_owner.get(reason, ""))
            if owner is not None:
                return owner
        return latest_cancer_before(self.primaries, med.start)


def lines_of_therapy(record: PatientRecord, *, regimen_window_days: int = 28, gap_days: int = 180) -> list[TherapyLine]:
    exposures = sorted(
        (
            m
            for m in record.medications
            if m.antineoplastic and m.start is not None and m.status not in EXCLUDED_STATUSES
        ),
        key=lambda m: m.start,  # type: ignore[arg-type,return-value]
    )
    cancer_for = CancerFinder(record)
    per_cancer: dict[str | None, list[MedicationEvent]] = {}
    for med in exposures:
        cancer = cancer_for(med)
        per_cancer.setdefault(cancer.source if cancer else None, []).append(med)

    lines: list[TherapyLine] = []
    for cancer_source, meds in per_cancer.items():
        current: TherapyLine | None = None
        last_seen: FhirTime | None = None
        number = 0
        for med in meds:
            start = med.start
            assert start is not None  # filtered above
            new_drugs = [d for d in med.ingredients if current is None or d not in current.drugs]
            in_window = current is not None and (start.instant - current.start.instant).days <= regimen_window_days
            gap = last_seen is not None and (start.instant - last_seen.instant).days >= gap_days
            if current is None or gap or (new_drugs and not in_window):
                number += 1
                current = TherapyLine(number, cancer_source, start, med.end or start, [], [], 0)
                lines.append(current)
                new_drugs = list(med.ingredients)
            current.drugs = sorted({*current.drugs, *new_drugs})
            if med.drug_class and med.drug_class not in current.drug_classes:
                current.drug_classes.append(med.drug_class)
            current.exposures += 1
            current.sources.append(med.source)
            current.end = max(current.end, med.end or start)
            last_seen = max(last_seen, med.end or start) if last_seen else (med.end or start)
    lines.sort(key=lambda line: line.start)
    return lines
