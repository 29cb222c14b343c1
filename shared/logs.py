"""The one place logging is set up for the web processes (gunicorn starts the apps without it).

Records of the ``oncotwin`` loggers (the access log above all: who read which patient) go to
stderr at ``LOG_LEVEL``: when the process runner set up no root handler (gunicorn does not), one
is added to the ``oncotwin`` logger; a runner that has one (Celery, the CLI, pytest) keeps its own
and gets the level. Idempotent however many apps a process builds.
"""

from __future__ import annotations

import logging
import sys

ROOT = "oncotwin"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_HANDLER_NAME = "oncotwin-stderr"


def configure_logging(level: str) -> logging.Logger:
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    ours = any(h.get_name() == _HANDLER_NAME for h in logger.handlers)
    if not ours and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    return logger
