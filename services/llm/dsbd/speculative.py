"""Dynamic-width speculative beam decoding (DSBD), engine-agnostic; exact w.r.t. ``dsbd.beam``.

One iteration, from the current beams (all of the same length):

1. **Draft.** The draft model runs beam sampling from the current beams for up to ``gamma`` layers and builds a
   forest (one tree per current beam): layer ``l`` holds ``n_l`` (node, token) pairs drawn without replacement
   from the *draft's* joint distribution over the non-EOS nodes of layer ``l - 1`` (the draft scores a node by
   its root's target log-probability plus the draft log-probabilities below it). ``n_l`` is the dynamic width.
2. **Score.** The target scores every forest node (and the current beams) in one pass (``dsbd.forest``).
3. **Verify, layer by layer.** Layer ``l`` of the *target* beam sampling is drawn with the drafts of layer
   ``l`` as proposals (``verify_layer``). If every new non-EOS target beam is a forest node, the target already
   knows its next-token distribution and the next layer is verified too; otherwise the iteration ends there.
   When every drafted layer passes, one more layer is drawn straight from the target (the "bonus" layer).

**Why the output has exactly the law of ``dsbd.beam.beam_sample``.** A target layer is ``m`` sequential draws
without replacement from the target joint ``P``: draw ``j`` follows ``P_j = P`` restricted to the pairs not yet
drawn, renormalised. Drafts are consumed in the order the draft sampled them; draft ``i`` was drawn from
``Q_i = Q`` restricted to the drafts before it, so *given everything that happened before it* (earlier drafts,
earlier coins, earlier target draws) it has law ``Q_i``: the coins and target draws are functions of earlier
drafts and independent uniforms. For draw ``j`` we keep a residual target ``R`` (initially ``P_j``); draft ``x``
is accepted with probability ``min(1, R(x) / Q_i(x))``; on rejection ``R <- norm(max(R - Q_i, 0))`` and the next
draft is tried; with no draft left, the draw comes from ``R`` itself. The classic argument gives
``Pr(out = x) = min(Q_i(x), R(x)) + Pr(reject) * R'(x) = min(Q_i, R)(x) + max(R - Q_i, 0)(x) = R(x)``, and by
induction over the remaining drafts (each again of known conditional law) every draw follows ``P_j`` exactly.
After an acceptance, ``R`` restarts from ``P_{j+1}`` (which already gives zero mass to drawn pairs, so a later
draft that repeats one is simply rejected) and the remaining drafts serve the next draw, exactly as the paper's
verification resets to the target distribution after each acceptance; the paper draws its beams i.i.d., here
both sides draw without replacement, hence the conditionals. Drafts whose parent is not a target beam have
``R = 0`` and are always rejected (the paper's "invalid beam" case). Layer ``l + 1``'s drafts depend only on
the draft forest, so conditionally on the layer-``l`` outcome they are still fresh proposals; whether to
continue, and every width, is decided from the history alone, so stopping never biases the result.

**Dynamic width.** The paper picks, per layer, the largest ``k`` whose estimated probability of at least ``k``
acceptances is >= ``threshold``, estimating acceptance probabilities ``alpha_j`` (after ``j`` rejections) from
``p`` and ``q`` (``acceptance_alphas``, ``confident_acceptances``). In the paper ``k`` becomes the number of
beams the *target* keeps, which changes the output distribution; here ``DSBDParams`` must not, so the target
always keeps ``W`` beams and the width is the number of *draft proposals* ``n_l`` in layer ``l``: the smallest
``n`` in ``[min_width, max_width]`` whose confident acceptance count covers all ``m`` open slots (a layer that
cannot fill every slot with forest nodes ends the iteration, so drafting below it is wasted). When no ``n``
qualifies the forest stops at the previous layer; layer 1 is always drafted (with ``clip(m)``) so the
estimates keep following the context. Estimates come from the last verified layer at the same depth.

**Memory-efficient mode** keeps, between iterations, only the KV cache of the beams' common prefix (one
sequence) instead of every beam's path; each verification pass then recomputes the beams' diverging tails. It
trades target compute for memory and keeps exactness (the paper's variant carries one *sampled* sequence,
which changes the output distribution; ``DSBDParams`` promises not to).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from dsbd.api import BeamParams, BeamResult, DecodeStats, DSBDParams, NextTokenModel
from dsbd.beam import Hyp, check_params, extend, finalize, is_active, joint
from dsbd.forest import retain, score_sequences
from dsbd.sampling import EMPTY_MASS, JointDistribution, categorical, sample_without_replacement


class AcceptanceRule:
    """Speculative sampling's rule; subclasses that break it exist only to show the tests can tell."""

    def accept_probability(self, target: float, draft: float) -> float:
        return 1.0 if draft <= 0 else min(1.0, target / draft)

    def residual(self, target: np.ndarray, draft: np.ndarray) -> np.ndarray:
        """``norm(max(target - draft, 0))``; a numerically empty residual is never sampled from, keep target."""
        r = np.maximum(target - draft, 0.0)
        total = r.sum()
        return r / total if total > EMPTY_MASS else target


