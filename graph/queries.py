"""Pathway questions about one patient, answered the same way over any ``PathwayStore``.

- ``pathways_for(record)``: which pathways apply, to which of the patient's cancers;
- ``locate(record)``: the walk through each pathway, and the steps the patient is at, with facts;
- ``next_steps(record)``: what falls due next, with due dates from the record's own events;
- ``options(record, step)``: the regimens/tests a step offers, each condition evaluated;
- ``criteria_for(order, record)``: the AND/OR tree under which an ordered item is on-pathway;
- ``explain(...)``: a readable account of any of the above, with citations.

How a walk goes: from the pathway's start, a step is *done* when its ``done_when`` evidence is on
record; a decision takes its first satisfied branch in file order (an earlier *unknown* branch
leaves it undetermined: we cannot rule out the branch that comes first). When a decision is
undetermined but a step behind one of its open branches has evidence (surgery done, stage never
recorded), the walk follows that branch and marks it *inferred*. The position is the furthest
done step(s); surveillance only counts evidence after the step before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from graph.conditions import AllOf, AnyOf, Condition, Not, describe, leaves
from graph.facts import (
    SATISFIED,
    UNKNOWN,
    UNSATISFIED,
    Attribution,
    Evaluation,
    PatientFacts,
    Status,
    combine,
    deciding_leaves,
)
from graph.model import ORDERABLE, Edge, EdgeKind, Node, NodeKind, PathwayInfo, Source, StepKind, drug_ingredients
from graph.store import PathwayStore, latest
from shared.fhir.record import INGREDIENT, MARKER, RXNORM, CancerCondition, Order, PatientRecord
from shared.terminology import terminology

StepStatus = Literal["done", "not-done", "decided", "undetermined"]


@dataclass(frozen=True, slots=True)
class PathwayMatch:
    info: PathwayInfo
    cancer: CancerCondition
    applies: Evaluation  # satisfied, or unknown for e.g. lung cancer without histology


@dataclass(frozen=True, slots=True)
class WalkedNode:
    node: Node
    status: StepStatus
    via: Edge | None  # the edge the walk arrived by (None for the start)
    evaluation: Evaluation | None  # done_when for steps; the deciding branch for decisions
    inferred: bool = False  # reached past an undetermined decision because later evidence says so
    branches: tuple[tuple[Edge, Evaluation], ...] = ()  # for decisions: every branch, evaluated

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def date(self) -> date | None:
        return self.evaluation.latest if self.evaluation is not None else None


@dataclass(frozen=True, slots=True)
class Location:
    match: PathwayMatch
    walk: tuple[WalkedNode, ...]
    position: tuple[WalkedNode, ...]  # the steps the patient is at
    skipped: tuple[WalkedNode, ...]  # steps on the way to the position with no evidence on record
    as_of: date | None = None

    @property
    def info(self) -> PathwayInfo:
        return self.match.info


@dataclass(frozen=True, slots=True)
class NextStep:
    pathway: PathwayInfo
    node: Node
    due: date | None
    overdue: bool
    reason: str
    after: Node | None = None  # the step it follows
    edge: Edge | None = None


@dataclass(frozen=True, slots=True)
class Option:
    pathway: PathwayInfo
    step: Node
    node: Node  # regimen or activity
    status: Status
    evaluation: Evaluation  # all(branch condition, prerequisites)
    includes: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class Alternative:
    """One way an ordered item is on a pathway: this regimen, offered at this step, reached so."""

    pathway: PathwayInfo
    cancer: CancerCondition
    orderable: Node
    step: Node
    route: tuple[Edge, ...]
    evaluation: Evaluation


@dataclass(frozen=True, slots=True)
class Sequencing:
    """The drugs a route's own conditions name as prior therapy (a label indication "after
    irinotecan", "after alectinib"): the route was written to follow them."""

    named_drugs: frozenset[str] = frozenset()

    @staticmethod
    def of(conditions: Iterable[Condition]) -> Sequencing:
        prior = [leaf for c in conditions for leaf in leaves(c) if leaf.fact in {"therapy", "progressed_on"}]
        return Sequencing(frozenset(d for leaf in prior for d in leaf.get("drugs", ())))


