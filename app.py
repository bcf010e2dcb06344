"""DSCT Space: translate a photo toward a target text or a style image (DiffuseIT, ICLR 2023).

``python app.py`` serves the real models (``python -m dsct download`` fetches them once);
``python app.py --tiny`` (or ``DSCT_TINY=1``) serves tiny random models, which test the interface
but make no meaningful picture. Order (STYLE §10): imports → constants → the GPU function and
thin handlers → ``build_demo(models)`` (layout, wiring, examples) → model loading under ``__main__``.
"""

from __future__ import annotations

import spaces  # noqa: I001 — first: on ZeroGPU it must patch CUDA before torch is imported

import argparse
import dataclasses
import inspect
import logging
import math
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import gradio as gr
import torch
from spaces.config import Config as SpacesConfig

from dsct import (
    Cancelled, DSCTError, ModelConfig, Models, Result, StepEvent, TranslationConfig, load_models, preset, translate,
)
from dsct.config import RANGES, GeneratorName, Mode, ResizeMode
from dsct.images import to_pil
from dsct.pipeline import check_request
from dsct.sampler import evaluations_per_attempt

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
# Sliders stop where hand-tuning stops (the SPEC §5 weights are at most 3000); the API may send
# anything in config.RANGES, and TranslationConfig, not the slider, decides what is valid.
WEIGHT_SLIDER_MAX = 10_000.0
NUMBER_FIELDS = frozenset({"seed", "restart_threshold"})  # typed, not slid: their ranges span decades

PREVIEW_EVERY = 5  # guided steps between x̂0 previews: the PNG round trip costs more than it shows
MAX_QUEUE = 20
CPU_FORWARD_S = 25  # README: one forward of the real 552M UNet on a 2-core CPU

# ZeroGPU: a call declares its GPU time up front and is killed when it overruns it.
ON_ZERO_GPU = SpacesConfig.zero_gpu
ZERO_GPU_MAX_S = 300  # the most one call may ask for (ZeroGPU refuses longer requests)
GPU_START_S = 20.0  # attaching the GPU, copying the weights to it, CUDA warm-up
RESTART_MARGIN = 1.5  # one attempt plus room for range restarts and a slower slice


@dataclass(frozen=True)
class Speed:
    """Seconds one guided evaluation of a batch of ``batch`` samples took at ``pixels`` (size × max_long_side)."""

    seconds: float
    batch: int
    pixels: int


# Until this process has timed its own GPU: one sample at the presets' 256 x 448 cap. Measured on an
# H100 with bf16 (README, benchmarks): 0.217 s (text) and 0.089 s (image) per guided evaluation at
# 256 x 256; scaled by pixels that is 0.38 s and 0.16 s at 256 x 448, rounded up for slower slices
# and the first call's warm-up. A finished run on CUDA replaces them (see _stream).
PRIOR_SPEED: dict[str, Speed] = {"text": Speed(0.5, 1, 256 * 448), "image": Speed(0.3, 1, 256 * 448)}

CSS = """
.dsct-banner { border-left: 4px solid #d97706; padding: 0.4em 0.8em; background: rgba(217, 119, 6, 0.08); }
"""
LAUNCH_KWARGS: dict[str, Any] = dict(theme=gr.themes.Soft(), css=CSS)

_FIELDS = {f.name: f for f in dataclasses.fields(TranslationConfig)}
_MODELS: dict[str, Models] = {}  # generator -> loaded models; read by the GPU function (a forked worker on ZeroGPU)
_MEASURED_SPEED: dict[tuple[str, str], Speed] = {}  # (generator, mode) -> the last timed run on CUDA


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


