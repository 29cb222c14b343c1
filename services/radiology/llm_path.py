"""The LLM path of the radiology twin (after Wei et al., arXiv 2409.16563, RadReportX).

The task is a multiple-choice instruction: given a report, answer which findings of the label schema it
reports as present, or "Normal". A base LLM is fine-tuned with LoRA on the weak labels
(``export_instructions`` -> ``services/radiology/lora_finetune.py``) and served with vLLM plus the adapter:

    vllm serve /models/base --enable-lora --max-lora-rank 16 \\
        --lora-modules radiology-findings=/models/lora/radiology-findings

vLLM then serves the adapter under its own model name, so a request selects it with
``"model": "radiology-findings"`` (``ADAPTER_NAME``); ``"model": <base name>`` still answers with the base
model. ``classify_with_llm`` sends its requests through ``shared.llm.LLMClient`` with that model name. The
CPU dev server (``dsbd.serve``) serves exactly one model and ignores ``model``: to try an adapter there,
merge it (``lora_finetune.py --merged-out DIR``) and serve the merged folder as ``--target``.

Two answer formats, the same for training and inference (the adapter only learns the format it saw):

- ``"json"`` (default): a flat JSON object with one boolean per class, keys in schema order, e.g.
  ``{"Atelectasis":false,"Cardiomegaly":true,...}``; all false = Normal. Requests are constrained to it
  with a JSON schema (``response_format: json_schema``): the dev server's constrained decoder takes flat
  objects of scalars/enums but no arrays, so a ``{"findings": [enum...]}`` array is not an option, and
  vLLM takes the same schema. Every answer is then valid, even from an untrained model.
- ``"list"``: the paper's comma-separated class names in schema order, or ``Normal``. Unconstrained
  (nothing in the supported subset expresses "a subset in order" short of enumerating 2^n choices);
  ``parse_answer`` reads it and drops unknown names.

Nothing here decides anything on its own: the output is a label set to score against human labels
(``score``) or to compare with the weak labeler and the trained classifier.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from services.radiology.schema import NORMAL, SCHEMAS, Finding, Report, present_statuses

if TYPE_CHECKING:
    from shared.llm import LLMClient

ADAPTER_NAME = "radiology-findings"
AnswerFormat = Literal["json", "list"]
NORMAL_ANSWER = "Normal"

_INSTRUCTION_LIST = (
    "You are a radiologist. Read the chest X-ray report and choose every finding it reports as present, "
    "only from this list: {choices}. Answer with the chosen names separated by commas, in the order of the "
    "list, or answer Normal if none of them is present."
)
_INSTRUCTION_JSON = (
    "You are a radiologist. Read the chest X-ray report and mark each of these findings true if the report "
    "says it is present, false otherwise: {choices}. Answer with a JSON object with one key per finding, in "
    "that order."
)


# -- schema helpers ----------------------------------------------------------------------------------
def resolve_schema(schema: str | Sequence[str]) -> tuple[str, ...]:
    """The class names of ``schema`` (a name in ``SCHEMAS`` or the classes themselves), ``normal`` left out."""
    if isinstance(schema, str):
        if schema not in SCHEMAS:
            raise ValueError(f"unknown schema {schema!r}; choose one of {sorted(SCHEMAS)}")
        classes: Sequence[str] = SCHEMAS[schema]
    else:
        classes = schema
    out = tuple(c for c in classes if c != NORMAL)
    if not out or len(set(out)) != len(out):
        raise ValueError("a schema needs at least one class and no duplicates")
    return out


def schema_name(schema: str | Sequence[str]) -> str:
    """The ``SCHEMAS`` name whose classes include ``schema``'s (``CHESTXRAY8`` -> ``openi``)."""
    if isinstance(schema, str):
        resolve_schema(schema)
        return schema
    classes = set(resolve_schema(schema))
    for name, known in SCHEMAS.items():
        if classes <= set(known):
            return name
    raise ValueError("the classes belong to no known schema")


