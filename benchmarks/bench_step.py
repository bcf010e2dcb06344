"""Guided-step benchmark: seconds per step, peak memory and the work each step really does.

Runs K guided steps through the library's own loop (``dsct.guidance.build_guide`` then
``dsct.sampler.sample_guided``) on models assembled by ``dsct.hub.load_models`` (eval, frozen, in
the compute dtype), and prints one JSON line per (mode, batch). Work is counted by hooks on the
real modules (``benchmarks/counters.py``), never by reading the code.

Sizes (all random weights: timing does not depend on weight values):
  tiny    the test models (``ModelConfig(tiny=True)``): tiny UNet, tiny ViT, two tiny CLIP towers
  narrow  the real architectures at a quarter width: the ImageNet-256 ADM UNet with 64 base
          channels, ViT-B/8's layout (patch 8, 12 blocks) at width 192 / 3 heads, and each chosen
          CLIP model with its real depth and input size at a quarter width
  full    the real 552 M UNet, DINO ViT-B/8 and the chosen CLIP models (default all five)

Examples:
  python benchmarks/bench_step.py --size tiny --mode text image --batch 1 4 --steps 10
  python benchmarks/bench_step.py --size full --device cuda --dtype bf16 --batch 1 4 --full-run
  python benchmarks/bench_step.py --size full --device cuda --dtype bf16 --capture cuda-graph --compare-capture
  python benchmarks/bench_step.py --size tiny --mode text image --batch 1 4 --no-steps --agg-counts --agg-image-size 64
  python benchmarks/bench_step.py --size narrow --generator imagenet512 --mode text image --unet-flops

--generator imagenet512 runs the class-conditional 512 model (SPEC §6) at its preset's 512 working size
(a new random class per evaluation, as the default class rule); --unet-flops adds one forward's FLOP
and ATen-operator count of the 256 and the 512 UNet, each at its own size, counted on the meta device (no
memory, no time).

--capture runs every step as ``ModelConfig.step_capture`` says (dsct.capture): eager, one CUDA graph
per shape, or the whole step compiled. The first measured row's ``first_step_seconds`` includes the
capture (or compile). The per-network work counters need eager steps (a replayed graph runs no
Python hooks), so they are left out (null) under the other modes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.counters import (  # noqa: E402
    OpCounter, PilCounter, SyncCounter, attention_blocks, params_with_grad, watch_models,
)
from dsct import images  # noqa: E402
from dsct.capture import step_function  # noqa: E402
from dsct.clip import OPENAI_MODELS, ClipEnsemble, build_clip_models, fold_batchnorm, use_plain_attention  # noqa: E402
from dsct.config import SIZE_MULTIPLE, ModelConfig, TranslationConfig, preset  # noqa: E402
from dsct.guidance import build_guide  # noqa: E402
from dsct.hub import Models, load_models  # noqa: E402
from dsct.pipeline import prepare_images, schedule_for, translate  # noqa: E402
from dsct.diffusion import p_mean_variance  # noqa: E402
from dsct.sampler import StepEvent, ddim_invert, draw_classes, sample_agg, sample_guided, unet_out  # noqa: E402
from dsct.unet import MODEL_CONFIGS, UNet, build_unet  # noqa: E402
from dsct.vit import VIT_CONFIGS, build_vit  # noqa: E402

TEXT, SOURCE_TEXT = "Black Leopard", "Cat"
NARROW = 4  # narrow = real layout at 1/NARROW of the width
BUILD_SEED = 0
COMPILE_BACKEND: str | None = None  # --compile-backend: e.g. aot_eager for a quick CPU check of the compile path


# --- models --------------------------------------------------------------------------------


def _narrow_clip_model(name: str, device: torch.device) -> open_clip.CLIP:
    """CLIP ``name`` with its real depth, patching and input size, at 1/NARROW of the width."""
    cfg = open_clip.get_model_config(name)
    vision, text = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    vision["width"] //= NARROW
    text["width"] //= NARROW
    text["heads"] = max(1, text["heads"] // NARROW)
    with torch.device(device):
        model = open_clip.CLIP(cfg["embed_dim"], vision, text, quick_gelu=True)
    open_clip.set_model_preprocess_cfg(
        model, dict(size=vision["image_size"], mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD))
    return model


UNET_ARCH = {"imagenet": "imagenet256", "imagenet512": "imagenet512"}  # --generator → the real architecture


def _builders(size: str, clip_names: tuple[str, ...] | None, device: torch.device, generator: str = "imagenet") -> dict:
    """Zero-argument builders for ``load_models(builders=...)``; networks are built on ``device``."""
    arch = UNET_ARCH[generator]
    if size == "full":
        unet = lambda: build_unet(arch, device=device)  # noqa: E731
        vit = lambda: build_vit("dino_vitb8", device=device)  # noqa: E731
        clip = (lambda: build_clip_models(clip_names, device=device)) if clip_names else None
    else:
        unet_cfg = dict(MODEL_CONFIGS[arch], num_channels=256 // NARROW)
        vit_cfg = dict(VIT_CONFIGS["dino_vitb8"], embed_dim=768 // NARROW, num_heads=12 // NARROW)
        unet = lambda: UNet.from_guided_diffusion(**unet_cfg, device=device)  # noqa: E731
        vit = lambda: VisionTransformer(**vit_cfg, device=device)  # noqa: E731
        clip = (lambda: ClipEnsemble(
            [_narrow_clip_model(n, device) for n in clip_names],
            [open_clip.get_tokenizer(n) for n in clip_names], clip_names).eval()) if clip_names else None
    return dict(unet=unet, vit=vit, clip=clip, arcface=None)


def build_models(
    size: str, device: torch.device, dtype: str, *, clip_names: tuple[str, ...] | None, grad_checkpointing: bool = False,
    capture: str = "eager", generator: str = "imagenet",
) -> Models:
    """Models of one benchmark size through ``load_models`` (frozen, eval, compute dtype).

    ``clip_names`` None: no CLIP models (image mode only). Tiny always has its two tiny CLIP towers.
    """
    config = ModelConfig(
        tiny=size == "tiny", dtype=dtype, grad_checkpointing=grad_checkpointing, step_capture=capture,
        load_clip=clip_names is not None, clip_models=clip_names or OPENAI_MODELS, generator=generator)
    if size == "tiny":
        return load_models(config, device)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        torch.manual_seed(BUILD_SEED)
        return load_models(config, device, builders=_builders(size, clip_names, device, generator))


def apply_speed_options(
    models: Models, *, channels_last: bool, compile_mode: str | None, fold_bn: bool = False,
    native_groupnorm: bool = False, plain_attention: bool = False,
) -> None:
    """Benchmark-only variants: channels_last weights (UNet, CLIP ResNets), torch.compile of the UNet, and the
    kernel reductions of issue 12 item 4: eval BatchNorm folded into the CLIP ResNets' convs, the UNet's
    GroupNorm in the compute dtype, plain-linear attention blocks in the CLIP ViTs.

    The compiled function replaces ``unet.forward`` only, so the counting hooks stay outside it. The fold runs
    on the loaded weights in the compute dtype (``load_models`` has already cast them).
    """
    for model in models.clip.models if models.clip is not None else ():
        if fold_bn:
            fold_batchnorm(model)
        if plain_attention:
            use_plain_attention(model)
    if native_groupnorm:
        models.unet.set_native_groupnorm(True)
    if channels_last:
        for net in (models.unet, models.clip):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    if compile_mode:
        models.unet.forward = torch.compile(models.unet.forward, mode=None if compile_mode == "default" else compile_mode)


# --- inputs --------------------------------------------------------------------------------


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, structured test picture (gradients, a disc, mild noise); content does not affect timing."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(xx - width * 0.55, yy - height * 0.45) / max(width, height)
    base = np.stack([xx / width, yy / height, (r < 0.25).astype(np.float32)], -1)
    img = np.clip(base * 0.8 + 0.1 + rng.normal(0, 0.03, base.shape), 0, 1)
    return Image.fromarray((img * 255).astype(np.uint8))


# --- measurements --------------------------------------------------------------------------


class NoCounter:
    """Stands in for ``watch_models`` when steps are captured: no hooks, and every count reported as null."""

    def snapshot(self) -> Counter:
        return Counter()

    def reset(self) -> None:
        pass

    def remove(self) -> None:
        pass


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset. CPU: the process's max RSS so far (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StepClock:
    """Per-step times from the sampler's callback: CUDA events (no host sync) or perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _per_step(total: int, steps: int) -> float | int:
    value = total / steps
    return int(value) if value.is_integer() else round(value, 3)


