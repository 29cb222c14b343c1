"""The LLM jury over the real HTTP client, against a local fake OpenAI-compatible endpoint.

The fake server (werkzeug, 127.0.0.1, a free port, in a thread) serves ``/v1/chat/completions``
with scripted answers, one per request in order, and records every request. Nothing sleeps: a
"timeout" is a handler that waits for the test to release it while the client gives up.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from graph.networkx_store import NetworkXPathwayStore
from graph.queries import PathwayQueries
from services.medical_necessity.contract import CriterionOut
from services.medical_necessity.engine import assess
from services.medical_necessity.judge import VERDICT_SCHEMA, LLMJury
from services.medical_necessity.passages import Passage
from shared.fhir.ingest import load_path
from shared.fhir.record import PatientRecord
from shared.llm import LLMClient
from tests.builders import disease_status, give, note, order_for, patient

TWINS = Path(__file__).parent / "fixtures" / "twins"
MODEL = "oncotwin-judge-test"
CRITERION = "disease status: progression"
PROGRESSION = "Restaging CT shows disease progression with two new liver lesions."
PASSAGES = [
    Passage("DocumentReference/n2", "2024-08-01", PROGRESSION, 0, len(PROGRESSION), 2.1),
    Passage("DocumentReference/n1", "2024-05-02", "No evidence of disease progression at this time.", 0, 48, 1.2),
]
Answer = Callable[["FakeLLM"], Response]


class FakeLLM:
    """An OpenAI-compatible chat endpoint with scripted answers (one per request, in order)."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self.answers = list(answers)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return Response("not found", status=404)(environ, start_response)
        with self._lock:
            self.requests.append((dict(request.headers), request.get_json()))
            answer = self.answers.pop(0) if self.answers else error(599)
        return answer(self)(environ, start_response)


def verdict(value: str, quote: str, rationale: str = "from the excerpt") -> Answer:
    content = json.dumps({"verdict": value, "quote": quote, "rationale": rationale})
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }
    return lambda _: Response(json.dumps(body), mimetype="application/json")


def error(status: int) -> Answer:
    return lambda _: Response(
        json.dumps({"error": {"message": "overloaded"}}), status=status, mimetype="application/json"
    )


def prose(text: str) -> Answer:
    """A 200 answer whose message is not the JSON the schema asks for."""
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    return lambda _: Response(json.dumps(body), mimetype="application/json")


def hang(server: FakeLLM) -> Response:
    server.release.wait(timeout=10)  # until the test is over; the client has long given up
    return verdict("satisfied", PROGRESSION)(server)


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = FakeLLM()
    server.thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)


def _jury(server: FakeLLM, *, timeout_s: float = 5.0, api_key: str | None = None) -> LLMJury:
    return LLMJury(LLMClient(server.url, MODEL, api_key=api_key, timeout_s=timeout_s), votes=3)


# -- votes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answers", "expected", "votes"),
    [
        (("satisfied", "satisfied", "unsatisfied"), "satisfied", ("satisfied", "satisfied", "unsatisfied")),
        (("unsatisfied", "satisfied", "unsatisfied"), "unsatisfied", ("unsatisfied", "satisfied", "unsatisfied")),
        (("satisfied", "satisfied", "satisfied"), "satisfied", ("satisfied",) * 3),
        (("unknown", "unknown", "satisfied"), "needs-review", ("unknown", "unknown", "satisfied")),
    ],
)
def test_the_majority_of_three_votes_decides(
    llm: FakeLLM, answers: tuple[str, ...], expected: str, votes: tuple[str, ...]
) -> None:
    llm.script(*(verdict(a, PROGRESSION, rationale=f"vote {i}") for i, a in enumerate(answers)))
    judgement = _jury(llm)(CRITERION, PASSAGES)
    assert judgement.judge == "llm-jury"
    assert judgement.verdict == expected and judgement.votes == votes
    assert judgement.confidence == pytest.approx(max(votes.count(v) for v in set(votes)) / 3)
    if expected != "needs-review":
        assert judgement.rationale == f"vote {answers.index(expected)}"  # the first vote for the winner
    assert len(llm.requests) == 3


