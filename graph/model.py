"""The care-pathway graph schema: nodes, edges, sources and whole pathways, as frozen values.

Both stores hand out these same objects, so every query above them behaves identically whichever
store answers. Conditions on nodes and edges are structured predicates (``graph.conditions``).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from graph.conditions import Condition, leaves
from shared.fhir.record import INGREDIENT, MARKER, RXNORM, Code
from shared.terminology import terminology


class NodeKind(StrEnum):
    STEP = "step"
    DECISION = "decision"
    REGIMEN = "regimen"  # an orderable combination: includes -> activities
    ACTIVITY = "activity"  # one orderable drug, procedure, test or imaging study


class StepKind(StrEnum):
    WORKUP = "workup"
    STAGING = "staging"
    BIOMARKER = "biomarker"
    TREATMENT = "treatment"
    SURVEILLANCE = "surveillance"
    REFERRAL = "referral"


class ActivityKind(StrEnum):
    DRUG = "drug"
    PROCEDURE = "procedure"
    RADIATION = "radiation"
    TEST = "test"
    IMAGING = "imaging"


class EdgeKind(StrEnum):
    NEXT = "next"  # ordering between steps/decisions, with timing
    BRANCH = "branch"  # decision -> step, or step -> option (regimen/activity), under a condition
    INCLUDES = "includes"  # regimen -> activity
    REQUIRES = "requires"  # node -> prerequisite step/activity that must have happened first


ORDERABLE = {NodeKind.REGIMEN, NodeKind.ACTIVITY}
WALKABLE = {NodeKind.STEP, NodeKind.DECISION}

_DURATION = re.compile(r"^P(\d+)([DWMY])$")


@dataclass(frozen=True, slots=True)
class Duration:
    """An ISO 8601 duration of one unit (P28D, P4W, P6M, P2Y): calendar months and years."""

    amount: int
    unit: str  # D | W | M | Y

    @staticmethod
    def parse(text: str) -> Duration:
        match = _DURATION.match(text.strip())
        if not match:
            raise ValueError(f"duration {text!r} is not of the form P<n>D|W|M|Y")
        return Duration(int(match.group(1)), match.group(2))

    def after(self, day: date) -> date:
        if self.unit == "D":
            return date.fromordinal(day.toordinal() + self.amount)
        if self.unit == "W":
            return date.fromordinal(day.toordinal() + 7 * self.amount)
        months = day.month - 1 + self.amount * (12 if self.unit == "Y" else 1)
        year, month = day.year + months // 12, months % 12 + 1
        return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))

    def __str__(self) -> str:
        return f"P{self.amount}{self.unit}"


@dataclass(frozen=True, slots=True)
class Timing:
    """When a step falls due relative to the one before it.

    ``within``: due at most this long after the previous step ("within 4 weeks").
    ``every`` + ``for_``: repeated at this interval for this long ("every 6 months for 2 years").
    """

    text: str
    within: Duration | None = None
    every: Duration | None = None
    for_: Duration | None = None

    def to_json(self) -> dict[str, str]:
        out = {"text": self.text}
        for name, value in (("within", self.within), ("every", self.every), ("for", self.for_)):
            if value is not None:
                out[name] = str(value)
        return out


@dataclass(frozen=True, slots=True)
class Citation:
    source: str  # Source.id
    section: str


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    title: str
    publisher: str
    url: str
    accessed: str  # ISO date the content was read


def drug_ingredients(codes: tuple[Code, ...]) -> tuple[str, ...]:
    """The ingredient names a drug item is coded with (its ingredient codes and RxNorm codes)."""
    named = tuple(c.code for c in codes if c.system == INGREDIENT)
    return (*named, *terminology().identify_drug([c for c in codes if c.system == RXNORM]).ingredients)


@dataclass(frozen=True, slots=True)
class Node:
    id: str  # unique within a pathway version, prefixed by the pathway id ("nsclc.staging")
    kind: NodeKind
    title: str
    summary: str = ""  # our own words; never guideline text
    step: StepKind | None = None
    activity: ActivityKind | None = None
    codes: tuple[Code, ...] = ()  # for activities/regimens: RxNorm, SNOMED CT or LOINC
    done_when: Condition | None = None  # evidence in a record that this node has happened
    question: str | None = None  # for decisions
    cites: tuple[Citation, ...] = ()
    seq: int = 0  # file order, so every store lists nodes the same way
    needs_mapping: tuple[str, ...] = ()  # imported conditions we could not structure (CQL...), as text

    @property
    def code_keys(self) -> tuple[str, ...]:
        """Every code of the node, plus, for a drug, its ingredient names: an order for a product
        the RxNorm table does not know still meets the drug by its ingredient."""
        keys = [f"{c.system}|{c.code}" for c in self.codes]
        if self.activity == "drug":
            keys += [f"{INGREDIENT}|{name}" for name in drug_ingredients(self.codes)]
        if self.activity == "test" and self.done_when is not None:
            # the markers its done_when reads: the test is an order for those markers
            keys += [f"{MARKER}|{leaf.params['name']}" for leaf in leaves(self.done_when) if leaf.fact == "biomarker"]
        return tuple(dict.fromkeys(keys))


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind
    when: Condition | None = None  # branch: the structured condition that selects it
    otherwise: bool = False  # branch taken when every sibling branch is unsatisfied
    timing: Timing | None = None  # next (and branch into a step): when the target falls due
    label: str = ""
    seq: int = 0
    needs_mapping: tuple[str, ...] = ()  # imported conditions we could not structure, as text


@dataclass(frozen=True, slots=True)
class PathwayInfo:
    id: str
    version: str
    title: str
    status: str  # "demonstration": needs review by a clinical team before any use
    disclaimer: str
    applies_when: Condition
    start: str
    cites: tuple[Citation, ...] = ()
    needs_mapping: tuple[str, ...] = ()  # imported applicability we could not structure, as text

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", self.version))


@dataclass(frozen=True, slots=True)
class Pathway:
    """One version of one pathway: everything a store needs to hold it."""

    info: PathwayInfo
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    sources: tuple[Source, ...]
    file: str = ""
    _by_id: dict[str, Node] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update({n.id: n for n in self.nodes})

    @property
    def key(self) -> str:
        return self.info.key

    def node(self, node_id: str) -> Node | None:
        return self._by_id.get(node_id)
