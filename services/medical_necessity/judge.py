"""Judges for criteria that only free text can decide (e.g. "progression on prior therapy").

``NoJudge`` (no LLM configured): the criterion stays undecided and is marked ``needs-review`` with
the passages attached. ``LLMJury``: several independent votes from the shared LLM client, each
constrained to a JSON verdict that must quote the passage it rests on; the majority wins, ties
and failures fall back to ``needs-review``. Coded data is never overridden: judges only see
criteria the coded evaluation left unknown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from services.medical_necessity.passages import Passage
from shared.errors import UpstreamError
from shared.llm import LLMClient

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["satisfied", "unsatisfied", "unknown"]},
        "quote": {"type": "string"},
        "rationale": {"type": "string"},
    },
    "required": ["verdict", "quote", "rationale"],
}


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
        votes: list[str] = []
        rationale = None
        for seed in range(self.votes):
            try:
                answer = self.client.chat_json(messages, VERDICT_SCHEMA, temperature=0.7, seed=seed)
            except UpstreamError:
                continue
            verdict = answer.get("verdict")
            quote = str(answer.get("quote") or "")
            # A verdict must rest on words that are really in the excerpts.
            if (
                verdict in {"satisfied", "unsatisfied"}
                and quote
                and any(quote.lower() in p.text.lower() for p in passages)
            ):
                votes.append(str(verdict))
                rationale = rationale or str(answer.get("rationale") or "")
            else:
                votes.append("unknown")
        if not votes:
            return Judgement("llm-jury", "needs-review", 0.0, rationale="the LLM endpoint did not answer")
        winner, count = Counter(votes).most_common(1)[0]
        if winner == "unknown" or count * 2 <= len(votes):
            return Judgement("llm-jury", "needs-review", count / self.votes, tuple(votes), rationale)
        return Judgement("llm-jury", winner, count / self.votes, tuple(votes), rationale)
