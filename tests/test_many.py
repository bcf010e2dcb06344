"""Several images of one working size in one batch (``translate_many``, ``stack_guides``): each
image's rows carry its own source, prompts and style, through every step and every restart."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dsct import ConfigError, ImageError, Job, translate, translate_many
from dsct.config import preset
from dsct.diffusion import make_schedule
from dsct.guidance import FixedFeatures, build_guide, stack_guides
from dsct.losses import clip_direction_loss
from dsct.sampler import sample_guided

from closed_form import LinearEps, SpyClip, SpyViT, zero_weights
from helpers import picture, small, tiny_models

SCHED = make_schedule("10")


def _src(seed: int, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


VIT = SpyViT()


def _text_guide(src, text, clip):
    cfg = preset("text", **{**zero_weights(), "lambda_clip": 1.0, "lambda_ssim": 1.0}, size=32, max_long_side=32,
                 steps=10, skip=5, divergence_until=5)
    return build_guide(cfg, SCHED, src, vit=VIT, clip=clip, text=text, source_text="cat")


class TextClip(SpyClip):
    """A direction per target text, so two images' directions differ."""

    def text_directions(self, target_text, source_text, src_x01, image=None):
        return [torch.tensor({"tiger": [1.0, 0.0, 0.0], "zebra": [0.0, 1.0, 0.0]}[target_text])]


def test_stacked_guide_rows_are_image_after_image_each_repeated_per_sample():
    clip = TextClip()
    a, b = _text_guide(_src(1), "tiger", clip), _text_guide(_src(2), "zebra", clip)
    both = stack_guides([a, b], 2)
    # rows 0, 1 are image a's two samples, rows 2, 3 image b's (SpyViT's [CLS] is the channel mean)
    for name in ("src", "src_keys", "src_self_sim", "src_cls"):
        want = torch.cat([getattr(a.fixed, name)] * 2 + [getattr(b.fixed, name)] * 2)
        assert torch.equal(getattr(both.fixed, name), want), name
    for m, d in enumerate(both.fixed.clip_directions):  # (D,) per image → one row per sample
        assert d.tolist() == [[1.0, 0.0, 0.0]] * 2 + [[0.0, 1.0, 0.0]] * 2
    assert both.fixed.trg is None and both.fixed.src_identity is None
    assert stack_guides([a], 3) is a  # one image: its features stay shared by every sample
    assert a.take([2, 0]) is a  # shared features: the same guide for any samples
    second = both.take([2])  # image b's first sample alone (a restart): its rows only
    assert torch.equal(second.fixed.src, b.fixed.src) and second.fixed.clip_directions[0].tolist() == [[0.0, 1.0, 0.0]]
    assert second.vit is both.vit and second.clip is both.clip and second.config is both.config


def test_stacking_refuses_other_sizes_and_other_settings():
    clip = SpyClip()
    a = _text_guide(_src(1), "tiger", clip)
    with pytest.raises(ValueError) as err:
        stack_guides([a, _text_guide(_src(2, 32, 48), "zebra", clip)], 1)
    assert str(err.value) == "images in one batch need one working size: (32, 48) is not (32, 32)"
    other = build_guide(preset("text", **{**zero_weights(), "lambda_ssim": 2.0}, size=32, max_long_side=32, steps=10, skip=5,
                               divergence_until=5), SCHED, _src(2), vit=VIT)
    another_vit = build_guide(a.config, SCHED, _src(2), vit=SpyViT(), clip=clip, text="zebra", source_text="cat")
    for guides in ([a, other], [a, another_vit]):
        with pytest.raises(ValueError) as err:
            stack_guides(guides, 1)
        assert str(err.value) == "guides stacked into one batch need the same settings and networks"
    with pytest.raises(ValueError) as err:
        stack_guides([], 1)
    assert str(err.value) == "stack_guides needs at least one guide"


