"""The Neo4j pathway store: the same answers as the NetworkX store, from a shared Neo4j database.

Graph shape (every node carries ``ns``, the namespace, and ``key``, the pathway version ``id@version``)::

    (:Pathway {ns, key, ...})            one per pathway version
    (:PathwayNode {ns, key, id, ...})    steps, decisions, regimens, activities
    (:Source {ns, key, id, ...})         the pathway's sources
    (:PathwayNode)-[:NEXT|BRANCH|INCLUDES|REQUIRES {pos, seq, ...}]->(:PathwayNode)

Why it is built this way:

- Every value reaches the server as a query parameter; labels and relationship types are literals
  of this module (``REL_TYPES`` is the only way from an ``EdgeKind`` to a type), so nothing read
  from a pathway file can change a query.
- Neo4j properties cannot hold maps, so conditions, timings, codes, citations and unmapped text are
  JSON strings, rebuilt into objects equal to the loaded ones (``*_props`` / ``*_from_props``).
  ``code_keys`` ("system|code") is also kept as a list property for ``find_orderables``.
- ``(ns, key, id)`` is unique per label, so versions live side by side and a namespace (a test run,
  a staging load) can share a database with others and be dropped on its own.
- All work runs in managed transactions (``execute_read``/``execute_write``): the driver retries
  transient failures. The time limit is set per transaction with ``neo4j.unit_of_work(timeout=...)``:
  the driver refuses ``neo4j.Query`` objects inside a transaction function ("Query object is only
  supported for session.run"), so the transaction, not the statement, carries the timeout.
- Sessions share one bookmark manager, so reads after ``write_pathways`` see its writes even on a
  cluster.
- TLS is chosen by the URI scheme: ``neo4j+s://`` / ``bolt+s://`` (verified certificate),
  ``neo4j+ssc://`` / ``bolt+ssc://`` (self-signed); ``neo4j://`` / ``bolt://`` are plain text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from neo4j import Driver, GraphDatabase, ManagedTransaction, unit_of_work

from graph.conditions import Condition, condition_to_json, parse_condition
from graph.model import (
    WALKABLE,
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
from graph.store import MAX_ROUTE_EDGES, UnknownPathway, route_order
from shared.fhir.record import Code

_R = TypeVar("_R")
Props = dict[str, Any]

# The only way from an edge kind to a relationship type: a fixed whitelist, never data.
REL_TYPES: Mapping[EdgeKind, str] = MappingProxyType(
    {
        EdgeKind.NEXT: "NEXT",
        EdgeKind.BRANCH: "BRANCH",
        EdgeKind.INCLUDES: "INCLUDES",
        EdgeKind.REQUIRES: "REQUIRES",
    }
)
KIND_OF_REL: Mapping[str, EdgeKind] = MappingProxyType({rel: kind for kind, rel in REL_TYPES.items()})
WALKABLE_KINDS = sorted(str(k) for k in WALKABLE)  # kinds a route may pass through
BATCH = 500  # rows per UNWIND statement
DROP_BATCH = 1000  # nodes per delete transaction in drop_namespace

# -- Cypher: fixed text; the only interpolations are module constants (relationship types, route bound)
_ANY_REL = "|".join(REL_TYPES.values())

SCHEMA: tuple[str, ...] = (
    "CREATE CONSTRAINT oncotwin_pathway_key IF NOT EXISTS FOR (p:Pathway) REQUIRE (p.ns, p.key) IS UNIQUE",
    "CREATE CONSTRAINT oncotwin_pathway_node_key IF NOT EXISTS "
    "FOR (n:PathwayNode) REQUIRE (n.ns, n.key, n.id) IS UNIQUE",
    "CREATE CONSTRAINT oncotwin_source_key IF NOT EXISTS FOR (s:Source) REQUIRE (s.ns, s.key, s.id) IS UNIQUE",
    # Whole-pathway scans (pathway(), find_orderables, pruning) read by (ns, key).
    "CREATE INDEX oncotwin_pathway_node_scope IF NOT EXISTS FOR (n:PathwayNode) ON (n.ns, n.key)",
    "CREATE INDEX oncotwin_source_scope IF NOT EXISTS FOR (s:Source) ON (s.ns, s.key)",
)

Q_MERGE_PATHWAY = "MERGE (p:Pathway {ns: $ns, key: $key}) SET p = $props"
# A rewritten version replaces the old one: what the new content no longer has is removed first.
Q_PRUNE_EDGES = f"""
MATCH (a:PathwayNode {{ns: $ns, key: $key}})-[r:{_ANY_REL}]->(b:PathwayNode)
WHERE NOT [type(r), a.id, b.id, r.pos] IN $keep
DELETE r
"""
Q_PRUNE_NODES = "MATCH (n:PathwayNode {ns: $ns, key: $key}) WHERE NOT n.id IN $keep DETACH DELETE n"
Q_PRUNE_SOURCES = "MATCH (s:Source {ns: $ns, key: $key}) WHERE NOT s.id IN $keep DETACH DELETE s"
Q_MERGE_NODES = """
UNWIND $rows AS row
MERGE (n:PathwayNode {ns: $ns, key: $key, id: row.id})
SET n = row
"""
Q_MERGE_SOURCES = """
UNWIND $rows AS row
MERGE (s:Source {ns: $ns, key: $key, id: row.id})
SET s = row
"""
# One statement per relationship type (types cannot be parameters); ``pos`` identifies the edge.
Q_MERGE_EDGES: Mapping[EdgeKind, str] = MappingProxyType(
    {
        kind: f"""
