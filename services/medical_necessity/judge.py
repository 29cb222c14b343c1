"""Judges for criteria that only free text can decide (e.g. "progression on prior therapy").

``NoJudge`` (no LLM configured): the criterion stays undecided and is marked ``needs-review`` with
the passages attached. ``LLMJury``: several votes from the shared LLM client, each constrained to
a JSON verdict that must quote the passage it rests on; the majority wins, ties and failures fall
back to ``needs-review``. Coded data is never overridden: judges only see criteria the coded
evaluation left unknown.

Where the votes come from: with ``LLM_DSBD`` the W votes are the W beams of ONE call to the DSBD
route (dynamic-width speculative beam decoding: one decode, W distinct candidates, each
constrained to the verdict schema; a beam that is not a valid verdict counts as unknown). An
endpoint without the route (e.g. a plain vLLM) falls back to one chat call per vote. An endpoint
that is down (``LLMUnavailable`` after the client's retries, or an open breaker) gets no further
calls; a client without retries asks every vote once.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.medical_necessity.passages import Passage
from shared.config import Settings
from shared.errors import UpstreamError
from shared.llm import LLMClient, LLMUnavailable


# The model is the contract both ways: its JSON schema constrains the LLM's output (structured outputs),
# and every answer is validated against it before it counts. Bounded strings: the grammar closes them,
# so every answer ends as valid JSON within the token budget.
class Verdict(BaseModel):
    """One juror's answer on one criterion, from the excerpts only."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["satisfied", "unsatisfied", "unknown"]
    quote: str = Field(max_length=300)
    rationale: str = Field(max_length=400)


VERDICT_SCHEMA = Verdict.model_json_schema()
MIN_QUOTE_WORDS = 2  # a quote of one word ("e", "no") is found in almost any excerpt: it grounds nothing


def grounded(quote: str, passages: list[Passage]) -> bool:
    """Is ``quote`` words really in one of the excerpts (case and spacing aside), and enough of them?"""
    words = quote.lower().split()
    if len(re.findall(r"[a-z0-9]{2,}", " ".join(words))) < MIN_QUOTE_WORDS:
        return False
    wanted = " ".join(words)
    return any(wanted in " ".join(p.text.lower().split()) for p in passages)


@dataclass(frozen=True)
class Judgement:
    judge: str
    verdict: str  # satisfied | unsatisfied | needs-review
    confidence: float
    votes: tuple[str, ...] = field(default=())
    rationale: str | None = None


class Judge(Protocol):
    def __call__(self, criterion: str, passages: list[Passage]) -> Judgement: ...


class NoJudge:
    def __call__(self, criterion: str, passages: list[Passage]) -> Judgement:
        why = "no LLM configured; passages attached for a reviewer" if passages else "no passage mentions it"
        return Judgement("none", "needs-review", 0.0, rationale=why)


class LLMJury:
    def __init__(self, client: LLMClient, votes: int = 3) -> None:
        self.client = client
        self.votes = votes

    def __call__(self, criterion: str, passages: list[Passage]) -> Judgement:
        if not passages:
            return Judgement("llm-jury", "needs-review", 0.0, rationale="no passage mentions it")
        quoted = "\n".join(f"[{i + 1}] ({p.source}, {p.date or 'undated'}) {p.text}" for i, p in enumerate(passages))
        messages = [
            {
                "role": "system",
                "content": "You check one criterion of a medical-necessity review against excerpts of a patient's "
                "notes. Answer only from the excerpts; quote the words you rely on. If they do not say, "
                "answer unknown. Negated or hypothetical statements do not satisfy a criterion.",
            },
            {"role": "user", "content": f"Criterion: {criterion}\nExcerpts:\n{quoted}"},
        ]
        answers = self._answers(messages)
        if answers is None:
            return Judgement("llm-jury", "needs-review", 0.0, rationale="the LLM endpoint did not answer")
        votes: list[str] = []
        rationales: dict[str, str] = {}  # the first rationale given for each verdict
        for answer in answers:
            if answer is None:  # a call that failed: left out (the confidence still counts it)
                continue
            try:
                vote = Verdict.model_validate(answer)
            except ValidationError:  # not the contract (an endpoint without structured outputs): no vote
                votes.append("unknown")
                continue
            # A verdict must rest on words that are really in the excerpts.
            if vote.verdict != "unknown" and grounded(vote.quote, passages):
                votes.append(vote.verdict)
                rationales.setdefault(vote.verdict, vote.rationale)
            else:
                votes.append("unknown")
        if not votes:
            return Judgement("llm-jury", "needs-review", 0.0, rationale="the LLM endpoint did not answer")
        winner, count = Counter(votes).most_common(1)[0]
        rationale = rationales.get(winner) or next(iter(rationales.values()), None)
        if winner == "unknown" or count * 2 <= len(votes):
            return Judgement("llm-jury", "needs-review", count / self.votes, tuple(votes), rationale)
        return Judgement("llm-jury", winner, count / self.votes, tuple(votes), rationale)

    def _answers(self, messages: list[dict[str, str]]) -> list[dict[str, Any] | None] | None:
        """One parsed verdict (or None) per vote; None when the endpoint is unavailable."""
        if self.client.use_dsbd:
            try:
                beams = self.client.beams_json(messages, VERDICT_SCHEMA, self.votes, temperature=0.7, seed=0)
            except LLMUnavailable:
                return None
            except UpstreamError:
                pass  # no DSBD route there (404, 400 ...): ask one vote at a time
            else:
                # Every beam is a vote: one that is not a verdict object counts as unknown.
                return [b if b is not None else {"verdict": "unknown"} for b in beams[: self.votes]]
        answers: list[dict[str, Any] | None] = []
        for seed in range(self.votes):
            try:
                answers.append(self.client.chat_json(messages, VERDICT_SCHEMA, temperature=0.7, seed=seed))
            except LLMUnavailable:
                if self.client.max_retries or self.client.breaker.state != "closed":
                    break  # a call that spent its retries, or an open breaker: the endpoint is down now
                answers.append(None)
            except UpstreamError:
                answers.append(None)
        if not any(a is not None for a in answers):
            return None
        return answers


def judge_from_settings(settings: Settings) -> Judge:
    """An LLM jury when ``LLM_BASE_URL`` is set, else nobody (free-text criteria go to review)."""
    client = LLMClient.from_settings(settings)
    return LLMJury(client) if client is not None else NoJudge()


JUDGE_EXTENSION = "oncotwin.necessity.judge"


def app_judge(extensions: dict[str, Any], settings: Settings) -> Judge:
    """The app's one judge (``judge_from_settings``), built on first use and kept in its extensions: the
    necessity routes and the dashboard share it, and with it the LLM client's circuit breaker."""
    judge: Judge | None = extensions.get(JUDGE_EXTENSION)
    if judge is None:
        judge = extensions.setdefault(JUDGE_EXTENSION, judge_from_settings(settings))
    return judge