class ImageInput(gr.Image):
    """An image input (a file path) whose unreadable uploads become a gr.Error naming the input."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as e:  # PIL cannot open it: a text file, a truncated upload …
            raise gr.Error(f"{self.label}: the upload is not a readable image ({type(e).__name__})",
                           print_exception=False) from e


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


def gpu_seconds(generator: str, source: str | None, style: str | None, text: str | None,
                source_text: str | None, config: TranslationConfig) -> int:
    """GPU time to ask ZeroGPU for: guided evaluations (steps after skip plus repeats) times the time
    of one, as last measured here (a high prior before), scaled up, never down, to more samples or
    pixels than were measured — a smaller batch or image is not assumed to be faster."""
    speed = _MEASURED_SPEED.get((generator, config.mode), PRIOR_SPEED[config.mode])
    per_eval = (speed.seconds * max(1.0, config.samples / speed.batch)
                * max(1.0, config.size * config.max_long_side / speed.pixels))
    evaluations = evaluations_per_attempt(config.t_start, config.resample_repeats)
    return math.ceil(GPU_START_S + RESTART_MARGIN * per_eval * evaluations)


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


@spaces.GPU(duration=gpu_seconds)
def run_translation(generator: str, source: str | None, style: str | None, text: str | None,
                    source_text: str | None, config: TranslationConfig) -> Iterator[Step | Done]:
    """Run ``dsct.translate`` in a thread and yield a Step per guided step, then Done.

    A sync generator, so ZeroGPU streams what it yields. When it is closed (Stop, a closed tab),
    the next progress callback raises Cancelled and the sampler stops between two steps.
    """
    models = _MODELS[generator]
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
            events.put(Done(translate(models, source, text=text, source_text=source_text, style=style,
                                      config=config, callback=on_step)))
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
    finally:  # no join here: close() runs on the server's event loop; the thread ends at its next step
        stop.set()


# --- handlers ------------------------------------------------------------------------------


def _settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The TranslationConfig fields among a handler's arguments; the resampling toggle off means 1 repeat."""
    settings = {name: value for name, value in values.items() if name in _FIELDS}
    if values.get("resampling") is False:
        settings["resample_repeats"] = 1
    return settings


def _caption(result: Result) -> str:
    parts = [f"#{result.rank}", f"seed {result.seed}", f"content {result.content_score:.3f}",
             f"target {result.target_score:.3f}"]
    if result.restarts:
        parts.append(f"restarts {result.restarts}")
    if result.tiny:
        parts.append("tiny model: not meaningful")
    return " · ".join(parts)


def _gallery(results: Sequence[Result]) -> list[tuple[Any, str]]:
    return [(r.image, _caption(r)) for r in results]


def _stream(mode: Mode, generator: str, source: str | None, style: str | None, text: str | None,
            source_text: str | None, settings: Mapping[str, Any],
            progress: gr.Progress | None) -> Iterator[Step | Done]:
    """Validate, run on the GPU, report progress; measures this GPU's speed for ``gpu_seconds``."""
    if generator not in _MODELS:
        raise gr.Error(f"generator={generator!r} is not loaded here: choose one of {', '.join(_MODELS)}",
                       print_exception=False)
    try:
        config = preset(mode, generator=generator, **settings)  # the one validator (ConfigError names the field)
        check_request(config, source, text=text, source_text=source_text, style=style)  # before asking for a GPU
    except DSCTError as e:
        raise _user_error(e) from e
    if ON_ZERO_GPU and (need := gpu_seconds(generator, source, style, text, source_text, config)) > ZERO_GPU_MAX_S:
        raise gr.Error(f"this request needs about {need} s of GPU time and ZeroGPU allows {ZERO_GPU_MAX_S} s "
                       "per call: lower steps, samples or resample_repeats, or raise skip", print_exception=False)
    last_at, full_batch_seconds = None, []  # time between steps that ran every sample
    updates = run_translation(generator, source, style, text, source_text, config)
    try:
        for update in updates:
            if isinstance(update, Step):
                now = time.perf_counter()
                if last_at is not None and update.batch == config.samples:
                    full_batch_seconds.append(now - last_at)
                last_at = now
                if progress is not None:
                    restarted = f" (restart {update.restarts})" if update.restarts else ""
                    progress((update.step, update.total), desc=f"guided step{restarted}", unit="steps")
            elif full_batch_seconds and _MODELS[generator].device.type == "cuda":
                seconds = sum(full_batch_seconds) / len(full_batch_seconds)
                _MEASURED_SPEED[(generator, mode)] = Speed(seconds, config.samples, config.size * config.max_long_side)
            yield update
    finally:
        updates.close()


