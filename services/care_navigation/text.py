"""Plain-text rendering of a navigation for the terminal (``oncotwin navigate --format text``)."""

from __future__ import annotations

from services.care_navigation.contract import NavigationOut, PathwayOut

MAX_FACTS = 3


def render_text(navigation: NavigationOut) -> str:
    out = [f"Patient {navigation.patient}  care navigation as of {navigation.as_of}"]
    for pathway in navigation.pathways:
        out.extend(_pathway(pathway))
    if not navigation.pathways:
        out.append("  No care pathway applies to the recorded cancers.")
    out.append(navigation.disclaimer)
    return "\n".join(out)


def _pathway(p: PathwayOut) -> list[str]:
    cancer = p.cancer_code.display or p.cancer_code.code
    applies = "" if p.applies == "satisfied" else f"  (applies: {p.applies}; histology/type not fully documented)"
    out = [
        "",
        f"{p.title} pathway {p.version} [{p.status}]  for {cancer} ({p.cancer}){applies}",
        "  Position:",
    ]
    for pos in p.position:
        marks = f"{pos.status}{', inferred' if pos.inferred else ''}"
        since = f" since {pos.since}" if pos.since else ""
        out.append(f"    - {pos.step.title} [{pos.step.kind}] {marks}{since}")
        for fact in pos.facts[-MAX_FACTS:]:
            value = f": {fact.value}" if fact.value else ""
            out.append(f"        {(fact.date or '?')[:10]:<10}  {fact.fact}{value}  ({fact.source})")
        if len(pos.facts) > MAX_FACTS:
            out.append(f"        ... {len(pos.facts) - MAX_FACTS} earlier facts (see --format json)")
    if not p.position:
        out.append("    (no step documented yet)")
    out.append("  Next steps:")
    for step in p.next_steps:
        due = step.due or "no date"
        flag = "OVERDUE " if step.overdue else ""
        out.append(f"    - due {due:<10}  {flag}{step.step.title} [{step.step.kind}]: {step.reason}")
    if not p.next_steps:
        out.append("    (none)")
    out.append("  Gaps:")
    for gap in p.gaps:
        out.append(f"    - {gap.kind}: {gap.reason}")
    if not p.gaps:
        out.append("    (none)")
    out.append("  Off-pathway lines:")
    for line in p.off_pathway:
        out.append(f"    - line {line.line}: {line.regimen} from {line.start[:10]}: {line.reason}")
    if not p.off_pathway:
        out.append("    (none)")
    if p.citations:
        out.append("  Sources:")
        for i, c in enumerate(p.citations, start=1):
            out.append(f"    [{i}] {c.title} ({c.publisher}), {c.section}. {c.url}")
    return out
