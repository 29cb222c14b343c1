"""Sentence lookups shared by the ConText component and the result builder.

Reading the SENT_START array once and bisecting is much cheaper than ``Span.sent`` per mention,
which walks tokens to both ends of the sentence each time.
"""

from __future__ import annotations

from bisect import bisect_right

from spacy.tokens import Doc


def sentence_starts(doc: Doc) -> list[int]:
    """Token indices where sentences start (always including 0 for a non-empty doc)."""
    flags = doc.to_array("SENT_START").tolist()
    starts = [i for i, flag in enumerate(flags) if flag == 1]
    if flags and (not starts or starts[0] != 0):
        starts.insert(0, 0)
    return starts


def sentence_bounds(doc: Doc, starts: list[int], token: int) -> tuple[int, int]:
    """The [start, end) token range of the sentence holding ``token``."""
    k = bisect_right(starts, token) - 1
    return starts[k], starts[k + 1] if k + 1 < len(starts) else len(doc)
