"""The access log reaches stderr under gunicorn, which configures no logging: a real gunicorn
process serving the app, one authenticated patient read, and its `oncotwin.access` line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from shared.auth import LocalKeys
from shared.config import load_settings
from tests.conftest import requires_data, synthea

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@requires_data
def test_gunicorn_writes_the_access_log_to_stderr(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "ONCOTWIN_DATA_DIR": str(tmp_path), "LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT)}
    settings = load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path)})
    keys = LocalKeys(settings.data_dir)
    keys.ensure()
    token = keys.mint("dr-log", ["history.read"], 300, issuer=settings.token_issuer, audience=settings.token_audience)
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "oncotwin.app:create_app()",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):  # wait for the port (polling the server, not sleeping a fixed time)
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        response = requests.post(
            f"{url}/history/v1/timeline",
            data=synthea("Andy_Schaden").read_bytes(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
            timeout=60,
        )
        assert response.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if "oncotwin.access" in line]
    assert lines, err[-2000:]
    assert "dr-log" in lines[0] and "Andy" not in lines[0] and "Schaden" not in lines[0]  # who read, never PHI
