"""Rule-based mentions of medications, cancers, stages and procedures in clinical notes.

A medspaCy-style pipeline over ``spacy.blank("en")``: EntityRuler patterns generated from
``shared.terminology`` plus ``patterns.json``, ConText negation/uncertainty/history from
``context_rules.json``, sentences and sections from the notes' markdown. Text mentions are
weaker evidence than coded resources; callers should treat them as such.

Nothing is loaded at import time; the pipeline is built on the first extraction.
"""

from __future__ import annotations

from shared.nlp.rules import NoteRulesError, load_context_rules

from .mention import MentionKind, NoteMention
from .pipeline import build_pipeline, extract_many, extract_mentions, make_pipeline
from .rules import load_patterns

__all__ = [
    "MentionKind",
    "NoteMention",
    "NoteRulesError",
    "build_pipeline",
    "extract_many",
    "extract_mentions",
    "load_context_rules",
    "load_patterns",
    "make_pipeline",
]
