"""Around the sampler: what ``translate`` does to its inputs and outputs (SPEC §3 sizes, §4 colour
matching), with closed-form stand-ins for the networks so each run takes milliseconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dsct import ModelConfig, translate
from dsct.config import preset
from dsct.hub import Models
from dsct.pipeline import prepare_images

from closed_form import LinearEps, SpyViT, zero_weights
from helpers import picture


def fake_models() -> Models:
    return Models(unet=LinearEps(), vit=SpyViT(), clip=None, arcface=None,
                  config=ModelConfig(tiny=True, load_clip=False), device=torch.device("cpu"), dtype=torch.float32)


def settings(mode="image", **changes):
    base = dict(steps=10, skip=5, divergence_until=5, resample_repeats=1, size=64, max_long_side=128, range_restart=False)
    weights = zero_weights()
    if mode == "text":
        weights["lambda_ssim"] = 1.0  # text mode needs one guiding weight; no CLIP loaded
    return preset(mode, **{**base, **weights, **changes})


def teal(w=64, h=64, seed=0) -> Image.Image:
    """A noisy teal picture: mean RGB ≈ (40, 170, 130), far from any picture() source."""
    rng = np.random.default_rng(seed)
    a = np.array([40.0, 170.0, 130.0]) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def mean_rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float64).reshape(-1, 3).mean(0)


@pytest.mark.parametrize("colour_match", [True, False])
def test_colour_matching_in_image_mode_only_when_on(colour_match):
    style = teal()
    out = translate(fake_models(), picture(64, 64), style=style, config=settings(colour_match=colour_match))
    gap = np.abs(mean_rgb(out[0].image) - mean_rgb(style)).max()
    if colour_match:  # MKL gives the output the style's mean colour (up to clamping and rounding)
        assert gap < 2.0
    else:
        assert gap > 25.0


def test_text_mode_never_colour_matches():
    out = translate(fake_models(), picture(64, 64), text="tiger", source_text="cat", config=settings("text", colour_match=True))
    assert out[0].image.size == (64, 64)


@pytest.mark.parametrize("source_wh", [(90, 64), (64, 90)])
def test_results_have_the_source_aspect_not_the_working_size(source_wh):
    # short side 64; the long side 90 works at 96 (a multiple of 32) but is returned at 90
    out = translate(fake_models(), picture(*source_wh), style=teal(), config=settings())
    assert out[0].image.size == source_wh


def test_style_image_is_fitted_by_center_crop_not_stretched():
    stripes = np.zeros((64, 128, 3), np.uint8)
    stripes[:, :32] = (255, 0, 0)
    stripes[:, 32:96] = (0, 255, 0)
    stripes[:, 96:] = (0, 0, 255)
    x_src, x_style, out_size = prepare_images(settings(size=64, max_long_side=64), picture(64, 64), Image.fromarray(stripes), torch.device("cpu"))
    assert x_src.shape == x_style.shape == (1, 3, 64, 64) and out_size == (64, 64)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(x_style, green.expand_as(x_style), atol=2 / 127.5, rtol=0)
