"""Renderings of a pathway: JSON (the pathway file's own shape), DOT and Mermaid for people.

``to_json`` writes exactly what ``graph.loader.pathway_from_dict`` reads (YAML is a superset of
JSON), so an exported or imported pathway can be saved as a pathway file and loaded back equal.
DOT and Mermaid show steps, decisions and options with their edge conditions and timings.
"""

from __future__ import annotations

import json
import re
from typing import Any

from graph.conditions import code_to_json, condition_to_json, describe
from graph.model import Edge, EdgeKind, Node, NodeKind, Pathway

_SHAPES_DOT = {
    NodeKind.STEP: "box",
    NodeKind.DECISION: "diamond",
    NodeKind.REGIMEN: "component",
    NodeKind.ACTIVITY: "ellipse",
}


def to_json(pathway: Pathway) -> dict[str, Any]:
    info = pathway.info
    return {
        "pathway": {
            "id": info.id,
            "version": info.version,
            "title": info.title,
            "status": info.status,
            "disclaimer": info.disclaimer,
            "applies_when": condition_to_json(info.applies_when),
            "start": info.start,
            "cites": [{"source": c.source, "section": c.section} for c in info.cites],
            **({"needs_mapping": list(info.needs_mapping)} if info.needs_mapping else {}),
        },
        "sources": [
            {"id": s.id, "title": s.title, "publisher": s.publisher, "url": s.url, "accessed": s.accessed}
            for s in pathway.sources
        ],
        "nodes": [_node_json(n) for n in pathway.nodes],
        "edges": [_edge_json(e) for e in pathway.edges],
    }


def _node_json(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"id": node.id, "kind": node.kind.value, "title": node.title}
    for name in ("step", "activity"):
        value = getattr(node, name)
        if value is not None:
            out[name] = value.value
    if node.summary:
        out["summary"] = node.summary
    if node.question:
        out["question"] = node.question
    if node.codes:
        out["codes"] = [code_to_json(c) for c in node.codes]
    if node.done_when is not None:
        out["done_when"] = condition_to_json(node.done_when)
    out["cites"] = [{"source": c.source, "section": c.section} for c in node.cites]
    if node.needs_mapping:
        out["needs_mapping"] = list(node.needs_mapping)
    return out


def _edge_json(edge: Edge) -> dict[str, Any]:
    out: dict[str, Any] = {"from": edge.source, "to": edge.target, "kind": edge.kind.value}
    if edge.when is not None:
        out["when"] = condition_to_json(edge.when)
    if edge.otherwise:
        out["otherwise"] = True
    if edge.timing is not None:
        out["timing"] = edge.timing.to_json()
    if edge.label:
        out["label"] = edge.label
    if edge.needs_mapping:
        out["needs_mapping"] = list(edge.needs_mapping)
    return out


def _edge_text(edge: Edge) -> str:
    parts = [edge.label] if edge.label else []
    if edge.when is not None and not edge.label:
        parts.append(describe(edge.when))
    if edge.otherwise and not edge.label:
        parts.append("otherwise")
    if edge.timing is not None:
        parts.append(edge.timing.text)
    if edge.kind in (EdgeKind.INCLUDES, EdgeKind.REQUIRES):
        parts.insert(0, edge.kind.value)
    return "; ".join(parts)


def to_dot(pathway: Pathway) -> str:
    def q(text: str) -> str:
        return json.dumps(text)  # a DOT string literal with quotes and backslashes escaped

    lines = [f"digraph {q(pathway.key)} {{", "  rankdir=TB;", f"  label={q(pathway.info.title + ' (demonstration)')};"]
    for node in pathway.nodes:
        lines.append(f"  {q(node.id)} [label={q(node.title)}, shape={_SHAPES_DOT[node.kind]}];")
    for edge in pathway.edges:
        style = ", style=dashed" if edge.kind in (EdgeKind.INCLUDES, EdgeKind.REQUIRES) else ""
        lines.append(f"  {q(edge.source)} -> {q(edge.target)} [label={q(_edge_text(edge))}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(pathway: Pathway) -> str:
    ids = {n.id: f"n{i}" for i, n in enumerate(pathway.nodes)}

    def text(value: str) -> str:
        return '"' + re.sub(r'["<>]', "'", value) + '"'

    shapes = {NodeKind.STEP: "[{}]", NodeKind.DECISION: "{{{}}}", NodeKind.REGIMEN: "[[{}]]", NodeKind.ACTIVITY: "({})"}
    lines = ["flowchart TD", f"  %% {pathway.key}: {pathway.info.title} (demonstration content)"]
    for node in pathway.nodes:
        lines.append(f"  {ids[node.id]}" + shapes[node.kind].format(text(node.title)))
    for edge in pathway.edges:
        if edge.source not in ids or edge.target not in ids:
            continue
        arrow = "-.->" if edge.kind in (EdgeKind.INCLUDES, EdgeKind.REQUIRES) else "-->"
        label = _edge_text(edge)
        lines.append(f"  {ids[edge.source]} {arrow}" + (f"|{text(label)}|" if label else "") + f" {ids[edge.target]}")
    return "\n".join(lines) + "\n"
