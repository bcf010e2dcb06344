"""SPEC §3–4 line by line: the sampler and the guide against hand-computed closed forms.

Deliberately not the tiny real networks (STYLE §9): each model here is a small module whose output
is a known function of its input, so every expected value below is computed by hand from the
schedule arrays (already checked against the reference in test_diffusion.py) and never by calling
the code under test. The stand-ins live in closed_form.py: ``LinearEps`` predicts ε = a·x_t, so x̂0, μ and σ² are
linear in x_t; the spies record what they are fed and return simple features of it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dsct.config import preset
from dsct.diffusion import make_schedule
from dsct.guidance import GuideState, build_guide
from dsct.losses import contrastive_keys_loss
from dsct.sampler import _p_sample, sample_guided

from closed_form import LinearEps, SpyArcFace, SpyClip, SpyViT, zero_weights

SCHED = make_schedule("10")
A, V = 0.5, 0.2  # LinearEps(A, V): ε = A·x_t, v = V everywhere
C = 5.0  # LinearGuide: L = C·Σ w·x̂0
T_START, REPEATS, SHAPE = 4, 3, (3, 32, 32)
W = torch.randn(SHAPE, generator=torch.Generator().manual_seed(123))  # LinearGuide's w
X_SRC = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(7)) * 2 - 1
SEEDS = (11, 12)


# ---------------------------------------------------------------- a guide with a closed-form gradient


class _State(SimpleNamespace):
    def take(self, keep):
        return self


class LinearGuide:
    """L = C·Σ w·x̂0 per sample (gradient C·k_t·w in closed form) and a fixed range term."""

    fixed = SimpleNamespace(class_id=None)  # no class held (the stand-in UNet has no classes)

    def __init__(self, w, *, range_value=0.0, lambda_range=1.0, max_restarts=2):
        self.w, self.range_value = w, range_value
        self.config = SimpleNamespace(lambda_range=lambda_range, max_restarts=max_restarts)

    def take(self, rows):  # the same w for every sample
        return self

    def initial_state(self, batch):
        return _State()

    def draw_views(self, generators, height, width):
        return None

    def __call__(self, x_t, x0_pred, i, state, views=None):
        loss = C * (self.w * x0_pred).flatten(1).sum(1)
        return loss, {"range": torch.full((x_t.shape[0],), float(self.range_value))}, state


# ---------------------------------------------------------------- hand computations (float64)


def _coef(name, i):
    return getattr(SCHED, name)[i].item()


def hand_step(x, i):
    """(x̂0, guided mean μ + σ²·g, σ) of LinearEps + LinearGuide at spaced step i (SPEC §2–3)."""
    x = x.double()
    ac = _coef("alphas_cumprod", i)
    k = math.sqrt(1 / ac) - math.sqrt(1 / ac - 1) * A  # dx̂0/dx_t
    x0 = k * x
    mu = _coef("posterior_mean_coef1", i) * x0 + _coef("posterior_mean_coef2", i) * x
    f = (V + 1) / 2
    var = math.exp(f * _coef("log_betas", i) + (1 - f) * _coef("posterior_log_variance_clipped", i))
    g = -C * k * W.double()  # −∂L/∂x_t
    return x0, mu + var * g, math.sqrt(var)


def run(repeats=REPEATS, seeds=SEEDS, guide=None, restart_threshold=None):
    unet = LinearEps(A, V)
    out = sample_guided(unet, SCHED, guide or LinearGuide(W), X_SRC, [torch.Generator().manual_seed(s) for s in seeds],
                        t_start=T_START, repeats=repeats, restart_threshold=restart_threshold)
    return unet.calls, out


def planned_draws(seed, repeats):
    """SPEC §3 draw order per sample: q_sample noise, then per evaluation z (and z' when re-noising)."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randn(SHAPE, generator=g, dtype=torch.float32).double()  # noqa: E731
    start = draw()
    plan = []  # (i, z, z' or None) per guided evaluation
    for t in range(T_START, -1, -1):
        reps = repeats if t == T_START else 1
        for r in range(reps):
            z = draw()
            plan.append((t, z, draw() if r < reps - 1 else None))
    return start, plan


def close(got, want, tol=2e-5):
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)


# ---------------------------------------------------------------- the sampler (SPEC §3)


