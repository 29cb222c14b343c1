"""A pathway as a FHIR R4 ``PlanDefinition`` (CPG-on-FHIR style), and back.

Why: clinical-guideline tooling (the HL7 CPG IG, CQF, WHO SMART guidelines) exchanges pathways as
PlanDefinitions. Export lets others read our graph with ordinary FHIR tools; import lets us take
theirs in without ever failing on what we cannot execute (CQL, FHIRPath...): that is kept verbatim
as text in ``needs_mapping`` and listed in the warnings, so a person can map it later.

Mapping (export; import reads the same places back, so ``from(to(p)).pathway == p`` except ``file``,
which becomes ``PlanDefinition/<id>``)::

    Pathway                      PlanDefinition
    info.id, version, title      identifier (PATHWAY_ID_SYSTEM), id, url, version, title, name
    info.status                  pathway extension ``status``; FHIR status "draft", experimental true
    info.disclaimer              usage (and at the end of description)
    info.applies_when            condition (applicability) of the single top-level action, which
                                 holds one sub-action per step/decision
    info.cites                   documentation of that top-level action
    info.start                   pathway extension ``start``
    sources                      relatedArtifact: type citation, label = source id, display = title,
                                 url, citation text; source extension: publisher, accessed
    step / decision              sub-action: id = node id, title, description = summary,
                                 code = codes, documentation = cites (label = section),
                                 selectionBehavior (decision: exactly-one/at-most-one; step: any)
    regimen / activity           contained ActivityDefinition: id = node id, title, description,
                                 kind (drug: MedicationRequest with productCodeableConcept; others
                                 ServiceRequest with code; regimen: no kind), relatedArtifact = cites
    next edge                    relatedAction on the target: actionId = source, relationship
                                 "after-end", offsetDuration = within
    branch edge                  a sub-action of the source: title = label, condition (applicability,
                                 CONDITION_LANGUAGE: condition_to_json as a JSON string,
                                 description = describe()), then definitionCanonical "#<target>" for
                                 a regimen/activity or relatedAction "before-start" <target> for a
                                 step; every/for also as its timingTiming
    includes / requires edges,   edge extension on the source (action or ActivityDefinition), with
    edges with no FHIR home      ``target``; on the top-level action with ``source`` when the source
                                 node is missing

Extensions (complex; URLs under ``https://oncotwin.example.org/fhir/StructureDefinition/``):

    pathway         PlanDefinition: status, start, needsMapping*
    pathway-node    action / ActivityDefinition: kind, step, activity, seq, question,
                    doneWhen (Expression), needsMapping*, id (only when the node id is not a FHIR id)
    pathway-edge    relatedAction / branch sub-action / source: kind, seq, label, otherwise,
                    when (Expression), within (Duration), timing (Timing: code.text = text,
                    repeat.period+periodUnit = every, repeat.boundsDuration = for), source,
                    target (valueCanonical "#id" for a contained ActivityDefinition, else the
                    node id), needsMapping*
    pathway-source  relatedArtifact of a source: publisher, accessed

The edge extension is the exact record of an edge's timing; ``offsetDuration`` and the target's
``timingTiming.repeat`` repeat it in FHIR's own elements for readers who do not know the extension.

Import of a PlanDefinition written elsewhere: nested actions are flattened. Children of an action
with a selectionBehavior become its branches (the parent a decision when all children are steps);
other children follow each other by next edges (in document order, unless relatedAction says the
order); a leaf action whose definition is an ActivityDefinition becomes an activity offered by its
parent (a top-level one: a step offering it). Conditions that are not ours, definitions we cannot
follow and useContext are kept as "language: expression" text in needs_mapping and warned about.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from graph.conditions import (
    AllOf,
    Condition,
    ConditionError,
    code_to_json,
    condition_to_json,
    describe,
    parse_condition,
)
from graph.model import (
    ORDERABLE,
    WALKABLE,
    ActivityKind,
    Citation,
    Duration,
    Edge,
    EdgeKind,
    Node,
    NodeKind,
    Pathway,
    PathwayInfo,
    Source,
    StepKind,
    Timing,
)
from shared.fhir.record import Code

JSON = dict[str, Any]

BASE = "https://oncotwin.example.org/fhir"
EXT_PATHWAY = f"{BASE}/StructureDefinition/pathway"
EXT_NODE = f"{BASE}/StructureDefinition/pathway-node"
EXT_EDGE = f"{BASE}/StructureDefinition/pathway-edge"
EXT_SOURCE = f"{BASE}/StructureDefinition/pathway-source"
PATHWAY_ID_SYSTEM = f"{BASE}/pathway-id"
CONDITION_LANGUAGE = "application/vnd.oncotwin.condition+json"
IMPORTED_STATUS = "imported"
IMPORTED_DISCLAIMER = (
    "Imported from a FHIR PlanDefinition written elsewhere; not reviewed by a clinical team. "
    "Not clinical guidance: a clinical team must review and approve it before any use in patient care."
)
UCUM = "http://unitsofmeasure.org"
_PLAN_TYPE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/plan-definition-type",
            "code": "clinical-protocol",
            "display": "Clinical Protocol",
        }
    ]
}
_UNIT_CODE = {"D": "d", "W": "wk", "M": "mo", "Y": "a"}
_UNIT_WORD = {"D": "days", "W": "weeks", "M": "months", "Y": "years"}
_UNIT_LETTER = {
    **{v: k for k, v in _UNIT_CODE.items()},
    **{w: k for k, v in _UNIT_WORD.items() for w in (v, v[:-1])},
}
_REQUEST_KIND = {ActivityKind.DRUG: "MedicationRequest"}
_SELECTING = {"any", "at-most-one", "exactly-one", "one-or-more"}
# CPG common process codes -> our step kinds (anything else: workup, with a warning)
_STEP_BY_CODE = {
    "registration": StepKind.WORKUP,
    "history-and-physical": StepKind.WORKUP,
    "triage": StepKind.WORKUP,
    "diagnostic-testing": StepKind.WORKUP,
    "discharge-referral-of-patient": StepKind.REFERRAL,
    "monitor-and-follow-up-of-patient": StepKind.SURVEILLANCE,
    "guideline-based-care": StepKind.TREATMENT,
    "dispense-medications": StepKind.TREATMENT,
    "administer-medications": StepKind.TREATMENT,
}
_UNMAPPED_ACTION_KEYS = (
    "trigger",
    "participant",
    "input",
    "output",
    "dynamicValue",
    "goalId",
    "transform",
    "timingDateTime",
    "timingAge",
    "timingPeriod",
    "timingDuration",
    "timingRange",
    "timingTiming",
    "precheckBehavior",
    "cardinalityBehavior",
    "requiredBehavior",
    "priority",
    "reason",
    "subjectCodeableConcept",
    "subjectReference",
    "subjectCanonical",
)
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class PlanDefinitionError(ValueError):
    """The input is not a FHIR PlanDefinition at all (not a JSON object, wrong resourceType...)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    pathway: Pathway
    warnings: list[str] = field(default_factory=list)


