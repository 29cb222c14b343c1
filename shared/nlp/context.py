"""``oncotwin_context``: a ConText-style pass (Chapman et al.) over the mentions of a doc.

Trigger literals from ``context_rules.json`` are found with one PhraseMatcher; overlapping triggers
keep the longest, so pseudo-triggers ("no change", "not in labor force") silence the shorter
trigger inside them. A trigger reaches forward and/or backward within its sentence, up to a
TERMINATE literal ("but", ";") or its ``max_scope``, and sets the matching flag on every mention
it reaches. Triggers that overlap a mention are ignored: the words belong to the mention.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

from spacy.language import Language
from spacy.matcher import PhraseMatcher
from spacy.tokens import Doc, Span
from spacy.util import filter_spans

from .rules import CONTEXT_RULES_PATH, ContextRule, load_context_rules
from .sentences import sentence_bounds, sentence_starts

FLAG_OF = {
    "NEGATED_EXISTENCE": "oncotwin_negated",
    "POSSIBLE_EXISTENCE": "oncotwin_uncertain",
    "HISTORICAL": "oncotwin_historical",
    "FAMILY": "oncotwin_family",
}


class ConText:
    def __init__(self, nlp: Language, rules: tuple[ContextRule, ...]) -> None:
        self.matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
        self.rules: dict[int, ContextRule] = {}
        for i, rule in enumerate(rules):
            key = f"oncotwin_context_{i}"
            self.matcher.add(key, [nlp.make_doc(rule.literal)])
            self.rules[nlp.vocab.strings[key]] = rule

    def _triggers(self, doc: Doc, mentions: Sequence[Span]) -> list[tuple[Span, ContextRule]]:
        spans = [Span(doc, start, end, label=match_id) for match_id, start, end in self.matcher(doc)]
        occupied = {i for ent in mentions for i in range(ent.start, ent.end)}
        return [
            (span, self.rules[span.label])
            for span in sorted(filter_spans(spans), key=lambda s: s.start)
            if not occupied.intersection(range(span.start, span.end))
        ]

    def __call__(self, doc: Doc) -> Doc:
        ents = doc.ents
        if not ents:
            return doc
        scopes = self.scopes(doc, ents)
        if not scopes:
            return doc
        # A scope never leaves its sentence: look only at the scopes of the mention's sentence(s),
        # so the work grows with the note, not with mentions x modifiers.
        starts = sentence_starts(doc)
        by_sentence: dict[int, list[tuple[int, int, str]]] = {}
        for scope in scopes:
            by_sentence.setdefault(bisect_right(starts, max(scope[0], 0)) - 1, []).append(scope)
        for ent in ents:
            first, last = bisect_right(starts, ent.start) - 1, bisect_right(starts, max(ent.end - 1, ent.start)) - 1
            for k in range(first, last + 1):
                for begin, end, flag in by_sentence.get(k, ()):
                    if ent.start < end and ent.end > begin:
                        setattr(ent._, flag, True)
        return doc

    def scopes(self, doc: Doc, mentions: Sequence[Span]) -> list[tuple[int, int, str]]:
        """The (first token, end token, flag) of every modifier's scope in ``doc``.

        Triggers overlapping one of ``mentions`` are ignored (the words belong to the mention);
        callers that keep overlapping mentions outside ``doc.ents`` (the radiology labeler) pass
        their own list.
        """
        triggers = self._triggers(doc, mentions)
        if not triggers:
            return []
        starts = sentence_starts(doc)
        stops_in: dict[int, list[Span]] = {}  # sentence -> its TERMINATE triggers
        for span, rule in triggers:
            if rule.category == "TERMINATE":
                stops_in.setdefault(bisect_right(starts, span.start) - 1, []).append(span)
        scopes: list[tuple[int, int, str]] = []  # (first token, end token, flag) of every modifier
        for span, rule in triggers:
            if rule.category not in FLAG_OF:
                continue
            lo, hi = sentence_bounds(doc, starts, span.start)
            stops = stops_in.get(bisect_right(starts, span.start) - 1, [])
            flag = FLAG_OF[rule.category]
            if rule.direction in ("forward", "bidirectional"):
                end = min([hi, *(t.start for t in stops if t.start >= span.end)])
                if rule.max_scope:
                    end = min(end, span.end + rule.max_scope)
                scopes.append((span.end, end, flag))
            if rule.direction in ("backward", "bidirectional"):
                begin = max([lo, *(t.end for t in stops if t.end <= span.start)])
                if rule.max_scope:
                    begin = max(begin, span.start - rule.max_scope)
                scopes.append((begin, span.start, flag))
        return scopes


def make_context(nlp: Language, name: str, rules_path: str = "") -> ConText:
    return ConText(nlp, load_context_rules(Path(rules_path) if rules_path else CONTEXT_RULES_PATH))
