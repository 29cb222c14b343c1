"""On-pathway alternatives for a draft order that does not meet its pathway, as CDS suggestions.

Where the ordered item is offered (every step of ``criteria_for``'s alternatives, the best one's
first), the options the patient *does* meet (``PathwayQueries.options``) become suggestions: a
``create`` of a draft order per activity of the option, then the ``delete`` of the failing draft.

A regimen written "A or B + C" offers A+C or B+C, not all three: its title is read into variants
(one suggestion each) when every part names one of its activities; otherwise all its activities
are drafted together. Drafts carry the original's patient, encounter, requester and reason only:
dose and schedule are for the prescriber.
"""

from __future__ import annotations

import copy
import itertools
import re
import uuid
from typing import Any

from graph.facts import SATISFIED
from graph.model import ActivityKind, Node
from graph.queries import Option, PathwayQueries
from services.medical_necessity.contract import DeterminationOut
from shared.fhir.record import RXNORM, Order, PatientRecord

MAX_SUGGESTIONS = 3
LABEL_MAX = 80
_PARENTHESES = re.compile(r"\([^)]*\)")
_COPIED = ("subject", "encounter", "requester", "reasonCode", "reasonReference")


def suggestions(
    record: PatientRecord, queries: PathwayQueries, order: Order, draft: dict[str, Any], det: DeterminationOut
) -> list[dict[str, Any]]:
    criteria = queries.criteria_for(order, record)
    best_first = sorted(criteria.alternatives, key=lambda a: a.orderable.id != det.option)
    as_of = order.authored.day if order.authored is not None else None
    chosen: dict[str, Option] = {}
    for step_id in dict.fromkeys(a.step.id for a in best_first):
        try:
            options = queries.options(record, step_id, as_of)
        except LookupError:
            continue
        for option in options:
            if option.status == SATISFIED and option.node.id != det.option:
                chosen.setdefault(option.node.id, option)
    out: list[dict[str, Any]] = []
    for option in chosen.values():
        for activities in variants(option):
            pairs = [(node, d) for node in activities if (d := draft_order(node, draft)) is not None]
            if pairs and len(out) < MAX_SUGGESTIONS:
                out.append(_suggestion(option, pairs, order.reference))
    return out


def variants(option: Option) -> list[tuple[Node, ...]]:
    """The activity sets an option stands for (see the module docstring)."""
    activities = option.includes or (option.node,)
    if len(activities) < 2:
        return [activities]
    by_title = {a.title.lower(): a for a in activities}
    parts: list[list[Node]] = []
    for part in _PARENTHESES.sub("", option.node.title).lower().split("+"):
        choices = [by_title.get(alt.strip()) for alt in part.split(" or ")]
        if any(c is None for c in choices):
            return [activities]
        parts.append([c for c in choices if c is not None])
    if {a.id for p in parts for a in p} != {a.id for a in activities}:
        return [activities]
    return [tuple(combo) for combo in itertools.product(*parts)]


def draft_order(node: Node, original: dict[str, Any]) -> dict[str, Any] | None:
    """A new draft order for one pathway activity: MedicationRequest for drugs, else ServiceRequest."""
    if not node.codes:
        return None
    codings = [
        {"system": c.system, "code": c.code, **({"display": c.display} if c.display else {})} for c in node.codes
    ]
    drug = node.activity is ActivityKind.DRUG or any(c.system == RXNORM for c in node.codes)
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest" if drug else "ServiceRequest",
        "id": str(uuid.uuid4()),
        "status": "draft",
        "intent": original.get("intent") or "order",
    }
    concept = {"coding": codings, "text": node.title}
    resource["medicationCodeableConcept" if drug else "code"] = concept
    for name in _COPIED:
        if name in original:
            resource[name] = copy.deepcopy(original[name])
    return resource


def _suggestion(option: Option, pairs: list[tuple[Node, dict[str, Any]]], failing: str) -> dict[str, Any]:
    label = f"Order {' + '.join(node.title for node, _ in pairs)} instead"
    actions: list[dict[str, Any]] = [
        {"type": "create", "description": f"Draft an order for {node.title} ({option.step.title})", "resource": d}
        for node, d in pairs
    ]
    actions.append(
        {
            "type": "delete",
            "description": "Remove the draft order that does not meet the pathway",
            "resourceId": failing,
        }
    )
    return {
        "label": label if len(label) <= LABEL_MAX else label[: LABEL_MAX - 1].rstrip() + "\u2026",
        "uuid": str(uuid.uuid4()),
        "actions": actions,
    }
