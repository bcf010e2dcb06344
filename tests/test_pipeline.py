"""translate(): inputs are checked up front, each bad one gives one typed, readable error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from dsct import Cancelled, ConfigError, ImageError, ModelConfig, load_models, preset, translate
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
        (dict(text=5, source_text="Cat"), ConfigError, r"^text=5 is not allowed: a string \(e\.g\. 'Black Leopard'\)$"),
        (dict(text="Tiger", source_text=["Cat"]), ConfigError, r"^source_text=\['Cat'\] is not allowed: a string"),
        (dict(text="\u200b\u200c\u200d\u2060\ufeff", source_text="Cat"), ConfigError,
         r"^text='\\u200b\\u200c\\u200d\\u2060\\ufeff' is not allowed: a non-empty description"),
        (dict(text="Tiger", source_text="\x7f\x85\x9f"), ConfigError,
         r"^source_text='\\x7f\\x85\\x9f' is not allowed: printable text without control characters"),
        (dict(text="Ti\x1bger", source_text="Cat"), ConfigError, "control characters"),
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


def _stop(event) -> None:
    """A request that got past the checks stops at its first step (Cancelled, not the expected ConfigError)."""
    raise Cancelled("the request should have been refused before sampling")


@pytest.mark.parametrize("config", [None, small("image"), small("text")])
def test_text_and_style_together_are_refused_whatever_the_config(config):
    with pytest.raises(ConfigError) as err:
        translate(tiny_models(), picture(), text="Tiger", source_text="Cat", style=picture(seed=2), config=config,
                  callback=_stop)
    assert err.value.field == "text" and err.value.value == "Tiger"
    assert "give either text (with source_text) for text mode or a style image for image mode, not both" in str(err.value)
    with pytest.raises(ConfigError, match=r"^source_text='Cat' is not allowed: left out when a style image is given"):
        translate(tiny_models(), picture(), source_text="Cat", style=picture(seed=2), config=config, callback=_stop)


def test_format_characters_inside_a_prompt_are_kept():
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467 family"  # emoji joined by zero-width joiners
    assert check_text("text", family) == family


@pytest.mark.parametrize("kwargs, field, allowed", [
    (dict(config="text"), "config", "a TranslationConfig, e.g. dsct.preset('text', samples=2), or None"),
    (dict(config={}), "config", "a TranslationConfig, e.g. dsct.preset('text', samples=2), or None"),
    (dict(seeds=5), "seeds", "a list of 1 to 16 integers in [0, 2^63 − 1]"),
    (dict(seeds=[2**63]), "seeds", "a list of 1 to 16 integers in [0, 2^63 − 1]"),
    (dict(callback="print"), "callback", "a function called with each StepEvent, or None"),
])
def test_arguments_of_the_wrong_type_name_the_argument(kwargs, field, allowed):
    with pytest.raises(ConfigError) as err:
        translate(tiny_models(), picture(), **{"text": "Tiger", "source_text": "Cat", "config": small("text"),
                                               "callback": _stop, **kwargs})
    assert (err.value.field, err.value.allowed) == (field, allowed)


def test_a_long_seed_iterator_is_read_only_one_past_the_cap():
    """MAX_SAMPLES is 16: 17 seeds are enough to refuse, so an endless iterator cannot hang translate."""
    with pytest.raises(ConfigError) as err:
        translate(tiny_models(), picture(), text="Tiger", source_text="Cat", config=small("text"), seeds=iter(range(100)))
    assert err.value.field == "seeds" and err.value.value == list(range(17))


def test_models_of_the_wrong_type_are_refused():
    with pytest.raises(ConfigError, match=r"^models=None is not allowed: the Models that dsct\.load_models"):
        translate(None, picture(), text="Tiger", source_text="Cat", config=small("text"))


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
