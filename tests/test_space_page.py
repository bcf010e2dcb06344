"""What the page says and shows, as pure functions of the Space (space/words, controls, results,
worker.stream): refusals in people's words, the progress line, restarts and Stop in words, what a
preset switch changed, the selected result in the slider, one photo for both tabs. Expectations
are written out by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from dsct import ConfigError, ImageError, preset
from dsct.images import load_image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import app  # noqa: E402,F401 — the entry point first: it imports spaces before torch
from space import planning, worker  # noqa: E402
from space.api import stopped_note  # noqa: E402
from space.controls import preset_updates  # noqa: E402
from space.results import before_after, caption, mirror_photo  # noqa: E402
from space.words import (  # noqa: E402
    FACES_NOTE, clock, missing_inputs, missing_message, page_message, progress_line,
)


def test_missing_inputs_are_named_together_in_page_order():
    empty = dict(source=None, source_text="  ", text="")
    assert missing_inputs("text", empty) == ["source", "source_text", "text"]
    assert missing_message(missing_inputs("text", empty)) == (
        "Add a photo to translate, what the photo shows (e.g. 'Cat') and what it should become (e.g. 'Black Leopard').")
    assert missing_message(missing_inputs("text", dict(source="a.png", source_text="Cat", text=" "))) == (
        "Add what it should become (e.g. 'Black Leopard').")
    assert missing_inputs("image", dict(source="a.png", style=None)) == ["style"]
    assert missing_inputs("image", dict(source="a.png", style="b.png")) == []


def test_refusals_in_the_controls_words():
    error = ConfigError("samples", 9, "at most 3 at 256x448: 9 would need about 80 GB of GPU memory and 43 GB can be used here")
    assert page_message(error) == ("Samples: at most 3 at 256x448: 9 would need about 80 GB of GPU memory and 43 GB "
                                   "can be used here.")
    assert page_message(ConfigError("skip", 10, "fewer than steps (10)")) == "Keep more of the source (skip): fewer than steps (10)."
    unreadable = ImageError("source image: cannot read notes.png as an image: not a format PIL can decode (...)")
    assert page_message(unreadable) == "The photo cannot be read: use a PNG, JPEG or WebP picture."
    assert page_message(ImageError("style image: cannot read s.png as an image: not a format PIL can decode")) == (
        "The style image cannot be read: use a PNG, JPEG or WebP picture.")
    assert page_message(ImageError("source image is 3x3 (0.0 megapixels); at least 32 px")) == (
        "The photo cannot be used: source image is 3x3 (0.0 megapixels); at least 32 px")


def test_clock():
    assert [clock(s) for s in (0, 7, 59.6, 125, 3723, -3)] == ["0:00", "0:07", "1:00", "2:05", "1:02:03", "0:00"]


def test_the_progress_line():
    config = preset("text", steps=20, skip=10, resample_repeats=3)
    assert progress_line(2, config, 5, 64) == ("Step 11 of 20 · resampling the first step, 2 of 3 · 0:05 elapsed · "
                                               "about 1:04 left")
    assert progress_line(4, config, 9.4, 3) == "Step 12 of 20 · 0:09 elapsed · about 0:03 left"
    assert progress_line(1, preset("text", steps=20, skip=10, resample_repeats=1), 0, 0).startswith("Step 11 of 20 · 0:00")


@pytest.fixture
def fake_run(monkeypatch):
    """worker.stream over a scripted GPU function: Steps with per-sample restarts, then Done."""
    def install(steps):
        def run_translation(plan):
            yield from steps
            yield worker.Done([])
        monkeypatch.setattr(worker, "run_translation", run_translation)
        monkeypatch.setattr(planning, "MODELS", {"imagenet": SimpleNamespace(device=SimpleNamespace(type="cpu"))})
    return install


def _plan(**settings):
    config = preset("text", **settings)
    return planning.Plan("imagenet", None, None, "b", "a", config, 64 * 64, 100.0, 1.0)


def test_a_restart_is_said_in_words_until_the_next(fake_run):
    fake_run([worker.Step(1, 4, 2, 0, None, (0, 0)), worker.Step(2, 4, 2, 1, None, (0, 1)),
              worker.Step(3, 4, 2, 1, None, (0, 1)), worker.Step(4, 4, 2, 2, None, (1, 1))])
    lines = []
    with pytest.warns(UserWarning):  # Done([]) of 2 samples: "2 of 2 samples did not finish"
        list(worker.stream(_plan(steps=10, skip=6, resample_repeats=1, samples=2, max_restarts=3),
                           lambda p, desc: lines.append(desc)))
    assert [line.split(" · ")[0] for line in lines] == ["Step 7 of 10", "Step 8 of 10", "Step 9 of 10", "Step 10 of 10"]
    said = [line.split(" left", 1)[1] for line in lines]
    assert said == ["", " · sample 2 left the valid range: restarted, 1 of 3",
                    " · sample 2 left the valid range: restarted, 1 of 3",
                    " · sample 1 left the valid range: restarted, 1 of 3"]


def test_stop_says_the_step_the_run_had_reached(fake_run):
    fake_run([worker.Step(1, 3, 1, 0, None, (0,)), worker.Step(2, 3, 1, 0, None, (0,))])
    with pytest.warns(UserWarning):
        list(worker.stream(_plan(steps=10, skip=7, resample_repeats=1), None, session="visitor"))
    request = SimpleNamespace(session_hash="visitor")
    said, stop = stopped_note(request)
    assert said == "Stopped at step 9 of 10." and stop["interactive"] is False
    assert stopped_note(request)[0] == "Stopped before the first step."  # said once; another session knows nothing


def test_a_preset_switch_says_what_it_changed():
    names = ["steps", "skip", "resampling", "resample_repeats", "divergence_until", "lambda_id", "method", "lambda_gt"]
    full = [100, 40, True, 10, 50, 0.0, "diffuseit", 200.0]
    updates, note = preset_updates("text", True, "imagenet", "diffuseit", names, full)
    assert [u["value"] for u in updates] == [50, 20, True, 4, 25, 0.0, "diffuseit", 200.0]
    assert [u["visible"] for u in updates] == [True, True, True, True, True, False, True, False]
    assert note == ("Preset applied: Diffusion steps 100 → 50; Keep more of the source (skip) 40 → 20; "
                    "Resampling repeats 10 → 4; Push until step 50 → 25.")
    updates, note = preset_updates("text", False, "ffhq", "diffuseit", names, full)
    assert updates[5] == gr.update(value=100.0, visible=True)  # the faces preset's identity weight, shown
    assert note == f"{FACES_NOTE} Preset applied: Keep the person's identity 0.0 → 100.0."
    assert preset_updates("text", False, "imagenet", "diffuseit", names, full)[1] == ""
    # AGG: one preset whatever Fast says; DiffuseIT's own settings hidden at their defaults, AGG's shown
    fast = [50, 20, True, 4, 25, 0.0, "diffuseit", 200.0]
    updates, note = preset_updates("text", True, "imagenet", "agg", names, fast)
    assert [u["value"] for u in updates] == [100, 40, True, 10, 50, 0.0, "agg", 200.0]
    assert [u["visible"] for u in updates] == [True, True, False, False, False, False, True, True]
    assert note == ("Preset applied: Diffusion steps 50 → 100; Keep more of the source (skip) 20 → 40; "
                    "Resampling repeats 4 → 10; Push until step 25 → 50.")


def test_the_slider_shows_the_selected_result(tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (90, 60), (200, 10, 10)).save(source)
    files = []
    for k, colour in enumerate([(0, 0, 255), (0, 255, 0)]):
        files.append(tmp_path / f"r{k}.png")
        Image.new("RGB", (48, 32), colour).save(files[-1])
    gallery = [(str(f), "caption") for f in files]
    before, after = before_after(str(source), gallery, 1)
    assert after.getpixel((0, 0)) == (0, 255, 0) and after.size == before.size == (48, 32)
    assert before_after(str(source), gallery)[1].getpixel((0, 0)) == (0, 0, 255)  # the best by default
    assert before_after(None, gallery) is None and before_after(str(source), []) is None
    assert load_image(str(source)).size == (90, 60)


def test_captions_put_rank_and_seed_scores_and_notes_on_lines_of_their_own():
    result = SimpleNamespace(rank=2, seed=8, content_score=0.12345, target_score=-0.5, restarts=1, note="cut short",
                             tiny=False, class_label=None)
    assert caption(result, "agg") == "#2 · seed 8 · AGG\ncontent 0.123 · target -0.500\nrestarts 1 · cut short"
    plain = SimpleNamespace(rank=1, seed=7, content_score=0.1, target_score=0.2, restarts=0, note=None, tiny=False,
                            class_label=None)
    assert caption(plain, "diffuseit") == "#1 · seed 7 · DiffuseIT\ncontent 0.100 · target 0.200"
    held = SimpleNamespace(**{**vars(plain), "class_label": 291})  # the 512 model's class held for the run
    assert caption(held, "diffuseit") == "#1 · seed 7 · DiffuseIT\ncontent 0.100 · target 0.200\nclass 291 lion"


def test_one_photo_for_both_tabs(tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(a)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(b)  # the same picture under another path (gradio's cache)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(c)
    assert mirror_photo(str(a), str(c)) == str(a)
    assert isinstance(mirror_photo(str(a), str(b)), type(gr.skip()))
    assert isinstance(mirror_photo(None, None), type(gr.skip()))
    assert mirror_photo(None, str(a)) is None  # a cleared photo clears the other tab's
