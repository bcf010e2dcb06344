"""The guided DDPM loop of SPEC §3, with resampling at the first step and capped range restarts; and
AGG's DDIM loop of SPEC-AGG §4–6 (``ddim_invert`` once per source, then ``sample_agg``).

One UNet pass with grad per guided evaluation gives both the posterior mean and the guidance
gradient (SPEC §3 fix: the reference ran the UNet twice). Samples are independent: each draws its
noise from its own CPU generator, and a sample that must restart leaves the batch at once and runs
again afterwards, so a batch with seeds (a, b) gives what runs with a and with b give alone.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import TranslationConfig
from .diffusion import (Schedule, ddim_invert_step, ddim_step, eps_from_x0, model_timesteps, p_mean_variance,
                        predict_x0, q_sample, renoise, shift_x0)
from .errors import TimeLimitExceeded
from .guidance import Guide, GuideState, model_dtype

__all__ = ["StepEvent", "StepOutput", "SampleOutput", "StepFn", "randn", "draw_classes", "unet_out", "guided_step", "sample_guided",
           "evaluations_per_attempt", "Inversion", "unet_eps", "ddim_invert", "agg_step_kind", "agg_guided_step",
           "plain_ddim_step", "sample_agg"]


@dataclass(frozen=True)
class StepEvent:
    """What a progress callback sees after each guided evaluation."""

    step: int  # 1-based count of guided evaluations in this attempt
    total: int  # guided evaluations per attempt: (t_start + 1) + (repeats - 1)
    i: int  # spaced timestep index
    x0_pred: Tensor  # (b,3,H,W) current x̂0 of the samples still running, detached
    terms: dict[str, Tensor]  # unweighted loss terms, (b,)
    sample_ids: tuple[int, ...]  # which samples of the batch x0_pred holds
    restarts: tuple[int, ...]  # restarts so far, per sample of the whole batch


@dataclass(frozen=True)
class SampleOutput:
    """The samples that finished; before a deadline that is all of them."""

    x0: Tensor  # (F,3,H,W) final x̂0 of the finished samples, unclamped
    terms: dict[str, Tensor]  # last step's loss terms, (F,)
    restarts: tuple[int, ...]  # per sample of the whole batch
    finished: tuple[int, ...] = ()  # which samples x0 holds, in order
    notes: dict[int, str] = field(default_factory=dict)  # sample -> why it is not what was asked


TIME_NOTE = "out of range, not restarted: too little GPU time left"
_now = time.monotonic  # the deadline's clock (tests replace it)


class _Clock:
    """Seconds per guided evaluation so far, to tell what still fits before a deadline (time.monotonic)."""

    def __init__(self, deadline: float | None):
        self.deadline, self.start, self.count = deadline, _now(), 0

    def tick(self) -> None:
        self.count += 1

    def fits(self, evaluations: int) -> bool:
        if self.deadline is None or self.count == 0:
            return True
        now = _now()
        return now + evaluations * (now - self.start) / self.count <= self.deadline


def randn(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device) -> Tensor:
    """Standard normal noise, one CPU generator per sample, so results do not depend on batching."""
    # non_blocking: an upload from pageable memory is staged at once, so the host need not wait for the GPU
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device, non_blocking=True)


def draw_classes(unet: torch.nn.Module, generators: Sequence[torch.Generator], held: Tensor | None,
                 device: torch.device) -> Tensor | None:
    """The class ids of one UNet evaluation (SPEC §6), None for a generator without classes.

    ``held`` (``FixedFeatures.class_id``: one row, or one per sample) holds a class for the whole run;
    without it each sample draws a new uniform class from its own generator, as the reference does
    before every evaluation, so a sample gets the same classes alone as in a batch.
    """
    classes = getattr(unet, "num_classes", None)
    if classes is None:
        return None
    if held is not None:
        return held.expand(len(generators)) if held.shape[0] == 1 else held
    return torch.cat([torch.randint(classes, (1,), generator=g) for g in generators]).to(device, non_blocking=True)


def unet_out(unet: torch.nn.Module, schedule: Schedule, x: Tensor, i: Tensor, y: Tensor | None = None) -> Tensor:
    """One UNet pass at spaced step i, in fp32: (ε, v). ``y``: the class ids of a class-conditional generator."""
    return unet(x.to(model_dtype(unet)), model_timesteps(schedule, i), *(() if y is None else (y,))).float()


def evaluations_per_attempt(t_start: int, repeats: int) -> int:
    return t_start + repeats


def _p_sample(mean: Tensor, log_variance: Tensor, i: Tensor, noise: Tensor) -> Tensor:
    nonzero = (i > 0).to(mean.dtype).view(-1, *([1] * (mean.ndim - 1)))  # no noise at i = 0
    return mean + nonzero * torch.exp(0.5 * log_variance) * noise


class StepOutput(NamedTuple):
    """What one guided step returns: detached tensors only."""

    x_prev: Tensor  # (B,3,H,W) the sample at the next step: μ' + σ·noise (no noise at i = 0)
    x0_pred: Tensor  # (B,3,H,W) x̂0 of this step
    terms: dict[str, Tensor]  # unweighted loss terms, (B,)
    state: GuideState


def guided_step(unet: torch.nn.Module, schedule: Schedule, guide: Guide, x: Tensor, i: Tensor, noise: Tensor,
                views: Tensor | None, state: GuideState, y: Tensor | None = None) -> StepOutput:
    """One UNet pass with grad: μ' = μ + σ²·g with g = −∂L/∂x_t (Sohl-Dickstein mean shift), then
    x_{i−1} = μ' + σ·noise.

    Device tensors in, detached device tensors out; nothing is drawn, uploaded or read back, so
    the whole step can be captured (``dsct.capture``). The schedule must live on x's device.
    """
    x = x.detach().requires_grad_(True)
    mv = p_mean_variance(schedule, unet_out(unet, schedule, x, i, y), x, i)
    loss, terms, state = guide(x, mv.x0_pred, i, state, views)
    # all weights zero (unguided): no graph to differentiate, the gradient is zero
    grad = torch.autograd.grad(loss.sum(), x)[0] if loss.requires_grad else torch.zeros_like(x)
    mean = mv.mean.detach() - mv.variance.detach() * grad
    x_prev = _p_sample(mean, mv.log_variance.detach(), i, noise)
    return StepOutput(x_prev, mv.x0_pred.detach(), {k: v.detach() for k, v in terms.items()}, state)


def _run_attempt(unet, step_fn, schedule, guide, x_src, generators, ids, *, t_start, repeats, restart_threshold, callback, bar,
                 restarts, clock, notes):
    """One pass from t_start to 0 for the samples `ids`; returns finished x̂0s, who must restart, and
    whether the deadline stopped it. A restart starts only if this attempt and a whole new one fit
    before the deadline; otherwise the sample goes on (noted), as at the restart cap."""
    device, shape = x_src.device, x_src.shape[1:]
    guide = guide.take(ids)  # these samples' rows of the fixed features (all of them when shared)
    state = guide.initial_state(len(ids))
    src = x_src.expand(len(ids), -1, -1, -1) if x_src.shape[0] == 1 else x_src[torch.tensor(ids, device=device)]
    x = q_sample(schedule, src, torch.full((len(ids),), t_start, device=device), randn([generators[k] for k in ids], shape, device))
    finished: dict[int, tuple[Tensor, dict[str, Tensor]]] = {}
    failed: list[int] = []
    step, total = 0, evaluations_per_attempt(t_start, repeats)
    for t in range(t_start, -1, -1):
        i = torch.full((len(ids),), t, device=device, dtype=torch.long)
        reps = repeats if t == t_start else 1
        for r in range(reps):
            if not clock.fits(1):
                return finished, failed, True
            gens = [generators[k] for k in ids]
            # each sample's draws: its class (512 generator), its CLIP views, then the step's noise
            y = draw_classes(unet, gens, guide.fixed.class_id, device)
            views = guide.draw_views(gens, *shape[1:])
            x_prev, x0_pred, terms, state = step_fn(guide, x, i, randn(gens, shape, device), views, state, y)
            if r < reps - 1:  # resampling: back to t with the forward step of β_t
                x = renoise(schedule, x_prev, i, randn(gens, shape, device))
            step += 1
            clock.tick()
            bar.update(1)
            if callback is not None:
                callback(StepEvent(step, total, t, x0_pred, terms, tuple(ids), tuple(restarts)))
        if restart_threshold is not None and t < t_start:
            bad = (guide.config.lambda_range * terms["range"] > restart_threshold).tolist()
            drop = [n for n, b in enumerate(bad) if b and restarts[ids[n]] < guide.config.max_restarts and ids[n] not in notes]
            if not clock.fits(t + total):  # the rest of this attempt, then a whole new one; a note is final
                notes.update({ids[n]: TIME_NOTE for n in drop})
            elif drop:
                failed += [ids[n] for n in drop]
                keep = [n for n in range(len(ids)) if n not in drop]
                ids = [ids[n] for n in keep]
                if not ids:
                    break
                idx = torch.tensor(keep, device=device)
                x_prev, x0_pred, state, guide = x_prev[idx], x0_pred[idx], state.take(keep), guide.take(keep)
                terms = {k: v[idx] for k, v in terms.items()}
        x = x_prev
    for n, k in enumerate(ids):
        finished[k] = (x0_pred[n], {name: v[n] for name, v in terms.items()})
    return finished, failed, False


StepFn = Callable[[Guide, Tensor, Tensor, Tensor, "Tensor | None", GuideState, "Tensor | None"], StepOutput]  # guided_step from guide on


def sample_guided(
    unet: torch.nn.Module,
    schedule: Schedule,
    guide: Guide,
    x_src: Tensor,
    generators: Sequence[torch.Generator],
    *,
    t_start: int,
    repeats: int = 1,
    restart_threshold: float | None = None,
    callback: Callable[[StepEvent], None] | None = None,
    disable: bool = True,
    deadline: float | None = None,
    step: StepFn | None = None,
) -> SampleOutput:
    """Translate ``x_src`` into len(generators) samples, guided by ``guide``: one source (1,3,H,W)
    for every sample, or one row per sample (several images in one batch, ``stack_guides``).

    Starts from q_sample(x_src, t_start), repeats the first step ``repeats`` times (resampling),
    and restarts a sample whose weighted range loss exceeds ``restart_threshold`` after the first
    step, at most ``guide.config.max_restarts`` times (SPEC §3 fix: the reference never stopped).
    A callback may raise ``Cancelled`` to stop at once. Near ``deadline`` (a ``time.monotonic()``
    value) no restart starts, and a step that would end past it is not begun: the samples that
    finished are returned, or ``TimeLimitExceeded`` is raised when none did. ``step`` replaces the
    eager ``guided_step`` (same arguments from the guide on), e.g. by a captured one (``dsct.capture``).
    """
    b = len(generators)
    if x_src.shape[0] not in (1, b):
        raise ValueError(f"x_src must have 1 row or one per sample ({b}), got {x_src.shape[0]}")
    schedule = schedule.to(x_src.device)
    step_fn = step or functools.partial(guided_step, unet, schedule)
    restarts = [0] * b
    pending = list(range(b))
    results: dict[int, tuple[Tensor, dict[str, Tensor]]] = {}
    clock, notes = _Clock(deadline), {}
    with tqdm(total=evaluations_per_attempt(t_start, repeats), disable=disable, desc="guided steps") as bar:
        while pending:
            done, failed, out_of_time = _run_attempt(
                unet, step_fn, schedule, guide, x_src, generators, pending, t_start=t_start, repeats=repeats,
                restart_threshold=restart_threshold, callback=callback, bar=bar, restarts=restarts,
                clock=clock, notes=notes,
            )
            results.update(done)
            if out_of_time:
                if not results:
                    raise TimeLimitExceeded(
                        f"the GPU time ran out after {clock.count} guided steps, before any sample finished: "
                        "lower steps, samples or resample_repeats, or raise skip")
                break
            for k in failed:
                restarts[k] += 1
            if failed:
                bar.reset(total=evaluations_per_attempt(t_start, repeats))
                bar.set_postfix(restarts=max(restarts))
            pending = sorted(failed)
    finished = tuple(sorted(results))
    x0 = torch.stack([results[k][0] for k in finished])
    names = results[finished[0]][1].keys()
    terms = {name: torch.stack([results[k][1][name] for k in finished]) for name in names}
    return SampleOutput(x0, terms, tuple(restarts), finished, notes)


# ---------------------------------------------------------------- AGG (SPEC-AGG)


class Inversion(NamedTuple):
    """Stage A of one source (SPEC-AGG §4): where its samples start and the inversion's x̂0 per step."""

    x_start: Tensor  # (B,3,H,W) x_{t_start}
    x0: Tensor  # (B,t_start+1,3,H,W) G[0 … t_start]


