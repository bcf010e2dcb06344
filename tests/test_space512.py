"""The ImageNet 512 generator in the Space: the Model choice and the class list, both endpoints and the MCP
tool with ``class_label``, refusals before the queue, the ZeroGPU plan's 512 prices, and the app's opt-in
generator list. Tiny models (``tiny512``: the 512 architecture's code paths) at 64×64."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import ValidationError
from PIL import Image

from dsct import ConfigError, budget, preset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import app  # noqa: E402
from served import served  # noqa: E402
from space import controls, planning  # noqa: E402
from space.words import GENERATOR_LABELS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

CAT, HUBBLE = REPO / "examples" / "cat.png", REPO / "examples" / "hubble.png"
SMALL = dict(steps=6, skip=3, divergence_until=2, resample_repeats=1, size=64, max_long_side=128, range_restart=False)


@pytest.fixture(scope="module")
def models():
    return app.get_models(["imagenet", "imagenet512"], tiny=True)


@pytest.fixture(scope="module")
def client(models):
    with served(models, SMALL) as running:
        yield running


def _size(gallery) -> tuple[int, int]:
    with Image.open(gallery[0]["image"]) as im:
        return im.size


def test_both_endpoints_with_a_held_class(client):
    gallery, _ = client.predict(handle_file(CAT), "Cat", "Black Leopard", generator="imagenet512", class_label="288",
                                seed=1, api_name="/translate_text")
    assert "class 288 leopard" in gallery[0]["caption"]
    assert _size(gallery) == (96, 64)  # 451×300 worked on at 128×64, returned at the photo's aspect: 451·64/300 ≈ 96
    styled, _ = client.predict(handle_file(CAT), handle_file(HUBBLE), generator="imagenet512", class_label="random",
                               api_name="/translate_image")
    assert "class" not in styled[0]["caption"]  # drawn anew at every step: nothing held to report


def test_the_compact_tool_takes_the_class_and_reports_auto(client):
    gallery, info = client.predict(handle_file(CAT), "Black Leopard", "Cat", None, "default", 1, 5, "imagenet512",
                                   "diffuseit", "auto", api_name="/translate")
    held = info["results"][0]["class_label"]
    assert isinstance(held, int) and 0 <= held < 1000 and f"class {held} " in gallery[0]["caption"]
    _, agg = client.predict(source=handle_file(CAT), style=handle_file(HUBBLE), generator="imagenet512", method="agg",
                            class_label="7", api_name="/translate")
    assert agg["results"][0]["class_label"] == 7


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(generator="imagenet", class_label="5", api_name="/translate_text"),
     "class_label=5 is not allowed: 'random' (its default) with generator='imagenet', which has no classes"),
    (dict(generator="imagenet512", size=96, api_name="/translate_text"),
     "size=96 is not allowed: a multiple of 64 with generator='imagenet512'"),
    (dict(generator="imagenet512", class_label="lion", api_name="/translate_text"),
     "class_label='lion' is not allowed: 'random', 'auto' or a class id in [0, 999]"),
    (dict(generator="imagenet", class_label="3", api_name="/translate"),
     "class_label=3 is not allowed"),
])
def test_refused_before_the_queue_with_the_field_named(client, kwargs, message):
    with pytest.raises(ValidationError) as info:
        client.predict(source=handle_file(CAT), source_text="Cat", text="Black Leopard", **kwargs)
    assert message in str(info.value)


def test_the_model_choice_and_the_class_list(models):
    demo = app.build_demo(models, defaults=SMALL)
    config = demo.get_config_file()
    dropdowns = [c["props"] for c in config["components"] if c.get("props", {}).get("label") == "Model"]
    assert dropdowns and all((GENERATOR_LABELS["imagenet512"], "imagenet512") in [tuple(x) for x in d["choices"]]
                             for d in dropdowns)
    assert GENERATOR_LABELS["imagenet512"] == "ImageNet 512 (4× pixels, slower)"
    classes = [c["props"] for c in config["components"] if c.get("props", {}).get("label") == "ImageNet class"]
    assert len(classes) == 2 and not any(c["visible"] for c in classes)  # ImageNet (256) first: hidden
    text_choices, image_choices = ([tuple(x) for x in c["choices"]] for c in classes)
    assert text_choices[:2] == [("Random (a new class every step)", "random"), ("Auto (the class closest to the text)", "auto")]
    assert ("288 leopard", "288") in text_choices and len(text_choices) == 1002
    assert image_choices[0][1] == "random" and ("auto" not in [v for _, v in image_choices]) and len(image_choices) == 1001


def test_switching_to_512_shows_the_class_and_sets_its_sizes():
    names = ["size", "max_long_side", "class_label", "steps"]
    current = [256, 448, "random", 100]
    updates, note = controls.preset_updates("text", False, "imagenet512", "diffuseit", names, current)
    assert [u["value"] for u in updates] == [512, 896, "random", 100]
    assert [u["visible"] for u in updates] == [True, True, True, True]
    assert "Working size 256 → 512" in note and "Longest side at most 448 → 896" in note
    back, _ = controls.preset_updates("text", False, "imagenet", "agg", names, [512, 896, "random", 100])
    assert [u["visible"] for u in back][2] is False
    # the size sliders step in the generator's multiple: 64 at 512, 32 back at 256; other controls keep theirs
    assert [u.get("step") for u in updates] == [64, 64, None, None]
    assert [u.get("step") for u in back] == [32, 32, None, None]
    # and a page opened on the 512 model starts with them so
    assert controls.control("size", 512, generator="imagenet512").step == 64
    assert controls.control("max_long_side", 448).step == 32


def test_the_plan_prices_the_512_model_from_the_spec_ratios(models, monkeypatch):
    """Text, 1 sample, 512×512, DiffuseIT's 69 evaluations: each the H100 text figure × the prior's slowdown ×
    1.4 (SPEC §6), restart margin 1.5; memory 3.14 GB fixed + 8.866 GB × 2.5 activations."""
    monkeypatch.setattr(planning, "MEASURED_SPEED", {})  # the prior, whatever ran before
    prior = budget.H100_STEP_SECONDS["text"] * planning.PRIOR_SLOWDOWN
    seconds, memory = planning.cost("imagenet512", preset("text", generator="imagenet512"), 512 * 512)
    assert seconds == pytest.approx(planning.GPU_START_S + planning.FINISH_S + 1.5 * 69 * prior * 1.4)
    assert memory == pytest.approx(3.140 + 8.866 * 2.5)
    # beyond 512² linear in pixels; the image mode's step is 1.6×
    wide, _ = planning.cost("imagenet512", preset("image", generator="imagenet512", samples=1), 512 * 896)
    image_prior = budget.H100_STEP_SECONDS["image"] * planning.PRIOR_SLOWDOWN
    assert wide == pytest.approx(30 + 1.5 * 129 * image_prior * 1.6 * 896 / 512)
    # the 256 model's figures are untouched
    s256, m256 = planning.cost("imagenet", preset("text"), 256 * 256)
    assert s256 == pytest.approx(30 + 1.5 * 69 * prior) and m256 == pytest.approx(3.140 + 8.866)


def test_the_memory_guard_names_the_largest_count_at_512(models, monkeypatch):
    monkeypatch.setattr(planning, "MODELS", dict(models))  # served here, whatever ran before (any test order)
    monkeypatch.setattr(planning, "memory_limit_gb", lambda: 48 * 0.9)
    values = dict(source=str(CAT), source_text="Cat", text="Black Leopard", generator="imagenet512",
                  **{**SMALL, "size": 512, "max_long_side": 512}, samples=2)
    # (43.2 − 3.14) / (8.866 × 2.5) = 1.81: one sample fits, two do not
    with pytest.raises(ConfigError, match=r"at most 1 at 512x512: 2 would need about 47 GB"):
        planning.make_plan("text", values)
    assert budget.max_samples_that_fit("text", 512 * 512, 43.2, "imagenet512") == 1


def test_the_512_model_is_opt_in(monkeypatch):
    monkeypatch.delenv("DSCT_GENERATORS", raising=False)
    assert app.parse_args([]).generators == ["imagenet", "ffhq"]
    monkeypatch.setenv("DSCT_GENERATORS", "imagenet imagenet512")
    assert app.parse_args([]).generators == ["imagenet", "imagenet512"]
    monkeypatch.setenv("DSCT_GENERATORS", "imagenet sdxl")
    with pytest.raises(SystemExit):
        app.parse_args([])