@dataclass(frozen=True, slots=True)
class Criteria:
    order: Order
    alternatives: tuple[Alternative, ...]
    tree: Evaluation | None  # any(alternatives); None when the item is on no pathway
    citations: tuple[tuple[Source, str], ...] = field(default=())


class PathwayQueries:
    def __init__(self, store: PathwayStore, versions: dict[str, str] | None = None) -> None:
        """``versions`` pins a pathway id to a version; otherwise the newest is used."""
        self.store = store
        infos = store.pathways()
        chosen = latest(infos)
        for pathway_id, version in (versions or {}).items():
            pinned = [i for i in infos if i.id == pathway_id and i.version == version]
            if not pinned:
                raise LookupError(f"pathway {pathway_id}@{version} is not loaded")
            chosen[pathway_id] = pinned[0]
        self.active = sorted(chosen.values(), key=lambda i: i.id)
        self._drugs: dict[tuple[str, str], frozenset[str]] = {}  # orderable -> its ingredients

    # -- which pathways ----------------------------------------------------------------------------
    def pathways_for(
        self, record: PatientRecord, as_of: date | None = None, attribution: Attribution | None = None
    ) -> list[PathwayMatch]:
        out = []
        for cancer in _disease_cancers(record, as_of):
            facts = PatientFacts(record, cancer, as_of=as_of, attribution=attribution)
            for info in self.active:
                applies = facts.evaluate(info.applies_when)
                if applies.status != UNSATISFIED:
                    out.append(PathwayMatch(info, cancer, applies))
        return out

    # -- where the patient is ----------------------------------------------------------------------
    def locate(self, record: PatientRecord, as_of: date | None = None) -> list[Location]:
        shared = Attribution(record)
        return [
            self._locate(m, PatientFacts(record, m.cancer, as_of=as_of, attribution=shared))
            for m in self.pathways_for(record, as_of, shared)
        ]

    def _locate(self, match: PathwayMatch, facts: PatientFacts) -> Location:
        walk = self._walk(match.info, facts)
        steps = [w for w in walk if w.node.kind is NodeKind.STEP]
        parents = {w.node.id: w.via.source for w in walk if w.via is not None}
        behind_done: set[str] = set()  # every node upstream of a done step
        for w in steps:
            if w.done:
                at = parents.get(w.node.id)
                while at is not None and at not in behind_done:
                    behind_done.add(at)
                    at = parents.get(at)
        position = tuple(w for w in steps if w.done and w.node.id not in behind_done) or tuple(steps[:1])
        skipped = tuple(w for w in steps if not w.done and w.node.id in behind_done)
        return Location(match, tuple(walk), position, skipped, facts.as_of)

    def _walk(self, info: PathwayInfo, facts: PatientFacts) -> list[WalkedNode]:
        key = info.key
        out: list[WalkedNode] = []
        seen: set[str] = set()
        queue: list[tuple[str, Edge | None, bool]] = [(info.start, None, False)]
        dates: dict[str, date | None] = {}
        while queue:
            node_id, via, inferred = queue.pop(0)
            if node_id in seen:
                continue
            seen.add(node_id)
            node = self.store.node(key, node_id)
            if node is None or node.kind in ORDERABLE:
                continue
            if node.kind is NodeKind.STEP:
                anchor = dates.get(via.source) if via is not None else None
                walked = self._step(node, via, facts, anchor, inferred)
                dates[node_id] = walked.date if walked.done else None
                out.append(walked)
                queue += [(e.target, e, inferred) for e in self.store.edges_from(key, node_id, (EdgeKind.NEXT,))]
                continue
            walked, follow = self._decide(key, node, via, facts, inferred)
            dates[node_id] = dates.get(via.source) if via is not None else None
            out.append(walked)
            queue += follow
            queue += [(e.target, e, inferred) for e in self.store.edges_from(key, node_id, (EdgeKind.NEXT,))]
        return out

    def _step(
        self, node: Node, via: Edge | None, facts: PatientFacts, anchor: date | None, inferred: bool
    ) -> WalkedNode:
        if node.done_when is None:
            return WalkedNode(node, "not-done", via, None, inferred)
        evaluation = facts.evaluate(node.done_when)
        done = evaluation.status == SATISFIED
        if done and node.step is StepKind.SURVEILLANCE:
            # Surveillance is the imaging *after* treatment, not the staging scan before it: with no
            # treatment on record there is nothing to survey yet.
            done = anchor is not None and evaluation.latest is not None and evaluation.latest > anchor
        return WalkedNode(node, "done" if done else "not-done", via, evaluation, inferred)

    def _decide(
        self, key: str, node: Node, via: Edge | None, facts: PatientFacts, inferred: bool
    ) -> tuple[WalkedNode, list[tuple[str, Edge | None, bool]]]:
        branches = self.store.edges_from(key, node.id, (EdgeKind.BRANCH,))
        evaluated = [(e, self._branch(e, branches, facts)) for e in branches]
        for edge, evaluation in evaluated:
            if evaluation.status == UNKNOWN:
                break
            if evaluation.status == SATISFIED:
                return WalkedNode(node, "decided", via, evaluation, inferred, tuple(evaluated)), [
                    (edge.target, edge, inferred)
                ]
        # Undetermined: follow open branches whose target already has evidence, as inferred.
        follow: list[tuple[str, Edge | None, bool]] = []
        for edge, evaluation in evaluated:
            target = self.store.node(key, edge.target)
            if evaluation.status != UNSATISFIED and target is not None and target.done_when is not None:
                if facts.evaluate(target.done_when).status == SATISFIED:
                    follow.append((edge.target, edge, True))
        return WalkedNode(node, "undetermined", via, None, inferred, tuple(evaluated)), follow

    def _branch(self, edge: Edge, siblings: list[Edge], facts: PatientFacts) -> Evaluation:
        return facts.evaluate(branch_condition(edge, siblings)) if not _unconditional(edge) else _always(edge)

    def explain(self, result: Location | Criteria) -> str:
        """A readable account of a location (with its next steps) or of an order's criteria."""
        if isinstance(result, Criteria):
            return explain_criteria(self.store, result)
        return explain_location(self.store, result, self.next_steps_for(result))

    # -- what is due ---------------------------------------------------------------------------
    def next_steps(self, record: PatientRecord, as_of: date | None = None) -> list[NextStep]:
        today = as_of or date.today()
        out: list[NextStep] = []
        for location in self.locate(record, as_of):
            out += self._next(location, today)
        return out

    def next_steps_for(self, location: Location, as_of: date | None = None) -> list[NextStep]:
        return self._next(location, as_of or location.as_of or date.today())

    def _next(self, location: Location, today: date) -> list[NextStep]:
        info = location.info
        walked = {w.node.id: w for w in location.walk}
        out: list[NextStep] = []
        for here in location.position:
            if not here.done:  # nothing on record yet: the first step is what is due
                out.append(NextStep(info, here.node, None, False, "no evidence of this step on record"))
                continue
            if here.node.step is StepKind.SURVEILLANCE and here.via is not None and here.via.timing is not None:
                out += self._repeat(info, here, walked, today)
            for edge in self.store.edges_from(info.key, here.node.id, (EdgeKind.NEXT,)):
                out += self._towards(info, here, edge, walked, today)
        return out

    def _towards(
        self, info: PathwayInfo, here: WalkedNode, edge: Edge, walked: dict[str, WalkedNode], today: date
    ) -> list[NextStep]:
        target = walked.get(edge.target)
        if target is None:
            return []
        if target.node.kind is NodeKind.DECISION:
            if target.status == "undetermined":
                missing = sorted({leaf.label for _, ev in target.branches for leaf in _unknown_leaves(ev)})
                reason = f"decide '{target.node.title}': needs {', '.join(missing) or 'more facts'}"
                return [NextStep(info, target.node, None, False, reason, here.node, edge)]
            chosen = next((w for w in walked.values() if w.via is not None and w.via.source == target.node.id), None)
            if chosen is None:
                return []
            timing_edge = chosen.via if chosen.via is not None and chosen.via.timing is not None else edge
            return [] if chosen.done else [self._due(info, chosen.node, here, timing_edge, today)]
        return [] if target.done else [self._due(info, target.node, here, edge, today)]

    def _due(self, info: PathwayInfo, node: Node, here: WalkedNode, edge: Edge, today: date) -> NextStep:
        timing = edge.timing
        anchor = here.date
        due = None
        if timing is not None and anchor is not None:
            due = (timing.within or timing.every).after(anchor)  # type: ignore[union-attr]
        reason = f"after {here.node.title}" + (f" ({timing.text})" if timing is not None else "")
        return NextStep(info, node, due, due is not None and due < today, reason, here.node, edge)

    def _repeat(
        self, info: PathwayInfo, here: WalkedNode, walked: dict[str, WalkedNode], today: date
    ) -> list[NextStep]:
        timing = here.via.timing  # type: ignore[union-attr]
        if timing is None or timing.every is None or here.date is None:
            return []
        start = walked[here.via.source].date if here.via is not None and here.via.source in walked else None
        due = timing.every.after(here.date)
        if timing.for_ is not None and start is not None and due > timing.for_.after(start):
            return []  # the surveillance period is over
        reason = f"repeat {here.node.title} ({timing.text})"
        return [NextStep(info, here.node, due, due < today, reason, here.node, here.via)]

    # -- what a step offers ------------------------------------------------------------------------
    def options(self, record: PatientRecord, step_id: str, as_of: date | None = None) -> list[Option]:
        key = self._key_of_id(step_id)
        info = next(i for i in self.active if i.key == key)
        step = self.store.node(key, step_id)
        if step is None:
            raise LookupError(f"no step {step_id!r} in {key}")
        out: list[Option] = []
        shared = Attribution(record)
        for match in (m for m in self.pathways_for(record, as_of, shared) if m.info.key == key):
            facts = PatientFacts(record, match.cancer, as_of=as_of, attribution=shared)
            branches = self.store.edges_from(key, step_id, (EdgeKind.BRANCH,))
            for edge in branches:
                node = self.store.node(key, edge.target)
                if node is None or node.kind not in ORDERABLE:
                    continue
                evaluation = combine(
                    "all",
                    node.title,
                    [
                        self._branch(edge, branches, facts),
                        *self.prerequisites(key, step, facts),
                        *self.prerequisites(key, node, facts),
                    ],
                )
                includes = tuple(
                    n
                    for e in self.store.edges_from(key, node.id, (EdgeKind.INCLUDES,))
                    if (n := self.store.node(key, e.target)) is not None
                )
                out.append(Option(info, step, node, evaluation.status, evaluation, includes))
        rank = {SATISFIED: 0, UNKNOWN: 1, UNSATISFIED: 2}
        return sorted(out, key=lambda o: rank[o.status])  # stable: file order within a status

    def _key_of_id(self, node_id: str) -> str:
        prefix = node_id.split(".", 1)[0]
        for info in self.active:
            if info.id == prefix:
                return info.key
        raise LookupError(f"no active pathway for {node_id!r}")

    def prerequisites(self, key: str, node: Node, facts: PatientFacts) -> list[Evaluation]:
        """Each node ``node`` requires, evaluated by that node's own ``done_when``."""
        out = []
        for edge in self.store.edges_from(key, node.id, (EdgeKind.REQUIRES,)):
            needed = self.store.node(key, edge.target)
            if needed is None:
                continue
            label = edge.label or f"done first: {needed.title}"
            if needed.done_when is None:
                out.append(Evaluation(UNKNOWN, label, fact="requires"))
                continue
            ev = facts.evaluate(needed.done_when)
            out.append(Evaluation(ev.status, label, ev.op, ev.evidence, ev.children, ev.fact, ev.text, ev.latest))
        return out

    # -- is an order on-pathway ----------------------------------------------------------------------
    def criteria_for(
        self,
        order: Order,
        record: PatientRecord,
        exclude: Iterable[str] = (),
        also: Callable[[PathwayMatch, Sequencing], Sequence[Condition]] | None = None,
    ) -> Criteria:
        """``exclude``: more sources that are part of this order, not history (a whole line of therapy).
        ``also``: conditions every route must meet besides the pathway's own (the necessity rules for
        systemic therapy), given the match and what the route itself says of prior therapy."""
        as_of = order.authored.day if order.authored is not None else None
        keys = order_code_keys(order)
        by_source = record.cancers_by_source()
        stated = {by_source[r].source for r in order.reasons if r in by_source}
        alternatives: list[Alternative] = []
        cited: dict[tuple[str, str], tuple[Source, str]] = {}
        shared = Attribution(record)
        for match in self.pathways_for(record, as_of, shared):
            if stated and match.cancer.source not in stated:
                continue  # the order says which cancer it treats
            key = match.info.key
            facts = PatientFacts(
                record,
                match.cancer,
                as_of=as_of,
                exclude=[order.reference, *exclude],
                attribution=shared,
                ordered=order.ingredients if also is not None else (),
            )
            sources = self.store.sources(key)
            for item in self.store.find_orderables(key, keys):
                containers = [item] + [
                    n
                    for e in self.store.edges_to(key, item.id, (EdgeKind.INCLUDES,))
                    if (n := self.store.node(key, e.source)) is not None
                ]
                for orderable in containers:
                    for offer in self.store.edges_to(key, orderable.id, (EdgeKind.BRANCH,)):
                        alternatives += self._alternatives(match, facts, orderable, offer, also)
                    for c in orderable.cites:
                        if c.source in sources:
                            cited[(c.source, c.section)] = (sources[c.source], c.section)
        tree = combine(
            "any", f"{order.code.display or order.code.code} is on a pathway", (a.evaluation for a in alternatives)
        )
        return Criteria(order, tuple(alternatives), tree if alternatives else None, tuple(cited.values()))

    def _alternatives(
        self,
        match: PathwayMatch,
        facts: PatientFacts,
        orderable: Node,
        offer: Edge,
        also: Callable[[PathwayMatch, Sequencing], Sequence[Condition]] | None = None,
    ) -> list[Alternative]:
        key = match.info.key
        step = self.store.node(key, offer.source)
        if step is None:
            return []
        offers = self.store.edges_from(key, step.id, (EdgeKind.BRANCH,))
        out = []
        for route in self.store.routes_to(key, step.id):
            parts = [match.applies]
            for edge in route:
                if edge.kind is EdgeKind.BRANCH and not _unconditional(edge):
                    siblings = self.store.edges_from(key, edge.source, (EdgeKind.BRANCH,))
                    parts.append(facts.evaluate(branch_condition(edge, siblings, prioritized=True)))
            if not _unconditional(offer):
                parts.append(facts.evaluate(branch_condition(offer, offers)))
            parts += self.prerequisites(key, step, facts) + self.prerequisites(key, orderable, facts)
            if also is not None:
                conditions = [e.when for e in (*route, offer) if e.when is not None]
                parts += [facts.evaluate(c) for c in also(match, Sequencing.of(conditions))]
            path = " > ".join(self._title(key, e.target) for e in route) or step.title
            label = f"{match.info.title}: {orderable.title} at {path}"
            out.append(Alternative(match.info, match.cancer, orderable, step, route, combine("all", label, parts)))
        return out

    def drugs_of(self, key: str, node: Node) -> frozenset[str]:
        """The ingredients an orderable gives: a drug's own, or every drug a regimen includes."""
        cache_key = (key, node.id)
        found = self._drugs.get(cache_key)
        if found is None:
            if node.kind is NodeKind.REGIMEN:
                parts = [
                    self.store.node(key, e.target) for e in self.store.edges_from(key, node.id, (EdgeKind.INCLUDES,))
                ]
                found = frozenset(d for part in parts if part is not None for d in self.drugs_of(key, part))
            else:
                found = frozenset(drug_ingredients(node.codes)) if node.activity == "drug" else frozenset()
            self._drugs[cache_key] = found
        return found

    def _title(self, key: str, node_id: str) -> str:
        node = self.store.node(key, node_id)
        return node.title if node is not None else node_id


