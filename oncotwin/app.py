"""The embedded default: every service's blueprint behind one port."""

from __future__ import annotations

from flask import Flask

from services.clinical_history.app import blueprint as history
from shared.config import Settings
from shared.http import make_app


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app("oncotwin", app_settings)
    app.register_blueprint(history)
    return app
