"""The ZeroGPU plan: what a request costs in GPU seconds and memory, checked before any GPU is asked for.

A ZeroGPU call declares its GPU time up front and is killed when it overruns it, so every request
is priced here from dsct's work counts (``dsct.budget``) and the speed of this GPU: the H100 figure
scaled by PRIOR_SLOWDOWN until a run on CUDA measures it (``learn_speed``). The same cost feeds the
estimate beside the button. ``MODELS`` holds the loaded models the GPU function reads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from dsct import ConfigError, Models, TranslationConfig, budget, preset
from dsct.config import SIZE_MULTIPLE, Mode
from dsct.images import working_size
from dsct.pipeline import check_models, check_request

from .words import SETTINGS, unread_inputs

# The Space sets SPACES_ZERO_GPU (the variable the spaces package itself reads).
ON_ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")
ZERO_GPU_MAX_S = 300  # the most one call may run (ZeroGPU refuses longer requests)
ZERO_GPU_MEMORY_GB = 48.0  # the "large" half slice of an RTX PRO 6000 that a call gets
MEMORY_HEADROOM = 0.9  # of the GPU's memory a request may plan to use (allocator slack, CUDA context)
DURATION_FACTOR = 1.5  # ZeroGPU multiplies a "large" request by its GPU's factor: 1.5 on the RTX PRO 6000
GPU_START_S = 20.0  # attaching the GPU, copying the weights to it, CUDA warm-up
FINISH_S = 10.0  # after the last step: colour matching, scoring, PNGs, the transfer back
RESTART_MARGIN = 1.5  # one attempt and half of one more: range restarts beyond it meet the deadline
# An unmeasured GPU is assumed this much slower than the H100 of the README's figures
# (budget.H100_STEP_SECONDS); a finished run on CUDA replaces the guess with its own timing.
PRIOR_SLOWDOWN = 1.5

MODELS: dict[str, Models] = {}  # generator -> loaded models; read by the GPU function (a forked worker on ZeroGPU)
MEASURED_SPEED: dict[tuple[str, str], budget.StepSpeed] = {}  # (generator, mode) -> the last timed run on CUDA
ENDPOINT_DEFAULTS: dict[str, dict[str, Any]] = {}  # mode -> the values its endpoint's inputs start with


@dataclass(frozen=True)
class Plan:
    """A checked request and what it may spend: the one argument of the GPU function, so it pickles
    (on ZeroGPU it crosses into a forked worker)."""

    generator: str
    source: str | None
    style: str | None
    text: str | None
    source_text: str | None
    config: TranslationConfig
    pixels: int  # working size of this source, W x H
    seconds: float  # wall seconds on the GPU: start, sampling with restart margin, finish
    memory_gb: float  # estimated peak GPU memory


def serve(models: Mapping[str, Models]) -> None:
    """Make ``models`` (generator name -> Models) the ones requests are planned and run with."""
    MODELS.clear()
    MODELS.update(models)


def speed_of(generator: str, mode: str) -> budget.StepSpeed:
    """This process's last measurement on CUDA, else the H100 figure scaled by PRIOR_SLOWDOWN."""
    measured = MEASURED_SPEED.get((generator, mode))
    return measured or budget.prior_speed(mode, generator, PRIOR_SLOWDOWN)


def evaluation_seconds(plan: Plan) -> float:
    """Seconds of one guided evaluation of this plan's batch on this GPU, as far as it is known."""
    return speed_of(plan.generator, plan.config.mode).evaluation_seconds(plan.config.samples, plan.pixels)


def learn_speed(plan: Plan, seconds_per_full_step: list[float]) -> None:
    """Remember a finished run's speed on CUDA for the next plans.

    A small image is no faster per pixel_factor (never below 1): its timing would undercount. Only
    DiffuseIT's steps teach it: they are all guided, while most of AGG's are plain passes, priced at
    their operator share of a guided one (``budget.PLAIN_PASS_SHARE``).
    """
    if (seconds_per_full_step and plan.config.method == "diffuseit" and MODELS[plan.generator].device.type == "cuda"
            and plan.pixels >= budget.SCALES[plan.generator].reference_pixels):
        seconds = sum(seconds_per_full_step) / len(seconds_per_full_step)
        MEASURED_SPEED[(plan.generator, plan.config.mode)] = budget.StepSpeed.from_measurement(
            seconds, plan.config.samples, plan.pixels, budget.SCALES[plan.generator].reference_pixels)


def cost(generator: str, config: TranslationConfig, pixels: int) -> tuple[float, float]:
    """(wall seconds, peak GB) of a request: the one cost model behind the plan and the UI's estimate."""
    sampling = budget.run_seconds(config, pixels, speed_of(generator, config.mode))
    margin = RESTART_MARGIN if config.method == "diffuseit" else 1.0  # AGG never restarts a sample
    return (GPU_START_S + FINISH_S + margin * sampling,
            budget.peak_memory_gb(config.mode, config.samples, pixels, generator) + budget.inversion_gb(config, pixels))


