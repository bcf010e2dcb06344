"""dsct.pipeline without the sampler: the checks before any model runs, what ``translate`` hands the
guide and the sampler, and how it turns the sampler's output into ranked ``Result``s.

The sampler and the scorer are replaced by recorders that return values written here, so each
expectation (which seed a result carries, its rank, its pixels) is worked out by hand. Milliseconds
a test: closed-form stand-ins for the networks, no tiny models.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from dsct import Job, pipeline
from dsct.clip import prompt_tokens
from dsct.config import DIFFUSEIT_ONLY, ModelConfig, preset
from dsct.errors import ConfigError, ImageError
from dsct.hub import Models
from dsct.pipeline import check_models, _check_seeds, check_request, check_text, prepare_images, translate
from dsct.sampler import SampleOutput
from dsct.scoring import Scores

from closed_form import ClassEps, LinearEps, SpyArcFace, SpyClip, SpyViT, zero_weights
from helpers import picture

SEEDS_ALLOWED = "a list of 1 to 16 integers in [0, 2^63 − 1]"


def models(*, clip=None, arcface=None, generator="imagenet", tiny=True, step_capture="eager", device="cpu") -> Models:
    return Models(unet=LinearEps(), vit=SpyViT(), clip=clip, arcface=arcface,
                  config=ModelConfig(tiny=tiny, load_clip=clip is not None, generator=generator, step_capture=step_capture),
                  device=torch.device(device), dtype=torch.float32)


def settings(mode="image", **changes):
    base = dict(steps=10, skip=5, divergence_until=5, resample_repeats=2, size=64, max_long_side=128)
    weights = zero_weights()
    if mode == "text":
        weights["lambda_ssim"] = 1.0
    return preset(mode, **{**base, **weights, **changes})


def flat(rgb_value, w=64, h=64) -> Image.Image:
    return Image.fromarray(np.broadcast_to(np.array(rgb_value, np.uint8), (h, w, 3)).copy())


def config_error(fn, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    return err.value


# --- prompts -----------------------------------------------------------------------------------------

def test_empty_prompts_in_words():
    for empty in (None, "", "   ", "\u200b", " \ufeff\u2060 ", "\u200b \t \u200b"):  # spaces between format characters
        err = config_error(check_text, "text", empty)
        assert err.field == "text"
        assert err.allowed == ("a non-empty description (e.g. 'Black Leopard'); zero-width and other invisible "
                               "format characters do not count")
        assert check_text("source_text", empty, required=False) == ""


def test_prompts_that_are_not_strings():
    assert str(config_error(check_text, "source_text", b"cat")) == \
        "source_text=b'cat' is not allowed: a string (e.g. 'Black Leopard')"


@pytest.mark.parametrize("bad", ["\x00", "\x1f", "\x7f", "\x80", "\x9f", "\ud800", "\udfff"])
def test_control_characters_and_lone_surrogates_are_refused(bad):
    err = config_error(check_text, "text", f"a{bad}b")
    assert (err.field, err.value) == ("text", f"a{bad}b")
    assert err.allowed == "printable text without control characters (U+0000–U+001F, U+007F–U+009F)"


def test_tabs_and_newlines_are_whitespace_and_format_characters_stay():
    assert check_text("text", "\tBlack\r\nLeopard\n") == "Black Leopard"
    assert check_text("text", "a\u200bb") == "a\u200bb"
    assert check_text("text", "\u200bcat") == "\u200bcat"


def _prompt_of_tokens(n: int) -> str:
    """'a a a … a' with exactly n CLIP tokens (start/end included) for the longest template."""
    words = n - (prompt_tokens("a") - 1)  # each further " a" is one more token
    text = " ".join(["a"] * words)
    assert prompt_tokens(text) == n
    return text


def test_the_token_limit_is_77_inclusive():
    at_limit, over = _prompt_of_tokens(77), _prompt_of_tokens(78)
    assert check_text("text", at_limit) == at_limit
    err = config_error(check_text, "source_text", "  " + over.replace(" ", "  ") + " ")  # counted after whitespace is normalised
    assert (err.field, err.value) == ("source_text", over[:40] + "…")
    assert err.allowed == "a shorter text: CLIP reads 77 tokens, this prompt needs 78"


def test_the_character_limit_is_300_inclusive_after_stripping():
    word = "leopard"  # one token per word
    text = " ".join([word] * 37) + " abcd"  # 37·8 + 4 = 300 characters, few tokens
    assert len(text) == 300 and prompt_tokens(text) <= 77
    assert check_text("text", f"  {text}\n") == text
    longer = text + "e"
    err = config_error(check_text, "source_text", longer)
    assert (err.field, err.value) == ("source_text", longer[:40] + "…")
    assert err.allowed == "at most 300 characters (got 301); CLIP reads only 77 tokens"


# --- requests ---------------------------------------------------------------------------------------

def test_request_in_text_mode_normalises_both_prompts():
    req = check_request(settings("text"), picture(), text=" Black  Leopard ", source_text="\tCat")
    assert (req.text, req.source_text, req.style) == ("Black Leopard", "Cat", None)
    assert req.source.mode == "RGB" and req.source.size == (80, 64)


def test_request_in_image_mode_has_no_prompts():
    req = check_request(settings("image"), picture(), style=picture(40, 48, seed=2))
    assert (req.text, req.source_text) == (None, None)
    assert req.style.mode == "RGB" and req.style.size == (40, 48)


def test_request_errors_in_words():
    err = config_error(check_request, "text", picture())
    assert (err.field, err.value) == ("config", "text")
    err = config_error(check_request, settings("image"), picture(), text="Tiger", style=picture())
    assert (err.field, err.value) == ("text", "Tiger")
    err = config_error(check_request, settings("image"), picture(), source_text="Cat", style=picture())
    assert (err.field, err.value) == ("source_text", "Cat")
    assert err.allowed == ("left out when a style image is given: give either text (with source_text) for text mode "
                           "or a style image for image mode, not both")
    assert str(config_error(check_request, settings("text"), picture(), style=picture())) == \
        "mode='text' is not allowed: 'image' when a style image is given"
    with pytest.raises(ImageError) as img_err:
        check_request(settings("image"), picture())
    assert str(img_err.value) == "image-guided translation needs a style image; none was given"
    with pytest.raises(ImageError) as img_err:
        check_request(settings("image"), Image.new("RGB", (8, 8)), style=picture())
    assert str(img_err.value) == "source image is 8x8; each side must be at least 16 pixels"
    with pytest.raises(ImageError) as img_err:
        check_request(settings("image"), picture(), style=Image.new("RGB", (8, 8)))
    assert str(img_err.value) == "style image is 8x8; each side must be at least 16 pixels"


def test_prepare_images_by_hand():
    cfg = settings("image", size=64, max_long_side=128)
    x_src, x_style, out_size = prepare_images(cfg, flat((255, 0, 51), 90, 64), flat((0, 102, 255), 30, 30), torch.device("cpu"))
    assert x_src.shape == x_style.shape == (1, 3, 64, 96) and out_size == (90, 64)
    torch.testing.assert_close(x_src[0, :, 10, 10], torch.tensor([1.0, -1.0, -0.6]), rtol=0, atol=1e-6)
    torch.testing.assert_close(x_style[0, :, 10, 10], torch.tensor([-1.0, -0.2, 1.0]), rtol=0, atol=1e-6)
    meta = torch.device("meta")  # a device other than the CPU, without a GPU: the images are moved there
    x_src, x_style, _ = prepare_images(cfg, flat((0, 0, 0), 90, 64), flat((0, 0, 0)), meta)
    assert x_src.device == meta and x_style.device == meta and x_style.shape == (1, 3, 64, 96)
    crop = dataclasses.replace(cfg, resize_mode="center_crop")
    x_src, none, out_size = prepare_images(crop, flat((0, 0, 0), 90, 64), None, torch.device("cpu"))
    assert x_src.shape == (1, 3, 64, 64) and none is None and out_size == (64, 64)
    # the 512 generator's multiple of 64: a 90×64 source is worked on at 64×64 (90 rounds to 64, not 96)
    x_src, x_style, out_size = prepare_images(cfg, flat((0, 0, 0), 90, 64), flat((0, 0, 0)), torch.device("cpu"), 64)
    assert x_src.shape == x_style.shape == (1, 3, 64, 64) and out_size == (64, 64)


# --- models against settings ------------------------------------------------------------------------

def test_models_must_be_loaded_for_their_weights():
    err = config_error(check_models, models(), settings("text", lambda_clip=2000.0))
    assert str(err) == "lambda_clip=2000.0 is not allowed: 0 unless the CLIP models are loaded (load_clip=True)"
    assert config_error(check_models, models(), settings("text", lambda_clip=0.5)).value == 0.5  # any positive weight
    assert config_error(check_models, models(), settings("image", lambda_id=0.5)).value == 0.5
    check_models(models(), settings("text", lambda_clip=0.0))  # no CLIP weight, no CLIP needed
    check_models(models(), settings("image", lambda_clip=5.0))  # image mode never runs CLIP
    check_models(models(clip=SpyClip()), settings("text", lambda_clip=2000.0))
    err = config_error(check_models, models(), settings("image", lambda_id=10.0))
    assert str(err) == ("lambda_id=10.0 is not allowed: 0 unless the ArcFace model is loaded "
                        "(load_arcface=True, faces generator)")
    check_models(models(arcface=SpyArcFace()), settings("image", lambda_id=10.0))
    check_models(models(), settings("image", lambda_id=0.0))


def test_models_fit_the_generators_sizes_and_classes():
    big = models(generator="imagenet512")
    err = config_error(check_models, big, settings("text", size=96, max_long_side=128))
    assert (err.field, err.value) == ("size", 96)
    assert err.allowed == "a multiple of 64 with generator='imagenet512' (its UNet halves the image 6 times)"
    err = config_error(check_models, big, settings("text", size=128, max_long_side=160))
    assert (err.field, err.value) == ("max_long_side", 160)
    check_models(big, settings("text", size=128, max_long_side=192))
    check_models(models(), settings("text", size=96, max_long_side=160))  # 32 suffices at 256
    err = config_error(check_models, models(), settings("text", class_label=5))
    assert (err.field, err.value) == ("class_label", 5)
    assert err.allowed == ("'random' (its default) with generator='imagenet', which has no classes: only "
                           "generator='imagenet512' reads it")
    classy = dataclasses.replace(big, unet=ClassEps())
    check_models(classy, settings("text", class_label=5))
    err = config_error(check_models, classy, settings("text", class_label=" Auto "))
    assert str(err) == ("class_label='auto' is not allowed: 'random' or a class id unless the CLIP models are "
                        "loaded (load_clip=True)")
    check_models(dataclasses.replace(classy, clip=SpyClip()), settings("text", class_label="auto"))


# --- seeds ------------------------------------------------------------------------------------------

def test_default_seeds_count_up_from_the_seed():
    assert _check_seeds(settings(seed=7, samples=3), None) == [7, 8, 9]
    assert _check_seeds(settings(seed=0, samples=1), None) == [0]


def test_explicit_seeds_of_any_integer_kind():
    cfg = settings(seed=7, samples=3)
    got = _check_seeds(cfg, (np.int64(4), 2**63 - 1, 0))
    assert got == [4, 2**63 - 1, 0] and all(type(s) is int for s in got)
    assert _check_seeds(cfg, range(16)) == list(range(16))
    assert _check_seeds(cfg, (s for s in [5])) == [5]


@pytest.mark.parametrize("seeds, shown", [
    ([], []),
    (list(range(17)), list(range(17))),
    ([-1], [-1]),
    ([2**63], [2**63]),
    ((True,), (True,)),
    ([1.0], [1.0]),
    (["1"], ["1"]),
    (iter([3, -2]), [3, -2]),  # an iterator is shown as what was read of it
    ("12", "12"),
    (b"12", b"12"),
    (5, 5),
    (3.5, 3.5),
])
def test_bad_seeds_in_words(seeds, shown):
    err = config_error(_check_seeds, settings(), seeds)
    assert (err.field, err.value, err.allowed) == ("seeds", shown, SEEDS_ALLOWED)


# --- what translate hands on --------------------------------------------------------------------------

class Stop(Exception):
    pass


@pytest.fixture
def seen(monkeypatch):
    """Records build_guide's and sample_guided's arguments; the sampler stops the call."""
    record: dict = {}
    real_build = pipeline.build_guide

    def build_guide(config, schedule, src, **kwargs):
        record["guide_args"] = dict(config=config, schedule=schedule, src=src, **kwargs)
        record["built"] = real_build(config, schedule, src, **kwargs)
        return record["built"]

    def sample_guided(unet, schedule, guide, x_src, generators, **kwargs):
        record.update(unet=unet, schedule=schedule, guide=guide, x_src=x_src,
                      seeds=[g.initial_seed() for g in generators], **kwargs)
        raise Stop

    def step_function(capture, unet, schedule, guide, batch):
        record["step_args"] = dict(capture=capture, unet=unet, schedule=schedule, guide=guide, batch=batch)
        record["made_step"] = object()
        return record["made_step"]

    monkeypatch.setattr(pipeline, "build_guide", build_guide)
    monkeypatch.setattr(pipeline, "sample_guided", sample_guided)
    monkeypatch.setattr(pipeline, "step_function", step_function)
    return record


def test_translate_hands_the_sampler_the_settings(seen):
    m = models()
    cfg = settings("image", seed=40, samples=2, range_restart=True, restart_threshold=0.25)

    def callback(event):
        pass

    with pytest.raises(Stop):
        translate(m, picture(90, 64), style=picture(seed=3), config=cfg, callback=callback, deadline=123.5)
    assert seen["unet"] is m.unet and seen["guide"] is seen["built"]
    assert seen["t_start"] == 4 and seen["repeats"] == 2  # 10 - 5 - 1
    assert seen["restart_threshold"] == 0.25
    assert seen["callback"] is callback and seen["disable"] is True and seen["deadline"] == 123.5
    assert seen["seeds"] == [40, 41]
    # the respaced schedule of 10 kept steps out of 1000 (SPEC §2): every 111th step, rounded
    kept = [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert seen["schedule"].timestep_map.tolist() == kept and seen["schedule"] is seen["built"].schedule
    assert seen["x_src"].shape == (1, 3, 64, 96)
    args = seen["guide_args"]
    assert args["config"] is cfg and args["schedule"].timestep_map.tolist() == kept and args["src"] is seen["x_src"]
    assert args["vit"] is m.vit and args["clip"] is None and args["arcface"] is None
    assert args["style"].shape == (1, 3, 64, 96) and args["text"] is None and args["source_text"] is None
    # the step the models' config asks for, built for the whole batch, is the one the sampler runs
    assert seen["step_args"] == dict(capture="eager", unet=m.unet, schedule=seen["schedule"], guide=seen["built"], batch=2)
    assert seen["step"] is seen["made_step"]


def test_translate_many_hands_agg_the_512_sizes_and_the_held_class(monkeypatch):
    record: dict = {}

    def sample_agg(unet, schedule, guide, x_start, generators, **kwargs):
        record.update(x_start=x_start, **kwargs)
        raise Stop

    monkeypatch.setattr(pipeline, "sample_agg", sample_agg)
    m = dataclasses.replace(models(generator="imagenet512", clip=SpyClip()), unet=ClassEps())
    weights = {k: v for k, v in zero_weights().items() if k not in DIFFUSEIT_ONLY}
    cfg = preset("text", method="agg", steps=10, skip=5, t_edit=3, t_boost=4, size=64, max_long_side=128,
                 class_label=5, **{**weights, "lambda_clip": 1.0})
    with pytest.raises(Stop):
        pipeline.translate_many(m, [Job(picture(110, 80), "Black Leopard", "Cat")], config=cfg)
    assert record["x_start"].shape == (1, 3, 64, 64)  # 110×80 at multiples of 64 (of 32: 96×64)
    assert record["disable"] is True  # no progress bar unless asked
    assert m.unet.ys == [[5]] * 5  # the inversion's t_start + 1 = 5 passes, each with the held class
    # on another device than the CPU (meta: no GPU needed) the held class reaches the inversion there
    meta = dataclasses.replace(models(generator="imagenet512", device="meta"), unet=ClassEps())
    image = preset("image", method="agg", steps=10, skip=5, t_edit=3, t_boost=4, size=64, max_long_side=128,
                   class_label=5, **{**weights, "lambda_l2": 1.0})
    with pytest.raises(Stop):
        pipeline.translate_many(meta, [Job(picture(110, 80), style=picture(seed=3))], config=image)
    assert record["x_start"].device.type == "meta" and len(meta.unet.ys) == 5


@pytest.mark.parametrize("capture", ["compile", "cuda-graph"])
def test_translate_builds_the_step_capture_the_models_ask_for(seen, capture):
    with pytest.raises(Stop):
        translate(models(step_capture=capture), picture(), style=picture(seed=3), config=settings("image", samples=3))
    assert seen["step_args"]["capture"] == capture and seen["step_args"]["batch"] == 3
    assert seen["step"] is seen["made_step"]


def test_translate_puts_the_images_on_the_models_device(seen):
    with pytest.raises(Stop):
        translate(models(device="meta"), picture(), style=picture(seed=3), config=settings("image"))
    assert seen["x_src"].device.type == "meta" and seen["guide_args"]["style"].device.type == "meta"


def test_translate_without_restarts_progress_and_deadline(seen):
    cfg = settings("image", range_restart=False)
    with pytest.raises(Stop):
        translate(models(), picture(), style=picture(seed=3), config=cfg, seeds=[9, 2**63 - 1], progress=True)
    assert seen["restart_threshold"] is None and seen["disable"] is False and seen["deadline"] is None
    assert seen["callback"] is None and seen["seeds"] == [9, 2**63 - 1]


def test_translate_hands_the_guide_the_prompts_and_models(seen):
    clip, arcface = SpyClip(), SpyArcFace()
    m = models(clip=clip, arcface=arcface)
    with pytest.raises(Stop):
        translate(m, picture(), text=" Snow  Leopard", source_text="Cat ", config=settings("text", lambda_clip=1.0),
                  deadline=7)
    args = seen["guide_args"]
    assert (args["text"], args["source_text"], args["style"]) == ("Snow Leopard", "Cat", None)
    assert args["clip"] is clip and args["arcface"] is arcface and seen["deadline"] == 7


@pytest.mark.parametrize("generator, style, want", [
    ("imagenet", False, preset("text")),
    ("imagenet", True, preset("image")),
    ("ffhq", False, preset("text", generator="ffhq")),
    ("ffhq", True, preset("image", generator="ffhq")),
])
def test_the_default_config_follows_the_inputs_and_the_generator(seen, generator, style, want):
    m = models(clip=SpyClip(), arcface=SpyArcFace(), generator=generator)
    kwargs = dict(style=picture(seed=3)) if style else dict(text="Tiger", source_text="Cat")
    with pytest.raises(Stop):
        translate(m, picture(), **kwargs)
    assert seen["guide_args"]["config"] == want


@pytest.mark.parametrize("deadline", [True, "soon", [1.0]])
def test_deadline_must_be_a_clock_value(deadline):
    err = config_error(translate, models(), picture(), style=picture(seed=3), config=settings(), deadline=deadline)
    assert (err.field, err.value, err.allowed) == ("deadline", deadline, "None or a time.monotonic() value")


def test_models_and_callback_errors_in_words():
    err = config_error(translate, "models", picture(), style=picture(seed=3), config=settings())
    assert (err.field, err.value) == ("models", "models")
    assert err.allowed == "the Models that dsct.load_models(ModelConfig(...)) returns"
    err = config_error(translate, models(), picture(), style=picture(seed=3), config=settings(), callback=3)
    assert (err.field, err.value, err.allowed) == ("callback", 3, "a function called with each StepEvent, or None")


# --- what translate makes of the sampler's output ------------------------------------------------------

def _fake_run(monkeypatch, out: SampleOutput, scores: Scores) -> dict:
    record: dict = {}

    def sample_guided(*args, **kwargs):
        return out

    def score_samples(x, fixed, **kwargs):
        record.update(x=x.clone(), fixed=fixed, **kwargs)
        return scores

    monkeypatch.setattr(pipeline, "sample_guided", sample_guided)
    monkeypatch.setattr(pipeline, "score_samples", score_samples)
    return record


def test_results_are_ranked_and_carry_their_own_seed_terms_restarts_and_note(monkeypatch):
    # three samples asked for; the sampler finished samples 2 and 0 (in that order), sample 1 ran out of time
    x0 = torch.stack([torch.full((3, 64, 96), 0.2), torch.full((3, 64, 96), 1.5)])
    x0[0, 1] = -1.5  # the green channel of sample 2 below the range
    out = SampleOutput(x0=x0, terms={"range": torch.tensor([0.5, 0.25]), "l2": torch.tensor([1.0, 2.0])},
                       restarts=(1, 2, 3), finished=(2, 0), notes={2: "late"})
    record = _fake_run(monkeypatch, out, Scores(content=torch.tensor([0.3, 0.1]), target=torch.tensor([0.0, 0.5])))
    results = translate(models(tiny=False), picture(90, 64), style=picture(seed=3),
                        config=settings("image", samples=3, seed=11, colour_match=False), seeds=[11, 22, 33])
    # x0 row 1 (sample 0) has the lower content and the higher target score: it ranks first
    assert [(r.seed, r.rank, r.restarts, r.note) for r in results] == [(11, 1, 1, ""), (33, 2, 3, "late")]
    assert [(r.content_score, r.target_score) for r in results] == [pytest.approx((0.1, 0.5)), pytest.approx((0.3, 0.0))]
    assert results[0].terms == {"range": 0.25, "l2": 2.0} and results[1].terms == {"range": 0.5, "l2": 1.0}
    assert all(type(v) is float for r in results for v in (r.content_score, r.target_score, *r.terms.values()))
    assert not results[0].tiny
    first, second = (np.asarray(r.image, np.int64) for r in results)
    assert results[0].image.size == (90, 64)  # the source's aspect, not the working 96×64
    assert (first == 255).all()  # 1.5 clamped to 1 → 255
    assert (second[..., [0, 2]] == 153).all() and (second[..., 1] == 0).all()  # 0.2 → 153; -1.5 clamped to -1 → 0
    assert record["x"].max() == 1.0 and record["x"].min() == -1.0  # scores see the clamped images
    assert record["x"][0, 0].min() == pytest.approx(0.2)
    assert record["fixed"].src.shape == (1, 3, 64, 96) and record["text"] is None


def test_scores_see_the_text_and_the_models(monkeypatch):
    x0 = torch.zeros(1, 3, 64, 64)
    out = SampleOutput(x0=x0, terms={}, restarts=(0,), finished=(0,))
    record = _fake_run(monkeypatch, out, Scores(content=torch.tensor([0.0]), target=torch.tensor([0.0])))
    clip = SpyClip()
    m = models(clip=clip)
    (result,) = translate(m, picture(64, 64), text="Big  cat", source_text="Cat", config=settings("text", lambda_clip=1.0))
    assert record["text"] == "Big cat" and record["clip"] is clip and record["vit"] is m.vit
    assert result.tiny and result.terms == {} and result.restarts == 0 and result.note == "" and result.seed == 0


@pytest.mark.parametrize("mode, colour_match, matched", [("image", True, True), ("image", False, False),
                                                         ("text", True, False)])
def test_colour_matching_only_in_image_mode_when_on(monkeypatch, mode, colour_match, matched):
    x0 = torch.full((1, 3, 64, 64), -0.2)  # flat grey: MKL moves a flat image to the style's mean colour
    out = SampleOutput(x0=x0, terms={}, restarts=(0,), finished=(0,))
    _fake_run(monkeypatch, out, Scores(content=torch.tensor([0.0]), target=torch.tensor([0.0])))
    kwargs = dict(style=flat((40, 170, 130))) if mode == "image" else dict(text="tiger", source_text="cat")
    (result,) = translate(models(), picture(64, 64), config=settings(mode, colour_match=colour_match), **kwargs)
    pixels = np.asarray(result.image, np.int64).reshape(-1, 3)
    want = (40, 170, 130) if matched else (102, 102, 102)  # -0.2 → 0.8·127.5 = 102
    assert np.abs(pixels - np.array(want)).max() <= 1


def test_colour_matched_images_are_clamped_before_scoring(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 64, 64, generator=g) * 0.1  # low contrast: matched to a high-contrast style it overshoots
    out = SampleOutput(x0=x0, terms={}, restarts=(0,), finished=(0,))
    record = _fake_run(monkeypatch, out, Scores(content=torch.tensor([0.0]), target=torch.tensor([0.0])))
    style = Image.fromarray(np.where(np.random.default_rng(0).random((64, 64, 1)) < 0.5, 0, 255).repeat(3, 2).astype(np.uint8))
    translate(models(), picture(64, 64), style=style, config=settings("image", colour_match=True))
    assert record["x"].abs().max() == 1.0
