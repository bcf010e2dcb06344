"""Gaussian diffusion maths of SPEC §2 (and the re-noise step of §3), as guided-diffusion runs it.

Equations the numbered comments refer to (ᾱ = alphas_cumprod, all schedules float64):

    (1) β_t linear from 1e-4·1000/T to 0.02·1000/T over T training steps
    (2) respacing keeps steps S; β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}}  (ᾱ of the kept steps unchanged)
    (3) q(x_t | x_0):   x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε
    (4) learned range:  log σ² = f·log β_t + (1 − f)·log β̃_t,  f = (v + 1)/2
    (5) x̂0 = sqrt(1/ᾱ_t)·x_t − sqrt(1/ᾱ_t − 1)·ε   (no clipping)
    (6) posterior mean: μ = c1·x̂0 + c2·x_t
    (7) forward step:   x_t = sqrt(1 − β_t)·x_{t−1} + sqrt(β_t)·z
    (8) ε from x̂0:      ε = (sqrt(1/ᾱ_t)·x_t − x̂0) / sqrt(1/ᾱ_t − 1)
    (9) DDIM:           σ = η·sqrt((1 − ᾱ_prev)/(1 − ᾱ_t))·sqrt(1 − ᾱ_t/ᾱ_prev);
                        x_{t−1} = sqrt(ᾱ_prev)·x̂0 + sqrt(1 − ᾱ_prev − σ²)·ε + σ·z
    (10) DDIM inversion (η 0): x_{t+1} = sqrt(ᾱ_{t+1})·x̂0 + sqrt(1 − ᾱ_{t+1})·ε
    (11) score shift on x̂0 (SPEC-AGG §6.2): x̂0' = x̂0 + ((1 − ᾱ_t)/sqrt(ᾱ_t))·g

Two kinds of timestep, never mixed: ``i`` is the spaced index (0 … num_steps−1, a (B,) long
tensor, one per sample), ``t_model`` the original index the UNet sees (float).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import torch
from torch import Tensor

from dsct.errors import ConfigError

__all__ = [
    "MeanVar",
    "Schedule",
    "ddim_invert_step",
    "ddim_sigma",
    "ddim_step",
    "eps_from_x0",
    "predict_x0",
    "shift_x0",
    "extract",
    "make_schedule",
    "model_timesteps",
    "p_mean_variance",
    "q_sample",
    "renoise",
    "space_timesteps",
]

_SPACING_HELP = (
    "'N' or comma-separated section counts 'N1,N2,…' (each ≥ 1 and ≤ its section's length), "
    "or 'ddimN' where an integer stride gives exactly N steps"
)


@dataclass(frozen=True)
class Schedule:
    """A (respaced) diffusion schedule: float64 per-step coefficients indexed by the spaced ``i``."""

    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    log_betas: Tensor
    timestep_map: Tensor  # (num_steps,) long: original index of each kept step
    num_train_steps: int = 1000

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]

    def to(self, device: torch.device | str) -> Schedule:
        """The same tables on ``device``, so a step reads them there with no upload (a CUDA graph
        may not copy from the host). float64 is kept where the device has it (MPS has not)."""
        device = torch.device(device)
        narrow = device.type == "mps"
        moved = {f.name: v.to(device, torch.float32 if narrow and v.is_floating_point() else v.dtype)
                 for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}
        return replace(self, **moved)


def space_timesteps(num_train_steps: int, spacing: str) -> list[int]:
    """The original steps a spacing string keeps (guided-diffusion ``space_timesteps`` semantics).

    "ddimN": the integer stride s with len(range(0, T, s)) == N. Otherwise comma-separated counts,
    one per equal section of [0, T): section k keeps its count of evenly spread steps, rounded.
    """
    spacing = spacing.strip()
    if spacing.startswith("ddim"):
        count = spacing[len("ddim"):]
        if count.isdecimal():  # 0 and 1 have no stride below T: refused below
            for stride in range(1, num_train_steps):
                if len(range(0, num_train_steps, stride)) == int(count):
                    return list(range(0, num_train_steps, stride))
        raise ConfigError("spacing", spacing, _SPACING_HELP + f" (T = {num_train_steps})")
    try:
        counts = [int(c) for c in spacing.split(",")]
    except ValueError:
        raise ConfigError("spacing", spacing, _SPACING_HELP) from None
    size_per, extra = divmod(num_train_steps, len(counts))
    steps, start = [], 0
    for k, count in enumerate(counts):
        size = size_per + (1 if k < extra else 0)
        if not 1 <= count <= size:
            raise ConfigError("spacing", spacing, _SPACING_HELP + f" (section {k} has {size} steps)")
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        # Accumulated float position, Python round(): reproduces the reference's choices exactly.
        pos = 0.0
        for _ in range(count):
            steps.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(steps))


def make_schedule(spacing: str = "100", *, num_train_steps: int = 1000) -> Schedule:
    """Linear-β schedule over ``num_train_steps``, respaced by ``spacing`` ("N" or "ddimN")."""
    # (1) linear betas of the full process, float64
    scale = 1000.0 / num_train_steps
    betas_full = torch.linspace(1e-4 * scale, 0.02 * scale, num_train_steps, dtype=torch.float64)
    ac_full = torch.cumprod(1.0 - betas_full, dim=0)
    # (2) keep the spaced steps' ᾱ; derive the betas that chain them
    kept = torch.tensor(space_timesteps(num_train_steps, spacing))  # int64
    ac_kept = ac_full[kept]
    betas = 1.0 - ac_kept / torch.cat([ac_kept.new_ones(1), ac_kept[:-1]])
    ac = torch.cumprod(1.0 - betas, dim=0)  # as the reference: recomputed from the new betas
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    # posterior q(x_{i-1} | x_i, x_0); its log variance is clipped by repeating entry 1 at 0
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    return Schedule(
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=ac.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
        sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
        sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1.0).sqrt(),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * (1.0 - betas).sqrt() / (1.0 - ac),
        log_betas=betas.log(),
        timestep_map=kept,
        num_train_steps=num_train_steps,
    )


def extract(coef: Tensor, i: Tensor, x: Tensor) -> Tensor:
    """coef[i] per sample, in x's dtype and device, shaped (B, 1, …, 1) to broadcast against x."""
    # Narrow the dtype where coef lives (some devices have no float64), then gather on x's device.
    # With the table already there (``Schedule.to``) both moves are no-ops: nothing is uploaded.
    values = coef.to(x.dtype).to(x.device, non_blocking=True)[i.to(x.device)]
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def model_timesteps(sched: Schedule, i: Tensor) -> Tensor:
    """Spaced index i (B,) → the float original timestep the UNet was trained on (t_model).

    guided-diffusion's ``rescale_timesteps`` multiplies by 1000/T: the identity for T = 1000.
    """
    t = sched.timestep_map.to(i.device, non_blocking=True)[i]  # gather on i's device: no host sync
    return t.float() * (1000.0 / sched.num_train_steps)


