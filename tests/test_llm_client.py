"""The shared LLM client (``shared.llm``): against the real dev server, and against scripted failures.

Two servers, both real HTTP on 127.0.0.1 with a free port, in a thread:

- the DSBD dev server (``dsbd.serve``) with tiny random-weight models from ``dsbd.tiny`` (skipped
  where the ``dsbd`` package or torch is not installed): structured answers and DSBD beams;
- a scripted fake (one answer per request, in order) for timeouts, refusals and outages.

Nothing sleeps: retries use an injected ``sleep`` that records the delays, the circuit breaker an
injected clock, and a "hanging" endpoint waits on an Event the test sets when it is done.
"""

from __future__ import annotations

import datetime
import email.utils
import io
import json
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from services.medical_necessity.judge import VERDICT_SCHEMA, LLMJury
from services.medical_necessity.passages import Passage
from shared.errors import ConfigError, UpstreamError
from shared.llm import DSBD_ROUTE, CircuitBreaker, LLMClient, LLMUnavailable, shared_breaker

MODEL = "oncotwin-judge-test"
KEY = "client-test-key"
PROGRESSION = "Restaging CT shows disease progression with two new liver lesions."
PASSAGES = [Passage("DocumentReference/n2", "2024-08-01", PROGRESSION, 0, len(PROGRESSION), 2.1)]
CRITERION = "disease status: progression"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class Served:
    """A WSGI app on 127.0.0.1:0 in a thread; records (path, headers, body) of every request."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.release = threading.Event()
        self._app = app
        self._lock = threading.Lock()
        self.httpd = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        environ["wsgi.input"] = io.BytesIO(body)  # the wrapped app reads the body again
        environ["CONTENT_LENGTH"] = str(len(body))
        with self._lock:
            self.requests.append((request.path, dict(request.headers), json.loads(body or b"null")))
        return self._app(environ, start_response)

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# -- against the DSBD dev server ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("dsbd.tiny")
    from dsbd import serve
    from dsbd.tiny import DEFAULT_ALPHABET, char_tokenizer, layer_skip_draft, save_tiny, tiny_llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add contention
    folder: Path = tmp_path_factory.mktemp("llm")
    tokenizer = char_tokenizer(DEFAULT_ALPHABET + '{}"_')
    target = tiny_llama(len(tokenizer), layers=2, hidden=32, heads=2, seed=0, init_range=0.1)
    save_tiny(folder / "target", target, tokenizer)
    save_tiny(folder / "draft", layer_skip_draft(target, 1), tokenizer)
    service = serve.load_service(folder / "target", folder / "draft", model_name=MODEL)
    served = Served(serve.create_app(service, api_key=KEY))
    try:
        yield served
    finally:
        served.close()
        torch.set_num_threads(threads)


def _valid_verdict(answer: Any) -> bool:
    return (
        isinstance(answer, dict)
        and set(answer) == {"verdict", "quote", "rationale"}
        and answer["verdict"] in {"satisfied", "unsatisfied", "unknown"}
        and isinstance(answer["quote"], str)
        and isinstance(answer["rationale"], str)
    )


def test_a_structured_chat_answer_from_the_dev_server(dev: Served) -> None:
    client = LLMClient(dev.url, MODEL, api_key=KEY, timeout_s=60)
    messages = [{"role": "user", "content": "is there progression?"}]
    for seed in range(3):
        assert _valid_verdict(client.chat_json(messages, VERDICT_SCHEMA, temperature=0.7, seed=seed))
    picks = client.chat(messages, n=2, temperature=1.0, seed=1, choices=["yes", "no"])
    assert len(picks) == 2 and set(picks) <= {"yes", "no"}
    assert len(client.complete("the scan", n=2, max_tokens=5, temperature=1.0, seed=2)) == 2


def test_dsbd_beams_from_the_dev_server(dev: Served) -> None:
    client = LLMClient(dev.url, MODEL, api_key=KEY, timeout_s=60)
    result = client.beams("the patient", 3, max_tokens=6, seed=5, gamma=3)
    assert result.model == MODEL and len(result.beams) == 3
    assert [b.score for b in result.beams] == sorted((b.score or 0.0 for b in result.beams), reverse=True)
    assert all(b.token_ids and isinstance(b.text, str) for b in result.beams)
    assert result.stats["draft_forward_passes"] >= 1 and result.stats["iterations"] >= 1
    messages = [{"role": "user", "content": "verdict?"}]
    parsed = client.beams_json(messages, VERDICT_SCHEMA, 3, seed=7, max_tokens=120)
    assert len(parsed) == 3 and all(_valid_verdict(p) for p in parsed)


def test_the_jury_takes_its_votes_from_one_dsbd_call(dev: Served) -> None:
    before = len(dev.requests)
    client = LLMClient(dev.url, MODEL, api_key=KEY, timeout_s=60, use_dsbd=True)
    judgement = LLMJury(client, votes=3)(CRITERION, PASSAGES)
    calls = dev.requests[before:]
    assert [path for path, _, _ in calls] == [DSBD_ROUTE]
    body = calls[0][2]
    assert body["n"] == 3 and body["response_format"]["json_schema"]["schema"] == VERDICT_SCHEMA
    assert body["messages"][1]["content"].startswith(f"Criterion: {CRITERION}")
    assert judgement.judge == "llm-jury" and len(judgement.votes) == 3
    # Random weights rarely quote the excerpt: whatever they say, an ungrounded vote is unknown.
    assert judgement.verdict in {"satisfied", "unsatisfied", "needs-review"}


def test_a_wrong_key_is_refused_not_retried(dev: Served) -> None:
    client = LLMClient(dev.url, MODEL, api_key="wrong", max_retries=3, sleep=_no_sleep)
    before = len(dev.requests)
    with pytest.raises(UpstreamError) as caught:
        client.chat_json([{"role": "user", "content": "x"}], VERDICT_SCHEMA)
    assert not isinstance(caught.value, LLMUnavailable) and "401" in caught.value.message
    assert len(dev.requests) - before == 1 and client.breaker.state == "closed"


# -- scripted failures ---------------------------------------------------------------------------------------
Answer = Callable[["Scripted"], Response]


class Scripted(Served):
    """Answers requests with the scripted responses in order (then 599)."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        super().__init__(self._answer)

    def script(self, *answers: Answer) -> None:
        self.answers = list(answers)

    def _answer(self, environ: dict[str, Any], start_response: Any) -> Any:
        answer = self.answers.pop(0) if self.answers else status(599)
        return answer(self)(environ, start_response)


