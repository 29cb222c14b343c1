"""Medical-Necessity engine: is an ordered drug, test or procedure supported by the pathway?

For each order the pathway graph gives an AND/OR tree per way the item is offered
(``graph.queries.criteria_for``). Leaves over coded data are decided there, with evidence.
Leaves still *unknown* that name free-text terms (``text:`` in the pathway file) get the most
relevant note/report passages and go to a judge (an LLM jury, or nobody: ``needs-review``).

Determination, from the best alternative (satisfied, else unknown, else the closest miss):
``meets`` / ``insufficient-documentation`` / ``does-not-meet``. An item that the pathways of the
patient's cancers do not offer is ``does-not-meet`` (not on the pathway for this cancer, with the
scope's reason); a drug no one can identify is ``insufficient-documentation``; only a patient with
no cancer that any pathway covers gets ``not-on-any-pathway``. Systemic therapy also needs no
documented ECOG 3-4 and no documented progression on the same drug or class (``rules.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import date

from graph.facts import SATISFIED, UNKNOWN, UNSATISFIED, Evaluation, Status, combine, deciding_leaves
from graph.model import Source
from graph.queries import Alternative, Criteria, PathwayQueries, order_code_keys
from services.medical_necessity.contract import (
    CitationOut,
    CriterionOut,
    Determination,
    DeterminationOut,
    EvidenceOut,
    JudgementOut,
    NecessityOut,
    OrderOut,
    PassageOut,
)
from services.medical_necessity.judge import Judge, Judgement, NoJudge
from services.medical_necessity.passages import Passage, PassageIndex, passages_of
from services.medical_necessity.rules import rules, scopes
from shared.contract import CodeOut, IssueOut
from shared.errors import UnprocessableInput, check_deadline
from shared.fhir.record import Order, PatientRecord
from shared.terminology import terminology

REVIEWABLE_STATUSES = {"draft", "active", "on-hold"}
MAX_ALTERNATIVES = 8  # shown in the tree: best first; the rest are further routes to the same answer
DISCLAIMER = (
    "Determinations against demonstration pathways written from public sources (NCI PDQ, FDA labels, "
    "published trials); not NCCN content, not payer policy, not reviewed by a clinical team."
)
OUTCOME: dict[Status, Determination] = {
    SATISFIED: "meets",
    UNKNOWN: "insufficient-documentation",
    UNSATISFIED: "does-not-meet",
}
WORDS = {
    "meets": "meets",
    "does-not-meet": "does not meet",
    "insufficient-documentation": "cannot be confirmed from the record against",
    "not-on-any-pathway": "is not an option of",
}


def orders_to_review(record: PatientRecord, reference: str | None = None) -> list[Order]:
    """The order asked about, or every draft/active oncology order in the record."""
    if reference is not None:
        found = [o for o in record.orders if o.reference == reference]
        if not found:
            raise UnprocessableInput(f"order {reference} is not a draft or active order in the input")
        return found
    terms = terminology()
    oncology = []
    for order in record.orders:
        if order.status not in REVIEWABLE_STATUSES:
            continue
        drugs = [terms.drug_by_name(name) for name in order.ingredients]
        if order.reference.startswith("ServiceRequest/") or any(d and d.drug_class != "supportive" for d in drugs):
            oncology.append(order)
    return oncology


def assess(
    record: PatientRecord,
    queries: PathwayQueries,
    orders: Iterable[Order] | None = None,
    judge: Judge | None = None,
) -> NecessityOut:
    judge = judge or NoJudge()
    chosen = list(orders) if orders is not None else orders_to_review(record)
    texts = passages_of(record)
    determinations = []
    for order in chosen:
        check_deadline()  # a safe point: a request past its deadline stops between orders
        determinations.append(_determine(record, queries, order, judge, texts))
    return NecessityOut(
        patient=record.id,
        determinations=determinations,
        disclaimer=DISCLAIMER,
        issues=[IssueOut.of(i) for i in record.issues],
    )


def _determine(
    record: PatientRecord, queries: PathwayQueries, order: Order, judge: Judge, texts: PassageIndex
) -> DeterminationOut:
    systemic_rules = rules()
    criteria = queries.criteria_for(
        order,
        record,
        also=lambda match, route: systemic_rules.systemic(match.info.id, order.ingredients, route),
    )
    # The coded facts are read as of the order date; so is the free text (a later note is no support).
    until = order.authored.day if order.authored is not None else None
    order_out = OrderOut(
        reference=order.reference,
        code=CodeOut(system=order.code.system, code=order.code.code, display=order.code.display),
        status=order.status,
        authored=order.authored.text if order.authored else None,
    )
    if criteria.tree is None:
        return _not_on_pathway(record, queries, order, order_out)
    judged = _Judging(judge, texts, until)
    alternatives = [replace(a, evaluation=judged.resolve(a.evaluation)) for a in criteria.alternatives]
    best = _best(alternatives)
    status = best.evaluation.status
    determination = OUTCOME[status]
    deciding = (
        []
        if status == SATISFIED
        else list(dict.fromkeys(leaf.label for leaf in deciding_leaves(best.evaluation, status)))
    )
    used = [judged.verdicts[leaf.label] for leaf in deciding_leaves(best.evaluation) if leaf.label in judged.verdicts]
    # Only an undecided determination can turn on what a reviewer finds in the notes.
    needs_review = status == UNKNOWN and any(j.verdict == "needs-review" for j in used)
    decided_by_judge = [j for j in used if j.verdict != "needs-review"]
    # Confidence in the determination itself: coded facts that decide it are strong; a missing fact
    # is a weak answer by nature (documentation may exist elsewhere); a person reading notes, weaker.
    confidence = min([0.95 if status != UNKNOWN else 0.6, *(0.9 * j.confidence for j in decided_by_judge)])
    if status == UNKNOWN and needs_review:
        confidence = 0.5
    ordered = sorted(alternatives, key=_rank)[:MAX_ALTERNATIVES]
    tree = combine("any", criteria.tree.label, (a.evaluation for a in ordered))
    citations = _citations(queries, best, criteria)
    return DeterminationOut(
        order=order_out,
        determination=determination,
        confidence=round(confidence, 2),
        needs_review=needs_review,
        pathway=best.pathway.key,
        option=best.orderable.id,
        deciding=deciding,
        criteria=judged.render(tree),
        rationale=_rationale(order, determination, best, deciding, used, len(citations)),
        citations=citations,
    )


def _not_on_pathway(
    record: PatientRecord, queries: PathwayQueries, order: Order, order_out: OrderOut
) -> DeterminationOut:
    """The item is on no route of the pathways that apply: outside this cancer's pathway
    (does-not-meet, with the scope's reason), unidentifiable (insufficient-documentation), or the
    patient has no cancer any pathway covers (not-on-any-pathway)."""
    matches = queries.pathways_for(record, order.authored.day if order.authored else None)
    what = order.code.display or order.code.code or order.reference
    if not matches:
        return _outside(
            order_out,
            "not-on-any-pathway",
            None,
            f"no pathway applies to this patient's cancers, so {what} cannot be checked",
            confidence=0.5,
            needs_review=True,
        )
    first = matches[0].info
    names = ", ".join(sorted({m.info.title for m in matches}))
    if order.reference.startswith("MedicationRequest/") and not order.ingredients:
        return _outside(
            order_out,
            "insufficient-documentation",
            first.key,
            f"the ordered drug ({what}) could not be identified from its codes or name, so it cannot be "
            f"checked against the {names} pathway",
            deciding=["the ordered drug is identified (RxNorm code or a known drug name)"],
            confidence=0.5,
            needs_review=True,
        )
    keys = order_code_keys(order)
    found = [
        (m.info, reason)
        for m in matches
        if (scope := scopes().get(m.info.id)) and (reason := scope.reason_for(keys, order.ingredients))
    ]
    why = f"{what} is not an option of the {names} pathway for this patient's cancer"
    if found:
        why += f": {found[0][1].reason}"
    # Say whether the item is on some *other* cancer's pathway: that is often the real mistake.
    elsewhere = sorted({i.title for i in queries.active if queries.store.find_orderables(i.key, keys)})
    if elsewhere:
        why += f" (it appears on the {', '.join(elsewhere)} pathway)"
    return _outside(
        order_out,
        "does-not-meet",
        (found[0][0] if found else first).key,
        why,
        deciding=[f"on the {names} pathway"],
        confidence=0.9,
    )


def _outside(
    order_out: OrderOut,
    determination: Determination,
    pathway: str | None,
    why: str,
    *,
    deciding: list[str] | None = None,
    confidence: float,
    needs_review: bool = False,
) -> DeterminationOut:
    return DeterminationOut(
        order=order_out,
        determination=determination,
        confidence=confidence,
        needs_review=needs_review,
        pathway=pathway,
        option=None,
        deciding=deciding or [],
        criteria=None,
        rationale=why + ". Demonstration content; a clinician decides.",
        citations=[],
    )


class _Judging:
    """Sends each free-text leaf left unknown to the judge once, and rebuilds trees with verdicts."""

    def __init__(self, judge: Judge, texts: PassageIndex, until: date | None) -> None:
        self.judge = judge
        self.texts = texts
        self.until = until
        self.verdicts: dict[str, Judgement] = {}
        self.passages: dict[str, list[Passage]] = {}

    def resolve(self, ev: Evaluation) -> Evaluation:
        if ev.op == "leaf":
            if ev.status != UNKNOWN or not ev.text:
                return ev
            if ev.label not in self.verdicts:
                check_deadline()  # an LLM jury call can take seconds
                found = self.texts.relevant(ev.text, until=self.until)
                self.passages[ev.label] = found
                self.verdicts[ev.label] = self.judge(ev.label, found)
            verdict = self.verdicts[ev.label].verdict
            return replace(ev, status=verdict) if verdict in (SATISFIED, UNSATISFIED) else ev
        children = tuple(self.resolve(c) for c in ev.children)
        if ev.op == "not":
            inner = children[0]
            flipped = {SATISFIED: UNSATISFIED, UNSATISFIED: SATISFIED}.get(inner.status, UNKNOWN)
            return replace(ev, status=flipped, children=children)
        return combine("all" if ev.op == "all" else "any", ev.label, children)

    def render(self, ev: Evaluation) -> CriterionOut:
        judgement = self.verdicts.get(ev.label) if ev.op == "leaf" else None
        return CriterionOut(
            op=ev.op,
            label=ev.label,
            status=ev.status,
            fact=ev.fact,
            evidence=[EvidenceOut(source=e.source, fact=e.fact, value=e.value, date=e.date) for e in ev.evidence],
            passages=[
                PassageOut(source=p.source, date=p.date, text=p.text, start=p.start, end=p.end, score=p.score)
                for p in (self.passages.get(ev.label, []) if judgement else [])
            ],
            judgement=JudgementOut(
                judge=judgement.judge,
                verdict=judgement.verdict,
                votes=list(judgement.votes),
                confidence=judgement.confidence,
                rationale=judgement.rationale,
            )
            if judgement
            else None,
            children=[self.render(c) for c in ev.children],
        )


def _rank(alternative: Alternative) -> tuple[int, int]:
    """Satisfied first, then unknown, then unsatisfied; within a status the closest to passing."""
    status = alternative.evaluation.status
    blocking = len(deciding_leaves(alternative.evaluation, status)) if status != SATISFIED else 0
    return ({SATISFIED: 0, UNKNOWN: 1, UNSATISFIED: 2}[status], blocking)


def _best(alternatives: list[Alternative]) -> Alternative:
    return min(alternatives, key=_rank)


def _citations(queries: PathwayQueries, best: Alternative, criteria: Criteria) -> list[CitationOut]:
    sources: dict[str, Source] = queries.store.sources(best.pathway.key)
    out: dict[tuple[str, str], CitationOut] = {}
    # The step first: it names the setting (metastatic first line, adjuvant) the option was judged
    # in; a regimen shared by several settings also cites the trials of the others.
    for node in (best.step, best.orderable):
        for c in node.cites:
            s = sources.get(c.source)
            if s is not None:
                out.setdefault(
                    (c.source, c.section),
                    CitationOut(title=s.title, publisher=s.publisher, url=s.url, section=c.section),
                )
    return list(out.values())


def _rationale(
    order: Order, determination: str, best: Alternative, deciding: list[str], judged: list[Judgement], cited: int
) -> str:
    what = order.code.display or order.code.code
    head = (
        f"{what} ({order.reference}) {WORDS[determination]} the {best.pathway.title} pathway "
        f"(version {best.pathway.version}, demonstration content): it is offered as "
        f"{best.orderable.title} at '{best.step.title}'"
    )
    if determination == "meets":
        body = "; every criterion on that route is documented in the coded record"
        if any(j.verdict == SATISFIED for j in judged):
            body += ", one or more through the notes (LLM jury, see the votes)"
    elif determination == "does-not-meet":
        body = f"; not met: {'; '.join(deciding)}"
    else:
        body = f"; not documented: {'; '.join(deciding)}"
        if any(j.verdict == "needs-review" for j in judged):
            body += " (the most relevant note passages are attached for review)"
    refs = " ".join(f"[{i}]" for i in range(1, cited + 1))
    return f"{head}{body}. Sources: {refs}." if refs else f"{head}{body}."
