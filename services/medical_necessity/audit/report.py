"""Audit reports: JSON (one row per order), CSV, and a self-contained HTML report (inline SVG charts,
filters in a few lines of plain inline JavaScript, each row's evidence in a ``details`` element).

Every row carries what a reviewer needs to act on it: the pathway the determination was made
against, the option, the deciding criteria, the missing facts (``insufficient-documentation``),
the rationale and the evidence (FHIR references). Rows written before these were stored report
them empty.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence
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
    "option",
    "deciding",
    "missing_facts",
    "rationale",
    "evidence",
    "error",
)
LIST_SEPARATOR = " | "  # between the items of a list in one CSV cell
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
NO_PATHWAY, UNDETERMINED = "none", "undetermined"

# The HTML report's only style and script, inline (it must work offline, as a single file). The
# API serves it with a Content-Security-Policy that allows exactly these two by hash (HTML_CSP).
STYLE = """body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
form{margin:1em 0}label{margin-right:1em}summary{cursor:pointer}
dl{margin:.3em 0;max-width:60em}dt{font-weight:bold;margin-top:.3em}dd{margin-left:1em}
dd ul{margin:0;padding-left:1.2em}"""
SCRIPT = """(function () {
  var form = document.getElementById("filters");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#orders tbody tr"));
  var shown = document.getElementById("shown");
  var keys = ["determination", "pathway", "drug"];
  function apply() {
    var count = 0;
    rows.forEach(function (row) {
      var ok = keys.every(function (k) {
        var want = form.elements[k].value;
        return !want || row.getAttribute("data-" + k) === want;
      });
      row.hidden = !ok;
      if (ok) { count += 1; }
    });
    shown.textContent = count + " of " + rows.length + " rows shown";
  }
  form.addEventListener("change", apply);
  form.addEventListener("reset", function () { window.setTimeout(apply, 0); });
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  form.hidden = false;
  apply();
})();"""


def _source_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


HTML_CSP = (
    f"default-src 'none'; script-src {_source_hash(SCRIPT)}; style-src {_source_hash(STYLE)}; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def outcome(row: AuditOrder) -> str:
    """The determination, else the row's state (error, pending, cancelled)."""
    return row.determination or row.state


def pathway_of(row: AuditOrder) -> str:
    """The pathway the determination was made against; ``none`` when determined against none
    (not on any pathway), ``undetermined`` for rows without a determination (error, pending)."""
    return row.pathway or (NO_PATHWAY if row.determination else UNDETERMINED)


def drug_of(row: AuditOrder) -> str:
    """The ordered drug or service; empty for an input that could not be read."""
    return (row.display or row.code or "unknown") if row.reference else ""


def references(evidence: Iterable[Any]) -> list[str]:
    """The FHIR references of a row's evidence, each once."""
    found = (e.get("reference") for e in evidence if isinstance(e, dict))
    return list(dict.fromkeys(r for r in found if isinstance(r, str) and r))


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
                "byPathway": dict(Counter(pathway_of(r) for r in rows if r.reference)),
            },
        },
        "rows": [_json_row(r) for r in rows],
    }


def _json_row(r: AuditOrder) -> dict[str, Any]:
    detail = r.details
    return {
        "input": r.input,
        "patient": r.patient,
        "order": {"reference": r.reference, "code": {"system": r.system, "code": r.code, "display": r.display}}
        if r.reference
        else None,
        "determination": r.determination,
        "confidence": r.confidence,
        "needsReview": r.needs_review,
        "pathway": r.pathway,
        "option": detail["option"],
        "deciding": detail["deciding"],
        "missingFacts": detail["missing"],
        "rationale": detail["rationale"],
        "evidence": detail["evidence"],
        "error": r.error,
    }


def _cell(value: Any) -> str:
    if isinstance(value, list):
        value = LIST_SEPARATOR.join(str(v) for v in value)
    text = "" if value is None else str(value)
    # A spreadsheet would run a cell starting with these as a formula (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(rows: Sequence[AuditOrder]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        detail = r.details
        values = (r.input, r.patient, r.reference, r.system, r.code, r.display, r.cancer, r.state)
        result = (r.determination, r.confidence, r.needs_review, r.pathway, detail["option"])
        review = (detail["deciding"], detail["missing"], detail["rationale"], references(detail["evidence"]))
        writer.writerow([_cell(v) for v in (*values, *result, *review, r.error)])
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


def _text(value: Any) -> str:
    return escape("" if value is None else str(value))


def _items(values: Iterable[str]) -> str:
    listed = "".join(f"<li>{_text(v)}</li>" for v in values)
    return f"<ul>{listed}</ul>" if listed else "none"


