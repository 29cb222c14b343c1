"""Helpers shared by the dashboard's browser tests and ``bench/dashboard.py``: a real app on a free
port in a thread, and Debian's chromium driven by Playwright (never ``playwright install``: that
downloads browsers; `make browser` installs the system package instead)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.serving import make_server

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path() -> str | None:
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured if Path(configured).is_file() else None
    return next((p for p in CHROMIUM_CANDIDATES if Path(p).is_file()), None) or shutil.which("chromium")


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """The app on 127.0.0.1 at a free port, threaded like a real server; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextmanager
def chromium(playwright: Any) -> Iterator[Any]:
    """A headless chromium with a fresh profile, removed afterwards."""
    path = chromium_path()
    if path is None:
        raise RuntimeError("chromium is not installed: run `make browser` (Debian package `chromium`)")
    profile = tempfile.mkdtemp(prefix="oncotwin-chromium-")
    try:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=path,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": 1400, "height": 1000},
            locale=os.environ.get("DASHBOARD_TEST_LOCALE", "en-GB"),
        )
        try:
            yield context
        finally:
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
