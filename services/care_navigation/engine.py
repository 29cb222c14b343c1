"""Care-Navigation engine: where a patient stands on each pathway, what is due, what is missing.

Reads a ``PatientRecord`` and the pathway graph (through ``graph.queries``); knows nothing of HTTP.
Gaps come in three kinds:
- ``missing-prerequisite``: a step the walk passed without evidence (biomarkers never tested before
  first-line therapy), or a prerequisite a done step ``requires`` that is not on record;
- ``overdue``: a next step whose due date has passed (surveillance imaging, a referral);
- ``missing-information``: a decision that cannot be taken for lack of a fact (no stage recorded).
Treatments already given are checked line by line against the pathway as of their start date;
those no pathway option supports are listed as off-pathway with the reason.
A deceased patient gets no next step and no actionable gap (overdue, missing information): the
position, past gaps and off-pathway treatment stay, read as of the death, and the output says so.
"""

from __future__ import annotations

from datetime import date

from graph.facts import SATISFIED, UNSATISFIED, Evaluation, Evidence, PatientFacts, deciding_leaves
from graph.model import Node, Source
from graph.queries import Criteria, Location, NextStep, PathwayQueries, WalkedNode
from services.care_navigation.contract import (
    CitationOut,
    DeceasedOut,
    EvidenceOut,
    GapOut,
    NavigationOut,
    NextStepOut,
    OffPathwayOut,
    PathwayOut,
    PositionOut,
    StepRef,
)
from shared.contract import CodeOut
from shared.fhir.record import RXNORM, Code, FhirTime, Order, PatientRecord
from shared.terminology import terminology
from shared.therapy_lines import TherapyLine, lines_of_therapy

DISCLAIMER = (
    "Decision support from demonstration pathways written from public sources (NCI PDQ, FDA labels, "
    "published trials); not NCCN content and not reviewed by a clinical team. A clinician decides."
)


ACTIONABLE_AFTER_DEATH = {"overdue", "missing-information"}  # gaps that ask for something to be done


def navigate(record: PatientRecord, queries: PathwayQueries, as_of: date | None = None) -> NavigationOut:
    today = as_of or date.today()
    patient = record.patient
    died = patient.deceased.day if patient.deceased is not None else None
    dead = (died is not None and died <= today) or (died is None and patient.deceased_flag)
    if died is not None and died < today:
        today = died  # the record ends at the death: read it as of then
        as_of = died
    lines = lines_of_therapy(record)
    pathways = [_pathway(record, queries, location, today, lines) for location in queries.locate(record, as_of)]
    deceased = None
    if dead:
        deceased = DeceasedOut(date=patient.deceased.text if patient.deceased else None, source=patient.source)
        pathways = [
            p.model_copy(update={"next_steps": [], "gaps": [g for g in p.gaps if g.kind not in ACTIONABLE_AFTER_DEATH]})
            for p in pathways
        ]
    return NavigationOut(
        patient=record.id, as_of=today.isoformat(), pathways=pathways, disclaimer=DISCLAIMER, deceased=deceased
    )


def _pathway(
    record: PatientRecord, queries: PathwayQueries, location: Location, today: date, lines: list[TherapyLine]
) -> PathwayOut:
    info, cancer = location.info, location.match.cancer
    next_steps = queries.next_steps_for(location, today)
    facts = PatientFacts(record, cancer, as_of=location.as_of)
    cited: list[Node] = [w.node for w in location.position] + [s.node for s in next_steps]
    gaps = _gaps(queries, location, next_steps, facts)
    cited += [queries.store.node(info.key, g.step.id) for g in gaps if queries.store.node(info.key, g.step.id)]  # type: ignore[misc]
    mine = [line for line in lines if line.cancer_source in {cancer.source, *cancer.merged_sources}]
    return PathwayOut(
        id=info.id,
        version=info.version,
        title=info.title,
        status=info.status,
        cancer=cancer.source,
        cancer_code=_code(cancer.code),
        applies=location.match.applies.status,
        position=[_position(w) for w in location.position],
        next_steps=[
            NextStepOut(step=_ref(s.node), due=s.due.isoformat() if s.due else None, overdue=s.overdue, reason=s.reason)
            for s in next_steps
        ],
        gaps=gaps,
        off_pathway=[o for line in mine if (o := _off_pathway(record, queries, location, line)) is not None],
        citations=_citations(queries.store.sources(info.key), cited),
    )