UNWIND $rows AS row
MATCH (a:PathwayNode {{ns: $ns, key: $key, id: row.source}})
MATCH (b:PathwayNode {{ns: $ns, key: $key, id: row.target}})
MERGE (a)-[r:{rel} {{pos: row.pos}}]->(b)
SET r = row.props
"""
        for kind, rel in REL_TYPES.items()
    }
)
DROP: tuple[str, ...] = tuple(
    f"MATCH (n:{label} {{ns: $ns}}) WITH n LIMIT $limit DETACH DELETE n RETURN count(*) AS deleted"
    for label in ("PathwayNode", "Source", "Pathway")
)

Q_PATHWAYS = "MATCH (p:Pathway {ns: $ns}) RETURN p {.*} AS p"
Q_PATHWAY = "MATCH (p:Pathway {ns: $ns, key: $key}) RETURN p {.*} AS p"
Q_PATHWAY_NODES = "MATCH (n:PathwayNode {ns: $ns, key: $key}) WHERE NOT n.stub RETURN n {.*} AS n"
Q_PATHWAY_EDGES = f"""
MATCH (a:PathwayNode {{ns: $ns, key: $key}})-[r:{_ANY_REL}]->(b:PathwayNode)
RETURN type(r) AS type, a.id AS source, b.id AS target, r {{.*}} AS r
"""
Q_PATHWAY_SOURCES = "MATCH (s:Source {ns: $ns, key: $key}) RETURN s {.*} AS s"
# The single-pathway reads start from the :Pathway node: no row at all means an unknown key,
# one row with nulls means a known pathway with nothing to return.
Q_NODE = """
MATCH (p:Pathway {ns: $ns, key: $key})
OPTIONAL MATCH (n:PathwayNode {ns: $ns, key: $key, id: $id}) WHERE NOT n.stub
RETURN n {.*} AS n
"""
Q_EDGES_FROM = f"""
MATCH (p:Pathway {{ns: $ns, key: $key}})
OPTIONAL MATCH (a:PathwayNode {{ns: $ns, key: $key, id: $id}})-[r:{_ANY_REL}]->(b:PathwayNode)
WHERE type(r) IN $types
RETURN type(r) AS type, a.id AS source, b.id AS target, r {{.*}} AS r
"""
Q_EDGES_TO = f"""
MATCH (p:Pathway {{ns: $ns, key: $key}})
OPTIONAL MATCH (a:PathwayNode)-[r:{_ANY_REL}]->(b:PathwayNode {{ns: $ns, key: $key, id: $id}})
WHERE type(r) IN $types
RETURN type(r) AS type, a.id AS source, b.id AS target, r {{.*}} AS r
"""
Q_FIND_ORDERABLES = """
MATCH (p:Pathway {ns: $ns, key: $key})
OPTIONAL MATCH (n:PathwayNode {ns: $ns, key: $key})
WHERE NOT n.stub AND any(c IN n.code_keys WHERE c IN $code_keys)
RETURN n {.*} AS n
"""
Q_SOURCES = """
MATCH (p:Pathway {ns: $ns, key: $key})
OPTIONAL MATCH (s:Source {ns: $ns, key: $key})
RETURN s {.*} AS s
"""
# Every path from the start over NEXT|BRANCH: each relationship leaves a step or decision (so every
# node but the last is one), and no node repeats (Cypher itself only forbids repeated relationships).
Q_ROUTES = f"""
MATCH (p:Pathway {{ns: $ns, key: $key}})
OPTIONAL MATCH route = (s:PathwayNode {{ns: $ns, key: $key, id: p.start}})
      -[:NEXT|BRANCH*1..{int(MAX_ROUTE_EDGES)}]->(t:PathwayNode {{ns: $ns, key: $key, id: $id}})
