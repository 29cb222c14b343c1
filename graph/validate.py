"""Graph-level checks of pathway content, beyond what the loader's shape checks catch.

``validate(pathways)`` returns every finding at once (a reviewer fixes a file in one pass):
dangling edges, unreachable steps, missing or unknown citations, malformed codes, edges that make
no sense for their node kinds, and RxNorm codes that disagree with the terminology tables.
Unknown facts and malformed conditions are already refused by the loader, which names them.

Run: ``python -m graph.validate [DIR]`` or ``oncotwin graph validate``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from graph.codes import code_problem
from graph.model import ORDERABLE, WALKABLE, EdgeKind, NodeKind, Pathway
from shared.fhir.record import RXNORM, Code


@dataclass(frozen=True, slots=True)
class Finding:
    pathway: str  # id@version
    where: str  # node or edge
    problem: str
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        return f"{self.severity}: {self.pathway}: {self.where}: {self.problem}"


def validate(pathways: list[Pathway]) -> list[Finding]:
    findings: list[Finding] = []
    seen_keys: set[str] = set()
    for pathway in pathways:
        if pathway.key in seen_keys:
            findings.append(Finding(pathway.key, pathway.file, "this pathway version is defined twice"))
        seen_keys.add(pathway.key)
        findings += _check(pathway)
    return findings


def _check(p: Pathway) -> list[Finding]:
    out: list[Finding] = []

    def bad(where: str, problem: str, severity: str = "error") -> None:
        out.append(Finding(p.key, where, problem, severity))

    if p.info.status != "demonstration" and "review" not in p.info.disclaimer.lower():
        bad("pathway", "content must say it needs clinical review (status/disclaimer)")
    sources = {s.id for s in p.sources}
    start = p.node(p.info.start)
    if start is None or start.kind is not NodeKind.STEP:
        bad("pathway.start", f"start {p.info.start!r} is not a step of this pathway")
    for text in p.info.needs_mapping:
        bad("pathway", f"applicability needs mapping to structured conditions: {text}", "warning")
    for citation in p.info.cites:
        if citation.source not in sources:
            bad("pathway.cites", f"cites unknown source {citation.source!r}")

    for node in p.nodes:
        where = f"node {node.id}"
        if not node.id.startswith(p.info.id + "."):
            bad(where, f"node ids must start with the pathway id ({p.info.id}.)")
        if not node.cites:
            bad(where, "cites no source")
        for citation in node.cites:
            if citation.source not in sources:
                bad(where, f"cites unknown source {citation.source!r}")
        for code in node.codes:
            problem = code_problem(code.system, code.code)
            if problem:
                bad(where, problem)
        if node.kind is NodeKind.ACTIVITY and not node.codes:
            bad(where, "an activity needs at least one code (RxNorm, SNOMED CT or LOINC)")
        if node.kind is NodeKind.STEP and node.done_when is None:
            bad(where, "a step needs done_when (the evidence that it happened)", "warning")
        if node.kind is NodeKind.DECISION and not node.question:
            bad(where, "a decision needs a question", "warning")
        out += [Finding(p.key, where, m) for m in _rxnorm_disagreements(node.codes)]
        out += [Finding(p.key, where, f"condition needs mapping: {t}", "warning") for t in node.needs_mapping]

    for edge in p.edges:
        where = f"edge {edge.source} -{edge.kind}-> {edge.target}"
        src, dst = p.node(edge.source), p.node(edge.target)
        if src is None or dst is None:
            missing = edge.source if src is None else edge.target
            bad(where, f"dangling: no node {missing!r}")
            continue
        allowed = {
            EdgeKind.NEXT: (WALKABLE, WALKABLE),
            EdgeKind.BRANCH: (WALKABLE, WALKABLE | ORDERABLE),
            EdgeKind.INCLUDES: ({NodeKind.REGIMEN}, {NodeKind.ACTIVITY}),
            EdgeKind.REQUIRES: (WALKABLE | ORDERABLE, {NodeKind.STEP, NodeKind.ACTIVITY}),
        }[edge.kind]
        if src.kind not in allowed[0] or dst.kind not in allowed[1]:
            bad(where, f"a {edge.kind} edge cannot join a {src.kind} to a {dst.kind}")
        out += [Finding(p.key, where, f"condition needs mapping: {t}", "warning") for t in edge.needs_mapping]
        if edge.kind is EdgeKind.REQUIRES and dst.done_when is None:
            bad(where, "a required node needs done_when, or the requirement can never be checked")
        if edge.kind is EdgeKind.BRANCH and src.kind is NodeKind.DECISION and dst.kind in ORDERABLE:
            bad(where, "a decision branches to steps; steps offer regimens/activities")

    for node in p.nodes:
        if node.kind is NodeKind.DECISION and not [
            e for e in p.edges if e.source == node.id and e.kind is EdgeKind.BRANCH
        ]:
            bad(f"node {node.id}", "a decision without branches")
        if node.kind is NodeKind.REGIMEN and not [
            e for e in p.edges if e.source == node.id and e.kind is EdgeKind.INCLUDES
        ]:
            bad(f"node {node.id}", "a regimen includes nothing")

    reachable = _reachable(p)
    for node in p.nodes:
        if node.id not in reachable:
            bad(f"node {node.id}", "unreachable from the pathway's start")
    return out


def _reachable(p: Pathway) -> set[str]:
    """Steps/decisions through next/branch; options through branch; contents through includes."""
    out: set[str] = set()
    todo = [p.info.start]
    while todo:
        at = todo.pop()
        if at in out:
            continue
        out.add(at)
        todo += [e.target for e in p.edges if e.source == at and e.kind is not EdgeKind.REQUIRES]
    return out


def _rxnorm_disagreements(codes: tuple[Code, ...]) -> list[str]:
    from shared.terminology import terminology

    terms = terminology()
    problems = []
    for code in codes:
        if code.system != RXNORM or not code.display:
            continue
        drug = terms.drug_by_name(code.display)
        if drug is not None and drug.rxcuis and code.code not in drug.rxcuis:
            problems.append(f"RxNorm {code.code} for {code.display!r} is not among the terminology's {drug.rxcuis}")
    return problems


def main(argv: list[str] | None = None) -> int:
    from graph.loader import PATHWAY_DIR, PathwayFileError, load_pathways

    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else PATHWAY_DIR
    try:
        pathways = load_pathways(directory)
    except PathwayFileError as exc:
        print(f"error: {exc}")
        return 1
    findings = validate(pathways)
    for finding in findings:
        print(finding)
    errors = sum(f.severity == "error" for f in findings)
    nodes = sum(len(p.nodes) for p in pathways)
    print(f"{len(pathways)} pathway(s), {nodes} nodes: {errors} error(s), {len(findings) - errors} warning(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
