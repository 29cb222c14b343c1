"""Radiology warm start: the model is loaded (or trained) at start, never inside a request.

In process: a counting stand-in for the trainer shows that no request path trains, and that
``/ready`` answers 503 until the warm-up is done. End to end: ``oncotwin up`` on an empty data
folder trains the real model in the background while ``/health`` answers, and the first
classification after ``/ready`` is as fast as the ones after it.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from oncotwin.up import ready_when_warm
from services.radiology import service
from services.radiology.model import RadiologyModel, TrainConfig, train_from_reports
from services.radiology.schema import Finding, Report
from shared.config import Settings
from tests.celery_support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
URL = "/radiology/v1/classify"
REPORT = {"uid": "r1", "text": "FINDINGS: The heart is enlarged. Small left effusion.\nIMPRESSION: Cardiomegaly."}


def stand_in(reports: Any, schema: str) -> list[list[Finding]]:
    """A labeler that needs no spaCy: "effusion" in a report is a positive Effusion."""
    return [
        [Finding("Effusion", "positive")] if "effusion" in (r.findings + r.impression).lower() else [] for r in reports
    ]


def tiny_model() -> RadiologyModel:
    texts = ["small effusion", "no effusion", "clear lungs", "large effusion", "normal heart", "effusion again"] * 2
    reports = [Report(str(i), text, "", "") for i, text in enumerate(texts)]
    return train_from_reports(reports, stand_in, config=TrainConfig(epochs=5, min_df=1, inner_folds=0))


class Trainer:
    """Stands in for ``service.train``: counts calls, notes the thread, waits for ``release``."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()

    def __call__(self, csv_path: Path, *args: Any, **kwargs: Any) -> RadiologyModel:
        self.calls.append(threading.current_thread().name)
        assert self.release.wait(30), "the test never released the trainer"
        return tiny_model()


@pytest.fixture
def trainer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Trainer]:
    fake = Trainer()
    csv = tmp_path / "reports.csv"
    csv.write_text("uid,findings,impression\n")  # present: the stand-in never reads it
    monkeypatch.setattr(service, "train", fake)
    monkeypatch.setattr(service, "DEFAULT_TRAINING_CSV", csv)
    monkeypatch.setattr(service, "_ENGINES", {})  # a fresh process: nothing loaded, no warm-up yet
    monkeypatch.setattr(service, "_WARM_UPS", {})
    monkeypatch.setattr(service, "default_labeler", lambda: stand_in)
    yield fake
    fake.release.set()


@pytest.fixture
def headers(mint: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(['radiology.read'])}"}


def test_oncotwin_up_warms_at_start_and_no_request_trains(
    app: Flask, settings: Settings, trainer: Trainer, headers: dict[str, str]
) -> None:
    ready_when_warm(app, settings.data_dir)  # what `oncotwin up` does to the app it serves
    client = app.test_client()
    warming = service.start_warm_up(settings.data_dir)  # what its web worker does as it starts
    wait_until(lambda: trainer.calls, 10, "the warm-up to start training")
    assert client.get("/health").status_code == 200  # alive while training
    not_ready = client.get("/ready", headers=headers)
    assert not_ready.status_code == 503 and not_ready.headers["Retry-After"]
    busy = client.post(URL, json=REPORT, headers=headers)
    assert busy.status_code == 503  # at once: the request neither trains nor waits for training
    assert "loading" in busy.get_json()["issue"][0]["diagnostics"]
    trainer.release.set()
    assert warming.wait(30)
    assert client.get("/ready", headers=headers).status_code == 200
    assert client.post(URL, json=REPORT, headers=headers).status_code == 200
    assert trainer.calls == ["radiology-warm-up"]  # trained once, in the warm-up thread, never in a request
    assert (service.model_dir(settings.data_dir) / "metadata.json").is_file()