def _outputs(updates: Iterator[Step | Done]) -> Iterator[tuple[Any, Any]]:
    """(results gallery, preview gallery) for each update; gr.skip() leaves an output as it is.
    The previews are cleared when the results arrive."""
    for update in updates:
        if isinstance(update, Done):
            yield _gallery(update.results), []
        else:
            yield gr.skip(), gr.skip() if update.previews is None else update.previews


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
    settings = _settings(locals())
    yield from _outputs(_stream("text", generator, source, None, text, source_text, settings, progress))


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
    settings = _settings(locals())
    yield from _outputs(_stream("image", generator, source, style, None, None, settings, progress))


HANDLERS: dict[str, Callable[..., Iterator[tuple[Any, Any]]]] = {"text": translate_text, "image": translate_image}


def handler_inputs(mode: Mode) -> list[str]:
    """A handler's parameters in order: the UI inputs it is wired to, one to one."""
    return [p for p in inspect.signature(HANDLERS[mode]).parameters if p != "progress"]


def run_example(mode: Mode, generator: str, settings: Mapping[str, Any], source: str, second: str,
                third: str | None = None) -> list[tuple[Any, str]]:
    """The final gallery for one example row (what lazy caching stores), at the tab's initial settings."""
    style, source_text, text = (None, second, third) if mode == "text" else (second, None, None)
    results = [u.results for u in _stream(mode, generator, source, style, text, source_text, settings, None)
               if isinstance(u, Done)]
    return _gallery(results[-1])


def random_seed() -> int:
    return random.randrange(2**31)


# --- the interface -------------------------------------------------------------------------


def _control(name: str, value: Any, **extra: Any) -> gr.components.Component:
    """The input for one TranslationConfig field: its name as label, its help text as info."""
    field, kw = _FIELDS[name], dict(value=value, label=name, info=_FIELDS[name].metadata["help"], **extra)
    if field.type == "bool":
        return gr.Checkbox(**kw)
    if name == "resize_mode":
        return gr.Radio(choices=list(get_args(ResizeMode)), **kw)
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


