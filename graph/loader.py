"""Read versioned pathway files (YAML) into ``Pathway`` values, refusing anything malformed.

File layout (see ``graph/README.md``)::

    pathway: {id, version, title, status, disclaimer, applies_when, start, cites}
    sources: [{id, title, publisher, url, accessed}]
    nodes:   [{id, kind, title, summary, step|activity, codes, done_when, question, cites}]
    edges:   [{from, to, kind, when, otherwise, timing, label}]

Shape errors raise ``PathwayFileError`` naming the file and the place in it. Graph-level problems
(dangling edges, unreachable steps, bad check digits) are ``graph.validate``'s job, so a broken
file can still be loaded and reported on in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from graph.conditions import ConditionError, parse_code, parse_condition
from graph.model import (
    ActivityKind,
    Citation,
    Duration,
    Edge,
    EdgeKind,
    Node,
    NodeKind,
    Pathway,
    PathwayInfo,
    Source,
    StepKind,
    Timing,
)

PATHWAY_DIR = Path(__file__).parent / "pathways"
# libyaml's safe loader when PyYAML was built with it (10x faster), else the pure-Python one.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class PathwayFileError(ValueError):
    def __init__(self, file: str, where: str, message: str) -> None:
        super().__init__(f"{file}: {where}: {message}")
        self.file, self.where, self.detail = file, where, message


def load_pathways(directory: Path = PATHWAY_DIR) -> list[Pathway]:
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise PathwayFileError(str(directory), "-", "no pathway files (*.yaml) found")
    return [load_file(f) for f in files]


def load_file(path: Path) -> Pathway:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "-"
        raise PathwayFileError(
            path.name, where, f"not valid YAML ({getattr(exc, 'problem', None) or 'syntax'})"
        ) from None
    return pathway_from_dict(data, path.name)


def pathway_from_dict(data: Any, file: str = "<data>") -> Pathway:
    reader = _Reader(file)
    doc = reader.mapping(data, "document")
    reader.only(doc, {"pathway", "sources", "nodes", "edges"}, "document")
    head = reader.mapping(doc.get("pathway"), "pathway")
    reader.only(
        head,
        {"id", "version", "title", "status", "disclaimer", "applies_when", "start", "cites", "needs_mapping"},
        "pathway",
    )
    info = PathwayInfo(
        id=reader.text(head, "id", "pathway"),
        version=str(reader.required(head, "version", "pathway")),
        title=reader.text(head, "title", "pathway"),
        status=reader.text(head, "status", "pathway"),
        disclaimer=reader.text(head, "disclaimer", "pathway"),
        applies_when=reader.condition(head.get("applies_when"), "pathway.applies_when"),
        start=reader.text(head, "start", "pathway"),
        cites=reader.citations(head.get("cites"), "pathway.cites"),
        needs_mapping=reader.texts(head, "needs_mapping", "pathway"),
    )
    # An imported pathway may have no sources yet: the validator reports that, the loader need not.
    raw_sources = reader.items(doc, "sources", allow_empty=True)
    sources = tuple(reader.source(s, f"sources[{i}]") for i, s in enumerate(raw_sources))
    nodes = tuple(reader.node(n, f"nodes[{i}]", i) for i, n in enumerate(reader.items(doc, "nodes")))
    edges = tuple(reader.edge(e, f"edges[{i}]", i) for i, e in enumerate(reader.items(doc, "edges")))
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.id in seen:
            raise PathwayFileError(file, f"nodes[{i}]", f"duplicate node id {node.id!r}")
        seen.add(node.id)
    return Pathway(info, nodes, edges, sources, file)


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, where: str, message: str) -> PathwayFileError:
        return PathwayFileError(self.file, where, message)

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "a mapping is required")
        return value

    def items(self, doc: Mapping[str, Any], name: str, allow_empty: bool = False) -> list[Any]:
        value = doc.get(name)
        if not isinstance(value, list) or not (value or allow_empty):
            raise self.fail(name, "a non-empty list is required")
        return value

    def only(self, data: Mapping[str, Any], allowed: set[str], where: str) -> None:
        extra = set(data) - allowed
        if extra:
            raise self.fail(where, f"unexpected key(s) {', '.join(sorted(map(str, extra)))}")

    def required(self, data: Mapping[str, Any], key: str, where: str) -> Any:
        if data.get(key) in (None, ""):
            raise self.fail(where, f"{key!r} is required")
        return data[key]

    def text(self, data: Mapping[str, Any], key: str, where: str) -> str:
        value = self.required(data, key, where)
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", "a string is required")
        return value.strip()

    def texts(self, data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}.{key}", "a list of strings is required")
        return tuple(value)

    def condition(self, value: Any, where: str) -> Any:
        try:
            return parse_condition(value, where)
        except ConditionError as exc:
            raise self.fail(where, str(exc)) from None

    def citations(self, value: Any, where: str) -> tuple[Citation, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(where, "a list of {source, section} is required")
        out = []
        for i, item in enumerate(value):
            m = self.mapping(item, f"{where}[{i}]")
            self.only(m, {"source", "section"}, f"{where}[{i}]")
            out.append(Citation(self.text(m, "source", f"{where}[{i}]"), self.text(m, "section", f"{where}[{i}]")))
        return tuple(out)

    def source(self, value: Any, where: str) -> Source:
        m = self.mapping(value, where)
        self.only(m, {"id", "title", "publisher", "url", "accessed"}, where)
        url = self.text(m, "url", where)
        if not url.startswith("https://"):
            raise self.fail(f"{where}.url", "an https:// URL is required")
        fields = {k: self.text(m, k, where) for k in ("id", "title", "publisher")}
        return Source(url=url, accessed=str(self.required(m, "accessed", where)), **fields)

    def enum(self, cls: Any, value: Any, where: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            raise self.fail(where, f"{value!r} is not one of {', '.join(v.value for v in cls)}") from None

    def node(self, value: Any, where: str, seq: int) -> Node:
        m = self.mapping(value, where)
        allowed = {"id", "kind", "title", "summary", "step", "activity", "codes", "done_when", "question", "cites"}
        allowed.add("needs_mapping")
        self.only(m, allowed, where)
        kind = self.enum(NodeKind, m.get("kind"), f"{where}.kind")
        step = self.enum(StepKind, m["step"], f"{where}.step") if "step" in m else None
        activity = self.enum(ActivityKind, m["activity"], f"{where}.activity") if "activity" in m else None
        if kind is NodeKind.STEP and step is None:
            raise self.fail(where, "a step needs 'step' (its kind)")
        if kind is NodeKind.ACTIVITY and activity is None:
            raise self.fail(where, "an activity needs 'activity' (its kind)")
        codes = m.get("codes") or []
        if not isinstance(codes, list):
            raise self.fail(f"{where}.codes", "a list of codes is required")
        try:
            parsed_codes = tuple(parse_code(c, f"{where}.codes[{i}]") for i, c in enumerate(codes))
        except ConditionError as exc:
            raise self.fail(where, str(exc)) from None
        done_when = self.condition(m["done_when"], f"{where}.done_when") if "done_when" in m else None
        return Node(
            id=self.text(m, "id", where),
            kind=kind,
            title=self.text(m, "title", where),
            summary=str(m.get("summary", "")).strip(),
            step=step,
            activity=activity,
            codes=parsed_codes,
            done_when=done_when,
            question=str(m["question"]).strip() if m.get("question") else None,
            cites=self.citations(m.get("cites"), f"{where}.cites"),
            seq=seq,
            needs_mapping=self.texts(m, "needs_mapping", where),
        )

    def edge(self, value: Any, where: str, seq: int) -> Edge:
        m = self.mapping(value, where)
        self.only(m, {"from", "to", "kind", "when", "otherwise", "timing", "label", "needs_mapping"}, where)
        kind = self.enum(EdgeKind, m.get("kind"), f"{where}.kind")
        when = self.condition(m["when"], f"{where}.when") if "when" in m else None
        otherwise = m.get("otherwise", False)
        if not isinstance(otherwise, bool):
            raise self.fail(f"{where}.otherwise", "true or false is required")
        if (when is not None or otherwise) and kind is not EdgeKind.BRANCH:
            raise self.fail(where, "only branch edges carry 'when'/'otherwise'")
        if when is not None and otherwise:
            raise self.fail(where, "a branch has either 'when' or 'otherwise', not both")
        return Edge(
            source=self.text(m, "from", where),
            target=self.text(m, "to", where),
            kind=kind,
            when=when,
            otherwise=otherwise,
            timing=self.timing(m["timing"], f"{where}.timing") if "timing" in m else None,
            label=str(m.get("label", "")).strip(),
            seq=seq,
            needs_mapping=self.texts(m, "needs_mapping", where),
        )

    def timing(self, value: Any, where: str) -> Timing:
        m = self.mapping(value, where)
        self.only(m, {"text", "within", "every", "for"}, where)
        try:
            parts = {k: Duration.parse(str(m[k])) if k in m else None for k in ("within", "every", "for")}
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None
        if parts["within"] is None and parts["every"] is None:
            raise self.fail(where, "timing needs 'within' or 'every'")
        return Timing(self.text(m, "text", where), parts["within"], parts["every"], parts["for"])
