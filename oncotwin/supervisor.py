"""Keeps the embedded default's Celery worker process running next to the web server.

``oncotwin up`` needs no server, yet tasks still run asynchronously in their own process: this
supervisor starts ``celery worker`` on every queue, restarts it (with a capped backoff) whenever it
exits, and stops it with the web server. A task the dead worker held is redelivered by the broker
(late acks) and writers are idempotent, so a crash loses nothing.

It runs as a process of its own (``python -m oncotwin.supervisor``), not as a thread of the
gunicorn master: the master forks web workers at any moment and reaps any child on SIGCHLD, which
can leave a thread's ``subprocess.Popen`` waiting forever on a pipe a forked worker inherited.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

from shared.celery_app import QUEUES

log = logging.getLogger(__name__)


def worker_command(concurrency: int, loglevel: str = "WARNING") -> list[str]:
    """Quiet by default (no banner, warnings only): ``oncotwin up``'s own banner is what a first run
    must see last."""
    return [
        sys.executable, "-m", "celery", "-A", "shared.celery_app:celery_app", "--quiet", "worker",
        "-Q", ",".join(QUEUES), "--concurrency", str(concurrency), "--loglevel", loglevel,
        "--hostname", "embedded@%h",
    ]  # fmt: skip


class WorkerSupervisor:
    def __init__(self, command: list[str], env: Mapping[str, str] | None = None, max_backoff_s: float = 30.0) -> None:
        # Not a settings read: the children inherit the environment as it is (they load their own Settings).
        self._command, self._env = command, dict(env if env is not None else os.environ)
        self._max_backoff_s = max_backoff_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()  # forked children (gunicorn's web worker) must not stop it
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)
        self.starts = 0

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process else None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            with self._lock:
                self._process = subprocess.Popen(self._command, env=self._env, start_new_session=True)  # noqa: S603
                self.starts += 1
            code = self._process.wait()
            _kill_group(self._process.pid)  # pool children orphaned by a killed main process
            if self._stopping.is_set():
                return
            log.warning("task worker exited with %s; restarting in %.0f s", code, backoff)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Warm shutdown, then SIGKILL to the whole group after ``timeout_s`` (a task cut short is
        redelivered: late acks, idempotent writers).

        SIGTERM goes to the worker's main process only: the main process stops its pool children
        itself; a SIGTERM to the group would kill them under it (an ERROR line per child) and can
        leave the main process waiting on them until the SIGKILL."""
        if os.getpid() != self._owner:
            return
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("task worker still running %.0f s after SIGTERM; killing it", timeout_s)
            _kill_group(process.pid)
            process.wait()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """The supervisor process: runs until SIGTERM or SIGINT, then stops the worker warm."""
    parser = argparse.ArgumentParser(prog="python -m oncotwin.supervisor")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--loglevel", default="WARNING", help="the Celery worker's log level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    supervisor = WorkerSupervisor(worker_command(args.concurrency, args.loglevel))
    supervisor.start()
    done.wait()
    supervisor.stop()
    return 0


def start_process(concurrency: int) -> subprocess.Popen[bytes]:
    """The supervisor as a child process (``oncotwin up`` starts it before the web server)."""
    command = [sys.executable, "-m", "oncotwin.supervisor", "--concurrency", str(concurrency)]
    return subprocess.Popen(command)  # noqa: S603 - our own interpreter and module


def stop_process(process: subprocess.Popen[bytes], owner: int, timeout_s: float = 15.0) -> None:
    """SIGTERM (the supervisor stops its worker warm), SIGKILL after ``timeout_s``; only from ``owner``
    (a gunicorn web worker forked from the master inherits this object and must leave it alone)."""
    if os.getpid() != owner:
        process.returncode = 0  # a forked copy: not this process's child; its Popen.__del__ must not warn
        return
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