def _disease_cancers(record: PatientRecord, as_of: date | None = None) -> list[CancerCondition]:
    """The cancers a pathway is about: primaries, and a secondary only when its primary is not
    on record (a metastasis of a recorded primary is that primary's disease, not a second one);
    none diagnosed after ``as_of``."""
    current = [c for c in record.cancers if as_of is None or c.onset is None or c.onset.day <= as_of]
    primaries = [c for c in current if c.role == "primary"]
    sources = {s for c in primaries for s in (c.source, *c.merged_sources)}
    types = {c.cancer_type for c in primaries}
    return primaries + [
        c for c in current if c.role != "primary" and c.related_primary not in sources and c.cancer_type not in types
    ]


def branch_condition(edge: Edge, siblings: list[Edge], prioritized: bool = False) -> Condition:
    """The structured condition of a branch; ``otherwise`` reads as 'none of the others'.

    ``prioritized`` (a decision's branches, first satisfied wins): a branch also needs every
    earlier sibling not to apply, exactly as the walk decides."""
    if edge.when is not None:
        earlier = tuple(s.when for s in siblings if s.seq < edge.seq and s.when is not None)
        if prioritized and earlier:
            return AllOf((edge.when, Not(AnyOf(earlier), label=_none_of(earlier))), label=describe(edge.when))
        return edge.when
    others = tuple(s.when for s in siblings if s.when is not None and s != edge)
    return Not(AnyOf(others), label="none of the other branches apply")


