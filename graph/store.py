"""The ``PathwayStore`` protocol: what every pathway store answers, and nothing more.

Stores hold pathway versions and answer graph questions (nodes, edges, routes, code lookups).
Clinical meaning lives above them: ``graph.queries`` asks these questions and ``graph.facts``
evaluates the conditions it gets back, so the NetworkX and Neo4j stores cannot disagree on a
decision. The contract suite (``tests/test_graph_contract.py``) runs against both.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol, runtime_checkable

from graph.model import Edge, EdgeKind, Node, Pathway, PathwayInfo, Source

MAX_ROUTE_EDGES = 40  # a pathway deeper than this is a modelling error, not a patient journey


class UnknownPathway(LookupError):
    """No pathway with that key (``id@version``) is loaded."""


@runtime_checkable
class PathwayStore(Protocol):
    def pathways(self) -> list[PathwayInfo]:
        """Every loaded pathway version: by id, newest version first within an id."""
        ...

    def pathway(self, key: str) -> Pathway:
        """The whole pathway version ``key`` (``id@version``), for export and validation."""
        ...

    def node(self, key: str, node_id: str) -> Node | None: ...

    def edges_from(self, key: str, node_id: str, kinds: Collection[EdgeKind] = ()) -> list[Edge]:
        """Out-edges of a node (all kinds when ``kinds`` is empty), in file order."""
        ...

    def edges_to(self, key: str, node_id: str, kinds: Collection[EdgeKind] = ()) -> list[Edge]:
        """In-edges of a node, in file order."""
        ...

    def find_orderables(self, key: str, code_keys: Collection[str]) -> list[Node]:
        """Regimens and activities carrying any of these codes (``"system|code"``), in file order."""
        ...

    def routes_to(self, key: str, node_id: str) -> list[tuple[Edge, ...]]:
        """Every path of next/branch edges from the pathway's start to ``node_id`` that passes
        only through steps and decisions, ordered by the file order of its edges."""
        ...

    def sources(self, key: str) -> dict[str, Source]: ...

    def close(self) -> None: ...


def latest(infos: list[PathwayInfo]) -> dict[str, PathwayInfo]:
    """The newest version of each pathway id."""
    out: dict[str, PathwayInfo] = {}
    for info in infos:
        if info.id not in out or info.version_tuple > out[info.id].version_tuple:
            out[info.id] = info
    return out


def route_order(route: tuple[Edge, ...]) -> tuple[int, ...]:
    return tuple(e.seq for e in route)
