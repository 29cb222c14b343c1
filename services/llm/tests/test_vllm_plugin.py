"""The vLLM plugin without vLLM: request handling against a fake engine client.

``FakeEngine`` implements the part of vLLM's documented ``EngineClient`` the plugin uses:

- ``async generate(prompt, sampling_params, request_id)`` -> async iterator of ``RequestOutput``
  (``request_id``, ``prompt_token_ids``, ``prompt_logprobs``, ``outputs`` of ``CompletionOutput``,
  ``finished``, and ``prompt_token_id_logprobs`` when fixed-id scoring was asked for);
- ``prompt_logprobs[j]`` is None for j = 0, else a dict token id -> ``Logprob(logprob, rank,
  decoded_token)`` for the token at position j (all ids for ``prompt_logprobs=-1``);
- ``prompt_token_id_logprobs`` is a ``[rows, ids]`` float32 array, row i scoring prompt position
  ``prompt_logprob_start + i + 1`` (ids shared by every row, or one list per row);
- ``model_config.get_vocab_size()``, ``model_config.max_model_len``, ``async get_tokenizer()``.

Its numbers come from a real (tiny, random) torch model run over the whole prompt, so the
scores the plugin assembles can be checked against the model directly. Three stand-ins for
``vllm.SamplingParams`` mirror the three vLLM generations the plugin handles (no fixed-id
scoring; one id list for every row; one id list per row).

The route is attached to a real FastAPI app (FastAPI is a test dependency here: the ``test``
extra of ``services/llm/pyproject.toml``) and called through Starlette's TestClient.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from argparse import Namespace
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from dsbd import vllm_plugin  # noqa: E402
from dsbd.protocol import DSBD_ROUTE  # noqa: E402

KEY = "plugin-test-key"
SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["satisfied", "unsatisfied", "unknown"]},
        "quote": {"type": "string"},
    },
    "required": ["verdict", "quote"],
}


# -- vLLM stand-ins (documented shapes) ------------------------------------------------------------
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    prompt_token_id_logprobs: np.ndarray | None = None


@dataclass
class OldSamplingParams:
    """vLLM before fixed-id prompt scoring."""

    n: int = 1
    temperature: float = 1.0
    max_tokens: int | None = 16
    prompt_logprobs: int | None = None
    detokenize: bool = True


@dataclass
class FlatSamplingParams(OldSamplingParams):
    """Fixed-id scoring, one id list for every scored row."""

    prompt_logprob_token_ids: list[int] | None = None
    prompt_logprob_start: int | None = None


@dataclass
class RowSamplingParams(OldSamplingParams):
    """Fixed-id scoring, one id list per scored row."""

    prompt_logprob_token_ids: list[list[int]] | None = None
    prompt_logprob_start: int | None = None


@dataclass
class ModelConfig:
    vocab_size: int
    max_model_len: int = 512

    def get_vocab_size(self) -> int:
        return self.vocab_size


@dataclass
class FakeEngine:
    """``EngineClient.generate`` etc. over a torch causal LM; records every request."""

    model: Any
    tokenizer: Any
    model_config: ModelConfig
    requests: list[tuple[list[int], Any, str]] = field(default_factory=list)
    delta: bool = False  # like RequestOutputKind.DELTA: prompt data only on the first output
    fixed_ids: bool = True  # False: accepts prompt_logprob_token_ids but returns nothing (the V1 runner)

    async def get_tokenizer(self) -> Any:
        return self.tokenizer

    def _logprobs(self, ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0]
            return torch.log_softmax(logits.double(), dim=-1).numpy()

    async def generate(self, prompt: dict[str, Any], sampling_params: Any, request_id: str) -> AsyncIterator[Any]:
        ids = list(prompt["prompt_token_ids"])
        self.requests.append((ids, sampling_params, request_id))
        assert sampling_params.max_tokens >= 1
        rows = self._logprobs(ids)  # rows[p]: the distribution after ids[: p + 1]
        vocab = self.model_config.vocab_size
        prompt_logprobs: list[dict[int, Logprob] | None] | None = None
        if sampling_params.prompt_logprobs is not None:
            k = vocab if sampling_params.prompt_logprobs == -1 else sampling_params.prompt_logprobs
            prompt_logprobs = [None]
            for j in range(1, len(ids)):
                order = np.argsort(-rows[j - 1], kind="stable")
                keep = {int(t) for t in order[:k]} | {ids[j]}
                ranks = {int(t): r + 1 for r, t in enumerate(order)}
                prompt_logprobs.append({t: Logprob(float(rows[j - 1][t]), ranks[t]) for t in sorted(keep)})
        matrix = None
        token_ids = getattr(sampling_params, "prompt_logprob_token_ids", None)
        if token_ids is not None and self.fixed_ids:
            start = sampling_params.prompt_logprob_start or 0
            count = len(ids) - 1 - start
            table = np.asarray(token_ids)
            if table.ndim == 1:
                table = np.tile(table, (count, 1))
            assert table.shape[0] == count, "one id list per scored row"
            matrix = np.stack([rows[start + i][table[i]] for i in range(count)]).astype(np.float32)
        token = int(np.argmax(rows[-1]))
        done = RequestOutput(
            request_id,
            None,
            ids,
            prompt_logprobs,
            [CompletionOutput(0, "", [token], float(rows[-1][token]), None, "length")],
            True,
            matrix,
        )
        if self.delta:
            first = RequestOutput(request_id, None, ids, prompt_logprobs, [], False, matrix)
            done.prompt_logprobs, done.prompt_token_id_logprobs = None, None
            yield first
        await asyncio.sleep(0)
        yield done


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from dsbd.tiny import DEFAULT_ALPHABET, char_tokenizer, layer_skip_draft, save_tiny, tiny_llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add contention
    folder = tmp_path_factory.mktemp("plugin")
    tokenizer = char_tokenizer(DEFAULT_ALPHABET + '{}"_')
    target = tiny_llama(len(tokenizer), layers=2, hidden=32, heads=2, seed=0, init_range=0.1)
    draft_dir = save_tiny(folder / "draft", layer_skip_draft(target, 1), tokenizer)
    yield Namespace(model=target, tokenizer=tokenizer, draft=draft_dir, vocab=len(tokenizer))
    torch.set_num_threads(threads)


def engine(tiny: Any, **kw: Any) -> FakeEngine:
    return FakeEngine(tiny.model, tiny.tokenizer, ModelConfig(tiny.vocab), **kw)


# -- import hygiene -----------------------------------------------------------------------------------
def test_importing_and_registering_the_plugin_imports_no_heavy_module() -> None:
    code = (
        "import sys, dsbd.vllm_plugin as p\n"
        "p.register(); p.register()\n"
        "plugin = p.DSBDEndpointPlugin()\n"
        "heavy = [m for m in ('vllm', 'torch', 'fastapi', 'transformers', 'flask') if m in sys.modules]\n"
        "print(heavy, plugin.name, plugin.required_tasks)\n"
    )
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)  # noqa: S603
    assert out.stdout.strip() == "[] dsbd ('generate',)"


def test_the_entry_points_resolve_to_the_documented_callables() -> None:
    from importlib.metadata import entry_points

    general = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    endpoint = {ep.name: ep for ep in entry_points(group="vllm.endpoint_plugins")}
    assert general["dsbd"].value == "dsbd.vllm_plugin:register"
    assert endpoint["dsbd"].value == "dsbd.vllm_plugin:DSBDEndpointPlugin"
    assert general["dsbd"].load() is vllm_plugin.register
    plugin = endpoint["dsbd"].load()()  # vLLM calls the loaded object with no argument
    assert plugin.name == "dsbd" and callable(plugin.attach_router)
    assert asyncio.iscoroutinefunction(plugin.init_state)


# -- scoring mode ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "env", "mode"),
    [
        (OldSamplingParams, {"VLLM_USE_V2_MODEL_RUNNER": "1"}, "prompt_logprobs"),
        (FlatSamplingParams, {}, "prompt_logprobs"),  # fixed-id scoring needs the V2 model runner
        (FlatSamplingParams, {"VLLM_USE_V2_MODEL_RUNNER": "1"}, "token_ids"),
        (RowSamplingParams, {"VLLM_USE_V2_MODEL_RUNNER": "1"}, "token_id_rows"),
        (
            RowSamplingParams,
            {"DSBD_VLLM_SCORING": "prompt_logprobs", "VLLM_USE_V2_MODEL_RUNNER": "1"},
            "prompt_logprobs",
        ),
        (FlatSamplingParams, {"DSBD_VLLM_SCORING": "token_ids"}, "token_ids"),
    ],
)
def test_the_scoring_mode_follows_the_installed_sampling_params(cls: Any, env: dict[str, str], mode: str) -> None:
    assert vllm_plugin.scoring_mode(cls, env) == mode


def test_an_impossible_scoring_mode_is_refused() -> None:
    with pytest.raises(RuntimeError, match="no prompt_logprob_token_ids"):
        vllm_plugin.scoring_mode(OldSamplingParams, {"DSBD_VLLM_SCORING": "token_ids"})
    with pytest.raises(RuntimeError, match="DSBD_VLLM_SCORING"):
        vllm_plugin.scoring_mode(FlatSamplingParams, {"DSBD_VLLM_SCORING": "fast"})


# -- forest scoring through the engine ------------------------------------------------------------------------
FOREST = [
    [1, 5, 6],  # the beam itself (a prefix of the next two)
    [1, 5, 6, 7, 8],
    [1, 5, 6, 7, 9, 10],
    [1, 5, 6, 11],
    [1, 5, 6, 11],  # duplicates are fine
    [1, 5, 6, 7],
]


@pytest.mark.parametrize(
    ("cls", "mode"),
    [(OldSamplingParams, "prompt_logprobs"), (FlatSamplingParams, "token_ids"), (RowSamplingParams, "token_id_rows")],
)
@pytest.mark.parametrize("delta", [False, True])
def test_the_forest_is_scored_one_prompt_per_leaf(tiny: Any, cls: Any, mode: str, delta: bool) -> None:
    fake = engine(tiny, delta=delta)
    scorer = vllm_plugin.VLLMScorer(fake, tiny.vocab, sampling_params_cls=cls, mode=mode)
    scores = asyncio.run(scorer.score(FOREST))
    expected = np.stack([fake._logprobs(seq)[-1] for seq in FOREST])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    prompts = sorted(tuple(ids) for ids, _, _ in fake.requests)
    assert prompts == [(1, 5, 6, 7, 8, 8), (1, 5, 6, 7, 9, 10, 10), (1, 5, 6, 11, 11)]  # leaf path + pad
    assert len({rid for _, _, rid in fake.requests}) == 3
    starts = []
    for ids, params, _ in fake.requests:
        assert params.max_tokens == 1 and params.detokenize is False
        if mode == "prompt_logprobs":
            assert params.prompt_logprobs == -1
        else:
            # only the forest rows are asked for: from the shortest sequence on this path to the leaf
            assert params.prompt_logprobs is None and 2 <= params.prompt_logprob_start <= len(ids) - 2
            starts.append(params.prompt_logprob_start)
            assert np.asarray(params.prompt_logprob_token_ids).shape[-1] == tiny.vocab
    assert mode == "prompt_logprobs" or min(starts) == 2  # [1, 5, 6]: row 2 predicts the 4th token


def test_the_target_model_bridges_a_worker_thread_to_the_event_loop(tiny: Any) -> None:
    fake = engine(tiny)

    async def main() -> np.ndarray:
        scorer = vllm_plugin.VLLMScorer(fake, tiny.vocab, sampling_params_cls=OldSamplingParams)
        target = vllm_plugin.VLLMTargetModel(scorer, asyncio.get_running_loop(), timeout_s=30)
        return await asyncio.to_thread(target.next_logprobs, [[1, 5], [1, 5, 6]])

    scores = asyncio.run(main())
    assert scores.shape == (2, tiny.vocab)
    np.testing.assert_allclose(np.exp(scores).sum(axis=1), 1.0, atol=1e-6)


def test_a_scoring_call_that_times_out_aborts_its_engine_requests(tiny: Any) -> None:
    class Stuck(FakeEngine):
        aborted: list[str]

        async def generate(self, prompt: dict[str, Any], sampling_params: Any, request_id: str) -> AsyncIterator[Any]:
            self.requests.append((list(prompt["prompt_token_ids"]), sampling_params, request_id))
            await asyncio.Event().wait()  # never answers
            yield None

        async def abort(self, request_id: str) -> None:
            self.aborted.append(request_id)

    stuck = Stuck(tiny.model, tiny.tokenizer, ModelConfig(tiny.vocab))
    stuck.aborted = []

    async def main() -> None:
        scorer = vllm_plugin.VLLMScorer(stuck, tiny.vocab, sampling_params_cls=OldSamplingParams)
        target = vllm_plugin.VLLMTargetModel(scorer, asyncio.get_running_loop(), timeout_s=0.2)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(target.next_logprobs, [[1, 5, 6], [1, 7]])
        for _ in range(50):  # the cancellation reaches the requests on the loop
            if len(stuck.aborted) == 2:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert sorted(stuck.aborted) == sorted(rid for _, _, rid in stuck.requests) and len(stuck.aborted) == 2


def test_the_draft_view_is_stateless_and_fits_the_vocabulary(tiny: Any) -> None:
    class Draft:
        vocab_size = 3

        def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
            return np.log(np.full((len(prefixes), 3), 1 / 3))

        def forest_logprobs(self, *_: Any) -> None:  # must not be reachable through the view
            raise AssertionError

    wide = vllm_plugin.DraftView(Draft(), 5).next_logprobs([[1]])
    assert wide.shape == (1, 5) and np.isneginf(wide[0, 3:]).all()
    assert vllm_plugin.DraftView(Draft(), 2).next_logprobs([[1]]).shape == (1, 2)
    assert not hasattr(vllm_plugin.DraftView(Draft(), 3), "forest_logprobs")


# -- request handling ----------------------------------------------------------------------------------------
async def _handler(tiny: Any, fake: FakeEngine, env: dict[str, str], draft: bool = True) -> Any:
    handler = await vllm_plugin.build_handler(
        fake,
        model_name="tiny-vllm",
        draft_path=str(tiny.draft) if draft else None,
        env=env,
        sampling_params_cls=OldSamplingParams,
    )
    fake.requests.clear()  # the start-up probe of the scoring mode is not a route request
    return handler


@pytest.mark.parametrize(
    ("cls", "fixed_ids", "mode"),
    [
        (OldSamplingParams, True, "prompt_logprobs"),
        (FlatSamplingParams, True, "token_ids"),
        (RowSamplingParams, True, "token_id_rows"),
        (FlatSamplingParams, False, "prompt_logprobs"),  # declared, not implemented: probed, not believed
    ],
)
def test_auto_scoring_asks_the_engine_what_it_implements(tiny: Any, cls: Any, fixed_ids: bool, mode: str) -> None:
    fake = engine(tiny, fixed_ids=fixed_ids)
    found = asyncio.run(vllm_plugin.detect_scoring_mode(fake, tiny.vocab, sampling_params_cls=cls, env={}))
    assert found == mode
    assert fake.requests, "the mode was chosen without asking the engine"


def test_an_engine_without_full_prompt_logprobs_fails_at_start_with_the_flag_to_set(tiny: Any) -> None:
    class Capped(FakeEngine):  # --max-logprobs left at its default: every request with -1 is refused
        async def generate(self, prompt: dict[str, Any], sampling_params: Any, request_id: str) -> AsyncIterator[Any]:
            raise ValueError("Requested prompt logprobs of -1, which is greater than max allowed: 20")
            yield  # pragma: no cover - makes this an async generator

    fake = Capped(tiny.model, tiny.tokenizer, ModelConfig(tiny.vocab))
    with pytest.raises(RuntimeError, match="--max-logprobs -1"):
        asyncio.run(vllm_plugin.detect_scoring_mode(fake, tiny.vocab, sampling_params_cls=OldSamplingParams, env={}))


def _call(tiny: Any, fake: FakeEngine, env: dict[str, str], *requests: tuple[str | None, Any]) -> list[Any]:
    async def main() -> list[Any]:
        handler = await _handler(tiny, fake, env)
        out = []
        for auth, body in requests:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            out.append(await handler.handle(auth, raw))
        return out

    return asyncio.run(main())


def test_the_route_returns_w_beams_scored_by_the_engine(tiny: Any) -> None:
    fake = engine(tiny)
    body = {"prompt": "the scan", "n": 3, "max_tokens": 6, "seed": 4, "gamma": 3}
    ((status, data),) = _call(tiny, fake, {"DSBD_API_KEY": KEY}, (f"Bearer {KEY}", body))
    assert status == 200, data
    assert data["object"] == "dsbd.completion" and data["model"] == "tiny-vllm"
    assert len(data["beams"]) == 3
    assert [b["score"] for b in data["beams"]] == sorted((b["score"] for b in data["beams"]), reverse=True)
    stats = data["stats"]
    assert stats["draft_forward_passes"] >= 1 and stats["target_forward_passes"] >= 1
    assert len(fake.requests) >= stats["target_forward_passes"]  # every target pass went through the engine
    prompt = tiny.tokenizer.encode("the scan")
    assert all(ids[: len(prompt) + 1] == [1, *prompt] for ids, _, _ in fake.requests)  # BOS + the prompt


def test_requests_decode_concurrently_with_the_same_results(tiny: Any) -> None:
    fake = engine(tiny)
    bodies = [{"prompt": p, "n": 2, "max_tokens": 5, "seed": 3} for p in ("the scan", "no new lesion", "the scan")]

    async def main() -> list[tuple[int, dict[str, Any]]]:
        handler = await _handler(tiny, fake, {"DSBD_API_KEY": KEY})
        raw = [json.dumps(b).encode() for b in bodies]
        return list(await asyncio.gather(*(handler.handle(f"Bearer {KEY}", r) for r in raw)))

    results = asyncio.run(main())
    assert [status for status, _ in results] == [200, 200, 200]
    tokens = [[b["token_ids"] for b in data["beams"]] for _, data in results]
    assert tokens[0] == tokens[2]  # same prompt, same seed: same beams, whatever ran alongside


def test_structured_beams_through_the_engine_are_valid(tiny: Any) -> None:
    from dsbd.constrained import is_valid

    body = {"prompt": "judge", "n": 3, "max_tokens": 60, "seed": 2, "guided_json": SCHEMA}
    ((status, data),) = _call(tiny, engine(tiny), {"DSBD_API_KEY": KEY}, (f"Bearer {KEY}", body))
    assert status == 200, data
    assert all(is_valid("json_schema", b["text"], SCHEMA) for b in data["beams"])


def test_the_route_checks_its_own_bearer_key(tiny: Any) -> None:
    ok = {"prompt": "a", "n": 1, "max_tokens": 2}
    results = _call(
        tiny,
        engine(tiny),
        {"DSBD_API_KEY": KEY},
        (None, ok),
        ("Bearer nope", ok),
        (KEY, ok),
        (f"Bearer {KEY}", ok),
    )
    assert [status for status, _ in results] == [401, 401, 401, 200]
    assert results[0][1]["error"]["type"] == "authentication_error"


def test_without_a_key_the_route_is_closed_unless_opened_explicitly(tiny: Any) -> None:
    ok = {"prompt": "a", "n": 1, "max_tokens": 2}
    ((closed, _),) = _call(tiny, engine(tiny), {}, (None, ok))
    ((opened, _),) = _call(tiny, engine(tiny), {"DSBD_ALLOW_UNAUTHENTICATED": "1"}, (None, ok))
    assert (closed, opened) == (401, 200)


def test_bad_requests_are_400_and_oversized_ones_413(tiny: Any) -> None:
    auth = f"Bearer {KEY}"
    results = _call(
        tiny,
        engine(tiny),
        {"DSBD_API_KEY": KEY},
        (auth, {"prompt": "a", "n": 0}),
        (auth, {"prompt": "a", "temperature": 9}),
        (auth, b"{not json"),
        (auth, {"prompt": "a", "guided_json": {"type": "array"}}),
        (auth, b"x" * (2 << 20)),
    )
    assert [status for status, _ in results] == [400, 400, 400, 400, 413]
    assert [body["error"].get("param") for _, body in results[:2]] == ["n", "temperature"]


def test_engine_failures_are_a_500_without_details(tiny: Any) -> None:
    class Broken(FakeEngine):
        failing = False  # it starts well (the scoring probe passes), then fails every request

        async def generate(self, prompt: dict[str, Any], sampling_params: Any, request_id: str) -> AsyncIterator[Any]:
            if self.failing:
                raise RuntimeError("CUDA out of memory at 0xdeadbeef")
            async for output in super().generate(prompt, sampling_params, request_id):
                yield output

    broken = Broken(tiny.model, tiny.tokenizer, ModelConfig(tiny.vocab))

    async def main() -> tuple[int, dict[str, Any]]:
        handler = await _handler(tiny, broken, {"DSBD_API_KEY": KEY})
        broken.failing = True
        return await handler.handle(f"Bearer {KEY}", json.dumps({"prompt": "a", "max_tokens": 2}).encode())

    status, data = asyncio.run(main())
    assert status == 500 and "deadbeef" not in json.dumps(data)


# -- the FastAPI route ---------------------------------------------------------------------------------------
def test_the_route_is_attached_to_the_openai_app_and_serves(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    monkeypatch.setenv("DSBD_API_KEY", KEY)
    monkeypatch.setenv("DSBD_DRAFT_MODEL", str(tiny.draft))
    monkeypatch.setattr(vllm_plugin, "VLLMScorer", _scorer_with(OldSamplingParams))
    app = fastapi.FastAPI()
    plugin = vllm_plugin.DSBDEndpointPlugin()
    plugin.attach_router(app)  # phase A: before the engine exists
    routes = [r for r in app.routes if getattr(r, "path", None) == DSBD_ROUTE]
    assert len(routes) == 1 and routes[0].methods == {"POST"}
    with TestClient(app) as client:
        before = client.post(DSBD_ROUTE, json={"prompt": "a"}, headers={"Authorization": f"Bearer {KEY}"})
        assert before.status_code == 503  # phase B has not run
        args = Namespace(model="/models/target", served_model_name=["oncotwin-judge"])
        assert client.portal is not None
        client.portal.call(plugin.init_state, engine(tiny), app.state, args)  # phase B, on the app's loop
        body = {"prompt": "the", "n": 2, "max_tokens": 4, "seed": 1}
        response = client.post(DSBD_ROUTE, json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["model"] == "oncotwin-judge" and len(data["beams"]) == 2
        denied = client.post(DSBD_ROUTE, json=body, headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        too_wide = client.post(DSBD_ROUTE, json={"prompt": "a", "n": 99}, headers={"Authorization": f"Bearer {KEY}"})
        assert too_wide.status_code == 400


def test_without_an_engine_the_route_answers_503(monkeypatch: pytest.MonkeyPatch) -> None:
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    app = fastapi.FastAPI()
    plugin = vllm_plugin.DSBDEndpointPlugin()
    plugin.attach_router(app)
    with TestClient(app) as client:
        assert client.portal is not None
        client.portal.call(plugin.init_state, None, app.state, Namespace(model="m"))  # the CPU render server
        response = client.post(DSBD_ROUTE, json={"prompt": "a"})
        assert response.status_code == 503 and response.json()["error"]["code"] == 503


def _scorer_with(cls: Any) -> Any:
    """VLLMScorer defaulting to a stand-in SamplingParams (``init_state`` would import vLLM's)."""
    real = vllm_plugin.VLLMScorer

    def make(engine: Any, vocab_size: int, *, sampling_params_cls: Any = None, mode: str | None = None) -> Any:
        return real(engine, vocab_size, sampling_params_cls=sampling_params_cls or cls, mode=mode)

    return make


def test_the_dockerfile_builds_on_the_official_image() -> None:
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    lines = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert lines and lines[0].startswith("FROM vllm/vllm-openai:v0.")
    assert "VLLM_PLUGINS=dsbd" in dockerfile
