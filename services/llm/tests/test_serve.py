"""The CPU dev server over real HTTP (werkzeug on 127.0.0.1, a free port, in a thread).

Models: ``dsbd.tiny`` random-weight Llamas with a character tokenizer whose alphabet has the JSON
punctuation, saved to a temporary folder and loaded back through ``dsbd.serve`` exactly as
``python -m dsbd.serve --target --draft`` does. Random weights are deliberate: structured
outputs must be valid because of the masks, not because the model learned JSON.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("flask")
requests = pytest.importorskip("requests")

from dsbd import serve  # noqa: E402
from dsbd.constrained import compile_schema, is_valid  # noqa: E402
from dsbd.protocol import DSBD_ROUTE, Limits  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

KEY = "dev-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["satisfied", "unsatisfied", "unknown"]},
        "quote": {"type": "string"},
        "score": {"type": "number"},
        "count": {"type": "integer"},
        "grounded": {"type": "boolean"},
        "note": {"type": "string"},
    },
    "required": ["verdict", "quote", "score", "count", "grounded"],
}
CHOICES = ["satisfied", "unsatisfied", "needs review"]


def write_tiny_pair(folder: Path) -> tuple[Path, Path]:
    """A 2-layer target and its 1-layer draft (``dsbd.tiny``), with a tokenizer that can spell JSON."""
    from dsbd.tiny import DEFAULT_ALPHABET, char_tokenizer, layer_skip_draft, save_tiny, tiny_llama

    tokenizer = char_tokenizer(DEFAULT_ALPHABET + '{}"_')
    target = tiny_llama(len(tokenizer), layers=2, hidden=32, heads=2, seed=0, init_range=0.1)
    draft = layer_skip_draft(target, 1)
    return save_tiny(folder / "target", target, tokenizer), save_tiny(folder / "draft", draft, tokenizer)


class Server:
    def __init__(self, app: Any) -> None:
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return requests.post(self.url + path, json=body, headers=AUTH if headers is None else headers, timeout=60)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add contention on a busy CI box
    try:
        yield write_tiny_pair(tmp_path_factory.mktemp("tiny"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(models: tuple[Path, Path]) -> Iterator[Server]:
    target, draft = models
    service = serve.load_service(target, draft, model_name="tiny-dsbd", limits=Limits(max_tokens=128))
    srv = Server(serve.create_app(service, api_key=KEY))
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# -- the DSBD route ---------------------------------------------------------------------------
def test_the_dsbd_route_returns_w_beams_best_first_with_stats(server: Server) -> None:
    body = {"prompt": "the scan shows", "n": 3, "max_tokens": 8, "seed": 7, "gamma": 3}
    response = server.post(DSBD_ROUTE, body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "dsbd.completion" and data["model"] == "tiny-dsbd"
    beams = data["beams"]
    assert len(beams) == 3
    assert [b["index"] for b in beams] == [0, 1, 2]
    assert [b["score"] for b in beams] == sorted((b["score"] for b in beams), reverse=True)
    for beam in beams:
        assert set(beam) >= {"text", "token_ids", "logprob", "score", "finished", "finish_reason"}
        assert 1 <= len(beam["token_ids"]) <= 8 and isinstance(beam["text"], str)
        assert beam["logprob"] <= 0
        assert beam["score"] == pytest.approx(beam["logprob"] / len(beam["token_ids"]))
        assert beam["finish_reason"] == ("stop" if beam["finished"] else "length")
    stats = data["stats"]
    assert stats["target_forward_passes"] >= 1 and stats["draft_forward_passes"] >= 1
    assert stats["iterations"] >= 1 and stats["widths"] and stats["generated_tokens"] <= 8
    assert 0 <= stats["accepted_tokens"]
    usage = data["usage"]
    assert usage["completion_tokens"] == sum(len(b["token_ids"]) for b in beams)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    again = server.post(DSBD_ROUTE, body).json()
    assert [b["token_ids"] for b in again["beams"]] == [b["token_ids"] for b in beams]  # same seed, same beams


def test_without_speculation_the_draft_is_not_used(server: Server) -> None:
    data = server.post(DSBD_ROUTE, {"prompt": "no evidence", "n": 2, "max_tokens": 5, "seed": 1, "dsbd": False}).json()
    assert len(data["beams"]) == 2
    assert data["stats"]["draft_forward_passes"] == 0 and data["stats"]["target_forward_passes"] >= 1


def test_the_dsbd_route_takes_token_ids_and_messages(server: Server) -> None:
    by_ids = server.post(DSBD_ROUTE, {"prompt_token_ids": [1, 5, 6, 7], "n": 2, "max_tokens": 4, "seed": 3})
    assert by_ids.status_code == 200 and by_ids.json()["usage"]["prompt_tokens"] == 4
    chat = server.post(DSBD_ROUTE, {"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 4})
    assert chat.status_code == 200 and len(chat.json()["beams"]) == 2


def test_structured_beams_are_all_valid(server: Server) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
    data = server.post(DSBD_ROUTE, {"prompt": "judge", "n": 4, "max_tokens": 90, "seed": 11, "response_format": fmt})
    assert data.status_code == 200, data.text
    for beam in data.json()["beams"]:
        assert_valid_verdict(beam["text"])


# -- OpenAI-compatible endpoints ----------------------------------------------------------------
def test_completions(server: Server) -> None:
    response = server.post("/v1/completions", {"model": "tiny-dsbd", "prompt": "the patient", "max_tokens": 6, "n": 2})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "text_completion" and data["model"] == "tiny-dsbd"
    assert [c["index"] for c in data["choices"]] == [0, 1]
    assert all(isinstance(c["text"], str) and c["finish_reason"] in {"stop", "length"} for c in data["choices"])
    assert data["usage"]["completion_tokens"] <= 12


def test_completions_cut_at_a_stop_string(server: Server) -> None:
    free = server.post("/v1/completions", {"prompt": "the", "max_tokens": 12, "seed": 5}).json()["choices"][0]["text"]
    if len(free) < 2:
        pytest.skip("the sampled text is too short to cut")
    stop = free[1]
    cut = server.post("/v1/completions", {"prompt": "the", "max_tokens": 12, "seed": 5, "stop": stop}).json()
    assert cut["choices"][0]["text"] == free[: free.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_chat_completions_return_n_choices(server: Server) -> None:
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "status?"}], "n": 3}
    response = server.post("/v1/chat/completions", {**body, "max_tokens": 6, "seed": 2})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and len(data["choices"]) == 3
    for i, choice in enumerate(data["choices"]):
        assert choice["index"] == i and choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)


def assert_valid_verdict(text: str) -> None:
    """Independent of dsbd.constrained: parse and check every rule of SCHEMA by hand."""
    value = json.loads(text)
    assert isinstance(value, dict)
    assert set(value) <= set(SCHEMA["properties"]) and set(SCHEMA["required"]) <= set(value)
    assert value["verdict"] in {"satisfied", "unsatisfied", "unknown"}
    assert isinstance(value["quote"], str)
    assert isinstance(value["score"], int | float) and not isinstance(value["score"], bool)
    assert isinstance(value["count"], int) and not isinstance(value["count"], bool)
    assert isinstance(value["grounded"], bool)
    assert isinstance(value.get("note", ""), str)
    assert is_valid("json_schema", text, SCHEMA)


@pytest.mark.parametrize("seed", range(5))
def test_json_schema_answers_are_always_valid(server: Server, seed: int) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
    body = {"messages": [{"role": "user", "content": "judge it"}], "response_format": fmt, "n": 2, "temperature": 1.0}
    response = server.post("/v1/chat/completions", {**body, "seed": seed, "max_tokens": 80})
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert_valid_verdict(choice["message"]["content"])


def test_json_schema_fits_a_budget_of_exactly_the_shortest_answer(server: Server) -> None:
    from dsbd.constrained import ObjectAutomaton

    need = int(ObjectAutomaton(compile_schema(SCHEMA)).cost(("start",)))
    fmt = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    for seed in range(3):
        body = {"prompt": "x", "response_format": fmt, "max_tokens": need, "seed": seed, "temperature": 2.0}
        response = server.post("/v1/completions", body)
        assert response.status_code == 200, response.text
        assert_valid_verdict(response.json()["choices"][0]["text"])
    too_small = server.post("/v1/completions", {"prompt": "x", "response_format": fmt, "max_tokens": need - 1})
    assert too_small.status_code == 400 and too_small.json()["error"]["param"] == "max_tokens"


@pytest.mark.parametrize(
    "field",
    [
        {"guided_choice": CHOICES},
        {"structured_outputs": {"choice": CHOICES}},
    ],
)
@pytest.mark.parametrize("seed", range(4))
def test_choice_answers_are_one_of_the_choices(server: Server, field: dict[str, Any], seed: int) -> None:
    body = {"messages": [{"role": "user", "content": "pick one"}], "n": 2, "seed": seed, "temperature": 1.5, **field}
    response = server.post("/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert choice["message"]["content"] in CHOICES


def test_structured_outputs_json_on_completions(server: Server) -> None:
    body = {"prompt": "x", "structured_outputs": {"json": SCHEMA}, "seed": 9, "max_tokens": 80}
    response = server.post("/v1/completions", body)
    assert response.status_code == 200, response.text
    assert_valid_verdict(response.json()["choices"][0]["text"])


# -- models, health, auth -----------------------------------------------------------------------
def test_models_and_health(server: Server) -> None:
    models = requests.get(server.url + "/v1/models", headers=AUTH, timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-dsbd"
    health = requests.get(server.url + "/health", timeout=10)  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["draft"] is True


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"X-Api-Key": KEY}])
@pytest.mark.parametrize("path", [DSBD_ROUTE, "/v1/completions", "/v1/chat/completions"])
def test_a_bad_key_is_401(server: Server, headers: dict[str, str], path: str) -> None:
    response = server.post(path, {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(server.url + "/v1/models", headers=headers, timeout=10).status_code == 401


def test_the_key_check_is_exact() -> None:
    from dsbd.protocol import bearer_matches

    assert bearer_matches("Bearer abc", "abc") and bearer_matches("bearer abc", "abc")
    assert not bearer_matches("Bearer abcd", "abc") and not bearer_matches("Bearer ab", "abc")
    assert not bearer_matches(None, "abc") and not bearer_matches("abc", "abc") and not bearer_matches("", "")


# -- bad requests ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 17}, "n"),
        ({"prompt": "x", "n": "3"}, "n"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 129}, "max_tokens"),
        ({"prompt": "x", "temperature": -0.5}, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_k": -2}, "top_k"),
        ({"prompt": "x", "gamma": 0}, "gamma"),
        ({"prompt": "x", "width_threshold": 1.5}, "width_threshold"),
        ({"prompt": "x", "min_width": 3, "max_width": 2}, "max_width"),
        ({"prompt": "x", "length_penalty": -1}, "length_penalty"),
        ({"prompt": "x", "seed": 1.5}, "seed"),
        ({"n": 2}, "prompt"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "messages"),
        ({"prompt": 5}, "prompt"),
        ({"prompt_token_ids": [1, -2]}, "prompt_token_ids"),
        ({"prompt_token_ids": [1, 99999]}, "prompt_token_ids"),
        ({"prompt": "x" * 70_000}, "prompt"),
        ({"messages": [{"role": "robot", "content": "y"}]}, "messages"),
        ({"prompt": "x", "stream": True}, "stream"),
        ({"prompt": "x", "guided_choice": []}, "guided_choice"),
        ({"prompt": "x", "guided_choice": ["a"], "guided_json": SCHEMA}, "guided_choice"),
        ({"prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),
        ({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        (
            {"prompt": "x", "guided_json": {"type": "object", "properties": {"a": {"type": "object"}}}},
            "guided_json",
        ),
        ({"prompt": "x", "guided_json": {"type": "array"}}, "guided_json"),
        ({"prompt": "x", "guided_json": {"properties": {"a": {"type": "string", "pattern": "x+"}}}}, "guided_json"),
        ({"prompt": "x", "guided_choice": ["a"], "stop": "b"}, "stop"),
    ],
)
def test_bad_parameters_are_400_with_the_field_named(server: Server, body: dict[str, Any], param: str) -> None:
    response = server.post(DSBD_ROUTE, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_malformed_bodies(server: Server) -> None:
    not_json = requests.post(server.url + DSBD_ROUTE, data="{nope", headers=AUTH, timeout=10)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]
    not_object = server.post("/v1/completions", [1, 2])
    assert not_object.status_code == 400
    huge = requests.post(server.url + DSBD_ROUTE, data=b"x" * (2 << 20), headers=AUTH, timeout=10)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == 413
    missing = requests.get(server.url + "/v1/nothing", headers=AUTH, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    wrong_method = requests.get(server.url + DSBD_ROUTE, headers=AUTH, timeout=10)
    assert wrong_method.status_code == 405


def test_a_prompt_longer_than_the_context_is_400(server: Server) -> None:
    response = server.post(DSBD_ROUTE, {"prompt": "a" * 600, "max_tokens": 16})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"


# -- start-up --------------------------------------------------------------------------------------
def test_no_key_no_public_bind(models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv("DSBD_API_KEY", raising=False)
    target, draft = models
    code = serve.main(["--target", str(target), "--draft", str(draft), "--host", "0.0.0.0"])  # noqa: S104
    assert code == 2 and "DSBD_API_KEY is not set" in capsys.readouterr().err


def test_an_open_dev_server_needs_no_key(models: tuple[Path, Path]) -> None:
    target, _ = models
    srv = Server(serve.create_app(serve.load_service(target, None, model_name="t"), api_key=None))
    try:
        response = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 3}, headers={})
        assert response.status_code == 200 and response.json()["dsbd"]["draft_forward_passes"] == 0
    finally:
        srv.close()


# -- the constraint itself, on a byte-level vocabulary -------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_random_byte_level_models_always_produce_valid_json(seed: int) -> None:
    """Every byte a token (plus a few multi-byte ones), random logits: escapes, UTF-8 and numbers all occur."""
    from dsbd.api import BeamParams
    from dsbd.beam import beam_sample
    from dsbd.constrained import ConstrainedModel, TokenConstraint, TokenVocabulary, automaton_for
    from dsbd.tiny import TableModel

    extra = [b'"verdict":"', b'","', b"\\u00e9", "é".encode(), "€".encode(), b"\\n", b"-0.5e+", b"true}", b'"}']
    eos = 256 + len(extra)
    vocab = TokenVocabulary([bytes([b]) for b in range(256)] + extra + [None], eos)
    assert vocab.every_byte_is_a_token
    constraint = TokenConstraint(automaton_for("json_schema", SCHEMA), vocab)
    model = TableModel(eos + 1, seed=seed, sharpness=3.0, context=3)
    prompt = [eos]
    for max_tokens in (constraint.min_tokens(), constraint.min_tokens() + 15, 160):
        wrapped = ConstrainedModel(model, constraint, len(prompt), max_tokens)
        params = BeamParams(width=3, max_tokens=max_tokens, temperature=1.0, eos_token_id=eos)
        result = beam_sample(wrapped, prompt, params, seed)
        for beam in result.beams:
            data = b"".join(vocab.token_bytes[t] or b"" for t in beam.tokens if t != eos)
            assert_valid_verdict(data.decode("utf-8"))


def test_choices_that_prefix_each_other() -> None:
    from dsbd.constrained import ChoiceAutomaton, TokenConstraint, TokenVocabulary

    vocab = TokenVocabulary([b"y", b"e", b"s", b" ", b"p", b"yes", None], 6)
    constraint = TokenConstraint(ChoiceAutomaton(["yes", "yes p"]), vocab)
    state = constraint.advance(constraint.start, 5)  # "yes"
    allowed = constraint.mask(state, 5, 7)
    assert allowed[6] and allowed[3] and not allowed[0]  # EOS or " " (towards "yes p"), nothing else
    assert not constraint.mask(state, 1, 7)[3]  # one token left: only EOS can end validly


@pytest.mark.parametrize("seed", range(3))
def test_a_max_length_string_is_closed_by_the_grammar(server: Server, seed: int) -> None:
    """A string's ``maxLength`` (in characters) is part of the automaton: the answer ends in budget and valid."""
    schema = {
        "type": "object",
        "properties": {"quote": {"type": "string", "maxLength": 5}, "verdict": {"enum": ["yes", "no"]}},
        "required": ["quote", "verdict"],
    }
    fmt = {"type": "json_schema", "json_schema": {"schema": schema}}
    body = {"prompt": "x", "response_format": fmt, "max_tokens": 60, "seed": seed, "temperature": 2.0}
    response = server.post("/v1/completions", body)
    assert response.status_code == 200, response.text
    value = json.loads(response.json()["choices"][0]["text"])
    assert len(value["quote"]) <= 5 and value["verdict"] in {"yes", "no"}
    assert is_valid("json_schema", json.dumps(value, separators=(",", ":")), schema)


def test_max_length_counts_characters_and_is_only_for_strings() -> None:
    from dsbd.constrained import ObjectAutomaton, SchemaError

    automaton = ObjectAutomaton(compile_schema({"properties": {"q": {"type": "string", "maxLength": 2}}}))
    state = automaton.start
    for byte in b'{"q":"\\n' + "é".encode():  # an escape and a two-byte character: two characters
        state = automaton.step(state, byte)
        assert state is not None
    assert automaton.step(state, ord("a")) is None  # a third character
    assert automaton.step(state, ord('"')) is not None
    with pytest.raises(SchemaError, match="maxLength"):
        compile_schema({"properties": {"n": {"type": "integer", "maxLength": 2}}})
