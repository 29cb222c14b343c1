"""Label schemas and the result types every part of the radiology twin shares.

Two schemas, selectable by name: ``openi`` (the 13 classes of the Open-i gold standard, i.e.
ChestX-ray14 minus Hernia, plus ``normal``) and ``chexpert`` (the 13 CheXpert observations the
RadReportX paper uses, plus ``normal``). ``CHESTXRAY8`` is the 8-class subset the published
Open-i figures are reported on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["positive", "negative", "uncertain", "absent"]

OPENI = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
)
CHEXPERT = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHESTXRAY8 = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax")
NORMAL = "normal"
SCHEMAS: dict[str, tuple[str, ...]] = {"openi": OPENI, "chexpert": CHEXPERT}


@dataclass(frozen=True, slots=True)
class Span:
    section: str  # findings | impression | indication | text
    start: int  # character offsets into that section's text
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class Finding:
    label: str
    status: Status
    probability: float | None = None  # the trained model's; None for rule output
    evidence: Span | None = None


@dataclass(frozen=True, slots=True)
class Report:
    uid: str
    findings: str = ""
    impression: str = ""
    indication: str = ""

    def sections(self) -> list[tuple[str, str]]:
        """The sections that carry findings (indication is context: it states why, not what)."""
        return [(name, text) for name, text in (("findings", self.findings), ("impression", self.impression)) if text]