EXACT = AcceptanceRule()


@dataclass
class LayerOutcome:
    draws: list[int]  # flat (row, token) indices, in draw order
    accepted: int  # drafts accepted
    trials: int  # drafts looked at
    # alphas[s][j]: exact acceptance probability of the proposal tried for draw s after j rejections in it
    alphas: list[list[float]] = field(default_factory=list)


def verify_layer(
    rng: np.random.Generator,
    target: JointDistribution,
    draft: JointDistribution | None,
    proposals: Sequence[int],
    slots: int,
    rule: AcceptanceRule = EXACT,
) -> LayerOutcome:
    """``slots`` draws without replacement from ``target``, using ``proposals`` (drawn in order from ``draft``)."""
    taken = np.zeros(target.size, dtype=bool)
    drafted = np.zeros(target.size, dtype=bool)
    out = LayerOutcome([], 0, 0)
    i = 0
    for _ in range(slots):
        residual = target.conditional(taken)
        if residual.sum() <= EMPTY_MASS:
            break  # the support is exhausted: the reference keeps fewer beams too
        chosen = -1
        tried: list[float] = []
        while draft is not None and i < len(proposals):
            x = proposals[i]
            q_i = draft.conditional(drafted)
            drafted[x] = True
            i += 1
            out.trials += 1
            tried.append(float(np.minimum(residual, q_i).sum()))
            if rng.random() < rule.accept_probability(float(residual[x]), float(q_i[x])):
                chosen = x
                out.accepted += 1
                break
            residual = rule.residual(residual, q_i)
        if tried:
            out.alphas.append(tried)
        if chosen < 0:
            chosen = categorical(rng, residual)
        taken[chosen] = True
        out.draws.append(chosen)
    return out


def acceptance_alphas(p: np.ndarray, q: np.ndarray, trials: int) -> list[float]:
    """The paper's estimate: ``alpha_j`` = acceptance probability of a proposal after ``j`` rejections in a row."""
    alphas: list[float] = []
    cur = p
    for _ in range(trials):
        alphas.append(float(np.minimum(cur, q).sum()))
        r = np.maximum(cur - q, 0.0)
        total = r.sum()
        if total <= EMPTY_MASS:  # rejection is impossible: later alphas never matter
            alphas.extend([1.0] * (trials - len(alphas)))
            break
        cur = r / total
    return alphas


Alphas = Sequence[float] | Sequence[Sequence[float]]


