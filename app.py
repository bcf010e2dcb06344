"""DSCT Space: translate a photo toward a target text or a style image (DiffuseIT, ICLR 2023).

``python app.py`` serves the real models (``python -m dsct download`` fetches them once);
``python app.py --tiny`` (or ``DSCT_TINY=1``) serves tiny random models, which test the interface
but make no meaningful picture. Order (STYLE §10): imports → constants → the GPU function and
thin handlers → ``build_demo(models)`` (layout, wiring, examples) → model loading under ``__main__``.
"""

from __future__ import annotations

import spaces  # noqa: I001 — first: on ZeroGPU it must patch CUDA before torch is imported

import argparse
import contextvars
import dataclasses
import functools
import inspect
import logging
import math
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, get_args

import gradio as gr
import torch
from PIL import Image

from dsct import (
    Cancelled, ConfigError, DSCTError, ImageError, ModelConfig, Models, Result, StepEvent, TranslationConfig,
    load_models, preset, translate,
)
from dsct import budget
from dsct.config import MAX_SAMPLES, RANGES, GeneratorName, Mode, StepCapture, format_range
from dsct.images import fit_to, load_image, to_pil, working_size
from dsct.pipeline import check_request

log = logging.getLogger("dsct.app")

# --- constants -----------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent / "examples"
TEXT_EXAMPLES = [  # (source, source text, target text); licences in examples/README.md
    ["cat.png", "Cat", "Black Leopard"],
    ["coffee.png", "Cup of coffee", "Cup of green tea"],
    ["astronaut.png", "Photo", "Watercolor painting"],
    ["rocket.png", "Rocket launch", "Volcanic eruption"],
]
STYLE_EXAMPLES = [  # (source, style image)
    ["cat.png", "hubble.png"],
    ["rocket.png", "retina.png"],
    ["coffee.png", "bricks.png"],
    ["astronaut.png", "hubble.png"],
]
GENERATOR_LABELS: dict[str, str] = {"imagenet": "ImageNet (any photo)", "ffhq": "Faces (FFHQ)"}
TAB_LABELS: dict[str, str] = {"text": "Text → image", "image": "Style image"}

# The Advanced accordion, grouped as SPEC §4 groups the losses; a tab shows the fields its handler takes.
ADVANCED: dict[str, tuple[str, ...]] = {
    "Content (structure)": ("lambda_ssim", "lambda_contra", "lambda_div", "divergence_until", "noise_aug",
                            "regularize_content", "prog_contrast"),
    "Style / text": ("lambda_clip", "n_cuts", "lambda_cls", "lambda_l2"),
    "Regularisers": ("lambda_range", "lambda_id", "range_restart", "max_restarts", "restart_threshold"),
    "Size": ("size", "max_long_side", "resize_mode"),
}
# Every input in words: (label, what it changes in the picture). The labels are for people; the
# API keeps the parameter names, and its descriptions are these same words (see _describe).
WORDS: dict[str, tuple[str, str]] = {
    "source": ("Photo to translate", "its layout is kept; any common format, transparency composited on white"),
    "style": ("Style image", "the look to take on: colours, textures, the feel of the picture"),
    "source_text": ("What the photo shows", "a few words, e.g. 'Lion'; the change is measured from it"),
    "text": ("What it should become", "e.g. 'Black Leopard'; press Enter to run"),
    "generator": ("Model", "ImageNet knows any photo; Faces knows aligned portraits and keeps the identity"),
    "steps": ("Diffusion steps", "more steps: finer detail, slower"),
    "skip": ("Keep more of the source (skip)", "higher keeps more of the photo and changes less"),
    "resampling": ("Resampling", "repeat the first step a few times: a stronger change for a little more time"),
    "resample_repeats": ("Resampling repeats", "how often the first step is repeated; 1 is none"),
    "samples": ("Samples", "pictures made at once (cheaper than separate runs), best first"),
    "seed": ("Seed", "the same seed and settings give the same pictures; sample k uses seed + k"),
    "colour_match": ("Match the style's colours", "give the result the style image's colour palette"),
    "lambda_ssim": ("Keep the layout", "how strictly the shapes and their arrangement follow the photo"),
    "lambda_contra": ("Keep local structure", "how closely each patch keeps its own content"),
    "lambda_div": ("Push away from the photo early", "speeds up the change in the first steps"),
    "divergence_until": ("Push until step", "the early push stops once fewer steps than this remain"),
    "noise_aug": ("Structure check on noisy previews", "steadier structure guidance (the paper's setting)"),
    "regularize_content": ("Guard the layout once the text fits", "keeps the change from overshooting"),
    "prog_contrast": ("Relax the layout until the text fits", "lets a hard change happen sooner"),
    "lambda_clip": ("Follow the text", "how strongly the picture is pulled toward the target words"),
    "n_cuts": ("Views of the text check", "more random crops: steadier guidance, slower"),
    "lambda_cls": ("Take the style's look", "how strongly the overall appearance follows the style image"),
    "lambda_l2": ("Take the style's colours and tones", "pulls the pixels toward the style image"),
    "lambda_range": ("Keep colours in range", "avoids washed-out or saturated blotches"),
    "lambda_id": ("Keep the person's identity", "Faces model only: the face stays recognisable"),
    "range_restart": ("Restart broken samples", "start a sample over when its colours run out of range"),
    "max_restarts": ("Restarts per sample at most", "bounds the extra time broken samples may take"),
    "restart_threshold": ("Restart threshold", "lower restarts more readily (faces: 0.1)"),
    "size": ("Working size", "short side in pixels the model works at; larger is slower and needs more memory"),
    "max_long_side": ("Longest side at most", "pixels; a wider photo is cropped to this"),
    "resize_mode": ("Fit", "keep the aspect ratio, or crop a square from the centre"),
}
RESIZE_CHOICES = [("Keep the aspect ratio", "resize"), ("Square crop", "center_crop")]
# Sliders stop where hand-tuning stops (the SPEC §5 weights are at most 3000); the API may send
# anything in config.RANGES, and TranslationConfig, not the slider, decides what is valid.
WEIGHT_SLIDER_MAX = 10_000.0
NUMBER_FIELDS = frozenset({"seed", "restart_threshold"})  # typed, not slid: their ranges span decades

