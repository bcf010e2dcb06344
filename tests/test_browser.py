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
from space.words import FACES_NOTE, METHOD_LABELS, SETTINGS_LABEL, TAB_LABELS, WORDS  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
SMALL = dict(steps=10, skip=5, divergence_until=2, resample_repeats=2, size=64, max_long_side=96, range_restart=False)
TIMEOUT_MS = 180_000  # generous: a loaded 2-core CI machine runs the tiny models many times slower


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
def served():
    """(browser, url): one server with the tiny models and one Chromium for every page of the module."""
    sync_playwright = _sync_playwright()
    demo = app.build_demo(app.get_models(["imagenet", "ffhq"], tiny=True), defaults=SMALL)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.LAUNCH_KWARGS)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
            try:
                yield browser, url
            finally:
                browser.close()
    finally:
        demo.close()


def _open(served, width: int, height: int):
    browser, url = served
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.get_by_role("tab", name=TAB_LABELS["text"]).wait_for()
    return page


@pytest.fixture(scope="module")
def page(served):
    page = _open(served, 1400, 1600)
    yield page
    page.close()


W = {name: label for name, (label, _) in WORDS.items()}  # the controls' labels, in words


def _label(page, name: str):
    """The visible element whose own text is a control's label; the other tab's controls exist too, hidden."""
    return page.get_by_text(name, exact=True).filter(visible=True).first