def _table(alphas: Alphas) -> tuple[tuple[float, ...], ...]:
    """One row per draw; a flat sequence is the paper's case (the same row for every draw)."""
    if len(alphas) == 0:
        raise ValueError("need at least one acceptance probability")
    flat = all(isinstance(a, (int, float, np.floating)) for a in alphas)
    rows = [cast(Sequence[float], alphas)] if flat else list(cast(Sequence[Sequence[float]], alphas))
    out = tuple(tuple(round(float(a), 12) for a in row) for row in rows)
    if any(not row for row in out):
        raise ValueError("empty row of acceptance probabilities")
    return out


def acceptance_count_distribution(alphas: Alphas, trials: int) -> np.ndarray:
    """``Pr(A = k)`` for ``k = 0..trials`` acceptances among ``trials`` proposals tried in order.

    ``alphas[s][j]`` is the acceptance probability of a proposal tried for draw ``s`` after ``j`` rejections
    in that draw (the residual restarts after each acceptance: a renewal process). A flat sequence is the
    paper's estimator, where every draw has the same ``alpha_j``; missing entries repeat the last one.
    """
    table = _table(alphas)
    rows = [table[min(k, len(table) - 1)] for k in range(trials)]
    a = np.array([[row[min(j, len(row) - 1)] for j in range(trials)] for row in rows]).reshape(trials, trials)
    # state[k, j]: k acceptances so far, j rejections since the last one
    state = np.zeros((trials + 1, trials + 1))
    state[0, 0] = 1.0
    for _ in range(trials):
        new = np.zeros_like(state)
        for j in range(trials):
            new[1:, 0] += state[:-1, j] * a[:, j]
            new[:-1, j + 1] += state[:-1, j] * (1.0 - a[:, j])
        state = new
    return state.sum(axis=1)


def confident_acceptances(alphas: Alphas, trials: int, threshold: float) -> int:
    """The paper's width rule: the largest ``k`` with ``Pr(A >= k) >= threshold`` among ``trials`` proposals."""
    return _confident(_table(alphas), trials, threshold)


@functools.lru_cache(maxsize=4096)
def _confident(table: tuple[tuple[float, ...], ...], trials: int, threshold: float) -> int:
    tail = np.cumsum(acceptance_count_distribution(table, trials)[::-1])[::-1]
    ok = np.nonzero(tail >= threshold - 1e-12)[0]
    return int(ok[-1]) if ok.size else 0


def choose_width(alphas: Alphas, slots: int, dsbd: DSBDParams, max_width: int) -> int | None:
    """Fewest proposals whose confident acceptance count fills every open slot; ``None``: do not draft."""
    for n in range(max(dsbd.min_width, 1), max_width + 1):
        if confident_acceptances(alphas, n, dsbd.threshold) >= slots:
            return n
    return None


def check_dsbd(dsbd: DSBDParams, width: int) -> int:
    """Validated ``max_width``."""
    max_width = dsbd.max_width if dsbd.max_width is not None else width
    if dsbd.gamma < 1:
        raise ValueError("gamma must be >= 1")
    if not 1 <= dsbd.min_width <= max_width:
        raise ValueError("need 1 <= min_width <= max_width")
    if not 0.0 <= dsbd.threshold <= 1.0:
        raise ValueError("threshold must be in [0, 1]")
    return max_width


@dataclass
class _Forest:
    """The draft forest of one iteration; node ``i`` < number of roots is current beam ``i``."""

    parent: list[int] = field(default_factory=list)
    token: list[int] = field(default_factory=list)
    draft_score: list[float] = field(default_factory=list)
    eos: list[bool] = field(default_factory=list)
    child: dict[tuple[int, int], int] = field(default_factory=dict)
    layers: list[list[int]] = field(default_factory=list)  # node ids per layer, layer 0 = roots
    rows: list[list[int]] = field(default_factory=list)  # rows[l - 1]: the parents layer l was drawn over
    dists: list[JointDistribution] = field(default_factory=list)  # the draft's joint of layer l
    proposals: list[list[int]] = field(default_factory=list)  # flat indices of layer l, in draw order

    def add(self, parent: int, token: int, score: float, eos: bool) -> int:
        self.parent.append(parent)
        self.token.append(token)
        self.draft_score.append(score)
        self.eos.append(eos)
        node = len(self.parent) - 1
        if parent >= 0:
            self.child[(parent, token)] = node
        return node


