"""Real servers and workers for Celery tests: a private Redis, a fresh PostgreSQL database, workers.

Everything here runs real processes, so tests see what production sees (late acks, redelivery,
broker restarts) rather than eager mode:

* :class:`RedisServer`: ``redis-server`` on a free port, no persistence, restartable mid-test
  without touching anyone else's Redis.
* :func:`postgres_database`: a new database on the local PostgreSQL (``PG_ADMIN_URL``, default
  ``postgresql://postgres@127.0.0.1:5432/postgres``), dropped afterwards.
* :class:`CeleryWorker`: ``celery worker`` in its own process group (so ``kill9`` takes the main
  process and its pool children at once), ready when its log says so, logs kept for failures.
* :func:`use_broker` points this process's Celery app (the producer side) at the test servers.
* :func:`wait_until` polls a condition with a deadline (tests never sleep for timing).
* :func:`servers_available` says whether the binaries and PostgreSQL are there (for skip marks).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _postgres_up() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def servers_available() -> str | None:
    """None when Redis and PostgreSQL can be used, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    if not _postgres_up():
        return f"PostgreSQL is not reachable at {PG_ADMIN_URL}"
    return None


class RedisServer:
    """A private ``redis-server`` (no RDB, no AOF) on a free local port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 20, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def restart(self) -> None:
        """Stop and start on the same port: queued and unacked messages are gone (no persistence)."""
        self.stop()
        self.start()


@contextmanager
def postgres_database(prefix: str = "oncotwin_test") -> Iterator[str]:
    """A fresh database; yields its ``postgresql://`` URL and drops it (and its connections) after."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        yield url
    finally:
        from shared import db

        created = db._ENGINES.pop(url, None)  # this process's pooled connections to it
        if created is not None:
            created.dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_env(redis_url: str, database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker (and of the settings the test process uses) for these servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "CELERY_", "DATABASE_"))}
    env.update(
        {
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "DATABASE_URL": database_url,
            "ONCOTWIN_DATA_DIR": str(data_dir),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def use_broker(env: Mapping[str, str]) -> Any:
    """Point this process's Celery app at the servers in ``env``; returns the settings."""
    from shared.celery_app import configure
    from shared.config import load_settings

    settings = load_settings(env)
    configure(settings)  # also drops connection pools bound to another broker
    return settings


class CeleryWorker:
    """``celery worker`` for some queues, in its own process group, logging to a file.

    ``pool="prefork"`` (default, as deployed: time limits, a dead child is replaced) or ``"solo"``
    (the task runs in the worker process itself: no hand-over to a child process)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        queues: str = "necessity",
        concurrency: int = 1,
        name: str | None = None,
        prefetch: int | None = None,
        pool: str = "prefork",
    ) -> None:
        self.env = dict(env)
        self.queues = queues
        self.concurrency = concurrency
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.log = log_dir / f"worker-{self.name}.log"
        self.prefetch = prefetch
        self.pool = pool
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 60) -> CeleryWorker:
        command = [sys.executable, "-m", "celery", "-A", "shared.celery_app:celery_app", "worker"]
        command += ["-Q", self.queues, "-c", str(self.concurrency), "--pool", self.pool, "--loglevel", "INFO"]
        command += ["-n", f"{self.name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if self.prefetch is not None:
            command += ["--prefetch-multiplier", str(self.prefetch)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        offset = self.log.stat().st_size if self.log.exists() else 0
        wait_until(lambda: self._ready(offset), ready_timeout, f"worker {self.name} to be ready (log {self.log})")
        return self

    def _ready(self, offset: int) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited with {self.process.returncode}; see {self.log}")
        return b" ready." in self.log.read_bytes()[offset:]

    def kill9(self) -> None:
        """SIGKILL to the whole process group: the main process and its pool children die at once."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
        except ProcessLookupError:
            pass
        self.process = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def replicate(sources: list[Path], dest: Path, copies: int) -> list[Path]:
    """``copies`` copies of each source file under ``dest`` (distinct names: distinct audit inputs)."""
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(copies):
        for source in sources:
            target = dest / f"{source.stem}-copy{i:04d}{source.suffix}"
            shutil.copyfile(source, target)
            made.append(target)
    return made
