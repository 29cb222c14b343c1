"""Reference beam sampling: the distribution that DSBD reproduces exactly.

One step (see ``dsbd.sampling`` for the joint distribution and why draws are sequential without replacement):

1. ``m = W - finished`` slots are open; the active beams all have the same length.
2. ``m`` (beam, token) pairs are drawn without replacement from the joint distribution over all active beams.
3. Each drawn pair becomes a beam; a pair whose token is EOS becomes a *finished* beam, carried unchanged to
   the end (it no longer competes, and its slot stays taken); a beam reaching ``max_tokens`` stops too.

The run ends when no beam is active. The result is every beam, best first by
``logprob / len(tokens) ** length_penalty`` (ties: tokens, so the order is a function of the beams). Given a
seed, the output is deterministic (one ``numpy.random.Generator`` drives every draw).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dsbd.api import Beam, BeamParams, BeamResult, DecodeStats, NextTokenModel
from dsbd.forest import retain, score_sequences
from dsbd.sampling import JointDistribution, sample_without_replacement


@dataclass(frozen=True)
class Hyp:
    """A beam while decoding: generated tokens, their summed target log-probability, whether it hit EOS."""

    tokens: tuple[int, ...] = ()
    logprob: float = 0.0
    finished: bool = False


def check_params(params: BeamParams, vocab_size: int) -> None:
    if params.width < 1:
        raise ValueError("width must be >= 1")
    if params.max_tokens < 0:
        raise ValueError("max_tokens must be >= 0")
    if params.top_k < 0 or not 0.0 < params.top_p <= 1.0:
        raise ValueError("top_k must be >= 0 and 0 < top_p <= 1")
    if params.eos_token_id is not None and not 0 <= params.eos_token_id < vocab_size:
        raise ValueError("eos_token_id is outside the vocabulary")


def joint(params: BeamParams, scores: np.ndarray, logprobs: np.ndarray) -> JointDistribution:
    return JointDistribution(scores, logprobs, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)


def extend(hyp: Hyp, token: int, logprob: float, params: BeamParams) -> Hyp:
    """``hyp`` + ``token``; finished when the token is EOS."""
    return Hyp((*hyp.tokens, token), hyp.logprob + logprob, token == params.eos_token_id)


def is_active(hyp: Hyp, params: BeamParams) -> bool:
    return not hyp.finished and len(hyp.tokens) < params.max_tokens


def beam_score(tokens: Sequence[int], logprob: float, length_penalty: float) -> float:
    return logprob / max(len(tokens), 1) ** length_penalty


def finalize(hyps: Sequence[Hyp], params: BeamParams, stats: DecodeStats) -> BeamResult:
    """Best first by length-penalised score; ties by tokens."""
    penalty = params.length_penalty
    beams = [Beam(h.tokens, h.logprob, beam_score(h.tokens, h.logprob, penalty), h.finished) for h in hyps]
    beams.sort(key=lambda b: (-b.score, b.tokens))
    stats.generated_tokens = max((len(b.tokens) for b in beams), default=0)
    return BeamResult(beams[: params.width], stats)


def step(
    rng: np.random.Generator,
    active: Sequence[Hyp],
    logprobs: np.ndarray,
    slots: int,
    params: BeamParams,
) -> list[Hyp]:
    """One reference step: ``slots`` pairs without replacement from the joint over ``active`` (rows of logprobs)."""
    dist = joint(params, np.array([h.logprob for h in active]), logprobs)
    vocab = logprobs.shape[1]
    out = []
    for idx in sample_without_replacement(rng, dist, slots):
        row, token = divmod(idx, vocab)
        out.append(extend(active[row], token, float(logprobs[row, token]), params))
    return out


def beam_sample(
    model: NextTokenModel,
    prompt_ids: Sequence[int],
    params: BeamParams,
    seed: int | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> BeamResult:
    """Plain beam sampling with ``model`` as the target: one forward pass per step."""
    check_params(params, model.vocab_size)
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty (start with BOS)")
    rng = rng if rng is not None else np.random.default_rng(seed)
    prompt = list(prompt_ids)
    stats = DecodeStats()
    hyps = [Hyp()]
    while True:
        active = [h for h in hyps if is_active(h, params)]
        if not active:
            break
        done = [h for h in hyps if not is_active(h, params)]
        logprobs = score_sequences(model, [prompt + list(h.tokens) for h in active])
        stats.target_forward_passes += 1
        stats.iterations += 1
        hyps = done + step(rng, active, logprobs, params.width - len(done), params)
        retain(model, [prompt + list(h.tokens) for h in hyps if is_active(h, params)])
    return finalize(hyps, params, stats)