def unet_eps(unet: torch.nn.Module, schedule: Schedule, x: Tensor, i: Tensor, y: Tensor | None = None) -> Tensor:
    """The ε half of one UNet pass at spaced step i, in fp32 (DDIM ignores the variance channels)."""
    return unet_out(unet, schedule, x, i, y).chunk(2, dim=1)[0]


INVERSION_CLASS_SEED = 0  # the 512 generator's classes during the inversion (class_label "random")


@torch.no_grad()
def ddim_invert(unet: torch.nn.Module, schedule: Schedule, x0: Tensor, t_start: int,
                class_id: Tensor | None = None) -> Inversion:
    """Deterministic DDIM inversion of x0 up to x_{t_start}: t_start + 1 UNet passes, no randomness.

    G[i] = x̂0(x_i, i) for i = 0 … t_start; x_{i+1} from (G[i], ε(x_i, G[i])). SPEC-AGG §4 fix: run once per
    source and shared by its samples (the reference reran it for every sample). A class-conditional
    generator gets the held ``class_id``, else a new class per pass from a generator of its own seeded with
    ``INVERSION_CLASS_SEED``: the same inversion for a source whatever the samples' seeds.
    """
    schedule = schedule.to(x0.device)
    x, targets = x0, []
    classes = [torch.Generator().manual_seed(INVERSION_CLASS_SEED) for _ in range(x0.shape[0])]
    for k in range(t_start + 1):
        i = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
        y = draw_classes(unet, classes, class_id, x.device)
        g = predict_x0(schedule, x, i, unet_eps(unet, schedule, x, i, y))
        targets.append(g)
        if k < t_start:
            x = ddim_invert_step(schedule, g, eps_from_x0(schedule, x, i, g), i)
    return Inversion(x, torch.stack(targets, dim=1))


