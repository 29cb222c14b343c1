"""Scoring many related sequences at once: the seam between the decoders and a model backend.

Beam sampling and DSBD ask a model for next-token log-probabilities after a *set* of sequences that share most
of their tokens (the prompt, the beams' common history, draft trees hanging off every beam). They pack that set
into a ``Forest`` (a trie below the longest common prefix) and hand it to ``score_sequences``:

- a backend with ``forest_logprobs`` (a ``ForestScorer``) scores the whole forest in ONE forward pass, with a
  tree attention mask and its own prefix/KV reuse; ``retain`` lets it drop cached paths nobody needs any more;
- any other ``NextTokenModel`` gets one batched ``next_logprobs`` call over every requested prefix.

Either way one call is one (batched) forward pass, which is how ``DecodeStats`` counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

import numpy as np

from dsbd.api import NextTokenModel


@dataclass(frozen=True)
class Forest:
    """Nodes below a shared prefix: ``parents[i]`` is -1 (a child of the prefix's last token) or an index < i."""

    tokens: tuple[int, ...]
    parents: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("tokens and parents differ in length")
        for i, parent in enumerate(self.parents):
            if not -1 <= parent < i:
                raise ValueError(f"node {i}: parent {parent} must be -1 or an earlier node")

    def __len__(self) -> int:
        return len(self.tokens)

    def path(self, node: int) -> list[int]:
        """Tokens from the prefix (exclusive) down to ``node`` (inclusive)."""
        out: list[int] = []
        while node >= 0:
            out.append(self.tokens[node])
            node = self.parents[node]
        return out[::-1]

    def depths(self) -> list[int]:
        """1 for children of the prefix, parent's depth + 1 below."""
        depth: list[int] = []
        for parent in self.parents:
            depth.append(1 if parent < 0 else depth[parent] + 1)
        return depth


@runtime_checkable
class ForestScorer(Protocol):
    """A model that scores a whole forest in one pass (see ``dsbd.torch_backend.TorchCausalLM``)."""

    vocab_size: int

    def forest_logprobs(self, prefix: Sequence[int], forest: Forest) -> np.ndarray:
        """Rows ``0``: after ``prefix``; ``1 + i``: after ``prefix + forest.path(i)``. Shape ``(1 + N, vocab)``."""
        ...


@runtime_checkable
class CacheOwner(Protocol):
    """A backend that keeps state (a KV cache) between calls and can forget what is no longer needed."""

    def retain(self, sequences: Sequence[Sequence[int]]) -> None:
        """Keep cached state only for prefixes of ``sequences`` (full token lists, prompt included)."""
        ...


def build_forest(sequences: Sequence[Sequence[int]]) -> tuple[list[int], Forest, list[int]]:
    """Pack sequences into (longest common prefix, trie of the rest, row of each sequence in the scores).

    Row 0 is the prefix itself; duplicates share a node. Every sequence must be non-empty.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("need at least one non-empty sequence")
    shortest = min(len(s) for s in sequences)
    lcp = 0
    first = sequences[0]
    while lcp < shortest and all(s[lcp] == first[lcp] for s in sequences):
        lcp += 1
    if lcp == 0:
        raise ValueError("sequences must share their first token (e.g. BOS): one forest has one root")
    prefix = list(first[:lcp])
    tokens: list[int] = []
    parents: list[int] = []
    index: dict[tuple[int, int], int] = {}
    rows: list[int] = []
    for seq in sequences:
        node = -1
        for tok in seq[lcp:]:
            key = (node, int(tok))
            if key not in index:
                index[key] = len(tokens)
                tokens.append(int(tok))
                parents.append(node)
            node = index[key]
        rows.append(node + 1)
    return prefix, Forest(tuple(tokens), tuple(parents)), rows


def score_sequences(model: NextTokenModel, sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Next-token log-probabilities after each sequence, shape ``(len(sequences), vocab)``: one forward pass."""
    if callable(getattr(model, "forest_logprobs", None)):  # not isinstance: protocol checks are slow
        prefix, forest, rows = build_forest(sequences)
        scores = np.asarray(cast(ForestScorer, model).forest_logprobs(prefix, forest), dtype=np.float64)
        return scores[rows]
    return np.asarray(model.next_logprobs([list(s) for s in sequences]), dtype=np.float64)


def retain(model: object, sequences: Sequence[Sequence[int]]) -> None:
    """Tell a caching backend which paths are still alive; a no-op for stateless models."""
    if callable(getattr(model, "retain", None)):
        cast(CacheOwner, model).retain(sequences)
