"""Plain-text rendering of a timeline for the terminal (``oncotwin timeline --format text``)."""

from __future__ import annotations

from services.clinical_history.contract import Timeline


def render_text(timeline: Timeline) -> str:
    p = timeline.patient
    out = [f"Patient {p.id}  born {p.birth_date or '?'}  {p.gender or ''}".rstrip()]
    if p.deceased:
        out.append(f"  deceased {p.deceased}")
    out.append("Cancers:")
    for c in timeline.cancers or []:
        stage = f"stage {c.stage.stage} ({c.stage.kind})" if c.stage else "stage not recorded"
        out.append(f"  - {c.code.display or c.code.code} [{c.cancer_type}, {c.role}] onset {c.onset or '?'}; {stage}")
        for b in c.biomarkers:
            out.append(f"      {b.date or '?':<25} {b.name}: {b.value or b.status}")
    if not timeline.cancers:
        out.append("  (none recorded)")
    out.append("Lines of therapy:")
    for line in timeline.lines_of_therapy:
        out.append(f"  {line.line}. {line.regimen}  {line.start[:10]} -> {line.end[:10]}  ({line.exposures} exposures)")
    if not timeline.lines_of_therapy:
        out.append("  (none)")
    out.append(f"Events ({len(timeline.events)}):")
    for e in timeline.events:
        marks = "".join(
            [" [text]" if e.from_text else "", " [negated]" if e.negated else "", " [uncertain]" if e.uncertain else ""]
        )
        out.append(f"  {(e.date or '?')[:10]:<10}  {e.kind:<14} {e.display}{marks}")
    if timeline.issues:
        out.append(f"Issues ({len(timeline.issues)}):")
        out.extend(f"  {i.severity}: {i.path}: {i.message}" for i in timeline.issues)
    out.append(timeline.disclaimer)
    return "\n".join(out)
