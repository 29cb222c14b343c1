"""The Neo4j store without a server: a recording fake driver.

The fake records every statement (text, parameters, read or write, the transaction's timeout) and
answers it with ``FakeGraph``, a small in-memory emulation of what each of the module's fixed
statements does on a server. That lets the store's answers be compared with the NetworkX store's
for every method and node. What only a real server can show (that the Cypher means what
``FakeGraph`` assumes) is the job of ``tests/test_graph_contract.py`` with ``NEO4J_URI`` set.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from neo4j import Driver, Query

import graph.neo4j_store as n4
from graph import open_store
from graph.loader import load_pathways, pathway_from_dict
from graph.model import WALKABLE, EdgeKind, Node, NodeKind, Pathway
from graph.neo4j_store import Neo4jPathwayStore
from graph.networkx_store import NetworkXPathwayStore
from graph.store import MAX_ROUTE_EDGES, PathwayStore, UnknownPathway
from shared.config import ConfigError, load_settings
from shared.fhir.record import RXNORM, Code

Props = dict[str, Any]
NS = "ns-Zq81-test"
TIMEOUT = 7.5
PATHWAYS = load_pathways()
NSCLC = next(p for p in PATHWAYS if p.info.id == "nsclc")

# A small pathway with every shape the schema allows: conditions, timings, codes without display,
# a cycle, a self-loop, parallel branches, a route through a regimen (not walkable) and an edge to
# a node the file lacks (loaded; graph.validate reports it).
TOY = pathway_from_dict(
    {
        "pathway": {
            "id": "toy",
            "version": "1.2",
            "title": "Toy pathway",
            "status": "demonstration",
            "disclaimer": "Not for patient care.",
            "applies_when": {"all": [{"fact": "cancer", "types": ["nsclc"]}, {"fact": "age", "min": 18}]},
            "start": "toy.start",
            "cites": [{"source": "toy-src-a", "section": "Overview"}],
            "needs_mapping": ["CQL: InPopulation"],
        },
        "sources": [
            {
                "id": "toy-src-a",
                "title": "Toy source A",
                "publisher": "NCI",
                "url": "https://example.org/a",
                "accessed": "2026-01-02",
            },
            {
                "id": "toy-src-b",
                "title": "Toy source B",
                "publisher": "FDA",
                "url": "https://example.org/b",
                "accessed": "2026-02-03",
            },
        ],
        "nodes": [
            {
                "id": "toy.start",
                "kind": "step",
                "step": "workup",
                "title": "Toy start",
                "summary": "Begin here.",
                "done_when": {
                    "any": [
                        {"fact": "imaging", "modalities": ["CT"], "text": ["chest CT"]},
                        {"not": {"fact": "stage", "in": ["IV"]}, "label": "not stage IV"},
                    ]
                },
                "cites": [{"source": "toy-src-a", "section": "Workup"}],
            },
            {"id": "toy.ask", "kind": "decision", "title": "Toy question", "question": "Which way?"},
            {"id": "toy.left", "kind": "step", "step": "treatment", "title": "Toy left", "needs_mapping": ["cql"]},
            {"id": "toy.right", "kind": "step", "step": "surveillance", "title": "Toy right"},
            {
                "id": "toy.regimen",
                "kind": "regimen",
                "title": "Toy doublet",
                "codes": [{"system": "rxnorm", "code": "2555", "display": "cisplatin"}],
            },
            {
                "id": "toy.drug",
                "kind": "activity",
                "activity": "drug",
                "title": "Toy drug",
                "codes": [{"system": "rxnorm", "code": "2555"}, {"system": "loinc", "code": "21908-9"}],
            },
            {"id": "toy.end", "kind": "step", "step": "referral", "title": "Toy end"},
        ],
        "edges": [
            {
                "from": "toy.start",
                "to": "toy.ask",
                "kind": "next",
                "timing": {"text": "within 4 weeks", "within": "P4W"},
            },
            {
                "from": "toy.ask",
                "to": "toy.left",
                "kind": "branch",
                "when": {"fact": "biomarker", "name": "EGFR", "status": ["positive"], "min": 1.5},
                "label": "EGFR",
            },
            {"from": "toy.ask", "to": "toy.right", "kind": "branch", "otherwise": True},
            {
                "from": "toy.left",
                "to": "toy.end",
                "kind": "next",
                "timing": {"text": "every 6 months for 2 years", "every": "P6M", "for": "P2Y"},
            },
            {"from": "toy.right", "to": "toy.end", "kind": "next"},
            {"from": "toy.right", "to": "toy.ask", "kind": "next"},
            {"from": "toy.left", "to": "toy.regimen", "kind": "branch"},
            {"from": "toy.regimen", "to": "toy.drug", "kind": "includes"},
            {"from": "toy.left", "to": "toy.start", "kind": "requires"},
            {"from": "toy.regimen", "to": "toy.end", "kind": "next"},
            {"from": "toy.end", "to": "toy.ghost", "kind": "next"},
            {"from": "toy.ask", "to": "toy.left", "kind": "branch", "label": "again", "needs_mapping": ["raw"]},
            {"from": "toy.start", "to": "toy.start", "kind": "next"},
        ],
    },
    "toy.yaml",
)
NSCLC_NEXT = Pathway(
    dataclasses.replace(NSCLC.info, version="2027.1", title=NSCLC.info.title + " (next)"),
    NSCLC.nodes,
    NSCLC.edges,
    NSCLC.sources,
    NSCLC.file,
)
ALL = [*PATHWAYS, NSCLC_NEXT, TOY]


# -- the fake server ----------------------------------------------------------------------------
class FakeGraph:
    """What each fixed statement of graph.neo4j_store does, over plain dicts (the server's job)."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str, str, str], Props] = {}  # (label, ns, key, id) -> properties
        self.rels: dict[tuple[str, str, str, str, str, int], Props] = {}  # (ns, key, type, source, target, pos)
        self.handlers: dict[str, Callable[[Props], list[Props]]] = {
            n4.Q_MERGE_PATHWAY: self._merge_pathway,
            n4.Q_PRUNE_EDGES: self._prune_edges,
            n4.Q_PRUNE_NODES: lambda p: self._prune("PathwayNode", p),
            n4.Q_PRUNE_SOURCES: lambda p: self._prune("Source", p),
            n4.Q_MERGE_NODES: lambda p: self._merge_rows("PathwayNode", p),
            n4.Q_MERGE_SOURCES: lambda p: self._merge_rows("Source", p),
            n4.Q_PATHWAYS: lambda p: [{"p": v} for v in self._all("Pathway", p["ns"])],
            n4.Q_PATHWAY: lambda p: [{"p": v} for v in self._all("Pathway", p["ns"], p["key"])],
            n4.Q_PATHWAY_NODES: lambda p: [
                {"n": v} for v in self._all("PathwayNode", p["ns"], p["key"]) if not v["stub"]
            ],
            n4.Q_PATHWAY_EDGES: lambda p: self._edges(p, lambda k: True),
            n4.Q_PATHWAY_SOURCES: lambda p: [{"s": v} for v in self._all("Source", p["ns"], p["key"])],
            n4.Q_NODE: self._node,
            n4.Q_EDGES_FROM: lambda p: self._scoped(
                p, self._edges(p, lambda k: k[3] == p["id"] and k[2] in p["types"])
            ),
            n4.Q_EDGES_TO: lambda p: self._scoped(p, self._edges(p, lambda k: k[4] == p["id"] and k[2] in p["types"])),
            n4.Q_FIND_ORDERABLES: self._find,
            n4.Q_SOURCES: lambda p: self._scoped(p, [{"s": v} for v in self._all("Source", p["ns"], p["key"])]),
            n4.Q_ROUTES: self._routes,
        }
        for query in n4.SCHEMA:
            self.handlers[query] = lambda p: []
        for query in n4.Q_MERGE_EDGES.values():
            self.handlers[query] = functools.partial(self._merge_edges, query)
        for query in n4.DROP:
            self.handlers[query] = functools.partial(self._drop, query)

    def answer(self, query: str, params: Props) -> list[Props]:
        handler = self.handlers.get(query)
        assert handler is not None, f"statement not known to the fake: {query}"
        # Rows come back in reverse storage order, so the store must do its own ordering.
        return copy.deepcopy(list(reversed(handler(copy.deepcopy(params)))))

    def snapshot(self) -> str:
        return json.dumps([sorted(map(list, self.nodes.items())), sorted(map(list, self.rels.items()))], sort_keys=True)

    # writes
    def _merge_pathway(self, p: Props) -> list[Props]:
        assert p["props"]["ns"] == p["ns"] and p["props"]["key"] == p["key"]
        self.nodes["Pathway", p["ns"], p["key"], ""] = p["props"]
        return []

    def _merge_rows(self, label: str, p: Props) -> list[Props]:
        for row in p["rows"]:
            assert (row["ns"], row["key"]) == (p["ns"], p["key"])  # SET n = row keeps the merge key
            self.nodes[label, p["ns"], p["key"], row["id"]] = row
        return []

    def _merge_edges(self, query: str, p: Props) -> list[Props]:
        rel = re.search(r"MERGE \(a\)-\[r:(\w+) ", query)
        assert rel is not None
        for row in p["rows"]:
            ends = [("PathwayNode", p["ns"], p["key"], row[end]) for end in ("source", "target")]
            if all(end in self.nodes for end in ends):  # MATCH both ends, else nothing
                assert row["props"]["pos"] == row["pos"]
                self.rels[p["ns"], p["key"], rel.group(1), row["source"], row["target"], row["pos"]] = row["props"]
        return []

    def _prune_edges(self, p: Props) -> list[Props]:
        for k in [k for k in self.rels if k[:2] == (p["ns"], p["key"])]:
            if [k[2], k[3], k[4], k[5]] not in p["keep"]:
                del self.rels[k]
        return []

    def _prune(self, label: str, p: Props) -> list[Props]:
        for k in [k for k in self.nodes if k[:3] == (label, p["ns"], p["key"]) and k[3] not in p["keep"]]:
            self._detach_delete(k)
        return []

    def _detach_delete(self, k: tuple[str, str, str, str]) -> None:
        del self.nodes[k]
        if k[0] == "PathwayNode":
            for r in [r for r in self.rels if r[:2] == k[1:3] and k[3] in (r[3], r[4])]:
                del self.rels[r]

    def _drop(self, query: str, p: Props) -> list[Props]:
        label = re.match(r"MATCH \(n:(\w+) ", query)
        assert label is not None
        doomed = [k for k in self.nodes if k[0] == label.group(1) and k[1] == p["ns"]][: p["limit"]]
        for k in doomed:
            self._detach_delete(k)
        return [{"deleted": len(doomed)}]

    # reads
    def _all(self, label: str, ns: str, key: str | None = None) -> list[Props]:
        return [v for k, v in self.nodes.items() if k[:2] == (label, ns) and key in (None, k[2])]

    def _known(self, p: Props) -> bool:
        return ("Pathway", p["ns"], p["key"], "") in self.nodes

    def _scoped(self, p: Props, rows: list[Props]) -> list[Props]:
        """MATCH (p:Pathway) OPTIONAL MATCH ...: no row for an unknown key, one null row for nothing."""
        if not self._known(p):
            return []
        if rows:
            return rows
        return [{"type": None, "source": None, "target": None, "r": None, "n": None, "s": None}]

    def _edges(self, p: Props, keep: Callable[[tuple[Any, ...]], bool]) -> list[Props]:
        return [
            {"type": k[2], "source": k[3], "target": k[4], "r": v}
            for k, v in self.rels.items()
            if k[:2] == (p["ns"], p["key"]) and keep(k)
        ]

    def _node(self, p: Props) -> list[Props]:
        found = self.nodes.get(("PathwayNode", p["ns"], p["key"], p["id"]))
        return self._scoped(p, [{"n": found}] if found is not None and not found["stub"] else [])

    def _find(self, p: Props) -> list[Props]:
        nodes = self._all("PathwayNode", p["ns"], p["key"])
        hits = [n for n in nodes if not n["stub"] and set(n.get("code_keys", ())) & set(p["code_keys"])]
        return self._scoped(p, [{"n": n} for n in hits])

    def _routes(self, p: Props) -> list[Props]:
        if not self._known(p):
            return []
        ns, key = p["ns"], p["key"]
        start = self.nodes["Pathway", ns, key, ""]["start"]
        out: dict[str, list[tuple[str, str, Props]]] = {}
        for k, v in self.rels.items():
            if k[:2] == (ns, key) and k[2] in ("NEXT", "BRANCH"):
                out.setdefault(k[3], []).append((k[2], k[4], v))
        routes: list[list[Props]] = []

        def kind(node_id: str) -> Any:
            return self.nodes["PathwayNode", ns, key, node_id].get("kind")

        def walk(at: str, path: list[Props], seen: list[str]) -> None:
            for rel_type, target, props in out.get(at, ()):
                if kind(at) not in p["walkable"] or target in seen:
                    continue
                step = [*path, {"type": rel_type, "source": at, "target": target, "r": props}]
                if target == p["id"]:
                    routes.append(step)
                if len(step) < int(MAX_ROUTE_EDGES):
                    walk(target, step, [*seen, target])

        if ("PathwayNode", ns, key, start) in self.nodes:
            walk(start, [], [start])
        return [{"start": start, "route": r} for r in routes] or [{"start": start, "route": None}]


class Call:
    def __init__(self, query: str, params: Props, write: bool, timeout: Any, session: Props) -> None:
        self.query, self.params, self.write, self.timeout, self.session = query, params, write, timeout, session


class FakeResult:
    def __init__(self, rows: list[Props]) -> None:
        self._rows = rows

    def data(self) -> list[Props]:
        return self._rows

    def consume(self) -> None:
        return None


class FakeTx:
    def __init__(self, driver: FakeDriver, write: bool, timeout: Any, session: Props) -> None:
        self.driver, self.write, self.timeout, self.session = driver, write, timeout, session

    def run(self, query: Any, parameters: Props | None = None, **kwparameters: Any) -> FakeResult:
        if isinstance(query, Query):  # as the real ManagedTransaction.run does
            raise TypeError("Query object is only supported for session.run")
        assert isinstance(query, str)
        params = {**(parameters or {}), **kwparameters}
        if not self.write:
            assert not re.search(r"\b(MERGE|CREATE|DELETE|SET)\b", query), "a write statement in a read transaction"
        self.driver.calls.append(Call(query, copy.deepcopy(params), self.write, self.timeout, self.session))
        return FakeResult(self.driver.graph.answer(query, params))


class FakeSession:
    def __init__(self, driver: FakeDriver, config: Props) -> None:
        self.driver, self.config = driver, config

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _execute(self, write: bool, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The real driver reads the timeout that unit_of_work() puts on the function.
        tx = FakeTx(self.driver, write, getattr(work, "timeout", None), self.config)
        return work(tx, *args, **kwargs)

    def execute_read(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._execute(False, work, *args, **kwargs)

    def execute_write(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._execute(True, work, *args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("auto-commit session.run is not retried: the store must use managed transactions")


class FakeDriver:
    def __init__(self, graph: FakeGraph | None = None) -> None:
        self.graph = graph or FakeGraph()
        self.calls: list[Call] = []
        self.closed = False
        self.verified = False

    def session(self, **config: Any) -> FakeSession:
        return FakeSession(self, config)

    def verify_connectivity(self) -> None:
        self.verified = True

    def close(self) -> None:
        self.closed = True


def _new(driver: FakeDriver, **kwargs: Any) -> Neo4jPathwayStore:
    return Neo4jPathwayStore(cast(Driver, driver), **kwargs)


def _store(pathways: list[Pathway], namespace: str = NS, driver: FakeDriver | None = None) -> Neo4jPathwayStore:
    store = _new(driver or FakeDriver(), database="pathways", namespace=namespace, timeout_s=TIMEOUT)
    store.ensure_schema()
    store.write_pathways(pathways)
    return store


def _driver(store: Neo4jPathwayStore) -> FakeDriver:
    driver = store._driver
    assert isinstance(driver, FakeDriver)
    return driver


def _exercise(store: Neo4jPathwayStore, pathway: Pathway) -> None:
    """Call every read once."""
    key, some = pathway.key, pathway.nodes[1].id
    store.pathways()
    store.pathway(key)
    store.node(key, some)
    store.edges_from(key, some, (EdgeKind.NEXT,))
    store.edges_to(key, some)
    store.find_orderables(key, [f"{RXNORM}|2555"])
    store.routes_to(key, pathway.nodes[-1].id)
    store.sources(key)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


# -- the whitelist and the serialisers --------------------------------------------------------------
def test_edge_kinds_map_to_a_fixed_whitelist_of_relationship_types() -> None:
    assert dict(n4.REL_TYPES) == {
        EdgeKind.NEXT: "NEXT",
        EdgeKind.BRANCH: "BRANCH",
        EdgeKind.INCLUDES: "INCLUDES",
        EdgeKind.REQUIRES: "REQUIRES",
    }
    assert {n4.KIND_OF_REL[rel] for rel in n4.REL_TYPES.values()} == set(EdgeKind)
    for kind, query in n4.Q_MERGE_EDGES.items():
        assert re.findall(r"\[r:(\w+)", query) == [n4.REL_TYPES[kind]]  # one type per statement, its own
    with pytest.raises(TypeError):
        n4.REL_TYPES[EdgeKind.NEXT] = "ANYTHING"  # type: ignore[index]


def _storable(value: Any) -> bool:
    """A Neo4j property value: a scalar or a homogeneous list of scalars, never a map or null."""
    if isinstance(value, list):
        return len({type(v) for v in value}) <= 1 and all(isinstance(v, str | int | float | bool) for v in value)
    return isinstance(value, str | int | float | bool)


@pytest.mark.parametrize("pathway", [NSCLC, TOY], ids=lambda p: p.key)
def test_properties_round_trip_to_equal_objects(pathway: Pathway) -> None:
    extra = Node(
        "x.all",
        NodeKind.ACTIVITY,
        "All fields",
        codes=(Code(RXNORM, "1", None), Code(RXNORM, "2", "")),  # display kept exactly, even ""
        question="?",
        seq=99,
        needs_mapping=("a", "b"),
    )
    for pos, node in enumerate([*pathway.nodes, extra]):
        props = n4.node_props(node, pos)
        assert all(_storable(v) for v in props.values()), props
        assert n4.node_from_props(json.loads(json.dumps(props))) == node
        assert props["code_keys" if node.codes else "stub"] == (list(node.code_keys) if node.codes else False)
    for pos, edge in enumerate(pathway.edges):
        props = n4.edge_props(edge, pos)
        assert all(_storable(v) for v in props.values()), props
        assert n4.edge_from_props(n4.REL_TYPES[edge.kind], edge.source, edge.target, props) == edge
    info = n4.info_props(pathway.info, pathway.file)
    assert all(_storable(v) for v in info.values())
    assert n4.info_from_props(info) == pathway.info
    for pos, source in enumerate(pathway.sources):
        assert n4.source_from_props(n4.source_props(source, pos)) == source
    # the same object always gives byte-identical properties (so a reload writes nothing new)
    assert [n4.node_props(n, 0) for n in pathway.nodes] == [n4.node_props(n, 0) for n in pathway.nodes]


# -- the store against the NetworkX reference ------------------------------------------------------
def test_every_answer_equals_the_networkx_store() -> None:
    store, reference = _store(ALL), NetworkXPathwayStore(ALL)
    assert isinstance(store, PathwayStore)
    assert store.pathways() == reference.pathways()
    assert [i.version for i in store.pathways() if i.id == "nsclc"] == ["2027.1", "2026.11"]
    kind_sets = [(), (EdgeKind.NEXT,), (EdgeKind.BRANCH, EdgeKind.REQUIRES), (EdgeKind.INCLUDES,)]
    for pathway in ALL:
        key = pathway.key
        assert store.pathway(key) == reference.pathway(key)
        assert store.pathway(key).file == pathway.file
        assert store.sources(key) == reference.sources(key)
        all_codes = sorted({c for n in pathway.nodes for c in n.code_keys})
        for codes in ([], all_codes, all_codes[:1], [f"{RXNORM}|2555", "nope|0"]):
            assert store.find_orderables(key, codes) == reference.find_orderables(key, codes)
        ids = [n.id for n in pathway.nodes] + ["toy.ghost", "no.such.node"]
        for node_id in ids:
            assert store.node(key, node_id) == reference.node(key, node_id)
            assert store.routes_to(key, node_id) == reference.routes_to(key, node_id), node_id
            for kinds in kind_sets:
                assert store.edges_from(key, node_id, kinds) == reference.edges_from(key, node_id, kinds)
                assert store.edges_to(key, node_id, kinds) == reference.edges_to(key, node_id, kinds)


def test_toy_shapes_are_really_exercised() -> None:
    """Guards the comparison above against passing vacuously."""
    store = _store([TOY])
    assert store.routes_to(TOY.key, "toy.start") == [()]
    routes = store.routes_to(TOY.key, "toy.end")
    # via left, via left by the parallel branch, via right; never right->ask again, never via the regimen
    assert len(routes) == 3
    assert all(e.source != "toy.regimen" for r in routes for e in r)  # not through a regimen
    assert [e.target for e in store.edges_from(TOY.key, "toy.end")] == ["toy.ghost"]
    assert store.node(TOY.key, "toy.ghost") is None
    assert "toy.ghost" not in {n.id for n in store.pathway(TOY.key).nodes}
    assert [n.id for n in store.find_orderables(TOY.key, [f"{RXNORM}|2555"])] == ["toy.regimen", "toy.drug"]
    assert [e.label for e in store.edges_from(TOY.key, "toy.ask", (EdgeKind.BRANCH,))] == ["EGFR", "", "again"]


def test_unknown_pathway_is_refused_by_every_method() -> None:
    store = _store([TOY])
    calls: list[Callable[[], object]] = [
        lambda: store.pathway("toy@9"),
        lambda: store.node("toy@9", "toy.start"),
        lambda: store.edges_from("toy@9", "toy.start"),
        lambda: store.edges_to("toy@9", "toy.start"),
        lambda: store.find_orderables("toy@9", []),
        lambda: store.routes_to("toy@9", "toy.start"),
        lambda: store.sources("toy@9"),
    ]
    for call in calls:
        with pytest.raises(UnknownPathway):
            call()


# -- how it talks to the server --------------------------------------------------------------------
def test_every_statement_runs_in_a_managed_timed_transaction() -> None:
    store = _store([TOY])
    _exercise(store, TOY)
    store.drop_namespace()
    calls = _driver(store).calls
    assert calls
    for call in calls:
        assert call.timeout == TIMEOUT
        assert call.session["database"] == "pathways"
        assert call.session["bookmark_manager"] is store._bookmarks  # reads see the store's own writes
        is_write = bool(re.search(r"\b(MERGE|CREATE|DELETE)\b", call.query))
        assert call.write == is_write, call.query
    with pytest.raises(TypeError, match=r"only supported for session\.run"):
        FakeTx(FakeDriver(), False, None, {}).run(Query("RETURN 1", timeout=1.0))


def test_no_loaded_value_is_ever_part_of_a_query() -> None:
    store = _store([NSCLC, TOY])
    for pathway in (NSCLC, TOY):
        _exercise(store, pathway)
    store.drop_namespace()
    data = {NS}
    for pathway in (NSCLC, TOY):
        data |= {pathway.key, pathway.info.title, pathway.info.start}
        data |= {v for n in pathway.nodes for v in (n.id, n.title, n.summary, *n.code_keys)}
        data |= {v for s in pathway.sources for v in (s.id, s.title, s.url)}
    data = {d for d in data if len(d) >= 4}
    calls = _driver(store).calls
    passed: set[str] = set()
    for call in calls:
        for value in data:
            assert value not in call.query, (value, call.query)
        passed |= set(_strings(call.params))
    assert data <= passed  # ... and every one of them did travel, as a parameter


def test_statements_filter_on_namespace_and_pathway_key() -> None:
    store = _store([TOY])
    _exercise(store, TOY)
    store.drop_namespace()
    for call in _driver(store).calls:
        if call.query in n4.SCHEMA:
            assert not call.params
            continue
        assert call.params["ns"] == NS
        labels = re.findall(r"\((\w+):(Pathway|PathwayNode|Source) \{([^}]*)\}", call.query)
        assert labels, call.query
        for _, _, props in labels:
            assert "ns: $ns" in props, call.query
            if call.query not in (n4.Q_PATHWAYS, *n4.DROP):
                assert "key: $key" in props, call.query
                assert call.params["key"] == TOY.key


def test_routes_are_a_bounded_variable_length_match_through_steps_and_decisions() -> None:
    assert f"-[:NEXT|BRANCH*1..{MAX_ROUTE_EDGES}]->" in n4.Q_ROUTES
    assert "startNode(rel).kind IN $walkable" in n4.Q_ROUTES
    assert "single(y IN nodes(route) WHERE y = x)" in n4.Q_ROUTES  # no node twice
    assert sorted(n4.WALKABLE_KINDS) == sorted(str(k) for k in WALKABLE) == ["decision", "step"]
    store = _store([TOY])
    store.routes_to(TOY.key, "toy.end")
    call = _driver(store).calls[-1]
    assert call.query == n4.Q_ROUTES
    assert call.params == {"ns": NS, "key": TOY.key, "id": "toy.end", "walkable": ["decision", "step"]}


def test_schema_is_idempotent_constraints_and_indexes_each_in_its_own_transaction() -> None:
    store = _new(FakeDriver(), namespace=NS)
    store.ensure_schema()
    calls = _driver(store).calls
    assert [c.query for c in calls] == list(n4.SCHEMA)
    assert all("IF NOT EXISTS" in q for q in n4.SCHEMA)
    unique = {m for q in n4.SCHEMA for m in re.findall(r"FOR \(\w:(\w+)\) REQUIRE (\([^)]*\)) IS UNIQUE", q)}
    assert unique == {
        ("Pathway", "(p.ns, p.key)"),
        ("PathwayNode", "(n.ns, n.key, n.id)"),
        ("Source", "(s.ns, s.key, s.id)"),
    }
    assert all(c.write for c in calls)


# -- loading -------------------------------------------------------------------------------------
def test_writes_are_merges_and_a_second_load_changes_nothing() -> None:
    store = _store([NSCLC, TOY])
    driver = _driver(store)
    first_calls, first_graph = list(driver.calls), driver.graph.snapshot()
    driver.calls.clear()
    store.write_pathways([NSCLC, TOY])
    second = [(c.query, c.params) for c in driver.calls]
    assert second == [(c.query, c.params) for c in first_calls if c.query not in n4.SCHEMA]
    assert driver.graph.snapshot() == first_graph
    for call in driver.calls:
        assert "CREATE" not in call.query  # MERGE, never CREATE: a reload cannot duplicate
        assert "MERGE" in call.query or "DELETE" in call.query
    nodes = [k for k in driver.graph.nodes if k[0] == "PathwayNode" and not driver.graph.nodes[k]["stub"]]
    assert len(nodes) == len(NSCLC.nodes) + len(TOY.nodes)
    assert len(driver.graph.rels) == len(NSCLC.edges) + len(TOY.edges)


def test_rows_are_sent_in_unwind_batches() -> None:
    many = Pathway(
        TOY.info,
        tuple(dataclasses.replace(n, id=f"toy.n{i}", seq=i) for i, n in enumerate(TOY.nodes * 200)),
        (),
        TOY.sources,
    )
    store = _store([many])
    rows = [len(c.params["rows"]) for c in _driver(store).calls if c.query == n4.Q_MERGE_NODES]
    assert rows == [n4.BATCH, n4.BATCH, len(many.nodes) - 2 * n4.BATCH]
    assert [n.id for n in store.pathway(many.key).nodes] == [n.id for n in many.nodes]


def test_rewriting_a_version_replaces_its_content() -> None:
    changed = Pathway(
        dataclasses.replace(TOY.info, title="Toy, revised"),
        tuple(n for n in TOY.nodes if n.id not in ("toy.right", "toy.drug")),
        tuple(
            dataclasses.replace(e, target="toy.end") if e.seq == 1 else e for e in TOY.edges if e.target != "toy.drug"
        ),
        TOY.sources[:1],
        TOY.file,
    )
    store = _store([TOY, NSCLC])
    store.write_pathways([changed])
    fresh = _store([changed, NSCLC])
    assert _driver(store).graph.snapshot() == _driver(fresh).graph.snapshot()
    assert store.pathway(TOY.key) == NetworkXPathwayStore([changed]).pathway(TOY.key)
    assert store.node(TOY.key, "toy.right") is None  # now only a stub: edges still name it
    assert not any(k[3] == "toy.drug" for k in _driver(store).graph.nodes)  # named by nothing: gone
    assert store.pathway(NSCLC.key) == NSCLC  # the other pathway is untouched


def test_versions_live_side_by_side() -> None:
    store = _store([NSCLC, NSCLC_NEXT])
    assert store.pathway(NSCLC.key) == NSCLC
    assert store.pathway(NSCLC_NEXT.key) == NSCLC_NEXT
    keys = {k[2] for k in _driver(store).graph.nodes if k[0] == "PathwayNode"}
    assert keys == {NSCLC.key, NSCLC_NEXT.key}


def test_refuses_what_a_graph_cannot_hold_apart() -> None:
    store = _new(FakeDriver(), namespace=NS)
    with pytest.raises(ValueError, match="given twice"):
        store.write_pathways([TOY, TOY])
    twin = Pathway(TOY.info, (*TOY.nodes, TOY.nodes[0]), TOY.edges, TOY.sources)
    with pytest.raises(ValueError, match="duplicate node ids"):
        store.write_pathways([twin])
    assert not _driver(store).calls  # refused before anything was written


def test_namespaces_are_separate_and_dropped_in_batches() -> None:
    driver = FakeDriver()
    mine, theirs = _store([TOY], "ns-mine", driver), _store([TOY, NSCLC], "ns-theirs", driver)
    assert [i.key for i in mine.pathways()] == [TOY.key]
    with pytest.raises(UnknownPathway):
        mine.pathway(NSCLC.key)
    before = sum(1 for k in driver.graph.nodes if k[1] == "ns-mine")
    driver.calls.clear()
    assert mine.drop_namespace(batch_size=3) == before
    drops = [c for c in driver.calls if c.query in n4.DROP]
    assert len(drops) > len(n4.DROP) and all(c.params == {"ns": "ns-mine", "limit": 3} for c in drops)
    assert not any(k[1] == "ns-mine" for k in driver.graph.nodes)
    assert not any(k[0] == "ns-mine" for k in driver.graph.rels)
    assert mine.pathways() == []
    assert theirs.pathway(TOY.key) == TOY and theirs.pathway(NSCLC.key) == NSCLC


# -- connecting ----------------------------------------------------------------------------------
def test_connect_configures_the_driver_and_owns_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    driver = FakeDriver()

    def fake_driver(uri: str, **kwargs: Any) -> FakeDriver:
        seen.update(uri=uri, **kwargs)
        return driver

    monkeypatch.setattr(n4.GraphDatabase, "driver", fake_driver)
    store = Neo4jPathwayStore.connect(
        "neo4j+s://db.example:7687",
        "u",
        "pw",
        database="d",
        namespace="n",
        timeout_s=3.0,
        max_pool_size=7,
        connection_timeout_s=4.0,
        max_retry_time_s=9.0,
    )
    assert seen == {
        "uri": "neo4j+s://db.example:7687",
        "auth": ("u", "pw"),
        "max_connection_pool_size": 7,
        "connection_timeout": 4.0,
        "max_transaction_retry_time": 9.0,
    }
    assert driver.verified and store.namespace == "n"
    with pytest.raises(UnknownPathway):
        store.sources("x@1")
    assert driver.calls[-1].session["database"] == "d" and driver.calls[-1].timeout == 3.0
    store.close()
    assert driver.closed


def test_connect_closes_the_driver_when_the_server_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = FakeDriver()

    def unreachable() -> None:
        raise OSError("no route")

    driver.verify_connectivity = unreachable  # type: ignore[method-assign]
    monkeypatch.setattr(n4.GraphDatabase, "driver", lambda uri, **kw: driver)
    with pytest.raises(OSError, match="no route"):
        Neo4jPathwayStore.connect("bolt://nowhere:7687", "u", "pw")
    assert driver.closed


def test_a_driver_handed_in_stays_open_and_arguments_are_checked() -> None:
    driver = FakeDriver()
    _new(driver).close()
    assert not driver.closed
    with pytest.raises(ValueError, match="namespace"):
        _new(driver, namespace="")
    with pytest.raises(ValueError, match="timeout"):
        _new(driver, timeout_s=0)


def test_store_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """NEO4J_* are read by ``load_settings`` (validated there) and the store is opened by ``open_store``."""
    assert load_settings({}).neo4j_uri is None and load_settings({"NEO4J_URI": "  "}).neo4j_uri is None
    with pytest.raises(ConfigError, match="NEO4J_PASSWORD"):
        load_settings({"NEO4J_URI": "bolt://h:7687"})
    seen: list[tuple[Any, ...]] = []

    def fake_connect(uri: str, user: str, password: str, **kwargs: Any) -> str:
        seen.append((uri, user, password, kwargs))
        return "store"

    monkeypatch.setattr(Neo4jPathwayStore, "connect", fake_connect)
    env = {"NEO4J_URI": "bolt://h:7687", "NEO4J_PASSWORD": "pw"}
    assert open_store(load_settings({**env, "NEO4J_NAMESPACE": "t1"})) == "store"
    assert open_store(load_settings({**env, "NEO4J_USER": "me", "NEO4J_DATABASE": "db"})) == "store"
    assert seen == [
        ("bolt://h:7687", "neo4j", "pw", {"database": "neo4j", "namespace": "t1", "timeout_s": 10.0}),
        ("bolt://h:7687", "me", "pw", {"database": "db", "namespace": "default", "timeout_s": 10.0}),
    ]
