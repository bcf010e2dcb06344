"""dsct.guidance around the loss of one step: what the per-sample state keeps when samples leave,
which networks see which dtype, and when CLIP views are drawn. Closed-form stand-ins only."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dsct.config import preset
from dsct.diffusion import make_schedule
from dsct.guidance import GuideState, build_guide, model_dtype, vit_features

from closed_form import SpyArcFace, SpyClip, SpyViT, zero_weights

SCHED = make_schedule("10")
SHAPE = (3, 32, 32)


def config(mode="image", **changes):
    base = dict(steps=10, skip=5, divergence_until=5, regularize_content=False, size=32, max_long_side=32)
    return preset(mode, **{**base, **zero_weights(), **changes})


def src(seed=7, b=1):
    return torch.rand(b, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_take_keeps_the_rows_of_the_samples_that_stay_in_the_order_given():
    state = GuideState(prev_cls=torch.arange(6.0).view(3, 2), prev_clip=torch.tensor([0.1, 0.2, 0.3]))
    kept = state.take([2, 0])
    assert torch.equal(kept.prev_cls, torch.tensor([[4.0, 5.0], [0.0, 1.0]]))
    assert torch.equal(kept.prev_clip, torch.tensor([0.3, 0.1]))
    one = state.take((1,))
    assert one.prev_cls.shape == (1, 2) and one.prev_clip.tolist() == [pytest.approx(0.2)]
    none = state.take([])  # every sample left
    assert none.prev_cls.shape == (0, 2) and none.prev_clip.shape == (0,)


class LinearFace(nn.Module):
    """An "ArcFace" with real weights (so its dtype matters): channel means through a fixed linear map."""

    def __init__(self, dtype):
        super().__init__()
        self.proj = nn.Linear(3, 4, bias=False, dtype=dtype)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x)
        return self.proj(x.mean((2, 3)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_arcface_gets_its_own_dtype_and_gives_fp32(dtype):
    face = LinearFace(dtype)
    x = src()
    guide = build_guide(config(lambda_id=1.0), SCHED, x, vit=SpyViT(), arcface=face)
    assert face.seen[-1].dtype == dtype
    emb = guide.fixed.src_identity
    assert emb.dtype == torch.float32 and emb.shape == (1, 4)
    assert model_dtype(face) == dtype


class CastViT(SpyViT):
    """SpyViT stored in another dtype: it must be fed that dtype, and its features come back as fp32."""

    def __init__(self, dtype):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), dtype=dtype), requires_grad=False)

    def forward(self, x01):
        assert x01.dtype == self.anchor.dtype
        return super().forward(x01)


def test_vit_features_cast_in_and_out():
    vit = CastViT(torch.float64)
    x = src()
    feats = vit_features(vit, x)
    assert all(f.dtype == torch.float32 for f in feats)
    torch.testing.assert_close(vit.seen[-1], (x * 0.5 + 0.5).double())
    torch.testing.assert_close(feats.cls, (x * 0.5 + 0.5).mean((2, 3)), rtol=1e-6, atol=1e-6)


def test_initial_state_is_the_source_cls_per_sample_and_a_zero_clip_loss():
    guide = build_guide(config(lambda_div=1.0), SCHED, src(), vit=SpyViT())
    state = guide.initial_state(3)
    want = (src() * 0.5 + 0.5).mean((2, 3))
    assert state.prev_cls.shape == (3, 3) and torch.allclose(state.prev_cls, want.expand(3, 3))
    assert torch.equal(state.prev_clip, torch.zeros(3))
    state.prev_cls[0, 0] = 9.0  # a copy per call: the fixed features are not written through it
    assert guide.fixed.src_cls[0, 0] != 9.0 and guide.initial_state(1).prev_cls[0, 0] != 9.0


class CountingClip(SpyClip):
    def __init__(self):
        super().__init__()
        self.draws: list[tuple] = []

    def draw_views(self, n_cuts, generators, height, width):
        self.draws.append((n_cuts, len(generators), height, width))
        return torch.ones(len(generators), n_cuts, 2, 3)


@pytest.mark.parametrize("mode, lambda_clip, clip_loaded, drawn", [
    ("text", 1.0, True, True),
    ("text", 0.0, True, False),  # no CLIP weight: no views, nothing drawn
    ("text", 1.0, False, False),  # no CLIP model
    ("image", 1.0, True, False),  # image mode has no text directions
])
def test_views_are_drawn_only_when_the_clip_loss_runs(mode, lambda_clip, clip_loaded, drawn):
    clip = CountingClip() if clip_loaded else None
    weights = dict(lambda_ssim=1.0) if lambda_clip == 0 else {}
    guide = build_guide(config(mode, lambda_clip=lambda_clip, n_cuts=5, **weights), SCHED, src(), vit=SpyViT(),
                        clip=clip, style=src(3) if mode == "image" else None, text="tiger", source_text="cat")
    views = guide.draw_views([torch.Generator(), torch.Generator()], 32, 48)
    if drawn:
        assert clip.draws == [(5, 2, 32, 48)] and views.shape == (2, 5, 2, 3) and views.device == src().device
    else:
        assert views is None and (clip is None or clip.draws == [])


def test_the_clip_loss_refuses_to_run_without_views():
    clip = SpyClip()
    guide = build_guide(config("text", lambda_clip=1.0), SCHED, src(), vit=SpyViT(), clip=clip, text="tiger",
                        source_text="cat")
    x = src(1, 2)
    with pytest.raises(ValueError) as err:
        guide(x, x, torch.tensor([4, 4]), guide.initial_state(2), None)
    assert str(err.value) == "the CLIP loss needs this step's views: pass guide.draw_views(...)"


def _clip_guide(clip, **changes):
    return build_guide(config("text", **{"lambda_clip": 1.0, "n_cuts": 4, **changes}), SCHED, src(), vit=SpyViT(),
                       clip=clip, text="tiger", source_text="cat")


def test_no_views_without_a_clip_model_directions_or_weight_whatever_the_guide_holds():
    """A guide assembled by hand (not by build_guide) may hold CLIP without directions, or the other
    way round: no CLIP loss can run, so no view is drawn."""
    clip = CountingClip()
    guide = _clip_guide(clip)
    gens = [torch.Generator()]
    assert guide.draw_views(gens, 32, 32) is not None and len(clip.draws) == 1
    no_directions = dataclasses.replace(guide, fixed=guide.fixed._replace(clip_directions=None))
    no_model = dataclasses.replace(guide, clip=None)
    no_weight = dataclasses.replace(guide, config=config("text", lambda_clip=0.0, lambda_ssim=1.0))
    for g in (no_directions, no_model, no_weight):
        assert g.draw_views(gens, 32, 32) is None
    assert len(clip.draws) == 1  # nothing drawn since


def test_state_and_views_live_on_the_guide_device():
    """On another device than the CPU (meta here: no GPU needed) the step's inputs are made there."""
    meta = torch.device("meta")
    guide = _clip_guide(CountingClip())
    guide = dataclasses.replace(guide, fixed=guide.fixed._replace(src=src().to(meta)))
    assert guide.draw_views([torch.Generator()], 32, 32).device == meta
    image = build_guide(config(lambda_div=1.0), SCHED, src().to(meta), vit=SpyViT())
    state = image.initial_state(2)
    assert state.prev_cls.device == meta and state.prev_clip.device == meta