def answer_schema(schema: str | Sequence[str]) -> dict[str, Any]:
    """The JSON schema of the ``json`` answer: a flat object, one required boolean per class, in order."""
    classes = resolve_schema(schema)
    return {
        "type": "object",
        "properties": {c: {"type": "boolean"} for c in classes},
        "required": list(classes),
        "additionalProperties": False,
    }


def instruction(schema: str | Sequence[str], answer_format: AnswerFormat = "json") -> str:
    template = _INSTRUCTION_JSON if answer_format == "json" else _INSTRUCTION_LIST
    return template.format(choices=", ".join(resolve_schema(schema)))


def report_text(report: Report) -> str:
    """The instruction's input: the sections that carry findings (indication is context, not findings)."""
    return "\n".join(f"{name.upper()}: {text.strip()}" for name, text in report.sections())


def prompt_messages(
    report: Report, schema: str | Sequence[str], answer_format: AnswerFormat = "json"
) -> list[dict[str, str]]:
    """The chat turn for one report: the same text the fine-tuning script renders (``user_content``)."""
    return [{"role": "user", "content": user_content(instruction(schema, answer_format), report_text(report))}]


def user_content(instruction_text: str, input_text: str) -> str:
    return f"{instruction_text}\n\n{input_text}" if input_text else instruction_text


def render_answer(labels: Iterable[str], schema: str | Sequence[str], answer_format: AnswerFormat = "json") -> str:
    """The target answer for a label set (names outside the schema, and ``normal``, are ignored)."""
    classes = resolve_schema(schema)
    present = set(labels)
    if answer_format == "json":
        return json.dumps({c: c in present for c in classes}, separators=(",", ":"))
    chosen = [c for c in classes if c in present]
    return ", ".join(chosen) if chosen else NORMAL_ANSWER


# -- 1. export ---------------------------------------------------------------------------------------
def positive_labels(findings: Iterable[Finding], statuses: Sequence[str] | None = None) -> set[str]:
    """The present classes; ``statuses`` None: the uncertain policy (``schema.present_statuses``)."""
    present = present_statuses() if statuses is None else statuses
    return {f.label for f in findings if f.status in present and f.label != NORMAL}


def export_instructions(
    reports: Sequence[Report],
    weak_labels: Sequence[Sequence[Finding]] | None,
    schema: str | Sequence[str],
    out_jsonl: str | Path,
    *,
    answer_format: AnswerFormat = "json",
    uncertain_positive: bool | None = None,
) -> int:
    """Write one ``{instruction, input, output}`` JSON line per report with text; the number written.

    ``weak_labels[i]`` are the weak labeler's findings of ``reports[i]`` (None: run
    ``services.radiology.labeler.weak_label`` here). A class is present when its status counts as present
    under the uncertain policy (``schema.present_statuses(uncertain_positive)``; default U-Zeros: positive
    only, the same policy as the labeler's scoring and the trainer's targets). ``output`` is
    ``render_answer``: the class names in schema order joined by ", " or "Normal" (``list``), or the
    boolean object (``json``).
    """
    classes = resolve_schema(schema)
    if weak_labels is None:
        from services.radiology.labeler import weak_label_many

        weak_labels = weak_label_many(reports, schema_name(schema))
    if len(weak_labels) != len(reports):
        raise ValueError(f"{len(reports)} reports but {len(weak_labels)} weak label lists")
    text = instruction(classes, answer_format)
    statuses = present_statuses(uncertain_positive)
    path = Path(out_jsonl)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        for report, findings in zip(reports, weak_labels, strict=True):
            body = report_text(report)
            if not body:
                continue  # nothing to read: not a training example
            answer = render_answer(positive_labels(findings, statuses), classes, answer_format)
            record = {"instruction": text, "input": body, "output": answer, "uid": report.uid}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    return written


