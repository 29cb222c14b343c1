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

# The uncertain policy, in ONE place: does an ``uncertain`` finding ("may represent atelectasis", "cannot
# exclude pneumonia") count as present? False ("U-Zeros"): no, everywhere: scoring the labeler
# (``labeler.binary``), the trainer's targets (``model.weak_targets``) and the LLM instruction export
# (``llm_path.export_instructions``). Measured on the Open-i dev reports after the hedge rules
# (``rules/context.json``): 9 of 199 uncertain findings are human-labelled present, so U-Zeros.
# Every function that applies it takes ``uncertain_positive: bool | None``; None means this default, and
# the CLI's ``--uncertain-positive`` flips it for train, eval and export alike.
UNCERTAIN_POSITIVE = False


def present_statuses(uncertain_positive: bool | None = None) -> tuple[Status, ...]:
    """The statuses that count as present under the uncertain policy (``UNCERTAIN_POSITIVE`` when None)."""
    ones = UNCERTAIN_POSITIVE if uncertain_positive is None else uncertain_positive
    return ("positive", "uncertain") if ones else ("positive",)


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
