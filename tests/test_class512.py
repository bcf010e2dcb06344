"""The 512 generator in the pipeline (SPEC §6): the class rule, "auto", the size rules and refusals, the
antialiased ViT resize. Tiny class-conditional random models (``tiny512``) of the real classes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dsct
from dsct import classes as classes_mod
from dsct import pipeline
from dsct.clip import ClipEnsemble
from dsct.config import GENERATOR_SIZES, SIZE_MULTIPLE, TranslationConfig, preset
from dsct.errors import ConfigError
from dsct.images import output_size, working_size
from dsct.diffusion import make_schedule
from dsct.guidance import build_guide
from dsct.sampler import INVERSION_CLASS_SEED, ddim_invert, draw_classes, sample_agg, sample_guided
from dsct.unet import build_unet
from dsct.vit import resize_for_vit

from closed_form import ClassEps, LinearEps, SpyViT
from helpers import picture, tiny_models

S512 = dict(size=64, max_long_side=128, steps=8, skip=4)
DIFFUSEIT = dict(S512, resample_repeats=2, divergence_until=3, range_restart=False)
AGG = dict(S512, method="agg", t_edit=3, t_boost=3)


def _config(mode: str = "text", **kw) -> TranslationConfig:
    method = kw.get("method", "diffuseit")
    return preset(mode, generator="imagenet512", **{**(AGG if method == "agg" else DIFFUSEIT), **kw})


class _Recorder:
    """The class ids of every UNet evaluation, one list per call, by sample row."""

    def __init__(self, unet: torch.nn.Module):
        self.calls: list[list[int]] = []
        self._handle = unet.register_forward_pre_hook(lambda _, args: self.calls.append(args[2].tolist()))

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def _run(models, config, seeds, **kw):
    with _Recorder(models.unet) as rec:
        out = dsct.translate(models, picture(), config=config, seeds=seeds, **kw)
    return out, rec.calls


TEXT = dict(text="Black Leopard", source_text="Cat")


# --------------------------------------------------------------------------- the class rule


def test_draw_classes_rule():
    unet = build_unet("tiny512")
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 9)]  # noqa: E731
    # random: each sample's own generator, one uniform id in [0, 1000)
    want = [int(torch.randint(1000, (1,), generator=torch.Generator().manual_seed(s))) for s in (5, 9)]
    assert draw_classes(unet, gens(), None, torch.device("cpu")).tolist() == want
    # a held class: that id for every row (one shared row, or one per row)
    assert draw_classes(unet, gens(), torch.tensor([7]), torch.device("cpu")).tolist() == [7, 7]
    assert draw_classes(unet, gens(), torch.tensor([7, 8]), torch.device("cpu")).tolist() == [7, 8]
    # a generator without classes: nothing, and nothing drawn from the generators
    g = gens()
    assert draw_classes(build_unet("tiny"), g, None, torch.device("cpu")) is None
    assert [int(torch.randint(1000, (1,), generator=x)) for x in g] == want
    # any network without a num_classes attribute (a user's own unconditional model) is one without classes
    assert draw_classes(torch.nn.Identity(), gens(), None, torch.device("cpu")) is None


@pytest.mark.parametrize("method", ["diffuseit", "agg"])
def test_random_class_new_per_evaluation_per_sample_and_batch_equivalent(method):
    m = tiny_models("imagenet512")
    cfg = _config(method=method)
    both, calls = _run(m, cfg, [3, 4], **TEXT)
    again, calls_again = _run(m, cfg, [3, 4], **TEXT)
    alone, calls_alone = _run(m, cfg, [4], **TEXT)
    # DiffuseIT: t_start + repeats evaluations; AGG: the inversion's t_start + 1 (one row), then t_start + 1
    t_start = cfg.steps - cfg.skip - 1
    sampling = calls if method == "diffuseit" else calls[t_start + 1:]
    assert len(sampling) == (t_start + cfg.resample_repeats if method == "diffuseit" else t_start + 1)
    assert all(len(c) == 2 for c in sampling)
    # a new class at (nearly) every evaluation, different per sample, all in range
    for row in (0, 1):
        ids = [c[row] for c in sampling]
        assert len(set(ids)) >= len(ids) - 1 and all(0 <= k < 1000 for k in ids)
    assert [c[0] for c in sampling] != [c[1] for c in sampling]
    # reproducible per seed; sample 4 draws the same classes alone as in the batch
    assert calls_again == calls
    alone_sampling = calls_alone if method == "diffuseit" else calls_alone[t_start + 1:]
    assert [c[0] for c in alone_sampling] == [c[1] for c in sampling]
    in_batch = next(r.image for r in both if r.seed == 4)
    assert np.abs(np.asarray(alone[0].image, dtype=int) - np.asarray(in_batch, dtype=int)).max() <= 2
    assert all(r.class_label is None for r in both + alone)


def test_agg_inversion_classes_fixed_per_source():
    """"random": the inversion draws from its own generator seeded with INVERSION_CLASS_SEED, one class per
    pass, whatever the samples' seeds (so all samples share one inversion)."""
    m = tiny_models("imagenet512")
    cfg = _config(method="agg")
    t_start = cfg.steps - cfg.skip - 1
    g = torch.Generator().manual_seed(INVERSION_CLASS_SEED)
    want = [[int(torch.randint(1000, (1,), generator=g))] for _ in range(t_start + 1)]
    for seeds in ([0], [11, 12]):
        _, calls = _run(m, cfg, seeds, **TEXT)
        assert calls[:t_start + 1] == want


