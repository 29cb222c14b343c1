"""``oncotwin up``: the embedded default on one machine, no external servers.

Creates the local signing key on first start, prints a token and the URL, then serves every
service behind one port with gunicorn (threads, so the process-wide caches are shared), next to
a supervised Celery worker process for the asynchronous work (evaluations, audits).

Warm start: the web worker loads the radiology model as it starts (and trains it, 25-70 s, when the
data folder has none yet), in a background thread; ``/health`` answers at once, ``/ready`` answers
503 until the model is loaded, and radiology requests meanwhile get 503 instead of training inside
the request. The first classification after start is then as fast as the rest.

First run: the startup stays quiet (gunicorn and the task worker log warnings only) and ends with a
short banner whose last lines are the dashboard URL and the token; ``/`` and ``/dashboard`` lead to
the dashboard's sign-in page. Without ``PATIENT_DATA_DIR`` the dashboard shows the developer data
``../shared/data/fhir`` beside the checkout when it is there. Ctrl-C or SIGTERM stops everything in a
few seconds: gunicorn's graceful timeout is short, and queued tasks are redelivered after a restart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, redirect
from gunicorn.app.base import BaseApplication
from gunicorn.config import KNOWN_SETTINGS

from shared.auth import SCOPES, LocalKeys
from shared.config import load_settings
from shared.http import authenticates_itself

ROOT = Path(__file__).resolve().parents[1]
DEVELOPER_PATIENTS = ROOT.parent / "shared" / "data" / "fhir"
GRACEFUL_TIMEOUT_S = 8
UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux (104 on macOS): longer paths cannot be bound


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

    # Not a settings read: it *sets* the default PATIENT_DATA_DIR for this process and the ones it starts.
    patients_note = default_patient_data(os.environ)
    settings = load_settings()
    app = create_app(settings)
    redirect_root_to_dashboard(app)
    token = None
    if settings.local_keys:
        keys = LocalKeys(settings.data_dir)
        keys.ensure()
        token = keys.mint("local-user", sorted(SCOPES), issuer=settings.token_issuer, audience=settings.token_audience)
    lines = banner(host, port, patients_note, token)
    ready_when_warm(app, settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the control socket lives there
    supervisor = start_process(task_workers) if task_workers else None
    owner = os.getpid()
    try:
        _run_server(
            app,
            host,
            port,
            workers,
            warm=lambda _worker: start_warm_up(settings.data_dir),
            ready=lambda _arbiter: print("\n".join(lines), flush=True),
            control_socket=settings.data_dir / "gunicorn.ctl",
        )
    finally:
        if supervisor:
            stop_process(supervisor, owner)
    return 0


def default_patient_data(env: Any) -> str:
    """Without ``PATIENT_DATA_DIR``, the developer data beside the checkout (when it is there); a
    banner line saying which folder the dashboard shows, or how to give it one."""
    if env.get("PATIENT_DATA_DIR"):
        return f"Patients: {env['PATIENT_DATA_DIR']} (PATIENT_DATA_DIR)"
    if DEVELOPER_PATIENTS.is_dir():
        env["PATIENT_DATA_DIR"] = str(DEVELOPER_PATIENTS)
        return f"Patients: {DEVELOPER_PATIENTS} (developer data; set PATIENT_DATA_DIR for others)"
    return "Patients: none yet; start with PATIENT_DATA_DIR=/path/to/fhir-bundles to show some"


def banner(host: str, port: int, patients_note: str, token: str | None) -> list[str]:
    """The last lines ``oncotwin up`` prints at start: the URL, then the token (when it signs its own)."""
    base = f"http://{host}:{port}"
    lines = ["", f"OncoTwin (embedded) is up. Health: {base}/health   Stop: Ctrl-C", patients_note]
    if token is None:
        return [*lines, f"Dashboard: {base}/dashboard/  (sign in with a token of your identity provider)"]
    return [
        *lines,
        f"Dashboard: {base}/dashboard/  (sign in with the token below)",
        "Bearer token for this machine (8 h; new one: oncotwin token):",
        token,
    ]


def redirect_root_to_dashboard(app: Flask) -> None:
    """``/`` is the dashboard (its sign-in page until signed in), not a 401 for a newcomer's browser."""
    if any(rule.rule == "/" for rule in app.url_map.iter_rules()):
        return

    @authenticates_itself
    def root() -> Any:
        return redirect("/dashboard/", 302)

    app.add_url_rule("/", "root", root, methods=["GET"])


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


def _run_server(
    app: Any,
    host: str,
    port: int,
    workers: int,
    warm: Any = None,
    ready: Any = None,
    control_socket: Path | None = None,
) -> None:
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": 1,
        "threads": max(workers, 1) * 4,
        "worker_class": "gthread",
        "timeout": 120,
        # Ctrl-C: in-flight requests (and a web worker busy training the model) get 8 s, not 30
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "accesslog": None,
        "loglevel": "warning",  # the banner is the last thing a first run prints
    }
    options.update(control_socket_options(control_socket))
    if warm is not None:  # in the web worker, after the fork: a thread started in the master would not be there
        options["post_worker_init"] = warm
    if ready is not None:  # in the master, once it listens
        options["when_ready"] = ready
    _Server(app, options).run()


def control_socket_options(path: Path | None) -> dict[str, Any]:
    """gunicorn's control socket (gunicorn 25+) defaults to one path per user, shared by every
    instance on the host: each instance gets its own under its data dir, or none where the path
    would be too long for a Unix socket."""
    known = {setting.name for setting in KNOWN_SETTINGS}
    if "control_socket" not in known:
        return {}
    if path is None or len(str(path)) > UNIX_PATH_MAX:
        return {"control_socket_disable": True}
    return {"control_socket": str(path)}