def test_a_quote_not_in_the_passages_counts_as_unknown(llm: FakeLLM) -> None:
    llm.script(
        verdict("satisfied", "CT shows progressive disease in the bones"),  # not in any passage: invented
        verdict("satisfied", ""),  # no quote at all
        verdict("satisfied", "disease progression with two new LIVER lesions"),  # real words, other case
    )
    judgement = _jury(llm)(CRITERION, PASSAGES)
    assert judgement.votes == ("unknown", "unknown", "satisfied")
    assert judgement.verdict == "needs-review"


def test_an_answer_outside_the_verdict_contract_is_no_vote(llm: FakeLLM) -> None:
    """Validated against the same model that gave the schema: an endpoint without structured outputs
    may answer anything, and only the contract counts."""
    body = {"verdict": "satisfied", "quote": "disease progression with two new liver lesions", "rationale": "x"}

    def answer(content: dict[str, object]) -> Answer:
        message = {"role": "assistant", "content": json.dumps(content)}
        return lambda _: Response(
            json.dumps({"choices": [{"index": 0, "message": message}]}), mimetype="application/json"
        )

    llm.script(
        answer({**body, "confidence": 0.99}),  # an extra key
        answer({**body, "verdict": "yes"}),  # not one of the verdicts
        answer(body),
    )
    judgement = _jury(llm)(CRITERION, PASSAGES)
    assert judgement.votes == ("unknown", "unknown", "satisfied")


def test_a_quote_of_one_word_or_letter_grounds_nothing(llm: FakeLLM) -> None:
    """A random or lazy model's "e" or "disease" is in almost any excerpt; it must not count as evidence."""
    llm.script(
        verdict("satisfied", "e"),
        verdict("satisfied", "  disease "),
        verdict("satisfied", "disease   progression"),  # two words, spacing aside: grounded
    )
    judgement = _jury(llm)(CRITERION, PASSAGES)
    assert judgement.votes == ("unknown", "unknown", "satisfied")
    assert judgement.verdict == "needs-review"


def test_a_quote_from_a_note_the_jury_was_not_shown_counts_as_unknown(llm: FakeLLM) -> None:
    shown = PASSAGES[1:]  # only the May note was retrieved for this criterion
    llm.script(*(verdict("satisfied", PROGRESSION) for _ in range(3)))
    judgement = _jury(llm)(CRITERION, shown)
    assert judgement.votes == ("unknown",) * 3 and judgement.verdict == "needs-review"


def test_grounded_votes_decide_even_with_one_invented_quote(llm: FakeLLM) -> None:
    llm.script(
        verdict("unsatisfied", "No evidence of disease progression at this time"),
        verdict("unsatisfied", "there is no progression"),  # invented
        verdict("unsatisfied", "no evidence of disease progression"),
    )
    judgement = _jury(llm)(CRITERION, PASSAGES)
    assert judgement.votes == ("unsatisfied", "unknown", "unsatisfied")
    assert judgement.verdict == "unsatisfied" and judgement.confidence == pytest.approx(2 / 3)


# -- failures fall back to needs-review ---------------------------------------------------------------
def test_server_errors_fall_back_to_needs_review(llm: FakeLLM) -> None:
    llm.script(error(500), error(503), error(429))
    judgement = _jury(llm)(CRITERION, PASSAGES)
    assert judgement.verdict == "needs-review" and judgement.votes == () and judgement.confidence == 0.0
    assert judgement.rationale == "the LLM endpoint did not answer"
    assert len(llm.requests) == 3  # one try per vote, no retry storm


def test_a_failed_vote_is_left_out_and_the_rest_decide(llm: FakeLLM) -> None:
    llm.script(error(500), verdict("satisfied", PROGRESSION), verdict("satisfied", PROGRESSION))
    judgement = _jury(llm)(CRITERION, PASSAGES)
    assert judgement.votes == ("satisfied", "satisfied") and judgement.verdict == "satisfied"
    assert judgement.confidence == pytest.approx(2 / 3)  # of the three votes asked for


def test_a_split_after_a_failure_needs_review(llm: FakeLLM) -> None:
    llm.script(verdict("satisfied", PROGRESSION), prose("It is satisfied."), verdict("unsatisfied", PROGRESSION))
    judgement = _jury(llm)(CRITERION, PASSAGES)
    assert judgement.votes == ("satisfied", "unsatisfied") and judgement.verdict == "needs-review"


