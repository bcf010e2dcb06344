"""Every rule of dsct.config with its exact boundary and the exact words a user reads.

The expectations are written out by hand (the ranges users are told, the messages as they should
read), so a changed comparison, bound, default or message turns a test red. Cheap: no model runs.
"""

from __future__ import annotations

import dataclasses

import pytest

from dsct import config as config_module
from dsct.config import (
    AGG_TEXT_PRESET,
    IMAGE_PRESET,
    TEXT_PRESET,
    ModelConfig,
    TranslationConfig,
    format_range,
    preset,
)
from dsct.errors import ConfigError

ALL_CLIP = "RN50-quickgelu, RN50x4-quickgelu, ViT-B-32-quickgelu, RN50x16-quickgelu, ViT-B-16-quickgelu"


def message(**changes) -> str:
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(TEXT_PRESET, **changes)
    return str(err.value)


def model_message(**kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        ModelConfig(**kwargs)
    return str(err.value)


# --- how numbers are printed in messages ----------------------------------------------------------

@pytest.mark.parametrize("low, high, text", [
    (0, 2**63 - 1, "[0, 2^63 − 1]"),
    (0, 2**40, "[0, 2^40]"),
    (0, 2**33, "[0, 2^33]"),
    (0, 2**32, "[0, 4294967296]"),  # "big" means above 2^32
    (0, 2**32 - 1, "[0, 4294967295]"),
    (0, 2**33 - 1, "[0, 2^33 − 1]"),
    (0, 2**33 + 1, "[0, 8589934593]"),  # neither a power of two nor one below
    (0, 2**33 + 2, "[0, 8589934594]"),
    (32, 1024, "[32, 1024]"),  # small powers of two stay digits
    (2, 2**20, "[2, 1048576]"),
    (0.0, 1e6, "[0, 1000000]"),  # integral floats print as integers
    (0.5, 2.25, "[0.5, 2.25]"),
    (-1, 999, "[-1, 999]"),
])
def test_format_range(low, high, text):
    assert format_range(low, high) == text


def test_setting_carries_default_and_help():
    f = config_module._setting(7, "seven of them")
    assert f.default == 7 and dict(f.metadata) == {"help": "seven of them"}


def test_translation_config_defaults_are_the_text_demo():
    cfg = TranslationConfig()
    assert (cfg.mode, cfg.steps, cfg.skip, cfg.resample_repeats, cfg.divergence_until) == ("text", 100, 40, 10, 50)
    assert (cfg.size, cfg.max_long_side, cfg.resize_mode, cfg.samples, cfg.seed) == (256, 448, "resize", 1, 0)
    assert dataclasses.fields(TranslationConfig)[0].metadata["help"] == \
        "text: guided by a target text; image: guided by a style image"


# --- choices ---------------------------------------------------------------------------------------

def test_choice_messages_list_every_choice():
    assert message(mode="video") == "mode='video' is not allowed: one of 'text', 'image'"
    assert message(resize_mode="stretch") == "resize_mode='stretch' is not allowed: one of 'resize', 'center_crop'"
    assert model_message(generator="celeba") == "generator='celeba' is not allowed: one of 'imagenet', 'ffhq', 'imagenet512'"
    assert model_message(dtype="fp64") == "dtype='fp64' is not allowed: one of 'auto', 'fp32', 'bf16', 'fp16'"
    assert model_message(step_capture="graph") == \
        "step_capture='graph' is not allowed: one of 'eager', 'cuda-graph', 'compile'"


@pytest.mark.parametrize("dtype", ["auto", "fp32", "bf16", "fp16"])
def test_every_dtype_choice_is_accepted(dtype):
    assert ModelConfig(dtype=dtype).dtype == dtype


@pytest.mark.parametrize("capture", ["eager", "cuda-graph", "compile"])
def test_every_step_capture_choice_is_accepted(capture):
    assert ModelConfig(step_capture=capture).step_capture == capture


def test_resize_modes_and_generators_are_accepted():
    assert dataclasses.replace(TEXT_PRESET, resize_mode="center_crop").resize_mode == "center_crop"
    assert ModelConfig(generator="ffhq").generator == "ffhq"


# --- booleans --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["range_restart", "noise_aug", "regularize_content", "prog_contrast", "colour_match"])
def test_translation_flags_must_be_booleans(name):
    assert message(**{name: 1}) == f"{name}=1 is not allowed: true or false"
    for value in (True, False):
        assert getattr(dataclasses.replace(TEXT_PRESET, **{name: value}), name) is value


@pytest.mark.parametrize("name", ["load_clip", "tiny", "grad_checkpointing"])
def test_model_flags_must_be_booleans(name):
    assert model_message(**{name: "yes"}) == f"{name}='yes' is not allowed: true or false"
    assert getattr(ModelConfig(**{name: True}), name) is True


# --- numeric ranges: both ends accepted, one past either end refused with the range -----------------

# (field, low, high, other fields that make the bound reachable)
BOUNDS = [
    ("steps", 2, 1000, dict(skip=0)),
    ("skip", 0, 999, dict(steps=1000)),
    ("resample_repeats", 1, 50, {}),
    ("divergence_until", -1, 999, {}),
    ("max_restarts", 0, 10, {}),
    ("n_cuts", 1, 64, {}),
    ("size", 32, 1024, dict(max_long_side=1024)),
    ("max_long_side", 32, 2048, dict(size=32)),
    ("samples", 1, 16, {}),
    ("seed", 0, 2**63 - 1, {}),
]
FLOAT_BOUNDS = [(name, 0.0, 1e6) for name in
                ["restart_threshold"] + [f"lambda_{k}" for k in ("ssim", "contra", "div", "cls", "l2", "clip", "range", "id")]]


@pytest.mark.parametrize("name, low, high, others", BOUNDS)
def test_integer_ranges_are_inclusive(name, low, high, others):
    for value in (low, high):
        cfg = dataclasses.replace(TEXT_PRESET, **others, **{name: value})
        assert getattr(cfg, name) == value and type(getattr(cfg, name)) is int
    shown = format_range(low, high)
    for value in (low - 1, high + 1):
        with pytest.raises(ConfigError) as err:
            dataclasses.replace(TEXT_PRESET, **others, **{name: value})
        assert str(err.value) == f"{name}={value!r} is not allowed: a value in {shown}"
        assert (err.value.field, err.value.value) == (name, value)


@pytest.mark.parametrize("name, low, high", FLOAT_BOUNDS)
def test_weight_ranges_are_inclusive(name, low, high):
    for value in (low, high, 0.5, 1234.25):
        cfg = dataclasses.replace(TEXT_PRESET, **{name: value})
        assert getattr(cfg, name) == value and type(getattr(cfg, name)) is float  # not rounded to an int
    for value in (-1e-9, high + 0.5):
        assert message(**{name: value}) == f"{name}={value!r} is not allowed: a value in [0, 1000000]"


def test_wrong_types_say_integer_or_number():
    assert message(steps="7") == "steps='7' is not allowed: an integer in [2, 1000]"
    assert message(steps=None) == "steps=None is not allowed: an integer in [2, 1000]"
    assert message(steps=float("inf")) == "steps=inf is not allowed: an integer in [2, 1000]"
    assert message(samples=1.5) == "samples=1.5 is not allowed: an integer in [1, 16]"
    assert message(lambda_ssim="1") == "lambda_ssim='1' is not allowed: a number in [0, 1000000]"
    assert message(lambda_ssim=True) == "lambda_ssim=True is not allowed: a number in [0, 1000000]"
    assert message(restart_threshold=None) == "restart_threshold=None is not allowed: a number in [0, 1000000]"
    assert message(lambda_clip=float("nan")) == "lambda_clip=nan is not allowed: a value in [0, 1000000]"


def test_integral_floats_become_ints_for_every_integer_field():
    cfg = dataclasses.replace(TEXT_PRESET, steps=60.0, skip=10.0, resample_repeats=3.0, divergence_until=-1.0,
                              max_restarts=2.0, n_cuts=4.0, size=64.0, max_long_side=96.0, samples=2.0, seed=9.0)
    for name, want in dict(steps=60, skip=10, resample_repeats=3, divergence_until=-1, max_restarts=2, n_cuts=4,
                           size=64, max_long_side=96, samples=2, seed=9).items():
        got = getattr(cfg, name)
        assert got == want and type(got) is int, name
    assert cfg.t_start == 49


# --- rules between fields ----------------------------------------------------------------------------

def test_skip_must_leave_a_step():
    assert dataclasses.replace(TEXT_PRESET, steps=10, skip=9).t_start == 0
    assert message(steps=10, skip=10) == "skip=10 is not allowed: fewer than steps (10); skip 9 leaves a single step"
    assert message(steps=10, skip=11) == "skip=11 is not allowed: fewer than steps (10); skip 9 leaves a single step"


def test_guided_evaluation_cap_message_and_boundary(monkeypatch):
    monkeypatch.setattr(config_module, "MAX_GUIDED_EVALUATIONS", 60)
    ok = dataclasses.replace(TEXT_PRESET, steps=60, skip=0, resample_repeats=1)  # 59 + 1 = 60
    assert ok.t_start == 59
    assert dataclasses.replace(ok, steps=61, skip=2, resample_repeats=2).resample_repeats == 2  # 58 + 2
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(ok, steps=61, skip=0)  # 60 + 1
    assert str(err.value) == ("steps=61 is not allowed: at most 60 guided evaluations per sample "
                              "(steps - skip - 1 + resample_repeats); asked for 61")
    assert err.value.field == "steps"


def test_agg_counts_one_evaluation_beyond_its_guided_steps(monkeypatch):
    # AGG does not repeat its first step: steps - skip - 1 + 1, whatever resample_repeats holds (10, unread).
    monkeypatch.setattr(config_module, "MAX_GUIDED_EVALUATIONS", 10)
    ok = dataclasses.replace(AGG_TEXT_PRESET, steps=12, skip=2, t_edit=5, t_boost=8)  # 9 + 1
    assert (ok.t_start, ok.resample_repeats) == (9, 10)
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(ok, skip=1)  # 10 + 1
    assert str(err.value).endswith("asked for 11")


def test_the_real_evaluation_cap_admits_every_in_range_setting():
    cfg = dataclasses.replace(TEXT_PRESET, steps=1000, skip=0, resample_repeats=50)  # 999 + 50, far below 5000
    assert cfg.t_start + cfg.resample_repeats == 1049


SIZE_RULE = "a multiple of 32, and of 64 with generator='imagenet512' (the UNet halves the image 5 times, 6 at 512)"


def test_sizes_must_be_multiples_of_32():
    assert message(size=250) == f"size=250 is not allowed: {SIZE_RULE}"
    assert message(max_long_side=450) == f"max_long_side=450 is not allowed: {SIZE_RULE}"
    assert message(size=250, max_long_side=450) == f"size=250 is not allowed: {SIZE_RULE}"
    cfg = dataclasses.replace(TEXT_PRESET, size=96, max_long_side=160)
    assert (cfg.size, cfg.max_long_side) == (96, 160)


def test_long_side_at_least_the_short_side():
    assert message(size=256, max_long_side=224) == "max_long_side=224 is not allowed: at least size (256)"
    assert dataclasses.replace(TEXT_PRESET, size=256, max_long_side=256).max_long_side == 256


def test_last_seed_of_a_batch_stays_in_range():
    top = 2**63 - 1
    assert dataclasses.replace(TEXT_PRESET, seed=top - 15, samples=16).seed == top - 15
    assert dataclasses.replace(TEXT_PRESET, seed=top, samples=1).seed == top
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(TEXT_PRESET, seed=top - 14, samples=16)
    assert err.value.field == "seed" and err.value.value == top - 14
    assert str(err.value) == (f"seed={top - 14} is not allowed: a value in [0, {top - 15}] with samples=16: "
                              "sample k uses seed + k, which must stay in [0, 2^63 − 1]")


def test_text_mode_needs_one_guiding_weight():
    none = dict(lambda_clip=0.0, lambda_ssim=0.0, lambda_contra=0.0)
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(TEXT_PRESET, **none)
    assert str(err.value) == "lambda_clip=0.0 is not allowed: a positive weight in text mode (nothing would guide the translation)"
    for name in none:  # any one of the three is enough
        assert getattr(dataclasses.replace(TEXT_PRESET, **{**none, name: 1.0}), name) == 1.0
    assert dataclasses.replace(IMAGE_PRESET, **none).mode == "image"  # the style losses guide image mode


# --- model settings ------------------------------------------------------------------------------------

def test_arcface_follows_the_generator_unless_given():
    assert ModelConfig(generator="ffhq").load_arcface is True
    assert ModelConfig(generator="imagenet").load_arcface is False
    assert ModelConfig(generator="imagenet", load_arcface=True).load_arcface is True
    assert ModelConfig(generator="ffhq", load_arcface=False).load_arcface is False
    assert model_message(load_arcface="yes") == \
        "load_arcface='yes' is not allowed: true, false or None (with the faces generator)"


def test_model_config_defaults():
    cfg = ModelConfig()
    assert (cfg.generator, cfg.load_clip, cfg.tiny, cfg.dtype, cfg.grad_checkpointing) == ("imagenet", True, False, "auto", False)
    assert cfg.step_capture == "eager"
    assert cfg.clip_models == tuple(ALL_CLIP.split(", "))


def test_clip_model_messages():
    assert model_message(clip_models=()) == f"clip_models=() is not allowed: a non-empty tuple of {ALL_CLIP}"
    assert model_message(clip_models=[]) == f"clip_models=() is not allowed: a non-empty tuple of {ALL_CLIP}"
    assert model_message(clip_models="RN50-quickgelu") == \
        f"clip_models='RN50-quickgelu' is not allowed: a non-empty tuple of {ALL_CLIP}"
    assert model_message(clip_models=("RN50-quickgelu", "RN50")) == f"clip_models='RN50' is not allowed: each one of {ALL_CLIP}"
    assert model_message(clip_models=["ViT-B-16-quickgelu", "ViT-B-16-quickgelu"]) == \
        "clip_models=('ViT-B-16-quickgelu', 'ViT-B-16-quickgelu') is not allowed: each model at most once"
    cfg = ModelConfig(clip_models=["ViT-B-32-quickgelu", "RN50-quickgelu"])
    assert cfg.clip_models == ("ViT-B-32-quickgelu", "RN50-quickgelu") and isinstance(cfg.clip_models, tuple)


# --- presets ---------------------------------------------------------------------------------------------

def test_preset_picks_mode_speed_and_generator():
    assert preset("text") == TEXT_PRESET and preset("image") == IMAGE_PRESET
    text_fast, image_fast = preset("text", fast=True), preset("image", fast=True)
    # README "Settings": the fast presets change steps, skip, divergence_until, resample_repeats
    assert (text_fast.steps, text_fast.skip, text_fast.divergence_until, text_fast.resample_repeats) == (50, 20, 25, 4)
    assert (image_fast.steps, image_fast.skip, image_fast.divergence_until, image_fast.resample_repeats) == (100, 40, 50, 4)
    assert image_fast.mode == "image" and text_fast.mode == "text"
    for mode in ("text", "image"):
        for fast in (False, True):
            faces = preset(mode, fast=fast, generator="ffhq")
            plain = preset(mode, fast=fast, generator="imagenet")
            assert (faces.lambda_id, faces.restart_threshold) == (100.0, 0.1)
            assert (plain.lambda_id, plain.restart_threshold) == (0.0, 0.01)
            assert dataclasses.replace(faces, lambda_id=0.0, restart_threshold=0.01) == plain


def test_preset_overrides_win_over_the_generator_defaults():
    cfg = preset("text", generator="ffhq", lambda_id=5.0, seed=3, samples=2)
    assert (cfg.lambda_id, cfg.restart_threshold, cfg.seed, cfg.samples) == (5.0, 0.1, 3, 2)


def test_preset_messages():
    with pytest.raises(ConfigError) as err:
        preset("video")
    assert str(err.value) == "mode='video' is not allowed: one of 'text', 'image'"
    with pytest.raises(ConfigError) as err:
        preset("text", generator="celeba")
    assert str(err.value) == "generator='celeba' is not allowed: one of 'imagenet', 'ffhq', 'imagenet512'"
    with pytest.raises(ConfigError) as err:
        preset("text", zeta=1, alpha=2, steps=10, skip=5)
    assert (err.value.field, err.value.value) == ("alpha", 2)  # the first unknown name, alphabetically
    assert str(err.value) == "alpha=2 is not allowed: a TranslationConfig field"
