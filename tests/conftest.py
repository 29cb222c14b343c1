"""Shared fixtures: the developer data beside the project, an app with local keys, tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.auth import SCOPES, LocalKeys
from shared.config import Settings, load_settings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FHIR = DATA / "fhir"
SYNTHEA = FHIR / "synthea"
BULK = FHIR / "synthea-bulk-10"
MCODE = FHIR / "mcode-stu1-examples"
LARGEST_BUNDLE = SYNTHEA / "Vito_Feeney_63dd4423-56ec-4f40-9dd6-82bc133aaddc.json"
BULK_PATIENT = "129c6ac7-8d06-89de-ad63-0204a93e76c3"

requires_data = pytest.mark.skipif(not FHIR.is_dir(), reason=f"developer data folder {FHIR} not present")


def synthea(name: str) -> Path:
    return next(SYNTHEA.glob(f"{name}_*.json"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"ONCOTWIN_DATA_DIR": str(tmp_path / "var"), "MAX_BODY_BYTES": str(8 * 1024 * 1024)})


@pytest.fixture
def mint(settings: Settings) -> Callable[..., str]:
    keys = LocalKeys(settings.data_dir)
    keys.ensure()

    def _mint(scopes: Iterable[str] = tuple(SCOPES), ttl: int = 600, subject: str = "dr-test") -> str:
        return keys.mint(subject, list(scopes), ttl, issuer=settings.token_issuer, audience=settings.token_audience)

    return _mint


@pytest.fixture
def app(settings: Settings) -> Flask:
    from oncotwin.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(mint: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(['history.read'])}"}
