"""The ``oncotwin_`` spaCy components other than ConText (see ``context.py``).

Factories and Span extensions are registered by ``register_components()``, which the pipeline
builder calls; importing this module changes nothing in spaCy's global registries.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from typing import cast

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import filter_spans
from thinc.types import Ints2d

from shared.nlp.context import make_context

from .entity_patterns import BLOCK, word_rules

# Span extensions the pipeline fills in; defaults are what an unmodified mention means.
EXTENSIONS: dict[str, object] = {
    "oncotwin_normalized": None,
    "oncotwin_section": None,
    "oncotwin_negated": False,
    "oncotwin_uncertain": False,
    "oncotwin_historical": False,
    "oncotwin_family": False,
}

# A markdown heading or list item: its marker at the start of a line, after indentation.
_MARKER = r"(?:#{1,6}|[-*+\u2022]|\d{1,3}[.)])[ \t]"
_BLOCK_START = re.compile(rf"^[ \t]*({_MARKER})", re.MULTILINE)
# The first character after a heading or list-item line, or after a blank line.
_AFTER_BLOCK = re.compile(rf"(?:^[ \t]*{_MARKER}[^\n]*|^[ \t\r]*)\n[ \t\r\n]*(?=\S)", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_MAX_WORD_MEMO = 200_000


class MarkdownBoundaries:
    """Start a sentence at markdown headings and list items, at the line after them, and after a
    blank line: Synthea notes put a heading or a list item on one line with no final period, and
    the sentencizer alone would run them together with the next line. Runs before the sentencizer,
    which keeps boundaries that are already set."""

    def __call__(self, doc: Doc) -> Doc:
        text = doc.text
        positions = {m.start(1) for m in _BLOCK_START.finditer(text)}
        positions.update(m.end() for m in _AFTER_BLOCK.finditer(text))
        if not positions or not len(doc):
            return doc
        offsets = doc.to_array("IDX").tolist()
        starts = doc.to_array("SENT_START")
        for position in positions:
            i = bisect_left(offsets, position)
            if i < len(offsets) and offsets[i] == position:
                starts[i] = 1
        # One array write: setting Token.is_sent_start one by one is ~20x slower.
        doc.from_array(["SENT_START"], cast(Ints2d, starts.reshape((len(doc), 1))))
        return doc


class ProcedureWords:
    """Add procedure words found by stem ("mammography", "lobectomy") or capitals ("PET").

    Each distinct token string is tested once per process (memo keyed by its vocabulary id), so
    the cost per note is one dictionary lookup per token. Longer EntityRuler phrases ("screening
    mammography") keep precedence.
    """

    def __init__(self) -> None:
        self.rules = word_rules()
        self.memo: dict[int, str | None] = {}

    def _category(self, doc: Doc, orth: int) -> str | None:
        if orth not in self.memo:
            if len(self.memo) > _MAX_WORD_MEMO:
                self.memo.clear()
            self.memo[orth] = self.rules.category(doc.vocab.strings[orth])
        return self.memo[orth]

    def __call__(self, doc: Doc) -> Doc:
        found = [
            Span(doc, i, i + 1, label="PROCEDURE", span_id=category)
            for i, orth in enumerate(doc.to_array("ORTH").tolist())
            if (category := self._category(doc, orth)) is not None
        ]
        if found:
            doc.ents = filter_spans([*doc.ents, *found])
        return doc


class Normalize:
    """Drop blocker matches and record each mention's normalised value (its pattern id)."""

    def __call__(self, doc: Doc) -> Doc:
        ents = [e for e in doc.ents if e.label_ != BLOCK]
        if len(ents) != len(doc.ents):
            doc.ents = ents
        for ent in ents:
            ent._.oncotwin_normalized = ent.ent_id_ or ent.text.lower()
        return doc


class Sections:
    """Record the nearest markdown heading above each mention ("Medications", "Plan")."""

    def __call__(self, doc: Doc) -> Doc:
        if not doc.ents:
            return doc
        headings = [(m.start(), m.group(1).strip()) for m in _HEADING.finditer(doc.text)]
        if not headings:
            return doc
        starts = [start for start, _ in headings]
        for ent in doc.ents:
            k = bisect_right(starts, ent.start_char) - 1
            if k >= 0:
                ent._.oncotwin_section = headings[k][1]
        return doc


def _markdown_boundaries(nlp: Language, name: str) -> MarkdownBoundaries:
    return MarkdownBoundaries()


def _procedure_words(nlp: Language, name: str) -> ProcedureWords:
    return ProcedureWords()


def _normalize(nlp: Language, name: str) -> Normalize:
    return Normalize()


def _sections(nlp: Language, name: str) -> Sections:
    return Sections()


def register_components() -> None:
    """Register factories and extensions once per process; safe to call again."""
    for ext, default in EXTENSIONS.items():
        if not Span.has_extension(ext):
            Span.set_extension(ext, default=default)
    factories = {
        "oncotwin_markdown_boundaries": _markdown_boundaries,
        "oncotwin_procedure_words": _procedure_words,
        "oncotwin_normalize": _normalize,
        "oncotwin_sections": _sections,
        "oncotwin_context": make_context,
    }
    for name, func in factories.items():
        if not Language.has_factory(name):
            Language.factory(name, func=func)
