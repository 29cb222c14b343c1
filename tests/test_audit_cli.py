"""``oncotwin audit`` on the embedded default: SQLite database, SQLite broker, a worker it starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from oncotwin.audit_commands import progress_line
from tests.celery_support import ROOT
from tests.conftest import requires_data, synthea
from tests.test_audit_engine import ORDER_BUNDLES


@requires_data
def test_audit_command_waits_with_a_worker_of_its_own_and_writes_the_report(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ORDER_BUNDLES[:2]:
        shutil.copy(synthea(name), batch / f"{name}.json")
    (batch / "corrupt.json").write_text('{"resourceType": "Bundle", "entry": [')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_", "LLM_"))}
    env |= {"ONCOTWIN_DATA_DIR": str(tmp_path / "var"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "oncotwin.cli", "audit", str(batch), "--wait", "--out", str(tmp_path / "r.json")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["audit"]["state"] == "finished" and report["audit"]["finished"]
    assert report["audit"]["counts"]["orders"] == len(report["rows"]) == 5
    assert [r["input"] for r in report["rows"] if r["error"]] == ["batch/corrupt.json"]  # relative to the cwd
    assert all(r["determination"] for r in report["rows"] if r["order"])
    assert "5/5 orders" in done.stderr and "report written" in done.stderr
    assert done.stdout == ""


def test_progress_line() -> None:
    status = {
        "state": "running",
        "orders": {"total": 200, "pending": 150, "done": 45, "error": 5, "cancelled": 0},
        "inputs": {"total": 10, "pending": 2, "expanded": 7, "error": 1, "cancelled": 0},
        "throughputPerSecond": 12.5,
        "etaSeconds": 12.0,
    }
    line = progress_line(status)
    assert line.startswith("[" + "#" * 8 + "-" * 22 + "]")
    assert "50/200 orders, 8/10 inputs read, 12.5/s ETA 12s" in line