PREVIEW_EVERY = 5  # guided steps between x̂0 previews: the PNG round trip costs more than it shows
MAX_QUEUE = 20
CPU_FORWARD_S = 25  # README: one forward of the real 552M UNet on a 2-core CPU

# ZeroGPU: a call declares its GPU time up front and is killed when it overruns it. The Space sets
# SPACES_ZERO_GPU (the variable the spaces package itself reads).
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

CSS = """
.dsct-banner { border-left: 4px solid #d97706; padding: 0.4em 0.8em; background: rgba(217, 119, 6, 0.08); }
"""
LAUNCH_KWARGS: dict[str, Any] = dict(theme=gr.themes.Soft(), css=CSS, mcp_server=True)

_FIELDS = {f.name: f for f in dataclasses.fields(TranslationConfig)}
_MODELS: dict[str, Models] = {}  # generator -> loaded models; read by the GPU function (a forked worker on ZeroGPU)
_MEASURED_SPEED: dict[tuple[str, str], budget.StepSpeed] = {}  # (generator, mode) -> the last timed run on CUDA
T = TypeVar("T")


# --- inputs that leave validation to TranslationConfig -------------------------------------


class ConfigSlider(gr.Slider):
    """A slider whose bounds guide the hand only: values reach TranslationConfig unchecked, so an
    API caller's out-of-range value gets the config's message, which names the field."""

    is_template = True  # rendered by the frontend as a plain slider

    def preprocess(self, payload: Any) -> Any:
        return payload


