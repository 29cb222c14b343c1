"""The care-pathway graph: schema, pathway content, stores and queries (see graph/README.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graph.store import PathwayStore
    from shared.config import Settings


def open_store(settings: Settings) -> PathwayStore:
    """The store the settings ask for: Neo4j when NEO4J_URI is set, else the embedded NetworkX one."""
    if settings.neo4j_uri:
        from graph.neo4j_store import Neo4jPathwayStore

        return Neo4jPathwayStore.connect(
            settings.neo4j_uri,
            settings.neo4j_user,
            settings.neo4j_password or "",
            database=settings.neo4j_database,
            namespace=settings.neo4j_namespace,
            timeout_s=settings.neo4j_timeout_s,
        )
    from graph.loader import PATHWAY_DIR
    from graph.networkx_store import NetworkXPathwayStore

    return NetworkXPathwayStore.load(settings.pathway_dir or PATHWAY_DIR)