@pytest.mark.parametrize("method", ["diffuseit", "agg"])
def test_class_id_held_everywhere(method):
    m = tiny_models("imagenet512")
    out, calls = _run(m, _config(method=method, class_label=207), [1, 2], **TEXT)
    assert calls and all(set(c) == {207} for c in calls)  # every evaluation, the inversion included
    assert [r.class_label for r in out] == [207, 207]
    # the class changes the picture
    other, _ = _run(m, _config(method=method, class_label=3), [1, 2], **TEXT)
    assert out[0].image.tobytes() != other[0].image.tobytes()


# --------------------------------------------------------------------------- the class rule, closed form
# A stand-in UNet with ImageNet's classes (ε = 0.5·x_t, ``closed_form.ClassEps``) records the ids of every
# evaluation; the expected ids are replayed by hand from each sample's seed in the documented draw order.


QUIET = dict(lambda_ssim=0.0, lambda_contra=0.0, lambda_div=0.0, lambda_cls=0.0, lambda_l2=0.0, lambda_clip=0.0,
             lambda_range=0.0, lambda_id=0.0)


def _spy_guide(config, class_id=None):
    sched = make_schedule(str(config.steps))
    src = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inversion = ddim_invert(LinearEps(), sched, src, config.t_start) if config.method == "agg" else None
    return build_guide(config, sched, src, vit=SpyViT(), class_id=class_id, inversion=inversion), sched, src


def _replayed(seed: int, evaluations: int, between) -> list[int]:
    """The class ids a sample's generator gives when each evaluation draws its class, then ``between(g)``."""
    g, ids = torch.Generator().manual_seed(seed), []
    for _ in range(evaluations):
        ids.append(int(torch.randint(1000, (1,), generator=g)))
        between(g)
    return ids


def test_agg_loop_draws_a_class_per_step_from_each_sample_or_holds_one():
    cfg = TranslationConfig(mode="image", method="agg", steps=10, skip=5, t_edit=3, t_boost=4, eta_edit=0.0, eta=0.0,
                            eta_boost=0.0, **{k: v for k, v in QUIET.items() if k not in ("lambda_ssim", "lambda_contra",
                                                                                           "lambda_div")}, lambda_gt=0.0)
    guide, sched, _ = _spy_guide(cfg)
    unet = ClassEps()
    sample_agg(unet, sched, guide, guide.fixed.inv_start, [torch.Generator().manual_seed(s) for s in (4, 9)])
    # η 0 and no CLIP: nothing but the class is drawn, one per step (t_start + 1 = 5)
    want = [_replayed(s, 5, lambda g: None) for s in (4, 9)]
    assert unet.ys == [list(pair) for pair in zip(*want)]
    held, _, _ = _spy_guide(cfg, class_id=7)
    unet, events = ClassEps(), []
    sample_agg(unet, sched, held, held.fixed.inv_start, [torch.Generator().manual_seed(s) for s in (4, 9)],
               callback=events.append)
    assert unet.ys == [[7, 7]] * 5
    assert [(e.step, e.total, e.i, e.sample_ids, e.restarts) for e in events] == [
        (k + 1, 5, 4 - k, (0, 1), (0, 0)) for k in range(5)]  # AGG never restarts: every event says so
    with pytest.raises(ValueError, match=r"x_start must have 1 row or one per sample \(2\), got 4"):
        sample_agg(unet, sched, held, held.fixed.inv_start.expand(4, -1, -1, -1),
                   [torch.Generator().manual_seed(s) for s in (4, 9)])