class DeviceProfile:
    """GPU kernel time and kernel launches of the measured steps (torch.profiler); CUDA only."""

    def __init__(self) -> None:
        from torch.profiler import ProfilerActivity, profile
        self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])

    def start(self) -> None:
        self.prof.__enter__()

    def stop(self, steps: int) -> dict:
        from torch.autograd import DeviceType
        torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        device_events = [e for e in self.prof.events() if e.device_type == DeviceType.CUDA]
        busy = sum(e.time_range.elapsed_us() for e in device_events) / 1e6
        return dict(gpu_busy_seconds_per_step=round(busy / steps, 4), gpu_kernels_per_step=_per_step(len(device_events), steps))


def bench_steps(
    models: Models, mode: str, batch: int, *, steps: int, warmup: int, source: Image.Image, style: Image.Image,
    profile: bool = False, count_ops: bool = False, count_attention: bool = True,
) -> dict:
    """Time ``steps`` guided steps after ``warmup`` ones, with the counts of what they ran.

    ``profile``: a torch.profiler pass instead (GPU kernel time and launches per step; its timing is
    disturbed by the profiler, so only those two keys are returned). ``count_ops``: likewise a pass
    that only counts ATen ops per step (``aten_ops_per_step``). ``count_attention`` False
    under torch.compile (the counting wrapper would be traced into the graph).
    """
    device = models.device
    config = preset(mode, generator=models.config.generator)
    schedule = schedule_for(config.steps)
    t_start = warmup + steps - 1
    if t_start >= schedule.num_steps:
        raise SystemExit(f"--steps + --warmup must be at most {schedule.num_steps} in {mode} mode")
    x_src, x_style, _ = prepare_images(config, source, style if mode == "image" else None, device,
                                       SIZE_MULTIPLE[models.config.generator])

    _reset_peak(device)
    eager = models.config.step_capture == "eager"
    counter = watch_models(models, attention_runs=count_attention) if eager else NoCounter()
    guide = build_guide(
        config, schedule, x_src, vit=models.vit, clip=models.clip if mode == "text" else None,
        style=x_style, text=TEXT if mode == "text" else None, source_text=SOURCE_TEXT if mode == "text" else None)
    fixed = counter.snapshot()
    counter.reset()

    clock, syncs, pils = StepClock(device), SyncCounter(device), PilCounter()
    prof = DeviceProfile() if profile else None
    ops = OpCounter() if count_ops else None

    def begin() -> None:
        if prof is not None:
            prof.start()
        elif ops is not None:
            ops.start()
        else:
            syncs.start()
            pils.start()

    def on_step(event: StepEvent) -> None:
        clock.mark()
        if event.step == warmup:  # from here on, count only the measured steps
            counter.reset()
            begin()

    clock.mark()  # before step 1: its time (with any capture or compile) is first_step_seconds
    if warmup == 0:
        begin()
    # restart check on, threshold out of reach: random weights must not drop samples mid-measurement
    step = step_function(models.config.step_capture, models.unet, guide.schedule, guide, batch,
                         compile_backend=COMPILE_BACKEND)
    sample_guided(models.unet, schedule, guide, x_src, [torch.Generator().manual_seed(k) for k in range(batch)],
                  t_start=t_start, repeats=1, restart_threshold=math.inf, callback=on_step, step=step)
    if prof is not None or ops is not None:
        counter.remove()
        return prof.stop(steps) if prof is not None else dict(aten_ops_per_step=_per_step(ops.stop(), steps))
    n_syncs, n_pil = syncs.stop(), pils.stop()
    all_steps = clock.seconds()
    per_step = all_steps[-steps:]
    counts = counter.snapshot()
    counter.remove()

    def per(total: int, steps: int) -> float | int | None:  # hook counts: eager steps only
        return _per_step(total, steps) if eager else None

    grads, trainable = params_with_grad(models)
    clip_names = models.clip.names if models.clip is not None and mode == "text" else ()
    clip_by_model = {n: per(counts[f"clip:{n}.images"], steps) for n in clip_names}
    return dict(
        seconds_per_step=statistics.median(per_step),
        seconds_per_sample_step=statistics.median(per_step) / batch,
        seconds_per_step_min=min(per_step),
        step_capture=models.config.step_capture,
        first_step_seconds=round(all_steps[0], 3) if all_steps else None,  # with the capture / compile
        peak_memory_mb=round(peak_memory_mb(device), 1),
        unet_forward_per_step=per(counts["unet.forward"], steps),
        unet_backward_per_step=per(counts["unet.backward"], steps),
        unet_images_per_step=per(counts["unet.images"], steps),
        unet_attention_blocks=attention_blocks(models.unet),
        unet_attention_forwards_per_step=per(counts["unet_attention.forward"], steps) if count_attention else None,
        vit_forward_per_step=per(counts["vit.forward"], steps),
        vit_backward_per_step=per(counts["vit.backward"], steps),
        vit_patch_embed_per_step=per(counts["vit_patch_embed.forward"], steps),
        clip_encode_calls_per_step=per(sum(counts[f"clip:{n}.forward"] for n in clip_names), steps),
        clip_image_encodes_per_step=per(sum(counts[f"clip:{n}.images"] for n in clip_names), steps),
        clip_backward_per_step=per(sum(counts[f"clip:{n}.backward"] for n in clip_names), steps),
        clip_images_per_model_per_step=clip_by_model,
        n_cuts=config.n_cuts if clip_names else 0,
        fixed_vit_forwards=fixed["vit.forward"] if eager else None,
        fixed_clip_image_encodes=sum(fixed[f"clip:{n}.images"] for n in clip_names) if eager else None,
        fixed_unet_forwards=fixed["unet.forward"] if eager else None,
        host_syncs_per_step=None if n_syncs < 0 else _per_step(n_syncs, steps),
        pil_images_per_step=_per_step(n_pil, steps),
        params_with_grad=grads,
        params_requiring_grad=trainable,
        step_seconds=[round(s, 4) for s in per_step],
    )


