"""The one-step distribution of beam sampling, and exact categorical draws from it.

Beam sampling, as ``dsbd`` defines it (the *target* distribution every decoder here reproduces):

- every (active beam ``b``, token ``t``) pair gets the weight ``(logprob(b) + log p(t | b)) / temperature``,
  i.e. the tempered log-probability of the extended sequence;
- joint top-k, then joint top-p (nucleus), are applied over *all* pairs together, not per beam;
- the step draws its pairs one after another WITHOUT replacement from the renormalised softmax of those
  weights (sequential sampling; its ordered result has the same law as Gumbel-top-k, so either construction
  defines the same target; this module implements the sequential one because speculative verification needs
  the conditional distribution of every draw).

``temperature == 0`` is the greedy limit: each draw is the best remaining pair (ties by flat index), top-p is
ignored and top-k only bounds the support. Probability vectors are indexed by ``row * vocab + token`` where
``row`` is the beam's position in the ``scores``/``logprobs`` arrays.
"""

from __future__ import annotations

import numpy as np

# Residuals with less mass than this are numerically empty: the event that needs them has probability ~0.
EMPTY_MASS = 1e-12


class JointDistribution:
    """Beam sampling's distribution over flattened (beam, token) pairs for one step.

    ``scores`` are the beams' cumulative log-probabilities (``-inf`` for rows that are not beams: such rows have
    no support, which is how speculative verification puts target and draft on one index space); ``logprobs``
    are the next-token log-probabilities of each row, shape ``(rows, vocab)``.
    """

    def __init__(
        self,
        scores: np.ndarray,
        logprobs: np.ndarray,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> None:
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        logprobs = np.asarray(logprobs, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64)
        self.rows, self.vocab = logprobs.shape
        self.size = self.rows * self.vocab
        self.greedy = temperature == 0
        with np.errstate(invalid="ignore"):
            weights = (scores[:, None] + logprobs).ravel()
        weights[np.isnan(weights)] = -np.inf
        self.probs = np.zeros(self.size)
        self._order: np.ndarray | None = None  # the support, best first (only built when needed)
        if not self.greedy and top_k <= 0 and top_p >= 1.0:  # no filter: no sort (large vocabularies)
            finite = np.isfinite(weights)
            if finite.any():
                z = weights / temperature
                p = np.exp(z - z[finite].max())
                self.probs = p / p.sum()
            return
        order = np.argsort(-weights, kind="stable")  # best first; ties by flat index
        order = order[np.isfinite(weights[order])]
        if top_k > 0:
            order = order[:top_k]
        self._order = order
        if order.size == 0:
            return
        if self.greedy:
            self.probs[order[0]] = 1.0  # the first draw; later draws go through ``conditional``
            return
        z = weights[order] / temperature
        p = np.exp(z - z[0])
        p /= p.sum()
        if top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), top_p, side="left")) + 1  # smallest prefix with mass >= top_p
            order, p = order[:keep], p[:keep] / p[:keep].sum()
            self._order = order
        self.probs[order] = p

    @property
    def support_size(self) -> int:
        return int(np.count_nonzero(self.probs)) if self._order is None else int(self._order.size)

    def conditional(self, taken: np.ndarray) -> np.ndarray:
        """Distribution of the next draw given the pairs already drawn (``taken``: boolean mask over pairs).

        All zeros when the support is exhausted (the step then keeps fewer beams).
        """
        if self.greedy and self._order is not None:
            out = np.zeros(self.size)
            free = self._order[~taken[self._order]]
            if free.size:
                out[free[0]] = 1.0
            return out
        p = np.where(taken, 0.0, self.probs)
        total = p.sum()
        return p / total if total > EMPTY_MASS else np.zeros(self.size)


def categorical(rng: np.random.Generator, probs: np.ndarray) -> int:
    """One draw from ``probs`` (need not be normalised; must have positive mass) by inverse CDF."""
    cdf = np.cumsum(probs)
    u = rng.random() * cdf[-1]
    idx = int(np.searchsorted(cdf, u, side="right"))
    idx = min(idx, probs.size - 1)
    while probs[idx] <= 0 and idx > 0:  # u landed on the right edge of the last positive bin
        idx -= 1
    return idx


def sample_without_replacement(rng: np.random.Generator, dist: JointDistribution, count: int) -> list[int]:
    """``count`` sequential draws without replacement (fewer when the support runs out)."""
    taken = np.zeros(dist.size, dtype=bool)
    out: list[int] = []
    for _ in range(count):
        p = dist.conditional(taken)
        if p.sum() <= EMPTY_MASS:
            break
        idx = categorical(rng, p)
        taken[idx] = True
        out.append(idx)
    return out