def test_take_picks_rows_and_leaves_shared_features_alone():
    rows = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    fixed = FixedFeatures(src=rows, src_keys=rows[:, 0], src_self_sim=rows[:, 0], src_cls=rows[:, 0, 0],
                          clip_directions=[torch.arange(8.0).view(4, 2)])
    kept = fixed.take([3, 1])
    assert kept.src[:, 0, 0, 0].tolist() == [3.0, 1.0] and kept.src_cls[:, 0].tolist() == [3.0, 1.0]
    assert kept.clip_directions[0].tolist() == [[6.0, 7.0], [2.0, 3.0]] and kept.trg is None
    shared = FixedFeatures(src=rows[:1], src_keys=rows[:1, 0], src_self_sim=rows[:1, 0], src_cls=rows[:1, 0, 0])
    assert shared.take([1, 0, 2]) is shared


def test_clip_loss_with_a_direction_per_sample():
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    d = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # −(pred_b · d_b): 1·1, 0·1 + 1·0, 0.8
    torch.testing.assert_close(clip_direction_loss([pred], [d]), torch.tensor([-1.0, 0.0, -0.8]))
    shared = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(clip_direction_loss([pred], [shared]), torch.tensor([0.0, -1.0, -0.8]))


def _pixels(results):
    return [np.asarray(r.image, dtype=np.int16) for r in results]


def _same_as_alone(together, alone):
    assert [r.seed for r in together] == [r.seed for r in alone]
    assert [r.restarts for r in together] == [r.restarts for r in alone]
    for got, want in zip(_pixels(together), _pixels(alone)):
        assert got.shape == want.shape and np.abs(got - want).max() <= 2  # batch effects only: a few 1/255


def test_each_image_of_a_text_batch_gets_what_it_gets_alone(capsys):
    m = tiny_models()
    cfg = small("text", samples=2, range_restart=False)
    jobs = [Job(picture(seed=1), "tiger", "cat"), Job(picture(seed=2), "zebra", "horse")]
    together = translate_many(m, jobs, config=cfg)
    assert "guided steps" not in capsys.readouterr().err  # no progress bar unless asked
    assert len(together) == 2 and all(len(r) == 2 for r in together)
    for job, got in zip(jobs, together):
        _same_as_alone(got, translate(m, job.source, text=job.text, source_text=job.source_text, config=cfg))
    # and the images are really each their own: the second image's results are not the first's
    assert np.abs(_pixels(together[0])[0] - _pixels(together[1])[0]).max() > 20


def test_restarts_in_a_shared_batch_start_again_from_their_own_source():
    """Every sample is out of range and restarts once: a restart must take its own image's source
    and style rows back, not the first rows of the batch."""
    m = tiny_models()
    cfg = small("image", samples=2, range_restart=True, restart_threshold=1e-12, max_restarts=1, lambda_range=1.0)
    jobs = [Job(picture(seed=1), style=picture(seed=5)), Job(picture(seed=2), style=picture(seed=6))]
    together = translate_many(m, jobs, config=cfg, seeds=[3, 4])
    assert [[r.restarts for r in rs] for rs in together] == [[1, 1], [1, 1]]
    for job, got in zip(jobs, together):
        _same_as_alone(got, translate(m, job.source, style=job.style, config=cfg, seeds=[3, 4]))


def test_translate_many_refuses_mixed_sizes_and_bad_jobs():
    m = tiny_models()
    cfg = small("image", samples=1, size=64, max_long_side=96)
    wide, tall, square = picture(96, 64, seed=1), picture(64, 96, seed=2), picture(64, 64, seed=3)
    with pytest.raises(ImageError) as err:
        translate_many(m, [Job(wide, "tiger", "cat"), Job(tall, "zebra", "horse")],
                       config=small("text", samples=1, size=64, max_long_side=96))
    assert str(err.value) == "images translated in one batch need one working size: image 2 is worked on at 64×96, the first at 96×64"
    for jobs in ([], "cat.png", [picture()]):
        with pytest.raises(ConfigError) as err:
            translate_many(m, jobs, config=cfg)
        assert (err.value.field, err.value.value) == ("jobs", jobs)
        assert err.value.allowed == "a non-empty list of dsct.Job(source, text=…, source_text=…) or Job(source, style=…)"
    with pytest.raises(ImageError, match="needs a style image"):  # each job is checked like translate's arguments
        translate_many(m, [Job(square, style=square), Job(square)], config=cfg)


