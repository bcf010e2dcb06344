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
from dsct.images import working_size
from dsct.sampler import INVERSION_CLASS_SEED, draw_classes
from dsct.unet import build_unet
from dsct.vit import resize_for_vit

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
    with pytest.raises(ValueError):
        classes_mod.nearest_class(text, names[:1])


def test_auto_picks_the_class_whose_name_clip_finds_closest(monkeypatch):
    """A tiny CLIP whose text embeddings are made by hand: the text's is e_5, name 5's is e_5 + a little
    of e_0, every other name's e_0; auto must pick 5 and hold it, and report it with the results."""
    m = tiny_models("imagenet512")
    dims = m.clip.embed_dims
    texts_seen = []

    def made(self, texts, template, chunk=256):
        texts_seen.append((len(texts), template))
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
    assert pipeline.held_classes(m, _config(class_label="auto"), ["Black Leopard", "Cat"]) == [5, 0]
    out, calls = _run(m, _config(class_label="auto"), [0], **TEXT)
    assert [r.class_label for r in out] == [5] and all(c == [5] for c in calls)
    # the 1000 names once per CLIP ensemble (cached), the request's text each time; one template
    names_passes = [n for n, _ in texts_seen if n == 1000]
    assert len(names_passes) == 1 and {t for _, t in texts_seen} == {classes_mod.NAME_TEMPLATE}


def test_class_names_table():
    names = classes_mod.CLASS_NAMES
    assert len(names) == 1000 and names[0] == "tench" and names[291] == "lion" and names[999] == "toilet paper"
    assert classes_mod.class_name(288) == "288 leopard"


# --------------------------------------------------------------------------- settings, sizes, refusals


def test_class_label_validation():
    assert TranslationConfig(class_label="12").class_label == 12
    assert TranslationConfig(class_label=" 999 ").class_label == 999
    assert TranslationConfig(class_label=0).class_label == 0
    for bad in (-1, 1000, True, 2.0, "tiger", "", None):
        with pytest.raises(ConfigError, match="class_label"):
            TranslationConfig(class_label=bad)
    with pytest.raises(ConfigError, match="auto.*target text|target text"):
        preset("image", class_label="auto")
    assert preset("image", class_label=5).class_label == 5


def test_presets_at_the_generators_sizes():
    for method in ("diffuseit", "agg"):
        for mode in ("text", "image"):
            assert (preset(mode, method=method, generator="imagenet512").size,
                    preset(mode, method=method, generator="imagenet512").max_long_side) == (512, 896)
            assert preset(mode, method=method).size == 256 and preset(mode, method=method).max_long_side == 448
    assert GENERATOR_SIZES["imagenet512"] == (512, 896)


def test_size_multiple_table_matches_the_networks():
    from dsct.hub import UNET_WEIGHTS, WEIGHTS
    for generator, multiple in SIZE_MULTIPLE.items():
        arch = WEIGHTS[UNET_WEIGHTS[generator]].arch
        assert build_unet(arch, device="meta").size_multiple == multiple
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