# --- export --------------------------------------------------------------------------------------


def to_plan_definition(pathway: Pathway) -> JSON:
    """The pathway as a PlanDefinition JSON object (see the module docstring for the mapping)."""
    ids = _Ids.of(pathway)
    layout = _layout(pathway, ids)
    info = pathway.info
    sources = {s.id: s for s in pathway.sources}
    root = {
        "id": ids.root,
        "extension": layout.loose,
        "title": info.title,
        "condition": [_condition(info.applies_when)],
        "documentation": [_cite_artifact(c, sources) for c in info.cites],
        "groupingBehavior": "logical-group",
        "action": [_node_action(n, ids, layout, sources) for n in pathway.nodes if n.kind in WALKABLE],
    }
    resource = {
        "resourceType": "PlanDefinition",
        "id": ids.resource,
        "contained": [_activity_definition(n, ids, layout, sources) for n in pathway.nodes if n.kind in ORDERABLE],
        "extension": [_ext(EXT_PATHWAY, _pathway_parts(info))],
        "url": f"{BASE}/PlanDefinition/{ids.resource}",
        "identifier": [{"system": PATHWAY_ID_SYSTEM, "value": info.id}],
        "version": info.version,
        "name": _machine_name(info.id),
        "title": info.title,
        "type": _PLAN_TYPE,
        "status": "draft",
        "experimental": True,
        "publisher": "OncoTwin",
        "description": f"{info.title}: OncoTwin care pathway (status: {info.status}). {info.disclaimer}",
        "usage": info.disclaimer,
        "relatedArtifact": [_source_artifact(s) for s in pathway.sources],
        "action": [root],
    }
    return _prune(resource)


@dataclass
class _Ids:
    """FHIR ids for nodes: ids must match [A-Za-z0-9-.]{1,64}, and one namespace holds them all."""

    node: dict[str, str]
    orderable: set[str]
    taken: set[str]
    root: str = ""
    resource: str = ""

    @staticmethod
    def of(pathway: Pathway) -> _Ids:
        ids = _Ids({}, {n.id for n in pathway.nodes if n.kind in ORDERABLE}, set())
        for node in pathway.nodes:
            ids.node[node.id] = ids.new(node.id)
        ids.root = ids.new(pathway.info.id)
        ids.resource = _safe_id(pathway.info.id)
        return ids

    def new(self, base: str) -> str:
        candidate, n = _safe_id(base), 2
        while candidate in self.taken:
            suffix = f"-{n}"
            candidate, n = _safe_id(base)[: 64 - len(suffix)] + suffix, n + 1
        self.taken.add(candidate)
        return candidate

    def target(self, node_id: str) -> JSON:
        """An edge's target: a canonical to a contained ActivityDefinition (so it counts as referenced)."""
        if node_id in self.orderable:
            return {"url": "target", "valueCanonical": f"#{self.node[node_id]}"}
        return {"url": "target", "valueString": node_id}


@dataclass
class _Layout:
    """Where each edge goes: FHIR's own elements where they fit, else the edge extension."""

    related: dict[str, list[JSON]] = field(default_factory=lambda: defaultdict(list))
    branches: dict[str, list[JSON]] = field(default_factory=lambda: defaultdict(list))
    held: dict[str, list[JSON]] = field(default_factory=lambda: defaultdict(list))
    loose: list[JSON] = field(default_factory=list)
    otherwise: set[str] = field(default_factory=set)  # sources with an ``otherwise`` branch


def _layout(pathway: Pathway, ids: _Ids) -> _Layout:
    layout = _Layout()
    for edge in pathway.edges:
        src, dst = pathway.node(edge.source), pathway.node(edge.target)
        walk_src = src is not None and src.kind in WALKABLE
        if edge.kind is EdgeKind.NEXT and walk_src and dst is not None and dst.kind in WALKABLE:
            layout.related[edge.target].append(_related_action(edge, ids))
        elif edge.kind is EdgeKind.BRANCH and walk_src:
            number = len(layout.branches[edge.source]) + 1
            layout.branches[edge.source].append(_branch_action(edge, dst, ids, number))
            if edge.otherwise:
                layout.otherwise.add(edge.source)
        elif src is not None:
            layout.held[edge.source].append(_edge_ext(edge, ids, target=True, when=True))
        else:
            layout.loose.append(_edge_ext(edge, ids, source=True, target=True, when=True))
    return layout