def _field(page, name: str, kind: str):
    """The ``kind`` input (textarea, input[type=number] …) inside the visible control labelled ``name``."""
    return page.locator("label:visible").filter(has=page.get_by_text(name, exact=True)).locator(kind).first


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the visible dropdown labelled ``label``."""
    page.get_by_label(label).filter(visible=True).first.click()
    page.get_by_role("option", name=option, exact=True).first.click()


def _set_slider(page, name: str, value: int) -> None:
    box = page.locator(f"input[aria-label='number input for {name}']:visible")
    box.fill(str(value))
    box.press("Enter")


def _caption_seed(page) -> str:
    caption = page.get_by_text(re.compile(r"^#1 · seed \d+ · DiffuseIT\s+content")).first
    caption.wait_for(state="visible")
    return re.search(r"seed (\d+)", caption.inner_text()).group(1)


def test_controls_translate_progress_and_stop(page):
    stop = page.get_by_role("button", name="Stop").first
    assert stop.is_disabled()  # nothing to stop yet
    page.get_by_role("button", name=SETTINGS_LABEL).first.click()
    for name in (W["source"], W["source_text"], W["text"], "Preset", W["generator"], W["steps"], W["skip"],
                 W["resampling"], W["resample_repeats"], W["samples"], W["seed"], "Randomize seed",
                 "Before / after (best result)", "Results (best first)", "Previews while sampling"):
        _label(page, name).wait_for(state="visible")
    for button in ("Translate", "Stop", "Advanced", "Use the selected result as the source"):
        page.get_by_role("button", name=button).first.wait_for(state="visible")
    page.get_by_text("Tiny random models.").wait_for(state="visible")
    assert page.get_by_text("SPEC §").count() == 0  # help in words, not references to a document users never see

    page.get_by_role("button", name="Advanced").first.click()
    for name in ("Content (structure)", "Style / text", "Regularisers", W["lambda_ssim"], W["lambda_contra"],
                 W["lambda_div"], W["lambda_clip"], W["lambda_range"], W["range_restart"], W["size"]):
        _label(page, name).wait_for(state="visible")
    assert page.get_by_text(W["lambda_id"], exact=True).filter(visible=True).count() == 0  # Faces only

    page.locator("input[type=file]").first.set_input_files(str(REPO / "examples" / "cat.png"))
    _field(page, W["source_text"], "input[type=text], textarea").fill("Cat")
    _field(page, W["text"], "input[type=text], textarea").fill("Black Leopard")

    # A long run: the progress line counts the user's steps with the time left, and Stop ends it and says where.
    seed = _field(page, W["seed"], "input[type=number]")
    assert seed.input_value() == "0"
    _set_slider(page, W["skip"], 0)
    _set_slider(page, W["steps"], 1000)
    page.get_by_role("button", name="Translate").first.click()
    progress = page.get_by_text(re.compile(r"Step \d+ of 1000 · .*elapsed · about \d+:\d\d left")).first
    progress.wait_for(state="visible")
    assert stop.is_enabled()
    stop.click()
    progress.wait_for(state="detached")
    page.get_by_text(re.compile(r"^Stopped at step \d+ of 1000\.$")).first.wait_for(state="visible")
    assert stop.is_disabled()

    # A short run with "Randomize seed" on (the default): a new seed, shown in the seed box and the captions.
    _set_slider(page, W["steps"], SMALL["steps"])
    _set_slider(page, W["skip"], SMALL["skip"])
    page.get_by_role("button", name="Translate").first.click()
    used = _caption_seed(page)
    assert seed.input_value() == used != "0"

    # The best result beside its source in the before/after slider.
    slider = page.locator(".block:visible").filter(has=page.get_by_text("Before / after (best result)", exact=True))
    page.wait_for_function("el => el.querySelectorAll('img').length >= 2", arg=slider.first.element_handle())

    # Randomize off, seed 5, Enter in the prompt box runs.
    _field(page, "Randomize seed", "input[type=checkbox]").uncheck()
    seed.fill("5")
    seed.press("Tab")
    _field(page, W["text"], "input[type=text], textarea").press("Enter")
    page.get_by_text(re.compile(r"^#1 · seed 5 · DiffuseIT\s+content")).first.wait_for(state="visible")
    assert seed.input_value() == "5"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-text-tab.png"), full_page=True)


def test_style_tab_controls(page):
    page.get_by_role("tab", name=TAB_LABELS["image"]).click()
    page.get_by_role("button", name=SETTINGS_LABEL).last.click()
    for name in (W["source"], W["style"], W["colour_match"], W["steps"], W["skip"], W["samples"], W["seed"],
                 W["generator"]):
        _label(page, name).wait_for(state="visible")
    page.get_by_role("button", name="Advanced").last.click()
    for name in (W["lambda_cls"], W["lambda_l2"], W["lambda_ssim"]):
        _label(page, name).wait_for(state="visible")
    assert page.get_by_text(W["lambda_clip"], exact=True).filter(visible=True).count() == 0  # text-only: not here
    page.screenshot(path=str(ARTIFACTS / "browser-style-tab.png"), full_page=True)


def _inside(page, locator, height: int) -> bool:
    """The element is drawn inside the viewport as the page opens (no scroll)."""
    box = locator.bounding_box()
    return page.evaluate("window.scrollY") == 0 and box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height


def test_first_view_at_1440x900_and_errors_where_the_eye_is(served):
    page = _open(served, 1440, 900)
    try:
        translate = page.get_by_role("button", name="Translate").first
        slider = page.locator(".dsct-whole:visible").first
        for element in (translate, slider, _label(page, W["source"]), _label(page, W["text"]), _label(page, "Preset")):
            element.wait_for(state="visible")
            assert _inside(page, element, 900), element
        translate.click()  # an empty form: one message, beside the button, naming everything missing
        message = page.locator(".dsct-status:visible").get_by_text(re.compile("^⚠ Add a photo to translate, what the "
                                                                              "photo shows .* and what it should become"))
        message.wait_for(state="visible")
        assert _inside(page, message, 900)
        page.get_by_text("Warning").first.wait_for(state="visible")  # the toast says it too
        # with a photo, only what is still missing is named
        page.locator("input[type=file]").first.set_input_files(str(REPO / "examples" / "cat.png"))
        _field(page, W["source_text"], "input[type=text], textarea").fill("Cat")
        translate.click()
        page.locator(".dsct-status:visible").get_by_text(
            "⚠ Add what it should become (e.g. 'Black Leopard').", exact=True).wait_for(state="visible")
        page.get_by_placeholder(re.compile("^Black Leopard")).filter(visible=True).first.fill("Black Leopard")
        translate.click()
        page.get_by_text(re.compile(r"^#1 · seed \d+ · DiffuseIT")).first.wait_for(state="visible")
        assert page.locator(".block.dsct-status:visible").first.inner_text().strip() == ""  # the refusal is gone
        if os.environ.get("DSCT_UPDATE_SCREENSHOT") == "1":  # the README's picture of the first view (tiny models)
            for close in page.locator(".toast-close:visible").all():  # the refusals' toasts, said and seen
                close.click()
            page.mouse.move(0, 0)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(REPO / "docs" / "screenshot-tiny-models.png"))
    finally:
        page.close()


def test_a_portrait_shows_whole_and_the_progress_ends_at_the_users_step_count(served, tmp_path):
    import numpy as np
    from PIL import Image

    portrait = tmp_path / "portrait.png"  # 64 x 96: the working size of SMALL keeps it as it is
    yy, xx = np.mgrid[0:96, 0:64]
    Image.fromarray(np.dstack([xx * 4, yy * 2, 255 - yy * 2]).astype(np.uint8)).save(portrait)
    page = _open(served, 1440, 900)
    try:
        page.evaluate("""() => { window.seenProgress = []; new MutationObserver(() => {
            for (const el of document.querySelectorAll('.dsct-status .progress-level-inner')) {
              const text = el.textContent.trim(); if (text && window.seenProgress.at(-1) !== text) window.seenProgress.push(text); }
          }).observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
        page.locator("input[type=file]").first.set_input_files(str(portrait))
        _field(page, W["source_text"], "input[type=text], textarea").fill("Gradient")
        _field(page, W["text"], "input[type=text], textarea").fill("Sunset")
        page.get_by_role("button", name="Translate").first.click()
        slider = page.locator(".dsct-whole:visible").first
        page.wait_for_function("el => { const imgs = [...el.querySelectorAll('img')]; "  # both drawn, not just placed
                               "return imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
                               arg=slider.element_handle())
        # the part of each slider image that is drawn: its content box (object-fit) clipped by the slider
        shown = slider.evaluate("""root => [...root.querySelectorAll('img')].map(img => {
            const box = img.getBoundingClientRect(), frame = root.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
            let w = box.width, h = box.height;
            if (fit === 'contain' || fit === 'scale-down') { const s = Math.min(w / img.naturalWidth, h / img.naturalHeight);
              w = img.naturalWidth * s; h = img.naturalHeight * s; }
            else if (fit === 'none') { w = img.naturalWidth; h = img.naturalHeight; }
            const left = Math.max(box.left + (box.width - w) / 2, frame.left), right = Math.min(box.left + (box.width + w) / 2, frame.right);
            const top = Math.max(box.top + (box.height - h) / 2, frame.top), bottom = Math.min(box.top + (box.height + h) / 2, frame.bottom);
            return [right - left, bottom - top]; })""")
        assert len(shown) == 2
        for width, height in shown:
            assert width / height == pytest.approx(64 / 96, rel=0.02), shown
        seen = page.evaluate("window.seenProgress")
        steps = [int(m.group(1)) for line in seen if (m := re.match(r"Step (\d+) of 10 · ", line))]
        assert steps and steps == sorted(steps) and steps[-1] == SMALL["steps"], seen
        assert all(re.search(r"about \d+:\d\d left", line) for line in seen if line.startswith("Step")), seen
    finally:
        page.close()


def test_at_phone_width_the_result_follows_translate(served):
    page = _open(served, 390, 844)
    try:
        translate = page.get_by_role("button", name="Translate").first
        translate.wait_for(state="visible")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no horizontal scroll
        y = {name: locator.bounding_box()["y"] for name, locator in (
            ("photo", _label(page, W["source"])), ("translate", translate),
            ("result", page.locator(".dsct-whole:visible").first),
            ("settings", page.get_by_role("button", name=SETTINGS_LABEL).first),
            ("examples", page.get_by_text(re.compile("Examples: a click")).filter(visible=True).first))}
        assert y["photo"] < y["translate"] < y["result"] < y["settings"] < y["examples"], y
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-phone.png"), full_page=False)
        if os.environ.get("DSCT_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=str(REPO / "docs" / "screenshot-phone-tiny-models.png"), full_page=False)
    finally:
        page.close()


def test_honest_controls_one_photo_and_what_a_switch_changed(served):
    page = _open(served, 1440, 900)
    try:
        reuse = page.get_by_role("button", name="Use the selected result as the source").first
        assert reuse.is_disabled()  # no result yet
        page.locator("input[type=file]").first.set_input_files(str(REPO / "examples" / "cat.png"))
        page.get_by_role("tab", name=TAB_LABELS["image"]).click()
        photo = page.locator(".block:visible").filter(has=page.get_by_text(W["source"], exact=True)).first
        photo.locator("img").first.wait_for(state="visible")  # the photo of the first tab is this tab's too
        page.get_by_role("tab", name=TAB_LABELS["text"]).click()
        # the preset switch says which settings it changed (SMALL's 10 steps become the full preset's 100)
        _choose(page, "Preset", "Full")
        note = page.locator(".dsct-note:visible")
        note.get_by_text(re.compile(rf"{W['steps']} 10 → 100")).wait_for(state="visible")
        # Faces: says what photo it expects, and the identity weight appears
        page.get_by_role("button", name=SETTINGS_LABEL).first.click()
        page.get_by_role("button", name="Advanced").first.click()
        assert page.get_by_text(W["lambda_id"], exact=True).filter(visible=True).count() == 0
        _choose(page, W["generator"], "Faces")
        note.get_by_text(FACES_NOTE, exact=False).wait_for(state="visible")
        _label(page, W["lambda_id"]).wait_for(state="visible")
        # AGG: its own settings appear, DiffuseIT's own ones go, and Preset has nothing to choose
        _choose(page, W["generator"], "ImageNet")
        _choose(page, "Method", METHOD_LABELS["agg"])
        _label(page, W["lambda_gt"]).wait_for(state="visible")
        page.get_by_text(W["lambda_ssim"], exact=True).filter(visible=True).first.wait_for(state="hidden")
        assert page.get_by_text(W["resample_repeats"], exact=True).filter(visible=True).count() == 0
        assert page.get_by_label("Preset").first.is_disabled()
        _choose(page, "Method", METHOD_LABELS["diffuseit"])
        _label(page, W["lambda_ssim"]).wait_for(state="visible")
        assert page.get_by_text(W["lambda_gt"], exact=True).filter(visible=True).count() == 0
    finally:
        page.close()
