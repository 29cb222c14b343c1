"""Benchmark: DSBD against beam sampling and against vLLM-style one-token-per-step beam search.

Why these three: DSBD's claim is fewer *target* forward passes per generated token at the same output
distribution. The two baselines bracket it:

- ``beam``: the reference beam sampling of ``dsbd.beam`` on the same PyTorch backend: ONE batched target pass
  per step over all W beams (the best a non-speculative decoder can do);
- ``per-beam``: beam search as vLLM runs it, every beam its own request with its own KV cache, so W target
  passes per step with no batching across beams (same sampling rule, so the same output distribution);
- ``dsbd``: ``dsbd.speculative.dsbd_sample`` with the draft model.

Target passes are counted by a forward hook on the target ``nn.Module`` (what actually ran), next to what the
decoder reports in ``DecodeStats``. Wall-clock is per request and includes the prompt's prefill (each request
starts from an empty KV cache), the draft's passes and every bit of Python around them.

Prompts: BOS + the first ``--prompt-tokens`` tokens of held-out texts (``dsbd.train``'s hash split of the
shared data, which the models never trained on).

Usage (from the repository root, after ``python -m dsbd.train --out var/dsbd-models``)::

    python services/llm/bench/bench_dsbd.py --models var/dsbd-models [--widths 2 4] [--prompts 16]
        [--max-tokens 64] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dsbd.api import BeamParams, DecodeStats, DSBDParams

DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
CORE_MODULES = ("dsbd.generator", "dsbd.beam", "dsbd.speculative", "dsbd.torch_backend")


# ---------------------------------------------------------------------------------------------
# the vLLM-style baseline


class PerRequestModel:
    """A ``NextTokenModel`` in which every prefix is a separate request: one forward pass per prefix.

    This is how vLLM's beam search drives the engine: each beam is its own sequence with its own KV cache and
    the step's W beams are W forward passes (here run one after another, as the brief asks: no batching).
    A beam's cache continues its parent's; a parent with several children is copied for all but the last
    (vLLM's copy-on-write), so the baseline never recomputes a prefix. It has no ``forest_logprobs``, so
    ``dsbd.forest.score_sequences`` calls ``next_logprobs`` with every active beam.
    """

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._entries: dict[tuple[int, ...], Any] = {}  # full sequence -> KV cache over all of it

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        import torch

        keys = [tuple(p) for p in prefixes]
        parents = [self._longest_cached(k) for k in keys]
        users: dict[tuple[int, ...] | None, int] = {}
        for parent in parents:
            users[parent] = users.get(parent, 0) + 1
        rows = []
        with torch.no_grad():
            for key, parent in zip(keys, parents, strict=True):
                cache = None
                start = 0
                if parent is not None:
                    users[parent] -= 1
                    cache = self._entries[parent] if users[parent] == 0 else copy.deepcopy(self._entries[parent])
                    start = len(parent)
                ids = torch.tensor([key[start:]], device=self.device)
                positions = torch.arange(start, len(key), device=self.device)[None]
                out = self.model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
                self._entries[key] = out.past_key_values
                rows.append(torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu().numpy())
        return np.stack(rows)

    def _longest_cached(self, key: tuple[int, ...]) -> tuple[int, ...] | None:
        for n in range(len(key) - 1, 0, -1):
            if key[:n] in self._entries:
                return key[:n]
        return None

    def retain(self, sequences: Sequence[Sequence[int]]) -> None:
        """Finished or dropped beams free their cache, as a request that ends does."""
        alive = [tuple(s) for s in sequences]
        self._entries = {k: v for k, v in self._entries.items() if any(s[: len(k)] == k for s in alive)}

    def reset(self) -> None:
        self._entries = {}


# ---------------------------------------------------------------------------------------------
# measuring


class PassCounter:
    """Counts and times calls of a module's ``forward``: the ground truth for 'target forward passes', and
    the split of wall-clock between target, draft and the decoder's own work.

    ``sync`` (``torch.cuda.synchronize`` on a GPU) makes the timing cover the kernels, not only their launch.
    """

    def __init__(self, module: Any, sync: Callable[[], None] | None = None) -> None:
        self.calls = 0
        self.seconds = 0.0
        self._sync = sync or (lambda: None)
        self._start = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


@dataclass
class Row:
    method: str
    width: int
    requests: int = 0
    tokens: int = 0  # generated tokens (longest beam) over all requests
    target_passes: int = 0  # counted by the hook
    reported_passes: int = 0  # DecodeStats.target_forward_passes
    draft_passes: int = 0
    seconds: list[float] = field(default_factory=list)
    target_seconds: float = 0.0  # inside target forwards
    draft_seconds: float = 0.0  # inside draft forwards
    accepted: int = 0
    proposed: int = 0
    widths: list[int] = field(default_factory=list)
    iterations: int = 0

    @property
    def passes_per_token(self) -> float:
        return self.target_passes / max(self.tokens, 1)

    @property
    def ms_per_request(self) -> float:
        return 1000 * statistics.fmean(self.seconds) if self.seconds else float("nan")

    @property
    def ms_per_token(self) -> float:
        return 1000 * sum(self.seconds) / max(self.tokens, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "width": self.width,
            "requests": self.requests,
            "tokens": self.tokens,
            "target_passes": self.target_passes,
            "reported_target_passes": self.reported_passes,
            "draft_passes": self.draft_passes,
            "target_passes_per_token": round(self.passes_per_token, 4),
            "ms_per_request": round(self.ms_per_request, 2),
            "ms_per_token": round(self.ms_per_token, 3),
            "acceptance_rate": round(self.accepted / self.proposed, 4) if self.proposed else None,
            "mean_width": round(statistics.fmean(self.widths), 3) if self.widths else None,
            "tokens_per_iteration": round(self.tokens / self.iterations, 3) if self.iterations else None,
            "target_ms_per_pass": round(1000 * self.target_seconds / max(self.target_passes, 1), 3),
            "draft_ms_per_pass": round(1000 * self.draft_seconds / self.draft_passes, 3) if self.draft_passes else None,
            "target_ms_per_token": round(1000 * self.target_seconds / max(self.tokens, 1), 3),
            "draft_ms_per_token": round(1000 * self.draft_seconds / max(self.tokens, 1), 3),
            "other_ms_per_token": round(
                1000 * (sum(self.seconds) - self.target_seconds - self.draft_seconds) / max(self.tokens, 1), 3
            ),
        }


def run_method(
    row: Row,
    prompts: list[list[int]],
    decode: Callable[[list[int], int], Any],
    counter: PassCounter,
    draft_counter: PassCounter,
    reset: Callable[[], None],
    seed: int,
) -> Row:
    for i, prompt in enumerate(prompts):
        reset()  # every request pays its own prefill, as separate requests to a server do
        before = counter.calls
        target_s, draft_s = counter.seconds, draft_counter.seconds
        t0 = time.perf_counter()
        result = decode(prompt, seed + i)
        row.seconds.append(time.perf_counter() - t0)
        stats: DecodeStats = result.stats
        row.requests += 1
        row.tokens += stats.generated_tokens
        row.target_passes += counter.calls - before
        row.target_seconds += counter.seconds - target_s
        row.draft_seconds += draft_counter.seconds - draft_s
        row.reported_passes += stats.target_forward_passes
        row.draft_passes += stats.draft_forward_passes
        row.accepted += stats.accepted_tokens
        row.proposed += sum(stats.widths)
        row.widths += stats.widths
        row.iterations += stats.iterations
    return row


def load_prompts(data: Path, tokenizer: Any, count: int, prompt_tokens: int) -> list[list[int]]:
    """BOS + the opening tokens of held-out texts, spread evenly over the held-out set (radiology and notes)."""
    from dsbd.train import build_corpus, split_corpus

    _, held = split_corpus(build_corpus(data))
    bos = tokenizer.bos_token_id
    encoded = [tokenizer.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in held]
    encoded = [e for e in encoded if len(e) >= prompt_tokens]
    if not encoded:
        raise SystemExit("no held-out text is long enough for --prompt-tokens")
    picks = np.linspace(0, len(encoded) - 1, num=min(count, len(encoded))).round().astype(int)
    return [[bos, *encoded[i][:prompt_tokens]] for i in picks]


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------
# main


def core_available() -> list[str]:
    """Missing core modules (the bench is written against them; without them it cannot run)."""
    import importlib.util

    return [m for m in CORE_MODULES if importlib.util.find_spec(m) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="folder with target/ and draft/ (python -m dsbd.train)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder (held-out prompts)")
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--gamma", type=int, default=DSBDParams.gamma)
    parser.add_argument("--threshold", type=float, default=DSBDParams.threshold)
    parser.add_argument("--max-width", type=int, default=None, help="widest draft layer (default: W)")
    parser.add_argument(
        "--methods", nargs="+", default=["dsbd", "beam", "per-beam"], choices=["dsbd", "beam", "per-beam"]
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: decode steps are a few tokens wide, where more threads only "
        "add synchronisation; 0: all cores)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    missing = core_available()
    if missing:
        print(f"cannot run: the DSBD core is missing {', '.join(missing)}", file=sys.stderr)
        return 2

    import torch
    from dsbd.beam import beam_sample
    from dsbd.speculative import dsbd_sample
    from dsbd.torch_backend import TorchCausalLM
    from transformers import AutoTokenizer

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cannot run: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    models = Path(args.models)
    tokenizer = AutoTokenizer.from_pretrained(models / "target", local_files_only=True)
    target = TorchCausalLM.from_pretrained(models / "target", device=args.device)
    draft = TorchCausalLM.from_pretrained(models / "draft", device=args.device)
    per_beam = PerRequestModel(target.model)  # the same weights, another way of calling them
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    counter = PassCounter(target.model, sync)
    draft_counter = PassCounter(draft.model, sync)
    prompts = load_prompts(Path(args.data), tokenizer, args.prompts, args.prompt_tokens)
    meta_path = models / "train_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}

    def reset_all() -> None:
        target.reset()
        draft.reset()
        per_beam.reset()

    dsbd = DSBDParams(gamma=args.gamma, threshold=args.threshold, max_width=args.max_width)
    rows: list[Row] = []
    for width in args.widths:
        params = BeamParams(
            width=width, max_tokens=args.max_tokens, temperature=args.temperature, eos_token_id=tokenizer.eos_token_id
        )
        for method in args.methods:

            def decode(prompt: list[int], seed: int, method: str = method, params: BeamParams = params) -> Any:
                if method == "dsbd":
                    return dsbd_sample(target, draft, prompt, params, dsbd, seed)
                return beam_sample(target if method == "beam" else per_beam, prompt, params, seed)

            run_method(Row(method, width), prompts[:1], decode, counter, draft_counter, reset_all, args.seed)  # warm-up
            row = run_method(Row(method, width), prompts, decode, counter, draft_counter, reset_all, args.seed)
            rows.append(row)
            d = row.as_dict()
            print(
                f"  W={width} {method:9s} {d['target_passes_per_token']:.3f} passes/token "
                f"{d['ms_per_request']:.0f} ms/request {d['ms_per_token']:.2f} ms/token",
                file=sys.stderr,
                flush=True,
            )

    report = summarise(rows, args, meta)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def summarise(rows: list[Row], args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    by = {(r.method, r.width): r for r in rows}
    speedups = {}
    for width in args.widths:
        d, b = by.get(("dsbd", width)), by.get(("beam", width))
        if d and b:
            speedups[str(width)] = {
                "target_passes": round(b.passes_per_token / d.passes_per_token, 3),
                "wall_clock": round(b.ms_per_token / d.ms_per_token, 3),
            }
    return {
        "machine": machine(),
        "device": args.device,
        "settings": {
            k: getattr(args, k)
            for k in (
                "prompts",
                "prompt_tokens",
                "max_tokens",
                "temperature",
                "gamma",
                "threshold",
                "max_width",
                "seed",
                "widths",
            )
        },
        "models": {k: meta.get(k) for k in ("param_ratio", "top1_agreement", "acceptance_rate")}
        | {name: (meta.get("models") or {}).get(name, {}).get("params") for name in ("target", "draft")},
        "rows": [r.as_dict() for r in rows],
        "speedup_dsbd_over_beam": speedups,
    }


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"device {report['device']}{', ' + m['gpu'] if 'gpu' in m else ''}"
    )
    s = report["settings"]
    print(
        f"{s['prompts']} held-out prompts of {s['prompt_tokens']} tokens, max_tokens {s['max_tokens']}, "
        f"temperature {s['temperature']}, gamma {s['gamma']}, threshold {s['threshold']}, "
        f"max_width {s['max_width'] or 'W'}"
    )
    header = (
        f"| {'method':9s} | W | target passes/token | reported | draft passes | ms/request | ms/token "
        f"| acceptance | mean width | tokens/iter |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in report["rows"]:
        reported = r["reported_target_passes"] / max(r["tokens"], 1)
        acc = f"{r['acceptance_rate']:.3f}" if r["acceptance_rate"] is not None else "-"
        width = f"{r['mean_width']:.2f}" if r["mean_width"] is not None else "-"
        tpi = f"{r['tokens_per_iteration']:.2f}" if r["tokens_per_iteration"] is not None else "-"
        print(
            f"| {r['method']:9s} | {r['width']} | {r['target_passes_per_token']:19.3f} | {reported:8.3f} "
            f"| {r['draft_passes']:12d} | {r['ms_per_request']:10.1f} | {r['ms_per_token']:8.2f} "
            f"| {acc:>10s} | {width:>10s} | {tpi:>11s} |"
        )
    print("\nwhere the time goes (ms):")
    print("| method    | W | target/pass | draft/pass | target/token | draft/token | other/token | total/token |")
    print("|-----------|---|-------------|------------|--------------|-------------|-------------|-------------|")
    for r in report["rows"]:
        dpp = f"{r['draft_ms_per_pass']:.2f}" if r["draft_ms_per_pass"] is not None else "-"
        print(
            f"| {r['method']:9s} | {r['width']} | {r['target_ms_per_pass']:11.2f} | {dpp:>10s} "
            f"| {r['target_ms_per_token']:12.2f} | {r['draft_ms_per_token']:11.2f} | {r['other_ms_per_token']:11.2f} "
            f"| {r['ms_per_token']:11.2f} |"
        )
    for width, sp in report["speedup_dsbd_over_beam"].items():
        print(
            f"speedup of DSBD over beam sampling at W={width}: {sp['target_passes']:.2f}x in target passes, "
            f"{sp['wall_clock']:.2f}x in wall-clock"
        )


if __name__ == "__main__":
    raise SystemExit(main())
