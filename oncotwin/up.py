"""``oncotwin up``: the embedded default on one machine, no external servers.

Creates the local signing key on first start, prints a token and the URL, then serves every
service behind one port with gunicorn (threads, so the process-wide caches are shared), next to
a supervised Celery worker process for the asynchronous work (evaluations, audits).

Warm start: the web worker loads the radiology model as it starts (and trains it, 25-70 s, when the
data folder has none yet), in a background thread; ``/health`` answers at once, ``/ready`` answers
503 until the model is loaded, and radiology requests meanwhile get 503 instead of training inside
the request. The first classification after start is then as fast as the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from gunicorn.app.base import BaseApplication

from shared.auth import SCOPES, LocalKeys
from shared.config import load_settings


class _Server(BaseApplication):
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def run_embedded(host: str, port: int, workers: int, task_workers: int = 2) -> int:
    from oncotwin.app import create_app
    from oncotwin.supervisor import start_process, stop_process

    settings = load_settings()
    app = create_app(settings)
    if settings.local_keys:
        keys = LocalKeys(settings.data_dir)
        keys.ensure()
        token = keys.mint("local-user", sorted(SCOPES), issuer=settings.token_issuer, audience=settings.token_audience)
        print(f"OncoTwin (embedded) on http://{host}:{port}/  (health: /health)", flush=True)
        print("Bearer token for this machine (8 h; new one: oncotwin token):", flush=True)
        print(token, flush=True)
    ready_when_warm(app, settings.data_dir)
    supervisor = start_process(task_workers) if task_workers else None
    owner = os.getpid()
    try:
        _run_server(app, host, port, workers, warm=lambda _worker: start_warm_up(settings.data_dir))
    finally:
        if supervisor:
            stop_process(supervisor, owner)
    return 0


def start_warm_up(data_dir: Path) -> None:
    """Load or train the radiology model in the background (in the process that serves requests)."""
    from services.radiology.service import start_warm_up as start

    start(data_dir)


def ready_when_warm(app: Flask, data_dir: Path) -> None:
    """``/ready`` answers 503 until the radiology model is loaded, then as before."""
    from services.radiology.service import is_warm

    ready = app.view_functions["ready"]

    def ready_once_warm() -> Any:
        if not is_warm(data_dir):
            response = jsonify({"status": "starting", "waitingFor": ["radiology model"]})
            response.status_code = 503
            response.headers["Retry-After"] = "5"
            return response
        return ready()

    app.view_functions["ready"] = ready_once_warm


def _run_server(app: Any, host: str, port: int, workers: int, warm: Any = None) -> None:
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": 1,
        "threads": max(workers, 1) * 4,
        "worker_class": "gthread",
        "timeout": 120,
        "accesslog": None,
    }
    if warm is not None:  # in the web worker, after the fork: a thread started in the master would not be there
        options["post_worker_init"] = warm
    _Server(app, options).run()