def duration_factor() -> float:
    """What ZeroGPU multiplies a request by: it runs, is capped and is charged that much longer.

    Asked of the spaces package, which applies its GPU's factor to a "large" slice (1.5 on the RTX
    PRO 6000, 1.0 on an H200) and none to a whole GPU; DURATION_FACTOR where it cannot tell.
    """
    try:
        from spaces.zero.client import get_duration_seconds

        return float(get_duration_seconds(timedelta(seconds=100), None)) / 100
    except Exception:  # noqa: BLE001 — an older or newer spaces package: the documented factor
        return DURATION_FACTOR


def gpu_duration(plan: Plan) -> int:
    """The duration to ask ZeroGPU for; it multiplies it by the GPU's factor, so the call may run
    ``plan.seconds`` and the quota is charged that."""
    return math.ceil(plan.seconds / duration_factor())


def memory_limit_gb() -> float | None:
    """GPU memory a request may plan to use: the ZeroGPU slice, or this CUDA GPU; None on a CPU."""
    if ON_ZERO_GPU:
        return ZERO_GPU_MEMORY_GB * MEMORY_HEADROOM
    if any(m.device.type == "cuda" for m in MODELS.values()):
        device = next(m.device for m in MODELS.values() if m.device.type == "cuda")
        return torch.cuda.get_device_properties(device).total_memory / 1e9 * MEMORY_HEADROOM
    return None


def work_size(config: TranslationConfig, generator: str, width: int, height: int) -> tuple[int, int]:
    """The (W, H) a source of width x height is sampled at under the config's size policy."""
    return working_size(width, height, size=config.size, max_long_side=config.max_long_side,
                        resize_mode=config.resize_mode, multiple=SIZE_MULTIPLE[generator])


def serve_endpoint_defaults(mode: str, values: Mapping[str, Any]) -> None:
    """The values an endpoint's inputs start with (what gradio_client sends for a parameter left out)."""
    ENDPOINT_DEFAULTS[mode] = dict(values)


def settings(mode: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The TranslationConfig fields among a handler's arguments; the resampling toggle off means 1 repeat.

    A setting the chosen method does not read, left at the endpoint's starting value, was not set by
    the caller (gradio_client fills in what is left out): it is dropped, so the method's own default
    applies. Set to anything else it stays, and the config refuses it by name.
    """
    method = values.get("method", "diffuseit")
    unread = unread_inputs(method)
    start = ENDPOINT_DEFAULTS.get(mode, {})
    values = {n: v for n, v in values.items() if not (n in unread and n in start and v == start[n])}
    chosen = {name: value for name, value in values.items() if name in SETTINGS}
    resampling = values.get("resampling", True)
    if not isinstance(resampling, bool):  # an API caller's "no" must not count as on
        raise ConfigError("resampling", resampling, "true or false")
    if not resampling:
        chosen["resample_repeats"] = 1
    return chosen


def make_plan(mode: Mode, values: Mapping[str, Any]) -> Plan:
    """Check a handler's arguments and what they would cost, before any GPU is asked for.

    Raises DSCTError with the message for the user (ConfigError names the field to change).
    """
    generator = values.get("generator")
    if not isinstance(generator, str) or generator not in MODELS:
        raise ConfigError("generator", generator, f"one of {', '.join(map(repr, MODELS))} (loaded here)")
    source, style = values.get("source"), values.get("style")
    text, source_text = values.get("text"), values.get("source_text")
    config = preset(mode, generator=generator, **settings(mode, values))  # the one validator
    request = check_request(config, source, text=text, source_text=source_text, style=style)
    check_models(MODELS[generator], config)
    width, height = work_size(config, generator, *request.source.size)
    seconds, memory = cost(generator, config, width * height)
    limit = memory_limit_gb()
    if limit is not None and memory > limit:
        fit = budget.max_samples_that_fit(mode, width * height, limit, generator)
        what = f"at most {fit} at {width}x{height}" if fit else "1 only at a smaller size or max_long_side"
        raise ConfigError("samples", config.samples, f"{what}: {config.samples} would need about {memory:.0f} GB "
                                                     f"of GPU memory and {limit:.0f} GB can be used here")
    if ON_ZERO_GPU and seconds > ZERO_GPU_MAX_S:
        raise ConfigError("steps", config.steps, f"fewer: this request needs about {seconds:.0f} s of GPU time and "
                          f"ZeroGPU allows {ZERO_GPU_MAX_S} s per call: lower steps, samples or resample_repeats, "
                          "or raise skip")
    return Plan(generator, source, style, request.text, request.source_text, config, width * height, seconds, memory)
