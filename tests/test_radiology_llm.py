"""The radiology LLM path: instruction export, answer parsing, LoRA fine-tuning, classification over HTTP.

CPU only, seeded, nothing downloaded: the LoRA script trains two steps on a tiny random Llama
(``dsbd.tiny``) saved to tmp_path, and ``classify_with_llm`` talks to the real DSBD dev server on
127.0.0.1 serving another tiny random model (answers are random, but the constrained ones are always
valid). Tests needing torch/peft/dsbd are skipped where those are not installed.
"""

from __future__ import annotations

import io
import json
import string
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.radiology import llm_path
from services.radiology.llm_path import (
    ADAPTER_NAME,
    answer_schema,
    classify_with_llm,
    export_instructions,
    parse_answer,
    render_answer,
)
from services.radiology.schema import CHESTXRAY8, NORMAL, OPENI, Finding, Report

REPORTS = [
    Report("r1", findings="Heart size is enlarged. Small left pleural effusion.", impression="Cardiomegaly."),
    Report("r2", findings="The lungs are clear.", impression="No acute disease."),
    Report("r3", impression="Right upper lobe nodule, possible mass.", indication="cough"),
    Report("r4"),  # no text: no example, no request
]
WEAK = [
    [Finding("Cardiomegaly", "positive"), Finding("Effusion", "positive"), Finding("Edema", "negative")],
    [Finding("Pneumothorax", "negative")],
    [Finding("Nodule", "positive"), Finding("Mass", "uncertain")],
    [],
]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# -- export --------------------------------------------------------------------------------------------
def test_export_writes_instruction_records_in_schema_order(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "train.jsonl"
    assert export_instructions(REPORTS, WEAK, "openi", out, answer_format="list", uncertain_positive=True) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["uid"] for r in rows] == ["r1", "r2", "r3"]
    assert all(set(r) == {"instruction", "input", "output", "uid"} for r in rows)
    assert [r["output"] for r in rows] == ["Cardiomegaly, Effusion", "Normal", "Mass, Nodule"]  # U-Ones, schema order
    assert (
        rows[0]["input"] == "FINDINGS: Heart size is enlarged. Small left pleural effusion.\nIMPRESSION: Cardiomegaly."
    )
    assert "cough" not in rows[2]["input"]  # indication is context, not findings
    assert all(r["instruction"] == rows[0]["instruction"] for r in rows)
    assert ", ".join(OPENI) in rows[0]["instruction"] and NORMAL not in rows[0]["instruction"].split(": ")[-1]


def test_export_json_answers_are_the_constrained_format(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    export_instructions(REPORTS, WEAK, CHESTXRAY8, out)  # the default uncertain policy: U-Zeros
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    first = json.loads(rows[0]["output"])
    assert list(first) == list(CHESTXRAY8) and {k for k, v in first.items() if v} == {"Cardiomegaly", "Effusion"}
    assert rows[0]["output"] == json.dumps(first, separators=(",", ":"))  # compact, as the server writes it
    assert not any(json.loads(rows[1]["output"]).values())
    assert {k for k, v in json.loads(rows[2]["output"]).items() if v} == {"Nodule"}  # uncertain Mass: not present
    assert parse_answer(rows[2]["output"], CHESTXRAY8) == {"Nodule"}


def test_export_checks_alignment_and_schema(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weak label"):
        export_instructions(REPORTS, WEAK[:2], "openi", tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="unknown schema"):
        export_instructions(REPORTS, WEAK, "nih", tmp_path / "x.jsonl")


def test_export_runs_the_weak_labeler_when_no_labels_are_given(tmp_path: Path) -> None:
    pytest.importorskip("services.radiology.labeler")
    out = tmp_path / "weak.jsonl"
    assert export_instructions(REPORTS, None, CHESTXRAY8, out, answer_format="list") == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        answer = parse_answer(row["output"], CHESTXRAY8)
        assert answer == {NORMAL} or (answer and answer <= set(CHESTXRAY8))
    assert "Cardiomegaly" in parse_answer(rows[0]["output"], CHESTXRAY8)


# -- parse ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Cardiomegaly, Effusion", {"Cardiomegaly", "Effusion"}),
        ("  cardiomegaly ,EFFUSION.  ", {"Cardiomegaly", "Effusion"}),
        ("pleural thickening; pleural-thickening\nNodule", {"Pleural_Thickening", "Nodule"}),
        ("Mass and Nodule", {"Mass", "Nodule"}),
        ('"Edema", Hernia, Fracture', {"Edema"}),  # unknown names dropped
        ("Normal", {NORMAL}),
        ("normal.", {NORMAL}),
        ("Normal, Cardiomegaly", {"Cardiomegaly"}),
        ("", set()),
        ("qwerty zzz", set()),
        ('{"Atelectasis":false,"Cardiomegaly":true,"Effusion":"yes"}', {"Cardiomegaly", "Effusion"}),
        ('{"Atelectasis":false,"Cardiomegaly":false}', {NORMAL}),
        ('{"Hernia":true}', {NORMAL}),
        ("{not json", set()),
    ],
)
def test_parse_answer(text: str, expected: set[str]) -> None:
    assert parse_answer(text, "openi") == expected


