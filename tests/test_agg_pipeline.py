"""AGG through ``translate`` / ``translate_many`` on the tiny real models: the work it does (hooks on the
real modules, benchmarks/counters.py), batch equivalence, seeds and ranking, cancelling and the deadline.

Small settings: 10 respaced steps from index 4 (skip 5), t_edit 3 → guided steps 4 and 3, plain 2, 1, 0;
so one source costs 5 inversion passes and each sample 5 loop passes (2 with grad).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.counters import params_with_grad, watch_models
from dsct import Job, sampler, translate, translate_many
from dsct.budget import agg_work
from dsct.errors import Cancelled, TimeLimitExceeded
from dsct.guidance import build_guide
from dsct.images import fit_to, to_tensor
from dsct.pipeline import schedule_for
from dsct.sampler import ddim_invert, sample_agg

from closed_form import FakeClock
from helpers import picture, tiny_models
from dsct.config import preset

AGG_SMALL = dict(size=64, max_long_side=64, steps=10, skip=5, t_edit=3, t_boost=4)
TEXTS = dict(text="Black Leopard", source_text="Cat")


def agg(mode: str, **overrides):
    return preset(mode, method="agg", **{**AGG_SMALL, **overrides})


@pytest.mark.parametrize("mode", ["text", "image"])
def test_inversion_once_per_source_and_one_grad_pass_per_guided_step(mode):
    m = tiny_models()
    cfg = agg(mode, samples=2)
    jobs = [Job(picture(seed=s), **TEXTS) if mode == "text" else Job(picture(seed=s), style=picture(seed=9))
            for s in (0, 1)]
    with watch_models(m) as counter:
        results = translate_many(m, jobs, config=cfg)
        counts = counter.snapshot()
    work = agg_work(cfg)
    assert (work.inversion, work.guided, work.plain) == (5, 2, 3)
    # 2 sources × 5 inversion passes of one image, then 5 loop passes of the 4-sample batch
    assert counts["unet.forward"] == 2 * 5 + 5
    assert counts["unet.images"] == work.forwards(samples=2, sources=2) == 2 * 5 + 5 * 4
    assert counts["unet.backward"] == work.guided == 2  # one backward through the UNet per guided step
    assert [len(r) for r in results] == [2, 2] and params_with_grad(m) == (0, 0)
    if mode == "text":  # no ViT pass inside text steps: source features (2) and ranking (2 × 2) only
        assert counts["vit.backward"] == 0
        for name in m.clip.names:  # per guided step one L_a encode with grad and one inner encode without
            assert counts[f"clip:{name}.backward"] == 2
    else:  # one ViT pass with grad per guided step ([CLS]); none in the inner pass at inner_iters = 1
        assert counts["vit.backward"] == 2


def _sample(mode: str, seeds, **overrides):
    """The loop alone for ``seeds`` on one source, from one shared inversion."""
    m = tiny_models()
    cfg = agg(mode, **overrides)
    sched = schedule_for(cfg.steps)
    x_src = to_tensor(fit_to(picture(seed=0), 64, 64))
    style = to_tensor(fit_to(picture(seed=9), 64, 64)) if mode == "image" else None
    inversion = ddim_invert(m.unet, sched, x_src, cfg.t_start)
    guide = build_guide(cfg, sched, x_src, vit=m.vit, clip=m.clip, style=style, inversion=inversion, **TEXTS)
    return sample_agg(m.unet, sched, guide, inversion.x_start, [torch.Generator().manual_seed(s) for s in seeds])


@pytest.mark.parametrize("mode, overrides", [("text", {}), ("image", {"inner_iters": 2}), ("text", {"symmetric": True})])
def test_a_batch_equals_its_samples_run_alone(mode, overrides):
    # The tiny random UNet is not batch-invariant to the last bit (unguided, batch 2 vs 1 differs by 3e-5
    # on an x̂0 that reaches ±15 here): tolerances of that order, far below what shared noise, views or ℓ
    # between samples would change (the two samples differ by O(1)).
    together = _sample(mode, [3, 4], **overrides)
    for k, seed in enumerate((3, 4)):
        alone = _sample(mode, [seed], **overrides)
        torch.testing.assert_close(together.x0[k], alone.x0[0], rtol=1e-4, atol=1e-3)
        for name, value in alone.terms.items():
            torch.testing.assert_close(together.terms[name][k], value[0], rtol=1e-5, atol=1e-5)
    assert (together.x0[0] - together.x0[1]).abs().max() > 0.1  # different seeds, different samples


def test_translate_seeds_ranks_and_reproduces():
    m = tiny_models()
    cfg = agg("text", samples=2, seed=7)
    first = translate(m, picture(), config=cfg, **TEXTS)
    again = translate(m, picture(), config=cfg, **TEXTS)
    assert sorted(r.seed for r in first) == [7, 8] and [r.rank for r in first] == [1, 2]
    assert set(first[0].terms) == {"range", "gt", "clip"} and first[0].restarts == 0
    assert [r.seed for r in first] == [r.seed for r in again]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(first, again))


def test_a_callback_sees_every_step_and_can_cancel_at_once():
    m = tiny_models()
    events = []
    translate(m, picture(), config=agg("image"), style=picture(seed=9),
              callback=lambda e: events.append((e.step, e.total, e.i, sorted(e.terms), e.sample_ids)))
    guided = ["cls", "gt", "l2", "range"]
    assert events == [(1, 5, 4, guided, (0,)), (2, 5, 3, guided, (0,)), (3, 5, 2, [], (0,)), (4, 5, 1, [], (0,)),
                      (5, 5, 0, [], (0,))]

    def stop(event):
        if event.step == 2:
            raise Cancelled("stop")

    with watch_models(m) as counter, pytest.raises(Cancelled):
        translate(m, picture(), config=agg("image"), style=picture(seed=9), callback=stop)
    assert counter.snapshot()["unet.forward"] == 5 + 2  # the inversion, then two steps


def test_a_step_that_would_end_past_the_deadline_is_not_begun(monkeypatch):
    m = tiny_models()
    clock = FakeClock()
    monkeypatch.setattr(sampler, "_now", clock)
    handle = m.unet.register_forward_hook(clock.advance)  # every UNet pass costs 1 s
    try:
        with pytest.raises(TimeLimitExceeded) as err:
            # the inversion's 5 passes start the loop at 5 s; 1 s per step after that: the 3rd would end at 8.5+
            translate(m, picture(), config=agg("image"), style=picture(seed=9), deadline=7.5)
    finally:
        handle.remove()
    assert str(err.value) == ("the GPU time ran out after 2 of 5 AGG steps, before the samples finished: "
                              "lower steps or samples, or raise skip")
    assert clock.calls == 5 + 2
