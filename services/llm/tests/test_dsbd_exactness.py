"""(a) DSBD returns beams with exactly the law of reference beam sampling, and the test can tell when it does not.

Method: the reference law of the returned beams (the ordered tuple of their tokens) is enumerated exactly
(``dsbd_testkit.reference_distribution``, independent of the package). Samples come from fixed seeds, so every
run sees the same samples. Pearson's chi-square goodness of fit, cells with expected count < 5 pooled; the test
rejects at significance ``ALPHA = 1e-3``, or outright when a sample has reference probability 0. The same
statistic is run on deliberately broken acceptance rules and must reject them with p < 1e-6 (or on an
impossible sample), which shows the sample sizes have the power to see a wrong rule.
"""

from __future__ import annotations

import pytest
from dsbd.api import BeamParams, DSBDParams
from dsbd.beam import beam_sample
from dsbd.speculative import dsbd_sample
from dsbd_testkit import (
    BROKEN_RULES,
    TABLE_EOS,
    chi_square_fit,
    reference_distribution,
    sample_outcomes,
)

ALPHA = 1e-3
POWER_ALPHA = 1e-6
PROMPT = [0]

# A: several iterations (gamma < max_tokens), EOS reachable, the default width policy.
CASE_A = (BeamParams(width=2, max_tokens=3, eos_token_id=TABLE_EOS), DSBDParams(gamma=2))
# B: three beams, temperature, joint top-k, more proposals than beams, gamma beyond max_tokens.
CASE_B = (
    BeamParams(width=3, max_tokens=2, eos_token_id=TABLE_EOS, temperature=0.8, top_k=8),
    DSBDParams(gamma=3, max_width=4, min_width=2, threshold=0.5),
)


def _rejects(fit) -> bool:
    return fit.unsupported > 0 or fit.p_value < ALPHA


def test_reference_sampler_matches_enumeration(table_target):
    params, _ = CASE_A
    reference = reference_distribution(table_target, PROMPT, params)
    assert abs(sum(reference.values()) - 1.0) < 1e-9
    samples = sample_outcomes(lambda s: beam_sample(table_target, PROMPT, params, seed=s), range(6000))
    fit = chi_square_fit(samples, reference)
    assert not _rejects(fit), fit


@pytest.mark.parametrize(("case", "n"), [(CASE_A, 10_000), (CASE_B, 6_000)], ids=["W2-T1", "W3-topk-T0.8"])
def test_dsbd_matches_reference_distribution(table_target, table_draft, case, n):
    params, dsbd = case
    reference = reference_distribution(table_target, PROMPT, params)
    samples = sample_outcomes(
        lambda s: dsbd_sample(table_target, table_draft, PROMPT, params, dsbd, seed=10_000 + s), range(n)
    )
    fit = chi_square_fit(samples, reference)
    assert fit.dof >= 50, "too few cells for a meaningful test"
    assert not _rejects(fit), fit


@pytest.mark.parametrize("rule", BROKEN_RULES, ids=type)
def test_broken_acceptance_rules_are_rejected(table_target, table_draft, rule):
    params, dsbd = CASE_A
    reference = reference_distribution(table_target, PROMPT, params)
    samples = sample_outcomes(
        lambda s: dsbd_sample(table_target, table_draft, PROMPT, params, dsbd, seed=s, rule=rule), range(3000)
    )
    fit = chi_square_fit(samples, reference)
    assert fit.unsupported > 0 or fit.p_value < POWER_ALPHA, fit


def test_greedy_limit_is_deterministic_beam_search(table_target, table_draft):
    params = BeamParams(width=3, max_tokens=3, eos_token_id=TABLE_EOS, temperature=0.0)
    (only,) = reference_distribution(table_target, PROMPT, params)
    for seed in range(5):
        got = dsbd_sample(table_target, table_draft, PROMPT, params, DSBDParams(gamma=2), seed=seed)
        assert tuple(b.tokens for b in got.beams) == only
