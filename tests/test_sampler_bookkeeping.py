"""The sampler's bookkeeping around restarts, deadlines and callbacks, counted by hand.

The closed-form "UNet" (ε = a·x_t) and a guide whose range term is a table of (sample, step) make
every restart decision known in advance, so the expected callback events, restart counts, notes and
deadline outcomes below are written out by hand. Each run takes milliseconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dsct import sampler
from dsct.diffusion import make_schedule
from dsct.errors import TimeLimitExceeded
from dsct.sampler import TIME_NOTE, sample_guided

from closed_form import FakeClock, LinearEps

SCHED = make_schedule("10")
T_START, REPEATS, SHAPE = 4, 2, (3, 8, 8)
PER_ATTEMPT = T_START + REPEATS  # evaluations at t = 4, 4, 3, 2, 1, 0; restart tests after the 3rd to 6th
X_SRC = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(7)) * 2 - 1
THRESHOLD = 0.25


class _Rows(SimpleNamespace):
    """A guide state that knows which samples it belongs to."""

    def take(self, keep):
        return _Rows(rows=[self.rows[k] for k in keep])


class TableGuide:
    """Range term = bad[sample][t] (else 0), no gradient; records which samples each call's guide
    and state belong to."""

    fixed = SimpleNamespace(class_id=None)  # no class held (the stand-in UNet has no classes)

    def __init__(self, bad, *, max_restarts, lambda_range=1.0, rows=None, seen=None):
        self.bad, self.rows = bad, list(range(len(bad))) if rows is None else rows
        self.config = SimpleNamespace(lambda_range=lambda_range, max_restarts=max_restarts)
        self.seen = [] if seen is None else seen

    def take(self, rows):
        return TableGuide(self.bad, max_restarts=self.config.max_restarts, lambda_range=self.config.lambda_range,
                          rows=[self.rows[r] for r in rows], seen=self.seen)

    def initial_state(self, batch):
        return _Rows(rows=list(self.rows))

    def draw_views(self, generators, height, width):
        return None

    def __call__(self, x_t, x0_pred, i, state, views=None):
        t = int(i[0])
        self.seen.append((t, tuple(self.rows), tuple(state.rows)))
        value = [self.bad[k].get(t, 0.0) for k in self.rows]
        return torch.zeros(x_t.shape[0]), {"range": torch.tensor(value)}, state


def run(bad, *, max_restarts=1, lambda_range=1.0, threshold=THRESHOLD, deadline=None, callback=None, clock=None):
    """Sample len(bad) seeds; with a clock, each UNet call advances it."""
    unet = LinearEps()
    if clock is not None:
        unet.register_forward_hook(clock.advance)
    guide = TableGuide(bad, max_restarts=max_restarts, lambda_range=lambda_range)
    out = sample_guided(unet, SCHED, guide, X_SRC, [torch.Generator().manual_seed(10 + k) for k in range(len(bad))],
                        t_start=T_START, repeats=REPEATS, restart_threshold=threshold, deadline=deadline,
                        callback=callback)
    return out, unet, guide.seen


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(sampler, "_now", fake)
    return fake


# ---------------------------------------------------------------- restarts and callbacks


def test_callback_events_follow_each_sample_through_drops_and_restarts():
    # sample 0 fails at t = 3, sample 1 at t = 0, sample 2 never; one restart each at most
    bad = [{3: 1.0}, {0: 1.0}, {}]
    events = []
    out, _, seen = run(bad, callback=lambda e: events.append(
        (e.step, e.total, e.i, e.sample_ids, e.restarts, e.terms["range"].tolist(), e.x0_pred.shape[0])))
    first = [(1, 4, (0, 1, 2), [0.0, 0.0, 0.0]), (2, 4, (0, 1, 2), [0.0, 0.0, 0.0]), (3, 3, (0, 1, 2), [1.0, 0.0, 0.0]),
             (4, 2, (1, 2), [0.0, 0.0]), (5, 1, (1, 2), [0.0, 0.0]), (6, 0, (1, 2), [1.0, 0.0])]
    again = [(1, 4, (0, 1), [0.0, 0.0]), (2, 4, (0, 1), [0.0, 0.0]), (3, 3, (0, 1), [1.0, 0.0]),
             (4, 2, (0, 1), [0.0, 0.0]), (5, 1, (0, 1), [0.0, 0.0]), (6, 0, (0, 1), [0.0, 1.0])]
    want = [(s, PER_ATTEMPT, i, ids, (0, 0, 0), r, len(ids)) for s, i, ids, r in first]
    want += [(s, PER_ATTEMPT, i, ids, (1, 1, 0), r, len(ids)) for s, i, ids, r in again]
    assert events == want
    # every evaluation's guide and state hold the rows of the samples it evaluates
    assert [(t, rows) for t, rows, _ in seen] == [(i, ids) for _, _, i, ids, *_ in want]
    assert all(rows == state_rows for _, rows, state_rows in seen)
    assert out.restarts == (1, 1, 0) and out.finished == (0, 1, 2) and out.notes == {}
    # the last step's range term of each sample, from its own row
    assert out.terms["range"].tolist() == [0.0, 1.0, 0.0] and out.x0.shape == (3, *SHAPE)


def test_samples_dropped_at_different_steps_of_one_attempt_all_restart():
    out, unet, _ = run([{3: 1.0}, {1: 1.0}], max_restarts=2)
    assert out.restarts == (2, 2) and out.finished == (0, 1)
    # per attempt: 3 evaluations with both, then 2 with sample 1 alone; the last attempt runs whole
    assert len(unet.calls) == 2 * 5 + PER_ATTEMPT
    assert [c[0].shape[0] for c in unet.calls[:5]] == [2, 2, 2, 1, 1]


def test_a_range_loss_exactly_at_the_threshold_does_not_restart():
    out, unet, _ = run([{2: THRESHOLD}], max_restarts=3)  # 0.25 > 0.25 is false
    assert out.restarts == (0,) and len(unet.calls) == PER_ATTEMPT
    out, unet, _ = run([{2: 0.125}], lambda_range=2.0, max_restarts=3)  # weighted 2 · 0.125 = 0.25, same
    assert out.restarts == (0,) and len(unet.calls) == PER_ATTEMPT
    out, _, _ = run([{2: 0.2501}], max_restarts=3)  # just above: restarts to the cap
    assert out.restarts == (3,)


def test_defaults_are_one_evaluation_per_step_and_no_progress_bar(capsys):
    unet = LinearEps()
    guide = TableGuide([{}], max_restarts=0)
    out = sample_guided(unet, SCHED, guide, X_SRC, [torch.Generator().manual_seed(1)], t_start=T_START)
    assert [int(t[0]) for _, t in unet.calls] == [int(SCHED.timestep_map[k]) for k in range(T_START, -1, -1)]
    assert out.notes == {} and out.restarts == (0,)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ---------------------------------------------------------------- the deadline


def test_without_time_for_this_attempt_and_a_new_one_the_sample_goes_on_with_a_note(clock):
    # first test at 3 s: the 3 evaluations left and 6 for a new attempt end at 12 s > 11.5
    out, _, _ = run([{3: 1.0, 2: 1.0}, {}], max_restarts=3, deadline=11.5, clock=clock)
    assert clock.calls == PER_ATTEMPT
    assert out.restarts == (0, 0) and out.finished == (0, 1)
    assert out.notes == {0: TIME_NOTE}
    assert out.terms["range"].tolist() == [0.0, 0.0]


def test_a_restart_that_fits_starts_and_its_own_restart_does_not(clock):
    # first test at 3 s: 3 + 3 + 6 = 12 <= 12, restart; the restart's own test at 6 s: 6 + 3 + 6 > 12
    out, _, _ = run([{3: 1.0}], max_restarts=3, deadline=12.0, clock=clock)
    assert clock.calls == 3 + PER_ATTEMPT
    assert out.restarts == (1,) and out.notes == {0: TIME_NOTE}


def test_the_deadline_counts_the_rest_of_the_attempt_not_just_a_new_one(clock):
    # at the test after t = 3 (3 s): 3 evaluations left + 6 = 12 s; with a deadline of 11 only a
    # count that forgot the rest of this attempt (3 + 6 = 9 <= 11) would restart
    out, _, _ = run([{3: 1.0}], max_restarts=3, deadline=11.0, clock=clock)
    assert out.restarts == (0,) and out.notes == {0: TIME_NOTE}


def test_finished_samples_come_back_when_a_restart_runs_out_of_time(monkeypatch):
    fake = FakeClock(costs=[1.0] * 7 + [10.0])  # the restart's 2nd evaluation takes 10 s
    monkeypatch.setattr(sampler, "_now", fake)
    # sample 0 restarts at 3 s (3 + 3 + 6 = 12 <= 14); sample 1 finishes at 6 s; after 8 evaluations
    # at 17 s (2.125 s each) the 9th would end past 14 s, so it is not begun
    out, _, _ = run([{3: 1.0}, {}], max_restarts=3, deadline=14.0, clock=fake)
    assert fake.calls == PER_ATTEMPT + 2
    assert out.finished == (1,) and out.x0.shape == (1, *SHAPE)
    assert out.restarts == (1, 0) and out.notes == {}


def test_no_sample_finished_before_the_deadline_is_an_error_that_says_what_to_lower(clock):
    with pytest.raises(TimeLimitExceeded) as info:
        run([{}], threshold=None, deadline=2.5, clock=clock)  # at 2 s a 3rd evaluation would end at 3 s
    assert str(info.value) == ("the GPU time ran out after 2 guided steps, before any sample finished: "
                               "lower steps, samples or resample_repeats, or raise skip")
    assert clock.calls == 2


def test_a_note_is_final_even_when_time_frees_up_later(monkeypatch):
    fake = FakeClock(costs=[2.0] * 3 + [0.1] * 3)
    monkeypatch.setattr(sampler, "_now", fake)
    # at the test after t = 3 (6 s, 2 s each): 6 + (3 + 6)·2 = 24 > 20, noted; at the test after t = 2
    # (6.1 s, 1.525 s each) 6.1 + (2 + 6)·1.525 = 18.3 would fit, but the sample keeps its note
    out, _, _ = run([{3: 1.0, 2: 1.0}], max_restarts=3, deadline=20.0, clock=fake)
    assert fake.calls == PER_ATTEMPT
    assert out.restarts == (0,) and out.notes == {0: TIME_NOTE}