@pytest.mark.parametrize("regularize, prog, want", [
    (True, False, [1.0, 2.0, 1.0]),  # doubled only strictly below −0.5
    (False, True, [1.0, 1.0, 0.5]),  # halved only strictly above −0.5
    (True, True, [1.0, 2.0, 0.5]),
])
def test_adaptive_content_weight_at_and_around_the_threshold(regularize, prog, want):
    guide = build_guide(config("text", lambda_contra=200.0, regularize_content=regularize, prog_contrast=prog),
                        SCHED, src(), vit=SpyViT())
    state = GuideState(prev_cls=torch.zeros(3, 3), prev_clip=torch.tensor([-0.5, -0.6, -0.4]))
    torch.testing.assert_close(guide._weights(state)["contra"], 200.0 * torch.tensor(want))


def test_terms_run_only_with_their_weight_and_their_inputs():
    x = src(1, 2)
    i = torch.tensor([4, 4])
    vit = SpyViT()
    pixels_only = build_guide(config("image", lambda_l2=1.0, lambda_range=1.0), SCHED, src(), vit=vit, style=src(3))
    seen = len(vit.seen)  # the fixed features' passes
    _, terms, _ = pixels_only(x, x, i, pixels_only.initial_state(2))
    assert len(vit.seen) == seen and set(terms) == {"range", "l2"}  # no ViT pass without a ViT weight
    no_l2 = build_guide(config("image", lambda_cls=1.0), SCHED, src(), vit=vit, style=src(3))
    assert "l2" not in no_l2(x, x, i, no_l2.initial_state(2))[1]
    text = build_guide(config("text", lambda_l2=1.0, lambda_ssim=1.0), SCHED, src(), vit=vit)  # no style image: no pixel L2
    assert "l2" not in text(x, x, i, text.initial_state(2))[1]