def _related_action(edge: Edge, ids: _Ids) -> JSON:
    out: JSON = {"actionId": ids.node[edge.source], "relationship": "after-end", "extension": [_edge_ext(edge, ids)]}
    if edge.timing is not None and edge.timing.within is not None:
        out["offsetDuration"] = _duration(edge.timing.within)
    return out


def _branch_action(edge: Edge, target: Node | None, ids: _Ids, number: int) -> JSON:
    """One branch as a sub-action of its source: the condition that selects it, then where it leads."""
    action: JSON = {
        "id": ids.new(f"{ids.node[edge.source]}.branch-{number}"),
        "extension": [_edge_ext(edge, ids, label=False, target=target is None)],
        "title": edge.label,
        "condition": [_condition(edge.when)] if edge.when is not None else [],
    }
    if target is not None and target.kind in ORDERABLE:
        action["definitionCanonical"] = f"#{ids.node[target.id]}"
    elif target is not None:
        link: JSON = {"actionId": ids.node[target.id], "relationship": "before-start"}
        if edge.timing is not None and edge.timing.within is not None:
            link["offsetDuration"] = _duration(edge.timing.within)
        action["relatedAction"] = [link]
    if edge.timing is not None and edge.timing.every is not None:
        action["timingTiming"] = _timing(edge.timing)
    return action


def _edge_ext(
    edge: Edge, ids: _Ids, *, source: bool = False, target: bool = False, when: bool = False, label: bool = True
) -> JSON:
    timing = edge.timing
    parts = [
        _part("kind", "valueCode", edge.kind.value),
        _part("seq", "valueInteger", edge.seq),
        _part("source", "valueString", edge.source) if source else None,
        ids.target(edge.target) if target else None,
        _part("label", "valueString", edge.label) if label else None,
        _part("otherwise", "valueBoolean", True) if edge.otherwise else None,
        _part("when", "valueExpression", _expression(edge.when)) if when and edge.when is not None else None,
        _part("within", "valueDuration", _duration(timing.within)) if timing and timing.within else None,
        _part("timing", "valueTiming", _timing(timing)) if timing else None,
        *(_part("needsMapping", "valueString", t) for t in edge.needs_mapping),
    ]
    return _ext(EXT_EDGE, parts)


def _node_action(node: Node, ids: _Ids, layout: _Layout, sources: Mapping[str, Source]) -> JSON:
    branches = layout.branches[node.id]
    selection = None
    if branches and node.kind is NodeKind.DECISION:
        selection = "exactly-one" if node.id in layout.otherwise else "at-most-one"
    elif branches:
        selection = "any"
    return {
        "id": ids.node[node.id],
        "extension": [_ext(EXT_NODE, _node_parts(node, ids)), *layout.held[node.id]],
        "title": node.title,
        "description": node.summary,
        "code": [{"coding": [code_to_json(c)]} for c in node.codes],
        "documentation": [_cite_artifact(c, sources) for c in node.cites],
        "selectionBehavior": selection,
        "relatedAction": layout.related[node.id],
        "timingTiming": _shared_repeat(layout.related[node.id]),
        "action": branches,
    }


def _shared_repeat(related: list[JSON]) -> JSON | None:
    """The target's timingTiming, when all its timed incoming next edges repeat alike."""
    timings = [_value(_parts(_find_ext(r, EXT_EDGE)), "timing") for r in related]
    repeats = [t for t in timings if isinstance(t, Mapping) and t.get("repeat")]
    if repeats and all(t["repeat"] == repeats[0]["repeat"] for t in repeats):
        return dict(repeats[0])
    return None


def _activity_definition(node: Node, ids: _Ids, layout: _Layout, sources: Mapping[str, Source]) -> JSON:
    drug = node.activity is ActivityKind.DRUG
    concept = {"coding": [code_to_json(c) for c in node.codes]} if node.codes else None
    kind = None
    if node.activity is not None:
        kind = _REQUEST_KIND.get(node.activity, "ServiceRequest")
    return {
        "resourceType": "ActivityDefinition",
        "id": ids.node[node.id],
        "extension": [_ext(EXT_NODE, _node_parts(node, ids)), *layout.held[node.id]],
        "title": node.title,
        "status": "draft",
        "description": node.summary,
        "relatedArtifact": [_cite_artifact(c, sources) for c in node.cites],
        "kind": kind,
        "code": None if drug else concept,
        "productCodeableConcept": concept if drug else None,
    }


def _node_parts(node: Node, ids: _Ids) -> list[JSON | None]:
    return [
        _part("id", "valueString", node.id) if ids.node[node.id] != node.id else None,
        _part("kind", "valueCode", node.kind.value),
        _part("step", "valueCode", node.step.value if node.step else None),
        _part("activity", "valueCode", node.activity.value if node.activity else None),
        _part("seq", "valueInteger", node.seq),
        _part("question", "valueString", node.question),
        _part("doneWhen", "valueExpression", _expression(node.done_when)) if node.done_when is not None else None,
        *(_part("needsMapping", "valueString", t) for t in node.needs_mapping),
    ]


def _pathway_parts(info: PathwayInfo) -> list[JSON | None]:
    return [
        _part("status", "valueString", info.status),
        _part("start", "valueString", info.start),
        *(_part("needsMapping", "valueString", t) for t in info.needs_mapping),
    ]


def _source_artifact(source: Source) -> JSON:
    text = ". ".join(p for p in (source.publisher, source.title) if p)
    accessed = f" Accessed {source.accessed}." if source.accessed else ""
    parts = [_part("publisher", "valueString", source.publisher), _part("accessed", "valueString", source.accessed)]
    return {
        "extension": [_ext(EXT_SOURCE, parts)] if any(parts) else [],
        "type": "citation",
        "label": source.id,
        "display": source.title,
        "citation": f"{text}.{accessed}" if text else accessed.strip(),
        "url": source.url,
    }


