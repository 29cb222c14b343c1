"""Helpers for the exactness tests: the reference distribution by exact enumeration, and a chi-square test.

The enumeration is written independently of ``dsbd.beam``/``dsbd.sampling`` (plain Python over the same
definition), so a shared bug in the package cannot make both sides agree.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from dsbd.api import BeamParams, BeamResult, NextTokenModel
from dsbd.speculative import AcceptanceRule

# Token ids of the table models: 0 is the prompt's BOS (never generated), the last id is EOS.
TABLE_VOCAB = 6
TABLE_EOS = TABLE_VOCAB - 1

Outcome = tuple[tuple[int, ...], ...]  # returned beams' tokens, best first


def outcome_of(result: BeamResult) -> Outcome:
    return tuple(b.tokens for b in result.beams)


def _step_pairs(model: NextTokenModel, prompt: list[int], active: list[tuple[int, ...]], params: BeamParams):
    """{(beam index, token): probability} of one step of the joint (temperature, joint top-k, joint top-p)."""
    logp = model.next_logprobs([prompt + list(a) for a in active])
    total = {a: _logprob(model, prompt, a) for a in active}
    weights = []
    for i, a in enumerate(active):
        for t in range(model.vocab_size):
            if np.isfinite(logp[i, t]):
                weights.append(((i, t), total[a] + float(logp[i, t])))
    weights.sort(key=lambda kv: (-kv[1], kv[0][0] * model.vocab_size + kv[0][1]))
    if params.top_k:
        weights = weights[: params.top_k]
    if params.temperature == 0:
        return weights, None
    z = [w / params.temperature for _, w in weights]
    top = max(z)
    p = [math.exp(v - top) for v in z]
    s = sum(p)
    p = [v / s for v in p]
    if params.top_p < 1.0:
        cum, keep = 0.0, 0
        while keep < len(p) and cum < params.top_p:
            cum += p[keep]
            keep += 1
        weights, p = weights[:keep], [v / cum for v in p[:keep]]
    return weights, p


_LOGPROB_MEMO: dict[tuple[int, tuple[int, ...], tuple[int, ...]], float] = {}


def _logprob(model: NextTokenModel, prompt: list[int], tokens: tuple[int, ...]) -> float:
    key = (id(model), tuple(prompt), tokens)
    if key not in _LOGPROB_MEMO:
        total = 0.0
        for i, t in enumerate(tokens):
            total += float(model.next_logprobs([prompt + list(tokens[:i])])[0, t])
        _LOGPROB_MEMO[key] = total
    return _LOGPROB_MEMO[key]


def _sets(weights, p, m: int) -> Iterable[tuple[tuple, float]]:
    """Unordered m-subsets of pairs with their probability under sequential draws without replacement."""
    if p is None:  # greedy: the best m pairs, certainly
        yield tuple(sorted(kv[0] for kv in weights[:m])), 1.0
        return
    m = min(m, len(p))
    for subset in itertools.combinations(range(len(p)), m):
        prob = 0.0
        for perm in itertools.permutations(subset):
            left, pr = 1.0, 1.0
            for j in perm:
                pr *= p[j] / left
                left -= p[j]
            prob += pr
        yield tuple(sorted(weights[j][0] for j in subset)), prob


def reference_distribution(model: NextTokenModel, prompt: list[int], params: BeamParams) -> dict[Outcome, float]:
    """Exact law of the returned beams under the reference beam sampling."""
    eos = params.eos_token_id

    def finished(tokens: tuple[int, ...]) -> bool:
        return bool(tokens) and tokens[-1] == eos

    def final(state: frozenset[tuple[int, ...]]) -> Outcome:
        def score(tokens: tuple[int, ...]) -> float:
            return _logprob(model, prompt, tokens) / max(len(tokens), 1) ** params.length_penalty

        return tuple(sorted(state, key=lambda t: (-score(t), t))[: params.width])

    memo: dict[frozenset, dict[Outcome, float]] = {}

    def walk(state: frozenset[tuple[int, ...]]) -> dict[Outcome, float]:
        if state in memo:
            return memo[state]
        active = sorted(t for t in state if not finished(t) and len(t) < params.max_tokens)
        if not active:
            memo[state] = {final(state): 1.0}
            return memo[state]
        done = frozenset(t for t in state if finished(t))
        weights, p = _step_pairs(model, prompt, active, params)
        out: dict[Outcome, float] = {}
        for pairs, prob in _sets(weights, p, params.width - len(done)):
            nxt = done | frozenset(active[i] + (t,) for i, t in pairs)
            for outcome, q in walk(nxt).items():
                out[outcome] = out.get(outcome, 0.0) + prob * q
        memo[state] = out
        return memo[state]

    return walk(frozenset({()}))


# -- chi-square ----------------------------------------------------------------------------------------------


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution (regularized upper incomplete gamma Q(dof/2, x/2))."""
    a, z = dof / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    log_front = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1:  # series for the lower function
        term = total = 1.0 / a
        n = 0
        while abs(term) > abs(total) * 1e-15 and n < 10_000:
            n += 1
            term *= z / (a + n)
            total += term
        return max(0.0, 1.0 - total * math.exp(log_front))
    # continued fraction for the upper function (modified Lentz)
    tiny = 1e-300
    b = z + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h


@dataclass
class FitResult:
    statistic: float
    dof: int
    p_value: float
    total_variation: float
    unsupported: int  # samples the reference gives probability 0


def chi_square_fit(samples: Iterable[Outcome], reference: dict[Outcome, float], min_expected: float = 5.0) -> FitResult:
    """Pearson goodness of fit; cells with expected count < ``min_expected`` are pooled into one cell."""
    counts = Counter(samples)
    n = sum(counts.values())
    unsupported = sum(c for o, c in counts.items() if reference.get(o, 0.0) <= 0.0)
    big = [o for o, p in reference.items() if p * n >= min_expected]
    small = [o for o, p in reference.items() if p * n < min_expected]
    cells = [(float(counts.get(o, 0)), reference[o] * n) for o in big]
    pooled_exp = sum(reference[o] for o in small) * n
    pooled_obs = float(sum(counts.get(o, 0) for o in small) + unsupported)
    if pooled_exp >= min_expected or pooled_obs:
        cells.append((pooled_obs, max(pooled_exp, 1e-12)))
    stat = sum((obs - exp) ** 2 / exp for obs, exp in cells)
    dof = len(cells) - 1
    tv = 0.5 * sum(abs(counts.get(o, 0) / n - p) for o, p in reference.items()) + 0.5 * unsupported / n
    return FitResult(stat, dof, chi2_sf(stat, dof), tv, unsupported)


def sample_outcomes(run: Callable[[int], BeamResult], seeds: Iterable[int]) -> list[Outcome]:
    return [outcome_of(run(s)) for s in seeds]


# -- deliberately wrong acceptance rules: the statistic must reject each of them -------------------------------


class AcceptWhateverTheTargetAllows(AcceptanceRule):
    def accept_probability(self, target: float, draft: float) -> float:
        return 1.0 if target > 0 else 0.0


class ResampleFromTarget(AcceptanceRule):
    """After a rejection, draw from the target again instead of the residual max(p - q, 0)."""

    def residual(self, target: np.ndarray, draft: np.ndarray) -> np.ndarray:
        return target


class UnnormalisedResidual(AcceptanceRule):
    def residual(self, target: np.ndarray, draft: np.ndarray) -> np.ndarray:
        return np.maximum(target - draft, 0.0)


BROKEN_RULES = [AcceptWhateverTheTargetAllows(), ResampleFromTarget(), UnnormalisedResidual()]