def _guide_for(models: Models, mode: str, config: TranslationConfig, source: Image.Image, style: Image.Image):
    x_src, x_style, _ = prepare_images(config, source, style if mode == "image" else None, models.device,
                                       SIZE_MULTIPLE[models.config.generator])
    guide = build_guide(
        config, schedule_for(config.steps), x_src, vit=models.vit, clip=models.clip if mode == "text" else None,
        style=x_style, text=TEXT if mode == "text" else None, source_text=SOURCE_TEXT if mode == "text" else None)
    return x_src, guide


def compare_capture(models: Models, mode: str, *, source: Image.Image, style: Image.Image, steps: int = 10) -> dict:
    """The captured step against the eager one on the same inputs (batch 1): the cosine of one step's
    guidance shift σ²·g (guided minus unguided x_{t-1}, noise zero) and x̂0 after ``steps`` steps."""
    config = preset(mode, generator=models.config.generator)
    capture = models.config.step_capture
    x_src, guide = _guide_for(models, mode, config, source, style)
    g = torch.Generator().manual_seed(0)
    x = (x_src + 0.5 * torch.randn(x_src.shape, generator=g).to(x_src.device)).contiguous()
    i = torch.full((1,), config.t_start, device=x.device, dtype=torch.long)
    noise = torch.zeros_like(x)
    views = guide.draw_views([torch.Generator().manual_seed(1)], *x.shape[2:])
    state = guide.initial_state(1)
    y = draw_classes(models.unet, [torch.Generator().manual_seed(3)], None, x.device)  # the 512 model's class
    with torch.no_grad():  # the unguided posterior mean: what x_{t-1} is with noise zero and no gradient
        base = p_mean_variance(guide.schedule, unet_out(models.unet, guide.schedule, x, i, y), x, i).mean
    shift = {name: step_function(name, models.unet, guide.schedule, guide, 1, compile_backend=COMPILE_BACKEND)(
                 guide, x, i, noise, views, state, y).x_prev - base
             for name in ("eager", capture)}
    cosine = torch.nn.functional.cosine_similarity(shift["eager"].flatten().double(), shift[capture].flatten().double(), dim=0)
    x0 = {}
    for name in ("eager", capture):
        step = step_function(name, models.unet, guide.schedule, guide, 1, compile_backend=COMPILE_BACKEND)
        x0[name] = sample_guided(models.unet, guide.schedule, guide, x_src, [torch.Generator().manual_seed(2)],
                                 t_start=steps - 1, repeats=1, restart_threshold=math.inf, step=step).x0
    diff = (x0[capture] - x0["eager"]).abs()
    return dict(
        capture_vs_eager_shift_cosine=round(cosine.item(), 6),
        capture_vs_eager_x0_max_abs=round(diff.max().item(), 6),
        capture_vs_eager_x0_mean_abs=round(diff.mean().item(), 6),
        capture_compare_steps=steps,
    )