def _ref(node: Node) -> StepRef:
    kind = node.step.value if node.step is not None else node.kind.value
    return StepRef(id=node.id, title=node.title, kind=kind)


def _code(code: Code) -> CodeOut:
    return CodeOut(system=code.system, code=code.code, display=code.display)


def _evidence(items: list[Evidence] | tuple[Evidence, ...]) -> list[EvidenceOut]:
    return [EvidenceOut(source=e.source, fact=e.fact, value=e.value, date=e.date) for e in items]


def _leaves(evaluation: Evaluation | None) -> list[Evaluation]:
    return deciding_leaves(evaluation) if evaluation is not None else []


def _position(walked: WalkedNode) -> PositionOut:
    facts = [e for leaf in _leaves(walked.evaluation) if leaf.status == SATISFIED for e in leaf.evidence]
    return PositionOut(
        step=_ref(walked.node),
        status="done" if walked.done else "not-started",
        inferred=walked.inferred,
        since=walked.date.isoformat() if walked.date else None,
        facts=_evidence(facts[-10:]),
    )


def _missing(evaluation: Evaluation | None) -> tuple[str, list[Evidence]]:
    """What is not on record, in words, from the leaves that are not satisfied."""
    open_leaves = [leaf for leaf in _leaves(evaluation) if leaf.status != SATISFIED]
    words = "; ".join(e.fact for leaf in open_leaves for e in leaf.evidence[:1]) or "no evidence on record"
    return words, [e for leaf in open_leaves for e in leaf.evidence[:1]]


def _gaps(queries: PathwayQueries, location: Location, next_steps: list[NextStep], facts: PatientFacts) -> list[GapOut]:
    gaps: list[GapOut] = []
    seen: set[tuple[str, str]] = set()

    def add(kind: str, node: Node, reason: str, evidence: list[Evidence] | None = None) -> None:
        if (kind, node.id) not in seen:
            seen.add((kind, node.id))
            gaps.append(GapOut(kind=kind, step=_ref(node), reason=reason, evidence=_evidence(evidence or [])))

    ahead = "; ".join(w.node.title for w in location.position)
    for skipped in location.skipped:
        words, evidence = _missing(skipped.evaluation)
        add(
            "missing-prerequisite",
            skipped.node,
            f"{skipped.node.title} not on record before {ahead}: {words}",
            evidence,
        )
    for walked in location.walk:
        if not walked.done:
            continue
        for requirement in queries.prerequisites(location.info.key, walked.node, facts):
            if requirement.status != SATISFIED:
                required = _required_node(queries, location, walked.node, requirement.label)
                words, evidence = _missing(requirement)
                add(
                    "missing-prerequisite",
                    required or walked.node,
                    f"{requirement.label} ({walked.node.title}): {words}",
                    evidence,
                )
    parents = {w.node.id: w.via.source for w in location.walk if w.via is not None}
    behind: set[str] = set()  # everything upstream of the position
    for here in location.position:
        at = parents.get(here.node.id)
        while at is not None and at not in behind:
            behind.add(at)
            at = parents.get(at)
    for walked in location.walk:
        if walked.status == "undetermined" and walked.node.id in behind:  # passed by inference
            missing = sorted(
                {leaf.label for _, ev in walked.branches for leaf in _leaves(ev) if leaf.status == "unknown"}
            )
            add("missing-information", walked.node, f"decide '{walked.node.title}': needs {', '.join(missing)}")
    for step in next_steps:
        if step.overdue and step.due is not None:
            add("overdue", step.node, f"{step.node.title} was due {step.due.isoformat()} ({step.reason})")
        elif step.node.kind.value == "decision":
            add("missing-information", step.node, step.reason)
    return gaps


