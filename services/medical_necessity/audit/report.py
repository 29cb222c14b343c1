"""Audit reports: JSON (one row per order), CSV, and a self-contained HTML summary (inline SVG)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from html import escape
from typing import Any

from services.medical_necessity.audit.store import AuditOrder

FORMATS = ("json", "csv", "html")
CSV_COLUMNS = (
    "input",
    "patient",
    "order_reference",
    "code_system",
    "code",
    "display",
    "cancer",
    "state",
    "determination",
    "confidence",
    "needs_review",
    "pathway",
    "error",
)
HTML_ROWS = 2000  # the table shows this many; the CSV/JSON reports hold them all
CHART_BARS = 15
COLOURS = {
    "meets": "#2e7d32",
    "does-not-meet": "#c62828",
    "insufficient-documentation": "#f9a825",
    "not-on-any-pathway": "#6d4c41",
    "error": "#455a64",
    "pending": "#90a4ae",
    "cancelled": "#b0bec5",
}


def outcome(row: AuditOrder) -> str:
    """The determination, else the row's state (error, pending, cancelled)."""
    return row.determination or row.state


def report_json(status: dict[str, Any], rows: Sequence[AuditOrder]) -> dict[str, Any]:
    return {
        "audit": {
            "id": status["id"],
            "state": status["state"],
            "started": status["created"],
            "finished": status["finished"],
            "counts": {
                "orders": len(rows),
                "byState": dict(Counter(r.state for r in rows)),
                "byDetermination": dict(Counter(r.determination for r in rows if r.determination)),
            },
        },
        "rows": [
            {
                "input": r.input,
                "patient": r.patient,
                "order": {"reference": r.reference, "code": {"system": r.system, "code": r.code, "display": r.display}}
                if r.reference
                else None,
                "determination": r.determination,
                "confidence": r.confidence,
                "error": r.error,
            }
            for r in rows
        ],
    }


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet would run a cell starting with these as a formula (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(rows: Sequence[AuditOrder]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        values = (r.input, r.patient, r.reference, r.system, r.code, r.display, r.cancer, r.state)
        rest = (r.determination, r.confidence, r.needs_review, r.pathway, r.error)
        writer.writerow([_cell(v) for v in (*values, *rest)])
    return out.getvalue()


def bar_chart(title: str, counts: Counter[str], colour_of: dict[str, str] | None = None) -> str:
    """A horizontal bar chart as inline SVG (no script, no external asset)."""
    items = counts.most_common(CHART_BARS)
    if not items:
        return f"<h3>{escape(title)}</h3><p>none</p>"
    top = max(n for _, n in items)
    row_h, label_w, bar_w = 22, 260, 360
    height = row_h * len(items) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 60}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">'
    ]
    for i, (name, n) in enumerate(items):
        y = 4 + i * row_h
        width = max(1, round(bar_w * n / top))
        colour = (colour_of or {}).get(name, "#1565c0")
        shown = name if len(name) <= 40 else name[:39] + "\u2026"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{escape(shown)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width}" height="{row_h - 6}" fill="{colour}"/>'
            f'<text x="{label_w + width + 4}" y="{y + 15}" font-size="12">{n}</text>'
        )
    parts.append("</svg>")
    more = f"<p>{len(counts) - CHART_BARS} more not shown</p>" if len(counts) > CHART_BARS else ""
    return f"<h3>{escape(title)}</h3>{''.join(parts)}{more}"


def report_html(status: dict[str, Any], rows: Sequence[AuditOrder]) -> str:
    by_outcome = Counter(outcome(r) for r in rows)
    by_cancer = Counter(r.cancer or "unknown" for r in rows if r.reference)
    by_drug = Counter(r.display or r.code or "unknown" for r in rows if r.reference)
    table = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape('' if v is None else str(v))}</td>"
            for v in (r.input, r.patient, r.reference, r.display or r.code, r.cancer, outcome(r), r.confidence, r.error)
        )
        + "</tr>"
        for r in rows[:HTML_ROWS]
    )
    cut = (
        f"<p>First {HTML_ROWS} of {len(rows)} rows; the CSV and JSON reports hold all.</p>"
        if len(rows) > HTML_ROWS
        else ""
    )
    summary = "".join(f"<li>{escape(k)}: {n}</li>" for k, n in sorted(by_outcome.items()))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Necessity audit {escape(status["id"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}</style></head><body>
<h1>Medical-necessity audit</h1>
<p>Audit {escape(status["id"])}: {escape(status["state"])}; started {escape(status["created"] or "")},
finished {escape(status["finished"] or "not yet")}; {len(rows)} rows.</p>
<ul>{summary}</ul>
<p><em>Determinations against demonstration pathways written from public sources; not reviewed by a
clinical team. A clinician decides.</em></p>
{bar_chart("By determination", by_outcome, COLOURS)}
{bar_chart("By cancer", by_cancer)}
{bar_chart("By drug or service", by_drug)}
<h2>Orders</h2>{cut}
<table><tr><th>input</th><th>patient</th><th>order</th><th>item</th><th>cancer</th><th>determination</th>
<th>confidence</th><th>error</th></tr>{table}</table>
</body></html>
"""


def render(fmt: str, status: dict[str, Any], rows: Sequence[AuditOrder]) -> tuple[str, str]:
    """(body, media type) of the report in ``fmt``."""
    import json

    if fmt == "csv":
        return report_csv(rows), "text/csv; charset=utf-8"
    if fmt == "html":
        return report_html(status, rows), "text/html; charset=utf-8"
    return json.dumps(report_json(status, rows), indent=2), "application/json"