def _cite_artifact(citation: Citation, sources: Mapping[str, Source]) -> JSON:
    source = sources.get(citation.source)
    if source is None:  # a citation of an unknown source keeps the source id it names
        return {"type": "citation", "label": citation.section, "display": citation.source}
    return {"type": "citation", "label": citation.section, "display": source.title, "url": source.url}


def _condition(cond: Condition) -> JSON:
    return {"kind": "applicability", "expression": _expression(cond)}


def _expression(cond: Condition) -> JSON:
    text = json.dumps(condition_to_json(cond), ensure_ascii=False, separators=(",", ":"))
    return {"language": CONDITION_LANGUAGE, "expression": text, "description": describe(cond)}


def _duration(d: Duration) -> JSON:
    return {"value": d.amount, "unit": _UNIT_WORD[d.unit], "system": UCUM, "code": _UNIT_CODE[d.unit]}


def _timing(t: Timing) -> JSON:
    repeat: JSON = {}
    if t.every is not None:
        repeat.update(frequency=1, period=t.every.amount, periodUnit=_UNIT_CODE[t.every.unit])
    if t.for_ is not None:
        repeat["boundsDuration"] = _duration(t.for_)
    return {"code": {"text": t.text} if t.text else None, "repeat": repeat}


def _part(name: str, kind: str, value: Any) -> JSON | None:
    """One sub-extension; None for an empty value (FHIR has no empty strings or elements)."""
    if value is None or value == "" or (isinstance(value, Mapping) and not _prune(dict(value))):
        return None
    return {"url": name, kind: value}


def _ext(url: str, parts: Iterable[JSON | None]) -> JSON:
    return {"url": url, "extension": [p for p in parts if p is not None]}


def _prune(value: Any) -> Any:
    """Drop None, empty strings, lists and objects, which FHIR JSON does not allow."""
    if isinstance(value, Mapping):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if not _empty(v)}
    if isinstance(value, list):
        return [v for v in (_prune(x) for x in value) if not _empty(v)]
    return value


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9\-.]", "-", text)[:64] or "x"


def _machine_name(pathway_id: str) -> str:
    """PlanDefinition.name must look like a code identifier (FHIR invariant inv-0: [A-Z][A-Za-z0-9_]*)."""
    name = "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", pathway_id) if p)
    return name if name[:1].isalpha() else f"Pathway{name}"


# --- import --------------------------------------------------------------------------------------


def from_plan_definition(resource: Any) -> ImportResult:
    """Read a PlanDefinition (ours or anyone's) into a Pathway; what we cannot map is kept as text."""
    if not isinstance(resource, Mapping):
        raise PlanDefinitionError(f"a PlanDefinition is a JSON object, got {type(resource).__name__}")
    kind = resource.get("resourceType")
    if kind != "PlanDefinition":
        raise PlanDefinitionError(f"resourceType is {kind!r}, not 'PlanDefinition'")
    for name in ("action", "contained", "relatedArtifact", "extension", "useContext"):
        if name in resource and not isinstance(resource[name], list):
            raise PlanDefinitionError(
                f"PlanDefinition.{name} must be a JSON array, got {type(resource[name]).__name__}"
            )
    return _Importer(resource).run()