class _Rows:
    def take(self, keep):
        return self


class RowGuide:
    """L_b = Σ w_b·x̂0_b with its own w per batch row and a fixed range value per row."""

    fixed = SimpleNamespace(class_id=None)  # no class held (the stand-in UNet has no classes)

    def __init__(self, w, range_values):
        self.w, self.range_values = w, range_values
        self.config = SimpleNamespace(lambda_range=1.0, max_restarts=1)

    def take(self, rows):
        idx = torch.tensor(list(rows), dtype=torch.long)
        return RowGuide(self.w[idx], self.range_values[idx])

    def initial_state(self, batch):
        return _Rows()

    def draw_views(self, generators, height, width):
        return None

    def __call__(self, x_t, x0_pred, i, state, views=None):
        assert x_t.shape[0] == self.w.shape[0]  # the guide has exactly the rows of the samples running
        return (self.w * x0_pred).flatten(1).sum(1), {"range": self.range_values.clone()}, state


def test_a_sample_that_restarts_alone_takes_its_own_source_and_guide_rows():
    """Row 1 is out of range and restarts once, alone; every row still equals its own run."""
    g = torch.Generator().manual_seed(9)
    x_src = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    w = torch.randn(3, 3, 16, 16, generator=g)
    ranges, seeds = torch.tensor([0.0, 1.0, 0.0]), [11, 12, 13]
    kw = dict(t_start=4, repeats=2, restart_threshold=0.5)
    together = sample_guided(LinearEps(), SCHED, RowGuide(w, ranges), x_src,
                             [torch.Generator().manual_seed(s) for s in seeds], **kw)
    assert together.restarts == (0, 1, 0)
    for k, seed in enumerate(seeds):
        alone = sample_guided(LinearEps(), SCHED, RowGuide(w[k:k + 1], ranges[k:k + 1]), x_src[k:k + 1],
                              [torch.Generator().manual_seed(seed)], **kw)
        assert alone.restarts == (k == 1,)
        torch.testing.assert_close(together.x0[k], alone.x0[0], rtol=1e-6, atol=1e-6)


def test_sources_need_one_row_or_one_per_sample():
    with pytest.raises(ValueError, match=r"x_src must have 1 row or one per sample \(3\), got 2"):
        sample_guided(LinearEps(), SCHED, RowGuide(torch.zeros(3, 3, 8, 8), torch.zeros(3)), torch.zeros(2, 3, 8, 8),
                      [torch.Generator() for _ in range(3)], t_start=2)


def test_captured_steps_pad_per_sample_features_like_the_samples():
    """A graph or compiled step keeps the call's batch size when a sample leaves: per-sample fixed
    features get the first row repeated, as the samples do; shared ones stay one row."""
    from dsct.capture import _padded_fixed

    rows = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    fixed = FixedFeatures(src=rows, src_keys=rows[:, 0], src_self_sim=rows[:, 0], src_cls=rows[:, 0, 0],
                          clip_directions=[torch.arange(6.0).view(3, 2)])
    padded = _padded_fixed(fixed, 5)
    assert padded.src[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 0.0, 0.0] and padded.src_cls[:, 0].tolist() == [0, 1, 2, 0, 0]
    assert padded.clip_directions[0].tolist() == [[0, 1], [2, 3], [4, 5], [0, 1], [0, 1]] and padded.trg is None
    shared = FixedFeatures(src=rows[:1], src_keys=rows[:1, 0], src_self_sim=rows[:1, 0], src_cls=rows[:1, 0, 0])
    assert _padded_fixed(shared, 5) is shared
