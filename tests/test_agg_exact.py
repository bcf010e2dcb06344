"""AGG's maths (SPEC-AGG §4–7) against expectations derived by hand: the oracles of SPEC-AGG §10.

The "UNet" is closed-form (ε = a·x_t, ``closed_form.LinearEps``), so x̂0 = c_i·x_t with
c_i = 1/√ᾱ_i − a·√(1/ᾱ_i − 1), and every latent, gradient and update below is written out with ᾱ
computed here from the linear betas (SPEC §2), never from ``dsct.diffusion``. The feature networks are
the spies of ``closed_form`` ([CLS] and CLIP embedding = per-channel mean of the [0,1] input).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dsct.config import TranslationConfig
from dsct.diffusion import make_schedule, shift_x0
from dsct.guidance import GuideState, build_guide, stack_guides
from dsct.sampler import agg_guided_step, agg_step_kind, ddim_invert, sample_agg

from closed_form import LinearEps, SpyArcFace, SpyClip, SpyViT

A = 0.5  # LinearEps: ε = A·x_t
SHAPE = (3, 16, 16)  # one 16×16 token for SpyViT
N = 3 * 16 * 16
AGG_ZERO = dict(lambda_cls=0.0, lambda_l2=0.0, lambda_clip=0.0, lambda_range=0.0, lambda_id=0.0, lambda_gt=0.0)
SMALL = dict(method="agg", steps=10, skip=5, t_edit=3, t_boost=4)  # t_start 4: guided 4, 3; η at 2; η_boost at 1, 0


def kept(steps: int) -> list[int]:
    """SPEC-AGG §3: respacing "N" keeps round(i·999/(N−1))."""
    return [round(i * 999 / (steps - 1)) for i in range(steps)]


def alphas(steps: int) -> list[float]:
    """ᾱ of the kept steps from the linear betas of T = 1000 (float64)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)[kept(steps)].tolist()


def c(ac: float) -> float:
    """x̂0 = c·x_t for ε = A·x_t."""
    return 1 / math.sqrt(ac) - A * math.sqrt(1 / ac - 1)


def sigma(ac: float, ac_prev: float, eta: float) -> float:
    return eta * math.sqrt((1 - ac_prev) / (1 - ac)) * math.sqrt(1 - ac / ac_prev)