class _Importer:
    """One import: nodes first (actions and contained ActivityDefinitions), then the edges between them."""

    def __init__(self, resource: Mapping[str, Any]) -> None:
        self.res = resource
        self.ours = _find_ext(resource, EXT_PATHWAY) is not None
        self.pid = self._pathway_id()
        self.warnings: list[str] = []
        self.nodes: dict[str, Node] = {}
        self.node_seq: dict[str, int] = {}
        self.edges: list[tuple[int | None, Edge]] = []
        self.sources: list[Source] = []
        self.by_action: dict[str, str] = {}  # FHIR action id -> node id
        self.by_contained: dict[str, str] = {}  # contained ActivityDefinition id -> node id
        self.by_url: dict[str, str] = {}  # external ActivityDefinition canonical -> node id
        self.contained = {str(r.get("id")): r for r in _dicts(resource.get("contained")) if r.get("id")}
        self.later: list[tuple[str, str, Mapping[str, Any]]] = []  # (what, node id, element) for edges
        self.root: Mapping[str, Any] | None = None

    def run(self) -> ImportResult:
        self._read_sources()
        for ad_id, ad in self.contained.items():
            if _find_ext(ad, EXT_NODE) is not None:
                self._our_activity(ad_id, ad)
        actions = _dicts(self.res.get("action"))
        if self.ours and len(actions) == 1 and not _is_ours(actions[0]):
            self.root = actions[0]
            actions = _dicts(self.root.get("action"))
        self._group(actions, None, None, "action")
        self._read_edges()
        info = self._info()
        nodes = self._ordered_nodes()
        if not info.start:
            info = replace(info, start=next((n.id for n in nodes if n.kind in WALKABLE), ""))
        edges = self._ordered_edges()
        file = f"PlanDefinition/{self.res.get('id') or self.pid}"
        return ImportResult(Pathway(info, nodes, edges, tuple(self.sources), file), self.warnings)

    # pathway head

    def _pathway_id(self) -> str:
        for ident in _dicts(self.res.get("identifier")):
            if ident.get("system") == PATHWAY_ID_SYSTEM and isinstance(ident.get("value"), str):
                return str(ident["value"])
        for key in ("id", "name"):
            if isinstance(self.res.get(key), str) and self.res[key]:
                return str(self.res[key])
        return _slug(str(self.res.get("title") or "")) or "imported"

    def _info(self) -> PathwayInfo:
        parts = _parts(_find_ext(self.res, EXT_PATHWAY))
        needs = [*_strings(parts, "needsMapping")]
        applies, texts = self._conditions(self.root, "pathway applicability") if self.root else (None, [])
        needs += texts
        if not self.ours:
            needs += self._foreign_context()
        if applies is None:
            applies = parse_condition({"fact": "cancer", "types": ["other"]})
            needs.append("applicability not mapped: no OncoTwin condition given; defaulted to cancer type 'other'")
            self.warnings.append("pathway: applicability not mapped; defaulted to cancer type 'other'")
        title = self.res.get("title") or self.res.get("name") or self.pid
        return PathwayInfo(
            id=self.pid,
            version=str(self.res.get("version") or "0"),
            title=str(title),
            status=_str(parts, "status") or IMPORTED_STATUS,
            disclaimer=str(self.res.get("usage") or "") if self.ours else IMPORTED_DISCLAIMER,
            applies_when=applies,
            start=_str(parts, "start"),
            cites=self._cites(self.root.get("documentation")) if self.root else (),
            needs_mapping=tuple(needs),
        )

    def _foreign_context(self) -> list[str]:
        """useContext, libraries and goals of a foreign PlanDefinition: kept as text, noted."""
        out = []
        for ctx in _dicts(self.res.get("useContext")):
            code = ctx["code"].get("code", "?") if isinstance(ctx.get("code"), Mapping) else "?"
            value = {k: v for k, v in ctx.items() if k.startswith("value")}
            out.append(f"useContext {code}: {json.dumps(value, ensure_ascii=False, sort_keys=True)}")
        for name in ("library", "goal"):
            if self.res.get(name):
                self.warnings.append(f"pathway: {name} not imported: {json.dumps(self.res[name], ensure_ascii=False)}")
        if out:
            self.warnings.append(f"pathway: useContext kept as text: {'; '.join(out)}")
        return out

    # sources and citations

    def _read_sources(self) -> None:
        for i, art in enumerate(_dicts(self.res.get("relatedArtifact"))):
            parts = _parts(_find_ext(art, EXT_SOURCE))
            title = _text(art, "display")
            if not self.ours:
                title = title or _text(art, "citation") or _text(art, "url") or f"source {i + 1}"
            sid = _text(art, "label") or f"source-{i + 1}"
            source = Source(sid, title, _str(parts, "publisher"), _text(art, "url"), _str(parts, "accessed"))
            self.sources.append(source)

    def _cites(self, artifacts: Any) -> tuple[Citation, ...]:
        return tuple(Citation(self._source_for(a), _text(a, "label")) for a in _dicts(artifacts))

    def _source_for(self, art: Mapping[str, Any]) -> str:
        """The source an artifact names: by url and title, by url, or (ours) the id it carries."""
        url, display = _text(art, "url"), _text(art, "display")
        for match in (
            [s for s in self.sources if s.title == display and (s.url == url or not url)],
            [s for s in self.sources if url and s.url == url],
        ):
            if match:
                return match[0].id
        if self.ours and display and not url:
            return display
        taken, n = {s.id for s in self.sources}, len(self.sources) + 1
        while f"source-{n}" in taken:
            n += 1
        source = Source(f"source-{n}", display or _text(art, "citation") or url, "", url, "")
        self.sources.append(source)
        return source.id

    # nodes

    def _group(
        self, actions: list[Mapping[str, Any]], parent: str | None, parent_action: Mapping[str, Any] | None, where: str
    ) -> None:
        """One level of actions: make their nodes, then join foreign ones to the parent and each other."""
        selecting = parent_action is not None and parent_action.get("selectionBehavior") in _SELECTING
        foreign: list[tuple[str, Mapping[str, Any]]] = []
        for i, action in enumerate(actions):
            if parent is not None and _is_edge_action(action):
                self.later.append(("branch", parent, action))
                continue
            node_id = self._action(action, parent, f"{where}[{i}]")
            if not _is_ours(action):
                foreign.append((node_id, action))
        ordered = any(a.get("relatedAction") for _, a in foreign)
        previous = parent
        for node_id, action in foreign:
            if parent is not None and (selecting or self.nodes[node_id].kind in ORDERABLE):
                when, texts = self._conditions(action, node_id)
                self._add(Edge(parent, node_id, EdgeKind.BRANCH, when=when, needs_mapping=tuple(texts)))
                self._note_conditions(node_id, action, applicability=False)
                continue
            self._note_conditions(node_id, action, applicability=True)
            if ordered and action.get("relatedAction"):
                continue
            source = parent if ordered else previous
            if source is not None:
                self._add(Edge(source, node_id, EdgeKind.NEXT))
            previous = node_id

    def _action(self, action: Mapping[str, Any], parent: str | None, where: str) -> str:
        if _is_ours(action):
            node_id = self._our_action(action)
        elif parent is not None and self._orderable_leaf(action):
            node_id = self._activity_for(action, where)
            self._note_unmapped(action, node_id)
        else:
            node_id = self._foreign_step(action, where)
        if isinstance(action.get("id"), str):
            self.by_action[action["id"]] = node_id
        self.later.append(("related", node_id, action))
        children = _dicts(action.get("action"))
        if children:
            self._group(children, node_id, action, f"{where}.action")
        return node_id

    def _our_action(self, action: Mapping[str, Any]) -> str:
        parts = _parts(_find_ext(action, EXT_NODE))
        node_id = _str(parts, "id") or _text(action, "id") or self._new_id("", "node")
        kind = self._enum(NodeKind, _value(parts, "kind"), NodeKind.STEP, node_id)
        codes = tuple(c for concept in _dicts(action.get("code")) for c in _codes(concept))
        self._put(
            self._our_node(node_id, kind, parts, action, codes, action.get("documentation")), _value(parts, "seq")
        )
        self.later.append(("held", node_id, action))
        return node_id

    def _our_activity(self, ad_id: str, ad: Mapping[str, Any]) -> None:
        parts = _parts(_find_ext(ad, EXT_NODE))
        node_id = _str(parts, "id") or ad_id
        kind = self._enum(NodeKind, _value(parts, "kind"), NodeKind.ACTIVITY, node_id)
        codes = _codes(ad.get("productCodeableConcept")) or _codes(ad.get("code"))
        self._put(self._our_node(node_id, kind, parts, ad, codes, ad.get("relatedArtifact")), _value(parts, "seq"))
        self.by_contained[ad_id] = node_id
        self.later.append(("held", node_id, ad))

    def _our_node(
        self,
        node_id: str,
        kind: NodeKind,
        parts: Mapping[str, list[JSON]],
        element: Mapping[str, Any],
        codes: tuple[Code, ...],
        documentation: Any,
    ) -> Node:
        needs = list(_strings(parts, "needsMapping"))
        done_when = self._expression(_value(parts, "doneWhen"), needs, f"{node_id}.doneWhen")
        return Node(
            id=node_id,
            kind=kind,
            title=_text(element, "title") or node_id,
            summary=_text(element, "description"),
            step=self._enum(StepKind, _value(parts, "step"), None, node_id),
            activity=self._enum(ActivityKind, _value(parts, "activity"), None, node_id),
            codes=codes,
            done_when=done_when,
            question=_str(parts, "question") or None,
            cites=self._cites(documentation),
            needs_mapping=tuple(needs),
        )

    def _foreign_step(self, action: Mapping[str, Any], where: str) -> str:
        node_id = self._new_id(_text(action, "id"), _text(action, "title"))
        children = [a for a in _dicts(action.get("action")) if not _is_edge_action(a)]
        selection = action.get("selectionBehavior")
        decision = bool(children) and selection in _SELECTING and not any(self._orderable_leaf(a) for a in children)
        needs = self._definition_note(action, node_id)
        node = Node(
            id=node_id,
            kind=NodeKind.DECISION if decision else NodeKind.STEP,
            title=_text(action, "title") or _text(action, "id") or node_id,
            summary=_text(action, "description"),
            step=None if decision else self._step_kind(action, node_id),
            cites=self._cites(action.get("documentation")),
            needs_mapping=tuple(needs),
        )
        self._put(node, None)
        if selection:
            shape = "a decision" if decision else "a step offering options"
            self.warnings.append(f"{node_id}: selectionBehavior {selection!r} ({where}) read as {shape}")
        self._note_unmapped(action, node_id)
        if self._definition(action)[0] in ("ad", "url-ad"):  # a top-level order: a step that offers it
            self._add(Edge(node_id, self._activity_for(action, where), EdgeKind.BRANCH))
        return node_id

    def _activity_for(self, action: Mapping[str, Any], where: str) -> str:
        """The activity an action orders: from a contained ActivityDefinition, or code-less from a URL."""
        kind, ref = self._definition(action)
        known = self.by_contained.get(ref) if kind == "ad" else self.by_url.get(ref)
        if known is not None:
            return known
        if kind == "ad":
            ad = self.contained[ref]
            node_id = self._new_id(ref, "")
            node = Node(
                id=node_id,
                kind=NodeKind.ACTIVITY,
                title=_text(ad, "title") or _text(ad, "name") or _text(action, "title") or ref,
                summary=_text(ad, "description") or _text(action, "description"),
                activity=_activity_kind(ad),
                codes=_codes(ad.get("productCodeableConcept")) or _codes(ad.get("code")),
                cites=self._cites(ad.get("relatedArtifact")),
            )
            self.by_contained[ref] = node_id
        else:
            last = ref.rstrip("/").rsplit("/", 1)[-1]
            node_id = self._new_id(last, "")
            text = f"definitionCanonical: {ref}"
            node = Node(
                id=node_id,
                kind=NodeKind.ACTIVITY,
                title=_text(action, "title") or last,
                summary=_text(action, "description"),
                activity=ActivityKind.PROCEDURE,
                needs_mapping=(text,),
            )
            self.by_url[ref] = node_id
            self.warnings.append(
                f"{node_id}: external ActivityDefinition not resolved ({where}); an activity without codes: {ref}"
            )
        self._put(node, None)
        return node_id

    def _definition(self, action: Mapping[str, Any]) -> tuple[str, str]:
        """What an action's definition is: ('ad'|'url-ad'|'other'|'', reference)."""
        ref = action.get("definitionCanonical") or action.get("definitionUri")
        if not isinstance(ref, str) or not ref:
            return "", ""
        if ref.startswith("#"):
            target = self.contained.get(ref[1:])
            is_ad = target is not None and target.get("resourceType") == "ActivityDefinition"
            return ("ad", ref[1:]) if is_ad else ("other", ref)
        return ("url-ad", ref) if "/ActivityDefinition/" in ref else ("other", ref)

    def _orderable_leaf(self, action: Mapping[str, Any]) -> bool:
        return not _dicts(action.get("action")) and self._definition(action)[0] in ("ad", "url-ad")

    def _definition_note(self, action: Mapping[str, Any], node_id: str) -> list[str]:
        kind, ref = self._definition(action)
        if kind != "other":
            return []
        self.warnings.append(f"{node_id}: definition not imported (kept as text): {ref}")
        return [f"definitionCanonical: {ref}"]

    def _step_kind(self, action: Mapping[str, Any], node_id: str) -> StepKind:
        for concept in _dicts(action.get("code")):
            for coding in _dicts(concept.get("coding")):
                if coding.get("code") in _STEP_BY_CODE:
                    return _STEP_BY_CODE[coding["code"]]
        self.warnings.append(f"{node_id}: step kind not stated; taken as {StepKind.WORKUP.value!r}")
        return StepKind.WORKUP

    def _note_unmapped(self, action: Mapping[str, Any], node_id: str) -> None:
        keys = [k for k in _UNMAPPED_ACTION_KEYS if action.get(k)]
        if keys:
            self.warnings.append(f"{node_id}: not mapped: {', '.join(keys)}")

    def _new_id(self, fhir_id: str, title: str) -> str:
        """A node id prefixed by the pathway id (graph.validate wants that), unique in this import."""
        base = fhir_id or _slug(title) or "action"
        base = base if base.startswith(f"{self.pid}.") else f"{self.pid}.{base}"
        candidate, n = base, 2
        while candidate in self.nodes:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def _put(self, node: Node, seq: Any) -> None:
        if node.id in self.nodes:
            self.warnings.append(f"{node.id}: defined twice; the later one is kept")
        self.nodes[node.id] = node
        if isinstance(seq, int) and not isinstance(seq, bool):
            self.node_seq[node.id] = seq

    # conditions

    def _conditions(self, action: Mapping[str, Any], where: str) -> tuple[Condition | None, list[str]]:
        """Applicability conditions: ours parsed (several: all of them), the rest as text."""
        structured: list[Condition] = []
        texts: list[str] = []
        for cond in _dicts(action.get("condition")):
            if cond.get("kind", "applicability") != "applicability":
                continue
            parsed = self._expression(cond.get("expression"), texts, where)
            if parsed is not None:
                structured.append(parsed)
        if len(structured) > 1:
            return AllOf(tuple(structured)), texts
        return (structured[0] if structured else None), texts

    def _note_conditions(self, node_id: str, action: Mapping[str, Any], *, applicability: bool) -> None:
        """A foreign action's own conditions, on its node (nodes have no structured slot: all text)."""
        texts = []
        for cond in _dicts(action.get("condition")):
            kind = str(cond.get("kind") or "applicability")
            if kind == "applicability" and not applicability:
                continue
            text = _expression_text(cond.get("expression"))
            texts.append(text if kind == "applicability" else f"{kind}: {text}")
            self.warnings.append(f"{node_id}: {kind} condition kept as text for mapping: {text}")
        if texts:
            node = self.nodes[node_id]
            self.nodes[node_id] = replace(node, needs_mapping=(*node.needs_mapping, *texts))

    def _expression(self, expr: Any, texts: list[str], where: str) -> Condition | None:
        """Our condition language parsed; anything else (CQL, FHIRPath...) appended to ``texts``."""
        if not isinstance(expr, Mapping):
            return None
        if expr.get("language") == CONDITION_LANGUAGE:
            try:
                return parse_condition(json.loads(str(expr.get("expression"))), where)
            except (ValueError, ConditionError) as exc:
                self.warnings.append(f"{where}: OncoTwin condition not readable ({exc}); kept as text")
        text = _expression_text(expr)
        texts.append(text)
        if expr.get("language") != CONDITION_LANGUAGE:
            self.warnings.append(f"{where}: condition kept as text for mapping: {text}")
        return None

    # edges

    def _read_edges(self) -> None:
        if self.root is not None:
            for ext in _find_exts(self.root, EXT_EDGE):
                self._edge_from_ext(ext, None)
        for what, node_id, element in self.later:
            if what == "branch":
                self._our_branch(node_id, element)
            elif what == "held":
                for ext in _find_exts(element, EXT_EDGE):
                    self._edge_from_ext(ext, node_id)
            else:
                for link in _dicts(element.get("relatedAction")):
                    self._related(node_id, link)

    def _edge_from_ext(self, ext: Mapping[str, Any], source: str | None) -> None:
        parts = _parts(ext)
        self._add_ours(parts, source or _str(parts, "source"), self._target(parts), None, None)

    def _our_branch(self, parent: str, action: Mapping[str, Any]) -> None:
        parts = _parts(_find_ext(action, EXT_EDGE))
        target = self._target(parts)
        canonical = _text(action, "definitionCanonical")
        links = _dicts(action.get("relatedAction"))
        if canonical.startswith("#"):
            target = self.by_contained.get(canonical[1:], canonical[1:])
        elif links:
            target = self.by_action.get(_text(links[0], "actionId"), _text(links[0], "actionId"))
        when, texts = self._conditions(action, f"{parent} branch")
        self._add_ours(parts, parent, target, when, _text(action, "title"), texts)

    def _related(self, node_id: str, link: Mapping[str, Any]) -> None:
        """relatedAction: ours carries the edge extension; anyone's is read as next-edge ordering."""
        other_id = _text(link, "actionId")
        other = self.by_action.get(other_id, other_id)
        ext = _find_ext(link, EXT_EDGE)
        if ext is not None:
            self._add_ours(_parts(ext), other, node_id, None, None)
            return
        if other_id not in self.by_action:
            self.warnings.append(f"{node_id}: relatedAction to unknown action {other_id!r} not mapped")
            return
        relationship = _text(link, "relationship")
        if not relationship.startswith(("after", "before")):
            self.warnings.append(f"{node_id}: relatedAction {relationship!r} to {other} is not an ordering; not mapped")
            return
        source, target = (other, node_id) if relationship.startswith("after") else (node_id, other)
        offset = link.get("offsetDuration") or (link.get("offsetRange") or {}).get("high")
        within = _duration_from(offset)
        if offset and within is None:
            self.warnings.append(f"{node_id}: relatedAction offset not mapped: {json.dumps(offset)}")
        timing = Timing(f"{relationship} {other}, within {within}", within=within) if within else None
        self._add(Edge(source, target, EdgeKind.NEXT, timing=timing))

    def _target(self, parts: Mapping[str, list[JSON]]) -> str:
        value = _value(parts, "target")
        if isinstance(value, str) and value.startswith("#"):
            return self.by_contained.get(value[1:], value[1:])
        return str(value or "")

    def _add_ours(
        self,
        parts: Mapping[str, list[JSON]],
        source: str,
        target: str,
        when: Condition | None,
        label: str | None,
        texts: Iterable[str] = (),
    ) -> None:
        needs = [*_strings(parts, "needsMapping"), *texts]
        where = f"edge {source}->{target}"
        if when is None:
            when = self._expression(_value(parts, "when"), needs, where)
        edge = Edge(
            source=source,
            target=target,
            kind=self._enum(EdgeKind, _value(parts, "kind"), EdgeKind.NEXT, where),
            when=when,
            otherwise=_value(parts, "otherwise") is True,
            timing=_timing_from(parts),
            label=_str(parts, "label") if label is None else label,
            needs_mapping=tuple(needs),
        )
        seq = _value(parts, "seq")
        self.edges.append((seq if isinstance(seq, int) and not isinstance(seq, bool) else None, edge))

    def _add(self, edge: Edge) -> None:
        self.edges.append((None, edge))

    # ordering and small readers

    def _ordered_nodes(self) -> tuple[Node, ...]:
        nxt = max(self.node_seq.values(), default=-1) + 1
        out = []
        for node_id, node in self.nodes.items():
            seq = self.node_seq.get(node_id)
            if seq is None:
                seq, nxt = nxt, nxt + 1
            out.append(replace(node, seq=seq))
        return tuple(sorted(out, key=lambda n: n.seq))

    def _ordered_edges(self) -> tuple[Edge, ...]:
        nxt = max((s for s, _ in self.edges if s is not None), default=-1) + 1
        out = []
        for seq, edge in self.edges:
            if seq is None:
                seq, nxt = nxt, nxt + 1
            out.append(replace(edge, seq=seq))
        return tuple(sorted(out, key=lambda e: e.seq))

    def _enum(self, cls: Any, value: Any, default: Any, where: str) -> Any:
        if value is None:
            return default
        try:
            return cls(value)
        except ValueError:
            self.warnings.append(f"{where}: {value!r} is not a {cls.__name__}; {default!r} used")
            return default