def test_classes_are_drawn_on_the_device_of_the_run():
    meta = torch.device("meta")  # another device than the CPU, without a GPU
    assert draw_classes(ClassEps(), [torch.Generator().manual_seed(1)], None, meta).device == meta
    src, gens = torch.zeros(1, 3, 16, 16, device=meta), lambda: [torch.Generator().manual_seed(s) for s in (2, 5)]  # noqa: E731
    cfg = TranslationConfig(mode="image", steps=6, skip=2, resample_repeats=2, range_restart=False, **QUIET)
    sched = make_schedule(str(cfg.steps))
    guide = build_guide(cfg, sched, src, vit=SpyViT())
    out = sample_guided(ClassEps(), sched, guide, src, gens(), t_start=cfg.t_start, repeats=2)
    assert out.x0.device == meta
    agg = TranslationConfig(mode="image", method="agg", steps=10, skip=5, t_edit=3, t_boost=4,
                            **{k: v for k, v in QUIET.items() if k not in ("lambda_ssim", "lambda_contra", "lambda_div")})
    sched = make_schedule(str(agg.steps))
    guide = build_guide(agg, sched, src, vit=SpyViT(), inversion=ddim_invert(ClassEps(), sched, src, agg.t_start))
    assert sample_agg(ClassEps(), sched, guide, guide.fixed.inv_start, gens()).x0.device == meta


def test_diffuseit_loop_draws_a_class_per_evaluation_before_its_noise():
    cfg = TranslationConfig(mode="image", steps=6, skip=2, resample_repeats=2, range_restart=False, **QUIET)
    guide, sched, src = _spy_guide(cfg)
    unet = ClassEps()
    sample_guided(unet, sched, guide, src, [torch.Generator().manual_seed(s) for s in (2, 5)], t_start=cfg.t_start,
                  repeats=2)
    shape = (3, 16, 16)

    def replay(seed):  # q_sample's noise first; then per evaluation: class, step noise, and after the first
        g = torch.Generator().manual_seed(seed)  # resampling pass the renoising draw
        torch.randn(shape, generator=g)
        ids = []
        for k in range(cfg.t_start + 2):  # t_start + repeats evaluations
            ids.append(int(torch.randint(1000, (1,), generator=g)))
            torch.randn(shape, generator=g)
            if k == 0:
                torch.randn(shape, generator=g)
        return ids

    assert unet.ys == [list(pair) for pair in zip(replay(2), replay(5))]
    held, _, _ = _spy_guide(cfg, class_id=11)
    unet = ClassEps()
    sample_guided(unet, sched, held, src, [torch.Generator().manual_seed(2)], t_start=cfg.t_start, repeats=2)
    assert unet.ys == [[11]] * (cfg.t_start + 2)


def test_inversion_classes_by_hand():
    sched = make_schedule("10")
    x0 = torch.zeros(1, 3, 16, 16)
    unet = ClassEps()
    ddim_invert(unet, sched, x0, 4)
    assert unet.ys == [[k] for k in _replayed(INVERSION_CLASS_SEED, 5, lambda g: None)]
    unet = ClassEps()
    ddim_invert(unet, sched, x0, 4, torch.tensor([9]))
    assert unet.ys == [[9]] * 5


def test_held_classes_rule(made_embeddings):
    m = tiny_models("imagenet512")
    assert pipeline.held_classes(m, _config(class_label="random"), ["Black Leopard"]) == [None]
    assert pipeline.held_classes(m, _config(class_label=42), ["Black Leopard", "Cat"]) == [42, 42]
    assert pipeline.held_classes(m, _config(class_label="auto"), ["Black Leopard", "Cat"]) == [5, 0]
    assert pipeline.held_classes(tiny_models(), preset("text", class_label="random"), ["Cat"]) == [None]


# --------------------------------------------------------------------------- "auto"


