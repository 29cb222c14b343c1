"""Benchmark: time until the dashboard's patient page is interactive, in headless chromium.

The page is the one of the largest Synthea bundle (3.6 MB, Vito Feeney). "Interactive" is the
``ot-ready`` performance mark the page's JS sets after its first full render (summary, timeline,
pathway and orders), measured from navigation start (``performance.timeOrigin``), so it includes
the HTML, the scripts, the JSON request (ingest + timeline + navigation + necessity on the server)
and the render. Goal: under 1 s.

- cold: a fresh app per run (nothing ingested or cached by the dashboard yet);
- warm: the same page reloaded in one app (ingested input and page data cached).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oncotwin.app import create_app  # noqa: E402
from shared.auth import SCOPES, LocalKeys  # noqa: E402
from shared.config import load_settings  # noqa: E402
from tests.browser_harness import chromium, serve  # noqa: E402

SYNTHEA = ROOT.parent / "shared" / "data" / "fhir" / "synthea"
PATIENT = "Vito Feeney"


def _signed_in_page(context: Any, base: str, token: str) -> Any:
    page = context.new_page()
    page.goto(f"{base}/dashboard/signin")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")
    return page


def _patient_url(page: Any, base: str) -> str:
    link = page.locator("#patients tbody a", has_text=PATIENT)
    return f"{base}{link.get_attribute('href')}"


def _time_to_ready(page: Any, url: str) -> float:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    return float(page.evaluate("performance.getEntriesByName('ot-ready')[0].startTime"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=5, help="cold runs (a fresh app each)")
    parser.add_argument("--warm", type=int, default=10, help="warm reloads")
    args = parser.parse_args()
    if not SYNTHEA.is_dir():
        print(f"dashboard: skipped, developer data {SYNTHEA} not present")
        return 0
    from playwright.sync_api import sync_playwright

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request lines in the figures
    with tempfile.TemporaryDirectory() as var:
        settings = load_settings({"ONCOTWIN_DATA_DIR": var, "PATIENT_DATA_DIR": str(SYNTHEA)})
        keys = LocalKeys(settings.data_dir)
        keys.ensure()
        token = keys.mint("bench", list(SCOPES), 3600, issuer=settings.token_issuer, audience=settings.token_audience)
        cold: list[float] = []
        warm: list[float] = []
        with sync_playwright() as playwright, chromium(playwright) as context:
            for run in range(args.cold + 1):
                with serve(create_app(settings)) as base:
                    context.clear_cookies()
                    page = _signed_in_page(context, base, token)
                    url = _patient_url(page, base)
                    took = _time_to_ready(page, url)
                    if run > 0:  # run 0 warms chromium and the process-wide tables (terminology, pathways)
                        cold.append(took)
                    if run == args.cold:
                        warm = [_time_to_ready(page, url) for _ in range(args.warm)]
                    page.close()
    print(f"dashboard patient page ({PATIENT}, 3.6 MB bundle), time to interactive in headless chromium:")
    for label, times in (("cold (fresh app, input not yet ingested)", cold), ("warm (ingested and cached)", warm)):
        print(f"  {label:<42} median {statistics.median(times):.0f} ms, max {max(times):.0f} ms")
    print(f"  goal: under 1000 ms; runs: {len(cold)} cold, {len(warm)} warm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
