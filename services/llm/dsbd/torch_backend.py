"""PyTorch backend: a ``transformers`` causal LM as a ``NextTokenModel`` that also scores forests in one pass.

The KV cache is kept as a *token trie* flattened into one sequence: cached entry ``i`` is a token with a parent
entry, so the cache can hold the prompt, every beam's path and a whole draft forest at once (batch size 1).
A forward pass over new trie nodes uses

- a 4D additive attention mask: each new node sees exactly its ancestors (cached or new) and itself, so a
  node's logits are those of its own prefix whatever else is in the cache or the batch;
- position ids = depth in the trie (prefix length + depth below the prefix), not the flattened index;
- the cached keys/values as ``past_key_values`` (rotary embeddings are applied before caching, so the flattened
  order does not matter).

Nodes are found by content, ``(parent entry, token)``, so a forest that repeats cached paths (the beams' common
prefix, the previous iteration's accepted drafts) only computes what is new. ``retain`` prunes the cache to the
paths that survive an iteration (``index_select`` along the sequence axis of every layer). The log-probabilities
after nodes that were asked for are kept (the next call may ask again, e.g. a prompt's last token); the LM head
only runs on those nodes (``logits_to_keep`` where the model has it), so a long prompt never materialises a
vocabulary-sized row per token.

Requirements: a decoder-only model with full attention whose attention path takes a custom 4D mask and
``position_ids`` (Llama, Mistral without sliding window, Qwen2, GPT-2 ...; ``attn_implementation`` ``"sdpa"`` or
``"eager"``, not FlashAttention, which ignores arbitrary masks).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsbd.forest import Forest


class TorchCausalLM:
    """``next_logprobs`` (stateless, right-padded batch) and ``forest_logprobs``/``retain`` (trie KV cache)."""

    def __init__(self, model: Any, *, device: str | torch.device | None = None) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.forward_passes = 0
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.reset()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        attn_implementation: str = "sdpa",
    ) -> TorchCausalLM:
        """Load a local model directory only (``local_files_only``): nothing is ever downloaded."""
        import transformers
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"local_files_only": True, "attn_implementation": attn_implementation}
        if dtype is not None:  # the keyword was renamed in transformers 4.56
            major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
            kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
        return cls(AutoModelForCausalLM.from_pretrained(str(path), **kwargs), device=device)

    # -- stateless scoring -----------------------------------------------------------------------------------

    @torch.no_grad()
    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        """One right-padded batch; real tokens never attend to padding (it comes after them), so padding cannot
        change a prefix's scores."""
        if not prefixes or any(len(p) == 0 for p in prefixes):
            raise ValueError("need non-empty prefixes")
        lengths = torch.tensor([len(p) for p in prefixes], device=self.device)
        width = int(lengths.max())
        ids = torch.zeros((len(prefixes), width), dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prefixes):
            ids[i, : len(p)] = torch.tensor(p, device=self.device)
            mask[i, : len(p)] = 1
        positions = torch.arange(width, device=self.device).expand(len(prefixes), -1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        self.forward_passes += 1
        last = out.logits[torch.arange(len(prefixes), device=self.device), lengths - 1]
        return torch.log_softmax(last.float(), dim=-1).cpu().numpy()

    # -- trie cache ------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every cached token."""
        self._kv: Any = None
        self._parent: list[int] = []
        self._token: list[int] = []
        self._depth: list[int] = []
        self._index: dict[tuple[int, int], int] = {}
        self._rows: dict[int, torch.Tensor] = {}  # entry -> log-probabilities after it (wanted entries only)

    @property
    def cached_tokens(self) -> int:
        return len(self._token)

    @torch.no_grad()
    def forest_logprobs(self, prefix: Sequence[int], forest: Forest) -> np.ndarray:
        """Rows: after ``prefix``, then after each forest node; every uncached node in ONE forward pass."""
        if not prefix:
            raise ValueError("prefix must not be empty (start with BOS)")
        n = len(prefix)
        # One list for both: (local parent, token), local parent -1 for the first prefix token.
        nodes = [(i - 1, int(t)) for i, t in enumerate(prefix)]
        nodes += [(n - 1 if p < 0 else n + p, int(t)) for p, t in zip(forest.parents, forest.tokens, strict=True)]
        wanted = [n - 1, *range(n, len(nodes))]
        where = self._place(nodes, set(wanted))
        return torch.stack([self._rows[where[i]] for i in wanted]).numpy()

    def _place(self, nodes: list[tuple[int, int]], wanted: set[int]) -> list[int]:
        """Cache entry of every node, computing the missing ones in one forward pass.

        Only wanted nodes keep their log-probabilities (a full-vocabulary row per prompt token would cost far
        more than its keys and values); a wanted node that is cached without its row is computed again as a
        duplicate entry, which the index then points to.
        """
        cached = len(self._token)
        new_parent: list[int] = []
        new_token: list[int] = []
        keep_row: list[bool] = []
        where: list[int] = []
        fresh: dict[tuple[int, int], int] = {}
        for i, (local_parent, tok) in enumerate(nodes):
            key = (-1 if local_parent < 0 else where[local_parent], tok)
            entry = fresh.get(key)
            if entry is None:
                entry = self._index.get(key)
                if entry is not None and i in wanted and entry not in self._rows:
                    entry = None
            if entry is None:
                entry = fresh[key] = cached + len(new_token)
                new_parent.append(key[0])
                new_token.append(tok)
                keep_row.append(False)
            if i in wanted and entry >= cached:
                keep_row[entry - cached] = True
            where.append(entry)
        if new_token:
            self._forward(new_parent, new_token, keep_row)
        return where

    def _forward(self, parents: list[int], tokens: list[int], keep_row: list[bool]) -> None:
        cached = len(self._token)
        total = cached + len(tokens)
        depth = list(self._depth)
        for p in parents:
            depth.append(0 if p < 0 else depth[p] + 1)
        allowed = np.zeros((len(tokens), total), dtype=bool)
        cached_ancestors: dict[int, np.ndarray] = {}
        for k, p in enumerate(parents):
            if p >= cached:  # a new parent: its row is already built
                allowed[k] = allowed[p - cached]
            elif p >= 0:
                if p not in cached_ancestors:
                    cached_ancestors[p] = np.array(self._ancestors(p), dtype=np.int64)
                allowed[k, cached_ancestors[p]] = True
            allowed[k, cached + k] = True
        mask = torch.full((len(tokens), total), torch.finfo(self.dtype).min, dtype=self.dtype)
        mask[torch.from_numpy(allowed)] = 0.0
        rows = [k for k, keep in enumerate(keep_row) if keep]
        kwargs: dict[str, Any] = {"past_key_values": self._kv} if self._kv is not None else {}
        if self._logits_to_keep:  # the head only runs where a row is wanted
            kwargs["logits_to_keep"] = torch.tensor(rows, device=self.device) if rows else 1
        out = self.model(
            input_ids=torch.tensor([tokens], device=self.device),
            position_ids=torch.tensor([depth[cached:]], device=self.device),
            attention_mask=mask[None, None].to(self.device),
            use_cache=True,
            **kwargs,
        )
        self.forward_passes += 1
        self._kv = out.past_key_values
        if rows:
            logits = out.logits[0] if self._logits_to_keep else out.logits[0, rows]
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, k in enumerate(rows):
                self._rows[cached + k] = logp[r]
        for k, (p, t) in enumerate(zip(parents, tokens, strict=True)):
            self._index[(p, t)] = cached + k
        self._parent += parents
        self._token += tokens
        self._depth = depth

    def _ancestors(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self._parent[node]
        return out

    def retain(self, sequences: Sequence[Sequence[int]]) -> None:
        """Keep only cached entries that lie on a prefix of one of ``sequences``."""
        keep: set[int] = set()
        for seq in sequences:
            node = -1
            for tok in seq:
                nxt = self._index.get((node, int(tok)))
                if nxt is None:
                    break
                keep.add(nxt)
                node = nxt
        if len(keep) == len(self._token):
            return
        if not keep:
            self.reset()
            return
        order = sorted(keep)  # parents precede children, so the order stays topological
        remap = {old: new for new, old in enumerate(order)}
        select = torch.tensor(order, device=self.device)
        _select_positions(self._kv, select)
        self._parent = [-1 if self._parent[o] < 0 else remap[self._parent[o]] for o in order]
        self._token = [self._token[o] for o in order]
        self._depth = [self._depth[o] for o in order]
        self._index = {(p, t): i for i, (p, t) in enumerate(zip(self._parent, self._token, strict=True))}
        self._rows = {remap[o]: row for o, row in self._rows.items() if o in remap}


def _select_positions(cache: Any, index: torch.Tensor) -> None:
    """``index_select`` along the sequence axis of every layer of a ``transformers`` dynamic cache."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(-2, index)
                layer.values = layer.values.index_select(-2, index)
    elif hasattr(cache, "key_cache"):  # older DynamicCache
        for i in range(len(cache.key_cache)):
            cache.key_cache[i] = cache.key_cache[i].index_select(-2, index)
            cache.value_cache[i] = cache.value_cache[i].index_select(-2, index)
    else:
        raise TypeError(f"cannot prune a {type(cache).__name__}")