def test_start_is_q_sample_of_the_source_at_t_start():
    calls, _ = run()
    x, t = calls[0]
    ac = _coef("alphas_cumprod", T_START)
    for b, seed in enumerate(SEEDS):
        z0, _ = planned_draws(seed, REPEATS)
        close(x[b], math.sqrt(ac) * X_SRC[0].double() + math.sqrt(1 - ac) * z0)
    assert t.tolist() == [float(SCHED.timestep_map[T_START])] * 2


def test_resampling_renoises_x_prev_back_to_t_with_beta_t():
    calls, _ = run()
    beta = _coef("betas", T_START)
    checked = 0
    for b, seed in enumerate(SEEDS):
        _, plan = planned_draws(seed, REPEATS)
        for n, (i, z, z_back) in enumerate(plan):
            if z_back is None:
                continue
            _, mean, sigma = hand_step(calls[n][0][b], i)
            x_prev = mean + sigma * z
            close(calls[n + 1][0][b], math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * z_back)
            checked += 1
    assert checked == 2 * (REPEATS - 1)
    assert len(calls) == T_START + REPEATS and all(c[1].tolist() == [float(SCHED.timestep_map[T_START])] * 2 for c in calls[:REPEATS])


@pytest.mark.parametrize("repeats", [1, REPEATS])
def test_each_step_moves_to_the_variance_scaled_mean_shift_plus_noise(repeats):
    calls, _ = run(repeats=repeats)
    checked = 0
    for b, seed in enumerate(SEEDS):
        _, plan = planned_draws(seed, repeats)
        for n, (i, z, z_back) in enumerate(plan[:-1]):
            if z_back is not None:
                continue
            _, mean, sigma = hand_step(calls[n][0][b], i)
            close(calls[n + 1][0][b], mean + sigma * z)  # x_{t-1} = μ + σ²·g + σ·z
            checked += 1
    assert checked == 2 * T_START


def test_result_is_x0_pred_of_the_last_evaluation_not_its_mean():
    calls, out = run()
    x_last, t_last = calls[-1]
    assert t_last.tolist() == [0.0, 0.0]
    x0, mean, _ = hand_step(x_last, 0)
    close(out.x0, x0)
    assert (mean - x0).abs().max() > 1e-3  # the guided mean at i = 0 is measurably different


def test_no_noise_is_added_at_step_zero():
    mean, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    log_var = torch.full((2, 3, 4, 4), math.log(0.25))
    got = _p_sample(mean, log_var, torch.tensor([0, 3]), noise)
    assert torch.equal(got[0], mean[0])
    close(got[1], mean[1] + 0.5 * noise[1])


def test_the_unet_is_fed_its_weights_dtype_and_the_step_stays_fp32():
    unet = LinearEps(A, V).to(torch.bfloat16)  # as a half-precision UNet on a GPU
    out = sample_guided(unet, SCHED, LinearGuide(W), X_SRC, [torch.Generator().manual_seed(11)], t_start=T_START)
    assert len(unet.calls) == T_START + 1 and all(x.dtype == torch.bfloat16 for x, _ in unet.calls)
    assert out.x0.dtype == torch.float32


@pytest.mark.parametrize("lambda_range, range_value, restarts", [
    (0.01, 0.5, 0),  # weighted 0.005 ≤ 0.01: no restart, although the raw term is 0.5
    (1.0, 0.5, 2),  # weighted 0.5 > 0.01: restarts until the cap
    (1.0, 0.005, 0),
])
def test_restart_compares_the_weighted_range_loss(lambda_range, range_value, restarts):
    guide = LinearGuide(W, range_value=range_value, lambda_range=lambda_range, max_restarts=2)
    calls, out = run(seeds=(11,), guide=guide, restart_threshold=0.01)
    assert out.restarts == (restarts,)
    assert len(calls) == restarts * (REPEATS + 1) + T_START + REPEATS


# ---------------------------------------------------------------- the guide (SPEC §4)


def config(mode="image", **changes):
    """Steps 10, every weight 0 except those given; restarts and adaptive weighting off unless asked."""
    base = dict(steps=10, skip=5, divergence_until=5, regularize_content=False, size=32, max_long_side=32)
    return preset(mode, **{**base, **zero_weights(), **changes})


def images(seed, b=2, shape=SHAPE):
    return torch.rand(b, *shape, generator=torch.Generator().manual_seed(seed)) * 3 - 1.5  # partly outside [-1, 1]