def bench_full_run(models: Models, mode: str, batch: int, *, source: Image.Image, style: Image.Image, restarts: bool) -> dict:
    """One whole default translation (the mode's preset) through ``dsct.translate``, timed end to end."""
    device = models.device
    config = preset(mode, samples=batch, range_restart=restarts, generator=models.config.generator)
    eager = models.config.step_capture == "eager"
    counter = watch_models(models) if eager else NoCounter()  # a replayed graph runs no hooks
    _reset_peak(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    results = translate(models, source, style=style if mode == "image" else None,
                        text=TEXT if mode == "text" else None, source_text=SOURCE_TEXT if mode == "text" else None,
                        config=config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    counts = counter.snapshot()
    counter.remove()
    evaluations = counts["unet.forward"] if eager else None
    expected = config.t_start + config.resample_repeats
    return dict(
        full_run_seconds=round(seconds, 3),
        step_capture=models.config.step_capture,
        guided_evaluations=evaluations,
        seconds_per_evaluation=round(seconds / max(evaluations or expected, 1), 4),
        expected_evaluations=config.t_start + config.resample_repeats,
        restarts=[r.restarts for r in results],
        range_restart=restarts,
        peak_memory_mb=round(peak_memory_mb(device), 1),
    )


# --- AGG work (SPEC-AGG §9) ------------------------------------------------------------------

# SPEC-AGG §9 at the defaults (respacing "100", skip 40, t_edit 20, n_cuts 8), written out from its table
SPEC_AGG_9 = dict(inversion_forwards=60, guided_steps=19, plain_steps=41, vit_per_guided_step_image=1,
                  clip_views_with_grad=8, clip_views_without_grad=8)


def _nonzero(counts: Counter) -> dict:
    return {k: v for k, v in sorted(counts.items()) if v}


def _step_groups(steps: list[tuple[int, Counter]]) -> list[dict]:
    """Consecutive steps that ran the same work, as {first_i, last_i, steps, work per step}."""
    groups: list[dict] = []
    for i, counts in steps:
        work = _nonzero(counts)
        if groups and groups[-1]["per_step"] == work:
            groups[-1]["last_i"], groups[-1]["steps"] = i, groups[-1]["steps"] + 1
        else:
            groups.append(dict(first_i=i, last_i=i, steps=1, per_step=work))
    return groups


def count_agg(models: Models, mode: str, batch: int, *, source: Image.Image, style: Image.Image,
              config: TranslationConfig | None = None) -> dict:
    """AGG's work, counted by hooks on the real modules: per source and per step, then one whole translate.

    The phases run the library's pieces in the pipeline's order (``ddim_invert``, ``build_guide``,
    ``sample_agg`` with a step callback); the whole ``translate`` of the same request is counted
    separately, and ``scoring`` is what it ran beyond those phases (the ranking of the finished samples).
    Counts are calls (``forward``: one per batched call) and images (``images``: samples in those calls);
    ``*_grad`` are the forwards that kept a graph. ``config``: default the mode's AGG preset.
    """
    config = config or preset(mode, method="agg", generator=models.config.generator)
    config = dataclasses.replace(config, samples=batch)
    device, text_mode = models.device, mode == "text"
    schedule = schedule_for(config.steps)
    x_src, x_style, _ = prepare_images(config, source, style if not text_mode else None, device,
                                       SIZE_MULTIPLE[models.config.generator])
    texts = dict(text=TEXT, source_text=SOURCE_TEXT) if text_mode else dict(text=None, source_text=None)
    steps: list[tuple[int, Counter]] = []
    with watch_models(models) as counter:
        inversion = ddim_invert(models.unet, schedule, x_src, config.t_start)
        stage_a = counter.snapshot()
        counter.reset()
        guide = build_guide(config, schedule, x_src, vit=models.vit, clip=models.clip if text_mode else None,
                            style=x_style, inversion=inversion, **texts)
        fixed = counter.snapshot()
        counter.reset()

        def on_step(event: StepEvent) -> None:
            steps.append((event.i, counter.snapshot()))
            counter.reset()

        sample_agg(models.unet, guide.schedule, guide, guide.fixed.inv_start,
                   [torch.Generator().manual_seed(k) for k in range(batch)], callback=on_step)
        loop = sum((c for _, c in steps), Counter())
        counter.reset()
        translate(models, source, style=style if not text_mode else None, config=config, **texts)
        whole = counter.snapshot()
    scoring = whole - stage_a - fixed - loop  # Counter subtraction drops what is not positive
    unaccounted = (stage_a + fixed + loop) - whole  # work the pieces ran but translate did not: should be empty
    groups = _step_groups(steps)
    guided = [g for g in groups if g["per_step"].get("unet.forward_grad")]
    clip_names = models.clip.names if models.clip is not None and text_mode else ()
    return dict(
        method="agg", mode=mode, batch=batch, steps=config.steps, skip=config.skip, t_edit=config.t_edit,
        t_boost=config.t_boost, n_cuts=config.n_cuts,
        # per source
        inversion_unet_forwards=stage_a["unet.forward"], inversion_unet_forwards_grad=stage_a["unet.forward_grad"],
        inversion_unet_images=stage_a["unet.images"],
        fixed_vit_forwards=fixed["vit.forward"], fixed_unet_forwards=fixed["unet.forward"],
        fixed_clip_images_per_model={n: fixed[f"clip:{n}.images"] for n in clip_names},
        # per sample (loop): calls are batched, so a sample's forwards are images / batch
        loop_unet_forwards=loop["unet.forward"], loop_unet_forwards_grad=loop["unet.forward_grad"],
        loop_unet_backwards=loop["unet.backward"],
        per_sample_unet_forwards=_per_step(loop["unet.images"], batch),
        per_sample_unet_forwards_grad=_per_step(loop["unet.images_grad"], batch),
        guided_steps=sum(g["steps"] for g in guided), plain_steps=sum(g["steps"] for g in groups if g not in guided),
        loop_vit_forwards=loop["vit.forward"], loop_vit_forwards_grad=loop["vit.forward_grad"],
        loop_vit_backwards=loop["vit.backward"],
        loop_clip_per_model={n: dict(images_grad=loop[f"clip:{n}.images_grad"],
                                     images_no_grad=loop[f"clip:{n}.images"] - loop[f"clip:{n}.images_grad"],
                                     backward=loop[f"clip:{n}.backward"]) for n in clip_names},
        step_groups=groups,
        scoring=_nonzero(scoring),
        translate_unet_forwards=whole["unet.forward"], translate_unet_images=whole["unet.images"],
        translate_unet_backwards=whole["unet.backward"],
        pieces_not_in_translate=_nonzero(unaccounted),
        params_with_grad=params_with_grad(models)[0],
    )


# --- command line --------------------------------------------------------------------------


def unet_forward_work() -> dict[str, dict[str, float]]:
    """One batch-1 forward without grad of each real UNet at its own size, on the meta device: its TFLOP
    (SPEC §6: 2.24 and 3.96; PyTorch's FlopCounterMode) with their ratio, and its ATen operators (an AGG
    plain pass; ``dsct.budget.PLAIN_PASS_SHARE`` sets them against a guided step's ``aten_ops_per_step``)."""
    from torch.utils.flop_counter import FlopCounterMode

    tflop, ops = {}, {}
    for generator, side in (("imagenet", 256), ("imagenet512", 512)):
        unet = build_unet(UNET_ARCH[generator], device="meta")
        y = torch.zeros(1, dtype=torch.long, device="meta") if unet.num_classes else None
        counter = OpCounter()
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            counter.start()
            unet(torch.zeros(1, 3, side, side, device="meta"), torch.zeros(1, device="meta"), *(() if y is None else (y,)))
            ops[generator] = counter.stop()
        tflop[generator] = round(flops.get_total_flops() / 1e12, 3)
    tflop["ratio"] = round(tflop["imagenet512"] / tflop["imagenet"], 3)
    return dict(unet_forward_tflop=tflop, unet_forward_aten_ops=ops)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor() or platform.machine())
    return f"{model}, {torch.get_num_threads()} threads"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "narrow", "full"), default="tiny")
    p.add_argument("--generator", choices=tuple(UNET_ARCH), default="imagenet",
                   help="imagenet512: the class-conditional 512 model at its 512 working size (SPEC §6)")
    p.add_argument("--unet-flops", action="store_true",
                   help="also print one UNet forward's FLOPs and ATen ops, 256 model at 256² vs 512 model at 512² "
                        "(meta device)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--mode", choices=("text", "image"), nargs="+", default=["text"], help="one JSON line per mode and batch")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="samples per batch (one JSON line each)")
    p.add_argument("--steps", type=int, default=5, help="measured guided steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="guided steps run first and not measured")
    p.add_argument("--height", type=int, default=256, help="source image height (the working size follows the preset)")
    p.add_argument("--width", type=int, default=256, help="source image width")
    p.add_argument("--clip-models", nargs="+", default=None, metavar="NAME",
                   help=f"CLIP models for narrow/full (default all: {' '.join(OPENAI_MODELS)}); tiny has its own two")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute UNet blocks in backward (less memory)")
    p.add_argument("--channels-last", action="store_true", help="channels_last weights for the UNet and CLIP ResNets")
    p.add_argument("--compile-unet", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the UNet forward only (mode: default, max-autotune-no-cudagraphs, ...)")
    p.add_argument("--graph", action="store_true", help="every step replayed as one CUDA graph (step_capture='cuda-graph')")
    p.add_argument("--compile", action="store_true",
                   help="the whole step compiled (step_capture='compile': Inductor, fullgraph, reduce-overhead on CUDA)")
    p.add_argument("--compile-backend", default=None, metavar="NAME",
                   help="with --compile: a torch.compile backend other than inductor (aot_eager: a quick CPU check)")
    p.add_argument("--compare-capture", action="store_true",
                   help="with --graph or --compile: also the captured vs eager guidance-shift cosine of one step and "
                        "x̂0 after 10 steps")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--fold-bn", action="store_true", help="fold the CLIP ResNets' eval BatchNorm into their convs")
    p.add_argument("--native-groupnorm", action="store_true",
                   help="run the UNet's GroupNorm in the compute dtype instead of fp32")
    p.add_argument("--plain-attention", action="store_true",
                   help="CLIP ViTs: open_clip's plain-linear + SDPA blocks instead of nn.MultiheadAttention")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--profile", action="store_true",
                   help="CUDA: a second, profiled pass per row adds GPU kernel time and kernel launches per step")
    p.add_argument("--count-ops", action="store_true",
                   help="a second pass per row adds ATen ops per step (≈ kernel launches; same at every width)")
    p.add_argument("--full-run", action="store_true", help="also time one whole default translation, text and image, per batch")
    p.add_argument("--restarts", action="store_true",
                   help="keep range restarts on in --full-run (off by default: random weights trigger them spuriously)")
    p.add_argument("--no-steps", action="store_true", help="skip the step benchmark (only --full-run)")
    p.add_argument("--agg-counts", action="store_true",
                   help="also count AGG's work (SPEC-AGG §9) per --mode and --batch at its preset: Stage A per source, "
                        "each step, scoring, and one whole translate (hooks only; size-independent counts)")
    p.add_argument("--agg-image-size", type=int, default=None, metavar="PX",
                   help="with --agg-counts: working size instead of the preset's 256 (the counts do not depend on it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.profile and device.type != "cuda":
        raise SystemExit("--profile reads GPU kernel times: it needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    modes = [] if args.no_steps else list(dict.fromkeys(args.mode))
    full_modes = ["text", "image"] if args.full_run else []
    agg_modes = list(dict.fromkeys(args.mode)) if args.agg_counts else []
    needs_clip = "text" in modes + full_modes + agg_modes
    clip_names = tuple(args.clip_models or OPENAI_MODELS) if needs_clip else None

    start = time.perf_counter()
    if args.graph and args.compile:
        raise SystemExit("--graph and --compile are two ways to capture the step: pick one")
    capture = "cuda-graph" if args.graph else "compile" if args.compile else "eager"
    global COMPILE_BACKEND
    COMPILE_BACKEND = args.compile_backend
    if args.compare_capture and capture == "eager":
        raise SystemExit("--compare-capture compares --graph or --compile with eager steps: give one of them")
    models = build_models(args.size, device, args.dtype, clip_names=clip_names, grad_checkpointing=args.grad_checkpointing,
                          capture=capture, generator=args.generator)
    apply_speed_options(models, channels_last=args.channels_last, compile_mode=args.compile_unet, fold_bn=args.fold_bn,
                        native_groupnorm=args.native_groupnorm, plain_attention=args.plain_attention)
    build_seconds = time.perf_counter() - start
    weights_mb = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    source = synthetic_image(args.width, args.height, seed=1)
    style = synthetic_image(args.width, args.height, seed=2).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    common = dict(
        size=args.size, generator=args.generator, device=args.device, machine=machine(device), torch=torch.__version__,
        dtype=args.dtype,
        height=args.height, width=args.width, grad_checkpointing=args.grad_checkpointing,
        channels_last=args.channels_last, compile_unet=args.compile_unet, cudnn_benchmark=args.cudnn_benchmark,
        fold_bn=args.fold_bn, native_groupnorm=args.native_groupnorm, plain_attention=args.plain_attention,
        clip_models=list(models.clip.names) if models.clip is not None else [],
        build_seconds=round(build_seconds, 1), weights_mb=None if weights_mb is None else round(weights_mb, 1),
    )
    if args.unet_flops:
        print(json.dumps(unet_forward_work()), flush=True)
    for mode in modes:
        for batch in args.batch:
            row = bench_steps(models, mode, batch, steps=args.steps, warmup=args.warmup, source=source, style=style,
                              count_attention=not args.compile_unet)
            if args.profile:
                row |= bench_steps(models, mode, batch, steps=args.steps, warmup=args.warmup, source=source,
                                   style=style, profile=True, count_attention=not args.compile_unet)
            if args.count_ops:
                row |= bench_steps(models, mode, batch, steps=args.steps, warmup=args.warmup, source=source,
                                   style=style, count_ops=True, count_attention=not args.compile_unet)
            if args.compare_capture and batch == args.batch[0]:
                row |= compare_capture(models, mode, source=source, style=style)
            print(json.dumps(dict(common, mode=mode, batch=batch, steps=args.steps, warmup=args.warmup, **row)), flush=True)
    for mode in full_modes:
        for batch in args.batch:
            row = bench_full_run(models, mode, batch, source=source, style=style, restarts=args.restarts)
            print(json.dumps(dict(common, mode=mode, batch=batch, **row)), flush=True)
    for mode in agg_modes:
        for batch in args.batch:
            sized = {} if args.agg_image_size is None else dict(size=args.agg_image_size, max_long_side=args.agg_image_size)
            row = count_agg(models, mode, batch, source=source, style=style,
                            config=preset(mode, method="agg", generator=args.generator, **sized))
            print(json.dumps(dict(common, **row, spec_agg_9=SPEC_AGG_9)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
