"""What one request costs on a GPU: guided evaluations, seconds and peak memory.

A server that must declare GPU time and memory before it runs (ZeroGPU) plans with this model.
Its constants are the benchmark's figures (README "Performance", H100, bf16, 256×256, all five
CLIP models): a step is bound by per-operator launch overhead, so a batch costs far less than
its samples run one by one, while memory grows with every sample.

AGG (SPEC-AGG §9) has three kinds of UNet pass: its inversion (no grad, once per source), guided steps
(one pass with grad and a backward each) and plain DDIM steps (no grad). No AGG step was timed: a guided
step is priced as one guided evaluation of the mode, a plain pass (inversion or DDIM step) at
``PLAIN_PASS_SHARE`` of one; its memory uses DiffuseIT's figures of the mode (its guided step runs fewer
feature passes) plus the inversion kept per source.

The 512 generator (SPEC §6) is priced from the SPEC's ratios until a run measures it: at its own 512²
a whole text step ≈1.4× and an image step ≈1.6× the 256 model's at 256² (UNet forward 3.96 vs 2.24
TFLOP; DINO and CLIP unchanged), and ≈2.5× the activations kept per sample for the backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TranslationConfig
from .sampler import agg_step_kind, evaluations_per_attempt

__all__ = [
    "REFERENCE_PIXELS", "BATCH_SLOPE", "H100_STEP_SECONDS", "MEMORY_GB", "evaluations", "batch_factor",
    "pixel_factor", "StepSpeed", "run_seconds", "peak_memory_gb", "max_samples_that_fit", "AggWork", "agg_work",
    "inversion_gb", "GeneratorScale", "SCALES", "prior_speed", "PLAIN_PASS_SHARE",
]

REFERENCE_PIXELS = 256 * 256  # the working size the figures below were measured at
# Each sample beyond the first adds this fraction of a one-sample step: batch 4 measured 1.42x (text)
# and 1.53x (image) one sample; 0.18 gives 1.54x, so neither mode is underestimated.
BATCH_SLOPE = 0.18
H100_STEP_SECONDS = {"text": 0.217, "image": 0.089}  # one guided evaluation, batch 1
# (fixed GB: weights, CUDA context, fixed features; GB per sample at REFERENCE_PIXELS), fitted
# exactly to the batch-1 and batch-4 peaks: text 12.0 / 38.6 GB, image 6.9 / 18.4 GB.
MEMORY_GB = {"text": (3.140, 8.866), "image": (3.062, 3.824)}
# A plain AGG pass is one UNet forward without grad: 1 295 ATen operators (1 420 at 512) against a guided
# evaluation's 9 494 (text) and 3 718 (image), counted by `bench_step.py --unet-flops` and `--count-ops`
# (README "Work per guided step"). The H100 step is launch-bound (17–23 µs per operator, README
# "Performance"), so a plain pass costs that share of a guided evaluation: 0.136 and 0.348, rounded up.
PLAIN_PASS_SHARE = {"text": 0.15, "image": 0.36}


@dataclass(frozen=True)
class GeneratorScale:
    """A generator's cost against the 256 model's figures above, at the generator's own trained size."""

    reference_pixels: int  # where the factors hold; cost grows linearly with pixels beyond it
    step: dict[str, float]  # one guided evaluation, per mode
    memory: float  # activations per sample


_SAME = GeneratorScale(REFERENCE_PIXELS, {"text": 1.0, "image": 1.0}, 1.0)  # the faces model (smaller) priced as ImageNet's
SCALES: dict[str, GeneratorScale] = {"imagenet": _SAME, "ffhq": _SAME,
                                     "imagenet512": GeneratorScale(512 * 512, {"text": 1.4, "image": 1.6}, 2.5)}


@dataclass(frozen=True)
class AggWork:
    """UNet passes of an AGG request (SPEC-AGG §9): per source and per sample."""

    inversion: int  # per source: no grad, batch 1 (t_start + 1)
    guided: int  # per sample: one forward with grad + one backward each
    plain: int  # per sample: one forward without grad each

    @property
    def per_sample(self) -> int:
        """UNet forwards of one sample's loop (guided + plain)."""
        return self.guided + self.plain

    def forwards(self, samples: int, sources: int = 1) -> int:
        """Every UNet forward of ``sources`` images with ``samples`` each: inversion + loops."""
        return sources * (self.inversion + samples * self.per_sample)


