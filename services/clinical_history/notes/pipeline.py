"""Build the note pipeline once and turn its output into ``NoteMention`` values.

spaCy is only a means here: nothing outside this package sees a ``Doc``. The pipeline is
``spacy.blank("en")`` plus rule components, so it needs no model download and behaves the same
on every machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import cast

import spacy
from spacy.language import Language
from spacy.pipeline import EntityRuler
from spacy.tokenizer import Tokenizer
from spacy.tokens import Doc

from shared.fhir.record import RXNORM, ClinicalNote, Code
from shared.nlp.rules import CONTEXT_RULES_PATH
from shared.nlp.sentences import sentence_bounds, sentence_starts
from shared.terminology import terminology

from .components import register_components
from .entity_patterns import KINDS, entity_patterns
from .mention import MentionKind, NoteMention
from .rules import PATTERNS_PATH, load_patterns

SENTENCE_LIMIT = 300
BATCH_SIZE = 64
# Notes are short; the limit guards memory on a runaway input, not the tokenizer (no parser here).
MAX_NOTE_CHARS = 2_000_000

# The pipeline, in order (the tests check it).
COMPONENTS = (
    "oncotwin_markdown_boundaries",
    "oncotwin_sentencizer",
    "oncotwin_ruler",
    "oncotwin_procedure_words",
    "oncotwin_normalize",
    "oncotwin_sections",
    "oncotwin_context",
)


def make_pipeline(patterns_path: Path = PATTERNS_PATH, context_path: Path = CONTEXT_RULES_PATH) -> Language:
    """A fresh pipeline from the given rule files; raises ``NoteRulesError`` on a bad file.

    Most callers want ``build_pipeline()``, the cached one built from the packaged rules.
    """
    rules = load_patterns(patterns_path)  # validate before spending time on spaCy
    register_components()
    nlp = spacy.blank("en")
    # The whitespace special cases (" ", "\n", "\t") disable spaCy's tokenizer cache for every chunk
    # they touch; markdown notes are full of newlines, so this makes tokenizing ~15x faster while
    # producing the same tokens (checked on the Synthea notes).
    tokenizer = cast(Tokenizer, nlp.tokenizer)
    tokenizer.rules = {k: v for k, v in (tokenizer.rules or {}).items() if not k.isspace()}
    nlp.max_length = MAX_NOTE_CHARS
    nlp.add_pipe("oncotwin_markdown_boundaries")
    nlp.add_pipe("sentencizer", name="oncotwin_sentencizer")
    ruler = cast(
        EntityRuler, nlp.add_pipe("entity_ruler", name="oncotwin_ruler", config={"phrase_matcher_attr": "LOWER"})
    )
    ruler.add_patterns(entity_patterns(rules))
    nlp.add_pipe("oncotwin_procedure_words")
    nlp.add_pipe("oncotwin_normalize")
    nlp.add_pipe("oncotwin_sections")
    nlp.add_pipe("oncotwin_context", config={"rules_path": str(context_path)})
    return nlp


@cache
def build_pipeline() -> Language:
    """The process-wide pipeline over the packaged rules, built on first use."""
    return make_pipeline()


@cache
def _drug_codes() -> dict[str, Code]:
    # The first RxCUI of a drugs.json row is its ingredient code; the others are products.
    return {d.name: Code(RXNORM, d.rxcuis[0], d.name) for d in terminology().drugs if d.rxcuis}


def _window(text: str, start: int, end: int, m_start: int, m_end: int) -> str:
    """The sentence, or a slice of it centred on the mention when it is over the limit."""
    sentence = text[start:end].strip()
    if len(sentence) <= SENTENCE_LIMIT:
        return sentence
    margin = max(0, (SENTENCE_LIMIT - (m_end - m_start)) // 2)
    lo = max(start, m_start - margin)
    hi = min(end, lo + SENTENCE_LIMIT)
    lo = max(start, hi - SENTENCE_LIMIT)
    return text[lo:hi].strip()


def mentions_from_doc(doc: Doc, source: str) -> list[NoteMention]:
    starts = sentence_starts(doc)
    codes = _drug_codes()
    text = doc.text  # Doc.text rebuilds the whole note from its tokens: read it once, not per mention
    out: list[NoteMention] = []
    for ent in doc.ents:
        kind: MentionKind | None = KINDS.get(ent.label_)  # type: ignore[assignment]
        if kind is None:
            continue
        s_start, s_end = sentence_bounds(doc, starts, ent.start)
        sentence = doc[s_start:s_end]
        normalized: str = ent._.oncotwin_normalized
        out.append(
            NoteMention(
                kind=kind,
                text=ent.text,
                start=ent.start_char,
                end=ent.end_char,
                normalized=normalized,
                code=codes.get(normalized) if kind == "medication" else None,
                negated=ent._.oncotwin_negated,
                uncertain=ent._.oncotwin_uncertain,
                historical=ent._.oncotwin_historical,
                section=ent._.oncotwin_section,
                note_source=source,
                sentence=_window(text, sentence.start_char, sentence.end_char, ent.start_char, ent.end_char),
                family=ent._.oncotwin_family,
            )
        )
    return out


def extract_mentions(note: ClinicalNote) -> list[NoteMention]:
    """Mentions in one note, in text order."""
    return mentions_from_doc(build_pipeline()(note.text or ""), note.source)


def extract_many(notes: Iterable[ClinicalNote]) -> dict[str, list[NoteMention]]:
    """Mentions per note source for a batch, using ``nlp.pipe`` (one pass, batched)."""
    batch = list(notes)
    nlp = build_pipeline()
    result: dict[str, list[NoteMention]] = {}
    for note, doc in zip(batch, nlp.pipe((n.text or "" for n in batch), batch_size=BATCH_SIZE), strict=True):
        result.setdefault(note.source, []).extend(mentions_from_doc(doc, note.source))
    return result
