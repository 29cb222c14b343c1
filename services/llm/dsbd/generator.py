"""``DSBDGenerator``: the ``Generator`` servers and the vLLM plugin call (prompt ids in, W scored beams out)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from dsbd.api import BeamParams, BeamResult, DSBDParams, NextTokenModel
from dsbd.beam import beam_sample
from dsbd.forest import retain
from dsbd.speculative import dsbd_sample


class DSBDGenerator:
    """Target (and optional draft) model behind the ``Generator`` protocol.

    ``generate`` runs DSBD when ``dsbd`` is given and a draft exists, plain beam sampling otherwise; both have
    the same output distribution, so a missing draft only costs speed. Same seed, same models: same beams.
    Calls are serialised (the backends keep a KV cache between calls; a new prompt keeps only the part of it
    that is a prefix of the prompt).
    """

    def __init__(self, target: NextTokenModel, draft: NextTokenModel | None = None) -> None:
        if draft is not None and draft.vocab_size != target.vocab_size:
            raise ValueError("target and draft must share the vocabulary")
        self.target = target
        self.draft = draft
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, target_path: str | Path, draft_path: str | Path | None = None, *, device: str | None = None
    ) -> DSBDGenerator:
        """Local model directories only (``local_files_only``)."""
        from dsbd.torch_backend import TorchCausalLM

        target = TorchCausalLM.from_pretrained(target_path, device=device)
        draft = TorchCausalLM.from_pretrained(draft_path, device=device) if draft_path else None
        return cls(target, draft)

    @property
    def vocab_size(self) -> int:
        return self.target.vocab_size

    def generate(
        self, prompt_ids: list[int], params: BeamParams, dsbd: DSBDParams | None, seed: int | None
    ) -> BeamResult:
        with self._lock:
            self._forget_all_but(prompt_ids)
            if dsbd is not None and self.draft is not None:
                return dsbd_sample(self.target, self.draft, prompt_ids, params, dsbd, seed)
            return beam_sample(self.target, prompt_ids, params, seed)

    def _forget_all_but(self, prompt_ids: Sequence[int]) -> None:
        retain(self.target, [list(prompt_ids)])
        if self.draft is not None:
            retain(self.draft, [list(prompt_ids)])
