"""The app in a real browser (Playwright driving Debian's Chromium) on the tiny models: the controls
exist, an uploaded example translates into a captioned gallery, progress shows step counts, and
Stop stops. A screenshot is kept in test-artifacts/. Skips only without Chromium or Playwright,
and fails instead when DSCT_REQUIRE_BROWSER=1 (CI)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import app  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
SMALL = dict(steps=10, skip=5, divergence_until=2, resample_repeats=2, size=64, max_long_side=96, range_restart=False)
TIMEOUT_MS = 60_000


def _sync_playwright():
    """Playwright's sync API, or a skip (a failure under DSCT_REQUIRE_BROWSER=1) saying what is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install playwright)"
    if missing is None and not CHROMIUM.is_file():
        missing = f"Chromium is not at {CHROMIUM} (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("DSCT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DSCT_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def page():
    sync_playwright = _sync_playwright()
    demo = app.build_demo(app.get_models(["imagenet", "ffhq"], tiny=True), defaults=SMALL)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.LAUNCH_KWARGS)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url)
                page.get_by_role("tab", name=app.TAB_LABELS["text"]).wait_for()
                yield page
            finally:
                browser.close()
    finally:
        demo.close()


def _label(page, name: str):
    """The visible element whose own text is a control's label (labels are the TranslationConfig field names);
    the other tab's controls exist too, hidden."""
    return page.get_by_text(name, exact=True).filter(visible=True).first


def _field(page, name: str, kind: str):
    """The ``kind`` input (textarea, input[type=number] …) inside the visible control labelled ``name``."""
    return page.locator("label:visible").filter(has=page.get_by_text(name, exact=True)).locator(kind).first


def _set_slider(page, name: str, value: int) -> None:
    box = page.locator(f"input[aria-label='number input for {name}']:visible")
    box.fill(str(value))
    box.press("Enter")


def test_controls_translate_progress_and_stop(page):
    for name in ("source image", "source_text", "text", "preset", "generator", "steps", "skip", "resampling",
                 "resample_repeats", "samples", "seed", "results (best first)", "x̂0 while sampling"):
        _label(page, name).wait_for(state="visible")
    for button in ("Translate", "Stop", "randomise seed", "Advanced"):
        page.get_by_role("button", name=button).first.wait_for(state="visible")
    page.get_by_text("Tiny random models.").wait_for(state="visible")

    page.get_by_role("button", name="Advanced").first.click()
    for name in ("Content (structure)", "Style / text", "Regularisers", "lambda_ssim", "lambda_contra", "lambda_div",
                 "lambda_clip", "lambda_range", "lambda_id", "range_restart", "size"):
        _label(page, name).wait_for(state="visible")

    seed = _field(page, "seed", "input[type=number]")
    assert seed.input_value() == "0"
    page.get_by_role("button", name="randomise seed").first.click()
    page.wait_for_function("e => e.value !== '0'", arg=seed.element_handle())

    page.locator("input[type=file]").first.set_input_files(str(REPO / "examples" / "cat.png"))
    _field(page, "source_text", "textarea").fill("Cat")
    _field(page, "text", "textarea").fill("Black Leopard")

    # A long run: the progress bar counts guided steps, and Stop ends it.
    _set_slider(page, "skip", 0)
    _set_slider(page, "steps", 1000)
    page.get_by_role("button", name="Translate").first.click()
    progress = page.get_by_text(re.compile(r"guided step.*\d+/1001")).first
    progress.wait_for(state="visible")
    page.get_by_role("button", name="Stop").first.click()
    progress.wait_for(state="detached")

    # A short run: a captioned PNG gallery, best first.
    _set_slider(page, "steps", SMALL["steps"])
    _set_slider(page, "skip", SMALL["skip"])
    page.get_by_role("button", name="Translate").first.click()
    page.get_by_text(re.compile(r"^#1 · seed \d+ · content")).first.wait_for(state="visible")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-text-tab.png"), full_page=True)


def test_style_tab_controls(page):
    page.get_by_role("tab", name=app.TAB_LABELS["image"]).click()
    for name in ("source image", "style image", "colour_match", "steps", "skip", "samples", "seed", "generator"):
        _label(page, name).wait_for(state="visible")
    page.get_by_role("button", name="Advanced").last.click()
    for name in ("lambda_cls", "lambda_l2", "lambda_ssim", "lambda_id"):
        _label(page, name).wait_for(state="visible")
    assert page.get_by_text("lambda_clip", exact=True).filter(visible=True).count() == 0  # text-only: not here
    page.screenshot(path=str(ARTIFACTS / "browser-style-tab.png"), full_page=True)
