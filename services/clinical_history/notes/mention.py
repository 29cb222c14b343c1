"""The result type of note extraction: one recognised phrase and what its context says about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.fhir.record import Code

MentionKind = Literal["medication", "cancer", "stage", "procedure"]


@dataclass(frozen=True, slots=True)
class NoteMention:
    """A medication, cancer, stage or procedure named in a note.

    Offsets are character offsets into ``ClinicalNote.text`` so that a reviewer can always be shown
    the exact words (``note.text[start:end] == text``); ``sentence`` is a substring of the note too.
    The context flags are what a rule-based ConText pass could tell, not a clinical judgement: a
    mention is evidence to weigh, never a fact on the level of a coded resource.
    """

    kind: MentionKind
    text: str
    start: int
    end: int
    normalized: str  # ingredient name, cancer type, stage group or procedure category
    code: Code | None  # RxNorm ingredient for medications where the drug table knows one
    negated: bool
    uncertain: bool
    historical: bool
    section: str | None  # nearest markdown heading above the mention, "#"s stripped
    note_source: str
    sentence: str  # the sentence around the mention, at most 300 characters
    family: bool = False  # "family history of ...": about a relative, not the patient

    @property
    def asserted(self) -> bool:
        """True when nothing in the context weakens the mention (not negated, uncertain or family)."""
        return not (self.negated or self.uncertain or self.family)