WHERE all(rel IN relationships(route) WHERE startNode(rel).kind IN $walkable)
  AND all(x IN nodes(route) WHERE single(y IN nodes(route) WHERE y = x))
RETURN p.start AS start,
       [rel IN relationships(route) |
        {{type: type(rel), source: startNode(rel).id, target: endNode(rel).id, r: rel {{.*}}}}] AS route
"""


# -- properties <-> model values ----------------------------------------------------------------
def _dump(value: Any) -> str:
    # Sorted and compact, so the same pathway always writes byte-identical properties.
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _cond_json(cond: Condition | None) -> str | None:
    return None if cond is None else _dump(condition_to_json(cond))


def _cond(text: str | None) -> Condition | None:
    return None if text is None else parse_condition(json.loads(text))


def _cites_json(cites: Sequence[Citation]) -> str:
    return _dump([[c.source, c.section] for c in cites])


def _cites(text: str) -> tuple[Citation, ...]:
    return tuple(Citation(source, section) for source, section in json.loads(text))


def _without_nulls(props: Props) -> Props:
    # A null property is no property in Neo4j; leaving them out keeps written == read.
    return {k: v for k, v in props.items() if v is not None}


def info_props(info: PathwayInfo, file: str = "") -> Props:
    return {
        "id": info.id,
        "version": info.version,
        "title": info.title,
        "status": info.status,
        "disclaimer": info.disclaimer,
        "applies_when": _cond_json(info.applies_when),
        "start": info.start,
        "cites": _cites_json(info.cites),
        "needs_mapping": _dump(list(info.needs_mapping)),
        "file": file,
    }


def info_from_props(props: Mapping[str, Any]) -> PathwayInfo:
    return PathwayInfo(
        id=props["id"],
        version=props["version"],
        title=props["title"],
        status=props["status"],
        disclaimer=props["disclaimer"],
        applies_when=parse_condition(json.loads(props["applies_when"])),
        start=props["start"],
        cites=_cites(props["cites"]),
        needs_mapping=tuple(json.loads(props["needs_mapping"])),
    )


def node_props(node: Node, pos: int) -> Props:
    return _without_nulls(
        {
            "id": node.id,
            "kind": str(node.kind),
            "title": node.title,
            "summary": node.summary,
            "step": None if node.step is None else str(node.step),
            "activity": None if node.activity is None else str(node.activity),
            # Codes are kept exactly (display may be absent), not re-validated on the way back.
            "codes": _dump([[c.system, c.code, c.display] for c in node.codes]),
            "code_keys": list(node.code_keys) or None,
            "done_when": _cond_json(node.done_when),
            "question": node.question,
            "cites": _cites_json(node.cites),
            "seq": node.seq,
            "pos": pos,
            "needs_mapping": _dump(list(node.needs_mapping)),
            "stub": False,
        }
    )


def node_from_props(props: Mapping[str, Any]) -> Node:
    return Node(
        id=props["id"],
        kind=NodeKind(props["kind"]),
        title=props["title"],
        summary=props["summary"],
        step=StepKind(props["step"]) if props.get("step") is not None else None,
        activity=ActivityKind(props["activity"]) if props.get("activity") is not None else None,
        codes=tuple(Code(system, code, display) for system, code, display in json.loads(props["codes"])),
        done_when=_cond(props.get("done_when")),
        question=props.get("question"),
        cites=_cites(props["cites"]),
        seq=props["seq"],
        needs_mapping=tuple(json.loads(props["needs_mapping"])),
    )


def _timing_json(timing: Timing | None) -> str | None:
    return None if timing is None else _dump(timing.to_json())


def _timing(text: str | None) -> Timing | None:
    if text is None:
        return None
    data = json.loads(text)

    def duration(name: str) -> Duration | None:
        return Duration.parse(data[name]) if name in data else None

    return Timing(data["text"], duration("within"), duration("every"), duration("for"))


def edge_props(edge: Edge, pos: int) -> Props:
    """The relationship's properties; kind, source and target are its type and end nodes."""
    return _without_nulls(
        {
            "pos": pos,
            "seq": edge.seq,
            "when": _cond_json(edge.when),
            "otherwise": edge.otherwise,
            "timing": _timing_json(edge.timing),
            "label": edge.label,
            "needs_mapping": _dump(list(edge.needs_mapping)),
        }
    )


