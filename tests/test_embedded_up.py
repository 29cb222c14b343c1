"""``oncotwin up`` end to end: the embedded default (no servers) runs evaluations on a supervised worker.

The worker is a separate process on the SQLite broker; killing it with SIGKILL must not lose the
next evaluation: the supervisor starts a new one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.celery_support import free_port, wait_until
from tests.conftest import requires_data, synthea

pytestmark = requires_data
ROOT = Path(__file__).resolve().parents[1]


class Embedded:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / "up.log"
        env = {**os.environ, "ONCOTWIN_DATA_DIR": str(tmp / "var")}
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL"):
            env.pop(name, None)
        command = [sys.executable, "-m", "oncotwin", "up", "--port", str(self.port), "--task-workers", "1"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until(self._healthy, 60, "the embedded server")
        lines = self.log.read_text().splitlines()
        self.token = lines[lines.index(next(x for x in lines if x.startswith("Bearer token"))) + 1].strip()

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"oncotwin up exited:\n{self.log.read_text()[-3000:]}")
        try:
            return requests.get(self.base + "/health", timeout=1).ok
        except requests.ConnectionError:
            return False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/fhir+json"}

    def evaluate(self, body: bytes) -> dict[str, Any]:
        posted = requests.post(self.base + "/v1/evaluations", data=body, headers=self.headers(), timeout=10)
        assert posted.status_code == 202, posted.text
        url = self.base + posted.headers["Location"]

        def finished() -> dict[str, Any] | None:
            view: dict[str, Any] = requests.get(url, headers=self.headers(), timeout=10).json()
            return view if view["status"] in ("done", "failed") else None

        result: dict[str, Any] = wait_until(finished, 90, "the evaluation")
        return result

    def worker_pids(self) -> set[int]:
        """The Celery worker main process(es): children of the supervisor process ``oncotwin up`` started."""
        supervisors = _children(self.process.pid, "oncotwin.supervisor")
        return {pid for supervisor in supervisors for pid in _children(supervisor, "celery")}

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _children(parent: int, marker: str) -> set[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True, text=True, check=False
    ).stdout
    return {int(line.split()[0]) for line in out.splitlines() if marker in line}


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    server = Embedded(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_up_runs_an_evaluation_on_its_worker_and_survives_the_worker_being_killed(embedded: Embedded) -> None:
    body = synthea("Austin").read_bytes()
    first = embedded.evaluate(body)
    assert first["status"] == "done"
    assert [c["cancerType"] for c in first["result"]["history"]["cancers"]] == ["nsclc"]

    (old,) = wait_until(embedded.worker_pids, 30, "the worker process")
    os.kill(old, signal.SIGKILL)
    new = wait_until(lambda: embedded.worker_pids() - {old}, 60, "the supervisor to restart the worker")
    assert old not in new

    second = embedded.evaluate(body)
    assert second["status"] == "done" and second["result"] == first["result"]
