"""dsct: DiffuseIT image translation — a source image, guided by a text or a style image.

Load the networks once with ``load_models``, then call ``translate`` as often as you like::

    from dsct import ModelConfig, load_models, translate
    models = load_models(ModelConfig(tiny=True))          # tiny random models: no weights needed
    results = translate(models, "cat.png", text="Black Leopard", source_text="Cat")
    results[0].image.save("out.png")

The second method, AGG (SPEC-AGG), is a config away: ``translate(models, "cat.png", text=…, source_text=…,
config=preset("text", method="agg"))``.
"""

from .config import (
    AGG_FACES_PRESET, AGG_IMAGE_PRESET, AGG_PRESETS, AGG_TEXT_PRESET, IMAGE_FAST_PRESET, IMAGE_PRESET, PRESETS, TEXT_FAST_PRESET, TEXT_PRESET, ModelConfig, TranslationConfig, preset,
)
from .errors import Cancelled, ChecksumError, ConfigError, DSCTError, ImageError, TimeLimitExceeded, WeightsNotFound
from .hub import Models, load_models
from .pipeline import Job, Result, translate, translate_many
from .sampler import StepEvent

__all__ = [
    "translate", "translate_many", "Job", "load_models", "Models", "Result", "StepEvent",
    "TranslationConfig", "ModelConfig", "preset", "PRESETS",
    "TEXT_PRESET", "IMAGE_PRESET", "TEXT_FAST_PRESET", "IMAGE_FAST_PRESET",
    "AGG_PRESETS", "AGG_TEXT_PRESET", "AGG_IMAGE_PRESET", "AGG_FACES_PRESET",
    "DSCTError", "ConfigError", "ImageError", "WeightsNotFound", "ChecksumError", "Cancelled",
    "TimeLimitExceeded",
]
