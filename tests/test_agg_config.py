"""AGG's settings: SPEC-AGG §8 presets by literal values, the ranges, the unread-setting rule and its
exact words, and the AGG work counts of ``dsct.budget`` (SPEC-AGG §9). No model runs."""

from __future__ import annotations

import dataclasses

import pytest

from dsct import budget
from dsct.config import (
    AGG_FACES_PRESET,
    AGG_IMAGE_PRESET,
    AGG_ONLY,
    AGG_PRESETS,
    AGG_TEXT_PRESET,
    DIFFUSEIT_ONLY,
    IMAGE_PRESET,
    PRESETS,
    TEXT_PRESET,
    TranslationConfig,
    preset,
)
from dsct.errors import ConfigError

# SPEC-AGG §8, every setting AGG reads, written out
COMMON = dict(method="agg", steps=100, skip=40, t_edit=20, t_boost=40, inner_iters=1, inner_lr=0.02, symmetric=False,
              lambda_range=200.0, lambda_gt=200.0, n_cuts=8, colour_match=False, lambda_id=0.0)
TEXT = dict(COMMON, mode="text", lambda_clip=200.0, prog_contrast=True, regularize_content=True,
            eta_edit=0.7, eta=0.7, eta_boost=1.0)
IMAGE = dict(COMMON, mode="image", lambda_cls=200.0, noise_aug=True, lambda_l2=200.0, lambda_clip=0.0,
             eta_edit=0.7, eta=0.7, eta_boost=1.0)
FACES = dict(TEXT, eta_edit=0.0, eta=0.0, eta_boost=1.0)


def message(base: TranslationConfig = TEXT_PRESET, **changes) -> str:
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(base, **changes)
    return str(err.value)


@pytest.mark.parametrize("config, want", [(AGG_TEXT_PRESET, TEXT), (AGG_IMAGE_PRESET, IMAGE), (AGG_FACES_PRESET, FACES)])
def test_agg_presets_are_spec_section_8(config, want):
    assert {name: getattr(config, name) for name in want} == want
    assert config.t_start == 59


def test_preset_picks_the_method_mode_and_generator():
    assert preset("text", method="agg") == AGG_TEXT_PRESET
    assert preset("image", method="agg") == AGG_IMAGE_PRESET
    assert preset("text", method="agg", generator="ffhq") == AGG_FACES_PRESET
    assert preset("image", method="agg", generator="ffhq") == AGG_IMAGE_PRESET
    assert AGG_PRESETS == {"text": AGG_TEXT_PRESET, "image": AGG_IMAGE_PRESET, "faces": AGG_FACES_PRESET}
    assert preset("text", method="agg", samples=3, lambda_gt=10.0).lambda_gt == 10.0  # the style demo's knob
    # DiffuseIT unchanged, also when named
    assert preset("text") == preset("text", method="diffuseit") == TEXT_PRESET and preset("image") == IMAGE_PRESET
    assert all(p.method == "diffuseit" for p in PRESETS.values())


def test_agg_has_no_fast_preset_and_method_is_a_choice():
    with pytest.raises(ConfigError) as err:
        preset("text", method="agg", fast=True)
    assert str(err.value) == "fast=True is not allowed: False with method='agg' (SPEC-AGG §8 defines no fast preset)"
    with pytest.raises(ConfigError) as err:
        preset("text", method="ddpm")
    assert str(err.value) == "method='ddpm' is not allowed: one of 'diffuseit', 'agg'"
    assert message(method="ddim") == "method='ddim' is not allowed: one of 'diffuseit', 'agg'"


def test_a_setting_the_method_does_not_read_is_refused_away_from_its_default():
    assert message(lambda_gt=50.0) == ("lambda_gt=50.0 is not allowed: 200.0 (its default) with method='diffuseit': "
                                       "only method='agg' reads it")
    assert message(AGG_TEXT_PRESET, resample_repeats=5) == (
        "resample_repeats=5 is not allowed: 10 (its default) with method='agg': only method='diffuseit' reads it")
    assert message(eta_edit=0.0) == ("eta_edit=0.0 is not allowed: 0.7 (its default) with method='diffuseit': "
                                     "only method='agg' reads it")
    assert message(AGG_TEXT_PRESET, range_restart=False) == (
        "range_restart=False is not allowed: True (its default) with method='agg': only method='diffuseit' reads it")
    # the DiffuseIT image preset changes divergence_until, which AGG does not read: no silent switch
    assert message(IMAGE_PRESET, method="agg") == (
        "divergence_until=100 is not allowed: 50 (its default) with method='agg': only method='diffuseit' reads it")
    for name in AGG_ONLY:  # every preset keeps the other method's settings at their defaults
        assert all(getattr(p, name) == getattr(TranslationConfig(), name) for p in PRESETS.values()), name
    for name in DIFFUSEIT_ONLY:
        assert all(getattr(p, name) == getattr(TranslationConfig(), name) for p in AGG_PRESETS.values()), name