def _is_ours(action: Mapping[str, Any]) -> bool:
    return _find_ext(action, EXT_NODE) is not None


def _is_edge_action(action: Mapping[str, Any]) -> bool:
    return _find_ext(action, EXT_EDGE) is not None and not _is_ours(action)


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    """The objects of a JSON array (anything else in it is skipped: never fail on foreign shapes)."""
    if isinstance(value, Mapping):
        return [value]
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _text(element: Mapping[str, Any], key: str) -> str:
    value = element.get(key)
    return value.strip() if isinstance(value, str) else ""


def _find_exts(element: Mapping[str, Any] | None, url: str) -> list[Mapping[str, Any]]:
    return [e for e in _dicts((element or {}).get("extension")) if e.get("url") == url]


def _find_ext(element: Mapping[str, Any] | None, url: str) -> Mapping[str, Any] | None:
    found = _find_exts(element, url)
    return found[0] if found else None


def _parts(ext: Mapping[str, Any] | None) -> dict[str, list[JSON]]:
    out: dict[str, list[JSON]] = defaultdict(list)
    for part in _dicts((ext or {}).get("extension")):
        out[str(part.get("url"))].append(dict(part))
    return out


def _value(parts: Mapping[str, list[JSON]], name: str) -> Any:
    for part in parts.get(name, []):
        for key, value in part.items():
            if key.startswith("value"):
                return value
    return None