def q_sample(sched: Schedule, x0: Tensor, i: Tensor, noise: Tensor) -> Tensor:
    """Sample x_i ~ q(x_i | x_0) with the given noise."""
    # (3)
    return extract(sched.sqrt_alphas_cumprod, i, x0) * x0 + extract(sched.sqrt_one_minus_alphas_cumprod, i, x0) * noise


class MeanVar(NamedTuple):
    """p(x_{i-1} | x_i) from one model output, plus the x̂0 and ε it was built from."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    x0_pred: Tensor
    eps: Tensor


def p_mean_variance(sched: Schedule, model_out: Tensor, x_t: Tensor, i: Tensor) -> MeanVar:
    """Posterior mean and learned-range variance at spaced step i; x̂0 is not clipped (guidance needs it raw).

    Args:
        model_out: (B, 2C, H, W) UNet output, [ε | v] with v in [-1, 1].
        x_t: (B, C, H, W) the noisy image the model saw.
    """
    # learned-σ convention: first half ε, second half v
    eps, v = model_out.chunk(2, dim=1)
    # (4) interpolate log variance between log β̃ (min) and log β (max)
    frac = (v + 1) / 2
    log_variance = frac * extract(sched.log_betas, i, x_t) + (1 - frac) * extract(sched.posterior_log_variance_clipped, i, x_t)
    x0_pred = predict_x0(sched, x_t, i, eps)
    # (6) posterior mean
    mean = extract(sched.posterior_mean_coef1, i, x_t) * x0_pred + extract(sched.posterior_mean_coef2, i, x_t) * x_t
    return MeanVar(mean=mean, variance=torch.exp(log_variance), log_variance=log_variance, x0_pred=x0_pred, eps=eps)


def renoise(sched: Schedule, x_prev: Tensor, i: Tensor, noise: Tensor) -> Tensor:
    """One forward step x_{i-1} → x_i, used by resampling to go back to step i."""
    # (7) SPEC §3 fix: the step from x_{i-1} to x_i uses β_i; the reference re-noises with β_{i-1}.
    beta = extract(sched.betas, i, x_prev)
    return torch.sqrt(1 - beta) * x_prev + torch.sqrt(beta) * noise


def predict_x0(sched: Schedule, x_t: Tensor, i: Tensor, eps: Tensor) -> Tensor:
    """x̂0 from the predicted noise, never clipped (guidance needs it raw)."""
    # (5)
    return extract(sched.sqrt_recip_alphas_cumprod, i, x_t) * x_t - extract(sched.sqrt_recipm1_alphas_cumprod, i, x_t) * eps


def eps_from_x0(sched: Schedule, x_t: Tensor, i: Tensor, x0: Tensor) -> Tensor:
    """The noise that (x_t, x̂0) imply: AGG's DDIM re-derives ε from whichever x̂0 it uses (SPEC-AGG §3)."""
    # (8)
    return (extract(sched.sqrt_recip_alphas_cumprod, i, x_t) * x_t - x0) / extract(sched.sqrt_recipm1_alphas_cumprod, i, x_t)


