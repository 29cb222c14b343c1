"""Train a small target/draft language-model pair on the project's own clinical text.

Why this exists: DSBD needs a *pair* of causal LMs that share a tokenizer, where the draft is much
cheaper than the target and agrees with it often. No weights may be downloaded, so both models are
trained here, from scratch, on the development data in ``../shared/data``:

- radiology report texts (``radiology/*reports*.csv``: indication, comparison, findings, impression);
- clinical notes inside FHIR resources: ``DocumentReference.content[].attachment.data`` and
  ``DiagnosticReport.presentedForm[].data`` (base64, ``text/*``), in bundles and NDJSON exports.

The texts are never printed; only counts and sizes are.

Usage::

    python -m dsbd.train --data ../shared/data --out var/dsbd-models [--seconds 600] [--steps 600]

writes ``OUT/target`` and ``OUT/draft`` (each with the tokenizer, loadable with
``AutoModelForCausalLM.from_pretrained(path, local_files_only=True)``) and ``OUT/train_meta.json``
(sizes, training time, held-out loss, draft/target top-1 agreement and expected acceptance rate).

Determinism: corpus order, the held-out split (by a hash of each text, so it does not depend on
file order), the tokenizer, initial weights and batch order are all seeded. Training is bounded by
``--steps`` per model (600) and capped by wall-clock (``--seconds`` for both models, 3/5 target and 2/5
draft). When the cap does not cut (412 s on one free core of a 2-core EPYC with bf16 autocast), two runs with the
same ``--threads`` give byte-identical weights on the same machine (checked). When it does (a slow or busy
machine), training stops early and the learning-rate schedule follows whichever bound is nearer, so it
still decays to the end.

The draft is distilled from the trained target (``--distill``): it learns the target's next-token
distribution, not only the data's next token, which is what speculative acceptance rewards.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

EOS = "<|endoftext|>"
PAD = "<|pad|>"
HELDOUT_PERMILLE = 50  # 5 % of the texts, chosen by hash: the bench draws its prompts from these


# ---------------------------------------------------------------------------------------------
# corpus


def _clean(text: str) -> str:
    """Normalise line ends and trailing space: the notes mix CRLF and LF, which wastes vocabulary."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip()


