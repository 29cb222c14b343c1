"""LoRA fine-tuning of a local causal LM on the instruction JSONL of ``llm_path.export_instructions``.

Meant for a GPU (bf16 there; float32 on CPU, where only tests run it on a tiny model):

    python -m services.radiology.lora_finetune --base /models/base --data var/radiology/instructions.jsonl \\
        --out /models/lora/radiology-findings --steps 1000 --lr 2e-4 --r 16 --alpha 32

The base model and tokenizer load from a local folder only (``local_files_only=True``): nothing is
downloaded. Each record becomes the chat turn ``llm_path.user_content(instruction, input)`` rendered with
the tokenizer's chat template (the dev server's plain role tags when it has none), so training sees the
prompt that inference sends; the loss covers only the answer (``output`` + EOS). The adapter is saved with
``save_pretrained`` (``adapter_config.json`` + ``adapter_model.safetensors``) for
``vllm serve BASE --enable-lora --lora-modules radiology-findings=OUT``; ``--merged-out DIR`` also writes
the merged full model (e.g. for the CPU dev server, which serves one model and no adapters).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.radiology.llm_path import user_content

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def render_prompt(tokenizer: Any, instruction: str, input_text: str) -> str:
    """The prompt text of one record, as the serving side renders the chat turn."""
    messages = [{"role": "user", "content": user_content(instruction, input_text)}]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    lines = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]  # dsbd.protocol.render_chat
    return "".join(lines) + "<|assistant|>\n"


def load_records(path: str | Path) -> list[dict[str, str]]:
    records = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("instruction", "output")):
            raise ValueError(f"{path}:{n}: a record needs string 'instruction' and 'output' fields")
        records.append(
            {"instruction": row["instruction"], "input": str(row.get("input") or ""), "output": row["output"]}
        )
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def encode(tokenizer: Any, record: dict[str, str], max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): prompt tokens labelled -100; the prompt is cut from the left to fit."""
    prompt = tokenizer(render_prompt(tokenizer, record["instruction"], record["input"])).input_ids
    answer = tokenizer(record["output"], add_special_tokens=False).input_ids
    if tokenizer.eos_token_id is not None:
        answer = [*answer, tokenizer.eos_token_id]
    answer = answer[:max_length]
    prompt = prompt[-(max_length - len(answer)) :] if max_length > len(answer) else []
    return [*prompt, *answer], [-100] * len(prompt) + answer


def train_lora(
    base: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    steps: int = 1000,
    lr: float = 2e-4,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    batch_size: int = 8,
    max_length: int = 1024,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    seed: int = 0,
    device: str | None = None,
    merged_out: str | Path | None = None,
) -> list[float]:
    """Fit a LoRA adapter for ``steps`` AdamW steps and save it to ``out``; the loss per step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if steps < 1 or batch_size < 1 or r < 1:
        raise ValueError("steps, batch size and r must be >= 1")
    random.seed(seed)
    torch.manual_seed(seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    model: Any = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    model = model.to(device=device, dtype=dtype)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)
    examples = [encode(tokenizer, rec, max_length) for rec in load_records(data)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        batch: list[tuple[list[int], list[int]]] = []
        while len(batch) < min(batch_size, len(examples)):
            if not order:
                order = random.sample(range(len(examples)), len(examples))
            batch.append(examples[order.pop()])
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (row, lab) in enumerate(batch):  # right padding
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(row)] = 1
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    model.eval()
    out = Path(out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(out)
    settings = {"base": str(base), "data": str(data), "steps": steps, "lr": lr, "r": r, "alpha": alpha}
    settings |= {"dropout": dropout, "batch_size": batch_size, "max_length": max_length, "seed": seed}
    (out / "training_args.json").write_text(json.dumps({**settings, "losses": losses}, indent=1), encoding="utf-8")
    if merged_out is not None:
        merged: Any = model.merge_and_unload()
        merged.save_pretrained(str(merged_out))
        tokenizer.save_pretrained(merged_out)
    return losses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.radiology.lora_finetune", description=__doc__)
    parser.add_argument("--base", required=True, help="local folder of the base causal LM and its tokenizer")
    parser.add_argument("--data", required=True, help="instruction JSONL from llm_path.export_instructions")
    parser.add_argument("--out", required=True, help="folder for the adapter (save_pretrained)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--target-modules", default=",".join(DEFAULT_TARGET_MODULES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--merged-out", help="also save the merged full model here")
    args = parser.parse_args(argv)
    losses = train_lora(
        args.base,
        args.data,
        args.out,
        steps=args.steps,
        lr=args.lr,
        r=args.r,
        alpha=args.alpha,
        dropout=args.dropout,
        batch_size=args.batch_size,
        max_length=args.max_length,
        target_modules=[m.strip() for m in args.target_modules.split(",") if m.strip()],
        seed=args.seed,
        device=args.device,
        merged_out=args.merged_out,
    )
    print(f"saved the adapter to {args.out}; loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