def guide_for(cfg, *, style=True, clip=None, arcface=None):
    vit = SpyViT()
    trg = images(3, 1) if style else None
    guide = build_guide(cfg, SCHED, X_SRC, vit=vit, clip=clip, arcface=arcface, style=trg, text="tiger", source_text="cat")
    return guide, vit, trg


def x_in_by_hand(x_t, x0, i):
    s = torch.tensor([math.sqrt(1 - _coef("alphas_cumprod", k)) for k in i.tolist()], dtype=torch.float64).view(-1, 1, 1, 1)
    return x0.double() * s + x_t.double() * (1 - s)


def call(guide, i, state=None, seed=20):
    x_t, x0 = images(seed), images(seed + 1)
    i = torch.tensor(i)
    state = state or guide.initial_state(2)
    views = guide.draw_views([torch.Generator()] * len(i), *SHAPE[1:])
    loss, terms, new_state = guide(x_t, x0, i, state, views)
    return SimpleNamespace(x_t=x_t, x0=x0, i=i, x_in=x_in_by_hand(x_t, x0, i), loss=loss, terms=terms, state=new_state)


def test_build_guide_feeds_the_vit_images_in_0_1():
    guide, vit, trg = guide_for(config(lambda_cls=1.0))
    close(vit.seen[0], X_SRC * 0.5 + 0.5, 1e-6)
    close(vit.seen[1], trg * 0.5 + 0.5, 1e-6)
    close(guide.fixed.src_cls, (X_SRC * 0.5 + 0.5).mean((2, 3)), 1e-6)


@pytest.mark.parametrize("noise_aug", [True, False])
def test_vit_sees_the_noise_augmented_input_when_on(noise_aug):
    guide, vit, _ = guide_for(config(lambda_ssim=1.0, noise_aug=noise_aug))
    c = call(guide, [2, 4])
    want = c.x_in if noise_aug else c.x0
    close(vit.seen[-1], want * 0.5 + 0.5)


@pytest.mark.parametrize("noise_aug", [True, False])
def test_clip_always_sees_x_in_and_its_loss_is_remembered(noise_aug):
    clip = SpyClip()
    guide, _, _ = guide_for(config("text", lambda_clip=1.0, noise_aug=noise_aug), style=False, clip=clip)
    c = call(guide, [2, 4])
    close(clip.seen[-1], c.x_in * 0.5 + 0.5)
    want = -((c.x_in * 0.5 + 0.5).mean((2, 3)) @ SpyClip.direction.double())
    close(c.terms["clip"], want)
    close(c.state.prev_clip, want)
    close(c.loss, want)


def test_pixel_l2_is_on_x_in_and_enters_the_loss():
    guide, _, trg = guide_for(config(lambda_l2=3.0, noise_aug=False))
    c = call(guide, [2, 4])
    want = ((c.x_in - trg.double()) ** 2).flatten(1).mean(1)
    close(c.terms["l2"], want)
    close(c.loss, 3.0 * want)


def test_identity_is_on_x_in():
    arcface = SpyArcFace()
    guide, _, _ = guide_for(config(lambda_id=1.0, noise_aug=False), style=False, arcface=arcface)
    # spatially constant images: whatever the crop and pooling, ArcFace must see x_in's colours
    x_t = torch.tensor([[0.9, -0.2, 0.1], [-0.7, 0.4, 0.3]]).view(2, 3, 1, 1).expand(2, *SHAPE)
    x0 = torch.tensor([[-0.5, 0.6, 0.8], [0.2, -0.9, 0.5]]).view(2, 3, 1, 1).expand(2, *SHAPE)
    i = torch.tensor([2, 4])
    guide(x_t, x0, i, guide.initial_state(2))
    x_in = x_in_by_hand(x_t, x0, i)
    seen = arcface.seen[-1]
    close(seen, x_in[:, :, :1, :1].expand_as(seen))


def test_range_loss_is_on_x0_pred():
    guide, _, _ = guide_for(config(lambda_range=2.0))
    c = call(guide, [2, 4])
    want = ((c.x0 - c.x0.clamp(-1, 1)) ** 2).flatten(1).mean(1)
    close(c.terms["range"], want)
    close(c.loss, 2.0 * want)


def test_style_cls_compares_with_the_style_image():
    guide, _, trg = guide_for(config(lambda_cls=4.0))
    c = call(guide, [2, 4])
    cls_in = (c.x_in * 0.5 + 0.5).mean((2, 3))
    want = ((cls_in - (trg.double() * 0.5 + 0.5).mean((2, 3))) ** 2).mean(1)
    close(guide.fixed.trg_cls, (trg * 0.5 + 0.5).mean((2, 3)), 1e-6)
    close(c.terms["cls"], want)
    close(c.loss, 4.0 * want)


