"""Evaluate structured conditions over one cancer of a ``PatientRecord``, in three values.

``satisfied`` / ``unsatisfied`` / ``unknown``: a marker never tested is *unknown*, not negative, so
a decision never rests on missing data. Treatments and procedures are read closed-world (nothing
recorded = not done, said so in the evidence). Every leaf returns the facts it used (FHIR
references, values, dates), which is what navigation and necessity cite.

This is the one evaluator: both pathway stores hand back the same ``Condition`` values and every
query evaluates them here, so the stores cannot disagree on a decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from functools import cached_property, lru_cache
from typing import Any, Literal, Protocol, TypeVar

from graph.conditions import AllOf, AnyOf, Condition, Leaf, Not, describe
from shared.fhir.record import (
    SNOMED,
    BiomarkerResult,
    CancerCondition,
    DiseaseStatus,
    FhirTime,
    MedicationEvent,
    PatientRecord,
    ProcedureEvent,
    StageAssessment,
)
from shared.terminology import terminology
from shared.therapy_lines import EXCLUDED_STATUSES, CancerFinder, TherapyLine, lines_of_therapy

Status = Literal["satisfied", "unsatisfied", "unknown"]
E = TypeVar("E", ProcedureEvent, MedicationEvent)
SATISFIED: Status = "satisfied"
UNSATISFIED: Status = "unsatisfied"
UNKNOWN: Status = "unknown"

# A diagnostic procedure (biopsy, staging scan) often precedes the diagnosis date it leads to.
DIAGNOSTIC_LOOKBACK_DAYS = 90
MAX_EVIDENCE = 20  # per leaf: enough to cite, not a dump of every session
NOT_DONE = {"not-done", "entered-in-error", "cancelled", "stopped"}
# mCODE CancerDiseaseStatus values (SNOMED CT) -> the statuses conditions speak of.
DISEASE_STATUS_CODES = {
    "268910001": "response",  # patient's condition improved
    "359746009": "stable",  # patient's condition stable
    "271299001": "progression",  # patient's condition worsened
    "550991000124107": "remission",  # malignant neoplasm in full remission
    "551001000124108": "response",  # malignant neoplasm in partial remission
}


@dataclass(frozen=True, slots=True)
class Evidence:
    source: str  # the FHIR resource the fact comes from, Type/id
    fact: str  # what it shows, in words
    value: str | None = None
    date: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"source": self.source, "fact": self.fact, "value": self.value, "date": self.date}


@dataclass(frozen=True, slots=True)
class Evaluation:
    status: Status
    label: str
    op: Literal["all", "any", "not", "leaf"] = "leaf"
    evidence: tuple[Evidence, ...] = ()
    children: tuple[Evaluation, ...] = ()
    fact: str | None = None
    text: tuple[str, ...] = ()  # a leaf's free-text terms: where a judge may look when unknown
    latest: date | None = None  # the latest date among the evidence (anchors due dates)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"op": self.op, "label": self.label, "status": self.status}
        if self.op == "leaf":
            out["fact"] = self.fact
            out["evidence"] = [e.to_json() for e in self.evidence]
            if self.text:
                out["textTerms"] = list(self.text)
        else:
            out["children"] = [c.to_json() for c in self.children]
        return out


def combine(op: Literal["all", "any"], label: str, children: Iterable[Evaluation]) -> Evaluation:
    """Kleene three-valued AND/OR."""
    kids = tuple(children)
    statuses = {c.status for c in kids}
    decisive, other = (UNSATISFIED, SATISFIED) if op == "all" else (SATISFIED, UNSATISFIED)
    status = decisive if decisive in statuses else UNKNOWN if UNKNOWN in statuses else other
    dates = [c.latest for c in kids if c.latest is not None and c.status == status]
    return Evaluation(status, label, op, children=kids, latest=max(dates, default=None))


class Tree(Protocol):
    """A criteria tree as the engine builds it (``Evaluation``) or as it answers (``CriterionOut``)."""

    @property
    def op(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def children(self) -> Sequence[Any]: ...


T = TypeVar("T", bound=Tree)


def deciding(node: T, status: str | None = None) -> list[tuple[str, T]]:
    """(label, leaf) for the leaves that give a tree its ``status`` (every leaf when None). Under a
    NOT the deciding leaf has the opposite status, and its label reads "not ..."."""
    if node.op == "leaf":
        return [(node.label, node)] if status is None or node.status == status else []
    if status is None:
        return [found for child in node.children for found in deciding(child, None)]
    if node.status != status:
        return []
    if node.op == "not":
        inner = {SATISFIED: UNSATISFIED, UNSATISFIED: SATISFIED}.get(status, status)  # type: ignore[call-overload]
        return [(f"not {name}", leaf) for child in node.children[:1] for name, leaf in deciding(child, inner)]
    return [found for child in node.children for found in deciding(child, status)]


def deciding_leaves(ev: Evaluation, status: Status | None = None) -> list[Evaluation]:
    """The deciding leaves of an engine tree, each labelled as ``deciding`` names it."""
    return [leaf if name == leaf.label else replace(leaf, label=name) for name, leaf in deciding(ev, status)]


class Attribution:
    """Which cancer each procedure and antineoplastic exposure is about, worked out once per
    record and shared by the facts of every cancer (and every as-of date) of that record.

    Treatments: the order's stated reason, else the latest cancer diagnosed on or before (as for
    lines of therapy). Procedures: the stated reason, else the latest cancer diagnosed up to
    ``DIAGNOSTIC_LOOKBACK_DAYS`` after the procedure (a biopsy precedes the diagnosis it leads
    to). Primaries own both (a metastasis found the same day is part of the same disease); a
    record with only a secondary cancer gives them to it.
    """

    def __init__(self, record: PatientRecord) -> None:
        self.record = record
        by_source = record.cancers_by_source()
        owners = [c for c in record.cancers if c.role == "primary"] or record.cancers
        onsets = sorted((c.onset.instant.toordinal(), c.source) for c in owners if c.onset)
        self.procedures: list[tuple[int, str, ProcedureEvent]] = []  # (day ordinal, owner, event)
        self.procedure_index: dict[tuple[str, object], list[tuple[int, ProcedureEvent]]] = {}
        for p in record.procedures:
            if p.start is None or p.status in NOT_DONE:
                continue
            day = p.start.instant.toordinal()  # hot loop: no date objects
            owner = next((by_source[r].source for r in p.reasons if r in by_source), None) if p.reasons else None
            if owner is None:
                limit = day + DIAGNOSTIC_LOOKBACK_DAYS
                for ordinal, source in onsets:  # the latest diagnosed up to the look-back limit
                    if ordinal > limit:
                        break
                    owner = source
            if owner is not None:
                self.procedures.append((day, owner, p))
                for key in (p.category, p.code.key):  # lookups by category and by code, per cancer
                    self.procedure_index.setdefault((owner, key), []).append((day, p))
        finder = CancerFinder(record)
        self.exposures: list[tuple[int, str, MedicationEvent]] = []
        for m in record.medications:
            if m.start is not None and m.antineoplastic and m.status not in EXCLUDED_STATUSES:
                cancer = finder(m)
                if cancer is not None:
                    self.exposures.append((m.start.instant.toordinal(), cancer.source, m))


class PatientFacts:
    """The facts of one cancer of one patient, as of a date, indexed once for many evaluations."""

    def __init__(
        self,
        record: PatientRecord,
        cancer: CancerCondition,
        *,
        as_of: date | None = None,
        exclude: Iterable[str] = (),
        attribution: Attribution | None = None,
        ordered: Iterable[str] = (),
    ) -> None:
        self.record = record
        self.cancer = cancer
        self.as_of = as_of
        self.ordered = frozenset(ordered)  # the drugs of the order under review, if any
        self.exclude = frozenset(exclude)  # e.g. the order under review: it is not its own history
        self.sources = {cancer.source, *cancer.merged_sources}
        self.attribution = attribution if attribution is not None and attribution.record is record else None
        self._until = as_of.toordinal() if as_of is not None else None

    # -- indexes, built on first use -------------------------------------------------------------
    def _current(self, when: FhirTime | None) -> bool:
        return self.as_of is None or when is None or when.day <= self.as_of

    @cached_property
    def _attribution(self) -> Attribution:
        return self.attribution or Attribution(self.record)

    @cached_property
    def stages(self) -> list[StageAssessment]:
        """AJCC (TNM) staging only: a Rai or FIGO stage never answers a TNM stage question."""
        return [s for s in self.cancer.stages if s.system == "AJCC" and self._current(s.date)]

    @cached_property
    def biomarkers(self) -> dict[str, list[BiomarkerResult]]:
        out: dict[str, list[BiomarkerResult]] = {}
        for b in self.cancer.biomarkers:
            if self._current(b.date) and b.source not in self.exclude:
                out.setdefault(b.name.upper(), []).append(b)
        # A marker tested only as its equivalent (MMR by IHC for MSI) answers for it.
        for name, others in terminology().equivalent_markers.items():
            if name.upper() not in out:
                found = next((out[o.upper()] for o in others if o.upper() in out), None)
                if found is not None:
                    out[name.upper()] = found
        return out

    @cached_property
    def exposures(self) -> list[MedicationEvent]:
        return self._select(self._attribution.exposures)

    @cached_property
    def line_history(self) -> list[TherapyLine]:
        """This cancer's lines of therapy up to the as-of date, without the excluded exposures."""
        record = self.record
        if self.as_of is not None or self.exclude:
            kept = {m.source for m in self.exposures}
            record = PatientRecord(
                record.patient,
                cancers=record.cancers,
                medications=[m for m in record.medications if not m.antineoplastic or m.source in kept],
            )
        return [line for line in lines_of_therapy(record) if line.cancer_source in self.sources]

    @cached_property
    def lines(self) -> int:
        return len(self.line_history)

    @cached_property
    def continued_line(self) -> TherapyLine | None:
        """For an order: the latest line when the order is one of its drugs (the next cycle of the
        current course is not prior therapy for itself)."""
        if not self.ordered:  # no order under review (navigation): nothing is being continued
            return None
        lines = self.line_history
        return lines[-1] if lines and self.ordered & set(lines[-1].drugs) else None

    @cached_property
    def prior_lines(self) -> list[TherapyLine]:
        """The lines before the order: all of them, less the line it continues."""
        continued = self.continued_line
        return [line for line in self.line_history if line is not continued]

    @cached_property
    def current_line_start(self) -> FhirTime | None:
        """For an order: when the line it would follow began (the line before the one it
        continues, else the latest line)."""
        if not self.ordered or not self.prior_lines:
            return None
        return self.prior_lines[-1].start

    @cached_property
    def procedures(self) -> list[ProcedureEvent]:
        """Procedures about this cancer (see ``Attribution``), up to the as-of date."""
        return self._select(self._attribution.procedures)

    def _select(self, attributed: list[tuple[int, str, E]]) -> list[E]:
        """This cancer's events up to the as-of date, without the excluded ones (hot: no calls)."""
        sources, exclude, until = self.sources, self.exclude, self._until
        if until is None and not exclude:
            return [event for _, owner, event in attributed if owner in sources]
        return [
            event
            for day, owner, event in attributed
            if owner in sources and (until is None or day <= until) and event.source not in exclude
        ]

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, cond: Condition) -> Evaluation:
        if isinstance(cond, AllOf | AnyOf):
            op: Literal["all", "any"] = "all" if isinstance(cond, AllOf) else "any"
            return combine(op, describe(cond), (self.evaluate(c) for c in cond.items))
        if isinstance(cond, Not):
            inner = self.evaluate(cond.item)
            flipped = {SATISFIED: UNSATISFIED, UNSATISFIED: SATISFIED}.get(inner.status, UNKNOWN)
            return Evaluation(flipped, describe(cond), "not", children=(inner,), latest=inner.latest)
        status, evidence = getattr(self, f"_{cond.fact}")(cond)
        latest = max((d for e in evidence if e.date and (d := _day(e.date)) is not None), default=None)
        return Evaluation(
            status, describe(cond), "leaf", tuple(evidence), fact=cond.fact, text=cond.text, latest=latest
        )

    def _cancer(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        c = self.cancer
        ev = [Evidence(c.source, f"{c.role} cancer: {c.code.display or c.code.code}", c.cancer_type, _text(c.onset))]
        if "role" in leaf.params and c.role != leaf.params["role"]:
            return UNSATISFIED, ev
        codes = leaf.get("codes", ())
        if codes and any(code.key == c.code.key for code in codes):
            return SATISFIED, ev
        types = leaf.get("types", ())
        if c.cancer_type in types:
            return SATISFIED, ev
        # "Lung cancer" without histology may be either lung pathway: not decided, not excluded.
        if c.cancer_type == "lung" and {"nsclc", "sclc"} & set(types):
            return UNKNOWN, ev
        return UNSATISFIED, ev

    def _latest_stage(self) -> StageAssessment | None:
        staged = [s for s in self.stages if s.stage]
        return staged[-1] if staged else None

    def _stage(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        stage = self._latest_stage()
        if stage is None or stage.stage is None:
            return UNKNOWN, [Evidence(self.cancer.source, "no stage on record")]
        values = {stage.stage}
        if self.cancer.cancer_type == "sclc" and stage.stage not in {"limited", "extensive"}:
            # Approximation: AJCC stage IV ~ extensive stage; I-III ~ limited (see the SCLC pathway).
            values.add("extensive" if stage.stage.startswith("IV") else "limited")
        ev = [Evidence(stage.source, f"{stage.kind} stage", stage.stage, _text(stage.date))]
        statuses = {_match(v, leaf.params["in"]) for v in values}
        return (SATISFIED if SATISFIED in statuses else UNKNOWN if UNKNOWN in statuses else UNSATISFIED), ev

    def _tnm(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        statuses: set[Status] = set()
        ev: list[Evidence] = []
        for part in ("t", "n", "m"):
            if part not in leaf.params:
                continue
            found = next((s for s in reversed(self.stages) if getattr(s, part)), None)
            if found is None:
                statuses.add(UNKNOWN)
                ev.append(Evidence(self.cancer.source, f"no {part.upper()} category on record"))
                continue
            value = _tnm_value(getattr(found, part))
            ev.append(Evidence(found.source, f"{part.upper()} category", value, _text(found.date)))
            statuses.add(_match(value, leaf.params[part]))
        return (UNSATISFIED if UNSATISFIED in statuses else UNKNOWN if UNKNOWN in statuses else SATISFIED), ev

    def _metastatic(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        ev: list[Evidence] = []
        c = self.cancer
        if c.role == "secondary":
            ev.append(Evidence(c.source, "secondary (metastatic) cancer", c.code.display, _text(c.onset)))
        primaries = [x for x in self.record.cancers if x.role == "primary"]
        for x in self.record.cancers:
            linked = x.related_primary in self.sources or (x.related_primary is None and len(primaries) == 1)
            if x.role == "secondary" and x is not c and linked and self._current(x.onset):
                ev.append(Evidence(x.source, "metastasis", x.code.display, _text(x.onset)))
        stage = self._latest_stage()
        if stage is not None and (stage.stage or "").startswith(("IV", "extensive")):
            ev.append(Evidence(stage.source, "stage", stage.stage, _text(stage.date)))
        m = next((s for s in reversed(self.stages) if s.m), None)
        if m is not None and _tnm_value(m.m or "").startswith("M1"):
            ev.append(Evidence(m.source, "M category", _tnm_value(m.m or ""), _text(m.date)))
        if ev:
            status: Status = SATISFIED
        elif stage is not None or m is not None:
            status = UNSATISFIED
            ev.append(Evidence((stage or m).source, "non-metastatic stage", (stage or m).stage))  # type: ignore[union-attr]
        else:
            status = UNKNOWN
            ev.append(Evidence(c.source, "no stage or metastasis on record"))
        if not leaf.params["is"]:
            status = {SATISFIED: UNSATISFIED, UNSATISFIED: SATISFIED}.get(status, UNKNOWN)
        return status, ev

    def _biomarker(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        name = leaf.params["name"]
        results = self.biomarkers.get(name.upper(), [])
        if not results:
            return _if_missing(leaf), [Evidence(self.cancer.source, f"no {name} result on record")]
        latest = results[-1]
        ev = [Evidence(latest.source, f"{name} {latest.status}", latest.value, _text(latest.date))]
        checks: list[bool | None] = []
        if "status" in leaf.params:
            checks.append(latest.status in leaf.params["status"])
        if "variant" in leaf.params:  # the change reported; a result that names no change is undecided
            value = (latest.value or "").upper().replace(" ", "")
            named = any(v.upper().replace(" ", "") in value for v in leaf.params["variant"])
            checks.append(True if named else False if _ALTERATION.search(latest.value or "") else None)
        for bound, ok in (("min", lambda q, b: q >= b), ("max", lambda q, b: q <= b)):
            if bound in leaf.params:
                checks.append(None if latest.quantity is None else ok(latest.quantity, leaf.params[bound]))
        if any(c is False for c in checks):
            return UNSATISFIED, ev
        return (UNKNOWN if None in checks else SATISFIED), ev

    def _performance(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        current = [p for p in self.record.performance if self._current(p.date)]
        if not current:
            return _if_missing(leaf), [
                Evidence(self.record.patient.source or self.cancer.source, "no performance status")
            ]
        latest = max(current, key=lambda p: (p.date is not None, p.date))
        ecog = latest.value if latest.scale == "ECOG" else _karnofsky_to_ecog(latest.value)
        ev = [Evidence(latest.source, f"{latest.scale} performance status", str(latest.value), _text(latest.date))]
        ok = leaf.get("ecog_max", 5) >= ecog >= leaf.get("ecog_min", 0)
        return (SATISFIED if ok else UNSATISFIED), ev

    def _age(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        born = self.record.patient.birth_date
        if born is None:
            return UNKNOWN, [Evidence(self.record.patient.source, "no birth date")]
        today = self.as_of or date.today()
        b = born.day
        years = today.year - b.year - ((today.month, today.day) < (b.month, b.day))
        ev = [Evidence(self.record.patient.source, "age", str(years), born.text)]
        ok = leaf.get("min", 0) <= years <= leaf.get("max", 200)
        return (SATISFIED if ok else UNSATISFIED), ev

    def _sex(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        gender = self.record.patient.gender
        if gender not in {"female", "male"}:
            return UNKNOWN, [Evidence(self.record.patient.source, "administrative gender not female/male", gender)]
        ev = [Evidence(self.record.patient.source, "administrative gender", gender)]
        return (SATISFIED if gender == leaf.params["is"] else UNSATISFIED), ev

    def _therapy(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        drugs, classes = set(leaf.get("drugs", ())), set(leaf.get("classes", ()))
        continued = set(self.continued_line.sources) if self.continued_line is not None else set()
        matching = [
            m
            for m in self.exposures
            if m.source not in continued
            and ((not drugs and not classes) or drugs & set(m.ingredients) or m.drug_class in classes)
        ]
        shown = matching[-MAX_EVIDENCE:]
        ev = [Evidence(m.source, f"{m.drug_class} given", " + ".join(m.ingredients), _text(m.start)) for m in shown]
        ok = bool(matching) if (drugs or classes) else True
        if not matching:
            ev = [Evidence(self.cancer.source, "no matching systemic therapy recorded")]
        if "min_lines" in leaf.params or "max_lines" in leaf.params:
            lines = len(self.prior_lines)
            ev.append(Evidence(self.cancer.source, "lines of systemic therapy", str(lines)))
            ok = ok and leaf.get("min_lines", 0) <= lines <= leaf.get("max_lines", 99)
        return (SATISFIED if ok else UNSATISFIED), ev[-MAX_EVIDENCE:]

    def _procedures_by(self, key: object) -> list[ProcedureEvent]:
        """This cancer's procedures with a category or (system, code), up to the as-of date."""
        index, exclude, until = self._attribution.procedure_index, self.exclude, self._until
        found = [
            (day, p)
            for owner in self.sources
            for day, p in index.get((owner, key), ())
            if (until is None or day <= until) and p.source not in exclude
        ]
        if len(self.sources) > 1:
            found.sort(key=lambda pair: pair[0])
        return [p for _, p in found]

    def _procedure(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        keys = [*leaf.get("categories", ()), *(c.key for c in leaf.get("codes", ()))]
        lists = [hits for key in keys if (hits := self._procedures_by(key))]
        if len(lists) > 1:  # merge, back in record order, each procedure once
            order = {id(p): i for i, p in enumerate(self.procedures)}
            merged = {id(p): p for hits in lists for p in hits}
            return _done(sorted(merged.values(), key=lambda p: order[id(p)]), self.cancer.source, "procedure")
        return _done(lists[0] if lists else [], self.cancer.source, "procedure")

    def _imaging(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        codes = {c.key for c in leaf.get("codes", ())}
        modalities = set(leaf.get("modalities", ()))
        found = [p for p in self._procedures_by("imaging") if not codes or p.code.key in codes]
        ev = [Evidence(p.source, p.code.display or p.code.code, None, _text(p.start)) for p in found[-MAX_EVIDENCE:]]
        start = self.cancer.onset.day.toordinal() - DIAGNOSTIC_LOOKBACK_DAYS if self.cancer.onset else None
        for study in self.record.imaging:
            if (
                study.date is None
                or not self._current(study.date)
                or start is None
                or study.date.day.toordinal() < start
            ):
                continue
            if (not modalities or modalities & set(study.modalities)) and (
                not codes or (study.code and study.code.key in codes)
            ):
                ev.append(
                    Evidence(
                        study.source, study.description or "imaging study", ", ".join(study.modalities), study.date.text
                    )
                )
        if not ev:
            return UNSATISFIED, [Evidence(self.cancer.source, "no matching imaging recorded")]
        return SATISFIED, ev[-MAX_EVIDENCE:]

    def _progressed_on(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        """Satisfied when a progression of this cancer is documented after the first dose of one of
        the drugs (or drug groups) and no later than ``sensitive_after_days`` after the last dose;
        closed-world: no documented progression means the patient did not progress on them."""
        drugs, groups = set(leaf.get("drugs", ())), set(leaf.get("groups", ()))
        terms = terminology()
        given = [
            m
            for m in self.exposures
            if drugs & set(m.ingredients)
            or groups & {drug.group for name in m.ingredients if (drug := terms.drug_by_name(name)) and drug.group}
        ]
        if not given:
            return UNSATISFIED, [Evidence(self.cancer.source, "no exposure to this drug or drug class recorded")]
        window = leaf.get("sensitive_after_days")
        first = min(m.start for m in given if m.start is not None)
        last = max((m.end or m.start) for m in given if m.start is not None)
        for d in reversed(self._coded_statuses()):
            status = DISEASE_STATUS_CODES.get(d.code.code)
            if status not in {"progression", "recurrence"} or d.date is None or d.date < first:
                continue
            if window is not None and (d.date.instant - last.instant).days >= window:
                continue  # a late relapse: still sensitive to the drug (re-challenge is standard)
            exposure = given[-1]
            return SATISFIED, [
                Evidence(
                    exposure.source,
                    f"{exposure.drug_class} given",
                    " + ".join(exposure.ingredients),
                    _text(exposure.start),
                ),
                Evidence(d.source, "disease status", status, _text(d.date)),
            ]
        return UNSATISFIED, [
            Evidence(
                given[-1].source, "no progression documented since this drug or class", None, _text(given[-1].start)
            )
        ]

    def _coded_statuses(self) -> list[DiseaseStatus]:
        mine = [
            d
            for d in self.record.disease_status
            if (d.cancer_source in self.sources or d.cancer_source is None) and self._current(d.date)
        ]
        return sorted(mine, key=lambda d: (d.date is not None, d.date))

    def _disease_status(self, leaf: Leaf) -> tuple[Status, list[Evidence]]:
        known = [(d, DISEASE_STATUS_CODES.get(d.code.code)) for d in self._coded_statuses() if d.code.system == SNOMED]
        known = [(d, s) for d, s in known if s]
        since = self.current_line_start
        if since is not None and {"progression", "recurrence"} & set(leaf.params["in"]):
            # A new line answers the progression before it: an order for a further line needs one since.
            known = [(d, s) for d, s in known if d.date is None or d.date >= since]
            if not known:
                return UNKNOWN, [
                    Evidence(self.cancer.source, "no disease status since the current line began", None, since.text)
                ]
        if not known:
            return UNKNOWN, [Evidence(self.cancer.source, "no coded disease status")]
        d, status = known[-1]
        ev = [Evidence(d.source, "disease status", status, _text(d.date))]
        return (SATISFIED if status in leaf.params["in"] else UNSATISFIED), ev


def _if_missing(leaf: Leaf) -> Status:
    """A fact never recorded: unknown, unless the condition reads it closed-world."""
    return {"satisfied": SATISFIED, "unsatisfied": UNSATISFIED}.get(leaf.get("if_missing", ""), UNKNOWN)


def _done(found: list[ProcedureEvent], fallback: str, what: str) -> tuple[Status, list[Evidence]]:
    if not found:
        return UNSATISFIED, [Evidence(fallback, f"no matching {what} recorded")]
    shown = found[-MAX_EVIDENCE:]  # the latest ones; a 4-year regimen has hundreds of sessions
    return SATISFIED, [Evidence(p.source, p.code.display or p.code.code, p.category, _text(p.start)) for p in shown]


# A reported change: p.L858R, G12C, c.2573T>G, exon 19 deletion, an insertion, a fusion.
_ALTERATION = re.compile(r"\b[A-Z]\d{2,4}(?:[A-Z*]|fs|del|ins)|\b[pc]\.|exon|deletion|insertion|fusion", re.IGNORECASE)


@lru_cache(maxsize=8192)
def _day(text: str) -> date | None:
    """The day of an evidence date (the same few strings recur across leaves: parse each once)."""
    parsed = FhirTime.parse(text)
    return parsed.day if parsed is not None else None


def _text(when: FhirTime | None) -> str | None:
    return when.text if when is not None else None


def _prefix_match(value: str, wanted: str) -> bool:
    """'IIIB' is in stage 'III' and 'T3a' in 'T3'; 'II' is not in 'I' (the next char is a numeral)."""
    if value == wanted:
        return True
    return value.startswith(wanted) and value[len(wanted)].upper() not in "IV"


def _match(value: str, wanted: Iterable[str]) -> Status:
    """A recorded stage/category against wanted ones. Recorded coarser than wanted (stage 'I'
    against 'IB', 'T2' against 'T2a') cannot be decided: unknown, not unsatisfied."""
    wanted = tuple(wanted)
    if any(_prefix_match(value, w) for w in wanted):
        return SATISFIED
    if any(_prefix_match(w, value) for w in wanted):
        return UNKNOWN
    return UNSATISFIED


def _tnm_value(raw: str) -> str:
    """'cT3a' / 'pN1' / 'ypT2' -> 'T3a' / 'N1' / 'T2'."""
    text = raw.strip()
    while text and text[0] in "cpyrau" and len(text) > 1 and text[1] not in "0123456789":
        text = text[1:]
    return text[:1].upper() + text[1:]


def _karnofsky_to_ecog(kps: int) -> int:
    """The usual published correspondence (Oken 1982; Buccheri 1996)."""
    return 0 if kps >= 90 else 1 if kps >= 70 else 2 if kps >= 50 else 3 if kps >= 30 else 4
