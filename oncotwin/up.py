"""``oncotwin up``: the embedded default on one machine, no external servers.

Creates the local signing key on first start, prints a token and the URL, then serves every
service behind one port with gunicorn (threads, so the process-wide caches are shared), next to
a supervised Celery worker process for the asynchronous work (evaluations, audits).
"""

from __future__ import annotations

import os
from typing import Any

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
    supervisor = start_process(task_workers) if task_workers else None
    owner = os.getpid()
    try:
        _run_server(app, host, port, workers)
    finally:
        if supervisor:
            stop_process(supervisor, owner)
    return 0


def _run_server(app: Any, host: str, port: int, workers: int) -> None:
    _Server(
        app,
        {
            "bind": f"{host}:{port}",
            "workers": 1,
            "threads": max(workers, 1) * 4,
            "worker_class": "gthread",
            "timeout": 120,
            "accesslog": None,
        },
    ).run()