def test_nearest_class_by_hand():
    # two models; class 1 is closest for model A (cos 1), class 2 for model B (cos 0.8 vs 0.6 of class 1)
    text = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0, 4.0])]
    names = [torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]]),
             torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])]
    # mean cosines: class 0 (0 + 0)/2 = 0, class 1 (1 + 0.6)/2 = 0.8, class 2 (0.7071 + 0.8)/2 = 0.754
    assert classes_mod.nearest_class(text, names) == 1
    names[1][2] = torch.tensor([0.0, 3.0, 4.0])  # class 2 now cos 1 for model B: (0.7071 + 1)/2 = 0.854
    assert classes_mod.nearest_class(text, names) == 2
    with pytest.raises(ValueError) as err:
        classes_mod.nearest_class(text, names[:1])
    assert str(err.value) == "nearest_class needs one text embedding and one name table per CLIP model"
    # each name row normalised on its own: [2, 2] (cos 0.990 with [0.6, 0.8]) beats [4, 2] (0.894) and
    # [0.1, 1] (0.856); normalised by column, or all at once, the long row [4, 2] would win
    table = torch.tensor([[2.0, 2.0], [0.1, 1.0], [4.0, 2.0]])
    assert classes_mod.nearest_class([torch.tensor([0.6, 0.8])], [table]) == 0


@pytest.fixture
def made_embeddings(monkeypatch):
    """A tiny CLIP whose text embeddings are made by hand: "Black Leopard" is e_5, class 5's name e_5 plus a
    little of e_0, every other text e_0 (so "Cat" is nearest to class 0). Records each call's (count, template)."""
    dims = tiny_models("imagenet512").clip.embed_dims
    seen = []

    def made(self, texts, template, chunk=256):
        seen.append((len(texts), template))
        out = []
        for d in dims:
            e = torch.zeros(len(texts), d)
            for k, t in enumerate(texts):
                if t == "Black Leopard":
                    e[k, 5] = 1.0
                elif t == classes_mod.CLASS_NAMES[5]:
                    e[k, 5], e[k, 0] = 1.0, 0.2
                else:
                    e[k, 0] = 1.0
            out.append(e)
        return out

    monkeypatch.setattr(ClipEnsemble, "plain_text_embeddings", made)
    monkeypatch.setattr(pipeline, "_NAME_TABLES", type(pipeline._NAME_TABLES)())
    return seen


def test_auto_picks_the_class_whose_name_clip_finds_closest(made_embeddings):
    """auto must pick 5 for "Black Leopard", hold it, and report it with the results."""
    m = tiny_models("imagenet512")
    assert pipeline.held_classes(m, _config(class_label="auto"), ["Black Leopard", "Cat"]) == [5, 0]
    out, calls = _run(m, _config(class_label="auto"), [0], **TEXT)
    assert [r.class_label for r in out] == [5] and all(c == [5] for c in calls)
    # the 1000 names once per CLIP ensemble (cached), the requests' texts each time; one template
    names_passes = [n for n, _ in made_embeddings if n == 1000]
    assert len(names_passes) == 1 and {t for _, t in made_embeddings} == {classes_mod.NAME_TEMPLATE}


@pytest.mark.parametrize("method", ["diffuseit", "agg"])
def test_auto_in_a_batch_of_two_images_holds_each_ones_class(made_embeddings, method):
    """Two images with their own texts in one batch: each row holds its own image's class at every
    evaluation, as each image alone does. (Pictures are not compared: with random tiny weights AGG's
    guided steps amplify batch-size rounding differences of the 512 UNet beyond any useful tolerance.)"""
    m = tiny_models("imagenet512")
    cfg = _config(method=method, class_label="auto")
    jobs = [dsct.Job(picture(), "Black Leopard", "Cat"), dsct.Job(picture(seed=2), "Cat", "Dog")]
    with _Recorder(m.unet) as rec:
        both = dsct.translate_many(m, jobs, config=cfg, seeds=[3])
    assert rec.calls[-1] == [5, 0] and all(c == [5, 0] for c in rec.calls if len(c) == 2)
    assert [[r.class_label for r in rs] for rs in both] == [[5], [0]]
    for job, held, together in zip(jobs, (5, 0), both):
        with _Recorder(m.unet) as rec:
            [alone] = dsct.translate_many(m, [job], config=cfg, seeds=[3])
        assert rec.calls and all(c == [held] for c in rec.calls) and alone[0].class_label == held