def _evidence_items(evidence: Sequence[Any]) -> str:
    lines = []
    for e in evidence:
        if not isinstance(e, dict):
            continue
        extra = ", ".join(str(e[k]) for k in ("value", "date") if e.get(k))
        lines.append(f"{e.get('reference', '')} ({e.get('criterion', '')}{': ' + extra if extra else ''})")
    return _items(lines)


def _details(r: AuditOrder) -> str:
    """A row's evidence, folded: option, deciding criteria, missing facts, rationale, references."""
    if not r.reference:
        return ""
    detail = r.details
    parts = [
        f"<dt>Pathway</dt><dd>{_text(r.pathway or 'none')}</dd>",
        f"<dt>Option</dt><dd>{_text(detail['option'] or 'none')}</dd>",
        f"<dt>Deciding criteria</dt><dd>{_items(detail['deciding'])}</dd>",
        f"<dt>Missing facts</dt><dd>{_items(detail['missing'])}</dd>",
        f"<dt>Rationale</dt><dd>{_text(detail['rationale'] or 'not recorded')}</dd>",
        f"<dt>Evidence</dt><dd>{_evidence_items(detail['evidence'])}</dd>",
    ]
    if r.error:
        parts.append(f"<dt>Error</dt><dd>{_text(r.error)}</dd>")
    return f"<details><summary>evidence</summary><dl>{''.join(parts)}</dl></details>"


def _select(name: str, title: str, values: Iterable[str]) -> str:
    options = "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in sorted(set(values)) if v)
    return f'<label>{escape(title)} <select name="{name}"><option value="">all</option>{options}</select></label>'


def _table_row(r: AuditOrder) -> str:
    cells = (r.input, r.patient, r.reference, drug_of(r), pathway_of(r), outcome(r), r.confidence, r.error)
    data = f'data-determination="{escape(outcome(r))}" data-pathway="{escape(pathway_of(r))}" '
    data += f'data-drug="{escape(drug_of(r))}"'
    return f"<tr {data}>{''.join(f'<td>{_text(v)}</td>' for v in cells)}<td>{_details(r)}</td></tr>"


def report_html(status: dict[str, Any], rows: Sequence[AuditOrder]) -> str:
    by_outcome = Counter(outcome(r) for r in rows)
    by_pathway = Counter(pathway_of(r) for r in rows if r.reference)
    by_drug = Counter(drug_of(r) for r in rows if r.reference)
    shown = rows[:HTML_ROWS]
    table = "".join(_table_row(r) for r in shown)
    cut = (
        f"<p>First {HTML_ROWS} of {len(rows)} rows; the CSV and JSON reports hold all.</p>"
        if len(rows) > HTML_ROWS
        else ""
    )
    filters = (
        '<form id="filters" hidden>'
        + _select("determination", "Determination", (outcome(r) for r in shown))
        + _select("pathway", "Pathway", (pathway_of(r) for r in shown))
        + _select("drug", "Drug or service", (drug_of(r) for r in shown))
        + '<button type="reset">show all</button> <output id="shown"></output></form>'
    )
    summary = "".join(f"<li>{escape(k)}: {n}</li>" for k, n in sorted(by_outcome.items()))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Necessity audit {escape(status["id"])}</title>
<style>{STYLE}</style></head><body>
<h1>Medical-necessity audit</h1>
<p>Audit {escape(status["id"])}: {escape(status["state"])}; started {escape(status["created"] or "")},
finished {escape(status["finished"] or "not yet")}; {len(rows)} rows.</p>
<ul>{summary}</ul>
<p><em>Determinations against demonstration pathways written from public sources; not reviewed by a
clinical team. A clinician decides.</em></p>
{bar_chart("By determination", by_outcome, COLOURS)}
{bar_chart("By pathway", by_pathway)}
{bar_chart("By drug or service", by_drug)}
<h2>Orders</h2>{cut}
{filters}
<table id="orders"><thead><tr><th>input</th><th>patient</th><th>order</th><th>item</th><th>pathway</th>
<th>determination</th><th>confidence</th><th>error</th><th>review</th></tr></thead>
<tbody>{table}</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""


def render(fmt: str, status: dict[str, Any], rows: Sequence[AuditOrder]) -> tuple[str, str]:
    """(body, media type) of the report in ``fmt``."""
    if fmt == "csv":
        return report_csv(rows), "text/csv; charset=utf-8"
    if fmt == "html":
        return report_html(status, rows), "text/html; charset=utf-8"
    return json.dumps(report_json(status, rows), indent=2), "application/json"
