"""The database: one SQLAlchemy engine per process, from ``DATABASE_URL``.

PostgreSQL in compose, Kubernetes and tests; SQLite under the data directory for the embedded
default (WAL, so the web process reads while the worker writes). Tables belong to the domain that
owns them (audits, evaluations) and are declared on :data:`Base`.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from shared.config import Settings


class Base(DeclarativeBase):
    pass


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # postgresql:// -> the psycopg 3 driver (the one the project installs).
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    return engine


_ENGINES: dict[str, Engine] = {}


def engine(settings: Settings) -> Engine:
    """The process's engine for ``settings.database``; creates the tables on first use."""
    url = settings.database
    if url not in _ENGINES:
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        created = make_engine(url)
        Base.metadata.create_all(created)
        _ENGINES[url] = created
    return _ENGINES[url]


def sessions(settings: Settings) -> sessionmaker[Any]:
    return sessionmaker(engine(settings), expire_on_commit=False)


def _forget_parent_connections() -> None:
    # A forked worker must not reuse the parent's pooled connections (SQLAlchemy's documented recipe).
    for created in _ENGINES.values():
        created.dispose(close=False)


os.register_at_fork(after_in_child=_forget_parent_connections)