class ConfigNumber(gr.Number):
    """A number box that, like ConfigSlider, leaves range and type checks to TranslationConfig."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class ConfigRadio(gr.Radio):
    """Radio buttons that, like ConfigSlider, leave the check of an API caller's value to dsct, whose
    message names the field and its choices (gr.Radio's own refusal reaches gradio_client as a bare 400)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class ImageInput(gr.Image):
    """An image input that hands dsct the uploaded file itself.

    gr.Image would decode the whole upload and save it again as 8-bit RGB: a 16-bit PNG would
    arrive nearly white, transparency would be dropped instead of composited on white, and a huge
    upload would be decoded before dsct's size limit (read from the header) could refuse it. The
    same file then gives the same result through the app, the CLI and the library.
    """

    is_template = True

    def preprocess(self, payload: Any) -> str | None:
        return None if payload is None else str(payload.path)


# --- the GPU function ----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One guided step done; ``previews`` (x̂0 with captions) only every PREVIEW_EVERY steps."""

    step: int
    total: int
    batch: int  # samples that ran this step
    restarts: int  # range restarts so far, all samples together
    previews: list[tuple[Any, str]] | None


@dataclass(frozen=True)
class Done:
    results: list[Result]


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


def speed_of(generator: str, mode: str) -> budget.StepSpeed:
    """This process's last measurement on CUDA, else the H100 figure scaled by PRIOR_SLOWDOWN."""
    measured = _MEASURED_SPEED.get((generator, mode))
    return measured or budget.StepSpeed(budget.H100_STEP_SECONDS[mode] * PRIOR_SLOWDOWN)


def cost(generator: str, config: TranslationConfig, pixels: int) -> tuple[float, float]:
    """(wall seconds, peak GB) of a request: the one cost model behind the plan and the UI's estimate."""
    sampling = budget.run_seconds(config, pixels, speed_of(generator, config.mode))
    return (GPU_START_S + FINISH_S + RESTART_MARGIN * sampling,
            budget.peak_memory_gb(config.mode, config.samples, pixels))


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
    if any(m.device.type == "cuda" for m in _MODELS.values()):
        device = next(m.device for m in _MODELS.values() if m.device.type == "cuda")
        return torch.cuda.get_device_properties(device).total_memory / 1e9 * MEMORY_HEADROOM
    return None


def _work_size(config: TranslationConfig, width: int, height: int) -> tuple[int, int]:
    """The (W, H) a source of width x height is sampled at under the config's size policy."""
    return working_size(width, height, size=config.size, max_long_side=config.max_long_side,
                        resize_mode=config.resize_mode)


def make_plan(mode: Mode, values: Mapping[str, Any]) -> Plan:
    """Check a handler's arguments and what they would cost, before any GPU is asked for.

    Raises DSCTError with the message for the user (ConfigError names the field to change).
    """
    generator = values.get("generator")
    if not isinstance(generator, str) or generator not in _MODELS:
        raise ConfigError("generator", generator, f"one of {', '.join(map(repr, _MODELS))} (loaded here)")
    source, style = values.get("source"), values.get("style")
    text, source_text = values.get("text"), values.get("source_text")
    config = preset(mode, generator=generator, **_settings(values))  # the one validator
    request = check_request(config, source, text=text, source_text=source_text, style=style)
    width, height = _work_size(config, *request.source.size)
    seconds, memory = cost(generator, config, width * height)
    limit = memory_limit_gb()
    if limit is not None and memory > limit:
        fit = budget.max_samples_that_fit(mode, width * height, limit)
        what = f"at most {fit} at {width}x{height}" if fit else "1 only at a smaller size or max_long_side"
        raise ConfigError("samples", config.samples, f"{what}: {config.samples} would need about {memory:.0f} GB "
                                                     f"of GPU memory and {limit:.0f} GB can be used here")
    if ON_ZERO_GPU and seconds > ZERO_GPU_MAX_S:
        raise ConfigError("steps", config.steps, f"fewer: this request needs about {seconds:.0f} s of GPU time and "
                          f"ZeroGPU allows {ZERO_GPU_MAX_S} s per call: lower steps, samples or resample_repeats, "
                          "or raise skip")
    return Plan(generator, source, style, request.text, request.source_text, config, width * height, seconds, memory)


def _user_error(error: BaseException) -> gr.Error:
    """Every failure as a gr.Error whose message says what went wrong (and, where we know, what to do)."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, DSCTError):  # the user's to fix: no server traceback
        return gr.Error(str(error), print_exception=False)
    if isinstance(error, torch.OutOfMemoryError):
        return gr.Error("out of GPU memory: lower samples, size or max_long_side")
    log.error("translation failed", exc_info=error)
    return gr.Error(f"translation failed ({type(error).__name__}: {error})")


@spaces.GPU(duration=gpu_duration)
def run_translation(plan: Plan) -> Iterator[Step | Done]:
    """Run ``dsct.translate`` in a thread and yield a Step per guided step, then Done.

    A sync generator, so ZeroGPU streams what it yields. When it is closed (Stop, a closed tab),
    the next progress callback raises Cancelled and the sampler stops between two steps. On
    ZeroGPU the run gets a deadline inside the granted time: near it no range restart starts and
    the samples that finished are returned, rather than the call being killed with nothing.
    """
    models, config = _MODELS[plan.generator], plan.config
    deadline = time.monotonic() + plan.seconds - GPU_START_S - FINISH_S if ON_ZERO_GPU else None
    events: queue.SimpleQueue[Step | Done | BaseException] = queue.SimpleQueue()
    stop = threading.Event()

    def on_step(event: StepEvent) -> None:
        if stop.is_set():
            raise Cancelled("stopped by the user")
        previews = None
        if (event.step - 1) % PREVIEW_EVERY == 0:
            captions = (f"sample {k + 1} · step {event.step}/{event.total}" for k in event.sample_ids)
            previews = list(zip(to_pil(event.x0_pred), captions))
        events.put(Step(event.step, event.total, len(event.sample_ids), sum(event.restarts), previews))

    def work() -> None:
        try:
            events.put(Done(translate(models, plan.source, text=plan.text, source_text=plan.source_text,
                                      style=plan.style, config=config, callback=on_step, deadline=deadline)))
        except BaseException as e:  # handed to the generator, which raises it in the caller's thread
            events.put(e)

    thread = threading.Thread(target=work, name="dsct-translate", daemon=True)
    thread.start()
    try:
        while True:
            item = events.get()
            if isinstance(item, BaseException):
                raise _user_error(item) from item
            yield item
            if isinstance(item, Done):
                return
    finally:  # closed by _drained's thread (or spaces' worker), never on the event loop: waiting is fine
        stop.set()
        thread.join()  # at most one step: the GPU is not handed on while a step still runs on it


# --- handlers ------------------------------------------------------------------------------


def _settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The TranslationConfig fields among a handler's arguments; the resampling toggle off means 1 repeat."""
    settings = {name: value for name, value in values.items() if name in _FIELDS}
    resampling = values.get("resampling", True)
    if not isinstance(resampling, bool):  # an API caller's "no" must not count as on
        raise ConfigError("resampling", resampling, "true or false")
    if not resampling:
        settings["resample_repeats"] = 1
    return settings


def _caption(result: Result) -> str:
    parts = [f"#{result.rank}", f"seed {result.seed}", f"content {result.content_score:.3f}",
             f"target {result.target_score:.3f}"]
    if result.restarts:
        parts.append(f"restarts {result.restarts}")
    if result.note:
        parts.append(result.note)
    if result.tiny:
        parts.append("tiny model: not meaningful")
    return " · ".join(parts)


def _gallery(results: Sequence[Result]) -> list[tuple[Any, str]]:
    return [(r.image, _caption(r)) for r in results]


_END = object()


def _drained(gpu: Generator[T, None, None]) -> Iterator[T]:
    """``gpu``'s items, read by a thread of their own.

    Gradio closes a cancelled generator on its event loop. Closing spaces' ZeroGPU wrapper waits
    for the worker's next yield, which would stall the whole server for up to a step; closing this
    generator only raises a flag, and the thread closes ``gpu`` after its next item.
    """
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stop = threading.Event()

    def drain() -> None:
        try:
            for item in gpu:
                items.put(item)
                if stop.is_set():
                    break
        except BaseException as e:  # raised again in the consumer's thread
            items.put(e)
        finally:
            try:
                gpu.close()
            finally:
                items.put(_END)  # whatever closing raised, the consumer is not left waiting

    # gradio's request context (spaces reads the visitor's token from it) travels with the thread
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(drain,), name="dsct-gpu-drain", daemon=True).start()
    try:
        while (item := items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _stream(plan: Plan, progress: gr.Progress | None) -> Iterator[Step | Done]:
    """Run a plan on the GPU and report progress; times this GPU's steps for the next plans."""
    config, last_at, full_batch_seconds = plan.config, None, []  # time between steps that ran every sample
    for update in _drained(run_translation(plan)):
        if isinstance(update, Step):
            now = time.perf_counter()
            if last_at is not None and update.batch == config.samples:
                full_batch_seconds.append(now - last_at)
            last_at = now
            if progress is not None:
                restarted = f" (restart {update.restarts})" if update.restarts else ""
                progress((update.step, update.total), desc=f"guided step{restarted}", unit="steps")
        else:
            # a small image is no faster per pixel_factor (never below 1): its timing would undercount
            if (full_batch_seconds and _MODELS[plan.generator].device.type == "cuda"
                    and plan.pixels >= budget.REFERENCE_PIXELS):
                seconds = sum(full_batch_seconds) / len(full_batch_seconds)
                _MEASURED_SPEED[(plan.generator, config.mode)] = budget.StepSpeed.from_measurement(
                    seconds, config.samples, plan.pixels)
            if (missing := config.samples - len(update.results)) > 0:
                gr.Warning(f"{missing} of {config.samples} samples did not finish within the GPU time; "
                           "the finished ones are shown")
        yield update


def _outputs(updates: Iterator[Step | Done]) -> Iterator[tuple[Any, Any]]:
    """(results gallery, preview gallery) for each update; gr.skip() leaves an output as it is.
    The previews are cleared when the results arrive."""
    for update in updates:
        if isinstance(update, Done):
            yield _gallery(update.results), []
        else:
            yield gr.skip(), gr.skip() if update.previews is None else update.previews


def _planned(mode: Mode, values: Mapping[str, Any]) -> Plan:
    """make_plan, its refusals as gr.Error (shown to the user without a server traceback)."""
    try:
        return make_plan(mode, values)
    except DSCTError as e:
        raise _user_error(e) from e


def translate_text(
    source: str | None, source_text: str, text: str, generator: str, steps: int, skip: int, resampling: bool,
    resample_repeats: int, samples: int, seed: int, lambda_ssim: float, lambda_contra: float, lambda_div: float,
    divergence_until: int, noise_aug: bool, regularize_content: bool, prog_contrast: bool, lambda_clip: float,
    n_cuts: int, lambda_range: float, lambda_id: float, range_restart: bool, max_restarts: int,
    restart_threshold: float, size: int, max_long_side: int, resize_mode: str,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[tuple[Any, Any]]:
    """Translate the source image toward the target text (`text`), given what it shows (`source_text`).

    Streams (results, x̂0 previews); results are best first, captioned with seed and scores. The UI's
    faces preset (generator='ffhq') sets lambda_id=100 and restart_threshold=0.1: API callers pass them.
    """
    yield from _outputs(_stream(_planned("text", locals()), progress))


def translate_image(
    source: str | None, style: str | None, generator: str, steps: int, skip: int, resampling: bool,
    resample_repeats: int, samples: int, seed: int, colour_match: bool, lambda_ssim: float, lambda_contra: float,
    lambda_div: float, divergence_until: int, noise_aug: bool, lambda_cls: float, lambda_l2: float,
    lambda_range: float, lambda_id: float, range_restart: bool, max_restarts: int, restart_threshold: float,
    size: int, max_long_side: int, resize_mode: str,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[tuple[Any, Any]]:
    """Translate the source image toward the look of the style image, keeping the source's structure.

    Yields (results best first, x̂0 previews). For the UI's faces preset, API callers choosing
    generator='ffhq' also pass lambda_id=100 and restart_threshold=0.1.
    """
    yield from _outputs(_stream(_planned("image", locals()), progress))


HANDLERS: dict[str, Callable[..., Iterator[tuple[Any, Any]]]] = {"text": translate_text, "image": translate_image}


def handler_inputs(mode: Mode) -> list[str]:
    """A handler's parameters in order: the UI inputs it is wired to, one to one."""
    return [p for p in inspect.signature(HANDLERS[mode]).parameters if p != "progress"]


def _field_of(error: DSCTError, names: Sequence[str]) -> str:
    """The input a refusal belongs to, so the page marks that control."""
    if isinstance(error, ImageError):
        return "style" if "style" in names and "style image" in str(error) else "source"
    field = getattr(error, "field", None)
    if field in names:
        return field
    return "preset" if "preset" in names else names[0]  # the compact endpoint: its preset sets steps and the rest


def estimate(mode: Mode, *values: Any) -> str:
    """The GPU time and memory the current settings would take, shown beside the Translate button."""
    values_by_name = dict(zip(handler_inputs(mode), values))
    try:
        generator = values_by_name["generator"]
        config = preset(mode, generator=generator, **_settings(values_by_name))
        width, height = config.max_long_side, config.size  # the largest working size, until a source is given
        if values_by_name.get("source"):
            with Image.open(values_by_name["source"]) as im:  # the header only
                width, height = _work_size(config, *im.size)
        seconds, memory = cost(generator, config, width * height)
    except DSCTError as e:
        return f"*{e}*"
    except Exception:  # noqa: BLE001 — an unreadable upload: the validator will say why; no estimate
        return ""
    where = "of your daily ZeroGPU quota" if ON_ZERO_GPU else "on this GPU"
    return f"≈ {seconds:.0f} s {where} · ≈ {memory:.0f} GB"


COMPACT_INPUTS = ("source", "text", "source_text", "style", "preset", "samples", "seed", "generator")
_COMPACT_DEFAULTS: dict[str, Any] = {}  # the server's own defaults (tiny models: small settings), from build_demo


def _compact_request(values: Mapping[str, Any]) -> tuple[Mode, dict[str, Any]]:
    """The compact endpoint's few arguments as a full handler request: the preset fills the rest."""
    mode: Mode = "image" if values.get("style") else "text"
    choice, seed = values.get("preset"), values.get("seed")
    if choice not in ("full", "fast"):
        raise ConfigError("preset", choice, "'full' or 'fast'")
    base = preset(mode, fast=choice == "fast", generator=values.get("generator"), **_COMPACT_DEFAULTS)
    settings = {f: getattr(base, f) for f in _FIELDS if f != "mode"}
    return mode, {**settings, "samples": values.get("samples"), "seed": random_seed() if seed == -1 else seed,
                  "source": values.get("source"), "style": values.get("style") or None,
                  "text": values.get("text") or None, "source_text": values.get("source_text") or None,
                  "generator": values.get("generator")}


def _validator(names: Sequence[str], to_request: Callable[[Mapping[str, Any]], tuple[Mode, Mapping[str, Any]]]
               ) -> Callable[..., list[dict[str, Any]]]:
    """An event's validator: runs before the queue (no GPU, no waiting) and marks the bad input."""

    def validate(*values: Any) -> list[dict[str, Any]]:
        try:
            make_plan(*to_request(dict(zip(names, values))))
        except DSCTError as e:
            bad, message = _field_of(e, names), str(e)
        except Exception as e:  # noqa: BLE001 — a bug must not reach the client as a bare HTTP 400
            log.error("validation failed", exc_info=e)
            bad, message = names[0], f"this request could not be checked ({type(e).__name__}: {e})"
        else:
            return [gr.validate(True, "") for _ in names]
        return [gr.validate(n != bad, message if n == bad else "") for n in names]

    return validate


def make_validator(mode: Mode) -> Callable[..., list[dict[str, Any]]]:
    return _validator(handler_inputs(mode), lambda values: (mode, values))


def translate_compact(source: str | None, text: str | None = None, source_text: str | None = None,
                      style: str | None = None, preset: str = "fast", samples: int = 1, seed: int = -1,
                      generator: str = "imagenet", progress: gr.Progress = gr.Progress()) -> tuple[list[tuple[Any, str]], dict[str, Any]]:
    # the docstring (the endpoint's and MCP tool's description) is written by _describe, from COMPACT_HELP
    try:
        mode, values = _compact_request(dict(zip(COMPACT_INPUTS, (source, text, source_text, style, preset, samples,
                                                                  seed, generator))))
    except DSCTError as e:
        raise _user_error(e) from e
    plan = _planned(mode, values)
    results = [u.results for u in _stream(plan, progress) if isinstance(u, Done)][-1]
    info = {"mode": mode, "seeds": [r.seed for r in results],
            "results": [{"rank": r.rank, "seed": r.seed, "content_score": r.content_score,
                         "target_score": r.target_score, "restarts": r.restarts, "note": r.note, "tiny": r.tiny}
                        for r in results]}
    return _gallery(results), info


_validate_compact = _validator(COMPACT_INPUTS, _compact_request)
COMPACT_HELP = {
    "text": "What it should become, e.g. 'Black Leopard' (text mode; leave empty when a style image is given)",
    "source_text": "What the photo shows, e.g. 'Cat' (text mode)",
    "style": "Style image whose look to take on (image mode; then leave text and source_text empty)",
    "preset": "'fast' (about half the time, a weaker change) or 'full' (the paper's settings)",
    "samples": f"Samples: pictures made in one run, 1 to {MAX_SAMPLES}, returned best first",
    "seed": "Seed of the first sample (sample k uses seed + k); -1 draws a random one",
    "generator": "'imagenet' for any photo, 'ffhq' for aligned face portraits (keeps the identity)",
}


def run_example(mode: Mode, generator: str, settings: Mapping[str, Any], source: str, second: str,
                third: str | None = None) -> list[tuple[Any, str]]:
    """The final gallery for one example row (what lazy caching stores), at the tab's initial settings."""
    inputs = dict(source=source, style=second) if mode == "image" else dict(source=source, source_text=second,
                                                                             text=third)
    plan = _planned(mode, {**settings, **inputs, "generator": generator})
    results = [u.results for u in _stream(plan, None) if isinstance(u, Done)]
    return _gallery(results[-1])


def random_seed() -> int:
    return random.randrange(2**31)


# --- the interface -------------------------------------------------------------------------


def _api_help(name: str) -> str:
    """A parameter's description in the API docs and the MCP schema: the words, then the range."""
    label, info = WORDS[name]
    if name in RANGES:
        low, high = RANGES[name]
        kind = "an integer" if _FIELDS[name].type == "int" else "a number"
        return f"{label}: {info} ({kind} in {format_range(low, high)})"
    return f"{label}: {info}"


def _describe(handler: Callable[..., Any], summary: str, returns: str, helps: Mapping[str, str] = {}) -> None:
    """Give a handler the ``Args:`` docstring gradio reads for its MCP tool, one line per parameter
    (``helps`` overrides the words of WORDS where a parameter means something else there)."""
    names = [p for p in inspect.signature(handler).parameters if p != "progress"]
    args = "\n".join(f"    {n}: {helps.get(n) or _api_help(n)}" for n in names)
    handler.__doc__ = f"{summary}\n\nArgs:\n{args}\n\nReturns:\n    {returns}"


def _described(component: gr.components.Component, text: str) -> gr.components.Component:
    """Give a component the description /gradio_api/info and gradio_client show for its parameter."""
    own = getattr(component, "api_info_as_input", component.api_info)
    component.api_info_as_input = lambda: {**own(), "additional_description": text}  # type: ignore[method-assign]
    return component


_describe(translate_compact, "Translate a photo toward a target text or the look of a style image, keeping its "
          "layout (DiffuseIT).", "(gallery, info): the pictures best first with captions, and JSON with the mode, "
          "the seeds and each result's scores (content: lower keeps more of the layout; target: higher is closer)",
          COMPACT_HELP)
_describe(translate_text, "Translate a photo toward a target text, keeping its layout (DiffuseIT).",
          "(results, previews): the pictures best first, captioned with seed and scores; x̂0 previews while running")
_describe(translate_image, "Translate a photo toward the look of a style image, keeping its layout (DiffuseIT).",
          "(results, previews): the pictures best first, captioned with seed and scores; x̂0 previews while running")


def _control(name: str, value: Any, **extra: Any) -> gr.components.Component:
    """The input for one TranslationConfig field, labelled in words (WORDS)."""
    label, info = WORDS[name]
    field, kw = _FIELDS[name], dict(value=value, label=label, info=info, **extra)
    if field.type == "bool":
        return gr.Checkbox(**kw)
    if name == "resize_mode":
        return ConfigRadio(choices=RESIZE_CHOICES, **kw)
    low, high = RANGES[name]
    is_int = field.type == "int"
    if name in NUMBER_FIELDS:
        return ConfigNumber(minimum=low, maximum=high, precision=0 if is_int else None, **kw)
    if name.startswith("lambda_"):
        high = min(high, WEIGHT_SLIDER_MAX)
    step = 32 if name in ("size", "max_long_side") else 1
    return ConfigSlider(minimum=low, maximum=high, step=step, **kw)


def _config_values(config: TranslationConfig, names: Sequence[str]) -> list[Any]:
    """Values for the controls ``names``: config fields, plus the resampling toggle."""
    return [config.resample_repeats > 1 if n == "resampling" else getattr(config, n) for n in names]


def pick_seed(randomize: bool, seed: Any) -> Any:
    """The seed the run will use, shown in the seed box before it starts."""
    return random_seed() if randomize else seed


def _result_path(gallery: Any, index: int) -> str | None:
    """The file of result ``index`` (clamped), for "use as the source"."""
    if not gallery:
        return None
    item = gallery[min(max(index, 0), len(gallery) - 1)]
    image = item[0] if isinstance(item, (tuple, list)) else item
    return str(getattr(image, "path", image))


def before_after(source: str | None, gallery: Any) -> tuple[Image.Image, Image.Image] | None:
    """The best result beside its source, at the result's size, for the before/after slider."""
    best = _result_path(gallery, 0)
    if not source or best is None:
        return None
    try:
        with Image.open(best) as opened:
            after = opened.convert("RGB")
        before = fit_to(load_image(source, name="source image"), *after.size)  # as the model saw it
    except (DSCTError, OSError):
        return None
    return before, after


def _selected(event: gr.SelectData) -> int:
    return event.index


def _build_tab(mode: Mode, generators: Sequence[str], initial: TranslationConfig, fast: bool,
               cache_examples: bool, show_cost: bool) -> None:
    """One tab: inputs, settings, outputs, wiring and examples for one mode; ``show_cost``: the
    estimated GPU time and memory of the current settings beside the button."""
    names = handler_inputs(mode)
    preset_names = [n for n in names if n in _FIELDS or n == "resampling"]  # what a preset sets
    value = dict(zip(preset_names, _config_values(initial, preset_names)))
    controls: dict[str, gr.components.Component] = {}
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                controls["source"] = ImageInput(label=WORDS["source"][0], type="filepath", height=300)
                if mode == "image":
                    controls["style"] = ImageInput(label=WORDS["style"][0], type="filepath", height=300)
            if mode == "text":
                with gr.Row():
                    for name, example in (("source_text", "Cat"), ("text", "Black Leopard")):
                        controls[name] = gr.Textbox(label=WORDS[name][0], info=WORDS[name][1],
                                                    placeholder=example, max_lines=1)
            with gr.Row():
                speed = gr.Radio([("Full (the paper's settings)", "full"), ("Fast", "fast")],
                                 value="fast" if fast else "full", label="Preset",
                                 info="Fast: half the steps, a weaker change in about half the time")
                controls["generator"] = ConfigRadio(
                    [(GENERATOR_LABELS[g], g) for g in generators], value=generators[0], label=WORDS["generator"][0],
                    info=WORDS["generator"][1], interactive=len(generators) > 1)
            with gr.Row():
                controls["steps"] = _control("steps", value["steps"])
                controls["skip"] = _control("skip", value["skip"])
            with gr.Row():
                controls["resampling"] = gr.Checkbox(value=value["resampling"], label=WORDS["resampling"][0],
                                                     info=WORDS["resampling"][1])
                controls["resample_repeats"] = _control("resample_repeats", value["resample_repeats"],
                                                        interactive=value["resampling"])
            with gr.Row(equal_height=True):
                controls["samples"] = _control("samples", value["samples"])
                controls["seed"] = _control("seed", value["seed"])
                randomize = gr.Checkbox(value=True, label="Randomize seed", info="a new seed for every run",
                                        scale=0, min_width=160)
            if mode == "image":
                controls["colour_match"] = _control("colour_match", value["colour_match"])
            with gr.Accordion("Advanced", open=False):
                for group, fields in ADVANCED.items():
                    shown = [n for n in fields if n in names]
                    if shown:
                        gr.Markdown(f"**{group}**")
                        for n in shown:
                            controls[n] = _control(n, value[n])
            with gr.Row(equal_height=True):
                run = gr.Button("Translate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
                cost_note = gr.Markdown(visible=show_cost, elem_classes="dsct-cost")
        with gr.Column(scale=1):
            slider = gr.ImageSlider(label="Before / after (best result)", type="pil", interactive=False, height=360)
            results = gr.Gallery(label="Results (best first)", format="png", columns=4, height=240,
                                 buttons=["download", "download_all", "share", "fullscreen"], interactive=False)
            reuse = gr.Button("Use the selected result as the source", size="sm")
            previews = gr.Gallery(label="Previews while sampling", format="png", columns=4, height=160,
                                  interactive=False)

    missing = set(names) - set(controls)
    assert not missing, f"handler parameters without a control: {missing}"
    inputs = [_described(controls[n], _api_help(n)) for n in names]
    triggers = [run.click] + ([controls["text"].submit, controls["source_text"].submit] if mode == "text" else [])
    seeded = gr.on(triggers, pick_seed, [randomize, controls["seed"]], controls["seed"], queue=False,
                   show_progress="hidden", api_visibility="private")
    # On ZeroGPU each call gets a GPU of its own, so users need not wait for each other; one local
    # GPU runs one translation at a time, whichever tab it comes from.
    event = seeded.then(HANDLERS[mode], inputs=inputs, outputs=[results, previews], api_name=f"translate_{mode}",
                        validator=make_validator(mode), concurrency_id="gpu",
                        concurrency_limit=None if ON_ZERO_GPU else 1)
    if show_cost:
        start = {**value, "generator": generators[0]}
        cost_note.value = estimate(mode, *[start.get(n) for n in names])
        gr.on([controls[n].change for n in names], functools.partial(estimate, mode), inputs=inputs,
              outputs=cost_note, queue=False, show_progress="hidden", api_visibility="private")
    stop.click(fn=None, cancels=[event])
    results.change(before_after, [controls["source"], results], slider, queue=False, api_visibility="private")
    selected = gr.State(0)
    results.select(_selected, None, selected, queue=False, api_visibility="private")
    results.change(lambda: 0, None, selected, queue=False, api_visibility="private")  # new results: the best
    reuse.click(_result_path, [results, selected], controls["source"], queue=False, api_visibility="private")
    controls["resampling"].change(lambda on: gr.update(interactive=on), controls["resampling"],
                                  controls["resample_repeats"], queue=False, api_visibility="private")

    def apply_preset(choice: str, generator: str) -> list[Any]:
        return _config_values(preset(mode, fast=choice == "fast", generator=generator), preset_names)

    for trigger in (speed, controls["generator"]):
        trigger.input(apply_preset, [speed, controls["generator"]], [controls[n] for n in preset_names],
                      queue=False, api_visibility="private")

    rows = TEXT_EXAMPLES if mode == "text" else STYLE_EXAMPLES
    example_inputs = ["source", "source_text", "text"] if mode == "text" else ["source", "style"]
    settings = {n: v for n, v in value.items() if n in _FIELDS}
    gr.Examples(
        [[str(EXAMPLES / row[0]), *([str(EXAMPLES / row[1])] if mode == "image" else row[1:])] for row in rows],
        inputs=[controls[n] for n in example_inputs], outputs=results,
        fn=lambda *row: run_example(mode, generators[0], settings, *row),
        cache_examples=cache_examples, cache_mode="lazy" if cache_examples else None,
        label="Examples (cached with the settings shown at start)" if cache_examples else "Examples",
        api_visibility="private",
    )


def _build_compact_api(defaults: Mapping[str, Any] | None, generators: Sequence[str]) -> None:
    """The one-call endpoint (/translate, also the MCP tool): hidden components, no layout."""
    global _COMPACT_DEFAULTS
    _COMPACT_DEFAULTS = dict(defaults or {})
    with gr.Column(visible=False):
        inputs = [ImageInput(type="filepath"), gr.Textbox(value=""), gr.Textbox(value=""), ImageInput(type="filepath"),
                  ConfigRadio(["full", "fast"], value="fast"), ConfigNumber(value=1), ConfigNumber(value=-1),
                  ConfigRadio(list(GENERATOR_LABELS), value=generators[0])]
        inputs = [_described(c, COMPACT_HELP.get(n) or _api_help(n)) for n, c in zip(COMPACT_INPUTS, inputs)]
        outputs = [gr.Gallery(format="png"), gr.JSON()]
        button = gr.Button()
    button.click(translate_compact, inputs, outputs, api_name="translate", validator=_validate_compact,
                 concurrency_id="gpu", concurrency_limit=None if ON_ZERO_GPU else 1)


def _banner(models: Models, fast_config: TranslationConfig) -> str | None:
    """Warnings the page shows first: tiny models make no meaningful picture; a CPU is very slow."""
    if models.tiny:
        return ("**Tiny random models.** This server runs tiny untrained networks to test the interface: "
                "the output is **not** a meaningful picture. Start it with real weights for real results.")
    if models.device.type != "cuda":
        evals = budget.evaluations(fast_config)
        return (f"**No GPU: running on the CPU.** One forward pass of the real 552M-parameter UNet takes about "
                f"{CPU_FORWARD_S} s on a 2-core CPU and each guided step adds a backward pass, so the fast preset's "
                f"{evals} guided steps take well over {evals * CPU_FORWARD_S // 60} minutes per sample. "
                "The fast preset is selected.")
    return None


def build_demo(models: Mapping[str, Models], *, defaults: Mapping[str, Any] | None = None,
               cache_examples: bool = False) -> gr.Blocks:
    """The Blocks app around loaded models (generator name -> Models), queue configured.

    ``defaults`` override the preset's initial control values (tests and tiny models use small
    settings); the fast preset starts selected without a GPU; ``cache_examples`` (the Space)
    caches each example's result at its first use.
    """
    if not models:
        raise ValueError("build_demo needs at least one generator's models")
    _MODELS.clear()
    _MODELS.update(models)
    generators = [g for g in get_args(GeneratorName) if g in models]
    first = models[generators[0]]
    fast = first.device.type != "cuda"
    banner = _banner(first, preset("text", fast=True))
    with gr.Blocks(title="DSCT: diffusion-based image translation", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# DSCT — diffusion-based semantic image translation\n"
            "Change a photo's content toward a **target text** or the look of a **style image** while keeping its "
            "layout (DiffuseIT, Kwon & Ye, ICLR 2023): a pretrained diffusion model is guided by DINO ViT structure "
            "losses and CLIP or style losses. Samples come back best first, each with its seed and scores "
            "(content: structure distance to the source, lower keeps more; target: closeness to the target, higher "
            "is closer).")
        if banner:
            gr.Markdown(banner, elem_classes="dsct-banner")
        for mode in get_args(Mode):
            with gr.Tab(TAB_LABELS[mode]):
                initial = preset(mode, fast=fast, generator=generators[0], **(defaults or {}))
                _build_tab(mode, generators, initial, fast, cache_examples,
                           show_cost=ON_ZERO_GPU or first.device.type == "cuda")
        _build_compact_api(defaults, generators)
    demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)  # explicit: ZeroGPU would cap the queue at 1
    return demo


# --- loading and main ----------------------------------------------------------------------

TINY_DEFAULTS: dict[str, Any] = dict(steps=20, skip=10, divergence_until=5, resample_repeats=2, size=128,
                                     max_long_side=192)  # a quick pass through the pipeline on a CPU


def get_models(generators: Sequence[str], *, tiny: bool, device: str | None = None,
               step_capture: str = "eager") -> dict[str, Models]:
    """Load each generator's models once; the later ones share the first one's ViT and CLIP ensemble.

    Every generator's weight files are looked up first, so one error lists all that are missing.
    """
    from dsct.hub import prefetch

    configs = [ModelConfig(generator=generator, tiny=tiny, load_clip=k == 0, load_arcface=generator == "ffhq",
                           step_capture=step_capture) for k, generator in enumerate(generators)]
    prefetch(configs)
    loaded: dict[str, Models] = {}
    for config in configs:
        models = load_models(config, device)
        if loaded:  # the ViT and CLIP are the same networks for every generator: keep one copy
            first = next(iter(loaded.values()))
            models = dataclasses.replace(models, vit=first.vit, clip=first.clip)
        loaded[config.generator] = models
    return loaded


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env_tiny = os.environ.get("DSCT_TINY", "").strip().lower() in ("1", "true", "yes", "on")
    parser = argparse.ArgumentParser(description="Serve the DSCT Gradio app.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true", default=env_tiny,
                        help="tiny random models (also DSCT_TINY=1): tests the interface, the output is not meaningful")
    parser.add_argument("--generators", nargs="+", default=list(get_args(GeneratorName)),
                        choices=get_args(GeneratorName), help="diffusion models to offer")
    parser.add_argument("--device", type=torch.device, default=None,
                        help="torch device; default: CUDA when present, else CPU")
    parser.add_argument("--step-capture", default=os.environ.get("DSCT_STEP_CAPTURE", "eager"),
                        choices=get_args(StepCapture), help="how each guided step runs (also DSCT_STEP_CAPTURE; "
                        "README: Captured steps); compile is not available on ZeroGPU")
    args = parser.parse_args(argv)
    if args.step_capture not in get_args(StepCapture):  # a bad DSCT_STEP_CAPTURE: argparse checks only typed values
        parser.error(f"DSCT_STEP_CAPTURE={args.step_capture!r}: one of {', '.join(get_args(StepCapture))}")
    if args.device is not None and args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is available here")
    return args


HOW_TO_GET_WEIGHTS = (
    "The app needs the weight files above. Get them once, while online, with `python -m dsct download` "
    "(`python -m dsct download --list` shows each file and its DSCT_<NAME>_PATH variable: the app reads a local "
    "copy from those variables; the --*-path flags above belong to the CLI), "
    "serve only the generators you have (`--generators imagenet` needs neither the faces model's "
    "diffusion_ffhq_10m.pt nor ArcFace's model_ir_se50.pth), or try the interface without weights: "
    "`python app.py --tiny` (or DSCT_TINY=1; the output is then not meaningful).")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        models = get_models(args.generators, tiny=args.tiny, device=args.device, step_capture=args.step_capture)
    except DSCTError as e:
        print(f"error: {e}\n\n{HOW_TO_GET_WEIGHTS}", file=sys.stderr)
        return 2
    if banner := _banner(next(iter(models.values())), preset("text", fast=True)):
        print(banner.replace("**", ""), file=sys.stderr)
    demo = build_demo(models, defaults=TINY_DEFAULTS if args.tiny else None,
                      cache_examples=bool(os.environ.get("SPACE_ID")))
    demo.launch(**LAUNCH_KWARGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