def agg_work(config: TranslationConfig) -> AggWork:
    """Counts of SPEC-AGG §9 for ``config`` (defaults: 60 inversion, 19 guided, 41 plain)."""
    guided = sum(agg_step_kind(config, i)[0] for i in range(config.t_start + 1))
    return AggWork(inversion=config.t_start + 1, guided=guided, plain=config.t_start + 1 - guided)


def evaluations(config: TranslationConfig) -> int:
    """UNet evaluations of one attempt of one sample. DiffuseIT: the guided steps after skip plus the
    resampling repeats. AGG: guided + plain steps (``agg_work`` splits them; the inversion is per source)."""
    if config.method == "agg":
        return agg_work(config).per_sample
    return evaluations_per_attempt(config.t_start, config.resample_repeats)


def batch_factor(batch: int) -> float:
    """Cost of one evaluation of ``batch`` samples relative to one sample (sublinear: launch-bound)."""
    return 1.0 + BATCH_SLOPE * (batch - 1)


def pixel_factor(pixels: int, reference_pixels: int = REFERENCE_PIXELS) -> float:
    """Cost relative to the reference size (256×256; a generator's own), linear in pixels and never below 1
    (CLIP and DINO views are fixed-size)."""
    return max(1.0, pixels / reference_pixels)


@dataclass(frozen=True)
class StepSpeed:
    """Seconds of one guided evaluation of a batch of one at ``reference_pixels`` (256×256, or the
    generator's own size): measured, or the H100 prior."""

    seconds: float
    reference_pixels: int = REFERENCE_PIXELS

    @classmethod
    def from_measurement(cls, seconds: float, batch: int, pixels: int, reference_pixels: int = REFERENCE_PIXELS
                         ) -> StepSpeed:
        """Normalise a measured evaluation of ``batch`` samples at ``pixels`` with the cost model."""
        return cls(seconds / (batch_factor(batch) * pixel_factor(pixels, reference_pixels)), reference_pixels)

    def evaluation_seconds(self, batch: int, pixels: int) -> float:
        return self.seconds * batch_factor(batch) * pixel_factor(pixels, self.reference_pixels)


def prior_speed(mode: str, generator: str = "imagenet", slowdown: float = 1.0) -> StepSpeed:
    """The unmeasured speed: the H100 figure of the mode scaled to the generator (``SCALES``), ``slowdown``
    times slower (another GPU)."""
    scale = SCALES[generator]
    return StepSpeed(H100_STEP_SECONDS[mode] * scale.step[mode] * slowdown, scale.reference_pixels)


def run_seconds(config: TranslationConfig, pixels: int, speed: StepSpeed, *, sources: int = 1) -> float:
    """Sampling seconds of one attempt of the whole batch (restarts not included). AGG: its guided steps as
    guided evaluations, its plain steps and its inversion (batch 1 per source: ``sources`` images,
    ``config.samples`` each, in one batch) at ``PLAIN_PASS_SHARE`` of one."""
    step = speed.evaluation_seconds(config.samples * sources, pixels)
    if config.method != "agg":
        return evaluations(config) * step
    work, share = agg_work(config), PLAIN_PASS_SHARE[config.mode]
    inversion = sources * work.inversion * share * speed.evaluation_seconds(1, pixels)  # batch 1 per source
    return (work.guided + share * work.plain) * step + inversion


def inversion_gb(config: TranslationConfig, pixels: int, sources: int = 1) -> float:
    """GB an AGG request keeps for its inversion targets: (t_start + 1) fp32 images per source, one copy
    per sample row when several sources share a batch (``stack_guides``)."""
    if config.method != "agg":
        return 0.0
    rows = sources if sources == 1 else sources * config.samples
    return rows * (config.t_start + 1) * 3 * pixels * 4 / 1e9


def _per_sample_gb(mode: str, pixels: int, generator: str) -> float:
    scale = SCALES[generator]
    return MEMORY_GB[mode][1] * scale.memory * pixel_factor(pixels, scale.reference_pixels)


def peak_memory_gb(mode: str, samples: int, pixels: int, generator: str = "imagenet") -> float:
    """Peak GPU memory of a run (bf16/fp16): fixed part plus every sample's activations."""
    return MEMORY_GB[mode][0] + samples * _per_sample_gb(mode, pixels, generator)


def max_samples_that_fit(mode: str, pixels: int, limit_gb: float, generator: str = "imagenet") -> int:
    """The largest batch whose estimated peak stays within ``limit_gb`` (0 when not even one fits)."""
    return max(0, math.floor((limit_gb - MEMORY_GB[mode][0]) / _per_sample_gb(mode, pixels, generator)))
