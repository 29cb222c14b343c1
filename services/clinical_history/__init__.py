"""Clinical-History twin: a clean timeline of a patient's cancer care (engine; no Flask/Celery)."""

from services.clinical_history.timeline import build_timeline

__all__ = ["build_timeline"]