def _radiology_texts(folder: Path) -> Iterator[str]:
    """One text per report row, with section headers, because the model should learn the layout."""
    sections = ("indication", "comparison", "findings", "impression")
    for path in sorted(folder.glob("*reports*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                parts = [f"{name.upper()}: {row[name].strip()}" for name in sections if (row.get(name) or "").strip()]
                if parts:
                    yield "\n".join(parts)


def _attachment_text(att: dict[str, Any]) -> str | None:
    """Decode a FHIR Attachment's inline ``data`` when it is text; binaries (PDF, images) are skipped."""
    data = att.get("data")
    ctype = str(att.get("contentType") or "text/plain")
    if not data or not ctype.startswith("text/"):
        return None
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None
    return raw.decode("utf-8", errors="replace")


def _resource_texts(obj: Any) -> Iterator[str]:
    """Walk any FHIR JSON (bundle, contained resources, single resource) for note attachments."""
    if isinstance(obj, dict):
        rtype = obj.get("resourceType")
        if rtype == "DocumentReference":
            for content in obj.get("content") or []:
                text = _attachment_text((content or {}).get("attachment") or {})
                if text:
                    yield text
        elif rtype == "DiagnosticReport":
            for att in obj.get("presentedForm") or []:
                text = _attachment_text(att or {})
                if text:
                    yield text
        for value in obj.values():
            if isinstance(value, dict | list):
                yield from _resource_texts(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _resource_texts(value)


def _fhir_texts(folder: Path) -> Iterator[str]:
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            with path.open(encoding="utf-8") as fh:
                yield from _resource_texts(json.load(fh))
        elif path.suffix == ".ndjson":
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield from _resource_texts(json.loads(line))


def build_corpus(data_dir: str | os.PathLike[str]) -> list[str]:
    """All texts, cleaned and de-duplicated (Synthea repeats notes verbatim), in a stable order."""
    root = Path(data_dir)
    seen: set[str] = set()
    texts: list[str] = []
    for raw in _chain(_radiology_texts(root / "radiology"), _fhir_texts(root / "fhir")):
        text = _clean(raw)
        if len(text) >= 20 and text not in seen:
            seen.add(text)
            texts.append(text)
    if not texts:
        raise SystemExit(f"no text found under {root} (expected radiology/*.csv and fhir/**)")
    return texts


def _chain(*its: Iterable[str]) -> Iterator[str]:
    for it in its:
        yield from it


def is_heldout(text: str) -> bool:
    """The split by content hash: the same text is held out whatever order the files are read in."""
    digest = hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < HELDOUT_PERMILLE


def split_corpus(texts: list[str]) -> tuple[list[str], list[str]]:
    """(train, held-out)."""
    train = [t for t in texts if not is_heldout(t)]
    held = [t for t in texts if is_heldout(t)]
    return train, held


# ---------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE: no unknown tokens on any input, and a small vocabulary keeps the models small."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=None, pad_token=PAD, model_max_length=512
    )


def encode_stream(tokenizer: Any, texts: list[str]) -> np.ndarray:
    """One long token stream with EOS between texts: training windows may cross text boundaries,
    and the model learns that EOS starts a new report."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


# The target is deep enough that one forward costs several times the draft's even where per-call
# overhead dominates (small batches on a CPU); the draft is ~10x smaller in parameters.
TARGET = ModelShape(hidden=256, layers=6, heads=4, intermediate=704)
DRAFT = ModelShape(hidden=96, layers=2, heads=2, intermediate=256)
# ``--size large``: a target whose forward pass dominates a CPU decode step (about 27 M parameters: vLLM's
# per-step overhead no longer hides it), with a draft about 25x smaller. Head size 64: vLLM's CPU attention
# takes head sizes from 32 up.
LARGE_TARGET = ModelShape(hidden=512, layers=8, heads=8, intermediate=1408)
LARGE_DRAFT = ModelShape(hidden=128, layers=2, heads=2, intermediate=352)
SIZES = {"small": (TARGET, DRAFT), "large": (LARGE_TARGET, LARGE_DRAFT)}


def make_model(shape: ModelShape, tokenizer: Any, max_positions: int, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,  # half the parameters of a small-vocabulary model are embeddings
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class TrainReport:
    params: int
    steps: int
    seconds: float
    tokens_seen: int
    final_train_loss: float
    heldout_loss: float


def train_model(
    model: Any,
    stream: np.ndarray,
    heldout: np.ndarray,
    *,
    seconds: float,
    max_steps: int,
    seq_len: int,
    batch: int,
    lr: float,
    seed: int,
    bf16: bool,
    teacher: Any = None,
    distill: float = 0.0,
    log_every: int = 50,
    name: str = "model",
) -> TrainReport:
    """AdamW with warm-up and cosine decay, random windows of the training stream.

    Time-bounded because the machines this runs on differ by an order of magnitude; the schedule
    follows ``progress = max(step / max_steps, elapsed / seconds)`` so that it always decays to the
    end whichever bound stops the loop. ``bf16`` autocast (weights stay fp32) is 2-3x faster on
    CPUs with AVX512-BF16/AMX, which buys more steps in the same minutes.

    With a ``teacher`` (the draft's target), the loss mixes in ``distill`` * KL(teacher || model): speculative
    sampling accepts a draft token with probability ``sum min(p, q)``, so matching the target's whole
    distribution (not only the data's next token) is what the draft is for.
    """
    import torch

    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = 0.03
    model.train()
    start = time.perf_counter()
    step = 0
    loss_ema = float("nan")
    high = len(stream) - seq_len
    while True:
        elapsed = time.perf_counter() - start
        progress = max(step / max_steps, elapsed / seconds)
        if progress >= 1.0:
            break
        cosine = 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
        scale = progress / warmup if progress < warmup else cosine
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        starts = rng.integers(0, high, size=batch)
        x = torch.from_numpy(np.stack([stream[s : s + seq_len] for s in starts]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=x, labels=x, use_cache=False)  # HF shifts the labels itself
            loss = out.loss
            if teacher is not None and distill > 0:
                with torch.no_grad():
                    p_log = torch.log_softmax(teacher(input_ids=x, use_cache=False).logits.float(), dim=-1)
                q_log = torch.log_softmax(out.logits.float(), dim=-1)
                kl = (p_log.exp() * (p_log - q_log)).sum(-1).mean()
                loss = (1 - distill) * loss + distill * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        value = float(out.loss.detach())
        loss_ema = value if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * value
        if step % log_every == 0:
            print(f"  [{name}] step {step:5d}  {time.perf_counter() - start:6.1f}s  loss {loss_ema:.3f}", flush=True)
    seconds_used = time.perf_counter() - start
    model.eval()
    return TrainReport(
        params=n_params(model),
        steps=step,
        seconds=round(seconds_used, 1),
        tokens_seen=step * batch * seq_len,
        final_train_loss=round(loss_ema, 4),
        heldout_loss=round(heldout_loss(model, heldout, seq_len), 4),
    )


def _windows(stream: np.ndarray, seq_len: int, limit: int) -> np.ndarray:
    n = min(len(stream) // seq_len, limit)
    return stream[: n * seq_len].reshape(n, seq_len)


def heldout_loss(model: Any, heldout: np.ndarray, seq_len: int, limit: int = 64) -> float:
    import torch

    wins = torch.from_numpy(_windows(heldout, seq_len, limit))
    losses = []
    with torch.no_grad():
        for chunk in wins.split(16):
            losses.append(float(model(input_ids=chunk, labels=chunk, use_cache=False).loss) * len(chunk))
    return sum(losses) / len(wins)


def agreement(target: Any, draft: Any, heldout: np.ndarray, seq_len: int, limit: int = 64) -> dict[str, float]:
    """How well the draft predicts the target on held-out text.

    - ``top1_agreement``: share of positions where both models' most likely next token is the same
      (what greedy speculation accepts);
    - ``acceptance_rate``: mean of ``sum_x min(p(x), q(x))`` at temperature 1, the probability that
      speculative *sampling* accepts a draft token (Leviathan et al. 2023, alpha).
    """
    import torch

    wins = torch.from_numpy(_windows(heldout, seq_len, limit))
    agree = accept = total = 0.0
    with torch.no_grad():
        for chunk in wins.split(16):
            p = torch.softmax(target(input_ids=chunk, use_cache=False).logits.float(), dim=-1)
            q = torch.softmax(draft(input_ids=chunk, use_cache=False).logits.float(), dim=-1)
            agree += float((p.argmax(-1) == q.argmax(-1)).sum())
            accept += float(torch.minimum(p, q).sum(-1).sum())
            total += p.shape[0] * p.shape[1]
    return {"top1_agreement": round(agree / total, 4), "acceptance_rate": round(accept / total, 4)}


# ---------------------------------------------------------------------------------------------
# main


def idle_cores() -> int:
    """Cores not already busy (by the 1-minute load average), at least one.

    Why: torch's intra-op threads spin while they wait for each other; on a small machine that other jobs
    share, one thread per core *including the busy ones* made a training step 4x slower than one thread.
    """
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, cores - busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--out", required=True, help="output folder: OUT/target, OUT/draft")
    parser.add_argument(
        "--seconds", type=float, default=600.0, help="wall-clock cap for both models together (3/5 target, 2/5 draft)"
    )
    parser.add_argument("--steps", type=int, default=600, help="training steps per model")
    parser.add_argument(
        "--distill", type=float, default=0.7, help="weight of KL(target || draft) in the draft's loss (0: data only)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="the target/draft shapes")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the idle cores)")
    parser.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast for training (auto: where the CPU has AVX512-BF16)",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads or idle_cores())
    torch.manual_seed(args.seed)
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and bool(torch.cpu._is_avx512_bf16_supported()))
    out = Path(args.out)
    t0 = time.perf_counter()

    texts = build_corpus(args.data)
    train_texts, held_texts = split_corpus(texts)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast {bf16}", flush=True)
    print(
        f"corpus: {len(texts)} texts, {sum(map(len, texts)):,} chars; "
        f"train {len(train_texts)}, held-out {len(held_texts)}",
        flush=True,
    )

    tokenizer = train_tokenizer(train_texts, args.vocab)
    stream = encode_stream(tokenizer, train_texts)
    held = encode_stream(tokenizer, held_texts)
    print(f"tokenizer: vocab {len(tokenizer)}; train {len(stream):,} tokens, held-out {len(held):,}", flush=True)

    reports: dict[str, TrainReport] = {}
    models: dict[str, Any] = {}
    budget = {"target": 0.6 * args.seconds, "draft": 0.4 * args.seconds}
    target_shape, draft_shape = SIZES[args.size]
    for name, shape, lr, seed_offset in (("target", target_shape, 2e-3, 0), ("draft", draft_shape, 3e-3, 1)):
        model = make_model(shape, tokenizer, max_positions=512, seed=args.seed + seed_offset)
        print(f"{name}: {n_params(model):,} parameters, {shape}", flush=True)
        reports[name] = train_model(
            model,
            stream,
            held,
            seconds=budget[name],
            max_steps=args.steps,
            seq_len=args.seq_len,
            batch=args.batch,
            lr=lr,
            seed=args.seed + 10 + seed_offset,
            bf16=bf16,
            name=name,
            teacher=models.get("target") if name == "draft" else None,
            distill=args.distill,
        )
        print(f"{name}: {reports[name]}", flush=True)
        models[name] = model
        model.save_pretrained(out / name, safe_serialization=True)
        tokenizer.save_pretrained(out / name)

    agree = agreement(models["target"], models["draft"], held, args.seq_len)
    shapes = (("target", target_shape), ("draft", draft_shape))
    meta = {
        "data": str(args.data),
        "texts": len(texts),
        "train_texts": len(train_texts),
        "heldout_texts": len(held_texts),
        "heldout_permille": HELDOUT_PERMILLE,
        "vocab_size": len(tokenizer),
        "train_tokens": len(stream),
        "heldout_tokens": len(held),
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bf16_autocast": bf16,
        "distill": args.distill,
        "steps_cap": args.steps,
        "seconds_cap": args.seconds,
        "models": {name: {"shape": asdict(shape), **asdict(reports[name])} for name, shape in shapes},
        "param_ratio": round(reports["target"].params / reports["draft"].params, 2),
        **agree,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: meta[k] for k in ("param_ratio", "top1_agreement", "acceptance_rate", "total_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
