"""Plain-text rendering of necessity determinations for the terminal (``oncotwin necessity --format text``)."""

from __future__ import annotations

from services.medical_necessity.contract import CriterionOut, DeterminationOut, NecessityOut

MARK = {"satisfied": "[met]  ", "unsatisfied": "[NOT]  ", "unknown": "[?]    "}
MAX_EVIDENCE = 2
MAX_PASSAGE = 160


def render_text(necessity: NecessityOut) -> str:
    out = [f"Patient {necessity.patient}  medical-necessity review"]
    for d in necessity.determinations:
        out.extend(_determination(d))
    if not necessity.determinations:
        out.append("  No draft or active oncology order to review.")
    out.append(necessity.disclaimer)
    return "\n".join(out)


def _determination(d: DeterminationOut) -> list[str]:
    o = d.order
    authored = f", authored {o.authored[:10]}" if o.authored else ""
    review = "  NEEDS REVIEW" if d.needs_review else ""
    out = [
        "",
        f"Order {o.reference}: {o.code.display or o.code.code} ({o.status or 'status ?'}{authored})",
        f"  Determination: {d.determination.upper()}  (confidence {d.confidence}){review}",
    ]
    if d.pathway:
        out.append(f"  Pathway: {d.pathway}, option {d.option}")
    if d.deciding:
        out.append("  Deciding criteria:")
        out.extend(f"    - {label}" for label in d.deciding)
    if d.criteria is not None and d.criteria.children:
        best, others = d.criteria.children[0], len(d.criteria.children) - 1
        out.append("  Criteria (best route):")
        out.extend(_criterion(best, 2))
        if others:
            out.append(f"    ... {others} other route(s) to the same item (see --format json)")
    out.append(f"  Rationale: {d.rationale}")
    if d.citations:
        out.append("  Sources:")
        for i, c in enumerate(d.citations, start=1):
            out.append(f"    [{i}] {c.title} ({c.publisher}), {c.section}. {c.url}")
    return out


def _criterion(node: CriterionOut, depth: int) -> list[str]:
    pad = "  " * depth
    if node.op != "leaf":
        head = {"all": "all of", "any": "any of", "not": "not"}.get(node.op, node.op)
        out = [f"{pad}{MARK.get(node.status, '')}{head}: {node.label}"]
        for child in node.children:
            out.extend(_criterion(child, depth + 1))
        return out
    out = [f"{pad}{MARK.get(node.status, '')}{node.label}"]
    for e in node.evidence[:MAX_EVIDENCE]:
        value = f": {e.value}" if e.value else ""
        date = f", {e.date[:10]}" if e.date else ""
        out.append(f"{pad}         {e.fact}{value} ({e.source}{date})")
    if node.judgement is not None:
        j = node.judgement
        votes = f" votes {', '.join(j.votes)}" if j.votes else ""
        out.append(f"{pad}         judge {j.judge}: {j.verdict}{votes}{f' - {j.rationale}' if j.rationale else ''}")
    for p in node.passages[:MAX_EVIDENCE]:
        text = p.text if len(p.text) <= MAX_PASSAGE else p.text[: MAX_PASSAGE - 3] + "..."
        out.append(f'{pad}         passage ({p.source}, {p.date or "undated"}): "{text}"')
    return out