def ddim_sigma(sched: Schedule, eta: float) -> Tensor:
    """σ_i of every spaced step for DDIM's η (float64); 0 at i = 0, where ᾱ_prev = 1."""
    # (9)
    ac, ac_prev = sched.alphas_cumprod, sched.alphas_cumprod_prev
    return eta * torch.sqrt((1 - ac_prev) / (1 - ac)) * torch.sqrt(1 - ac / ac_prev)


def ddim_step(sched: Schedule, x0: Tensor, eps: Tensor, i: Tensor, eta: float, noise: Tensor | None) -> Tensor:
    """x_{i−1} from an x̂0 and an ε (not necessarily each other's: AGG's asymmetric update); ``noise``
    may be None where σ_i = 0 (η 0, or i = 0)."""
    # (9) in float64, then broadcast; 1 − ᾱ_prev − σ² ≥ 0 for η ≤ 1 (clamped against rounding)
    sigma = ddim_sigma(sched, eta)
    ac_prev = sched.alphas_cumprod_prev
    x_prev = extract(ac_prev.sqrt(), i, x0) * x0 + extract((1 - ac_prev - sigma**2).clamp(min=0).sqrt(), i, x0) * eps
    if noise is None:
        return x_prev
    return x_prev + extract(sigma, i, x0) * noise


def ddim_invert_step(sched: Schedule, x0: Tensor, eps: Tensor, i: Tensor) -> Tensor:
    """x_{i+1} from step i's x̂0 and ε: deterministic DDIM run backwards (SPEC-AGG §4)."""
    # (10) the next step's ᾱ, so i < num_steps − 1
    ac_next = sched.alphas_cumprod[1:]
    return extract(ac_next.sqrt(), i, x0) * x0 + extract((1 - ac_next).sqrt(), i, x0) * eps


def shift_x0(sched: Schedule, x0: Tensor, grad: Tensor, i: Tensor) -> Tensor:
    """x̂0 moved by the guidance gradient g = −∂L/∂x_t: the score shift ε' = ε − sqrt(1 − ᾱ_i)·g seen on x̂0."""
    # (11)
    ac = sched.alphas_cumprod
    return x0 + extract((1 - ac) / ac.sqrt(), i, x0) * grad
