"""The interfaces every part of ``dsbd`` agrees on: parameters, results, and the model seam.

- ``BeamParams``: what the *target* distribution is (beam sampling as the target model defines it).
- ``DSBDParams``: how the speculative part runs; it never changes the output distribution.
- ``NextTokenModel``: the one thing the engine-agnostic core needs from a model (next-token
  log-probabilities for a batch of prefixes); backends add forest scoring for speed.
- ``Generator``: what servers and the vLLM plugin call: prompt ids in, W scored beams out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class BeamParams:
    width: int  # W: beams kept and returned (the request's ``n``)
    max_tokens: int  # new tokens per beam at most
    temperature: float = 1.0
    top_k: int = 0  # 0: off; applied jointly over all (beam, token) pairs
    top_p: float = 1.0  # 1.0: off; applied jointly over all (beam, token) pairs
    length_penalty: float = 1.0  # final choice by score / length ** length_penalty
    eos_token_id: int | None = None


@dataclass(frozen=True)
class DSBDParams:
    gamma: int = 4  # draft steps per iteration (forest depth)
    min_width: int = 1  # narrowest layer the draft may propose
    max_width: int | None = None  # widest layer (None: the beam width W)
    threshold: float = 0.7  # width = largest k with P(at least k acceptances) >= threshold
    memory_efficient: bool = False  # carry one sequence (one KV cache) between iterations


@dataclass(frozen=True)
class Beam:
    tokens: tuple[int, ...]  # generated tokens (prompt excluded)
    logprob: float  # sum of the target's log-probabilities of the tokens
    score: float  # logprob / len(tokens) ** length_penalty
    finished: bool  # ended with EOS


@dataclass
class DecodeStats:
    target_forward_passes: int = 0
    draft_forward_passes: int = 0
    iterations: int = 0
    accepted_tokens: int = 0  # draft tokens accepted
    generated_tokens: int = 0  # tokens of the longest beam
    widths: list[int] = field(default_factory=list)  # layer widths chosen, in order


@dataclass
class BeamResult:
    beams: list[Beam]  # best first
    stats: DecodeStats


class NextTokenModel(Protocol):
    vocab_size: int

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        """Log-probabilities of the next token after each prefix: shape (len(prefixes), vocab)."""
        ...


class Generator(Protocol):
    def generate(
        self, prompt_ids: list[int], params: BeamParams, dsbd: DSBDParams | None, seed: int | None
    ) -> BeamResult:
        """W beams for the prompt: DSBD when ``dsbd`` is given, plain beam sampling otherwise."""
        ...
