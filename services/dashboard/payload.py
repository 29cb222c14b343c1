"""What the patient page and the pathway view show, built from the twins' engines (no Flask here).

The engines are called, not re-implemented: the Clinical-History timeline, Care-Navigation
(position, next steps, gaps) and Medical-Necessity (determinations of the record's orders). Each
section is included only when the signed-in user holds that twin's scope.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from datetime import date
from typing import Any

from graph.model import EdgeKind
from graph.queries import Location, PathwayQueries
from services.care_navigation.engine import navigate
from services.clinical_history.timeline import build_timeline
from services.dashboard.patients import LoadedPatient
from services.medical_necessity.engine import assess, orders_to_review
from services.medical_necessity.judge import Judge
from shared.errors import NotFound

# Timeline swimlanes: every event kind the timeline returns lands in one (unknown kinds: "other").
LANES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("diagnosis", "Diagnoses and stage", ("diagnosis", "stage", "disease-status", "performance")),
    ("biomarker", "Biomarkers", ("biomarker",)),
    ("therapy", "Lines of therapy", ()),
    ("medication", "Medications", ("medication",)),
    ("procedure", "Procedures and radiation", ("procedure", "surgery", "radiation")),
    ("imaging", "Imaging and radiology findings", ("imaging", "imaging-finding", "report")),
    ("note", "Notes", ("note",)),
    ("encounter", "Encounters", ("encounter",)),
    ("other", "Other", ()),
)
LANE_OF_KIND = {kind: lane for lane, _, kinds in LANES for kind in kinds}
_REFERENCE = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")
_SOURCE_KEYS = {"source", "sources", "alsoRecordedAs", "reference", "cancer"}


def lane_of(kind: str, from_text: bool) -> str:
    if from_text and kind != "note":
        return "note"  # a mention found in a note sits with its note; its kind is still shown
    return LANE_OF_KIND.get(kind, "other")


def patient_page(
    patient: LoadedPatient,
    queries: PathwayQueries,
    judge: Judge,
    scopes: frozenset[str],
    as_of: date | None = None,
) -> dict[str, Any]:
    record = patient.record
    timeline = build_timeline(record).to_json()
    for event in timeline["events"]:
        event["lane"] = lane_of(event["kind"], bool(event.get("fromText")))
    page: dict[str, Any] = {
        "patient": {
            **patient.entry.to_json(),
            "deceased": timeline["patient"].get("deceased"),
            "isDeceased": timeline["patient"].get("isDeceased", False),
        },
        "lanes": [{"id": lane, "title": title} for lane, title, _ in LANES],
        "timeline": {k: v for k, v in timeline.items() if k != "patient"},
        "navigation": None,
        "necessity": None,
        "pathways": [],
    }
    if "navigation.read" in scopes:
        navigation = navigate(record, queries, as_of).to_json()
        page["navigation"] = navigation
        page["pathways"] = [{"key": f"{p['id']}@{p['version']}", "title": p["title"]} for p in navigation["pathways"]]
    if "necessity.read" in scopes:
        page["necessity"] = assess(record, queries, orders_to_review(record), judge).to_json()
    page["sources"] = sorted(referenced_sources(page))
    return page


def referenced_sources(node: Any, key: str | None = None) -> set[str]:
    """Every FHIR reference the page cites: the only resources its "show source" may return."""
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            found |= referenced_sources(v, k)
    elif isinstance(node, list):
        for item in node:
            found |= referenced_sources(item, key)
    elif isinstance(node, str) and key in _SOURCE_KEYS and _REFERENCE.match(node):
        found.add(node)
    return found


def source_view(patient: LoadedPatient, reference: str, allowed: Iterable[str]) -> dict[str, Any]:
    """The FHIR resource behind an item, and the note text when it is a note (for its passage)."""
    if reference not in set(allowed) and reference != f"Patient/{patient.record.id}":
        raise NotFound("that resource is not part of this patient's page")
    resource = patient.resources.get(reference)
    if resource is None:
        raise NotFound("the resource is not in the loaded data")
    note = patient.notes.get(reference)
    return {
        "reference": reference,
        "resource": resource,
        "note": {"text": note.text, "contentType": note.content_type} if note else None,
    }


def pathway_view(
    queries: PathwayQueries, patient: LoadedPatient, key: str, as_of: date | None = None
) -> dict[str, Any]:
    """A pathway's graph laid out in layers from its start, with the patient's walk marked."""
    locations = [loc for loc in queries.locate(patient.record, as_of) if loc.info.key == key]
    if not locations:
        raise NotFound("that pathway does not apply to this patient")
    location = locations[0]
    pathway = queries.store.pathway(key)
    status = _walk_status(location)
    layer = _layers(pathway.info.start, [(e.source, e.target) for e in pathway.edges])
    depth_max = max(layer.values(), default=0)
    rows: dict[int, list[str]] = {}
    nodes = []
    for node in pathway.nodes:
        depth = layer.get(node.id, depth_max + 1)
        column = len(rows.setdefault(depth, []))
        rows[depth].append(node.id)
        nodes.append(
            {
                "id": node.id,
                "title": node.title,
                "kind": node.kind.value,
                "step": node.step.value if node.step else None,
                "summary": node.summary,
                "layer": depth,
                "column": column,
                "status": status.get(node.id),
            }
        )
    # The path drawn is the part the record shows happened: done steps, taken decisions, the position.
    on_path = {node for node, state in status.items() if state in {"done", "decided", "position"}}
    edges = [
        {
            "from": e.source,
            "to": e.target,
            "kind": e.kind.value,
            "label": e.label or (e.timing.text if e.timing else ""),
            "onPath": e.source in on_path and e.target in on_path and e.kind in (EdgeKind.NEXT, EdgeKind.BRANCH),
        }
        for e in pathway.edges
    ]
    return {
        "patient": patient.entry.to_json(),
        "pathway": {"key": key, "title": pathway.info.title, "version": pathway.info.version},
        "status": pathway.info.status,
        "disclaimer": pathway.info.disclaimer,
        "nodes": nodes,
        "edges": edges,
        "position": [w.node.id for w in location.position],
    }


def _walk_status(location: Location) -> dict[str, str]:
    status: dict[str, str] = {w.node.id: w.status for w in location.walk}
    for w in location.skipped:
        status[w.node.id] = "skipped"
    for w in location.position:
        status[w.node.id] = "position"
    return status


def _layers(start: str, edges: list[tuple[str, str]]) -> dict[str, int]:
    """Breadth-first depth from the start node (cycles such as surveillance loops stop there)."""
    out_edges: dict[str, list[str]] = {}
    for source, target in edges:
        out_edges.setdefault(source, []).append(target)
    depth = {start: 0}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for target in out_edges.get(current, ()):
            if target not in depth:
                depth[target] = depth[current] + 1
                queue.append(target)
    return depth