def _none_of(conditions: tuple[Condition, ...]) -> str:
    return "not " + " nor ".join(describe(c) for c in conditions) + " (an earlier branch)"


def _unconditional(edge: Edge) -> bool:
    return edge.when is None and not edge.otherwise


def _always(edge: Edge) -> Evaluation:
    return Evaluation(SATISFIED, edge.label or "always offered", fact="always")


def _unknown_leaves(evaluation: Evaluation) -> list[Evaluation]:
    if evaluation.status != UNKNOWN:
        return []
    if evaluation.op == "leaf":
        return [evaluation]
    return [leaf for child in evaluation.children for leaf in _unknown_leaves(child)]


def order_code_keys(order: Order) -> set[str]:
    """Every coding of the order, plus each ingredient by RxNorm CUI and by name (product -> ingredient)."""
    keys = {f"{c.system}|{c.code}" for c in (order.code, *order.codes) if c.code}
    terms = terminology()
    if order.reference.startswith("ServiceRequest/"):
        codes = [c for c in (order.code, *order.codes) if c.code]
        keys |= {f"{MARKER}|{name}" for name in terms.markers_tested(codes, order.code.display)}
    for name in order.ingredients:
        keys.add(f"{INGREDIENT}|{name}")
        drug = terms.drug_by_name(name)
        if drug is not None:
            keys |= {f"{RXNORM}|{cui}" for cui in drug.rxcuis}
    return keys