def status(code: int, headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps({"error": {"message": "overloaded", "code": code}})
    return lambda _: Response(body, status=code, mimetype="application/json", headers=headers)


def chat(content: str) -> Answer:
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
    return lambda _: Response(body, mimetype="application/json")


def verdict(value: str, quote: str = PROGRESSION) -> str:
    return json.dumps({"verdict": value, "quote": quote, "rationale": f"{value} per the note"})


def beams(*texts: str) -> Answer:
    body = {
        "object": "dsbd.completion",
        "model": MODEL,
        "beams": [
            {"index": i, "text": t, "token_ids": [1, 2], "logprob": -1.0 - i, "score": -0.5 - i, "finished": True}
            for i, t in enumerate(texts)
        ],
        "stats": {"target_forward_passes": 3, "draft_forward_passes": 6, "iterations": 3, "widths": [2, 3]},
    }
    return lambda _: Response(json.dumps(body), mimetype="application/json")


def hang(server: Scripted) -> Response:
    server.release.wait(timeout=10)  # until the test is over; the client has long given up
    return chat(verdict("satisfied"))(server)


@pytest.fixture
def fake() -> Iterator[Scripted]:
    server = Scripted()
    try:
        yield server
    finally:
        server.close()


def _no_sleep(_: float) -> None:
    raise AssertionError("this call must not retry")


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client_for(server: Scripted, **kw: Any) -> LLMClient:
    kw.setdefault("timeout_s", 5.0)
    return LLMClient(server.url, MODEL, **kw)


ASK = [{"role": "user", "content": "verdict?"}]


def test_a_timeout_is_llm_unavailable(fake: Scripted) -> None:
    fake.script(hang)
    client = client_for(fake, timeout_s=0.3)
    with pytest.raises(LLMUnavailable, match="timed out"):
        client.chat_json(ASK, VERDICT_SCHEMA)
    assert len(fake.requests) == 1


def test_an_unreachable_server_is_llm_unavailable(fake: Scripted) -> None:
    url = fake.url
    fake.httpd.shutdown()
    fake.httpd.server_close()  # nothing listens on that port any more
    sleeps = Sleeps()
    client = LLMClient(url, MODEL, timeout_s=2.0, max_retries=2, sleep=sleeps)
    with pytest.raises(LLMUnavailable, match="unreachable") as caught:
        client.chat_json(ASK, VERDICT_SCHEMA)
    assert caught.value.status == 503 and isinstance(caught.value, UpstreamError)
    assert len(sleeps.delays) == 2  # three attempts


def test_retries_back_off_with_jitter_until_an_answer(fake: Scripted) -> None:
    fake.script(status(503), status(429, {"Retry-After": "3"}), status(500), chat(verdict("satisfied")))
    sleeps = Sleeps()
    client = client_for(fake, max_retries=3, sleep=sleeps, rng=random.Random(42), backoff_base_s=0.5)  # noqa: S311
    assert client.chat_json(ASK, VERDICT_SCHEMA)["verdict"] == "satisfied"
    assert len(fake.requests) == 4
    expected = random.Random(42)  # noqa: S311 -- the same jitter draws as the client's
    jitter = [expected.uniform(0, 0.5), expected.uniform(0, 1.0), expected.uniform(0, 2.0)]
    assert sleeps.delays[0] == pytest.approx(jitter[0]) and sleeps.delays[0] <= 0.5
    assert sleeps.delays[1] == pytest.approx(max(jitter[1], 3.0))  # Retry-After is a floor
    assert sleeps.delays[2] == pytest.approx(jitter[2]) and sleeps.delays[2] <= 2.0
    assert client.breaker.state == "closed"


def test_retries_are_bounded_and_capped(fake: Scripted) -> None:
    fake.script(*(status(503, {"Retry-After": "3600"}) for _ in range(5)))
    sleeps = Sleeps()
    client = client_for(fake, max_retries=2, sleep=sleeps, backoff_max_s=4.0)
    with pytest.raises(LLMUnavailable, match=r"answered 503 \(3 attempts\)"):
        client.chat(ASK)
    assert len(fake.requests) == 3 and len(sleeps.delays) == 2
    assert all(d <= 4.0 for d in sleeps.delays)  # a huge Retry-After is capped


def test_retry_after_as_an_http_date_raises_the_floor(fake: Scripted) -> None:
    when = email.utils.format_datetime(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30), usegmt=True
    )
    fake.script(status(503, {"Retry-After": when}), chat(verdict("satisfied")))
    sleeps = Sleeps()
    client = client_for(fake, max_retries=1, sleep=sleeps, backoff_max_s=4.0)
    assert client.chat_json(ASK, VERDICT_SCHEMA)["verdict"] == "satisfied"
    assert sleeps.delays == [4.0]  # the date asks for ~30 s: capped, not ignored