def test_class_names_table():
    names = classes_mod.CLASS_NAMES
    assert len(names) == 1000 and names[0] == "tench" and names[291] == "lion" and names[999] == "toilet paper"
    assert classes_mod.class_name(288) == "288 leopard"


# --------------------------------------------------------------------------- settings, sizes, refusals


def test_class_label_validation():
    assert TranslationConfig(class_label="12").class_label == 12
    assert TranslationConfig(class_label=" 999 ").class_label == 999
    assert TranslationConfig(class_label=0).class_label == 0
    assert TranslationConfig(class_label=np.int64(288)).class_label == 288
    assert type(TranslationConfig(class_label=np.int64(288)).class_label) is int
    assert TranslationConfig(class_label=" Auto ").class_label == "auto"
    assert TranslationConfig(class_label="RANDOM").class_label == "random"
    for bad in (-1, 1000, True, 2.0, "tiger", "", None, "٣", "1e2"):
        with pytest.raises(ConfigError, match="class_label"):
            TranslationConfig(class_label=bad)
    with pytest.raises(ConfigError, match="auto.*target text|target text"):
        preset("image", class_label="auto")
    assert preset("image", class_label=5).class_label == 5


def test_class_label_refusals_in_words():
    with pytest.raises(ConfigError) as err:
        TranslationConfig(class_label=" Tiger ")
    assert (err.value.field, err.value.value) == ("class_label", " Tiger ")  # the value as it was written
    assert err.value.allowed == "'random', 'auto' or a class id in [0, 999]"
    with pytest.raises(ConfigError) as err:
        preset("image", class_label=" AUTO ")
    assert (err.value.field, err.value.value) == ("class_label", "auto")
    assert err.value.allowed == "'random' or a class id in image mode: 'auto' picks the class from the target text"


def test_presets_at_the_generators_sizes():
    for method in ("diffuseit", "agg"):
        for mode in ("text", "image"):
            assert (preset(mode, method=method, generator="imagenet512").size,
                    preset(mode, method=method, generator="imagenet512").max_long_side) == (512, 896)
            assert preset(mode, method=method).size == 256 and preset(mode, method=method).max_long_side == 448
    assert GENERATOR_SIZES["imagenet512"] == (512, 896)


def test_size_multiple_table_matches_the_networks():
    """The table the sizes follow is each real network's own multiple; the tiny stand-ins work at it too
    (the tiny 256 UNet halves only 3 times, but tiny runs follow the real model's rule of 32)."""
    from dsct.hub import TINY_UNETS, UNET_WEIGHTS, WEIGHTS
    for generator, multiple in SIZE_MULTIPLE.items():
        arch = WEIGHTS[UNET_WEIGHTS[generator]].arch
        assert build_unet(arch, device="meta").size_multiple == multiple
        assert multiple % build_unet(TINY_UNETS[generator], device="meta").size_multiple == 0
    assert SIZE_MULTIPLE == {"imagenet": 32, "ffhq": 32, "imagenet512": 64}


def test_working_size_at_64():
    # 1000×800 at short side 512: long 640 (1000·512/800 = 640, a multiple of 64)
    assert working_size(1000, 800, size=512, max_long_side=896, resize_mode="resize", multiple=64) == (640, 512)
    # 700×512: 700 → round(700/64) = 11 → 704; portrait the other way round
    assert working_size(512, 700, size=512, max_long_side=896, resize_mode="resize", multiple=64) == (512, 704)
    # a panorama capped at 896
    assert working_size(3000, 1000, size=512, max_long_side=896, resize_mode="resize", multiple=64) == (896, 512)
    # 110×80 at 64: the long side 88 rounds to 64 (1.375 × 64), not to 96 (2.75 × 32: a multiple of 32 only)
    assert working_size(110, 80, size=64, max_long_side=128, resize_mode="resize", multiple=64) == (64, 64)
    assert working_size(110, 80, size=64, max_long_side=128, resize_mode="resize", multiple=32) == (96, 64)
    # returned at the source's aspect within the working size: 64×64 caps 110×80 at 64×64; 96×64 gives 88×64
    assert output_size(110, 80, size=64, max_long_side=128, resize_mode="resize", multiple=64) == (64, 64)
    assert output_size(110, 80, size=64, max_long_side=128, resize_mode="resize", multiple=32) == (88, 64)