# -- explanations ----------------------------------------------------------------------------------
class _Citations:
    """Numbers sources in the order an explanation first cites them."""

    def __init__(self, store: PathwayStore, key: str) -> None:
        self.sources = store.sources(key)
        self.numbers: dict[tuple[str, str], int] = {}

    def mark(self, node: Node) -> str:
        marks = []
        for c in node.cites:
            marks.append(str(self.numbers.setdefault((c.source, c.section), len(self.numbers) + 1)))
        return f" [{', '.join(marks)}]" if marks else ""

    def lines(self) -> list[str]:
        out = ["Sources:"]
        for (source_id, section), n in self.numbers.items():
            s = self.sources.get(source_id)
            title = f"{s.publisher}, {s.title}, {s.url}" if s else source_id
            out.append(f"  [{n}] {title} (section: {section})")
        return out


def _evidence_text(evaluation: Evaluation | None, limit: int = 3) -> str:
    if evaluation is None:
        return ""
    found = [e for leaf in deciding_leaves(evaluation) for e in leaf.evidence]
    shown = [
        f"{e.fact}{': ' + e.value if e.value else ''} ({e.source}{', ' + e.date if e.date else ''})"
        for e in found[-limit:]
    ]
    return "; ".join(shown)


def explain_location(store: PathwayStore, location: Location, next_steps: Iterable[NextStep] = ()) -> str:
    info = location.info
    cites = _Citations(store, info.key)
    cancer = location.match.cancer
    lines = [
        f"{info.title} pathway {info.key} ({info.status}: {info.disclaimer})",
        f"Cancer: {cancer.code.display or cancer.code.code} ({cancer.source})",
    ]
    for i, w in enumerate(location.walk, 1):
        mark = cites.mark(w.node)
        inferred = " (inferred from later evidence)" if w.inferred else ""
        if w.node.kind is NodeKind.DECISION:
            taken = next((e.label or e.target for e, ev in w.branches if ev is w.evaluation), None)
            what = f"-> {taken}: {_evidence_text(w.evaluation)}" if w.status == "decided" else "undetermined"
            lines.append(f"  {i}. {w.node.title}? {what}{inferred}{mark}")
        else:
            state = "done" if w.done else "NOT DONE"
            lines.append(f"  {i}. {w.node.title}: {state}{inferred}: {_evidence_text(w.evaluation)}{mark}")
    lines.append("Position: " + "; ".join(w.node.title for w in location.position))
    if location.skipped:
        lines.append("No evidence on record for: " + "; ".join(w.node.title for w in location.skipped))
    for step in next_steps:
        due = f"due {step.due.isoformat()}{' (OVERDUE)' if step.overdue else ''}" if step.due else "no date"
        lines.append(f"Next: {step.node.title}, {due}: {step.reason}")
    return "\n".join([*lines, *cites.lines()])