def rand(*shape, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def guide_for(config: TranslationConfig, *, inv_x0=None, style=None, clip=False, batch=1):
    """A real Guide on spy networks, with a given inversion (G) and a start latent."""
    sched = make_schedule(str(config.steps))
    src = rand(1, *SHAPE, seed=1)
    g = rand(1, config.t_start + 1, *SHAPE, seed=2) if inv_x0 is None else inv_x0
    return build_guide(config, sched, src, vit=SpyViT(), clip=SpyClip() if clip else None, style=style,
                       text="target", source_text="source", inversion=(rand(1, *SHAPE, seed=3), g)), sched


# ---------------------------------------------------------------- 1. Stage A


def test_inversion_is_60_passes_of_the_ddim_recurrence_and_deterministic():
    unet, ac = LinearEps(a=A), alphas(100)
    x_src = rand(1, *SHAPE, seed=0)
    inv = ddim_invert(unet, make_schedule("100"), x_src, 59)
    t_model = [int(t[0]) for _, t in unet.calls]
    assert t_model == kept(100)[:60] and (t_model[0], t_model[41], t_model[59]) == (0, 414, 595)
    assert inv.x0.shape == (1, 60, *SHAPE) and inv.x_start.shape == (1, *SHAPE)
    # by hand: G_i = c_i·x_i, ε_i = A·x_i, x_{i+1} = √ᾱ_{i+1}·G_i + √(1 − ᾱ_{i+1})·ε_i
    x = x_src.double()
    for i in range(60):
        torch.testing.assert_close(unet.calls[i][0].double(), x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(inv.x0[0, i].double(), c(ac[i]) * x[0], rtol=1e-5, atol=1e-6)
        if i < 59:
            x = math.sqrt(ac[i + 1]) * c(ac[i]) * x + math.sqrt(1 - ac[i + 1]) * A * x
    torch.testing.assert_close(inv.x_start.double(), x, rtol=1e-5, atol=1e-6)
    # each recorded latent from the previous one and its G, one step at a time (no accumulated error)
    for i in range(59):
        step = math.sqrt(ac[i + 1]) * inv.x0[:, i].double() + math.sqrt(1 - ac[i + 1]) * A * unet.calls[i][0].double()
        torch.testing.assert_close(unet.calls[i + 1][0].double(), step, rtol=1e-6, atol=1e-7)
    again = ddim_invert(LinearEps(a=A), make_schedule("100"), x_src, 59)
    assert torch.equal(again.x0, inv.x0) and torch.equal(again.x_start, inv.x_start)


# ---------------------------------------------------------------- 2. the start and the first L1 term


def test_the_loop_starts_at_the_inversion_latent_and_drops_the_l1_term_at_the_first_step():
    cfg = TranslationConfig(mode="image", **{**AGG_ZERO, **SMALL, "lambda_gt": 200.0})
    guide, sched = guide_for(cfg, style=rand(1, *SHAPE, seed=4))  # G unrelated to x: |x̂0 − G| > 0 everywhere
    unet, events = LinearEps(a=A), []
    sample_agg(unet, sched, guide, guide.fixed.inv_start, [torch.Generator().manual_seed(0)],
               callback=lambda e: events.append(e))
    assert torch.equal(unet.calls[0][0], guide.fixed.inv_start)
    assert [e.i for e in events] == [4, 3, 2, 1, 0] and [e.step for e in events] == [1, 2, 3, 4, 5]
    assert events[0].terms["gt"].tolist() == [0.0]
    want = (c(alphas(10)[3]) * unet.calls[1][0] - guide.fixed.inv_x0[:, 3]).abs().mean()
    torch.testing.assert_close(events[1].terms["gt"], want.reshape(1), rtol=1e-6, atol=1e-7)
    assert events[2].terms == {}  # plain steps carry no loss terms
    # with the term dropped, the first step has g = 0: its update is a plain η_edit step of x̂0 + 1e-8
    ac = alphas(10)
    x = unet.calls[0][0].double()
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).double()
    s = sigma(ac[4], ac[3], 0.7)
    want = math.sqrt(ac[3]) * (c(ac[4]) * x + 1e-8) + math.sqrt(1 - ac[3] - s * s) * A * x + s * z
    torch.testing.assert_close(unet.calls[1][0].double(), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- 3.–5. one guided step


def test_score_shift_factor_by_hand():
    sched, ac = make_schedule("100"), alphas(100)
    x0, g = rand(1, *SHAPE, seed=5), rand(1, *SHAPE, seed=6)
    for i, factor in ((59, 5.90), (50, 3.41), (41, 1.99)):
        k = (1 - ac[i]) / math.sqrt(ac[i])
        assert round(k, 2) == factor
        out = shift_x0(sched, x0, g, torch.tensor([i]))
        torch.testing.assert_close(out.double(), x0.double() + k * g.double(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("symmetric", [False, True])
def test_a_guided_step_by_hand(symmetric):
    # only the L1 term: L = 200·mean|c·x − G|, so g = −∂L/∂x = −200·c·sign(c·x − G)/N
    cfg = TranslationConfig(mode="image", symmetric=symmetric, **{**AGG_ZERO, **SMALL, "lambda_gt": 200.0})
    guide, sched = guide_for(cfg, style=rand(1, *SHAPE, seed=4), batch=2)
    ac, i, eta = alphas(10), 3, 0.7
    x = rand(2, *SHAPE, seed=7)
    z = rand(2, *SHAPE, seed=8)
    out = agg_guided_step(LinearEps(a=A), sched, guide, x, torch.tensor([i, i]), z, None, [None],
                          guide.initial_state(2))
    x, ci = x.double(), c(ac[i])
    g = -200 * ci * torch.sign(ci * x - guide.fixed.inv_x0[:, i].double()) / N
    shifted = ci * x + (1 - ac[i]) / math.sqrt(ac[i]) * g  # 3. x̂0' = x̂0 + ((1 − ᾱ)/√ᾱ)·g
    torch.testing.assert_close(out.x0_pred.double(), shifted + 1e-8, rtol=1e-5, atol=1e-6)  # 4. n = 1: + δ_0
    s = sigma(ac[i], ac[i - 1], eta)
    x0_final = shifted + 1e-8
    eps = (x / math.sqrt(ac[i]) - x0_final) / math.sqrt(1 / ac[i] - 1) if symmetric else A * x  # ε_u = A·x
    want = math.sqrt(ac[i - 1]) * x0_final + math.sqrt(1 - ac[i - 1] - s * s) * eps + s * z.double()  # 5.
    torch.testing.assert_close(out.x_prev.double(), want, rtol=1e-5, atol=1e-5)
    # the asymmetric update moves x by √(ᾱ_prev/ᾱ)·(1 − ᾱ)·g more than a plain step; the symmetric one less
    plain = math.sqrt(ac[i - 1]) * (ci * x + 1e-8) + math.sqrt(1 - ac[i - 1] - s * s) * A * x + s * z.double()
    move = math.sqrt(ac[i - 1] / ac[i]) * (1 - ac[i]) - (math.sqrt((1 - ac[i - 1] - s * s) * (1 - ac[i])) if symmetric else 0)
    torch.testing.assert_close(out.x_prev.double() - plain, move * g, rtol=1e-4, atol=1e-5)


def test_asymmetric_and_symmetric_moves_of_spec_section_6():
    ac = alphas(100)
    for i, asym, sym in ((59, 1.033, 0.089), (41, 0.863, 0.062)):
        s = sigma(ac[i], ac[i - 1], 0.7)
        a = math.sqrt(ac[i - 1] / ac[i]) * (1 - ac[i])
        assert round(a, 3) == asym and round(a - math.sqrt((1 - ac[i - 1] - s * s) * (1 - ac[i])), 3) == sym


def test_inner_pass_one_iteration_adds_delta0_and_two_move_at_most_lr():
    cfg1 = TranslationConfig(mode="image", **{**AGG_ZERO, **SMALL, "lambda_gt": 200.0})
    guide, _ = guide_for(cfg1, style=rand(1, *SHAPE, seed=4))
    x_t, shifted, i = rand(2, *SHAPE, seed=9), rand(2, *SHAPE, seed=10), torch.tensor([3, 3])
    out, clip = guide.inner_pass(x_t, shifted, i, [None])
    assert clip is None and torch.equal(out, shifted + 1e-8)
    # n = 2: one AdamW step on δ from 1e-8 with g = 200·sign(x_c − G)/N (L_b's L1 term):
    # δ_1 = δ_0·(1 − lr·wd) − lr·g/(|g| + eps)
    cfg2 = TranslationConfig(mode="image", inner_iters=2, **{**AGG_ZERO, **SMALL, "lambda_gt": 200.0})
    guide2, _ = guide_for(cfg2, style=rand(1, *SHAPE, seed=4))
    out2, _ = guide2.inner_pass(x_t, shifted, i, [None, None])
    grad = 200 * torch.sign(shifted.double() + 1e-8 - guide2.fixed.inv_x0[:, 3].double()) / N
    delta = 1e-8 * (1 - 0.02 * 0.01) - 0.02 * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(out2.double(), shifted.double() + delta, rtol=1e-6, atol=1e-7)
    assert ((out2 - shifted).abs() <= 0.02 + 1e-8 + 1e-7).all() and not torch.equal(out2, shifted + 1e-8)


def test_inner_pass_clip_sees_the_mix_with_x_t_in_each_iteration():
    """Text mode, two iterations: L_b's CLIP term reads mix_j(x_t, x̂0' + δ_0) = s·x_c + (1 − s)·x_t with the
    iteration's own views, and ℓ is taken at the mix with x̂0'' (j = floor(3/10) = 0)."""
    cfg = TranslationConfig(inner_iters=2, **{**AGG_ZERO, **SMALL, "lambda_clip": 200.0, "prog_contrast": True})
    guide, _ = guide_for(cfg, clip=True)
    guide.clip.seen.clear()
    x_t, shifted, i = rand(2, *SHAPE, seed=9), rand(2, *SHAPE, seed=10), torch.tensor([3, 3])
    out, clip = guide.inner_pass(x_t, shifted, i, [torch.zeros(2, 8, 2, 3)] * 2)
    s = math.sqrt(1 - alphas(10)[0])
    mix = lambda x_c: (s * x_c + (1 - s) * x_t.double()) * 0.5 + 0.5  # noqa: E731
    assert len(guide.clip.seen) == 2
    torch.testing.assert_close(guide.clip.seen[0].double(), mix(shifted.double() + 1e-8), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(guide.clip.seen[1].double(), mix(out.double()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(clip.double(), spy_clip_loss(mix(out.double())), rtol=1e-6, atol=1e-6)
    assert not torch.equal(out, shifted + 1e-8)  # the CLIP gradient moved x̂0''


@pytest.mark.parametrize("term", ["l2", "cls"])
def test_inner_pass_reads_the_style_terms_at_any_positive_weight(term):
    """L_b's style terms at weight 0.5 (below 1), one AdamW step δ_1 = δ_0·(1 − lr·wd) − lr·g/(|g| + eps) with g
    by hand: pixel L2, 0.5·2(x_c − style)/N; [CLS] distance (SpyViT [CLS] = channel means of the [0,1] image),
    0.5·(2/3)(cls_c(x_c) − cls_c(style))·0.5/(16·16) at every pixel of channel c."""
    style = rand(1, *SHAPE, seed=4)
    cfg = TranslationConfig(mode="image", inner_iters=2, **{**AGG_ZERO, **SMALL, f"lambda_{term}": 0.5})
    guide, _ = guide_for(cfg, style=style)
    x_t, shifted, i = rand(2, *SHAPE, seed=9), rand(2, *SHAPE, seed=10), torch.tensor([3, 3])
    out, _ = guide.inner_pass(x_t, shifted, i, [None, None])
    x_c = shifted.double() + 1e-8
    if term == "l2":
        grad = 0.5 * 2 * (x_c - style.double()) / N
    else:
        cls = lambda x: (x * 0.5 + 0.5).mean((2, 3))  # noqa: E731
        grad = (0.5 * 2 / 3 * (cls(x_c) - cls(style.double())) * 0.5 / 256)[:, :, None, None].expand_as(x_c)
    delta = 1e-8 * (1 - 0.02 * 0.01) - 0.02 * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(out.double(), shifted.double() + delta, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("noise_aug", [True, False])
def test_step_loss_cls_term_reads_the_mix_or_x0_and_only_where_it_applies(noise_aug):
    """L_a's [CLS] term (SpyViT [CLS] = channel means of the [0,1] input): on mix_i(x_t, x̂0) = s·x̂0 + (1 − s)·x_t
    with noise_aug, on x̂0 without. A style term at weight 0 is not a term at all, and a style weight in text
    mode (no style image) is read by nothing: neither L_a nor the inner pass needs a style there."""
    style = rand(1, *SHAPE, seed=4)
    cfg = TranslationConfig(mode="image", noise_aug=noise_aug, **{**AGG_ZERO, **SMALL, "lambda_cls": 0.5})
    guide, _ = guide_for(cfg, style=style)
    x_t, x0, i = rand(2, *SHAPE, seed=11), rand(2, *SHAPE, seed=12), torch.tensor([3, 3])
    _, terms, _ = guide.agg_loss(x_t, x0, i, guide.initial_state(2))
    s = math.sqrt(1 - alphas(10)[3])
    seen = (s * x0.double() + (1 - s) * x_t.double()) if noise_aug else x0.double()
    cls = lambda x: (x * 0.5 + 0.5).mean((2, 3))  # noqa: E731
    want = ((cls(seen) - cls(style.double())) ** 2).mean(1)
    torch.testing.assert_close(terms["cls"].double(), want, rtol=1e-5, atol=1e-9)
    assert set(terms) == {"range", "gt", "cls"}  # λ_l2 = 0: no pixel term
    text = TranslationConfig(inner_iters=2, **{**AGG_ZERO, **SMALL, "lambda_cls": 5.0, "lambda_l2": 5.0, "lambda_clip": 200.0})
    guide, _ = guide_for(text)
    _, terms, _ = guide.agg_loss(x_t, x0, i, guide.initial_state(2))
    assert set(terms) == {"range", "gt"}
    out, _ = guide.inner_pass(x_t, x0, i, [None, None])  # L_b has no term with weight: g = 0, only the decay
    torch.testing.assert_close(out.double(), x0.double() + 1e-8 * (1 - 0.02 * 0.01), rtol=0, atol=1e-7)


def test_step_loss_identity_term_by_hand():
    """L_a's identity term (faces): 1 − cos(ArcFace(crop(mix)), ArcFace(crop(source))). With images constant
    per channel, SpyArcFace (the normalised channel means of its crop) gives the channel values themselves,
    so the term is 1 − cos of the mix's three values and the source's. No ArcFace, no term (and no error)."""
    const = lambda *v: torch.tensor(v).view(1, 3, 1, 1).expand(1, *SHAPE).clone()  # noqa: E731
    src, x0, x_t = const(0.2, -0.3, 0.5), const(0.1, 0.4, -0.2), const(-0.5, 0.3, 0.6)
    cfg = TranslationConfig(mode="image", **{**AGG_ZERO, **SMALL, "lambda_id": 0.5})
    sched = make_schedule("10")
    inversion = (rand(1, *SHAPE, seed=3), rand(1, 5, *SHAPE, seed=2))
    guide = build_guide(cfg, sched, src, vit=SpyViT(), arcface=SpyArcFace(), style=rand(1, *SHAPE, seed=4),
                        inversion=inversion)
    loss, terms, _ = guide.agg_loss(x_t, x0, torch.tensor([3]), guide.initial_state(1))
    s = math.sqrt(1 - alphas(10)[3])
    mix = s * torch.tensor([0.1, 0.4, -0.2], dtype=torch.float64) + (1 - s) * torch.tensor([-0.5, 0.3, 0.6],
                                                                                          dtype=torch.float64)
    want = 1 - torch.nn.functional.cosine_similarity(mix, torch.tensor([0.2, -0.3, 0.5], dtype=torch.float64), dim=0)
    torch.testing.assert_close(terms["id"].double(), want.view(1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.double(), 0.5 * want.view(1), rtol=1e-5, atol=1e-7)
    bare = build_guide(cfg, sched, src, vit=SpyViT(), style=rand(1, *SHAPE, seed=4), inversion=inversion)
    assert "id" not in bare.agg_loss(x_t, x0, torch.tensor([3]), bare.initial_state(1))[1]


def test_terms_at_weight_zero_cost_no_pass_and_a_weight_below_one_counts():
    """A style or identity weight of 0 is no term: no ViT or ArcFace pass in L_a or L_b, nothing reported. The
    pixel term at weight 0.5 is mean((x̂0 − style)²), half of it in the loss (range 0 inside [−1, 1])."""
    style, vit, arcface = rand(1, *SHAPE, seed=4), SpyViT(), SpyArcFace()
    cfg = TranslationConfig(mode="image", **{**AGG_ZERO, **SMALL, "lambda_range": 1.0})
    inversion = (rand(1, *SHAPE, seed=3), rand(1, 5, *SHAPE, seed=2))
    guide = build_guide(cfg, make_schedule("10"), rand(1, *SHAPE, seed=1), vit=vit, arcface=arcface, style=style,
                        inversion=inversion)
    vit.seen.clear(), arcface.seen.clear()
    x_t, x0, i = rand(2, *SHAPE, seed=11), rand(2, *SHAPE, seed=12) * 0.9, torch.tensor([3, 3])
    _, terms, _ = guide.agg_loss(x_t, x0, i, guide.initial_state(2))
    guide._inner_loss(x_t, x0, i, None)
    assert set(terms) == {"range", "gt"} and vit.seen == [] and arcface.seen == []
    # as DiffuseIT's guide: the ArcFace, the source's identity and a positive weight are each needed
    identity = torch.ones(1, 3) / 3 ** 0.5
    for why, changes in {"weight 0": dict(arcface=arcface, fixed=guide.fixed._replace(src_identity=identity)),
                         "no identity": dict(arcface=arcface)}.items():
        _, terms, _ = dataclasses.replace(guide, **changes).agg_loss(x_t, x0, i, guide.initial_state(2))
        assert "id" not in terms and arcface.seen == [], why
    half = build_guide(TranslationConfig(mode="image", **{**AGG_ZERO, **SMALL, "lambda_l2": 0.5}), make_schedule("10"),
                       rand(1, *SHAPE, seed=1), vit=vit, style=style, inversion=inversion)
    loss, terms, _ = half.agg_loss(x_t, x0, i, half.initial_state(2))
    want = ((x0.double() - style.double()) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(terms["l2"].double(), want, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss.double(), 0.5 * want, rtol=1e-6, atol=1e-9)


def test_stacked_inversions_give_each_row_its_own_target():
    """Two sources in one batch (``stack_guides``): each sample's L1 term reads its own source's G[i]."""
    cfg = TranslationConfig(mode="image", **{**AGG_ZERO, **SMALL, "lambda_gt": 1.0})
    g1, g2 = rand(1, 5, *SHAPE, seed=21), rand(1, 5, *SHAPE, seed=22)
    sched, vit = make_schedule("10"), SpyViT()
    one, two = (build_guide(cfg, sched, rand(1, *SHAPE, seed=k), vit=vit, style=rand(1, *SHAPE, seed=4),
                            inversion=(rand(1, *SHAPE, seed=3), g)) for k, g in ((1, g1), (5, g2)))
    both = stack_guides([one, two], 1)
    x_t, x0, i = rand(2, *SHAPE, seed=11), rand(2, *SHAPE, seed=12), torch.tensor([2, 2])
    _, terms, _ = both.agg_loss(x_t, x0, i, both.initial_state(2))
    want = torch.stack([(x0[0] - g1[0, 2]).abs().mean(), (x0[1] - g2[0, 2]).abs().mean()])
    torch.testing.assert_close(terms["gt"], want, rtol=1e-6, atol=1e-7)


def test_inner_pass_three_iterations_decay_delta_between_two_adamw_steps():
    # G 0.5 above x̂0' everywhere: the sign of g stays −1, so both Adam steps move by +lr and the second
    # decays δ_1 by lr·wd first: δ_2 = δ_1·(1 − lr·wd) + lr·|g|/(|g| + eps)
    shifted = rand(1, *SHAPE, seed=10)
    g_abs = 200 / N
    cfg = TranslationConfig(mode="image", inner_iters=3, **{**AGG_ZERO, **SMALL, "lambda_gt": 200.0})
    guide, _ = guide_for(cfg, style=rand(1, *SHAPE, seed=4), inv_x0=(shifted + 0.5).unsqueeze(1).expand(1, 5, *SHAPE))
    out, _ = guide.inner_pass(rand(1, *SHAPE, seed=9), shifted, torch.tensor([3]), [None] * 3)
    step, keep = 0.02 * g_abs / (g_abs + 1e-8), 1 - 0.02 * 0.01
    delta = (1e-8 * keep + step) * keep + step
    torch.testing.assert_close(out.double(), shifted.double() + delta, rtol=0, atol=2e-7)


# ---------------------------------------------------------------- 6.–7. CLIP weights and ℓ


def spy_clip_loss(x01: torch.Tensor) -> torch.Tensor:
    """SpyClip by hand: −(0.6·mean_red + 0.8·mean_blue) of a [0,1] image."""
    return -(0.6 * x01[:, 0].mean((1, 2)) + 0.8 * x01[:, 2].mean((1, 2)))


@pytest.mark.parametrize("prog, reg, want", [(True, True, [400.0, 100.0, 200.0]), (False, True, [200.0, 100.0, 200.0]),
                                             (True, False, [400.0, 200.0, 200.0]), (False, False, [200.0] * 3)])
def test_clip_weight_of_the_step_loss_by_the_previous_clip_loss(prog, reg, want):
    cfg = TranslationConfig(prog_contrast=prog, regularize_content=reg, **{**AGG_ZERO, **SMALL, "lambda_clip": 200.0})
    guide, _ = guide_for(cfg, clip=True)
    x_t, x0, i = rand(3, *SHAPE, seed=11), rand(3, *SHAPE, seed=12), torch.tensor([3, 3, 3])
    state = GuideState(torch.zeros(3, 3), torch.tensor([-0.4, -0.6, -0.5]))
    loss, terms, new = guide.agg_loss(x_t, x0, i, state, torch.zeros(3, 8, 2, 3))
    s = math.sqrt(1 - alphas(10)[3])  # L_a mixes with s_i
    clip = spy_clip_loss((s * x0.double() + (1 - s) * x_t.double()) * 0.5 + 0.5)
    torch.testing.assert_close(terms["clip"].double(), clip, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss.double(), torch.tensor(want, dtype=torch.float64) * clip, rtol=1e-6, atol=1e-6)
    assert torch.equal(new.prev_clip, terms["clip"])


def test_the_first_step_reads_the_source_clip_loss():
    cfg = TranslationConfig(**{**AGG_ZERO, **SMALL, "lambda_clip": 200.0})
    guide, _ = guide_for(cfg, clip=True)
    l0 = spy_clip_loss(guide.fixed.src.double() * 0.5 + 0.5)
    torch.testing.assert_close(guide.initial_state(2).prev_clip.double(), l0.expand(2), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("i, j, s_j", [(59, 5, 0.173), (50, 5, 0.173), (49, 4, 0.142), (41, 4, 0.142)])
def test_inner_clip_mixes_with_s_of_floor_i_over_10_and_weighs_200(i, j, s_j):
    cfg = TranslationConfig(**{**AGG_ZERO, "method": "agg", "lambda_clip": 200.0, "prog_contrast": True})
    guide, _ = guide_for(cfg, clip=True)
    s = math.sqrt(1 - alphas(100)[j])
    assert round(s, 3) == s_j
    x_t, x_c = rand(2, *SHAPE, seed=13), rand(2, *SHAPE, seed=14)
    loss = guide._inner_loss(x_t, x_c, torch.tensor([i, i]), torch.zeros(2, 8, 2, 3))
    want = 200 * spy_clip_loss((s * x_c.double() + (1 - s) * x_t.double()) * 0.5 + 0.5)
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-6)


def test_clip_loss_after_a_guided_step_is_the_inner_pass_one():
    cfg = TranslationConfig(**{**AGG_ZERO, **SMALL, "lambda_clip": 200.0, "prog_contrast": True})
    guide, sched = guide_for(cfg, clip=True)
    x, i = rand(2, *SHAPE, seed=15), 4
    views = torch.zeros(2, 8, 2, 3)
    out = agg_guided_step(LinearEps(a=A), sched, guide, x, torch.tensor([i, i]), None, views, [views],
                          guide.initial_state(2))
    s = math.sqrt(1 - alphas(10)[i // 10])  # j = 0
    want = spy_clip_loss((s * out.x0_pred.double() + (1 - s) * x.double()) * 0.5 + 0.5)
    torch.testing.assert_close(out.state.prev_clip.double(), want, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(out.state.prev_clip, out.terms["clip"])  # overwrote L_a's value


# ---------------------------------------------------------------- 8. the step loss in image mode


def test_image_step_loss_is_the_sum_of_its_four_terms():
    cfg = TranslationConfig(mode="image", **{**AGG_ZERO, **SMALL, "lambda_cls": 200.0, "lambda_l2": 200.0,
                                             "lambda_range": 200.0, "lambda_gt": 200.0})
    trg = rand(1, *SHAPE, seed=16)
    guide, _ = guide_for(cfg, style=trg)
    x_t, x0, i = rand(2, *SHAPE, seed=17), 1.5 * rand(2, *SHAPE, seed=18), 3  # x̂0 partly outside [-1, 1]
    loss, terms, _ = guide.agg_loss(x_t, x0, torch.tensor([i, i]), guide.initial_state(2))
    x_t, x0, trg = x_t.double(), x0.double(), trg.double()
    s = math.sqrt(1 - alphas(10)[i])
    v01 = (s * x0 + (1 - s) * x_t) * 0.5 + 0.5  # noise_aug: [CLS] of the mix
    want = {"cls": ((v01.mean((2, 3)) - (trg * 0.5 + 0.5).mean((2, 3))) ** 2).mean(1),
            "l2": ((x0 - trg) ** 2).mean((1, 2, 3)),
            "range": ((x0 - x0.clamp(-1, 1)) ** 2).mean((1, 2, 3)),
            "gt": (x0 - guide.fixed.inv_x0[:, i].double()).abs().mean((1, 2, 3))}
    assert set(terms) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(terms[name].double(), value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss.double(), 200 * sum(want.values()), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- 9. blocks, η and the result


def test_default_blocks_etas_and_result_by_hand():
    cfg = TranslationConfig(mode="image", eta_edit=0.3, eta=0.6, eta_boost=0.9, **{**AGG_ZERO, "method": "agg"})
    kinds = [agg_step_kind(cfg, i) for i in range(59, -1, -1)]
    assert kinds == [(True, 0.3)] * 19 + [(False, 0.6)] * 20 + [(False, 0.9)] * 21
    guide, sched = guide_for(cfg, style=rand(1, *SHAPE, seed=4))
    seen = []

    class GradSpy(LinearEps):
        def forward(self, x, t):
            seen.append(x.requires_grad)
            return super().forward(x, t)

    unet = GradSpy(a=A)
    out = sample_agg(unet, sched, guide, guide.fixed.inv_start, [torch.Generator().manual_seed(5)])
    assert seen == [True] * 19 + [False] * 41
    assert [int(t[0]) for _, t in unet.calls] == kept(100)[59::-1]
    ac, gen = alphas(100), torch.Generator().manual_seed(5)
    xs = [x.double() for x, _ in unet.calls]
    for n, i in enumerate(range(59, 0, -1)):  # every g is 0 (all λ 0): guided steps use x̂0 + 1e-8
        eta, guided = kinds[n][1], kinds[n][0]
        s = sigma(ac[i], ac[i - 1], eta)
        z = torch.randn(SHAPE, generator=gen).double()
        x0 = c(ac[i]) * xs[n] + (1e-8 if guided else 0.0)
        want = math.sqrt(ac[i - 1]) * x0 + math.sqrt(1 - ac[i - 1] - s * s) * A * xs[n] + s * z
        torch.testing.assert_close(xs[n + 1], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.x0.double(), c(ac[0]) * xs[59], rtol=1e-6, atol=1e-7)  # x̂0 at i = 0
    assert out.finished == (0,) and out.restarts == (0,)


def test_eta_zero_draws_no_noise():
    cfg = TranslationConfig(mode="image", eta_edit=0.0, eta=0.0, eta_boost=0.0, **{**AGG_ZERO, **SMALL})
    guide, sched = guide_for(cfg, style=rand(1, *SHAPE, seed=4))
    gen = torch.Generator().manual_seed(5)
    before = gen.get_state()
    sample_agg(LinearEps(a=A), sched, guide, guide.fixed.inv_start, [gen])
    assert torch.equal(gen.get_state(), before)
