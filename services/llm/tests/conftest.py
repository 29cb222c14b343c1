"""Shared fixtures: seeded table models (numpy) and tiny random Llama models (CPU), all built locally."""

from __future__ import annotations

import pytest
from dsbd.tiny import TableModel
from dsbd_testkit import TABLE_VOCAB

try:  # tiny models gain nothing from intra-op threads, and small CI machines thrash with them
    import torch

    torch.set_num_threads(1)
except ImportError:  # the torch tests skip themselves
    pass


@pytest.fixture(scope="session")
def table_target() -> TableModel:
    return TableModel(TABLE_VOCAB, seed=1, sharpness=1.5, banned=[0])


@pytest.fixture(scope="session")
def table_draft(table_target: TableModel) -> TableModel:
    """Differs visibly from the target (acceptance well below 1), so a wrong rule cannot hide."""
    return TableModel(TABLE_VOCAB, seed=2, base=table_target, noise=1.0, banned=[0])


@pytest.fixture(scope="session")
def tokenizer():
    from dsbd.tiny import char_tokenizer

    return char_tokenizer()


@pytest.fixture(scope="session")
def torch_pair(tokenizer):
    """(target, draft) ``TorchCausalLM``: a 3-layer random Llama and its 1-layer layer-skip draft."""
    pytest.importorskip("torch")
    from dsbd.tiny import layer_skip_draft, tiny_llama
    from dsbd.torch_backend import TorchCausalLM

    target = tiny_llama(len(tokenizer), layers=3, hidden=48, heads=4, seed=0, init_range=0.15)
    return TorchCausalLM(target), TorchCausalLM(layer_skip_draft(target, 1))
