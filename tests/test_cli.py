"""The ``oncotwin`` command line, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import MCODE, requires_data, synthea


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oncotwin.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


@requires_data
def test_timeline_json_for_a_bundle():
    result = run("timeline", str(synthea("Sherman_McGlynn")), "--format", "json", "--no-notes")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert [(line["line"], line["regimen"]) for line in body["linesOfTherapy"]] == [
        (1, "docetaxel + leuprolide"),
        (1, "cisplatin + etoposide"),
    ]


@requires_data
def test_timeline_text_for_one_patient_of_a_folder():
    result = run("timeline", str(MCODE), "--patient", "mCODEPatientExample01")
    assert result.returncode == 0, result.stderr
    assert "Non-small cell lung cancer [nsclc, primary]" in result.stdout
    assert "stage IIIC" in result.stdout and "1. gefitinib" in result.stdout


def test_missing_path_is_a_clear_error(tmp_path):
    result = run("timeline", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr and "Traceback" not in result.stderr


def test_token_mints_a_verifiable_local_token(tmp_path):
    import os

    from shared.auth import TokenVerifier
    from shared.config import load_settings

    env = {**os.environ, "ONCOTWIN_DATA_DIR": str(tmp_path)}
    result = run("token", "--scope", "history.read", env=env)
    assert result.returncode == 0, result.stderr
    principal = TokenVerifier.from_settings(load_settings(env)).verify(f"Bearer {result.stdout.strip()}")
    assert principal.scopes == frozenset({"history.read"})
    bad = run("token", "--scope", "everything", env=env)
    assert bad.returncode == 78 and "unknown scope" in bad.stderr
