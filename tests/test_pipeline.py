"""translate(): inputs are checked up front, each bad one gives one typed, readable error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from dsct import ConfigError, ImageError, ModelConfig, load_models, preset, translate
from dsct.pipeline import check_text

from helpers import picture, small, tiny_models


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(text="", source_text="Cat"), ConfigError, "text=''"),
        (dict(text="   ", source_text="Cat"), ConfigError, "non-empty"),
        (dict(text="Tiger", source_text=""), ConfigError, "source_text"),
        (dict(text="x" * 400, source_text="Cat"), ConfigError, "at most 300 characters"),
        (dict(text="Tiger\x00", source_text="Cat"), ConfigError, "control characters"),
        (dict(text="🐆" * 40, source_text="Cat"), ConfigError, "CLIP reads 77 tokens"),
        (dict(config=small("image")), ImageError, "needs a style image"),
        (dict(text="Tiger", source_text="Cat", seeds=[]), ConfigError, "seeds"),
        (dict(text="Tiger", source_text="Cat", seeds=[-1]), ConfigError, "seeds"),
    ],
)
def test_bad_requests(kwargs, error, match):
    kwargs.setdefault("config", small("text"))
    with pytest.raises(error, match=match):
        translate(tiny_models(), picture(), **kwargs)


@pytest.mark.parametrize(
    "source, match",
    [
        (Image.new("RGB", (1, 1)), "at least 16 pixels"),
        (np.zeros((0, 0, 3), np.uint8), "at least 16 pixels"),
        (None, "no source image"),
    ],
)
def test_bad_source_images(source, match):
    with pytest.raises(ImageError, match=match):
        translate(tiny_models(), source, text="Tiger", source_text="Cat", config=small("text"))


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(lambda_clip=-5.0), "lambda_clip"),
        (dict(skip=10), "skip"),
        (dict(steps=10**6), "steps"),
        (dict(samples=1000), "samples"),
    ],
)
def test_out_of_range_settings(overrides, field):
    with pytest.raises(ConfigError, match=field):
        small("text", **overrides)


def test_models_must_match_the_settings():
    no_clip = load_models(ModelConfig(tiny=True, load_clip=False), "cpu")
    with pytest.raises(ConfigError, match="CLIP models are loaded"):
        translate(no_clip, picture(), text="Tiger", source_text="Cat", config=small("text"))
    with pytest.raises(ConfigError, match="ArcFace"):
        translate(tiny_models(), picture(), style=picture(seed=2), config=small("image", lambda_id=10.0))


def test_style_with_text_mode_config_is_refused():
    with pytest.raises(ConfigError, match="mode"):
        translate(tiny_models(), picture(), style=picture(seed=2), config=small("text"))


def test_check_text_normalises_whitespace():
    assert check_text("text", "  Black \n Leopard ") == "Black Leopard"


def test_default_config_follows_the_inputs_and_odd_modes_work():
    m = tiny_models()
    rgba = picture(seed=4).convert("RGBA")
    grey16 = Image.fromarray((np.asarray(picture(seed=5).convert("L"), np.uint16) * 257))
    out = translate(m, rgba, style=grey16, config=dataclasses.replace(small("image"), colour_match=True))
    assert out[0].image.mode == "RGB" and out[0].image.size == (64, 64)
    # same seed, same settings, same device: same pixels
    again = translate(m, rgba, style=grey16, config=dataclasses.replace(small("image"), colour_match=True))
    assert np.array_equal(np.asarray(out[0].image), np.asarray(again[0].image))
    assert preset("image").mode == "image"