def test_parse_answer_with_the_chexpert_schema() -> None:
    assert parse_answer("pleural effusion, support_devices, Effusion", "chexpert") == {
        "Pleural Effusion",
        "Support Devices",
    }


def test_render_and_parse_round_trip() -> None:
    labels = {"Edema", "Mass", "Fibrosis"}
    for fmt in ("json", "list"):
        assert parse_answer(render_answer(labels, OPENI, fmt), OPENI) == labels  # type: ignore[arg-type]
        assert parse_answer(render_answer(set(), OPENI, fmt), OPENI) == {NORMAL}  # type: ignore[arg-type]


def test_answer_schema_is_a_flat_boolean_object() -> None:
    schema = answer_schema(CHESTXRAY8)
    assert list(schema["properties"]) == list(CHESTXRAY8) and schema["required"] == list(CHESTXRAY8)
    assert all(p == {"type": "boolean"} for p in schema["properties"].values())


# -- LoRA ------------------------------------------------------------------------------------------------
def _tiny_base(folder: Path, seed: int = 0) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("dsbd.tiny")
    from dsbd.tiny import DEFAULT_ALPHABET, char_tokenizer, save_tiny, tiny_llama

    tokenizer = char_tokenizer(DEFAULT_ALPHABET + string.ascii_uppercase + '{}"_')
    model = tiny_llama(len(tokenizer), layers=2, hidden=32, heads=2, seed=seed, init_range=0.1, max_positions=2048)
    return save_tiny(folder, model, tokenizer)