@pytest.mark.parametrize("code", [400, 404, 422])
def test_client_errors_are_not_retried(fake: Scripted, code: int) -> None:
    fake.script(status(code))
    client = client_for(fake, max_retries=3, sleep=_no_sleep)
    with pytest.raises(UpstreamError) as caught:
        client.chat(ASK)
    assert not isinstance(caught.value, LLMUnavailable) and len(fake.requests) == 1


def test_an_answer_that_is_not_json_is_an_upstream_error(fake: Scripted) -> None:
    fake.script(chat("It is satisfied."), lambda _: Response("<html>", mimetype="text/html"))
    client = client_for(fake)
    with pytest.raises(UpstreamError, match="no JSON answer"):
        client.chat_json(ASK, VERDICT_SCHEMA)
    with pytest.raises(UpstreamError, match="no JSON"):
        client.chat(ASK)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_circuit_opens_half_opens_and_closes(fake: Scripted) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10.0, clock=clock)
    client = client_for(fake, breaker=breaker)
    fake.script(status(500), status(502))
    for _ in range(2):
        with pytest.raises(LLMUnavailable):
            client.chat(ASK)
    assert breaker.state == "open" and len(fake.requests) == 2
    with pytest.raises(LLMUnavailable, match="circuit open"):
        client.chat(ASK)
    assert len(fake.requests) == 2  # open: no request at all

    clock.now += 9.9
    assert breaker.state == "open"
    clock.now += 0.1
    assert breaker.state == "half-open"
    fake.script(status(503))  # the trial fails: open again for a full cool-down
    with pytest.raises(LLMUnavailable):
        client.chat(ASK)
    assert breaker.state == "open" and len(fake.requests) == 3
    clock.now += 5
    with pytest.raises(LLMUnavailable, match="circuit open"):
        client.chat(ASK)

    clock.now += 5
    fake.script(chat("fine"), chat("again"))  # the trial succeeds: closed
    assert client.chat(ASK) == ["fine"]
    assert breaker.state == "closed"
    assert client.chat(ASK) == ["again"] and len(fake.requests) == 5