def test_clip_and_identity_terms_need_their_model_features_and_weight():
    """Each of the three conditions alone keeps the term out, whatever the others say."""
    x, i = src(1, 2), torch.tensor([4, 4])
    views = torch.zeros(2, 4, 2, 3)
    full = _clip_guide(SpyClip(), lambda_id=1.0)
    full = dataclasses.replace(full, arcface=SpyArcFace(),
                               fixed=full.fixed._replace(src_identity=torch.ones(1, 3) / 3 ** 0.5))
    assert {"clip", "id"} <= set(full(x, x, i, full.initial_state(2), views)[1])
    cases = {
        "no models": dataclasses.replace(full, clip=None, arcface=None),
        "no features": dataclasses.replace(full, fixed=full.fixed._replace(clip_directions=None, src_identity=None)),
        "no weights": dataclasses.replace(full, config=config("text", lambda_ssim=1.0)),
    }
    for why, guide in cases.items():
        terms = guide(x, x, i, guide.initial_state(2), views)[1]
        assert "clip" not in terms and "id" not in terms, why
    no_clip = build_guide(config("text", lambda_clip=1.0), SCHED, src(), vit=SpyViT())  # CLIP not loaded
    assert "clip" not in no_clip(x, x, i, no_clip.initial_state(2))[1]  # and no views needed


class CastClip(SpyClip):
    """SpyClip stored in float64: the guide must feed it float64 and read fp32 back."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)

    def encode_views(self, x01, views):
        assert x01.dtype == torch.float64
        return super().encode_views(x01, views)


def test_clip_gets_its_own_dtype():
    guide = _clip_guide(CastClip())
    x = src(1, 2)
    loss, terms, _ = guide(x, x, torch.tensor([4, 4]), guide.initial_state(2), torch.zeros(2, 4, 2, 3))
    assert terms["clip"].dtype == torch.float32 and loss.dtype == torch.float32


def test_a_whole_sampling_run_stays_on_the_device_of_its_source():
    """Closed-form networks on the meta device: any tensor made on the host inside the loop (noise,
    timesteps, masks, views) fails to combine with the others, as it would on a GPU."""
    from dsct.sampler import sample_guided

    from closed_form import LinearEps

    meta = torch.device("meta")
    cfg = config("text", lambda_clip=1.0, lambda_contra=1.0, lambda_ssim=1.0, lambda_div=1.0, n_cuts=2)
    guide = build_guide(cfg, SCHED, src().to(meta), vit=SpyViT(), clip=SpyClip(), text="tiger", source_text="cat")
    guide = dataclasses.replace(guide, fixed=guide.fixed._replace(
        clip_directions=[d.to(meta) for d in guide.fixed.clip_directions]))  # as a CLIP model on the device gives them
    out = sample_guided(LinearEps(), SCHED, guide, guide.fixed.src, [torch.Generator().manual_seed(s) for s in (1, 2)],
                        t_start=3, repeats=2)
    assert out.x0.device == meta and out.x0.shape == (2, *SHAPE) and set(out.terms) >= {"clip", "contra", "ssim", "div"}
