"""Runs INSIDE the vLLM venv: vLLM's engine in this process, the plugin's own scorer, DSBD over it.

    var/vllm-venv/bin/python services/llm/tests/vllm_probe.py MODEL_DIR DRAFT_DIR OUT.json

The tests (``tests/test_vllm_real.py``, in the project's venv) read OUT.json and judge it against the
PyTorch backend on the same weights; this script decides nothing. It writes:

- ``sampling_params_fields``: the logprob fields of this vLLM's ``SamplingParams``, the annotation-only
  ``scoring_mode`` and the mode ``detect_scoring_mode`` found by asking the engine;
- ``rows``: every prefix the exactness cases reach, with the next-token log-probabilities that
  ``VLLMScorer`` (the plugin's scorer, through ``VLLMTargetModel``'s thread bridge) returned for it;
- ``samples``: DSBD outcomes (beams' tokens, best first) for the exactness case with the correct
  acceptance rule and with each broken one. The target is the vLLM scorer, memoised per prefix (a
  prefix's distribution does not change, so the memo is exact and keeps 10,000 decodes fast); the
  draft is the plugin's own ``DraftView`` over the draft folder.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # dsbd_testkit

from dsbd.api import BeamParams, DSBDParams
from dsbd.serve import load_model
from dsbd.speculative import dsbd_sample
from dsbd.tiny import BOS_ID, EOS_ID
from dsbd.vllm_plugin import (
    DraftView,
    VLLMScorer,
    VLLMTargetModel,
    _fields,
    detect_scoring_mode,
    scoring_mode,
)
from dsbd_testkit import BROKEN_RULES, outcome_of

# The case the tests check (they import these numbers from here through OUT.json, never twice).
CASE = {"width": 2, "max_tokens": 3, "eos_token_id": EOS_ID}
DSBD = {"gamma": 2}
PROMPT = [BOS_ID]
SAMPLES, BROKEN_SAMPLES = 8000, 8000


class Memo:
    """A ``NextTokenModel`` that asks its base once per distinct prefix."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.vocab_size = base.vocab_size
        self.rows: dict[tuple[int, ...], np.ndarray] = {}

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        missing = [list(p) for p in dict.fromkeys(tuple(p) for p in prefixes) if p not in self.rows]
        if missing:
            for prefix, row in zip(missing, self.base.next_logprobs(missing), strict=True):
                self.rows[tuple(prefix)] = np.asarray(row, dtype=np.float64)
        return np.stack([self.rows[tuple(p)] for p in prefixes])


def _samples(target: Memo, draft: Any) -> dict[str, list[Any]]:
    params, dsbd = BeamParams(**CASE), DSBDParams(**DSBD)
    out = {
        "correct": [
            outcome_of(dsbd_sample(target, draft, PROMPT, params, dsbd, seed=10_000 + s)) for s in range(SAMPLES)
        ]
    }
    for rule in BROKEN_RULES:
        out[type(rule).__name__] = [
            outcome_of(dsbd_sample(target, draft, PROMPT, params, dsbd, seed=s, rule=rule))
            for s in range(BROKEN_SAMPLES)
        ]
    return out


async def main(model: str, draft_dir: str, out_path: str) -> None:
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=model,
        dtype="float32",
        max_model_len=64,
        kv_cache_memory_bytes=64 << 20,
        max_logprobs=-1,
        enforce_eager=True,
        seed=0,
    )
    engine = AsyncLLM.from_engine_args(args)
    try:
        vocab = int(engine.model_config.get_vocab_size())
        detected = await detect_scoring_mode(engine, vocab, env={})
        scorer = VLLMScorer(engine, vocab, mode=detected)
        target = Memo(VLLMTargetModel(scorer, asyncio.get_running_loop()))
        draft = Memo(DraftView(load_model(draft_dir), vocab))  # stateless per prefix: the memo is exact
        samples = await asyncio.to_thread(_samples, target, draft)
        report = {
            "vllm": __import__("vllm").__version__,
            "vocab": vocab,
            "case": CASE,
            "dsbd": DSBD,
            "prompt": PROMPT,
            "sampling_params_fields": sorted(f for f in _fields(SamplingParams) if "logprob" in f),
            "annotation_mode": scoring_mode(SamplingParams, {}),
            "detected_mode": detected,
            "engine_requests": scorer.requests,
            "rows": [
                [list(k), [None if not np.isfinite(v) else float(v) for v in row]] for k, row in target.rows.items()
            ],
            "samples": samples,
        }
    finally:
        engine.shutdown()
    Path(out_path).write_text(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