def test_timeouts_fall_back_to_needs_review(llm: FakeLLM) -> None:
    llm.script(hang, hang, hang)
    judgement = _jury(llm, timeout_s=0.3)(CRITERION, PASSAGES)
    assert judgement.verdict == "needs-review" and judgement.votes == ()
    assert len(llm.requests) == 3


def test_an_unreachable_endpoint_falls_back_to_needs_review(llm: FakeLLM) -> None:
    url = llm.url
    llm.server.shutdown()
    llm.server.server_close()  # nothing listens on that port any more
    jury = LLMJury(LLMClient(url, MODEL, timeout_s=2.0))
    judgement = jury(CRITERION, PASSAGES)
    assert judgement.verdict == "needs-review" and judgement.votes == ()


def test_no_passage_no_call(llm: FakeLLM) -> None:
    judgement = _jury(llm)(CRITERION, [])
    assert judgement.verdict == "needs-review" and judgement.rationale == "no passage mentions it"
    assert llm.requests == []


# -- the request ---------------------------------------------------------------------------------------
def test_the_request_carries_the_model_the_schema_and_the_excerpts(llm: FakeLLM) -> None:
    llm.script(*(verdict("satisfied", PROGRESSION) for _ in range(3)))
    _jury(llm, api_key="test-key")(CRITERION, PASSAGES)
    assert [body["seed"] for _, body in llm.requests] == [0, 1, 2]  # three independent votes
    for headers, body in llm.requests:
        assert headers["Authorization"] == "Bearer test-key"
        assert body["model"] == MODEL
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": VERDICT_SCHEMA},
        }
        assert body["response_format"]["json_schema"]["schema"]["properties"]["verdict"]["enum"] == [
            "satisfied",
            "unsatisfied",
            "unknown",
        ]
        assert body["temperature"] == 0.7
        system, user = body["messages"]
        assert system["role"] == "system" and "quote" in system["content"]
        assert user["role"] == "user" and user["content"].startswith(f"Criterion: {CRITERION}\n")
        assert f"[1] (DocumentReference/n2, 2024-08-01) {PROGRESSION}" in user["content"]
        assert "[2] (DocumentReference/n1, 2024-05-02) No evidence of disease progression" in user["content"]


# -- end to end: a necessity case decided through the notes -----------------------------------------
@pytest.fixture(scope="module")
def queries() -> PathwayQueries:
    return PathwayQueries(NetworkXPathwayStore.load())


@cache
def _second_line() -> PatientRecord:
    """Metastatic NSCLC after four cycles of carboplatin-pemetrexed-pembrolizumab; progression only in a note."""
    (record,) = load_path(TWINS / "nsclc-second-line.json").records
    return record


def _leaf(node: CriterionOut, label: str) -> CriterionOut:
    found = [n for n in _walk(node) if n.op == "leaf" and n.label == label]
    assert found, f"no leaf {label!r}"
    return found[0]


def _walk(node: CriterionOut) -> list[CriterionOut]:
    return [node, *(n for child in node.children for n in _walk(child))]


NOTE = "Restaging CT of 30 July shows disease progression with two new liver lesions"


def test_progression_in_a_note_judged_satisfied_meets(llm: FakeLLM, queries: PathwayQueries) -> None:
    llm.script(*(verdict("satisfied", "disease progression with two new liver lesions") for _ in range(3)))
    record = _second_line()
    (det,) = assess(record, queries, [record.orders[0]], judge=_jury(llm)).determinations
    assert det.order.reference == "MedicationRequest/nsclc-2l-docetaxel"
    assert det.determination == "meets" and det.deciding == [] and det.needs_review is False
    assert det.option == "nsclc.rx.docetaxel" and det.confidence == 0.9
    assert "through the notes (LLM jury" in det.rationale
    assert det.criteria is not None and det.criteria.status == "satisfied"
    leaf = _leaf(det.criteria.children[0], CRITERION)
    assert leaf.status == "satisfied" and leaf.fact == "disease_status"
    assert leaf.judgement is not None
    assert leaf.judgement.judge == "llm-jury" and leaf.judgement.verdict == "satisfied"
    assert leaf.judgement.votes == ["satisfied"] * 3 and leaf.judgement.confidence == 1.0
    assert [p.source for p in leaf.passages] == ["DocumentReference/nsclc-2l-note-aug"]
    (passage,) = leaf.passages
    assert NOTE in passage.text and passage.date == "2024-08-01T14:10:00Z" and passage.score > 0
    note = next(n for n in record.notes if n.source == passage.source)
    assert note.text[passage.start : passage.end] == passage.text  # the span lands on the exact words
    assert len(llm.requests) == 3  # one criterion, asked once, three votes
    assert NOTE in llm.requests[0][1]["messages"][1]["content"]


