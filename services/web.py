"""What the services' HTTP layers share beyond ``shared.http``: the app's pathway queries."""

from __future__ import annotations

from flask import current_app

from graph import open_store
from graph.queries import PathwayQueries
from shared.http import settings

EXTENSION = "oncotwin.pathways"


def pathway_queries() -> PathwayQueries:
    """The pathway queries of this app, opened once from its settings (NetworkX or Neo4j)."""
    queries = current_app.extensions.get(EXTENSION)
    if queries is None:
        queries = current_app.extensions[EXTENSION] = PathwayQueries(open_store(settings()))
    return queries