def test_refusals_name_the_setting_and_the_multiple():
    m512, m256 = tiny_models("imagenet512"), tiny_models()
    with pytest.raises(ConfigError, match=r"size.*multiple of 64"):
        dsct.translate(m512, picture(), config=_config(size=96, max_long_side=128), **TEXT)
    with pytest.raises(ConfigError, match=r"max_long_side.*multiple of 64"):
        dsct.translate(m512, picture(), config=_config(max_long_side=160), **TEXT)
    for label in (3, "auto"):
        with pytest.raises(ConfigError, match=r"class_label.*imagenet512"):
            dsct.translate(m256, picture(), config=preset("text", size=64, max_long_side=64, steps=4, skip=2,
                                                          class_label=label), **TEXT)
    no_clip = dataclasses.replace(m512, clip=None)
    with pytest.raises(ConfigError, match=r"class_label.*CLIP"):
        dsct.translate(no_clip, picture(), config=_config(class_label="auto", lambda_clip=0.0, lambda_ssim=1.0), **TEXT)


def test_the_unet_refuses_a_missing_class():
    with pytest.raises(ConfigError, match="class-conditional"):
        build_unet("tiny512")(torch.zeros(1, 3, 64, 64), torch.zeros(1))


# --------------------------------------------------------------------------- the ViT resize at 512


def test_vit_resize_antialiased_beyond_2x_only():
    # 256 → 224 (1.14×): plain bilinear, as the reference
    x = torch.rand(1, 3, 256, 256)
    assert torch.equal(resize_for_vit(x, 8), F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False))
    # 512 → 224 (2.29×): every pixel gets a gradient (plain bilinear leaves 23 % with none)
    x = torch.rand(1, 3, 512, 512, requires_grad=True)
    resize_for_vit(x, 8).sum().backward()
    assert (x.grad != 0).all()
    plain = torch.rand(1, 3, 512, 512, requires_grad=True)
    F.interpolate(plain, size=(224, 224), mode="bilinear", align_corners=False).sum().backward()
    assert 0.2 < (plain.grad == 0).float().mean() < 0.26
    # exactly 2× (448 → 224) still plain: bilinear then reads every pixel
    x = torch.rand(1, 3, 448, 448)
    assert torch.equal(resize_for_vit(x, 8), F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False))


# --------------------------------------------------------------------------- the CLI


CLI_512 = ["--tiny", "--quiet", "--generator", "imagenet512", "--size", "64", "--max-long-side", "128", "--steps", "6",
           "--skip", "3", "--resample-repeats", "1", "--no-range-restart"]


def test_cli_translate_and_batch_at_512(tmp_path, capsys):
    from dsct.cli import main
    import json

    inputs = tmp_path / "in"
    inputs.mkdir()
    picture(110, 80).save(inputs / "a.png")
    picture(80, 110, seed=3).save(inputs / "b.png")
    assert main(["translate", str(inputs / "a.png"), "--text", "Black Leopard", "--source-text", "Cat",
                 "-o", str(tmp_path / "a.png"), "--class-label", "288", *CLI_512]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["class_label"] == 288
    from PIL import Image
    assert Image.open(tmp_path / "a.png").size == (64, 64)  # 110×80 at 64: the long side rounds to 64, not 96
    assert main(["batch", str(inputs), "--style", str(inputs / "b.png"), "-o", str(tmp_path / "out"),
                 "--images-per-batch", "2", *CLI_512]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == ["a.png", "b.png"] and all(r["class_label"] is None for r in rows)
    # refusals: a class with a generator that has none; a size that is not a multiple of 64; auto in image mode
    bad = [(["--generator", "imagenet", "--class-label", "5"], "only generator='imagenet512' reads it"),
           (["--size", "96"], "a multiple of 64"),
           (["--class-label", "tiger"], "'random', 'auto' or a class id in [0, 999]")]
    for flags, words in bad:
        code = main(["translate", str(inputs / "a.png"), "--text", "Black Leopard", "--source-text", "Cat",
                     "-o", str(tmp_path / "bad.png"), *CLI_512, *flags])
        assert code == 2 and words in capsys.readouterr().err