def test_half_open_lets_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=1.0, clock=clock)
    breaker.record_failure()
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow() and not breaker.allow()  # a second caller waits for the trial's outcome
    breaker.release()
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_successes_reset_the_failure_count(fake: Scripted) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10.0, clock=Clock())
    client = client_for(fake, breaker=breaker)
    fake.script(status(500), chat("ok"), status(500), chat("ok"))
    for _ in range(2):
        with pytest.raises(LLMUnavailable):
            client.chat(ASK)
        client.chat(ASK)
    assert breaker.state == "closed"


# -- configuration --------------------------------------------------------------------------------------------
def test_settings_come_from_the_environment() -> None:
    assert LLMClient.from_env({}) is None
    client = LLMClient.from_env({"LLM_BASE_URL": "http://127.0.0.1:9/"})
    assert client is not None
    assert (client.base_url, client.model, client.api_key) == ("http://127.0.0.1:9", "oncotwin-judge", None)
    assert (client.timeout_s, client.max_retries, client.use_dsbd) == (20.0, 2, False)


def test_a_base_url_in_openai_style_with_v1_reaches_the_same_routes() -> None:
    """Compose and Kubernetes give http://vllm:8000/v1; requests must go to /v1/..., not /v1/v1/...."""
    for base in ("http://vllm:8000/v1", "http://vllm:8000/v1/", "http://vllm:8000"):
        client = LLMClient.from_env({"LLM_BASE_URL": base})
        assert client is not None and client.base_url == "http://vllm:8000", base
    tuned = LLMClient.from_env(
        {
            "LLM_BASE_URL": "http://127.0.0.1:9",
            "LLM_MODEL": "m",
            "LLM_API_KEY": "k",
            "LLM_TIMEOUT_SECONDS": "2.5",
            "LLM_MAX_RETRIES": "0",
            "LLM_DSBD": "true",
            "LLM_BREAKER_FAILURES": "3",
            "LLM_BREAKER_COOLDOWN_SECONDS": "60",
        }
    )
    assert tuned is not None and (tuned.model, tuned.api_key, tuned.timeout_s) == ("m", "k", 2.5)
    assert tuned.max_retries == 0 and tuned.use_dsbd is True
    assert (tuned.breaker.failure_threshold, tuned.breaker.cooldown_s) == (3, 60.0)
    # Clients rebuilt per request (CDS Hooks) share the endpoint's breaker.
    again = LLMClient.from_env(
        {"LLM_BASE_URL": "http://127.0.0.1:9", "LLM_BREAKER_FAILURES": "3", "LLM_BREAKER_COOLDOWN_SECONDS": "60"}
    )
    assert again is not None and again.breaker is tuned.breaker
    assert shared_breaker("http://127.0.0.1:9", 3, 60.0) is tuned.breaker


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLM_MAX_RETRIES", "-1"),
        ("LLM_MAX_RETRIES", "two"),
        ("LLM_TIMEOUT_SECONDS", "0"),
        ("LLM_DSBD", "maybe"),
        ("LLM_BREAKER_FAILURES", "0"),
        ("LLM_BASE_URL", "ftp://x"),
    ],
)
def test_bad_settings_stop_the_process(name: str, value: str) -> None:
    env = {"LLM_BASE_URL": "http://127.0.0.1:9", name: value}
    with pytest.raises(ConfigError, match=name):
        LLMClient.from_env(env)


# -- the jury ---------------------------------------------------------------------------------------------------
def test_jury_votes_are_the_beams_of_one_dsbd_call(fake: Scripted) -> None:
    fake.script(beams(verdict("satisfied"), verdict("satisfied", "invented words"), "{not json", verdict("satisfied")))
    client = client_for(fake, use_dsbd=True, api_key="k")
    judgement = LLMJury(client, votes=3)(CRITERION, PASSAGES)
    assert fake.paths() == [DSBD_ROUTE]
    _, headers, body = fake.requests[0]
    assert headers["Authorization"] == "Bearer k"
    assert body["n"] == 3 and body["temperature"] == 0.7 and body["seed"] == 0
    schema_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": VERDICT_SCHEMA}}
    assert body["response_format"] == schema_format
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    # invented quote and invalid JSON are unknown votes; only the first W beams count
    assert judgement.votes == ("satisfied", "unknown", "unknown")
    assert judgement.verdict == "needs-review" and judgement.confidence == pytest.approx(2 / 3)  # "unknown" won


