"""Tiny local models for tests, benchmarks and the CPU dev server: nothing is downloaded, ever.

- ``TableModel``: a numpy-only ``NextTokenModel`` whose next-token distribution is a seeded function of the
  context; a draft can be a noisy copy of a target, which makes acceptance controllable in exactness tests.
- ``char_tokenizer``: a character-level ``PreTrainedTokenizerFast`` built from an alphabet with ``tokenizers``.
- ``tiny_llama``: a Llama causal LM with seeded random weights (well under 1M parameters);
  ``layer_skip_draft`` turns it into a correlated draft (its first layers); ``train_tiny`` fits it on local text
  in seconds; ``save_tiny``/``load_tiny`` round-trip both through a local directory.

torch/transformers are imported lazily, so ``TableModel`` works with numpy alone.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
DEFAULT_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;!?'-()\n"
# Every printable ASCII character: a model that serves JSON (structured outputs) must be able to write
# braces, quotes and the capitals of schema keys; vLLM's grammar engine cannot finish an object otherwise.
PRINTABLE_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"
# A plain chat template, so that a tiny model answers /v1/chat/completions (vLLM renders it) and the DSBD
# route's ``messages`` the same way.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
DEMO_TEXT = (
    "the patient is stable. the scan shows no new lesion. continue the current plan.\n"
    "the tumor board recommends surgery. review in two weeks.\n"
    "no evidence of progression. follow up in three months.\n"
)


class TableModel:
    """Next-token log-probabilities drawn once per context from a seeded normal: ``logits ~ sharpness * N(0, 1)``.

    ``context``: how many trailing tokens the distribution depends on (``None``: the whole prefix).
    ``base``/``noise``: logits = base's logits + ``noise`` * fresh normals, a draft that differs from its target
    by a controlled amount. ``banned`` tokens get probability 0 (e.g. BOS/PAD inside generated text).
    """

    vocab_size: int

    def __init__(
        self,
        vocab_size: int,
        seed: int = 0,
        *,
        sharpness: float = 1.0,
        context: int | None = None,
        base: TableModel | None = None,
        noise: float = 0.0,
        banned: Sequence[int] = (),
    ) -> None:
        if base is not None and base.vocab_size != vocab_size:
            raise ValueError("base must share the vocabulary")
        self.vocab_size = vocab_size
        self.seed, self.sharpness, self.context = seed, sharpness, context
        self.base, self.noise = base, noise
        self.banned = tuple(banned)
        self.calls = 0
        self._memo: dict[tuple[int, ...], np.ndarray] = {}

    def logits(self, prefix: Sequence[int]) -> np.ndarray:
        key = tuple(int(t) for t in (prefix if self.context is None else prefix[-self.context :]))
        if key not in self._memo:
            rng = np.random.default_rng([self.seed, len(key), *key])
            own = rng.standard_normal(self.vocab_size)
            out = self.base.logits(prefix) + self.noise * own if self.base is not None else self.sharpness * own
            out = out.copy()
            out[list(self.banned)] = -np.inf
            self._memo[key] = out
        return self._memo[key]

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        self.calls += 1
        out = np.stack([self.logits(p) for p in prefixes])
        top = out.max(axis=1, keepdims=True)
        return out - top - np.log(np.exp(out - top).sum(axis=1, keepdims=True))


def char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> Any:
    """Character-level fast tokenizer: ids 0-3 are ``<pad> <bos> <eos> <unk>``, then ``alphabet`` in order."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *chars])}
    pad, bos, eos, unk = SPECIALS
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk)


def tiny_llama(
    vocab_size: int,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    seed: int = 0,
    *,
    intermediate: int | None = None,
    max_positions: int = 512,
    init_range: float = 0.02,
) -> Any:
    """A ``LlamaForCausalLM`` with seeded random weights; larger ``init_range`` gives peakier distributions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        initializer_range=init_range,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def layer_skip_draft(model: Any, layers: int) -> Any:
    """A draft made of the target's first ``layers`` decoder layers (plus its embeddings, norm and head)."""
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:layers]
    draft.config.num_hidden_layers = layers
    return draft.eval()


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def train_tiny(
    model: Any, tokenizer: Any, text: str = DEMO_TEXT, *, steps: int = 200, lr: float = 3e-3, seed: int = 0
) -> list[float]:
    """Fit ``model`` on ``text`` (one line per example, BOS ... EOS) with AdamW; returns the loss per step."""
    import torch

    torch.manual_seed(seed)
    lines = [line for line in text.splitlines() if line]
    rows = [[BOS_ID, *tokenizer(line).input_ids, EOS_ID] for line in lines]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    labels = ids.masked_fill(ids == PAD_ID, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(ids != PAD_ID).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def save_tiny(path: str | Path, model: Any, tokenizer: Any | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def load_tiny(path: str | Path) -> tuple[Any, Any | None]:
    """(model, tokenizer or None) from a local directory; ``local_files_only`` so nothing is fetched."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, attn_implementation="sdpa").eval()
    has_tokenizer = (path / "tokenizer.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True) if has_tokenizer else None
    return model, tokenizer


def serving_pair(
    out: str | Path, seed: int = 0, *, alphabet: str = PRINTABLE_ALPHABET, init_range: float = 0.1
) -> tuple[Path, Path]:
    """A random target and its one-layer draft, written to ``OUT/target`` and ``OUT/draft`` for vLLM to serve.

    Shaped for vLLM's CPU attention, which takes head sizes from 32 up (64 wide, 2 heads); the tokenizer
    carries ``CHAT_TEMPLATE``. A larger ``init_range`` gives peakier distributions. Random weights: the
    answers exercise the plumbing, never a judgement.
    """
    out = Path(out)
    tokenizer = char_tokenizer(alphabet)
    tokenizer.chat_template = CHAT_TEMPLATE
    target = tiny_llama(
        len(tokenizer), layers=4, hidden=64, heads=2, seed=seed, init_range=init_range, max_positions=4096
    )
    return save_tiny(out / "target", target, tokenizer), save_tiny(
        out / "draft", layer_skip_draft(target, 1), tokenizer
    )


def tiny_pair(seed: int = 0, *, train_steps: int = 0) -> tuple[Any, Any, Any]:
    """(target, draft, tokenizer) wrapped as ``TorchCausalLM``, for benchmarks and the dev server.

    Untrained (``train_steps == 0``): a 4-layer random target and, as its draft, its own first layer (random
    weights make a layer-skip draft strongly correlated with its target). Trained: the target is fitted on
    ``DEMO_TEXT`` for ``train_steps`` steps (it then says something readable) and the draft is a separate
    1-layer, 32-wide model fitted on the same text for ``3 * train_steps`` (cheap) steps.
    """
    from dsbd.torch_backend import TorchCausalLM

    tokenizer = char_tokenizer()
    target = tiny_llama(len(tokenizer), layers=4, hidden=64, heads=4, seed=seed, init_range=0.1)
    if not train_steps:
        return TorchCausalLM(target), TorchCausalLM(layer_skip_draft(target, 1)), tokenizer
    train_tiny(target, tokenizer, steps=train_steps, seed=seed)
    draft = tiny_llama(len(tokenizer), layers=1, hidden=32, heads=2, seed=seed + 1, init_range=0.1)
    train_tiny(draft, tokenizer, steps=3 * train_steps, seed=seed + 1)
    return TorchCausalLM(target), TorchCausalLM(draft), tokenizer