def _str(parts: Mapping[str, list[JSON]], name: str) -> str:
    value = _value(parts, name)
    return value if isinstance(value, str) else ""


def _strings(parts: Mapping[str, list[JSON]], name: str) -> Iterable[str]:
    for part in parts.get(name, []):
        value = part.get("valueString")
        if isinstance(value, str):
            yield value


def _codes(concept: Any) -> tuple[Code, ...]:
    codings = _dicts(concept.get("coding")) if isinstance(concept, Mapping) else []
    return tuple(
        Code(str(c["system"]), str(c["code"]), str(c["display"]) if c.get("display") else None)
        for c in codings
        if c.get("system") and c.get("code")
    )


def _activity_kind(ad: Mapping[str, Any]) -> ActivityKind:
    if ad.get("kind") in ("MedicationRequest", "ImmunizationRecommendation") or ad.get("productCodeableConcept"):
        return ActivityKind.DRUG
    systems = {c.system for c in _codes(ad.get("code"))}
    return ActivityKind.TEST if "http://loinc.org" in systems else ActivityKind.PROCEDURE


def _expression_text(expr: Any) -> str:
    """'language: expression' verbatim (or the reference / description when there is no expression)."""
    if not isinstance(expr, Mapping):
        return f"(no expression): {json.dumps(expr, ensure_ascii=False)}"
    body = expr.get("expression") or expr.get("reference") or expr.get("description") or ""
    return f"{expr.get('language') or '(no language)'}: {body}"


def _duration_from(quantity: Any) -> Duration | None:
    if not isinstance(quantity, Mapping):
        return None
    value, unit = quantity.get("value"), str(quantity.get("code") or quantity.get("unit") or "").lower()
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
        return None
    letter = _UNIT_LETTER.get(unit)
    return Duration(int(value), letter) if letter else None


def _timing_from(parts: Mapping[str, list[JSON]]) -> Timing | None:
    within = _duration_from(_value(parts, "within"))
    value = _value(parts, "timing")
    if within is None and not isinstance(value, Mapping):
        return None
    timing = _obj(value)
    code, repeat = _obj(timing.get("code")), _obj(timing.get("repeat"))
    every = _duration_from({"value": repeat.get("period"), "code": repeat.get("periodUnit")})
    return Timing(str(code.get("text") or ""), within, every, _duration_from(repeat.get("boundsDuration")))


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].rstrip("-")
