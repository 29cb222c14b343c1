"""End-to-end tests of the dashboard in a real headless chromium (Debian package, driven by Playwright).

The real app runs in-process on a free port over the developer data. Screenshots go to
``var/test-artifacts/dashboard/``. Without chromium these tests FAIL, naming `make browser`; only
``ONCOTWIN_SKIP_BROWSER_TESTS=1`` (an explicit opt-out, never set by CI) skips them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.auth import SCOPES, LocalKeys
from shared.config import load_settings
from tests.browser_harness import chromium, chromium_path, serve
from tests.conftest import FHIR, requires_data

ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts" / "dashboard"
OPT_OUT = os.environ.get("ONCOTWIN_SKIP_BROWSER_TESTS") == "1"

pytestmark = [
    requires_data,
    pytest.mark.skipif(OPT_OUT, reason="ONCOTWIN_SKIP_BROWSER_TESTS=1 (explicit opt-out)"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if chromium_path() is None:
        pytest.fail("chromium is not installed: run `make browser` (Debian package `chromium`)")
    from oncotwin.app import create_app

    var = tmp_path_factory.mktemp("var")
    settings = load_settings({"ONCOTWIN_DATA_DIR": str(var), "PATIENT_DATA_DIR": str(FHIR)})
    keys = LocalKeys(settings.data_dir)
    keys.ensure()
    token = keys.mint("dr-e2e", list(SCOPES), 1800, issuer=settings.token_issuer, audience=settings.token_audience)
    narrow = keys.mint(
        "dr-narrow", ["radiology.read"], 600, issuer=settings.token_issuer, audience=settings.token_audience
    )
    with serve(create_app(settings)) as base:
        yield {"base": base, "token": token, "narrow": narrow}


@pytest.fixture(scope="module")
def browser_context(site: dict[str, str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright, chromium(playwright) as context:
        context.set_default_timeout(30_000)
        yield context


@pytest.fixture
def errors() -> list[str]:
    return []


@pytest.fixture
def page(browser_context: Any, errors: list[str]) -> Iterator[Any]:
    browser_context.clear_cookies()  # each test signs in afresh
    page = browser_context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    page.close()
    assert errors == [], f"browser errors: {errors}"  # CSP violations, JS exceptions, failed loads


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, site: dict[str, str], token: str | None = None) -> None:
    page.goto(f"{site['base']}/dashboard/")
    assert "/dashboard/signin?next=" in page.url
    page.fill("#token", token or site["token"])
    page.click("button[type=submit]")


def open_patient(page: Any, site: dict[str, str], name: str) -> None:
    sign_in(page, site)
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#q", name)
    rows = page.locator("#patients tbody tr")
    assert rows.count() == 1
    rows.first.locator("a").click()
    page.wait_for_selector("body[data-ready=true]")


def test_sign_in_rejects_a_bad_token(page: Any, site: dict[str, str], errors: list[str]) -> None:
    sign_in(page, site, "not-a-token")
    assert "not valid" in page.inner_text("#signin-error")
    sign_in(page, site, site["narrow"])
    assert "history.read" in page.inner_text("#signin-error")
    shot(page, "signin-error")
    # The two refusals are the expected 401 and 403 answers; nothing else went wrong.
    assert len(errors) == 2 and all("401" in e or "403" in e for e in errors)
    errors.clear()


def test_patient_page_shows_cancer_stage_and_lines(page: Any, site: dict[str, str]) -> None:
    open_patient(page, site, "sherman")
    assert re.search(r"/dashboard/patients/[0-9a-f]{24}$", page.url)  # opaque id, no name
    assert page.inner_text("#patient-name") == "Sherman McGlynn"
    cancers = page.inner_text("#cancer-list")
    assert "sclc" in cancers and "Stage I" in cancers
    lines = page.locator("#line-list li")
    assert lines.count() >= 1 and "Line 1" in lines.first.inner_text()
    # The timeline draws swimlanes, including the lines of therapy as bars.
    lane_titles = page.locator("svg.tl .lane-title").all_text_contents()
    assert "Diagnoses and stage" in lane_titles and "Lines of therapy" in lane_titles
    assert page.locator('svg.tl [data-kind="line"]').count() >= 1
    assert page.locator('svg.tl [data-kind="stage"]').count() >= 1
    # Text alternative: every event of the page's data is also a table row.
    data = page.request.get(site["base"] + page.get_attribute("#app", "data-api")).json()
    assert page.locator("#event-table tbody tr").count() == len(data["timeline"]["events"]) > 100
    # Care pathway: position and next steps with due dates.
    nav = page.inner_text("#navigation-body")
    assert "Small cell lung cancer" in nav and "Next steps" in nav
    shot(page, "patient-sherman")
    # Nothing about the patient is kept in browser storage.
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["ot_session"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"


def test_clicking_an_event_shows_its_fhir_source(page: Any, site: dict[str, str]) -> None:
    open_patient(page, site, "sherman")
    page.locator('svg.tl [data-kind="stage"]').first.click()
    page.wait_for_selector("#source-json")
    reference = page.inner_text("#source-ref")
    assert re.match(r"^(Condition|Observation)/", reference)
    assert '"resourceType"' in page.inner_text("#source-json")
    shot(page, "source-stage")
    # A line-of-therapy bar shows the order that started it.
    page.locator('svg.tl [data-kind="line"]').first.click()
    page.wait_for_function("document.querySelector('#source-ref').textContent.startsWith('Medication')")


def test_timeline_keyboard_and_zoom(page: Any, site: dict[str, str]) -> None:
    open_patient(page, site, "sherman")
    page.focus('svg.tl [tabindex="0"]')
    first = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("ArrowRight")
    second = page.evaluate("document.activeElement.dataset.id")
    assert first and second and first != second
    assert page.locator('svg.tl [tabindex="0"]').count() == 1  # roving tabindex: one tab stop
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.dataset.id") not in (second, None)
    page.keyboard.press("Enter")
    page.wait_for_selector("#source-json")
    before = page.inner_text("#range")
    page.click('[data-act="zoom-in"]')
    after_zoom = page.inner_text("#range")
    page.click('[data-act="pan-right"]')
    assert before != after_zoom != page.inner_text("#range")


def test_timeline_keeps_a_tab_stop_in_view_after_panning(page: Any, site: dict[str, str]) -> None:
    open_patient(page, site, "sherman")
    for act in ("zoom-in", "zoom-in", "pan-right", "pan-right", "pan-right", "pan-right"):
        page.click(f'[data-act="{act}"]')
    assert page.locator("svg.tl [data-id]").count() >= 1
    page.focus('[data-act="cancer"]')
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.closest('svg.tl') && document.activeElement.dataset.id")
    assert focused, "Tab did not reach an item of the timeline"
    assert page.locator('svg.tl [tabindex="0"]').count() == 1
    # A redraw from the wheel keeps the focus on the timeline (not on <body>).
    box = page.locator("svg.tl").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 300)
    page.wait_for_function("document.activeElement && document.activeElement.closest('svg.tl') !== null")


def test_order_necessity_evidence(page: Any, site: dict[str, str]) -> None:
    open_patient(page, site, "sherman")
    orders = page.locator("#necessity-body article.order")
    assert orders.count() >= 1
    toggle = orders.first.locator(".evidence-toggle")
    assert toggle.get_attribute("aria-expanded") == "false"
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    panel = orders.first.locator(".evidence-panel")
    assert panel.is_visible()
    assert panel.locator(".criterion").count() >= 1
    statuses = set(panel.locator(".criterion > .badge").all_inner_texts())
    assert statuses <= {"satisfied", "unsatisfied", "unknown"} and statuses
    evidence = panel.locator(".evidence .source-link")
    assert evidence.count() >= 1
    evidence.first.click()
    page.wait_for_selector("#source-json")
    shot(page, "necessity-evidence")


def test_pathway_view_highlights_the_patient(page: Any, site: dict[str, str]) -> None:
    open_patient(page, site, "sherman")
    page.locator(".pathway-link").last.click()
    page.wait_for_selector("body[data-ready=true]")
    assert re.search(r"/pathways/[0-9]+$", page.url) and "sclc" not in page.url  # no diagnosis in the URL
    assert "Small cell lung cancer" in page.inner_text("#pathway-title")
    assert page.locator("svg.pw .node.position").count() >= 1
    assert page.locator("svg.pw .edge.on-path").count() >= 1
    assert page.locator("#node-list li").count() == page.locator("svg.pw .node").count()
    shot(page, "pathway-sclc")


def test_largest_bundle_without_orders_shows_empty_state(page: Any, site: dict[str, str]) -> None:
    open_patient(page, site, "vito")
    assert page.locator("#no-orders").is_visible()
    assert "prostate" in page.inner_text("#cancer-list")
    shot(page, "patient-vito")


def test_note_mention_shows_its_passage(page: Any, site: dict[str, str]) -> None:
    sign_in(page, site)
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#q", "Sumiko254")  # the bulk export's patient with breast cancer, NSCLC and notes
    page.locator("#patients tbody a").first.click()
    page.wait_for_selector("body[data-ready=true]", timeout=120_000)  # first open ingests the export
    page.click("#table-view summary")  # the table view of the timeline
    mention = page.locator('#event-table tbody tr:has-text("(note)") .source-link').first
    mention.click()
    page.wait_for_selector("#source-passage")
    assert page.inner_text("#source-ref").startswith("DocumentReference/")
    assert page.inner_text("#source-passage").strip()
    page.locator("#source").screenshot(path=str(ARTIFACTS / "note-passage.png"))


def test_sign_out_ends_the_session(page: Any, site: dict[str, str]) -> None:
    sign_in(page, site)
    page.wait_for_selector("body[data-ready=true]")
    page.click(".signout button")
    page.wait_for_url(re.compile(r"/dashboard/signin$"))
    page.goto(f"{site['base']}/dashboard/patients")
    assert page.url.endswith("/dashboard/signin?next=/dashboard/patients")


CONTRAST_JS = """() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (node) => {
    for (; node && node.nodeType === 1; node = node.parentElement) {
      const c = rgb(getComputedStyle(node).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const worst = [];
  for (const node of document.querySelectorAll("body *:not(script):not(style):not(title)")) {
    if (node instanceof SVGElement || !node.getClientRects().length) continue;
    const own = [...node.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const a = lum(rgb(getComputedStyle(node).color).slice(0, 3));
    const b = lum(background(node));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) worst.push(`${node.tagName}.${node.className}: ${ratio.toFixed(2)}`);
  }
  return worst;
}"""


def test_text_contrast_and_landmarks(page: Any, site: dict[str, str]) -> None:
    open_patient(page, site, "sherman")
    page.locator(".evidence-toggle").first.click()
    assert page.evaluate(CONTRAST_JS) == []  # WCAG AA: every visible text at least 4.5:1
    assert page.locator("main").count() == 1 and page.locator("header[role=banner]").count() == 1
    # Every focusable timeline item has a text alternative.
    labels = page.locator("svg.tl [role=button]").evaluate_all("nodes => nodes.map(n => n.getAttribute('aria-label'))")
    assert labels and all(label and len(label) > 10 for label in labels)
    # Dates follow the browser's locale (the fixture's chromium runs en-GB: day before month).
    assert re.search(r"diagnosed \d{1,2} [A-Z][a-z]{2} \d{4}", page.inner_text("#cancer-list"))
