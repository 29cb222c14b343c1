"""Find the note and report passages most relevant to a criterion coded data could not decide.

Passages are sentences (or short lines) of clinical notes, report conclusions and imaging
conclusions, scored by BM25 over the criterion's search terms (phrases count as one term). Each
keeps its source and character span, so a reviewer lands on the exact words.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from shared.fhir.record import PatientRecord

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")
_WORD = re.compile(r"[a-z0-9]+")
K1, B = 1.2, 0.75


@dataclass(frozen=True, slots=True)
class Passage:
    source: str
    date: str | None
    text: str
    start: int
    end: int
    score: float = 0.0


def passages_of(record: PatientRecord) -> list[Passage]:
    out: list[Passage] = []
    documents = [(n.source, n.date.text if n.date else None, n.text) for n in record.notes]
    documents += [(r.source, r.date.text if r.date else None, r.conclusion) for r in record.reports if r.conclusion]
    documents += [(i.source, i.date.text if i.date else None, i.conclusion) for i in record.imaging if i.conclusion]
    for source, when, text in documents:
        for match in _SENTENCE.finditer(text or ""):
            sentence = match.group(0).strip()
            if len(sentence) >= 12:
                start = match.start() + match.group(0).index(sentence[0])
                out.append(Passage(source, when, sentence, start, start + len(sentence)))
    return out


def relevant(passages: list[Passage], terms: tuple[str, ...], k: int = 3) -> list[Passage]:
    """The ``k`` best passages for ``terms`` (BM25; a multi-word term must appear as a phrase)."""
    if not passages or not terms:
        return []
    lowered = [p.text.lower() for p in passages]
    lengths = [len(_WORD.findall(t)) or 1 for t in lowered]
    average = sum(lengths) / len(lengths)
    wanted = [t.lower() for t in terms]
    frequency = {t: sum(1 for text in lowered if t in text) for t in wanted}
    scored = []
    for passage, text, length in zip(passages, lowered, lengths, strict=True):
        score = 0.0
        for term in wanted:
            count = text.count(term)
            if count:
                idf = math.log(1 + (len(passages) - frequency[term] + 0.5) / (frequency[term] + 0.5))
                score += idf * count * (K1 + 1) / (count + K1 * (1 - B + B * length / average))
        if score > 0:
            scored.append(
                Passage(passage.source, passage.date, passage.text, passage.start, passage.end, round(score, 3))
            )
    scored.sort(key=lambda p: (-p.score, p.date or ""), reverse=False)
    return scored[:k]
