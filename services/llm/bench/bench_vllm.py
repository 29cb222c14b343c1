"""Benchmark on a real vLLM, side by side in one run: DSBD through the plugin, vLLM's own beam search, sampling.

One vLLM server (PyPI's CPU build, ``var/vllm-venv``) serves the target; the dsbd plugin loads the draft
(``DSBD_DRAFT_MODEL``). For each width W and each held-out prompt (BOS + the opening tokens of a text the
models never trained on, ``bench_dsbd.load_prompts``):

- ``dsbd``: ``POST /plugins/dsbd/v1/completions`` (n = W beams, temperature 1, the target scored by vLLM);
- ``beam``: ``POST /v1/completions`` with ``use_beam_search`` (vLLM's beam search, n = W);
- ``sample``: ``POST /v1/completions``, n = W independent samples at temperature 1 (no beams: the floor).

Measured per method, summed over the prompts: wall-clock per generated position (the request's whole time,
prefill included, divided by the positions of its longest answer), **engine steps per position** (vLLM's own
``vllm:iteration_tokens_total`` count from ``/metrics``: every forward pass of the target, whoever asked for
it), and for DSBD its acceptance (accepted proposals / proposals) and plugin scoring calls per position.

    var/vllm-venv must exist (make vllm-venv); models from ``python -m dsbd.train --size large``.
    .venv/bin/python services/llm/bench/bench_vllm.py --models var/dsbd-models-large --widths 2 4
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dsbd import DEFAULT_DATA, load_prompts, machine  # noqa: E402

from tests.vllm_harness import SERVED_NAME, VLLMServer  # noqa: E402

KEY = "bench-key"
STEPS = re.compile(r"^vllm:iteration_tokens_total_count\{[^}]*\}\s+([0-9.e+]+)$", re.MULTILINE)


def engine_steps(base_url: str) -> float:
    """Forward passes the engine has run so far (one per scheduler iteration)."""
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    return sum(float(v) for v in STEPS.findall(text))


def run_method(base_url: str, method: str, prompts: list[list[int]], width: int, max_tokens: int) -> dict[str, Any]:
    wall = positions = accepted = proposed = scorer_calls = 0.0
    steps_before = engine_steps(base_url)
    for seed, ids in enumerate(prompts):
        if method == "dsbd":
            url, body = f"{base_url}/plugins/dsbd/v1/completions", {"prompt_token_ids": ids, "seed": seed}
        else:
            url, body = f"{base_url}/v1/completions", {"prompt": ids, "seed": seed, "ignore_eos": True}
            if method == "beam":
                body["use_beam_search"] = True
        body.update({"model": SERVED_NAME, "n": width, "max_tokens": max_tokens, "temperature": 1.0})
        started = time.perf_counter()
        response = requests.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)
        wall += time.perf_counter() - started
        response.raise_for_status()
        data = response.json()
        if method == "dsbd":
            stats = data["stats"]
            positions += stats["generated_tokens"]
            accepted += stats["accepted_tokens"]
            proposed += sum(stats["widths"])
            scorer_calls += stats["target_forward_passes"]
        else:
            positions += data["usage"]["completion_tokens"] / len(data["choices"])  # ignore_eos: max_tokens each
    steps = engine_steps(base_url) - steps_before
    row = {
        "method": method,
        "width": width,
        "prompts": len(prompts),
        "positions": int(positions),
        "ms_per_position": round(1000 * wall / positions, 2),
        "engine_steps_per_position": round(steps / positions, 3),
    }
    if method == "dsbd":
        row["acceptance"] = round(accepted / proposed, 3) if proposed else None
        row["scoring_calls_per_position"] = round(scorer_calls / positions, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="a folder with target/ and draft/ (dsbd.train)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    models = Path(args.models)
    tokenizer = AutoTokenizer.from_pretrained(models / "target", local_files_only=True)
    prompts = load_prompts(Path(args.data), tokenizer, args.prompts, args.prompt_tokens)
    log = Path("var") / "bench_vllm_server.log"
    log.parent.mkdir(exist_ok=True)
    server = VLLMServer(
        models / "target",
        log,
        env={"VLLM_PLUGINS": "dsbd", "DSBD_DRAFT_MODEL": str(models / "draft"), "DSBD_API_KEY": KEY},
        max_model_len=512,
    ).start()
    rows: list[dict[str, Any]] = []
    try:
        started = time.perf_counter()
        server.wait_ready()
        print(f"vLLM ready in {time.perf_counter() - started:.0f} s (log: {log})", flush=True)
        for width in args.widths:
            run_method(server.base_url, "dsbd", prompts[:1], width, 4)  # warm-up: the first call compiles
            for method in ("dsbd", "beam", "sample"):
                row = run_method(server.base_url, method, prompts, width, args.max_tokens)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.stop()

    meta = json.loads((models / "train_meta.json").read_text()) if (models / "train_meta.json").exists() else {}
    print(f"\nmachine: {machine()}")
    if meta:
        sizes = {k: v["params"] for k, v in meta["models"].items()}
        print(
            f"models: target {sizes['target']:,} parameters, draft {sizes['draft']:,}; "
            f"held-out acceptance rate (draft vs target) {meta.get('acceptance_rate')}"
        )
    print(f"{args.prompts} prompts of {args.prompt_tokens} tokens, {args.max_tokens} new tokens\n")
    print("| W | method | ms / position | engine steps / position | DSBD acceptance | vs beam (wall) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        beam = next(r for r in rows if r["width"] == row["width"] and r["method"] == "beam")
        ratio = beam["ms_per_position"] / row["ms_per_position"]
        acceptance = row.get("acceptance", "")
        print(
            f"| {row['width']} | {row['method']} | {row['ms_per_position']} | {row['engine_steps_per_position']} "
            f"| {acceptance} | {ratio:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "models": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