def test_the_lora_script_trains_two_steps_and_saves_a_changed_adapter(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from services.radiology import lora_finetune

    base = _tiny_base(tmp_path / "base")
    data = tmp_path / "train.jsonl"
    export_instructions(REPORTS, WEAK, CHESTXRAY8, data, answer_format="list")
    out, merged = tmp_path / "adapter", tmp_path / "merged"
    argv = ["--base", str(base), "--data", str(data), "--out", str(out), "--steps", "2", "--lr", "0.05"]
    argv += ["--r", "4", "--alpha", "8", "--batch-size", "2", "--device", "cpu", "--merged-out", str(merged)]
    assert lora_finetune.main(argv) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero: training moved it
    assert {m.split(".")[-3] for m in lora_b if m.endswith(".weight")} <= set(lora_finetune.DEFAULT_TARGET_MODULES)
    args = json.loads((out / "training_args.json").read_text())
    assert len(args["losses"]) == 2 and all(loss > 0 for loss in args["losses"])
    assert (merged / "config.json").exists()  # the merged model loads where adapters are not served


def test_encode_masks_the_prompt_and_ends_with_eos(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from services.radiology.lora_finetune import encode

    tokenizer = AutoTokenizer.from_pretrained(_tiny_base(tmp_path / "base"), local_files_only=True)
    ids, labels = encode(tokenizer, {"instruction": "list it", "input": "FINDINGS: clear", "output": "Normal"}, 64)
    answer = [t for t in labels if t != -100]
    assert len(ids) == len(labels) <= 64 and answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer[:-1]) == "Normal" and labels[0] == -100
    short_ids, short_labels = encode(tokenizer, {"instruction": "x" * 100, "input": "", "output": "Mass"}, 20)
    kept = [t for t in short_labels if t != -100]
    assert len(short_ids) == 20 and tokenizer.decode(kept[:-1]) == "Mass"  # the prompt is cut, not the answer


# -- classify over HTTP ----------------------------------------------------------------------------------
class Served:
    """A WSGI app on 127.0.0.1:0 in a thread; records the JSON body of every request."""

    def __init__(self, app: Callable[..., Any]) -> None:
        from werkzeug.serving import make_server
        from werkzeug.wrappers import Request

        self._request = Request
        self.bodies: list[Any] = []
        self._app = app
        self.httpd = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        body = self._request(environ).get_data()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        self.bodies.append(json.loads(body or b"null"))
        return self._app(environ, start_response)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("dsbd.serve")
    from dsbd import serve

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    target = _tiny_base(tmp_path_factory.mktemp("radiology-llm") / "target", seed=3)
    served = Served(serve.create_app(serve.load_service(target, None, model_name="base-model")))
    try:
        yield served
    finally:
        served.close()
        torch.set_num_threads(threads)


def test_classify_with_llm_over_http_gives_valid_labels(dev: Served) -> None:
    from shared.llm import LLMClient

    client = LLMClient(dev.url, "base-model", timeout_s=120)
    before = len(dev.bodies)
    results = classify_with_llm(REPORTS, client, CHESTXRAY8)
    assert len(results) == len(REPORTS) and results[3] == []
    for findings in results[:3]:
        labels = [f.label for f in findings]
        assert findings and all(f.status == "positive" for f in findings)
        assert labels == [NORMAL] or (set(labels) <= set(CHESTXRAY8) and labels == sorted(labels, key=CHESTXRAY8.index))
    bodies = dev.bodies[before:]
    assert len(bodies) == 3  # no request for the empty report
    assert all(b["model"] == ADAPTER_NAME for b in bodies)  # vLLM picks the LoRA adapter by this name
    assert all(b["response_format"]["json_schema"]["schema"] == answer_schema(CHESTXRAY8) for b in bodies)
    assert client.model == "base-model"  # the caller's client is not changed


def test_classify_with_llm_list_format_parses_free_text(dev: Served) -> None:
    from shared.llm import LLMClient

    client = LLMClient(dev.url, "base-model", timeout_s=120)
    results = classify_with_llm(REPORTS[:1], client, "openi", model="base-model", answer_format="list", max_tokens=24)
    assert len(results) == 1 and {f.label for f in results[0]} <= {*OPENI, NORMAL}
    assert dev.bodies[-1]["model"] == "base-model" and "response_format" not in dev.bodies[-1]


# -- evaluation hook -------------------------------------------------------------------------------------
def test_score_reuses_the_evaluation_metrics() -> None:
    pytest.importorskip("services.radiology.evaluate")
    classes = (*CHESTXRAY8, NORMAL)
    gold = [{"Cardiomegaly", "Effusion"}, set(), {"Nodule"}]
    pred = [{"Cardiomegaly"}, {NORMAL}, {"Nodule", "Mass"}]
    scores = llm_path.score(pred, gold, classes)
    per = {c.label: c for c in scores.per_class}
    assert (per["Cardiomegaly"].tp, per["Effusion"].fn, per["Mass"].fp) == (1, 1, 1)
    assert per[NORMAL].tp == 1 and per[NORMAL].fp == 0
    assert scores.micro_precision == pytest.approx(3 / 4) and scores.micro_recall == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="gold"):
        llm_path.score(pred[:1], gold, classes)
