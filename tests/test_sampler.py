"""The guided loop (SPEC §3) on tiny models: guidance acts, resampling and restarts count right,
seeds reproduce, a batch equals single runs, cancelling stops at once."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dsct import Cancelled, translate
from dsct.guidance import build_guide, vit_features
from dsct.images import fit_to, to_tensor
from dsct.losses import structure_loss, style_cls_loss
from dsct.pipeline import schedule_for
from dsct.sampler import sample_guided

from helpers import picture, small, tiny_models

UNGUIDED = dict(lambda_ssim=0.0, lambda_contra=0.0, lambda_div=0.0, lambda_cls=0.0, lambda_l2=0.0, lambda_range=0.0,
                range_restart=False, colour_match=False)


def _sample(cfg, seeds, *, src_seed=0, style=True, callback=None):
    """Run the sampler on tensors (no PIL rounding) and return (x0, guide, output)."""
    m = tiny_models()
    x_src = to_tensor(fit_to(picture(seed=src_seed), 64, 64))
    x_style = to_tensor(fit_to(picture(seed=99), 64, 64)) if cfg.mode == "image" else None
    sched = schedule_for(cfg.steps)
    guide = build_guide(cfg, sched, x_src, vit=m.vit, clip=m.clip, style=x_style, text="Black Leopard", source_text="Cat")
    out = sample_guided(m.unet, sched, guide, x_src, [torch.Generator().manual_seed(s) for s in seeds],
                        t_start=cfg.t_start, repeats=cfg.resample_repeats,
                        restart_threshold=cfg.restart_threshold if cfg.range_restart else None, callback=callback)
    return out.x0.clamp(-1, 1), guide, out


def _count_unet_calls(monkeypatch_target):
    calls = []
    handle = monkeypatch_target.register_forward_hook(lambda mod, args, out: calls.append(args[1].tolist()))
    return calls, handle


def _structure_distance(features, guide):
    return structure_loss(features.self_sim, guide.fixed.src_self_sim)


def _style_distance(features, guide):
    return style_cls_loss(features.cls, guide.fixed.trg_cls)


@pytest.mark.parametrize("weight, distance", [("lambda_ssim", _structure_distance), ("lambda_cls", _style_distance)])
def test_a_single_loss_pulls_its_distance_below_the_unguided_run(weight, distance):
    """Structure loss alone keeps closer to the source's layout; style [CLS] alone moves toward the style."""
    off = small("image", **UNGUIDED)
    on = dataclasses.replace(off, **{weight: 3e4})
    found = {}
    for name, cfg in (("off", off), ("on", on)):
        x, guide, _ = _sample(cfg, [5])
        found[name] = distance(vit_features(tiny_models().vit, x), guide).item()
    assert found["on"] < 0.8 * found["off"], found


def test_resampling_repeats_the_first_step_exactly():
    cfg = small("image", resample_repeats=4, range_restart=False)
    calls, handle = _count_unet_calls(tiny_models().unet)
    try:
        _sample(cfg, [1])
    finally:
        handle.remove()
    t_first = schedule_for(cfg.steps).timestep_map[cfg.t_start].item()
    firsts = [c for c in calls if c == [float(t_first)]]
    assert len(firsts) == 4
    assert len(calls) == cfg.t_start + 4  # one UNet pass per guided evaluation
    assert calls[-1] == [0.0]


def test_restarts_stop_at_the_cap_and_are_reported():
    # threshold 0: any x̂0 outside [-1, 1] after the first step restarts — the tiny UNet always does
    cfg = small("image", restart_threshold=0.0, max_restarts=2)
    calls, handle = _count_unet_calls(tiny_models().unet)
    try:
        _, _, out = _sample(cfg, [1, 2])
    finally:
        handle.remove()
    assert out.restarts == (2, 2)
    per_attempt = cfg.t_start + cfg.resample_repeats
    failed_attempt = cfg.resample_repeats + 1  # first step with its repeats, then the step that fails
    assert len(calls) == 2 * failed_attempt + per_attempt  # batched: both fail together


def test_batch_equals_single_runs_and_seeds_reproduce():
    cfg = small("text")
    batch, _, out_b = _sample(cfg, [3, 4])
    one, _, out_1 = _sample(cfg, [3])
    two, _, out_2 = _sample(cfg, [4])
    again, _, _ = _sample(cfg, [3])
    assert torch.equal(one, again)
    assert torch.allclose(batch[0], one[0], atol=1e-4)
    assert torch.allclose(batch[1], two[0], atol=1e-4)
    assert out_b.restarts == out_1.restarts + out_2.restarts
    assert not torch.allclose(one, two)


def test_cancel_stops_at_once():
    cfg = small("image", range_restart=False)
    seen = []

    def stop_at_two(event):
        seen.append((event.step, event.total, event.i))
        assert event.x0_pred.shape == (1, 3, 64, 64) and not event.x0_pred.requires_grad
        if event.step == 2:
            raise Cancelled("stop")

    calls, handle = _count_unet_calls(tiny_models().unet)
    try:
        with pytest.raises(Cancelled):
            _sample(cfg, [1], callback=stop_at_two)
    finally:
        handle.remove()
    assert len(calls) == 2 and seen == [(1, cfg.t_start + 2, cfg.t_start), (2, cfg.t_start + 2, cfg.t_start)]


def test_translate_end_to_end_both_modes():
    m = tiny_models()
    text = translate(m, picture(96, 64), text="Black Leopard", source_text="Cat", config=small("text", samples=2, seed=10, max_long_side=96))
    assert [r.rank for r in text] == [1, 2] and sorted(r.seed for r in text) == [10, 11]
    assert all(r.image.size == (96, 64) and r.tiny for r in text)  # source aspect kept
    assert {"ssim", "contra", "clip", "range"} <= set(text[0].terms)
    style = translate(m, picture(64, 96), style=picture(seed=3), config=small("image", max_long_side=96))
    assert style[0].image.size == (64, 96) and "cls" in style[0].terms and "clip" not in style[0].terms


def test_faces_generator_uses_identity_loss():
    m = tiny_models("ffhq", arcface=True)
    cfg = small("image", lambda_id=100.0)
    out = translate(m, picture(), style=picture(seed=3), config=cfg)
    assert "id" in out[0].terms and 0.0 <= out[0].terms["id"] <= 2.0


def test_the_deadline_clock_by_hand(monkeypatch):
    """Two evaluations took 4 s from t = 100: 2 s each. At t = 104, 3 more end at 110."""
    from dsct import sampler

    now = [100.0]
    monkeypatch.setattr(sampler, "_now", lambda: now[0])
    clock = sampler._Clock(deadline=110.0)
    assert clock.fits(10**6)  # nothing timed yet: anything fits
    clock.tick()
    clock.tick()
    now[0] = 104.0
    assert clock.fits(3)  # 104 + 3·2 = 110: exactly at the deadline fits
    assert not clock.fits(4)  # 112
    assert sampler._Clock(deadline=None).fits(10**9)
