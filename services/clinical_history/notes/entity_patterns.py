"""Turn the terminology tables plus ``patterns.json`` into EntityRuler phrase patterns.

Patterns are generated, not hand-listed, so that adding a drug synonym or a cancer site word to
``shared/terminology`` is enough for notes to find it too; the note-specific extras stay in
``patterns.json``. Every pattern carries its normalised value as the EntityRuler ``id``.

Everything is a phrase pattern (matched on lower-cased tokens): spaCy's PhraseMatcher costs about
the same for five thousand phrases as for one, whereas each token pattern costs a pass over every
token; 160 stage token patterns took 3 s on the 1215 Synthea notes, their phrase form 10 ms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.terminology import terminology

from .rules import PatternRules, terminology_table

Pattern = dict[str, Any]

# Labels the pipeline puts on Doc.ents, and the NoteMention kind each one becomes.
KINDS = {"MEDICATION": "medication", "CANCER": "cancer", "STAGE": "stage", "PROCEDURE": "procedure"}
# Matches that only exist to out-rank a shorter match ("chronic kidney disease stage 3"); dropped later.
BLOCK = "ONCOTWIN_BLOCK"

_SHORT_KEYWORD = 3  # bare keywords this short ("pet", "mri") match only in capitals: "PET", not a pet


def _phrases(label: str, phrases: dict[str, str]) -> list[Pattern]:
    return [{"label": label, "pattern": p, "id": value} for p, value in sorted(phrases.items())]


def medication_patterns(rules: PatternRules) -> list[Pattern]:
    words = {w.lower(): d.name for d in terminology().drugs for w in (d.name, *d.synonyms) if "*" not in w}
    words |= {w: name for name, extra in rules.medications for w in extra}
    return _phrases("MEDICATION", words)


def cancer_patterns(rules: PatternRules) -> list[Pattern]:
    """Site words from cancers.json ``text_types`` combined with cancer nouns; types refined by
    histology ("adenocarcinoma of lung" is NSCLC) through the terminology's own rule."""
    term = terminology()
    site_words: dict[str, list[str]] = {}
    for row in terminology_table("cancers.json")["text_types"]:
        words = [w.lower() for w in row["words"] if "*" not in w and w.lower() not in rules.cancer_ignore_table_words]
        site_words.setdefault(row["type"], []).extend(words)
    for cancer_type, extra in rules.cancer_site_synonyms.items():
        site_words.setdefault(cancer_type, []).extend(extra)

    phrases: dict[str, str] = {}

    def add(phrase: str, cancer_type: str) -> None:
        phrases.setdefault(phrase, term.refine_by_histology(cancer_type, phrase))

    for cancer_type, words in site_words.items():
        if cancer_type in rules.cancer_histologies:
            continue
        for word in words:
            for noun in rules.cancer_nouns:
                add(f"{word} {noun}", cancer_type)
                add(f"{noun} of {word}", cancer_type)
                add(f"{noun} of the {word}", cancer_type)
    for histology, site in rules.cancer_histologies.items():
        for h in (w for w in site_words.get(histology, []) if w not in rules.cancer_abbreviations):
            for noun in rules.cancer_nouns:
                add(f"{h} {noun}", histology)
                for word in site_words.get(site, []):
                    add(f"{h} {word} {noun}", histology)
                    add(f"{h} {noun} of {word}", histology)
                    add(f"{h} {noun} of the {word}", histology)
    for abbreviation, cancer_type in rules.cancer_abbreviations.items():
        add(abbreviation, cancer_type)
    return _phrases("CANCER", phrases)


def stage_patterns(rules: PatternRules) -> list[Pattern]:
    """'<lead> <numeral>[<substage>]' with its AJCC group as id, and longer blocker phrases around
    the same words: the EntityRuler keeps the longest match, so 'kidney disease stage 3' wins
    over 'stage 3' and is dropped afterwards."""
    stages: dict[str, str] = {}
    blocks: dict[str, str] = {}
    for lead in rules.stage_leads:
        for written, group in rules.stage_numerals.items():
            for sub in ("", *rules.stage_substages):
                core = f"{lead} {written}{sub}"
                stages[core] = group + sub.upper()
                blocks |= {f"{b} {core}": "" for b in rules.stage_blockers}
                blocks |= {f"{core} {b}": "" for b in rules.stage_trailing_blockers}
    for extent in rules.stage_extents:
        stages |= {f"{extent}-stage": extent, f"{extent} stage": extent}
    return [*_phrases("STAGE", stages), *_phrases(BLOCK, blocks)]


def _procedure_keywords() -> list[tuple[str, list[str]]]:
    rows = terminology_table("procedures.json")["keywords"]
    return [(row["category"], [w.lower() for w in row["words"]]) for row in rows]


def _is_short(word: str) -> bool:
    return word.isalpha() and len(word) <= _SHORT_KEYWORD


def procedure_patterns(rules: PatternRules) -> list[Pattern]:
    """Whole-word keywords of procedures.json and every phrase of patterns.json."""
    phrases = {w: cat for cat, words in _procedure_keywords() for w in words if "*" not in w and not _is_short(w)}
    phrases |= {w: cat for cat, words in rules.procedures for w in words}
    return _phrases("PROCEDURE", phrases)


def entity_patterns(rules: PatternRules) -> list[Pattern]:
    return [
        *medication_patterns(rules),
        *cancer_patterns(rules),
        *stage_patterns(rules),
        *procedure_patterns(rules),
    ]


@dataclass(frozen=True, slots=True)
class WordRules:
    """Procedure keywords that are not whole words, tested one token at a time with the stem
    semantics of ``shared.terminology`` ("mammogra*" finds "mammography", "*ectomy" finds
    "lobectomy"), plus the short abbreviations that must be written in capitals ("PET")."""

    stems: tuple[tuple[str, re.Pattern[str]], ...]
    capitals: dict[str, str]

    def category(self, word: str) -> str | None:
        if word in self.capitals:
            return self.capitals[word]
        lowered = word.lower()
        return next((cat for cat, stem in self.stems if stem.fullmatch(lowered)), None)


def word_rules() -> WordRules:
    stems: list[tuple[str, re.Pattern[str]]] = []
    capitals: dict[str, str] = {}
    for category, words in _procedure_keywords():
        for word in (w for w in words if "*" in w):
            head = "[a-z]*" if word.startswith("*") else ""
            tail = "[a-z]*" if word.endswith("*") else ""
            stems.append((category, re.compile(head + re.escape(word.strip("*")) + tail)))
        capitals |= {w.upper(): category for w in words if _is_short(w)}
    return WordRules(tuple(stems), capitals)