# -- 2. parse ----------------------------------------------------------------------------------------
def _norm(name: str) -> str:
    """Lower case, ``_``/``-`` as spaces, single spaces, no surrounding punctuation or quotes."""
    cleaned = name.replace("_", " ").replace("-", " ").lower()
    return " ".join(cleaned.split()).strip(" .;:!?'\"`*()[]{}")


def parse_answer(text: str, schema: str | Sequence[str]) -> set[str]:
    """The classes an answer names, in either format; ``{"normal"}`` for an explicit Normal answer.

    Case, spacing, ``_``/``-``, quotes and trailing punctuation do not matter; names outside the schema
    are dropped; a JSON object counts the keys whose value is true (or "yes"/"true"). An answer that
    names findings is not normal even if it also says Normal. Nothing recognisable: the empty set.
    """
    classes = resolve_schema(schema)
    lookup = {_norm(c): c for c in classes}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            found = {
                lookup[_norm(str(k))]
                for k, v in obj.items()
                if _norm(str(k)) in lookup and (v is True or str(v).strip().lower() in {"true", "yes", "1"})
            }
            return found or {NORMAL}
    pieces = stripped.replace(";", ",").replace("\n", ",").replace(" and ", ",").split(",")
    found = {lookup[key] for key in (_norm(p) for p in pieces) if key in lookup}
    if found:
        return found
    if any(_norm(p) in {"normal", "none", "no findings", "no finding"} for p in pieces):
        return {NORMAL}
    return set()


# -- 3. classify -------------------------------------------------------------------------------------
def findings_of(labels: set[str], classes: Sequence[str]) -> list[Finding]:
    """Positive ``Finding``s in schema order (``normal`` last when it is the answer); no evidence spans."""
    out = [Finding(c, "positive") for c in classes if c in labels]
    if not out and NORMAL in labels:
        out.append(Finding(NORMAL, "positive"))
    return out


def classify_with_llm(
    reports: Sequence[Report],
    client: LLMClient,
    schema: str | Sequence[str],
    model: str = ADAPTER_NAME,
    *,
    answer_format: AnswerFormat = "json",
    max_tokens: int = 128,
    seed: int | None = 0,
) -> list[list[Finding]]:
    """The LLM's positive findings per report (``[Finding("normal", "positive")]`` for a Normal answer).

    Each request goes through ``client`` with ``model`` as the request's model name: under vLLM with
    ``--enable-lora --lora-modules NAME=PATH`` that name selects the LoRA adapter (default
    ``ADAPTER_NAME``). ``json``: ``chat_json`` constrained by ``answer_schema`` at temperature 0.
    ``list``: a plain chat answer at temperature 0 (``max_tokens``), read by ``parse_answer``. A report
    without text gets no request and no findings. ``LLMUnavailable``/``UpstreamError`` propagate: the
    caller decides (the twins turn them into needs-review).
    """
    classes = resolve_schema(schema)
    llm = dataclasses.replace(client, model=model) if model != client.model else client
    json_schema = answer_schema(classes)
    out: list[list[Finding]] = []
    for report in reports:
        if not report_text(report):
            out.append([])
            continue
        messages = prompt_messages(report, classes, answer_format)
        if answer_format == "json":
            answer: Mapping[str, Any] = llm.chat_json(messages, json_schema, temperature=0.0, seed=seed)
            text = json.dumps(dict(answer))
        else:
            text = llm.chat(messages, temperature=0.0, max_tokens=max_tokens, seed=seed)[0]
        out.append(findings_of(parse_answer(text, classes), classes))
    return out


# -- evaluation hook -----------------------------------------------------------------------------------
def label_matrix(label_sets: Sequence[Iterable[str]], classes: Sequence[str]) -> Any:
    """0/1 (reports x classes); ``normal`` (when a column) is 1 exactly when no other class is present."""
    import numpy as np

    findings = [c for c in classes if c != NORMAL]
    rows = []
    for labels in label_sets:
        present = set(labels)
        row = [1.0 if c in present else 0.0 for c in classes]
        if NORMAL in classes:
            row[list(classes).index(NORMAL)] = 0.0 if present & set(findings) else 1.0
        rows.append(row)
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(classes))


