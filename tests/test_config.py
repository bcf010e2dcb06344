"""Settings: presets equal SPEC §5, and every out-of-range value is one ConfigError naming it."""

from __future__ import annotations

import dataclasses

import pytest

from dsct.config import IMAGE_PRESET, PRESETS, RANGES, TEXT_PRESET, ModelConfig, TranslationConfig, preset
from dsct.errors import ConfigError


def test_presets_match_spec_section_5():
    t, i = TEXT_PRESET, IMAGE_PRESET
    assert (t.steps, t.skip, t.t_start, t.divergence_until) == (100, 40, 59, 50)
    assert (i.steps, i.skip, i.t_start, i.divergence_until) == (200, 80, 119, 100)
    assert t.resample_repeats == i.resample_repeats == 10
    assert t.range_restart and i.range_restart and t.noise_aug and i.noise_aug
    assert i.colour_match and not t.colour_match
    assert t.regularize_content and not t.prog_contrast
    assert t.weights == {"ssim": 1000, "contra": 200, "div": 100, "cls": 0, "l2": 0, "clip": 2000, "range": 200, "id": 0}
    assert i.weights == {"ssim": 1000, "contra": 200, "div": 100, "cls": 2000, "l2": 3000, "clip": 0, "range": 200, "id": 0}
    assert t.n_cuts == 8 and t.max_restarts == 3 and t.restart_threshold == 0.01


def test_fast_presets_do_less_work():
    for mode in ("text", "image"):
        slow, fast = PRESETS[mode], PRESETS[f"{mode}-fast"]
        assert fast.t_start + fast.resample_repeats < (slow.t_start + slow.resample_repeats) / 2
        assert fast.weights == slow.weights


def test_faces_preset_adds_identity_and_looser_restart():
    cfg = preset("text", generator="ffhq")
    assert cfg.lambda_id == 100 and cfg.restart_threshold == 0.1


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"lambda_ssim": -1.0}, "lambda_ssim"),
        ({"lambda_clip": float("inf")}, "lambda_clip"),
        ({"skip": 100}, "skip"),
        ({"steps": 1_000_000}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"samples": 0}, "samples"),
        ({"resample_repeats": 0}, "resample_repeats"),
        ({"size": 250}, "size"),
        ({"mode": "video"}, "mode"),
        ({"resize_mode": "stretch"}, "resize_mode"),
        ({"noise_aug": "yes"}, "noise_aug"),
        ({"seed": -3}, "seed"),
        ({"steps": True}, "steps"),
    ],
)
def test_out_of_range_settings_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field) as err:
        dataclasses.replace(TEXT_PRESET, **changes)
    assert err.value.field == field


@pytest.mark.parametrize("changes, message", [
    ({"seed": -3}, "seed=-3 is not allowed: a value in [0, 2^63 − 1]"),
    ({"seed": 2**63}, "seed=9223372036854775808 is not allowed: a value in [0, 2^63 − 1]"),
    ({"seed": "7"}, "seed='7' is not allowed: an integer in [0, 2^63 − 1]"),
    ({"lambda_ssim": -1.0}, "lambda_ssim=-1.0 is not allowed: a value in [0, 1000000]"),
    ({"steps": 2.5}, "steps=2.5 is not allowed: an integer in [2, 1000]"),
    ({"seed": 2**63 - 1, "samples": 2},
     "seed=9223372036854775807 is not allowed: a value in [0, 9223372036854775806] with samples=2: sample k uses "
     "seed + k, which must stay in [0, 2^63 − 1]"),
])
def test_range_messages_print_big_numbers_readably(changes, message):
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(TEXT_PRESET, **changes)
    assert str(err.value) == message


def test_integral_floats_are_accepted_as_ints():
    cfg = dataclasses.replace(TEXT_PRESET, steps=50.0, skip=10.0)
    assert cfg.steps == 50 and isinstance(cfg.steps, int)


def test_every_numeric_field_has_a_range():
    numeric = [f.name for f in dataclasses.fields(TranslationConfig) if f.type in ("int", "float")]
    assert sorted(numeric) == sorted(RANGES)
    for f in dataclasses.fields(TranslationConfig):
        assert f.metadata.get("help"), f.name


def test_preset_rejects_unknown_override_and_model_config_checks_clip_names():
    with pytest.raises(ConfigError, match="lambda_foo"):
        preset("text", lambda_foo=1)
    with pytest.raises(ConfigError, match="clip_models"):
        ModelConfig(clip_models=("RN50",))  # the GELU name, not OpenAI's QuickGELU model
    with pytest.raises(ConfigError, match="generator"):
        ModelConfig(generator="celeba")
    assert ModelConfig(clip_models=["RN50-quickgelu"]).clip_models == ("RN50-quickgelu",)


def test_readme_lists_every_setting_with_its_preset_values():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for f in dataclasses.fields(TranslationConfig):
        t, i = getattr(PRESETS["text"], f.name), getattr(PRESETS["image"], f.name)
        values = f"{t:g} / {i:g}" if isinstance(t, float) else f"{t} / {i}"
        assert f"| `{f.name}` | {values} |" in readme, f.name
