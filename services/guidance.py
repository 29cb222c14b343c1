"""FHIR R4 rendering of the decision twins' answers: ``GuidanceResponse`` + ``RequestGroup``.

Both twins answer in their JSON contracts; this module turns those contracts (never engine
internals) into a FHIR ``Bundle`` of type ``collection``:

- one ``GuidanceResponse`` per pathway (navigation) or per order (necessity): ``status``
  ``success`` / ``data-required`` (something needed for the answer is not documented) /
  ``failure`` (no pathway applies, so no guidance); ``moduleCanonical`` names the pathway's
  PlanDefinition with its version (``.../PlanDefinition/nsclc|2026.11``); ``subject``,
  ``occurrenceDateTime`` (when it was evaluated), ``reasonReference`` (the cancer Condition: R4
  allows only Condition | Observation | DiagnosticReport | DocumentReference there, so the order is
  carried by ``reasonCode`` (its code), the RequestGroup's ``basedOn`` and action ``resource``, and
  the ``order`` output parameter), ``note`` (position, off-pathway lines, rationale, deciding criteria, sources,
  disclaimer), ``evaluationMessage`` (an ``OperationOutcome`` of what is missing),
  ``dataRequirement`` (necessity: which data would decide an undocumented criterion),
  ``outputParameters`` (necessity: the determination as machine-readable ``Parameters``) and
  ``result``;
- the ``RequestGroup`` the ``result`` points to (status ``draft``, intent ``proposal``: a clinician
  decides), whose actions are the proposals: navigation's next steps (``timingDateTime`` = due
  date, ``priority`` urgent when overdue) and care gaps (priority by kind; never urgent for a
  deceased patient, whose response says so in a note), necessity's outcome for the order (its
  ``resource``; the pathway option as a second code) and the criteria to document. R4 invariant
  rqg-1 wants every action to have a ``resource`` or sub-actions, not both: each proposed step,
  gap or documentation is a ``Task`` (status ``draft``, intent ``proposal``) in the Bundle.

Resources in the Bundle reference each other by ``urn:uuid:`` full URLs; the patient, Condition
and order are referenced as the caller's own ``Type/id``. The output validates against the
``fhir.resources`` R4B models, and conforms beyond the schema to the R4 definitions (reference
targets, required bindings, invariants: ``tests/fhir_conformance.py`` checks every output).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from graph.plandefinition import BASE
from services.care_navigation.contract import GapOut, NavigationOut, NextStepOut, PathwayOut
from services.medical_necessity.contract import CriterionOut, DeterminationOut, NecessityOut
from shared.errors import InvalidInput
from shared.fhir.record import Code
from shared.terminology import terminology

JSON = dict[str, Any]

STEP_SYSTEM = f"{BASE}/CodeSystem/pathway-step"  # pathway node ids (steps, regimens, activities)
STEP_KIND_SYSTEM = f"{BASE}/CodeSystem/pathway-step-kind"
CARE_GAP_SYSTEM = f"{BASE}/CodeSystem/care-gap"
DETERMINATION_SYSTEM = f"{BASE}/CodeSystem/necessity-determination"
CRITERION_SYSTEM = f"{BASE}/CodeSystem/criterion-fact"
MODULE_SYSTEM = f"{BASE}/CodeSystem/oncotwin-module"
REQUEST_ID_SYSTEM = f"{BASE}/request-id"
ACTION_TYPE = "http://terminology.hl7.org/CodeSystem/action-type"
# Care-gap kind -> RequestGroup.action.priority (request-priority: routine | urgent | asap | stat).
GAP_PRIORITY = {"overdue": "urgent", "missing-prerequisite": "urgent", "missing-information": "routine"}
DETERMINATION_TITLE = {
    "meets": "Meets pathway criteria",
    "does-not-meet": "Does not meet pathway criteria",
    "insufficient-documentation": "Documentation needed to confirm pathway criteria",
    "not-on-any-pathway": "Not an option of any pathway that applies",
}
NAMESPACE = uuid.UUID("6b0e7f1c-3d55-4c1e-9a35-0f1c2a7d9e11")  # ids: uuid5 over what a resource is about
MAX_EVIDENCE_IN_NOTE = 3
FORMATS = ("json", "fhir")


def navigation_bundle(out: NavigationOut, *, when: datetime | None = None, request_id: str | None = None) -> JSON:
    """One GuidanceResponse (+ RequestGroup) per pathway; one ``failure`` response when none applies."""
    at = _instant(when)
    builder = _Bundle(f"navigation|{out.patient}|{out.as_of}|{at}")
    for pathway in out.pathways:
        _navigation_response(builder, out, pathway, at, request_id)
    if not out.pathways:
        message = builder.outcome(
            f"no-pathway|{out.patient}",
            [_issue("information", "not-found", "No care pathway applies to this patient's recorded cancers.")],
        )
        response = _response(
            builder.id(f"response|{out.patient}"),
            out.patient,
            at,
            request_id,
            module={"moduleCodeableConcept": _module_concept("care-navigation", "OncoTwin care navigation")},
            status="failure",
            performer="OncoTwin Care-Navigation twin (demonstration)",
        )
        response["evaluationMessage"] = [message]
        response["note"] = [{"text": f"Evaluated as of {out.as_of}. {out.disclaimer}"}]
        builder.add(response)
    return builder.bundle(at)


def necessity_bundle(out: NecessityOut, *, when: datetime | None = None, request_id: str | None = None) -> JSON:
    """One GuidanceResponse (+ RequestGroup, + Parameters) per reviewed order."""
    at = _instant(when)
    builder = _Bundle(f"necessity|{out.patient}|{at}")
    for determination in out.determinations:
        _necessity_response(builder, out, determination, at, request_id)
    return builder.bundle(at)


# --- navigation ------------------------------------------------------------------------------


def _navigation_response(
    builder: _Bundle, out: NavigationOut, pathway: PathwayOut, at: str, request_id: str | None
) -> None:
    key = f"{pathway.id}|{pathway.version}|{pathway.cancer}"
    first = len(builder.entries)  # the GuidanceResponse goes first, before what it references
    canonical = pathway_canonical(pathway.id, pathway.version)
    missing = [g for g in pathway.gaps if g.kind == "missing-information"]
    issues = [_issue("warning", "incomplete", g.reason) for g in missing]
    if pathway.applies != "satisfied":
        issues.insert(
            0,
            _issue(
                "warning",
                "incomplete",
                f"Whether the {pathway.title} pathway applies is {pathway.applies}: the cancer's type is not "
                "fully documented (e.g. lung cancer without histology).",
            ),
        )
    deceased = out.deceased is not None
    task = _TaskMaker(builder, out.patient, at, pathway.cancer, key)
    groups = [
        _group("Next steps", [_next_step_action(s, task, deceased=deceased) for s in pathway.next_steps]),
        _group("Care gaps", [_gap_action(g, task, deceased=deceased) for g in pathway.gaps]),
    ]
    request_group: JSON = {
        "resourceType": "RequestGroup",
        "id": builder.id(f"request-group|{key}"),
        "instantiatesCanonical": [canonical],
        "status": "draft",
        "intent": "proposal",
        "subject": _patient(out.patient),
        "authoredOn": at,
        "reasonReference": [{"reference": pathway.cancer}],
        "note": [{"text": out.disclaimer}],
        "action": [g for g in groups if g is not None],
    }
    if not request_group["action"]:
        del request_group["action"]
    result = builder.add(request_group)
    response = _response(
        builder.id(f"response|{key}"),
        out.patient,
        at,
        request_id,
        module={"moduleCanonical": canonical},
        status="data-required" if issues else "success",
        performer="OncoTwin Care-Navigation twin (demonstration)",
    )
    code = pathway.cancer_code
    response["reasonCode"] = [_concept(code.system, code.code, code.display)]
    response["reasonReference"] = [{"reference": pathway.cancer}]
    response["note"] = [{"text": t} for t in _navigation_notes(out, pathway)]
    if issues:
        response["evaluationMessage"] = [builder.outcome(f"messages|{key}", issues)]
    response["result"] = result
    builder.add(response, first)


def _navigation_notes(out: NavigationOut, pathway: PathwayOut) -> list[str]:
    notes = [
        f"{pathway.title} pathway, version {pathway.version} ({pathway.status} content), applied to "
        f"{pathway.cancer_code.display or pathway.cancer_code.code} ({pathway.cancer}); applies: {pathway.applies}. "
        f"Evaluated as of {out.as_of}."
    ]
    for p in pathway.position:
        facts = "; ".join(
            f"{f.fact}{f' ({f.value})' if f.value else ''}, {f.source}{f', {f.date[:10]}' if f.date else ''}"
            for f in p.facts[-MAX_EVIDENCE_IN_NOTE:]
        )
        state = f"{p.status}{', inferred' if p.inferred else ''}{f', since {p.since}' if p.since else ''}"
        notes.append(f"Position: {p.step.title} [{p.step.kind}] ({state})." + (f" Evidence: {facts}." if facts else ""))
    if not pathway.position:
        notes.append("Position: not started (no step of this pathway is documented yet).")
    for line in pathway.off_pathway:
        notes.append(f"Off-pathway: line {line.line} ({line.regimen}) from {line.start[:10]}: {line.reason}.")
    if pathway.citations:
        notes.append("Sources: " + _sources(pathway.citations))
    if out.deceased is not None:
        notes.append(_deceased_note(out))
    notes.append(out.disclaimer)
    return notes


def _deceased_note(out: NavigationOut) -> str:
    died = out.deceased
    assert died is not None
    when = f" on {died.date[:10]}" if died.date else ""
    return (
        f"Patient deceased{when} (recorded in {died.source}): no next steps are proposed and no care gap is "
        "urgent; the record is read as of the death."
    )


class _TaskMaker:
    """The Task each leaf action proposes (R4 rqg-1: an action has a resource or sub-actions)."""

    def __init__(self, builder: _Bundle, patient: str, at: str, reason: str | None, key: str) -> None:
        self.builder, self.patient, self.at, self.reason, self.key = builder, patient, at, reason, key

    def __call__(self, what: str, code: list[JSON], description: str, priority: str, due: str | None = None) -> JSON:
        task: JSON = {
            "resourceType": "Task",
            "id": self.builder.id(f"task|{self.key}|{what}"),
            "status": "draft",
            "intent": "proposal",
            "priority": priority,
            "code": code[0],
            "description": description,
            "for": _patient(self.patient),
            "authoredOn": self.at,
        }
        if self.reason:
            task["reasonReference"] = {"reference": self.reason}
        if due:
            task["restriction"] = {"period": {"end": due}}
        return self.builder.add(task)


def _next_step_action(step: NextStepOut, task: _TaskMaker, *, deceased: bool = False) -> JSON:
    priority = "urgent" if step.overdue and not deceased else "routine"
    code = [_step_code(step.step.id, step.step.title), _concept(STEP_KIND_SYSTEM, step.step.kind)]
    action: JSON = {
        "prefix": "Overdue" if step.overdue else "Next step",
        "title": step.step.title,
        "description": step.reason,
        "code": code,
        "priority": priority,
        "type": _concept(ACTION_TYPE, "create"),
        "resource": task(f"step|{step.step.id}", code, f"{step.step.title}: {step.reason}", priority, step.due),
    }
    if step.due:
        action["timingDateTime"] = step.due
    return action


def _gap_action(gap: GapOut, task: _TaskMaker, *, deceased: bool = False) -> JSON:
    priority = "routine" if deceased else GAP_PRIORITY.get(gap.kind, "routine")
    code = [_concept(CARE_GAP_SYSTEM, gap.kind), _step_code(gap.step.id, gap.step.title)]
    return {
        "prefix": "Care gap",
        "title": gap.step.title,
        "description": gap.reason,
        "code": code,
        "priority": priority,
        "resource": task(f"gap|{gap.kind}|{gap.step.id}", code, f"{gap.step.title}: {gap.reason}", priority),
    }


def _group(title: str, actions: list[JSON]) -> JSON | None:
    if not actions:
        return None
    return {"title": title, "groupingBehavior": "logical-group", "selectionBehavior": "all", "action": actions}


# --- necessity -------------------------------------------------------------------------------


def _necessity_response(
    builder: _Bundle, out: NecessityOut, d: DeterminationOut, at: str, request_id: str | None
) -> None:
    order = d.order.reference
    key = f"{order}|{d.pathway}"
    first = len(builder.entries)
    canonical = pathway_canonical(*d.pathway.split("@", 1)) if d.pathway and "@" in d.pathway else None
    undocumented = _deciding_leaves(d) if d.determination == "insufficient-documentation" else []
    issues = [_issue("warning", "incomplete", f"Not documented: {label}") for label, _ in undocumented]
    no_pathway = d.determination == "not-on-any-pathway" and d.needs_review
    if no_pathway:
        issues.append(_issue("warning", "not-found", "No care pathway applies to this patient's recorded cancers."))
    if d.needs_review and not no_pathway:
        issues.append(
            _issue(
                "information",
                "informational",
                "Free-text criteria could not be decided; the most relevant note passages are in the JSON output "
                "for a reviewer.",
            )
        )
    status = "success"
    if no_pathway:
        status = "failure"
    elif d.determination == "insufficient-documentation":
        status = "data-required"
    cancer = _cancer_reference(d.criteria)
    request_group: JSON = {
        "resourceType": "RequestGroup",
        "id": builder.id(f"request-group|{key}"),
        "status": "draft",
        "intent": "proposal",
        "subject": _patient(out.patient),
        "authoredOn": at,
        "basedOn": [{"reference": order}],
        "reasonReference": [{"reference": cancer}] if cancer else [],
        "note": [{"text": out.disclaimer}],
        "action": _determination_actions(d, _TaskMaker(builder, out.patient, at, cancer, key)),
    }
    if canonical:
        request_group["instantiatesCanonical"] = [canonical]
    if not request_group["reasonReference"]:
        del request_group["reasonReference"]
    result = builder.add(request_group)
    module = (
        {"moduleCanonical": canonical}
        if canonical
        else {"moduleCodeableConcept": _module_concept("medical-necessity", "OncoTwin medical-necessity review")}
    )
    response = _response(
        builder.id(f"response|{key}"),
        out.patient,
        at,
        request_id,
        module=module,
        status=status,
        performer="OncoTwin Medical-Necessity twin (demonstration)",
    )
    # R4 GuidanceResponse.reasonReference: Condition | Observation | DiagnosticReport | DocumentReference only;
    # the order is the RequestGroup's basedOn and action resource, its code the reasonCode.
    if cancer:
        response["reasonReference"] = [{"reference": cancer}]
    code = d.order.code
    if code.code:
        response["reasonCode"] = [_concept(code.system, code.code, code.display)]
    response["note"] = [{"text": t} for t in _necessity_notes(out, d)]
    if issues:
        response["evaluationMessage"] = [builder.outcome(f"messages|{key}", issues)]
    response["outputParameters"] = builder.add(_parameters(builder.id(f"parameters|{key}"), d))
    response["result"] = result
    requirements = [r for label, fact in undocumented if (r := _data_requirement(fact, label)) is not None]
    if requirements:
        response["dataRequirement"] = _unique(requirements)
    builder.add(response, first)


def _necessity_notes(out: NecessityOut, d: DeterminationOut) -> list[str]:
    what = d.order.code.display or d.order.code.code
    notes = [
        f"Determination for {what} ({d.order.reference}): {d.determination} (confidence {d.confidence}"
        f"{'; needs review by a person' if d.needs_review else ''}).",
        d.rationale,
    ]
    if d.deciding:
        notes.append("Deciding criteria: " + "; ".join(d.deciding) + ".")
    if d.pathway and d.option:
        notes.append(f"Pathway option: {d.option} on {d.pathway}.")
    if d.citations:
        notes.append("Sources: " + _sources(d.citations))
    notes.append(out.disclaimer)
    return notes


def _determination_actions(d: DeterminationOut, task: _TaskMaker) -> list[JSON]:
    """The order's action (its ``resource``; the pathway option as a second code and in the description),
    then one action per criterion to document, each proposing a Task (rqg-1: resource or sub-actions)."""
    what = d.order.code.display or d.order.code.code or d.order.reference
    description = [d.rationale]
    best = d.criteria.children[0] if d.criteria and d.criteria.children else None
    codes = [_concept(DETERMINATION_SYSTEM, d.determination)]
    if d.option and best is not None:
        which = "Pathway option" if d.determination == "meets" else "Closest pathway option"
        description.append(f"{which}: {best.label} ({d.option} on {d.pathway}: criteria {best.status}).")
        codes.append(_step_code(d.option, best.label))
    leaves = _deciding_leaves(d)
    if d.determination == "does-not-meet" and leaves:
        description.append("Not met: " + "; ".join(label for label, _ in leaves) + ".")
    action: JSON = {
        "prefix": "Medical necessity",
        "title": f"{DETERMINATION_TITLE[d.determination]}: {what}",
        "description": " ".join(description),
        "code": codes,
        "priority": "routine",
        "resource": {"reference": d.order.reference},
    }
    if d.citations:
        action["documentation"] = [
            {"type": "citation", "label": c.section, "display": c.title, "url": c.url} for c in d.citations
        ]
    actions = [action]
    if d.determination == "insufficient-documentation":
        for label, fact in leaves:
            code = [_concept(CRITERION_SYSTEM, fact)] if fact else [{"text": label}]
            actions.append(
                {
                    "prefix": "Document",
                    "title": label,
                    "code": code,
                    "priority": "routine",
                    "resource": task(f"document|{label}", code, f"Document: {label} (for {what})", "routine"),
                }
            )
    return actions


def _parameters(resource_id: str, d: DeterminationOut) -> JSON:
    parameter: list[JSON] = [
        {"name": "order", "valueReference": {"reference": d.order.reference}},
        {"name": "determination", "valueCode": d.determination},
        {"name": "confidence", "valueDecimal": d.confidence},
        {"name": "needsReview", "valueBoolean": d.needs_review},
    ]
    if d.pathway:
        parameter.append({"name": "pathway", "valueString": d.pathway})
    if d.option:
        parameter.append({"name": "option", "valueString": d.option})
    parameter += [{"name": "deciding", "valueString": label} for label in d.deciding]
    return {"resourceType": "Parameters", "id": resource_id, "parameter": parameter}


def _deciding_leaves(d: DeterminationOut) -> list[tuple[str, str | None]]:
    """The deciding criteria with the fact each reads (from the best route's leaves), in order."""
    facts: dict[str, str | None] = {}
    best = d.criteria.children[0] if d.criteria and d.criteria.children else d.criteria
    for leaf in _leaves(best):
        facts.setdefault(leaf.label, leaf.fact)
    out = []
    for label in d.deciding:
        bare = label[4:] if label.startswith("not ") and label not in facts else label
        out.append((label, facts.get(bare)))
    return out


def _leaves(node: CriterionOut | None) -> Iterable[CriterionOut]:
    if node is None:
        return
    if node.op == "leaf":
        yield node
    for child in node.children:
        yield from _leaves(child)


def _cancer_reference(tree: CriterionOut | None) -> str | None:
    """The Condition the best route was evaluated for: the evidence of its satisfied cancer leaf."""
    best = tree.children[0] if tree and tree.children else tree
    for leaf in _leaves(best):
        if leaf.fact == "cancer" and leaf.status == "satisfied":
            for e in leaf.evidence:
                if e.source.startswith("Condition/"):
                    return e.source
    return None


def _data_requirement(fact: str | None, label: str) -> JSON | None:
    """What data would decide a criterion over ``fact`` (a pathway condition's fact), with the codes we read."""
    if fact is None:
        return None
    terms = terminology()
    codes: list[Code] = []
    if fact == "biomarker":
        name = terms.biomarker_from_text(label)
        codes = terms.observation_codes("biomarker", name=name) if name else []
        if name and name in terms.genes_hgnc.values():
            codes += terms.observation_codes("variant")  # gene results come as variant observations
    elif fact == "stage":
        codes = terms.observation_codes("staging", part="group")
    elif fact == "tnm":
        codes = [c for p in ("t", "n", "m") for c in terms.observation_codes("staging", part=p)]
    elif fact == "metastatic":
        codes = [c for p in ("group", "m") for c in terms.observation_codes("staging", part=p)]
    elif fact == "performance":
        codes = terms.observation_codes("performance")
    elif fact == "disease_status":
        codes = terms.observation_codes("disease-status")
    resource_type = {
        "cancer": "Condition",
        "age": "Patient",
        "sex": "Patient",
        "therapy": "MedicationRequest",
        "procedure": "Procedure",
        "imaging": "ImagingStudy",
    }.get(fact, "Observation")
    requirement: JSON = {"type": resource_type}
    if codes:
        requirement["codeFilter"] = [{"path": "code", "code": [{"system": c.system, "code": c.code} for c in codes]}]
    return requirement


# --- shared pieces ---------------------------------------------------------------------------


def parse_format(raw: str | None) -> str:
    """The ``format`` parameter of the evaluate endpoints: ``json`` (default) or ``fhir``."""
    value = (raw or "json").strip().lower()
    if value not in FORMATS:
        raise InvalidInput("query parameter format must be json or fhir", issue_code="value")
    return value


def pathway_canonical(pathway_id: str, version: str) -> str:
    """The canonical of a pathway's PlanDefinition (as ``oncotwin graph export`` writes it), versioned."""
    return f"{BASE}/PlanDefinition/{pathway_id}|{version}"


class _Bundle:
    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.entries: list[JSON] = []

    def id(self, what: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.seed}|{what}"))

    def add(self, resource: JSON, position: int | None = None) -> JSON:
        """Add a resource (at ``position``, else last); the reference to it."""
        url = f"urn:uuid:{resource['id']}"
        self.entries.insert(len(self.entries) if position is None else position, {"fullUrl": url, "resource": resource})
        return {"reference": url, "type": resource["resourceType"]}

    def outcome(self, what: str, issues: list[JSON]) -> JSON:
        return self.add({"resourceType": "OperationOutcome", "id": self.id(f"outcome|{what}"), "issue": issues})

    def bundle(self, at: str) -> JSON:
        bundle: JSON = {"resourceType": "Bundle", "id": self.id("bundle"), "type": "collection", "timestamp": at}
        if self.entries:  # FHIR JSON has no empty arrays
            bundle["entry"] = [_prune(e) for e in self.entries]
        return bundle


def _response(
    resource_id: str,
    patient: str,
    at: str,
    request_id: str | None,
    *,
    module: JSON,
    status: str,
    performer: str,
) -> JSON:
    response: JSON = {"resourceType": "GuidanceResponse", "id": resource_id}
    if request_id:
        response["requestIdentifier"] = {"system": REQUEST_ID_SYSTEM, "value": request_id}
    response.update(module)
    response.update(
        {
            "status": status,
            "subject": _patient(patient),
            "occurrenceDateTime": at,
            "performer": {"display": performer},
        }
    )
    return response


def _patient(patient: str) -> JSON:
    return {"reference": f"Patient/{patient}"}


def _concept(system: str, code: str, display: str | None = None) -> JSON:
    coding: JSON = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _step_code(step_id: str, title: str | None) -> JSON:
    return _concept(STEP_SYSTEM, step_id, title)


def _module_concept(code: str, text: str) -> JSON:
    return {"coding": [{"system": MODULE_SYSTEM, "code": code, "display": text}], "text": text}


def _issue(severity: str, code: str, diagnostics: str) -> JSON:
    return {"severity": severity, "code": code, "diagnostics": diagnostics}


def _sources(citations: Iterable[Any]) -> str:
    return " ".join(f"[{i}] {c.title} ({c.publisher}), {c.section}: {c.url}." for i, c in enumerate(citations, start=1))


def _unique(items: list[JSON]) -> list[JSON]:
    seen: list[JSON] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _prune(value: Any) -> Any:
    """Drop empty strings, lists and objects (FHIR forbids them), e.g. a citation without a section."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ("", [], {}, None)}
    if isinstance(value, list):
        return [v for v in (_prune(v) for v in value) if v not in ("", [], {}, None)]
    if isinstance(value, str):
        return value.strip()
    return value


def _instant(when: datetime | None) -> str:
    at = when or datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")
