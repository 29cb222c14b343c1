"""The notes summary of the Clinical-History twin (``services.clinical_history.summary``).

Against a scripted OpenAI-compatible endpoint on 127.0.0.1 (real HTTP, a thread). The summary is
optional: every failure must end in ``None``, never in an exception into the timeline.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from services.clinical_history.summary import is_oncology_note, select_notes, summarize_notes, summary_schema
from shared.fhir.record import LOINC, ClinicalNote, Code, FhirTime
from shared.llm import CircuitBreaker, LLMClient
from tests.builders import note, patient

Answer = Callable[[], Response]


class Endpoint:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.bodies: list[dict[str, Any]] = []
        self.httpd = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.bodies.append(Request(environ).get_json())
        answer = self.answers.pop(0) if self.answers else (lambda: Response("{}", status=599))
        return answer()(environ, start_response)


def content(text: str) -> Answer:
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
    return lambda: Response(body, mimetype="application/json")


def summary(text: str) -> Answer:
    return content(json.dumps({"summary": text}))


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Endpoint]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    endpoint = Endpoint()
    try:
        yield endpoint
    finally:
        endpoint.httpd.shutdown()
        endpoint.httpd.server_close()
        endpoint.thread.join(timeout=5)


def _record() -> Any:
    rec = patient("nsclc", stage="IVA", markers={"EGFR": "negative"})
    note(rec, "Seen for knee pain after a fall. Ice and rest.", "2024-09-01", "DocumentReference/ortho")
    note(rec, "Oncology follow-up: cycle 4 of carboplatin-pemetrexed given.", "2024-05-02", "DocumentReference/c4")
    ct = "Restaging CT shows disease progression with two new liver lesions."
    note(rec, ct, "2024-08-01", "DocumentReference/ct")
    note(rec, "Initial consult: stage IVA adenocarcinoma of the lung.", "2024-01-10", "DocumentReference/first")
    return rec


def test_oncology_notes_come_first_newest_first() -> None:
    rec = _record()
    assert [n.source for n in select_notes(rec.notes, 3)] == [
        "DocumentReference/ct",
        "DocumentReference/c4",
        "DocumentReference/first",
    ]
    assert [n.source for n in select_notes(rec.notes, 10)][-1] == "DocumentReference/ortho"
    kind = Code(LOINC, "x", "Oncology Consult note")
    consult = ClinicalNote("DocumentReference/x", None, kind, "Seen today.", "")
    assert is_oncology_note(consult)
    undated = [consult, ClinicalNote("DocumentReference/y", FhirTime.parse("2020-01-01"), None, "tumor board", "")]
    assert [n.source for n in select_notes(undated)] == ["DocumentReference/y", "DocumentReference/x"]


def test_a_summary_of_the_recent_oncology_notes(llm: Endpoint) -> None:
    llm.answers = [summary("Stage IVA lung adenocarcinoma; progression on restaging CT after four cycles.")]
    client = LLMClient(llm.url, "judge", api_key="k")
    result = summarize_notes(_record(), client, max_notes=3)
    assert result is not None
    assert result.text.startswith("Stage IVA lung adenocarcinoma")
    assert result.sources == ("DocumentReference/ct", "DocumentReference/c4", "DocumentReference/first")
    assert result.model == "judge" and "verify" in result.disclaimer
    (body,) = llm.bodies
    assert body["response_format"]["json_schema"]["schema"] == summary_schema(1200)
    assert body["response_format"]["json_schema"]["schema"]["properties"]["summary"]["maxLength"] == 1200
    assert body["temperature"] == 0.0 and body["max_tokens"] == 400
    user = body["messages"][1]["content"]
    assert user.index("DocumentReference/ct") < user.index("DocumentReference/c4")  # newest first
    assert "knee pain" not in user


def test_the_notes_sent_are_bounded(llm: Endpoint) -> None:
    rec = patient("nsclc")
    for day in range(1, 9):
        note(rec, f"Oncology visit {day}. " + "Chemotherapy tolerated well. " * 200, f"2024-03-0{day}")
    llm.answers = [summary("x" * 5000)]
    result = summarize_notes(rec, LLMClient(llm.url, "m"), max_notes=4, max_chars=2000, max_summary_chars=300)
    assert result is not None and len(result.sources) == 4
    assert len(result.text) == 300 and result.text.endswith("…")
    user = llm.bodies[0]["messages"][1]["content"]
    assert len(user) < 2000 + 4 * 120  # the notes' share plus a header line each
    assert "Oncology visit 8" in user and "Oncology visit 4" not in user


def test_no_llm_or_no_note_means_no_summary_and_no_call(llm: Endpoint) -> None:
    assert summarize_notes(_record(), None) is None
    assert summarize_notes(patient("nsclc"), LLMClient(llm.url, "m")) is None
    assert llm.bodies == []


@pytest.mark.parametrize(
    "answer",
    [
        lambda: Response("{}", status=500),
        lambda: Response("{}", status=401),
        content("The patient has cancer."),  # not the JSON asked for
        content(json.dumps({"summary": "  "})),
        content(json.dumps(["not", "an", "object"])),
        lambda: Response("<html>", mimetype="text/html"),
    ],
)
def test_any_failure_means_no_summary(llm: Endpoint, answer: Answer) -> None:
    llm.answers = [answer]
    assert summarize_notes(_record(), LLMClient(llm.url, "m")) is None


def test_an_unreachable_or_open_circuit_endpoint_means_no_summary(llm: Endpoint) -> None:
    url = llm.url
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=60.0)
    breaker.record_failure()
    assert summarize_notes(_record(), LLMClient(url, "m", breaker=breaker)) is None
    assert llm.bodies == []
    llm.httpd.shutdown()
    llm.httpd.server_close()
    assert summarize_notes(_record(), LLMClient(url, "m", timeout_s=2.0)) is None
