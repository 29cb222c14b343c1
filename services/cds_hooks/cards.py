"""Engine results -> CDS Hooks 2.0 cards, suggestions and system actions.

Content rules: a ``summary`` under 140 characters; ``detail`` in GitHub Markdown where every value
that came from the patient's data is escaped (a code display must not become a link or markup in
the EHR); ``source`` is the pathway's citation; links are absolute. Indicators never exceed
``warning``: the pathways are demonstration content, not reviewed guidance that could justify
``critical`` (a hard stop in many EHRs).

Necessity results also become a ``systemActions`` ``update`` of each evaluated draft order carrying
the Da Vinci CRD (STU 2.1) coverage-information extension (``crd``) when the client gave the
patient's Coverage (the extension's ``coverage`` is 1..1); a draft that does not meet gets
on-pathway alternatives as suggestions (``suggestions``).
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Any
from urllib.parse import quote

from graph.facts import SATISFIED
from graph.queries import PathwayQueries
from services.care_navigation.contract import NavigationOut, PathwayOut
from services.cds_hooks.crd import coverage_reference, with_coverage_information
from services.cds_hooks.suggestions import suggestions as alternatives
from services.medical_necessity.contract import CriterionOut, DeterminationOut, NecessityOut
from shared.fhir.record import PatientRecord

OVERRIDE_SYSTEM = "urn:oncotwin:cds-override-reason"
SUMMARY_MAX = 139
MAX_EVIDENCE = 10
SOURCE_LABEL = "OncoTwin care pathways (demonstration)"
INDICATOR = {
    "meets": "info",
    "insufficient-documentation": "warning",
    "does-not-meet": "warning",
    "not-on-any-pathway": "warning",
}
HEADLINE = {
    "meets": "meets the {pathway} pathway",
    "insufficient-documentation": "pathway criteria not documented",
    "does-not-meet": "does not meet the {pathway} pathway",
    "not-on-any-pathway": "not an option of any pathway that applies",
}
OVERRIDE_REASONS = (
    ("clinical-judgement", "Clinical judgement: pathway does not fit this patient"),
    ("documented-elsewhere", "Criteria documented outside the record checked"),
    ("patient-preference", "Patient preference"),
    ("trial", "Enrolled in or screening for a clinical trial"),
)
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>|~])")
_LINE_START = re.compile(r"^(\d+)([.)])|^([#+=>-])")
_SAFE_URL = re.compile(r"^https://[^\s()<>\[\]]+$")


def md(text: object) -> str:
    """Patient-derived text as inert Markdown: one line, every markup character escaped."""
    escaped = _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))
    return _LINE_START.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", escaped)  # no list/heading


def summary(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "\u2026"


def dashboard_link(base: str | None, patient_id: str) -> dict[str, str] | None:
    if base is None:
        return None
    url = f"{base}/dashboard/patients/{quote(patient_id, safe='')}"
    return {"label": "Open in the OncoTwin dashboard", "url": url, "type": "absolute"}


def _cite(title: str, section: str, url: str) -> str:
    label = md(f"{title}, {section}" if section else title)
    return f"[{label}]({url})" if _SAFE_URL.match(url) else label


def _source(citations: list[Any]) -> dict[str, str]:
    for c in citations:
        if _SAFE_URL.match(c.url):
            # The whole title: CDS Hooks sets no length on a source label, and a cut one misleads.
            return {"label": f"{c.publisher}: {c.title}" if c.publisher else c.title, "url": c.url}
    return {"label": SOURCE_LABEL}


def _card(
    text: str, indicator: str, detail: str, source: dict[str, str], link: dict[str, str] | None
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary(text),
        "indicator": indicator,
        "detail": detail,
        "source": source,
        "overrideReasons": [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS],
    }
    if link is not None:
        card["links"] = [link]
    return card


# --- care navigation (patient-view) -------------------------------------------------------------


def navigation_cards(nav: NavigationOut, link: dict[str, str] | None) -> list[dict[str, Any]]:
    """One card per pathway (a pathway applied to two cancers shares its card)."""
    grouped: dict[str, list[PathwayOut]] = {}
    for pathway in nav.pathways:
        grouped.setdefault(pathway.id, []).append(pathway)
    died = None
    if nav.deceased is not None:  # the record shows the death; nothing is proposed
        died = f"Patient deceased ({md(nav.deceased.date[:10])})" if nav.deceased.date else "Patient deceased"
    return [_navigation_card(group, nav.disclaimer, link, died) for group in grouped.values()]


def _navigation_card(
    group: list[PathwayOut], disclaimer: str, link: dict[str, str] | None, died: str | None = None
) -> dict[str, Any]:
    first = group[0]
    gaps = [g for p in group for g in p.gaps]
    overdue = [s for p in group for s in p.next_steps if s.overdue]
    off = [o for p in group for o in p.off_pathway]
    at = "; ".join(dict.fromkeys(w.step.title for p in group for w in p.position)) or "not started"
    counts = [f"{len(gaps)} gap{'s' if len(gaps) != 1 else ''}"] if gaps else []
    counts += [f"{len(off)} off-pathway line{'s' if len(off) != 1 else ''}"] if off else []
    text = f"{first.title}: at {at}" + (f" ({', '.join(counts)})" if counts else "")
    sections: list[str] = []
    if died is not None:
        text = f"{first.title}: {died}; last at {at}"
        sections.append(f"**{died}.** No next steps are proposed; the record is read as of the death.")
    for pathway in group:
        sections.append(_pathway_detail(pathway, multiple=len(group) > 1))
    citations = {(c.url, c.section): c for p in group for c in p.citations}
    if citations:
        sections.append(
            "**Sources**\n\n" + "\n".join(f"- {_cite(c.title, c.section, c.url)}" for c in citations.values())
        )
    sections.append(f"_{md(disclaimer)}_")
    indicator = "warning" if (gaps or overdue or off) and died is None else "info"
    return _card(text, indicator, "\n\n".join(sections), _source(list(citations.values())), link)


def _pathway_detail(p: PathwayOut, *, multiple: bool) -> str:
    lines = [f"**{md(p.title)}** (version {p.version}, {md(p.status)})"]  # version: our own 2026.11 style
    if multiple:
        lines.append(f"For {md(p.cancer_code.display or p.cancer_code.code)} ({md(p.cancer)})")
    if p.applies != SATISFIED:
        lines.append("Applies only if the cancer type is confirmed (histology not on record).")
    for w in p.position:
        since = f" since {md(w.since)}" if w.since else ""
        inferred = " (inferred from later care)" if w.inferred else ""
        lines.append(f"- At: {md(w.step.title)}{since}{inferred}")
    if p.next_steps:
        lines.append("\n**Next steps**")
        for s in p.next_steps:
            due = f" due {md(s.due)}" if s.due else ""
            flag = " **overdue**" if s.overdue else ""
            lines.append(f"- {md(s.step.title)}{due}{flag}: {md(s.reason)}")
    if p.gaps:
        lines.append("\n**Care gaps**")
        lines.extend(f"- {md(g.kind)}: {md(g.reason)}" for g in p.gaps)
    if p.off_pathway:
        lines.append("\n**Off-pathway therapy**")
        lines.extend(f"- Line {o.line} ({md(o.regimen)}, from {md(o.start)}): {md(o.reason)}" for o in p.off_pathway)
    return "\n".join(lines)


# --- medical necessity (order-select / order-sign) ------------------------------------------------


def necessity_response(
    out: NecessityOut,
    *,
    record: PatientRecord,
    queries: PathwayQueries,
    drafts: dict[str, dict[str, Any]],
    coverage: dict[str, Any] | None,
    link: dict[str, str] | None,
    today: date,
) -> dict[str, Any]:
    orders = {o.reference: o for o in record.orders}
    cards, actions = [], []
    for det in out.determinations:
        ref = det.order.reference
        card = _necessity_card(det, queries, out.disclaimer, link)
        order, draft = orders.get(ref), drafts.get(ref)
        if det.determination == "does-not-meet" and order is not None and draft is not None:
            suggestions = alternatives(record, queries, order, draft, det)
            if suggestions:
                card["suggestions"] = suggestions
                card["selectionBehavior"] = "at-most-one"
        cards.append(card)
        if draft is not None and coverage is not None and coverage_reference(coverage) is not None:
            # CRD's coverage sub-extension is 1..1 Reference(Coverage): no Coverage, no assertion (see crd.py)
            actions.append(
                {
                    "type": "update",
                    "description": f"Record the pathway assessment ({det.determination}) on the draft order",
                    "resource": with_coverage_information(draft, det, coverage, today),
                }
            )
    response: dict[str, Any] = {"cards": cards}
    if actions:
        response["systemActions"] = actions
    return response


def _pathway_title(queries: PathwayQueries, key: str | None) -> str:
    info = next((i for i in queries.active if i.key == key), None)
    return info.title if info is not None else "care"


def _necessity_card(
    det: DeterminationOut, queries: PathwayQueries, disclaimer: str, link: dict[str, str] | None
) -> dict[str, Any]:
    what = det.order.code.display or det.order.code.code or det.order.reference
    headline = HEADLINE[det.determination].format(pathway=_pathway_title(queries, det.pathway))
    if det.determination in {"insufficient-documentation", "does-not-meet"} and det.deciding:
        headline += f" ({det.deciding[0]})"
    words = det.determination.replace("-", " ")
    parts = [
        f"**Determination:** {words} (confidence {det.confidence:.2f}"
        + (", needs review by a person)" if det.needs_review else ")"),
        md(det.rationale),
    ]
    if det.deciding:
        label = "Not met" if det.determination == "does-not-meet" else "Not documented"
        parts.append(f"**{label}**\n\n" + "\n".join(f"- {md(d)}" for d in det.deciding))
    evidence = _evidence(det.criteria)
    if evidence:
        parts.append("**Evidence in the record**\n\n" + "\n".join(evidence))
    if det.citations:
        parts.append(
            "**Sources**\n\n"
            + "\n".join(f"{i}. {_cite(c.title, c.section, c.url)}" for i, c in enumerate(det.citations, 1))
        )
    parts.append(f"_{md(disclaimer)}_")
    return _card(f"{what}: {headline}", INDICATOR[det.determination], "\n\n".join(parts), _source(det.citations), link)


def _evidence(criteria: CriterionOut | None) -> list[str]:
    """The facts behind the best route (the first alternative of the tree), as references."""
    if criteria is None:
        return []
    best = criteria.children[0] if criteria.op == "any" and criteria.children else criteria
    out: list[str] = []

    def walk(node: CriterionOut) -> None:
        for e in node.evidence:
            value = f": {md(e.value)}" if e.value else ""
            when = f" ({md(e.date)})" if e.date else ""
            line = f"- {md(node.label)} ({md(node.status)}): {md(e.fact)}{value}{when}, {md(e.source)}"
            if line not in out:
                out.append(line)
        for child in node.children:
            walk(child)

    walk(best)
    return out[:MAX_EVIDENCE]