def agg_step_kind(config: TranslationConfig, i: int) -> tuple[bool, float]:
    """(guided?, η) of spaced step i (SPEC-AGG §5): guided while i > steps − skip − t_edit, then η until
    steps − skip − t_boost, then η_boost."""
    base = config.steps - config.skip
    if i > base - config.t_edit:
        return True, config.eta_edit
    return False, config.eta if i > base - config.t_boost else config.eta_boost


@torch.no_grad()
def plain_ddim_step(unet: torch.nn.Module, schedule: Schedule, x: Tensor, i: Tensor, eta: float,
                    noise: Tensor | None, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One unguided DDIM step, no grad: (x_{i−1}, x̂0)."""
    x0 = predict_x0(schedule, x, i, unet_eps(unet, schedule, x, i, y))
    return ddim_step(schedule, x0, eps_from_x0(schedule, x, i, x0), i, eta, noise), x0


def agg_guided_step(unet: torch.nn.Module, schedule: Schedule, guide: Guide, x: Tensor, i: Tensor,
                    noise: Tensor | None, views: Tensor | None, inner_views: Sequence[Tensor | None],
                    state: GuideState, y: Tensor | None = None) -> StepOutput:
    """One guided AGG step (SPEC-AGG §6): a single UNet pass with grad gives x̂0 and g = −∂L_a/∂x_t.

    SPEC-AGG §6 fix: the reference ran a second, no-grad UNet pass for the same x̂0.
    """
    cfg = guide.config
    x = x.detach().requires_grad_(True)
    # 1. one UNet pass with grad; L_a on x̂0; g = −∂L_a/∂x_t
    x0 = predict_x0(schedule, x, i, unet_eps(unet, schedule, x, i, y))
    loss, terms, state = guide.agg_loss(x, x0, i, state, views)
    grad = -torch.autograd.grad(loss.sum(), x)[0] if loss.requires_grad else torch.zeros_like(x)
    x, x0_u = x.detach(), x0.detach()
    eps_u = eps_from_x0(schedule, x, i, x0_u)
    # 2. score shift on x̂0
    x0_shifted = shift_x0(schedule, x0_u, grad, i)
    # 3. inner pass: x̂0'' and its CLIP loss, which becomes ℓ (SPEC-AGG §7.4 quirk (a), kept)
    x0_final, inner_clip = guide.inner_pass(x, x0_shifted, i, inner_views)
    if inner_clip is not None:
        state = state._replace(prev_clip=inner_clip)
    # 4. DDIM with the guided x̂0 and the unguided ε (asymmetric), or ε of the guided x̂0 (symmetric)
    eps = eps_from_x0(schedule, x, i, x0_final) if cfg.symmetric else eps_u
    x_prev = ddim_step(schedule, x0_final, eps, i, cfg.eta_edit, noise)
    return StepOutput(x_prev, x0_final, {k: v.detach() for k, v in terms.items()}, state)


def sample_agg(
    unet: torch.nn.Module,
    schedule: Schedule,
    guide: Guide,
    x_start: Tensor,
    generators: Sequence[torch.Generator],
    *,
    callback: Callable[[StepEvent], None] | None = None,
    disable: bool = True,
    deadline: float | None = None,
) -> SampleOutput:
    """AGG's loop (SPEC-AGG §5): from ``x_start`` (the inversion's x_{t_start}, 1 row or one per sample)
    down to 0, guided at the first steps, then plain DDIM; returns the x̂0 of the step at i = 0.

    Settings come from ``guide.config`` (t_start, t_edit, t_boost, the three η, symmetric, inner_iters).
    No resampling, no restarts. Each sample draws, per step, its class (512 generator); per guided step, its L_a views, one set of inner views per
    inner iteration, then its noise; per plain step its noise; nothing where σ_i = 0 (η 0 or i = 0). The
    callback gets a ``StepEvent`` after every step (``terms`` empty on plain steps) and may raise ``Cancelled``.
    A step that would end past ``deadline`` is not begun and ``TimeLimitExceeded`` is raised (no sample has
    finished before the last step).
    """
    cfg, b = guide.config, len(generators)
    if x_start.shape[0] not in (1, b):
        raise ValueError(f"x_start must have 1 row or one per sample ({b}), got {x_start.shape[0]}")
    schedule = schedule.to(x_start.device)
    x = x_start.expand(b, -1, -1, -1) if x_start.shape[0] == 1 else x_start
    device, shape = x.device, x.shape[1:]
    state, clock, total = guide.initial_state(b), _Clock(deadline), cfg.t_start + 1
    ids, no_restarts, terms = tuple(range(b)), (0,) * b, {}
    with tqdm(total=total, disable=disable, desc="AGG steps") as bar:
        for step, t in enumerate(range(cfg.t_start, -1, -1), 1):
            if not clock.fits(1):
                raise TimeLimitExceeded(f"the GPU time ran out after {clock.count} of {total} AGG steps, before the "
                                        "samples finished: lower steps or samples, or raise skip")
            i = torch.full((b,), t, device=device, dtype=torch.long)
            guided, eta = agg_step_kind(cfg, t)
            y = draw_classes(unet, generators, guide.fixed.class_id, device)
            if guided:
                views = guide.draw_views(generators, *shape[1:])
                inner = [guide.draw_views(generators, *shape[1:]) for _ in range(cfg.inner_iters)]
            noise = randn(generators, shape, device) if eta > 0 and t > 0 else None
            if guided:
                x, x0, terms, state = agg_guided_step(unet, schedule, guide, x, i, noise, views, inner, state, y)
            else:
                x, x0 = plain_ddim_step(unet, schedule, x, i, eta, noise, y)
            clock.tick()
            bar.update(1)
            if callback is not None:
                callback(StepEvent(step, total, t, x0, terms if guided else {}, ids, no_restarts))
    return SampleOutput(x0, terms, no_restarts, ids, {})