def _build_tab(mode: Mode, generators: Sequence[str], initial: TranslationConfig, fast: bool,
               cache_examples: bool) -> None:
    """One tab: inputs, settings, outputs, wiring and examples for one mode."""
    names = handler_inputs(mode)
    preset_names = [n for n in names if n in _FIELDS or n == "resampling"]  # what a preset sets
    value = dict(zip(preset_names, _config_values(initial, preset_names)))
    controls: dict[str, gr.components.Component] = {}
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                controls["source"] = ImageInput(label="source image", type="filepath", height=300)
                if mode == "image":
                    controls["style"] = ImageInput(label="style image", type="filepath", height=300)
            if mode == "text":
                with gr.Row():
                    controls["source_text"] = gr.Textbox(label="source_text", info="what the source shows",
                                                         placeholder="Cat")
                    controls["text"] = gr.Textbox(label="text", info="what it should become",
                                                  placeholder="Black Leopard")
            with gr.Row():
                speed = gr.Radio([("Full (paper)", "full"), ("Fast", "fast")], value="fast" if fast else "full",
                                 label="preset", info="sets steps, skip, repeats and weights")
                controls["generator"] = gr.Radio(
                    [(GENERATOR_LABELS[g], g) for g in generators], value=generators[0], label="generator",
                    info="diffusion model: faces adds the identity loss", interactive=len(generators) > 1)
            with gr.Row():
                controls["steps"] = _control("steps", value["steps"])
                controls["skip"] = _control("skip", value["skip"])
            with gr.Row():
                controls["resampling"] = gr.Checkbox(value=value["resampling"], label="resampling",
                                                     info="repeat the first guided step (off: 1 repeat)")
                controls["resample_repeats"] = _control("resample_repeats", value["resample_repeats"],
                                                        interactive=value["resampling"])
            with gr.Row(equal_height=True):
                controls["samples"] = _control("samples", value["samples"])
                controls["seed"] = _control("seed", value["seed"])
                dice = gr.Button("randomise seed", scale=0, min_width=120)
            if mode == "image":
                controls["colour_match"] = _control("colour_match", value["colour_match"])
            with gr.Accordion("Advanced", open=False):
                for group, fields in ADVANCED.items():
                    shown = [n for n in fields if n in names]
                    if shown:
                        gr.Markdown(f"**{group}**")
                        for n in shown:
                            controls[n] = _control(n, value[n])
            with gr.Row():
                run = gr.Button("Translate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=1):
            results = gr.Gallery(label="results (best first)", format="png", columns=2, height=420,
                                 buttons=["download", "download_all", "fullscreen"], interactive=False)
            previews = gr.Gallery(label="x̂0 while sampling", format="png", columns=4, height=200,
                                  interactive=False)

    missing = set(names) - set(controls)
    assert not missing, f"handler parameters without a control: {missing}"
    event = run.click(HANDLERS[mode], inputs=[controls[n] for n in names], outputs=[results, previews],
                      api_name=f"translate_{mode}")
    stop.click(fn=None, cancels=[event])
    dice.click(random_seed, outputs=controls["seed"], queue=False, api_visibility="private")
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


def _banner(models: Models, fast_config: TranslationConfig) -> str | None:
    """Warnings the page shows first: tiny models make no meaningful picture; a CPU is very slow."""
    if models.tiny:
        return ("**Tiny random models.** This server runs tiny untrained networks to test the interface: "
                "the output is **not** a meaningful picture. Start it with real weights for real results.")
    if models.device.type != "cuda":
        evals = evaluations_per_attempt(fast_config.t_start, fast_config.resample_repeats)
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
                _build_tab(mode, generators, initial, fast, cache_examples)
    demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)  # explicit: ZeroGPU would cap the queue at 1
    return demo


# --- loading and main ----------------------------------------------------------------------

TINY_DEFAULTS: dict[str, Any] = dict(steps=20, skip=10, divergence_until=5, resample_repeats=2, size=128,
                                     max_long_side=192)  # a quick pass through the pipeline on a CPU


def get_models(generators: Sequence[str], *, tiny: bool, device: str | None = None) -> dict[str, Models]:
    """Load each generator's models once; the later ones share the first one's ViT and CLIP ensemble."""
    loaded: dict[str, Models] = {}
    for generator in generators:
        config = ModelConfig(generator=generator, tiny=tiny, load_clip=not loaded, load_arcface=generator == "ffhq")
        models = load_models(config, device)
        if loaded:  # the ViT and CLIP are the same networks for every generator: keep one copy
            first = next(iter(loaded.values()))
            models = dataclasses.replace(models, vit=first.vit, clip=first.clip)
        loaded[generator] = models
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
    args = parser.parse_args(argv)
    if args.device is not None and args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is available here")
    return args


HOW_TO_GET_WEIGHTS = (
    "The app needs the weight files above. Get them once, while online, with `python -m dsct download` "
    "(`python -m dsct download --list` shows each file and its DSCT_<NAME>_PATH variable: the app reads a local "
    "copy from those variables; the --*-path flags above belong to the CLI), "
    "serve only the generators you have with `--generators imagenet`, or try the interface without weights: "
    "`python app.py --tiny` (or DSCT_TINY=1; the output is then not meaningful).")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        models = get_models(args.generators, tiny=args.tiny, device=args.device)
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