class _Decoder:
    """State of one DSBD run (kept in an object so every step stays a small method)."""

    def __init__(
        self,
        target: NextTokenModel,
        draft: NextTokenModel,
        prompt: list[int],
        params: BeamParams,
        dsbd: DSBDParams,
        rng: np.random.Generator,
        rule: AcceptanceRule,
    ) -> None:
        self.target, self.draft, self.prompt = target, draft, prompt
        self.params, self.dsbd, self.rng, self.rule = params, dsbd, rng, rule
        self.max_width = check_dsbd(dsbd, params.width)
        self.stats = DecodeStats()
        self.alphas: dict[int, Alphas] = {}  # depth -> latest estimate
        self.latest: Alphas = [1.0]  # optimistic until something is measured

    def run(self) -> BeamResult:
        hyps = [Hyp()]
        while any(is_active(h, self.params) for h in hyps):
            hyps = self.iteration(hyps)
            live = [h for h in hyps if is_active(h, self.params)]
            self.retain(live)
        return finalize(hyps, self.params, self.stats)

    def seq(self, tokens: Sequence[int]) -> list[int]:
        return self.prompt + list(tokens)

    def retain(self, live: list[Hyp]) -> None:
        seqs = [self.seq(h.tokens) for h in live]
        if self.dsbd.memory_efficient and seqs:
            seqs = [_common_prefix(seqs)]
        retain(self.target, seqs)
        retain(self.draft, seqs)

    # -- one iteration -------------------------------------------------------------------------------------

    def iteration(self, hyps: list[Hyp]) -> list[Hyp]:
        done = [h for h in hyps if not is_active(h, self.params)]
        roots = [h for h in hyps if is_active(h, self.params)]
        depth_left = self.params.max_tokens - len(roots[0].tokens)
        forest = self.draft_forest(roots, min(self.dsbd.gamma, depth_left - 1), self.params.width - len(done))
        paths = self.paths(forest, roots)
        scored = [n for n in range(len(forest.parent)) if not forest.eos[n]]
        rows = score_sequences(self.target, [paths[n] for n in scored])
        self.stats.target_forward_passes += 1
        self.stats.iterations += 1
        target_lp = {n: rows[i] for i, n in enumerate(scored)}
        return done + self.verify(forest, roots, target_lp, len(done))

    def draft_forest(self, roots: list[Hyp], depth: int, slots: int) -> _Forest:
        forest = _Forest()
        forest.layers.append([forest.add(-1, -1, h.logprob, False) for h in roots])
        paths = {i: self.seq(h.tokens) for i, h in enumerate(roots)}
        for layer in range(1, depth + 1):
            width = self.width(layer, slots)
            parents = [n for n in forest.layers[-1] if not forest.eos[n]]
            if width is None or not parents:
                break
            q = score_sequences(self.draft, [paths[n] for n in parents])
            self.stats.draft_forward_passes += 1
            dist = joint(self.params, np.array([forest.draft_score[n] for n in parents]), q)
            draws = sample_without_replacement(self.rng, dist, width)
            nodes = []
            for idx in draws:
                row, tok = divmod(idx, q.shape[1])
                parent = parents[row]
                score = forest.draft_score[parent] + float(q[row, tok])
                node = forest.add(parent, tok, score, tok == self.params.eos_token_id)
                paths[node] = paths[parent] + [tok]
                nodes.append(node)
            self.stats.widths.append(width)
            forest.layers.append(nodes)
            forest.rows.append(parents)
            forest.dists.append(dist)
            forest.proposals.append(draws)
        return forest

    def width(self, layer: int, slots: int) -> int | None:
        alphas = self.alphas.get(layer, self.latest)
        width = choose_width(alphas, slots, self.dsbd, self.max_width)
        if width is None and layer == 1:
            width = min(max(slots, self.dsbd.min_width), self.max_width)
        return width

    def paths(self, forest: _Forest, roots: list[Hyp]) -> list[list[int]]:
        out: list[list[int]] = []
        for n in range(len(forest.parent)):
            parent = forest.parent[n]
            out.append(self.seq(roots[n].tokens) if parent < 0 else out[parent] + [forest.token[n]])
        return out

    def verify(self, forest: _Forest, roots: list[Hyp], target_lp: dict[int, np.ndarray], finished: int) -> list[Hyp]:
        drafted = len(forest.layers) - 1
        beams: list[tuple[int, Hyp]] = list(enumerate(roots))  # (forest node, hyp): target beams of this layer
        done: list[Hyp] = []
        for layer in range(1, drafted + 2):
            slots = self.params.width - finished - len(done)
            if not beams or slots <= 0:
                break
            hyp_of = dict(beams)
            if layer <= drafted:
                rows, draft, proposals = forest.rows[layer - 1], forest.dists[layer - 1], forest.proposals[layer - 1]
            else:
                rows, draft, proposals = [n for n, _ in beams], None, []
            scores = np.array([hyp_of[n].logprob if n in hyp_of else -np.inf for n in rows])
            logprobs = np.stack([target_lp[n] for n in rows])
            target = joint(self.params, scores, logprobs)
            outcome = verify_layer(self.rng, target, draft, proposals, slots, self.rule)
            self.stats.accepted_tokens += outcome.accepted
            if draft is not None:
                self.learn(layer, target, draft, outcome)
            beams = []
            complete = True
            for idx in outcome.draws:
                row, tok = divmod(idx, self.vocab(logprobs))
                parent = rows[row]
                hyp = extend(hyp_of[parent], tok, float(logprobs[row, tok]), self.params)
                if not is_active(hyp, self.params):
                    done.append(hyp)
                    continue
                node = forest.child.get((parent, tok), -1)
                complete = complete and node >= 0
                beams.append((node, hyp))
            if not complete:
                break
        return done + [h for _, h in beams]

    @staticmethod
    def vocab(logprobs: np.ndarray) -> int:
        return int(logprobs.shape[1])

    def learn(self, layer: int, target: JointDistribution, draft: JointDistribution, outcome: LayerOutcome) -> None:
        """Per-draw acceptance probabilities realised in this layer; the paper's estimate for draws not tried."""
        paper = acceptance_alphas(target.probs, draft.probs, self.max_width)
        slots = max(len(outcome.draws), 1)
        alphas = [outcome.alphas[s] if s < len(outcome.alphas) else paper for s in range(slots)]
        self.alphas[layer] = alphas
        self.latest = alphas


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    i = 0
    while i < n and all(s[i] == first[i] for s in seqs):
        i += 1
    return first[:i]


def dsbd_sample(
    target: NextTokenModel,
    draft: NextTokenModel,
    prompt_ids: Sequence[int],
    params: BeamParams,
    dsbd: DSBDParams | None = None,
    seed: int | None = None,
    *,
    rng: np.random.Generator | None = None,
    rule: AcceptanceRule = EXACT,
) -> BeamResult:
    """Beam sampling of ``target`` (same law as ``dsbd.beam.beam_sample``), accelerated with ``draft``."""
    check_params(params, target.vocab_size)
    if draft.vocab_size != target.vocab_size:
        raise ValueError("target and draft must share the vocabulary")
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty (start with BOS)")
    rng = rng if rng is not None else np.random.default_rng(seed)
    decoder = _Decoder(target, draft, list(prompt_ids), params, dsbd or DSBDParams(), rng, rule)
    return decoder.run()
