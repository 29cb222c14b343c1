"""(b) Forest scoring equals a plain full recomputation of every node's prefix, before and after KV pruning."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dsbd.api import BeamParams, DSBDParams  # noqa: E402
from dsbd.forest import Forest, build_forest, score_sequences  # noqa: E402
from dsbd.speculative import dsbd_sample  # noqa: E402
from dsbd.tiny import (  # noqa: E402
    BOS_ID,
    EOS_ID,
    char_tokenizer,
    load_tiny,
    parameter_count,
    save_tiny,
    tiny_llama,
    train_tiny,
)
from dsbd.torch_backend import TorchCausalLM  # noqa: E402

ATOL = 1e-5


@pytest.fixture
def lm() -> TorchCausalLM:
    return TorchCausalLM(tiny_llama(40, layers=2, hidden=32, heads=4, seed=3, init_range=0.2))


def full_recompute(lm: TorchCausalLM, seq: list[int]) -> np.ndarray:
    """The plain way: the whole sequence, no cache, no mask, default positions."""
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([seq])).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1).numpy()


def expected_rows(lm: TorchCausalLM, prefix: list[int], forest: Forest) -> np.ndarray:
    paths = [prefix] + [prefix + forest.path(i) for i in range(len(forest))]
    return np.stack([full_recompute(lm, p) for p in paths])


def test_forest_scores_equal_full_recomputation_also_after_pruning(lm):
    prefix = [BOS_ID, 7, 8, 9, 10]
    # two trees below the prefix, depths 1..3, a repeated token at different places
    forest = Forest(tokens=(11, 12, 13, 14, 15, 11, 16), parents=(-1, -1, 0, 0, 1, 4, 2))
    passes = lm.forward_passes
    got = lm.forest_logprobs(prefix, forest)
    assert lm.forward_passes == passes + 1, "the whole forest is one forward pass"
    np.testing.assert_allclose(got, expected_rows(lm, prefix, forest), atol=ATOL)
    assert lm.cached_tokens == len(prefix) + len(forest)

    survivors = [prefix + forest.path(6), prefix + forest.path(5)]  # 11 12 16 and 12 15 11
    lm.retain(survivors)
    assert lm.cached_tokens == len(prefix) + 3 + 3

    # Next iteration: the prefix grew by a cached token; new nodes hang off cached and new parents alike.
    prefix2 = [*prefix, 11]
    forest2 = Forest(tokens=(13, 12, 17, 18, 19, 20), parents=(-1, -1, 1, 2, 3, 0))
    passes = lm.forward_passes
    got = lm.forest_logprobs(prefix2, forest2)
    assert lm.forward_passes == passes + 1
    np.testing.assert_allclose(got, expected_rows(lm, prefix2, forest2), atol=ATOL)
    # 13 was pruned (recomputed), 12 and 12-16 are reused: only 13, 17, 18, 19, 20 (and 13's child) are new
    assert lm.cached_tokens == len(prefix) + 6 + 5

    # A fully cached forest costs no forward pass and gives the same numbers.
    passes = lm.forward_passes
    np.testing.assert_allclose(lm.forest_logprobs(prefix2, forest2), got, atol=0)
    assert lm.forward_passes == passes


def test_pruning_to_nothing_and_to_other_prompts(lm):
    lm.forest_logprobs([BOS_ID, 5, 6], Forest((7,), (-1,)))
    lm.retain([[BOS_ID, 9]])  # shares only BOS
    assert lm.cached_tokens == 1
    lm.retain([])
    assert lm.cached_tokens == 0
    prefix, forest = [BOS_ID, 9, 9], Forest((9, 1), (-1, 0))
    np.testing.assert_allclose(lm.forest_logprobs(prefix, forest), expected_rows(lm, prefix, forest), atol=ATOL)


@pytest.mark.parametrize("head_on_wanted_rows_only", [True, False])
def test_rows_are_kept_only_where_asked_and_recomputed_when_needed(lm, head_on_wanted_rows_only):
    lm._logits_to_keep = head_on_wanted_rows_only  # models without ``logits_to_keep`` slice the logits instead
    long_prefix = [BOS_ID, 5, 6, 7, 8]
    lm.forest_logprobs(long_prefix, Forest((9,), (-1,)))
    assert lm.cached_tokens == 6 and len(lm._rows) == 2  # the prefix end and the node, not every token
    # A cached prompt token nobody asked for before: computed again (a duplicate entry), same numbers.
    prefix, forest = [BOS_ID, 5, 6], Forest((10, 11), (-1, 0))
    np.testing.assert_allclose(lm.forest_logprobs(prefix, forest), expected_rows(lm, prefix, forest), atol=ATOL)
    lm.retain([[BOS_ID, 5, 6, 10, 11]])
    np.testing.assert_allclose(lm.forest_logprobs(prefix, forest), expected_rows(lm, prefix, forest), atol=ATOL)


def test_batched_next_logprobs_do_not_depend_on_padding(lm):
    prefixes = [[BOS_ID, 5], [BOS_ID, 5, 6, 7, 8, 9, 10, 11], [BOS_ID]]
    batched = lm.next_logprobs(prefixes)
    alone = np.stack([lm.next_logprobs([p])[0] for p in prefixes])
    np.testing.assert_allclose(batched, alone, atol=ATOL)
    np.testing.assert_allclose(batched, np.stack([full_recompute(lm, p) for p in prefixes]), atol=ATOL)


def test_score_sequences_agrees_between_forest_and_batched_paths(lm):
    seqs = [[BOS_ID, 4, 5], [BOS_ID, 4, 6, 7], [BOS_ID, 4], [BOS_ID, 4, 6, 7]]
    prefix, forest, rows = build_forest(seqs)
    assert prefix == [BOS_ID, 4] and rows[2] == 0 and rows[1] == rows[3]
    assert forest.tokens == (5, 6, 7) and forest.parents == (-1, -1, 1)
    np.testing.assert_allclose(score_sequences(lm, seqs), lm.next_logprobs(seqs), atol=ATOL)


def test_memory_efficient_mode_keeps_results_and_caches_less(torch_pair, tokenizer):
    target, draft = torch_pair
    prompt = [BOS_ID, *tokenizer("the ").input_ids]
    params = BeamParams(width=3, max_tokens=12, eos_token_id=EOS_ID)
    for seed in range(3):
        full = dsbd_sample(target, draft, prompt, params, DSBDParams(gamma=3), seed=seed)
        lean = dsbd_sample(target, draft, prompt, params, DSBDParams(gamma=3, memory_efficient=True), seed=seed)
        assert [b.tokens for b in full.beams] == [b.tokens for b in lean.beams]
        np.testing.assert_allclose([b.logprob for b in full.beams], [b.logprob for b in lean.beams], atol=1e-4)
        assert full.stats.target_forward_passes == lean.stats.target_forward_passes


def test_tiny_model_and_tokenizer_round_trip_through_a_directory(tmp_path):
    tok = char_tokenizer("abc ")
    text = "abc cab"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text and min(ids) >= 4
    model = tiny_llama(len(tok), layers=1, hidden=32, heads=2, seed=5)
    assert parameter_count(model) < 1_000_000
    losses = train_tiny(model, tok, "abc abc abc\ncab cab\n", steps=15)
    assert losses[-1] < losses[0]
    save_tiny(tmp_path / "m", model, tok)
    loaded, tok2 = load_tiny(tmp_path / "m")
    assert tok2 is not None and tok2(text).input_ids == ids and tok2.eos_token_id == EOS_ID
    seq = [BOS_ID, *ids]
    np.testing.assert_allclose(
        TorchCausalLM(loaded).next_logprobs([seq]), TorchCausalLM(model).next_logprobs([seq]), atol=1e-6
    )
    assert TorchCausalLM.from_pretrained(tmp_path / "m").vocab_size == len(tok)