def test_weights_are_those_the_method_reads():
    assert AGG_TEXT_PRESET.weights == {"cls": 0.0, "l2": 0.0, "clip": 200.0, "range": 200.0, "id": 0.0, "gt": 200.0}
    assert "gt" not in TEXT_PRESET.weights and "ssim" in TEXT_PRESET.weights


@pytest.mark.parametrize("name, value, allowed", [
    ("eta_edit", 1.5, "a value in [0, 1]"),
    ("eta", -0.1, "a value in [0, 1]"),
    ("eta_boost", 2.0, "a value in [0, 1]"),
    ("t_edit", 1, "a value in [2, 1000]"),
    ("t_boost", 1001, "a value in [0, 1000]"),
    ("t_edit", 2.5, "an integer in [2, 1000]"),
    ("lambda_gt", -1.0, "a value in [0, 1000000]"),
    ("inner_iters", 0, "a value in [1, 100]"),
    ("inner_lr", 1.5, "a value in [0, 1]"),
    ("symmetric", 1, "true or false"),
])
def test_agg_ranges(name, value, allowed):
    assert message(AGG_TEXT_PRESET, **{name: value}) == f"{name}={value!r} is not allowed: {allowed}"


def test_agg_text_mode_needs_a_clip_weight():
    assert message(AGG_TEXT_PRESET, lambda_clip=0.0) == (
        "lambda_clip=0.0 is not allowed: a positive weight in text mode (nothing would guide the translation)")
    assert dataclasses.replace(AGG_IMAGE_PRESET, lambda_cls=0.0, lambda_l2=0.0).mode == "image"


# ---------------------------------------------------------------- budget (SPEC-AGG §9)


def test_agg_work_counts_of_the_defaults():
    work = budget.agg_work(AGG_TEXT_PRESET)
    assert work == budget.AggWork(inversion=60, guided=19, plain=41)
    assert work.per_sample == 60 and budget.evaluations(AGG_TEXT_PRESET) == 60
    assert work.forwards(samples=5) == 360 and work.forwards(samples=1, sources=2) == 240  # 60 + 60·k per source
    assert budget.evaluations(TEXT_PRESET) == 69  # DiffuseIT: 59 + 10 repeats, unchanged
    assert budget.agg_work(dataclasses.replace(AGG_TEXT_PRESET, t_edit=5, skip=60)) == budget.AggWork(40, 4, 36)


def test_agg_seconds_price_inversion_once_per_source_at_batch_one():
    speed = budget.StepSpeed(0.5)
    cfg = dataclasses.replace(AGG_TEXT_PRESET, samples=4)
    # 19 guided + 41 plain loop passes (0.15 of a guided one in text mode) at batch 4 (1 + 0.18·3 = 1.54),
    # + 60 plain inversion passes at batch 1
    loop = 19 + 41 * 0.15
    assert budget.run_seconds(cfg, 256 * 256, speed) == pytest.approx(loop * 0.5 * 1.54 + 60 * 0.15 * 0.5)
    # two sources in one batch: 8 rows in the loop, two inversions
    assert budget.run_seconds(cfg, 256 * 256, speed, sources=2) == pytest.approx(loop * 0.5 * 2.26 + 120 * 0.15 * 0.5)
    image = dataclasses.replace(AGG_IMAGE_PRESET, t_edit=5, skip=60)  # 40 passes: 4 guided, 36 plain
    assert budget.run_seconds(image, 256 * 256, speed) == pytest.approx((4 + 36 * 0.36) * 0.5 + 40 * 0.36 * 0.5)
    assert budget.run_seconds(TEXT_PRESET, 256 * 256, speed) == pytest.approx(69 * 0.5)
    assert budget.inversion_gb(cfg, 256 * 256) == pytest.approx(60 * 3 * 65536 * 4 / 1e9)
    assert budget.inversion_gb(cfg, 256 * 256, sources=2) == pytest.approx(8 * 60 * 3 * 65536 * 4 / 1e9)
    assert budget.inversion_gb(TEXT_PRESET, 256 * 256) == 0.0