def test_semantic_divergence_acts_only_above_its_step():
    guide, _, _ = guide_for(config(lambda_div=1.0, divergence_until=3))
    c = call(guide, [3, 4])  # sample 0 at the limit (off), sample 1 above it (on)
    cls_in = (c.x_in * 0.5 + 0.5).mean((2, 3))
    src_cls = (X_SRC.double() * 0.5 + 0.5).mean((2, 3))
    assert c.terms["div"][0].item() == 0.0
    close(c.terms["div"][1], -((cls_in[1] - src_cls[0]) ** 2).mean())
    assert c.terms["div"][1] < -1e-4


def test_previous_cls_is_the_last_guided_input():
    guide, _, _ = guide_for(config(lambda_div=1.0, divergence_until=0))
    first = call(guide, [4, 4], seed=20)
    cls1 = (first.x_in * 0.5 + 0.5).mean((2, 3))
    close(first.state.prev_cls, cls1)
    second = call(guide, [3, 3], state=first.state, seed=40)
    cls2 = (second.x_in * 0.5 + 0.5).mean((2, 3))
    close(second.terms["div"], -((cls2 - cls1) ** 2).mean(1))


@pytest.mark.parametrize("mode, regularize, prog, factors", [
    ("text", True, False, (2.0, 1.0, 1.0)),  # doubled below -0.5 only
    ("text", False, True, (1.0, 0.5, 0.5)),  # halved above -0.5; never a quarter (SPEC §4)
    ("text", True, True, (2.0, 0.5, 0.5)),
    ("text", False, False, (1.0, 1.0, 1.0)),
    ("image", True, True, (1.0, 1.0, 1.0)),  # text mode only
])
def test_adaptive_content_weight(mode, regularize, prog, factors):
    cfg = config(mode, lambda_contra=200.0, regularize_content=regularize, prog_contrast=prog)
    guide, _, _ = guide_for(cfg, style=False)
    prev_clip = torch.tensor([-0.6, -0.45, -0.3])  # below -0.5; above -0.5; above -0.4 (the reference's dead quarter)
    state = GuideState(guide.fixed.src_cls.expand(3, -1), prev_clip)
    x_t, x0 = images(50, 3), images(51, 3)
    loss, terms, _ = guide(x_t, x0, torch.tensor([4, 4, 4]), state)
    assert (terms["contra"].abs() > 1e-3).all()
    close(loss / terms["contra"], 200.0 * torch.tensor(factors), 1e-5)


def test_adaptive_weight_reads_the_previous_steps_clip_loss_not_this_ones():
    clip = SpyClip()
    cfg = config("text", lambda_clip=1.0, lambda_contra=200.0, regularize_content=True)
    guide, _, _ = guide_for(cfg, style=False, clip=clip)
    state = guide.initial_state(2)._replace(prev_clip=torch.tensor([-0.3, -0.9]))
    x_t, x0 = torch.full((2, *SHAPE), 0.6), torch.full((2, *SHAPE), 0.8)  # this step's CLIP loss ≈ −1.2 < −0.5
    loss, terms, new_state = guide(x_t, x0, torch.tensor([4, 4]), state, torch.zeros(2, 1, 2, 3))
    assert (terms["clip"] < -0.5).all()
    close(new_state.prev_clip, terms["clip"], 1e-6)
    close((loss - terms["clip"]) / terms["contra"], torch.tensor([200.0, 400.0]), 1e-5)


# ---------------------------------------------------------------- patch NCE diagonal (SPEC §4)


@pytest.mark.parametrize("tau", [2.0, 10.0])
def test_nce_negative_diagonal_is_minus_ten_before_the_temperature(tau):
    """At τ = 0.07 the masked logit −10/τ is invisible next to the others; a large τ exposes it."""
    n = 5
    keys = torch.eye(n).unsqueeze(0)  # cos 1 on the diagonal, 0 elsewhere
    # per token: logits [1/τ (positive), −10/τ (masked diagonal), 0 × (n − 1)]
    want = -1 / tau + math.log(math.exp(1 / tau) + math.exp(-10 / tau) + (n - 1))
    close(contrastive_keys_loss(keys, keys, temperature=tau), torch.tensor([want]), 1e-6)
