"""(c) widths and stats, the width rule's arithmetic, and (d) the generator on tiny torch models."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from dsbd.api import BeamParams, DSBDParams
from dsbd.beam import beam_sample
from dsbd.generator import DSBDGenerator
from dsbd.sampling import JointDistribution, sample_without_replacement
from dsbd.speculative import (
    acceptance_alphas,
    acceptance_count_distribution,
    choose_width,
    confident_acceptances,
    dsbd_sample,
)
from dsbd_testkit import TABLE_EOS

# -- the one-step distribution --------------------------------------------------------------------------------


def test_joint_distribution_applies_temperature_top_k_and_top_p_jointly():
    scores = np.array([0.0, np.log(0.5)])
    logprobs = np.log(np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]))
    flat = (scores[:, None] + logprobs).ravel()
    dist = JointDistribution(scores, logprobs)
    np.testing.assert_allclose(dist.probs, np.exp(flat) / np.exp(flat).sum())
    hot = JointDistribution(scores, logprobs, temperature=0.5)
    np.testing.assert_allclose(hot.probs, np.exp(2 * flat) / np.exp(2 * flat).sum())
    top2 = JointDistribution(scores, logprobs, top_k=2)  # the two best pairs over BOTH beams: (0,0) and (1,0)
    assert set(np.nonzero(top2.probs)[0]) == {0, 3}
    nucleus = JointDistribution(scores, logprobs, top_p=0.5)  # 0.5/1.5, 0.3/1.5 -> two pairs reach 0.5
    assert nucleus.support_size == 2
    greedy = JointDistribution(scores, logprobs, temperature=0)
    taken = np.zeros(6, dtype=bool)
    firsts = []
    for _ in range(6):
        nxt = int(np.argmax(greedy.conditional(taken)))
        firsts.append(nxt)
        taken[nxt] = True
    assert firsts == list(np.argsort(-flat, kind="stable"))


def test_rows_with_minus_infinite_scores_get_no_mass_and_support_can_run_out():
    logprobs = np.log(np.full((2, 3), 1 / 3))
    dist = JointDistribution(np.array([0.0, -np.inf]), logprobs)
    assert dist.probs[3:].sum() == 0 and dist.support_size == 3
    rng = np.random.default_rng(0)
    draws = sample_without_replacement(rng, dist, 5)
    assert sorted(draws) == [0, 1, 2]


def test_sequential_draws_without_replacement_have_the_right_pair_law():
    p = np.array([0.5, 0.3, 0.2])
    dist = JointDistribution(np.zeros(1), np.log(p)[None])
    rng = np.random.default_rng(1)
    n = 20_000
    counts = {pair: 0 for pair in itertools.permutations(range(3), 2)}
    for _ in range(n):
        counts[tuple(sample_without_replacement(rng, dist, 2))] += 1
    for (a, b), c in counts.items():
        expected = p[a] * p[b] / (1 - p[a])
        assert abs(c / n - expected) < 5 * math.sqrt(expected * (1 - expected) / n)


# -- the width rule ------------------------------------------------------------------------------------------


def test_acceptance_count_distribution_is_binomial_for_constant_alpha():
    dist = acceptance_count_distribution([0.7], 5)
    binom = [math.comb(5, k) * 0.7**k * 0.3 ** (5 - k) for k in range(6)]
    np.testing.assert_allclose(dist, binom)
    # a rejection makes the next proposal certain; an acceptance restarts from alpha_0
    renewal = acceptance_count_distribution([0.5, 1.0], 2)
    np.testing.assert_allclose(renewal, [0.0, 0.5 * 0.5 + 0.5, 0.5 * 0.5])


def test_paper_width_rule_and_the_exact_variant():
    alphas = [0.9]
    assert confident_acceptances(alphas, 4, 0.6) == 4  # Pr(A >= 4) = 0.9 ** 4 = 0.656 >= 0.6
    assert confident_acceptances(alphas, 4, 0.7) == 3  # Pr(A >= 4) < 0.7 <= Pr(A >= 3) = 0.948
    assert confident_acceptances([0.0], 4, 0.5) == 0
    dsbd = DSBDParams(threshold=0.7, min_width=1)
    assert choose_width(alphas, 2, dsbd, 4) == 2  # 0.81 >= 0.7
    assert choose_width(alphas, 4, dsbd, 4) is None  # four slots are not all filled often enough
    assert choose_width(alphas, 4, dsbd, 6) == 5  # more proposals than slots fix that
    assert choose_width([1.0], 2, DSBDParams(min_width=3), 4) == 3


def test_acceptance_alphas_follow_the_residual_chain():
    p, q = np.array([0.6, 0.4, 0.0]), np.array([0.2, 0.2, 0.6])
    alphas = acceptance_alphas(p, q, 3)
    assert alphas[0] == pytest.approx(0.4)
    # residual after one rejection: max(p - q, 0) = (0.4, 0.2, 0) normalised -> (2/3, 1/3, 0)
    assert alphas[1] == pytest.approx(min(2 / 3, 0.2) + min(1 / 3, 0.2))
    assert acceptance_alphas(q, q, 3) == [pytest.approx(1.0)] * 3


# -- (c) widths and stats ------------------------------------------------------------------------------------

GRID = [
    (BeamParams(width=2, max_tokens=6, eos_token_id=TABLE_EOS), DSBDParams(gamma=3)),
    (
        BeamParams(width=3, max_tokens=5, eos_token_id=TABLE_EOS),
        DSBDParams(gamma=2, min_width=2, max_width=5, threshold=0.2),
    ),
    (BeamParams(width=4, max_tokens=4), DSBDParams(gamma=4, min_width=1, max_width=3, threshold=0.9)),
    (BeamParams(width=1, max_tokens=8, top_p=0.9), DSBDParams(gamma=5, threshold=0.0)),
    (BeamParams(width=2, max_tokens=5, temperature=0.0, eos_token_id=TABLE_EOS), DSBDParams(gamma=2, max_width=3)),
]


@pytest.mark.parametrize(("params", "dsbd"), GRID)
def test_widths_stay_in_bounds_and_stats_add_up(table_target, table_draft, params, dsbd):
    max_width = dsbd.max_width or params.width
    for seed in range(40):
        result = dsbd_sample(table_target, table_draft, [0], params, dsbd, seed=seed)
        st = result.stats
        assert st.widths and all(dsbd.min_width <= w <= max_width for w in st.widths)
        assert st.draft_forward_passes == len(st.widths)  # one draft pass per drafted layer
        assert st.target_forward_passes == st.iterations  # one forest verification per iteration
        assert 0 <= st.accepted_tokens <= sum(st.widths)
        assert st.iterations <= params.max_tokens
        assert st.generated_tokens == max(len(b.tokens) for b in result.beams) <= params.max_tokens
        assert 1 <= len(result.beams) <= params.width
        scores = [b.score for b in result.beams]
        assert scores == sorted(scores, reverse=True)
        for b in result.beams:
            assert b.finished == (bool(b.tokens) and b.tokens[-1] == params.eos_token_id)
            assert b.finished or len(b.tokens) == params.max_tokens
            expected = sum(table_target.next_logprobs([[0, *b.tokens[:i]]])[0, t] for i, t in enumerate(b.tokens))
            assert b.logprob == pytest.approx(expected)


def test_a_perfect_draft_is_always_accepted_and_saves_target_passes(table_target):
    params = BeamParams(width=2, max_tokens=9, eos_token_id=None)
    result = dsbd_sample(table_target, table_target, [0], params, DSBDParams(gamma=4), seed=3)
    reference = beam_sample(table_target, [0], params, seed=3)
    assert result.stats.accepted_tokens == sum(result.stats.widths)
    # every iteration verifies gamma drafted layers plus the bonus layer: 5 tokens per target pass
    assert result.stats.target_forward_passes == math.ceil(9 / 5)
    assert reference.stats.target_forward_passes == 9


def test_bad_parameters_are_refused(table_target, table_draft):
    with pytest.raises(ValueError, match="min_width"):
        dsbd_sample(table_target, table_draft, [0], BeamParams(width=2, max_tokens=3), DSBDParams(min_width=3))
    with pytest.raises(ValueError, match="gamma"):
        dsbd_sample(table_target, table_draft, [0], BeamParams(width=2, max_tokens=3), DSBDParams(gamma=0))
    with pytest.raises(ValueError, match="width"):
        beam_sample(table_target, [0], BeamParams(width=0, max_tokens=3))
    with pytest.raises(ValueError, match="prompt"):
        beam_sample(table_target, [], BeamParams(width=1, max_tokens=3))


# -- (d) the generator on tiny torch models ------------------------------------------------------------------


@pytest.mark.parametrize("width", [2, 4])
def test_generator_returns_w_sorted_beams_deterministically(torch_pair, tokenizer, width):
    pytest.importorskip("torch")
    target, draft = torch_pair
    generator = DSBDGenerator(target, draft)
    prompt = [tokenizer.bos_token_id, *tokenizer("the ").input_ids]
    params = BeamParams(width=width, max_tokens=10, eos_token_id=tokenizer.eos_token_id)
    dsbd = DSBDParams(gamma=3)
    first = generator.generate(prompt, params, dsbd, seed=7)
    other = generator.generate([tokenizer.bos_token_id, 9, 9], params, dsbd, seed=8)  # a cache in between
    again = generator.generate(prompt, params, dsbd, seed=7)
    assert len(first.beams) == width
    assert [b.score for b in first.beams] == sorted((b.score for b in first.beams), reverse=True)
    assert [b.tokens for b in first.beams] == [b.tokens for b in again.beams]
    assert [b.tokens for b in first.beams] != [b.tokens for b in other.beams]
    assert len({b.tokens for b in first.beams}) == width  # drawn without replacement: distinct beams
    assert first.stats.target_forward_passes < sum(len(b.tokens) for b in first.beams[:1]) + 1
    plain = generator.generate(prompt, params, None, seed=7)
    assert len(plain.beams) == width and plain.stats.draft_forward_passes == 0
    assert plain.stats.target_forward_passes == max(len(b.tokens) for b in plain.beams)