def test_without_a_warm_up_a_request_never_trains(
    app: Flask, settings: Settings, trainer: Trainer, headers: dict[str, str]
) -> None:
    client = app.test_client()  # an app factory that does not warm up (no artifact either)
    started = time.perf_counter()
    first = client.post(URL, json=REPORT, headers=headers)
    assert first.status_code == 503 and time.perf_counter() - started < 5
    wait_until(lambda: trainer.calls, 10, "the background warm-up")
    assert threading.current_thread().name not in trainer.calls
    assert client.post(URL, json=REPORT, headers=headers).status_code == 503  # one warm-up, still running
    trainer.release.set()
    wait_until(lambda: service.is_warm(settings.data_dir), 30, "the model")
    assert client.post(URL, json=REPORT, headers=headers).status_code == 200
    assert trainer.calls == ["radiology-warm-up"]


def test_a_model_made_beforehand_is_loaded_not_trained(
    app: Flask, settings: Settings, trainer: Trainer, headers: dict[str, str]
) -> None:
    tiny_model().save(service.model_dir(settings.data_dir))  # `oncotwin radiology train`, or a mounted artifact
    assert app.test_client().post(URL, json=REPORT, headers=headers).status_code == 200
    assert service.start_warm_up(settings.data_dir).wait(10)
    assert trainer.calls == []


def test_a_failed_warm_up_answers_503_and_is_not_retried_per_request(
    app: Flask, settings: Settings, trainer: Trainer, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "DEFAULT_TRAINING_CSV", settings.data_dir / "missing.csv")
    client = app.test_client()
    assert client.post(URL, json=REPORT, headers=headers).status_code == 503
    wait_until(lambda: service._WARM_UPS[service.model_dir(settings.data_dir)].done.is_set(), 10, "the warm-up")
    again = client.post(URL, json=REPORT, headers=headers)
    assert again.status_code == 503 and "oncotwin radiology train" in again.get_json()["issue"][0]["diagnostics"]
    assert trainer.calls == []


# ---- end to end: `oncotwin up` with the real model, trained at start ----------------------------------

REPORTS = ROOT.parent / "shared" / "data" / "radiology" / "openi_reports_dev.csv"


@pytest.mark.skipif(not REPORTS.is_file(), reason=f"radiology dev data {REPORTS} not present")
def test_oncotwin_up_trains_at_start_and_the_first_classification_is_as_fast_as_the_rest(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "ONCOTWIN_DATA_DIR": str(tmp_path / "var")}
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "AUTH_JWKS_URL", "AUTH_JWKS_FILE"):
        env.pop(name, None)
    log = tmp_path / "up.log"
    command = [sys.executable, "-m", "oncotwin", "up", "--port", str(port), "--task-workers", "0"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"

    def get(path: str, **kwargs: Any) -> requests.Response | None:
        if process.poll() is not None:
            raise AssertionError(f"oncotwin up exited:\n{log.read_text()[-3000:]}")
        try:
            return requests.get(base + path, timeout=2, **kwargs)
        except requests.ConnectionError:
            return None

    try:
        started = time.monotonic()
        wait_until(lambda: (r := get("/health")) is not None and r.ok, 60, "/health")
        healthy_s = time.monotonic() - started
        lines = log.read_text().splitlines()
        token = lines[lines.index(next(x for x in lines if x.startswith("Bearer token"))) + 1].strip()
        auth = {"Authorization": f"Bearer {token}"}
        early = get("/ready", headers=auth)
        assert early is not None and early.status_code == 503  # training: not ready, but alive
        refused = requests.post(base + URL, json=REPORT, headers=auth, timeout=5)
        assert refused.status_code == 503  # answered at once, not trained in the request
        wait_until(lambda: (r := get("/ready", headers=auth)) is not None and r.ok, 300, "/ready", interval=0.5)
        ready_s = time.monotonic() - started
        durations = []
        for _ in range(6):
            t = time.perf_counter()
            answer = requests.post(base + URL, json=REPORT, headers=auth, timeout=10)
            durations.append(time.perf_counter() - t)
            assert answer.status_code == 200, answer.text
        first, rest = durations[0], statistics.median(durations[1:])
        print(
            f"\n/health after {healthy_s:.1f} s, /ready after {ready_s:.1f} s (trained at start); "
            f"first classify {first * 1000:.0f} ms, then median {rest * 1000:.0f} ms"
        )
        assert first < max(5 * rest, 0.25)  # nothing left to load or train in the first request
        assert (tmp_path / "var" / "models" / "radiology" / "metadata.json").is_file()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
