"""A newcomer's first ``oncotwin up`` (issue 20): the printed URL opens the dashboard's sign-in page,
``/dashboard`` redirects, the banner ends with the URL and the token, and SIGTERM stops everything
within a few seconds without an ERROR line.

A real ``oncotwin up`` subprocess on a free port with a temporary ONCOTWIN_DATA_DIR, as in
test_embedded_up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from oncotwin.up import control_socket_options
from tests.celery_support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
STOP_WITHIN_S = 10.0


def _start(tmp: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    port, log = free_port(), tmp / "up.log"
    env = {**os.environ, "ONCOTWIN_DATA_DIR": str(tmp / "var")}
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "oncotwin", "up", "--port", str(port), "--task-workers", "1"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def banner_printed() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"oncotwin up exited:\n{log.read_text()[-3000:]}")
        return "Bearer token" in log.read_text()

    wait_until(banner_printed, 60, "the banner")
    return process, log, port


def _stop(process: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return time.monotonic() - started


def test_first_run_prints_a_working_dashboard_url_and_stops_promptly(tmp_path: Path) -> None:
    process, log, port = _start(tmp_path)
    try:
        time.sleep(1.0)  # let a late line (gunicorn, the task worker) show up after the banner
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        token_at = next(i for i, line in enumerate(lines) if line.startswith("Bearer token"))
        token = lines[token_at + 1].strip()
        assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token), lines[token_at + 1]
        url = re.search(r"(http://\S+)", lines[token_at - 1])
        assert lines[token_at - 1].startswith("Dashboard:") and url, lines[token_at - 1]
        # Nothing of the start-up (gunicorn's INFO lines, Celery's banner) after the token.
        after = "\n".join(lines[token_at + 2 :])
        assert "[INFO]" not in after and "[tasks]" not in after and "ready." not in after, after
        assert (tmp_path / "var" / "gunicorn.ctl").exists() or not control_socket_options(tmp_path / "x")

        # The printed URL is the dashboard: its sign-in page, HTML, no JSON 401.
        page = requests.get(url.group(1), timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html"), page.text[:300]
        assert page.url.endswith("/dashboard/signin?next=/dashboard/")
        base = f"http://127.0.0.1:{port}"
        bare = requests.get(base + "/dashboard", allow_redirects=False, timeout=10)
        assert bare.status_code in (301, 302, 303, 307, 308) and bare.headers["Location"].endswith("/dashboard/")
        root = requests.get(base + "/", allow_redirects=False, timeout=10)
        assert root.status_code in (301, 302, 303, 307, 308) and root.headers["Location"].endswith("/dashboard/")
        # The token signs in.
        session = requests.Session()
        signin = session.get(base + "/dashboard/signin", timeout=10)
        csrf = re.search(r'name="csrf" value="([^"]+)"', signin.text)
        assert csrf, signin.text[:500]
        signed = session.post(base + "/dashboard/signin", data={"csrf": csrf.group(1), "token": token}, timeout=10)
        assert signed.status_code == 200 and signed.url.endswith("/dashboard/patients"), signed.text[:300]
    finally:
        took = _stop(process)
    output = log.read_text()
    assert took < STOP_WITHIN_S, f"stopping took {took:.1f} s:\n{output[-3000:]}"
    assert " ERROR" not in output and "ERROR/" not in output and "Traceback" not in output, output[-3000:]
    assert process.returncode == 0, output[-3000:]


def test_control_socket_is_per_instance_or_off(tmp_path: Path) -> None:
    options = control_socket_options(tmp_path / "gunicorn.ctl")
    assert options in ({}, {"control_socket": str(tmp_path / "gunicorn.ctl")})
    assert control_socket_options(Path("/" + "x" * 200)) in ({}, {"control_socket_disable": True})


def test_patient_data_defaults_to_the_developer_data_only_when_unset_and_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oncotwin import up

    monkeypatch.setattr(up, "DEVELOPER_PATIENTS", tmp_path)
    env: dict[str, str] = {}
    assert "developer data" in up.default_patient_data(env) and env["PATIENT_DATA_DIR"] == str(tmp_path)
    chosen = {"PATIENT_DATA_DIR": "/elsewhere"}
    assert "/elsewhere" in up.default_patient_data(chosen) and chosen == {"PATIENT_DATA_DIR": "/elsewhere"}
    monkeypatch.setattr(up, "DEVELOPER_PATIENTS", tmp_path / "missing")
    none: dict[str, str] = {}
    assert "PATIENT_DATA_DIR=" in up.default_patient_data(none) and none == {}