def test_the_jury_may_quote_only_the_passages_it_was_shown(llm: FakeLLM, queries: PathwayQueries) -> None:
    """The May note ("stable disease") is in the record but was not retrieved for this criterion."""
    llm.script(*(verdict("unsatisfied", "CT chest shows stable disease") for _ in range(3)))
    record = _second_line()
    (det,) = assess(record, queries, [record.orders[0]], judge=_jury(llm)).determinations
    assert det.determination == "insufficient-documentation" and det.needs_review is True
    assert det.criteria is not None
    leaf = _leaf(det.criteria.children[0], CRITERION)
    assert leaf.judgement is not None and leaf.judgement.votes == ["unknown"] * 3
    assert "stable disease" not in " ".join(p.text for p in leaf.passages)


def test_the_jury_finding_no_progression_does_not_meet(llm: FakeLLM, queries: PathwayQueries) -> None:
    record = patient("nsclc", stage="IVA", markers={"EGFR": "negative", "ALK": "negative", "PD-L1": 30.0})
    give(record, "carboplatin", "pemetrexed", "pembrolizumab", on="2024-02-01")
    note(record, "Restaging CT: no evidence of disease progression, response maintained.", "2024-08-01")
    llm.script(*(verdict("unsatisfied", "no evidence of disease progression") for _ in range(3)))
    (det,) = assess(record, queries, [order_for("docetaxel", on="2024-08-15")], judge=_jury(llm)).determinations
    assert det.determination == "does-not-meet" and det.needs_review is False
    assert det.deciding == [CRITERION] and det.confidence == 0.9
    assert det.criteria is not None
    leaf = _leaf(det.criteria.children[0], CRITERION)
    assert leaf.status == "unsatisfied" and leaf.judgement is not None
    assert leaf.judgement.verdict == "unsatisfied" and leaf.judgement.votes == ["unsatisfied"] * 3


def test_the_jury_down_leaves_the_case_for_a_person(llm: FakeLLM, queries: PathwayQueries) -> None:
    llm.script(error(500), error(500), error(500))
    record = _second_line()
    (det,) = assess(record, queries, [record.orders[0]], judge=_jury(llm)).determinations
    assert det.determination == "insufficient-documentation" and det.needs_review is True
    assert det.deciding == [CRITERION] and det.confidence == 0.5
    assert det.criteria is not None
    leaf = _leaf(det.criteria.children[0], CRITERION)
    assert leaf.status == "unknown" and leaf.passages
    assert leaf.judgement is not None and leaf.judgement.judge == "llm-jury"
    assert leaf.judgement.verdict == "needs-review" and leaf.judgement.votes == []


def test_coded_data_is_never_sent_to_the_jury(llm: FakeLLM, queries: PathwayQueries) -> None:
    """Progression coded (mCODE disease status): no free-text criterion is left for the jury."""
    record = patient("nsclc", stage="IVA", markers={"EGFR": "negative", "ALK": "negative", "PD-L1": 30.0})
    give(record, "carboplatin", "pemetrexed", "pembrolizumab", on="2024-02-01")
    disease_status(record, "progression", "2024-07-30")
    note(record, "Restaging CT shows disease progression in the liver.", "2024-08-01")
    llm.script(*(verdict("unsatisfied", "disease progression") for _ in range(3)))
    (det,) = assess(record, queries, [order_for("docetaxel", on="2024-08-15")], judge=_jury(llm)).determinations
    assert det.determination == "meets" and det.needs_review is False
    assert det.confidence == 0.95 and "through the notes" not in det.rationale
    assert llm.requests == []