def _required_node(queries: PathwayQueries, location: Location, node: Node, label: str) -> Node | None:
    key = location.info.key
    for edge in queries.store.edges_from(key, node.id, ("requires",)):  # type: ignore[arg-type]
        target = queries.store.node(key, edge.target)
        if target is not None and label in (edge.label, f"done first: {target.title}"):
            return target
    return None


def _off_pathway(
    record: PatientRecord, queries: PathwayQueries, location: Location, line: TherapyLine
) -> OffPathwayOut | None:
    """A line is judged as regimens of the pathway, not drug by drug: the options that give most
    of its drugs at once (then the best-fitting, then the one with fewest other drugs) are chosen
    until every drug is given by one ("leuprolide + docetaxel" is the ADT backbone and ADT +
    docetaxel), each evaluated as of the line's start in the line's own setting. The line is
    on-pathway when every chosen option applies or cannot be ruled out; otherwise it is listed
    with the unmet criteria of the options that fail."""
    key = location.info.key
    terms = terminology()
    first = terms.drug_by_name(line.drugs[0])
    code = Code(RXNORM, first.rxcuis[0] if first and first.rxcuis else "", line.regimen)
    order = Order(
        line.sources[0], code, "completed", "order", line.start, (location.match.cancer.source,), tuple(line.drugs)
    )
    criteria = _only(queries.criteria_for(order, record, exclude=line.sources), key)
    remaining = set(line.drugs)
    reasons: list[str] = []
    while remaining:
        giving = [a for a in criteria.alternatives if remaining & queries.drugs_of(key, a.orderable)]
        if not giving:
            reasons += [f"{drug} is not an option of the {location.info.title} pathway" for drug in sorted(remaining)]
            break
        best = min(
            giving,
            key=lambda a: (
                -len(remaining & queries.drugs_of(key, a.orderable)),
                _RANK[a.evaluation.status],
                len(queries.drugs_of(key, a.orderable) - set(line.drugs)),
            ),
        )
        covered = remaining & queries.drugs_of(key, best.orderable)
        remaining -= covered
        if best.evaluation.status == UNSATISFIED:
            failing = [leaf.label for leaf in deciding_leaves(best.evaluation, UNSATISFIED)]
            reasons.append(
                f"{' + '.join(sorted(covered))} matches {best.orderable.title} at {best.step.title}, which does "
                f"not apply here: not met: {'; '.join(dict.fromkeys(failing))}"
            )
    return _off(line, " | ".join(reasons)) if reasons else None


_RANK = {SATISFIED: 0, "unknown": 1, UNSATISFIED: 2}


def _off(line: TherapyLine, reason: str) -> OffPathwayOut:
    start = line.start.text if isinstance(line.start, FhirTime) else str(line.start)
    return OffPathwayOut(line=line.line, regimen=line.regimen, start=start, sources=line.sources[:10], reason=reason)


def _only(criteria: Criteria, key: str) -> Criteria:
    alternatives = tuple(a for a in criteria.alternatives if a.pathway.key == key)
    if not alternatives:
        return Criteria(criteria.order, (), None)
    statuses = [a.evaluation.status for a in alternatives]
    best = sorted(alternatives, key=lambda a: {"satisfied": 0, "unknown": 1, "unsatisfied": 2}[a.evaluation.status])
    status = SATISFIED if SATISFIED in statuses else "unknown" if "unknown" in statuses else UNSATISFIED
    tree = Evaluation(
        status, criteria.tree.label if criteria.tree else "", "any", children=tuple(a.evaluation for a in best)
    )
    return Criteria(criteria.order, tuple(best), tree)


def _citations(sources: dict[str, Source], nodes: list[Node]) -> list[CitationOut]:
    out: dict[tuple[str, str], CitationOut] = {}
    for node in nodes:
        for c in node.cites:
            s = sources.get(c.source)
            if s is not None and (c.source, c.section) not in out:
                out[(c.source, c.section)] = CitationOut(
                    title=s.title, publisher=s.publisher, url=s.url, section=c.section
                )
    return list(out.values())