def edge_from_props(rel_type: str, source: str, target: str, props: Mapping[str, Any]) -> Edge:
    return Edge(
        source=source,
        target=target,
        kind=KIND_OF_REL[rel_type],
        when=_cond(props.get("when")),
        otherwise=props["otherwise"],
        timing=_timing(props.get("timing")),
        label=props["label"],
        seq=props["seq"],
        needs_mapping=tuple(json.loads(props["needs_mapping"])),
    )


def source_props(source: Source, pos: int) -> Props:
    return {
        "id": source.id,
        "title": source.title,
        "publisher": source.publisher,
        "url": source.url,
        "accessed": source.accessed,
        "pos": pos,
    }


def source_from_props(props: Mapping[str, Any]) -> Source:
    return Source(props["id"], props["title"], props["publisher"], props["url"], props["accessed"])


def _edge_row(row: Mapping[str, Any]) -> tuple[tuple[int, int], Edge]:
    props = row["r"]
    edge = edge_from_props(row["type"], row["source"], row["target"], props)
    return (edge.seq, props["pos"]), edge


def _chunks(rows: Sequence[Props], size: int = BATCH) -> Iterator[Sequence[Props]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


# -- the store ----------------------------------------------------------------------------------
class Neo4jPathwayStore:
    """``PathwayStore`` over Neo4j, scoped to one namespace of one database."""

    def __init__(
        self, driver: Driver, *, database: str = "neo4j", namespace: str = "default", timeout_s: float = 10.0
    ) -> None:
        if not namespace:
            raise ValueError("namespace must be a non-empty string")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self._driver = driver
        self._database = database
        self._namespace = namespace
        self._timeout_s = float(timeout_s)
        self._bookmarks = GraphDatabase.bookmark_manager()
        self._owns_driver = False  # a driver handed in belongs to the caller; connect() hands over its own

    @classmethod
    def connect(
        cls,
        uri: str,
        user: str,
        password: str,
        *,
        database: str = "neo4j",
        namespace: str = "default",
        timeout_s: float = 10.0,
        max_pool_size: int = 50,
        connection_timeout_s: float = 10.0,
        max_retry_time_s: float = 30.0,
    ) -> Neo4jPathwayStore:
        """A store on its own driver (closed by ``close()``). TLS comes from the scheme: ``neo4j+s://``."""
        driver = GraphDatabase.driver(
            uri,
            auth=(user, password),
            max_connection_pool_size=max_pool_size,
            connection_timeout=connection_timeout_s,
            max_transaction_retry_time=max_retry_time_s,
        )
        try:
            driver.verify_connectivity()  # fail here, not on the first clinical query
            store = cls(driver, database=database, namespace=namespace, timeout_s=timeout_s)
        except BaseException:
            driver.close()
            raise
        store._owns_driver = True
        return store

    @property
    def namespace(self) -> str:
        return self._namespace

    # -- transactions
    def _run(self, write: bool, work: Callable[..., _R], *args: Any) -> _R:
        timed = unit_of_work(timeout=self._timeout_s)(work)
        with self._driver.session(database=self._database, bookmark_manager=self._bookmarks) as session:
            if write:
                return session.execute_write(timed, *args)
            return session.execute_read(timed, *args)

    def _read(self, query: str, **params: Any) -> list[Props]:
        def work(tx: ManagedTransaction) -> list[Props]:
            return tx.run(query, {"ns": self._namespace, **params}).data()

        return self._run(False, work)

    def _scoped(self, query: str, key: str, **params: Any) -> list[Props]:
        """Rows of a single-pathway read; no row at all means no such pathway."""
        rows = self._read(query, key=key, **params)
        if not rows:
            raise UnknownPathway(key)
        return rows

    # -- schema and loading
    def ensure_schema(self) -> None:
        """Constraints and indexes, each in its own transaction (schema and data changes cannot mix)."""
        for statement in SCHEMA:

            def work(tx: ManagedTransaction, statement: str = statement) -> None:
                tx.run(statement).consume()

            self._run(True, work)

    def write_pathways(self, pathways: Iterable[Pathway]) -> int:
        """Load pathway versions idempotently, each in one transaction: a version written again is
        replaced by its new content (MERGE what is there, delete what is no longer). Returns the count."""
        items = list(pathways)
        keys = [p.key for p in items]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"pathway {', '.join(duplicates)} given twice")
        for pathway in items:
            self._run(True, self._write_one, self._statements(pathway))
        return len(items)

    def _statements(self, pathway: Pathway) -> list[tuple[str, Props]]:
        """The statements that write one pathway version, in order (pure: tests inspect them)."""
        ns, key = self._namespace, pathway.key
        for what, ids in (("node", [n.id for n in pathway.nodes]), ("source", [s.id for s in pathway.sources])):
            if len(set(ids)) != len(ids):
                raise ValueError(f"pathway {key}: duplicate {what} ids")
        scope = {"ns": ns, "key": key}
        node_ids = {n.id for n in pathway.nodes}
        # An edge may name a node the file lacks (graph.validate reports it); a relationship needs two
        # ends, so such an end becomes a stub node that node()/pathway() never return.
        stubs = sorted({end for e in pathway.edges for end in (e.source, e.target)} - node_ids)
        node_rows = [{**scope, **node_props(n, pos)} for pos, n in enumerate(pathway.nodes)]
        node_rows += [{**scope, "id": stub, "stub": True} for stub in stubs]
        edge_rows: dict[EdgeKind, list[Props]] = {kind: [] for kind in REL_TYPES}
        for pos, edge in enumerate(pathway.edges):
            edge_rows[edge.kind].append(
                {"source": edge.source, "target": edge.target, "pos": pos, "props": edge_props(edge, pos)}
            )
        keep_edges = [[REL_TYPES[e.kind], e.source, e.target, pos] for pos, e in enumerate(pathway.edges)]
        statements: list[tuple[str, Props]] = [
            (Q_MERGE_PATHWAY, {**scope, "props": {**scope, **_without_nulls(info_props(pathway.info, pathway.file))}}),
            (Q_PRUNE_EDGES, {**scope, "keep": keep_edges}),
            (Q_PRUNE_NODES, {**scope, "keep": sorted(node_ids | set(stubs))}),
            (Q_PRUNE_SOURCES, {**scope, "keep": sorted(s.id for s in pathway.sources)}),
        ]
        statements += [(Q_MERGE_NODES, {**scope, "rows": list(rows)}) for rows in _chunks(node_rows)]
        source_rows = [{**scope, **source_props(s, pos)} for pos, s in enumerate(pathway.sources)]
        statements += [(Q_MERGE_SOURCES, {**scope, "rows": list(rows)}) for rows in _chunks(source_rows)]
        for kind, rows in edge_rows.items():
            statements += [(Q_MERGE_EDGES[kind], {**scope, "rows": list(chunk)}) for chunk in _chunks(rows)]
        return statements

    @staticmethod
    def _write_one(tx: ManagedTransaction, statements: list[tuple[str, Props]]) -> None:
        for query, params in statements:
            tx.run(query, params).consume()

    def drop_namespace(self, batch_size: int = DROP_BATCH) -> int:
        """Delete everything in this namespace, in batches so no transaction grows unbounded."""
        total = 0
        for query in DROP:

            def work(tx: ManagedTransaction, query: str = query) -> int:
                rows = tx.run(query, {"ns": self._namespace, "limit": batch_size}).data()
                return int(rows[0]["deleted"]) if rows else 0

            while (deleted := self._run(True, work)) > 0:
                total += deleted
        return total

    # -- PathwayStore
    def pathways(self) -> list[PathwayInfo]:
        infos = [info_from_props(row["p"]) for row in self._read(Q_PATHWAYS)]
        return sorted(infos, key=lambda i: (i.id, tuple(-v for v in i.version_tuple), i.version))

    def pathway(self, key: str) -> Pathway:
        def work(tx: ManagedTransaction) -> Pathway:
            scope = {"ns": self._namespace, "key": key}
            head = tx.run(Q_PATHWAY, scope).data()
            if not head:
                raise UnknownPathway(key)
            nodes = sorted((row["n"] for row in tx.run(Q_PATHWAY_NODES, scope).data()), key=lambda p: p["pos"])
            edges = sorted(tx.run(Q_PATHWAY_EDGES, scope).data(), key=lambda row: row["r"]["pos"])
            sources = sorted((row["s"] for row in tx.run(Q_PATHWAY_SOURCES, scope).data()), key=lambda p: p["pos"])
            return Pathway(
                info_from_props(head[0]["p"]),
                tuple(node_from_props(n) for n in nodes),
                tuple(_edge_row(row)[1] for row in edges),
                tuple(source_from_props(s) for s in sources),
                head[0]["p"].get("file", ""),
            )

        return self._run(False, work)

    def node(self, key: str, node_id: str) -> Node | None:
        row = self._scoped(Q_NODE, key, id=node_id)[0]
        return None if row["n"] is None else node_from_props(row["n"])

    def _edges(self, query: str, key: str, node_id: str, kinds: Collection[EdgeKind]) -> list[Edge]:
        types = [REL_TYPES[EdgeKind(k)] for k in kinds] if kinds else list(REL_TYPES.values())
        rows = self._scoped(query, key, id=node_id, types=types)
        return [edge for _, edge in sorted((_edge_row(r) for r in rows if r["r"] is not None), key=lambda t: t[0])]

    def edges_from(self, key: str, node_id: str, kinds: Collection[EdgeKind] = ()) -> list[Edge]:
        return self._edges(Q_EDGES_FROM, key, node_id, kinds)

    def edges_to(self, key: str, node_id: str, kinds: Collection[EdgeKind] = ()) -> list[Edge]:
        return self._edges(Q_EDGES_TO, key, node_id, kinds)

    def find_orderables(self, key: str, code_keys: Collection[str]) -> list[Node]:
        rows = self._scoped(Q_FIND_ORDERABLES, key, code_keys=sorted(set(code_keys)))
        found = sorted((r["n"] for r in rows if r["n"] is not None), key=lambda p: (p["seq"], p["pos"]))
        return [node_from_props(p) for p in found]

    def routes_to(self, key: str, node_id: str) -> list[tuple[Edge, ...]]:
        rows = self._scoped(Q_ROUTES, key, id=node_id, walkable=WALKABLE_KINDS)
        if rows[0]["start"] == node_id:
            return [()]  # the start itself: reached by the empty route, as the NetworkX walk does
        routes = [tuple(_edge_row(r)[1] for r in row["route"]) for row in rows if row["route"] is not None]
        return sorted(routes, key=route_order)

    def sources(self, key: str) -> dict[str, Source]:
        rows = self._scoped(Q_SOURCES, key)
        found = sorted((r["s"] for r in rows if r["s"] is not None), key=lambda p: p["pos"])
        return {p["id"]: source_from_props(p) for p in found}

    def close(self) -> None:
        """Close the driver if this store opened it (``connect``); a driver handed in is the caller's."""
        if self._owns_driver:
            self._driver.close()
