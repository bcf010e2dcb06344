"""Small shared pieces for the tests: tiny models once per session, small fast settings."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from dsct import ModelConfig, load_models, preset

# 64×64 working size, 10 respaced steps from index 4, 2 resampling repeats: seconds on a CPU
SMALL = dict(size=64, max_long_side=64, steps=10, skip=5, divergence_until=5, resample_repeats=2)


@functools.lru_cache(maxsize=None)
def tiny_models(generator: str = "imagenet", arcface: bool = False):
    return load_models(ModelConfig(tiny=True, generator=generator, load_arcface=arcface), "cpu")


def small(mode: str, **overrides):
    return preset(mode, **{**SMALL, **overrides})


def picture(w: int = 80, h: int = 64, seed: int = 0) -> Image.Image:
    """A smooth random picture with structure (blobs), so structure losses are not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 20)
        a += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(0.2, 1, 3)
    a = a / a.max()
    return Image.fromarray((a * 255).astype(np.uint8))