def explain_criteria(store: PathwayStore, criteria: Criteria) -> str:
    order = criteria.order
    head = f"Order {order.reference}: {order.code.display or order.code.code}"
    if criteria.tree is None:
        return f"{head}\n  not on any active pathway for this patient's cancers"
    lines = [head, f"  overall: {criteria.tree.status}"]
    keys = {a.pathway.key for a in criteria.alternatives}
    cites = {k: _Citations(store, k) for k in keys}

    def render(ev: Evaluation, depth: int) -> None:
        pad = "  " * depth
        if ev.op == "leaf":
            evidence = "; ".join(f"{e.fact}{': ' + e.value if e.value else ''} ({e.source})" for e in ev.evidence[-3:])
            lines.append(f"{pad}[{ev.status}] {ev.label}{' <- ' + evidence if evidence else ''}")
            return
        word = {"all": "ALL of", "any": "ANY of", "not": "NOT"}[ev.op]
        lines.append(f"{pad}[{ev.status}] {word}: {ev.label}")
        for child in ev.children:
            render(child, depth + 1)

    for alt in criteria.alternatives:
        render(alt.evaluation, 1)
        lines.append(f"    cites:{cites[alt.pathway.key].mark(alt.orderable)}{cites[alt.pathway.key].mark(alt.step)}")
    for c in cites.values():
        lines += c.lines()
    return "\n".join(lines)
