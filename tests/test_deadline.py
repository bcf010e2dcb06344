"""The sampler's deadline (a GPU time budget): near it no restart starts, a step that cannot end
in time is not begun, and the finished samples come back. Time is a fake clock that the UNet
advances, so every case is counted by hand: one guided evaluation costs ``seconds[k]``."""

from __future__ import annotations

import pytest
import torch

from dsct import TimeLimitExceeded, translate
from dsct import sampler
from dsct.guidance import build_guide
from dsct.images import fit_to, to_tensor
from dsct.pipeline import schedule_for

from closed_form import FakeClock
from helpers import picture, small, tiny_models

# steps 10, skip 5: t_start 4; with 2 repeats an attempt is 6 evaluations and the first
# restart test (after step t=3) comes after 3 of them.
PER_ATTEMPT, FIRST_TEST = 6, 3


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(sampler, "_now", fake)
    handle = tiny_models().unet.register_forward_hook(fake.advance)
    yield fake
    handle.remove()


def _run(cfg, seeds, deadline, threshold):
    m = tiny_models()
    x_src = to_tensor(fit_to(picture(), 64, 64))
    x_style = to_tensor(fit_to(picture(seed=99), 64, 64))
    sched = schedule_for(cfg.steps)
    guide = build_guide(cfg, sched, x_src, vit=m.vit, clip=m.clip, style=x_style)
    return sampler.sample_guided(m.unet, sched, guide, x_src, [torch.Generator().manual_seed(s) for s in seeds],
                                 t_start=cfg.t_start, repeats=cfg.resample_repeats, restart_threshold=threshold,
                                 deadline=deadline)


CFG = small("image", max_restarts=3)  # threshold 0 below: the tiny UNet's x̂0 always leaves [-1, 1]


def test_without_time_for_a_whole_new_attempt_no_restart_starts(clock):
    # at the first test: 3 s spent, 3 evaluations left + 6 for a new attempt = 12 s > 11.5
    out = _run(CFG, [1, 2], deadline=11.5, threshold=0.0)
    assert clock.calls == PER_ATTEMPT
    assert out.restarts == (0, 0) and out.finished == (0, 1)
    assert out.notes == {0: sampler.TIME_NOTE, 1: sampler.TIME_NOTE}


def test_a_restart_that_fits_runs_and_the_next_one_does_not(clock):
    # first test at 3 s: 3 + 3 + 6 = 12 <= 12, restart; second test at 6 s: 6 + 3 + 6 = 15 > 12
    out = _run(CFG, [1, 2], deadline=12.0, threshold=0.0)
    assert clock.calls == FIRST_TEST + PER_ATTEMPT
    assert out.restarts == (1, 1) and out.finished == (0, 1)
    assert set(out.notes) == {0, 1}


def test_no_deadline_restarts_to_the_cap(clock):
    out = _run(CFG, [1], deadline=None, threshold=0.0)
    assert out.restarts == (3,) and out.notes == {}
    assert clock.calls == 3 * FIRST_TEST + PER_ATTEMPT


def test_a_step_that_would_end_past_the_deadline_is_not_begun(clock):
    with pytest.raises(TimeLimitExceeded, match="after 2 guided steps, before any sample finished"):
        _run(CFG, [1], deadline=2.5, threshold=None)  # at 2 s one more step would end at 3 s
    assert clock.calls == 2


def _range_at_first_test(seeds):
    """Weighted range loss of each sample at the first restart test (a run without restarts)."""
    seen = {}
    m = tiny_models()
    x_src, x_style = to_tensor(fit_to(picture(), 64, 64)), to_tensor(fit_to(picture(seed=99), 64, 64))
    sched = schedule_for(CFG.steps)
    guide = build_guide(CFG, sched, x_src, vit=m.vit, clip=m.clip, style=x_style)
    sampler.sample_guided(m.unet, sched, guide, x_src, [torch.Generator().manual_seed(s) for s in seeds],
                          t_start=CFG.t_start, repeats=CFG.resample_repeats,
                          callback=lambda e: seen.setdefault(e.step, CFG.lambda_range * e.terms["range"]))
    return seen[FIRST_TEST].tolist()


def test_the_finished_samples_are_returned_when_a_restart_runs_out_of_time(monkeypatch):
    low, high = sorted(_range_at_first_test([1, 2]))
    assert low < high
    fake = FakeClock(costs=[1.0] * 7 + [10.0])  # the 8th evaluation (2nd of the restart) is slow
    monkeypatch.setattr(sampler, "_now", fake)
    handle = tiny_models().unet.register_forward_hook(fake.advance)
    try:
        # one sample restarts at 3 s (3 + 3 + 6 = 12 <= 14), the other finishes at 6 s; the restart's
        # 2nd evaluation ends at 17 s, and the next one (17 s / 8 = 2.1 s per evaluation so far, 17 + 2.1 > 14) is not begun
        out = _run(CFG, [1, 2], deadline=14.0, threshold=(low + high) / 2)
    finally:
        handle.remove()
    assert fake.calls == PER_ATTEMPT + 2
    assert len(out.finished) == 1 and out.x0.shape[0] == 1
    restarted = 1 - out.finished[0]
    assert out.restarts[restarted] == 1 and out.restarts[out.finished[0]] == 0


def test_translate_returns_only_finished_samples_with_their_seeds(clock):
    results = translate(tiny_models(), picture(), style=picture(seed=99),
                        config=small("image", max_restarts=3, restart_threshold=0.0, samples=2, seed=5),
                        deadline=11.5)
    assert sorted(r.seed for r in results) == [5, 6]
    assert all(r.note == sampler.TIME_NOTE and r.restarts == 0 for r in results)


def test_translate_refuses_a_deadline_that_is_not_a_time():
    with pytest.raises(Exception) as info:
        translate(tiny_models(), picture(), style=picture(seed=99), config=small("image"), deadline="soon")
    assert "deadline='soon' is not allowed" in str(info.value)