def score(
    predictions: Sequence[Iterable[str]],
    gold: Sequence[Iterable[str]],
    classes: Sequence[str],
    subset: Sequence[str] | None = None,
) -> Any:
    """P/R/F1 of predicted label sets against gold label sets: ``services.radiology.evaluate.score``.

    ``predictions`` e.g. ``[{f.label for f in fs} for fs in classify_with_llm(...)]``; ``gold`` the human
    labels' positive classes per report, aligned. Returns ``evaluate.Scores``.
    """
    from services.radiology.evaluate import score as evaluate_score

    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} predictions but {len(gold)} gold label sets")
    return evaluate_score(label_matrix(gold, classes), label_matrix(predictions, classes), classes, subset)


# -- predictions file (what ``oncotwin radiology eval --predictions`` scores) ----------------------------
def write_predictions(reports: Sequence[Report], results: Sequence[Sequence[Finding]], out_jsonl: str | Path) -> int:
    """One ``{"uid", "labels"}`` JSON line per report (``labels``: the answer's classes, ``["normal"]`` for a
    Normal answer, ``[]`` when nothing was recognisable), aligned with ``classify_with_llm``'s output."""
    if len(reports) != len(results):
        raise ValueError(f"{len(reports)} reports but {len(results)} results")
    path = Path(out_jsonl)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for report, findings in zip(reports, results, strict=True):
            fh.write(json.dumps({"uid": report.uid, "labels": [f.label for f in findings]}) + "\n")
    return len(reports)


def _labels_of(row: Mapping[str, Any], classes: Sequence[str], where: str) -> set[str]:
    """A row's predicted classes: ``labels`` (a list, or names joined by , or ;), a raw ``answer``/``output``
    (read by ``parse_answer``), or one 0/1 column per class."""
    if "labels" in row:
        value = row["labels"]
        names = value if isinstance(value, list) else str(value or "").replace(";", ",").split(",")
        lookup = {_norm(c): c for c in (*classes, NORMAL)}
        unknown = [n for n in names if str(n).strip() and _norm(str(n)) not in lookup]
        if unknown:
            raise ValueError(f"{where}: unknown class {unknown[0]!r}")
        return {lookup[_norm(str(n))] for n in names if str(n).strip()}
    for key in ("answer", "output"):
        if key in row:
            return parse_answer(str(row[key] or ""), classes)
    present = [c for c in classes if c in row]
    if not present:
        raise ValueError(f"{where}: give labels, answer or one 0/1 column per class")
    return {c for c in present if str(row[c]).strip().lower() in {"1", "1.0", "true", "yes"}}


def read_predictions(path: str | Path, classes: Sequence[str]) -> dict[str, set[str]]:
    """uid -> predicted classes, from a JSONL (``write_predictions``' lines, or ``{uid, answer}``) or a CSV
    (``uid`` plus ``labels``, ``answer`` or per-class 0/1 columns). ``normal`` in ``classes`` is ignored here:
    scoring derives it (normal exactly when no other class is predicted). A repeated uid is an error."""
    import csv

    findings = resolve_schema(classes)
    path = Path(path)
    rows: list[tuple[str, Mapping[str, Any]]] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = [(f"{path.name} row {i + 2}", row) for i, row in enumerate(csv.DictReader(text.splitlines()))]
    else:
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise ValueError(f"{path.name} line {i + 1}: not JSON") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path.name} line {i + 1}: not a JSON object")
                rows.append((f"{path.name} line {i + 1}", obj))
    out: dict[str, set[str]] = {}
    for where, row in rows:
        uid = str(row.get("uid") or "").strip()
        if not uid:
            raise ValueError(f"{where}: no uid")
        if uid in out:
            raise ValueError(f"{where}: uid {uid!r} repeated")
        out[uid] = _labels_of(row, findings, where)
    return out
