"""Access log: WHO read WHICH patient, WHEN, and with what outcome (HIPAA-style audit trail).

One JSON line per access through the ``oncotwin.access`` logger. It deliberately takes no clinical
content (no names, codes, values or bodies): the audit trail must not itself become a PHI store.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from shared.auth import Principal

LOGGER_NAME = "oncotwin.access"
_logger = logging.getLogger(LOGGER_NAME)
_logger.setLevel(logging.INFO)  # the audit trail must not vanish because the app logs at WARNING
_handler: logging.Handler | None = None


def log_access(
    principal: Principal,
    action: str,
    patient_id: str | None,
    outcome: str,
    request_id: str | None = None,
) -> None:
    """Record one access. ``action``/``outcome`` are short codes (``history.read``, ``ok``, ``denied``)."""
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "subject": principal.subject,
        "client": principal.client,
        "action": action,
        "patient": patient_id,
        "outcome": outcome,
        "requestId": request_id,
    }
    # JSON escaping keeps caller-supplied ids from forging extra lines.
    _logger.info(json.dumps(entry, separators=(",", ":"), ensure_ascii=True))


def configure_access_log(path: Path | None) -> None:
    """Send access lines to ``path`` (append, created 0600) instead of the root handlers.

    ``None`` detaches the file again, so lines go wherever the application logs (e.g. stderr).
    Calling it again replaces the previous file.
    """
    global _handler
    if _handler is not None:
        _logger.removeHandler(_handler)
        _handler.close()
        _handler = None
    _logger.propagate = path is None
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)  # tighten a file someone created with a looser mode
    finally:
        os.close(fd)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(handler)
    _handler = handler
