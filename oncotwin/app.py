"""The embedded default: every service's blueprint behind one port."""

from __future__ import annotations

from flask import Flask

from services.care_navigation.app import blueprint as navigation
from services.cds_hooks.app import blueprint as cds_hooks
from services.clinical_history.app import blueprint as history
from services.dashboard.app import blueprint as dashboard
from services.evaluations.app import blueprint as evaluations
from services.medical_necessity.app import blueprint as necessity
from services.medical_necessity.audit_app import blueprint as necessity_audits
from services.radiology.app import blueprint as radiology
from shared.config import Settings
from shared.http import make_app


def create_app(app_settings: Settings | None = None) -> Flask:
    app = make_app("oncotwin", app_settings)
    app.register_blueprint(history)
    app.register_blueprint(navigation)
    app.register_blueprint(dashboard)
    app.register_blueprint(necessity)
    app.register_blueprint(necessity_audits)
    app.register_blueprint(cds_hooks)
    app.register_blueprint(radiology)
    app.register_blueprint(evaluations)
    return app
