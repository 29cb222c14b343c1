"""Find the note and report passages most relevant to a criterion coded data could not decide.

Passages are sentences (or short lines) of clinical notes, report conclusions and imaging
conclusions, scored by BM25 over the criterion's search terms (phrases count as one term). Terms
match whole words ("pCR" is not found inside "rt-PCR"). Each passage keeps its source and
character span, so a reviewer lands on the exact words. The index is built once per record and
answers every criterion of every order (inverted postings: the work follows the matches, not the
notes x criteria x orders).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date

from shared.fhir.record import FhirTime, PatientRecord

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")
# Words, with hyphenated compounds kept whole ("rt-pcr", "pd-l1"); a compound also answers for its
# first part ("her2-positive" is about HER2) but not its others ("rt-pcr" is not "pcr").
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
K1, B = 1.2, 0.75


@dataclass(frozen=True, slots=True)
class Passage:
    source: str
    date: str | None
    text: str
    start: int
    end: int
    score: float = 0.0


def passages_of(record: PatientRecord) -> PassageIndex:
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
    return PassageIndex(out)


class PassageIndex:
    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self.tokens = [_tokens(p.text) for p in passages]
        self.lengths = [len(t) or 1 for t in self.tokens]
        self.days = [_day(p.date) for p in passages]
        self.postings: dict[str, dict[int, int]] = {}
        for i, tokens in enumerate(self.tokens):
            for token, n in Counter(tokens).items():
                self.postings.setdefault(token, {})[i] = n
        self._cache: dict[tuple[tuple[str, ...], date | None, int], list[Passage]] = {}

    def __len__(self) -> int:
        return len(self.passages)

    def _allowed(self, i: int, until: date | None) -> bool:
        day = self.days[i]
        return until is None or day is None or day <= until

    def _counts(self, term: str) -> dict[int, int]:
        """Passage -> how often ``term`` (a word or a phrase of words) occurs in it, as whole words."""
        words = _WORD.findall(term.lower())  # a query compound stays one word
        if not words:
            return {}
        if len(words) == 1:
            return self.postings.get(words[0], {})
        candidates = set(self.postings.get(words[0], {}))
        for word in words[1:]:
            candidates &= set(self.postings.get(word, {}))
        out = {}
        n = len(words)
        for i in candidates:
            tokens = self.tokens[i]
            count = sum(1 for j in range(len(tokens) - n + 1) if tokens[j : j + n] == tuple(words))
            if count:
                out[i] = count
        return out

    def relevant(self, terms: tuple[str, ...], k: int = 3, until: date | None = None) -> list[Passage]:
        """The ``k`` best passages for ``terms`` written on or before ``until`` (BM25)."""
        key = (terms, until, k)
        if key in self._cache:
            return self._cache[key]
        allowed = [i for i in range(len(self.passages)) if self._allowed(i, until)] if terms else []
        if not allowed:
            self._cache[key] = []
            return []
        average = sum(self.lengths[i] for i in allowed) / len(allowed)
        scores: dict[int, float] = {}
        for term in dict.fromkeys(terms):
            counts = {i: c for i, c in self._counts(term).items() if self._allowed(i, until)}
            if not counts:
                continue
            idf = math.log(1 + (len(allowed) - len(counts) + 0.5) / (len(counts) + 0.5))
            for i, count in counts.items():
                norm = K1 * (1 - B + B * self.lengths[i] / average)
                scores[i] = scores.get(i, 0.0) + idf * count * (K1 + 1) / (count + norm)
        best = sorted(scores.items(), key=lambda item: (-item[1], self.passages[item[0]].date or ""))[:k]
        found = [
            Passage(p.source, p.date, p.text, p.start, p.end, round(score, 3))
            for i, score in best
            if (p := self.passages[i])
        ]
        self._cache[key] = found
        return found


def _tokens(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        out.append(word)
        if "-" in word:
            out.append(word.split("-", 1)[0])
    return tuple(out)


def _day(text: str | None) -> date | None:
    when = FhirTime.parse(text)
    return when.day if when is not None else None