def test_a_grounded_majority_of_beams_decides(fake: Scripted) -> None:
    fake.script(beams(verdict("unsatisfied", "two new liver lesions"), verdict("satisfied"), verdict("satisfied")))
    judgement = LLMJury(client_for(fake, use_dsbd=True), votes=3)(CRITERION, PASSAGES)
    assert judgement.votes == ("unsatisfied", "satisfied", "satisfied")
    assert judgement.verdict == "satisfied" and judgement.confidence == pytest.approx(2 / 3)
    assert judgement.rationale == "satisfied per the note"


def test_without_the_dsbd_route_the_jury_asks_vote_by_vote(fake: Scripted) -> None:
    fake.script(status(404), *(chat(verdict("satisfied")) for _ in range(3)))
    judgement = LLMJury(client_for(fake, use_dsbd=True), votes=3)(CRITERION, PASSAGES)
    assert fake.paths() == [DSBD_ROUTE] + ["/v1/chat/completions"] * 3
    assert judgement.verdict == "satisfied" and judgement.votes == ("satisfied",) * 3


def test_llm_unavailable_on_the_dsbd_route_means_needs_review(fake: Scripted) -> None:
    fake.script(status(503), status(503))
    sleeps = Sleeps()
    judgement = LLMJury(client_for(fake, use_dsbd=True, max_retries=1, sleep=sleeps), votes=3)(CRITERION, PASSAGES)
    assert judgement.verdict == "needs-review" and judgement.votes == () and judgement.confidence == 0.0
    assert judgement.rationale == "the LLM endpoint did not answer"
    assert fake.paths() == [DSBD_ROUTE, DSBD_ROUTE]  # its retry, and no vote-by-vote fallback


def test_an_open_circuit_means_needs_review_without_a_call(fake: Scripted) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=60.0, clock=Clock())
    breaker.record_failure()
    for use_dsbd in (False, True):
        judgement = LLMJury(client_for(fake, breaker=breaker, use_dsbd=use_dsbd))(CRITERION, PASSAGES)
        assert judgement.verdict == "needs-review" and judgement.rationale == "the LLM endpoint did not answer"
    assert fake.requests == []


def test_the_jury_stops_asking_once_the_circuit_opens(fake: Scripted) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=60.0, clock=Clock())
    fake.script(status(500), status(500), chat(verdict("satisfied")))
    judgement = LLMJury(client_for(fake, breaker=breaker), votes=3)(CRITERION, PASSAGES)
    assert judgement.verdict == "needs-review" and len(fake.requests) == 2


def test_once_a_vote_has_spent_its_retries_the_jury_stops(fake: Scripted) -> None:
    fake.script(status(503), status(503), chat(verdict("satisfied")))
    judgement = LLMJury(client_for(fake, max_retries=1, sleep=Sleeps()), votes=3)(CRITERION, PASSAGES)
    assert judgement.verdict == "needs-review" and judgement.rationale == "the LLM endpoint did not answer"
    assert fake.paths() == ["/v1/chat/completions"] * 2  # one vote, two attempts, no other vote


def test_llm_unavailable_leaves_a_necessity_case_for_a_person(fake: Scripted) -> None:
    from graph.networkx_store import NetworkXPathwayStore
    from graph.queries import PathwayQueries
    from services.medical_necessity.engine import assess
    from tests.builders import give, note, order_for, patient

    record = patient("nsclc", stage="IVA", markers={"EGFR": "negative", "ALK": "negative", "PD-L1": 30.0})
    give(record, "carboplatin", "pemetrexed", "pembrolizumab", on="2024-02-01")
    note(record, "Restaging CT shows disease progression with two new liver lesions.", "2024-08-01")
    fake.script(status(503), status(503), status(503))
    jury = LLMJury(client_for(fake, use_dsbd=True, max_retries=2, sleep=Sleeps()))
    queries = PathwayQueries(NetworkXPathwayStore.load())
    (det,) = assess(record, queries, [order_for("docetaxel", on="2024-08-15")], judge=jury).determinations
    assert det.determination == "insufficient-documentation" and det.needs_review is True
    assert det.criteria is not None
    leaves = [n for n in _walk(det.criteria) if n.judgement is not None]
    assert leaves and all(n.judgement.verdict == "needs-review" for n in leaves if n.judgement)
    assert fake.paths() == [DSBD_ROUTE] * 3


def _walk(node: Any) -> list[Any]:
    return [node, *(n for child in node.children for n in _walk(child))]
