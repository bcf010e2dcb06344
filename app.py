"""DSCT Space: translate a photo toward a target text or a style image (DiffuseIT, ICLR 2023).

``python app.py`` serves the real models (``python -m dsct download`` fetches them once);
``python app.py --tiny`` (or ``DSCT_TINY=1``) serves tiny random models, which test the interface
but make no meaningful picture. This file is the page's layout and wiring, model loading and
``main``; what the page serves lives in ``space/`` (words, controls, results, the ZeroGPU plan,
the GPU worker, the endpoints), one module per concern.
"""

from __future__ import annotations

import spaces  # noqa: F401, I001 — first: on ZeroGPU it must patch CUDA before torch is imported

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import gradio as gr
import torch

from dsct import DSCTError, ModelConfig, Models, TranslationConfig, load_models, preset
from dsct.config import GeneratorName, Mode, StepCapture
from space import planning
from space.api import (
    COMPACT_INPUTS, COMPACT_PRESETS, HANDLERS, estimate, handler_inputs, make_validator, prepare_run, run_example,
    set_compact_defaults, stopped_note, translate_photo, validate_compact,
)
from space.controls import (
    ConfigDropdown, ConfigNumber, ConfigRadio, ImageInput, config_values, control, preset_updates, shown, with_example,
)
from space.results import before_after, mirror_photo, result_path, show_selected
from space.words import (
    ADVANCED, COMPACT_HELP, GENERATOR_LABELS, HEADER, HOW_IT_WORKS, METHOD_LABELS, SETTINGS, SETTINGS_LABEL, TAB_LABELS,
    WORDS, api_help, banner, described,
)

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
MAX_QUEUE = 20
CSS = """
.dsct-banner { border-left: 4px solid #d97706; padding: 0.2em 0.8em; background: rgba(217, 119, 6, 0.08); }
.dsct-header h1 { margin-bottom: 0.1em; }
.dsct-status { min-height: 3.2em; }
.dsct-status .progress-text { display: none; }  /* its timer restarts at every update: the line says the time */
.dsct-whole img { object-fit: contain !important; max-height: 380px !important; }
/* results: each picture whole, its caption under it and whole (rank and seed, scores, notes: one line each) */
.dsct-results .grid-wrap, .dsct-results .gallery-item { height: auto !important; max-height: none !important; }
.dsct-results .thumbnail-item { height: auto !important; aspect-ratio: auto !important; overflow: visible !important;
  display: flex; flex-direction: column; }
.dsct-results .thumbnail-item img { height: auto; max-height: 220px; }
.dsct-results .caption-label { position: static !important; white-space: pre-line !important; max-width: none !important;
  overflow: visible !important; text-overflow: clip !important; transform: none !important; font-size: 12px; }
"""
LAUNCH_KWARGS: dict[str, Any] = dict(theme=gr.themes.Soft(), css=CSS, mcp_server=True)


# --- the page -------------------------------------------------------------------------------


def build_tab(mode: Mode, generators: Sequence[str], initial: TranslationConfig, fast: bool,
              examples: str | None, show_cost: bool) -> dict[str, gr.components.Component]:
    """One tab: the first view (photo, prompts or style image, preset and model, Translate, status)
    beside the results, then the settings and the examples; returns the tab's controls.

    ``examples``: None runs an example on click, "lazy" or "eager" caches its result (the Space);
    ``show_cost``: the estimated GPU time and memory of the current settings beside the button.
    """
    names = handler_inputs(mode)
    preset_names = [n for n in names if n in SETTINGS or n == "resampling"]  # what a preset sets
    value = dict(zip(preset_names, config_values(initial, preset_names)))
    controls: dict[str, gr.components.Component] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            with gr.Row():
                controls["source"] = ImageInput(label=WORDS["source"][0], type="filepath", height=200)
                if mode == "image":
                    controls["style"] = ImageInput(label=WORDS["style"][0], type="filepath", height=200)
            if mode == "text":
                with gr.Row():
                    for name, example in (("source_text", "Cat"), ("text", "Black Leopard")):
                        controls[name] = with_example(gr.Textbox(label=WORDS[name][0], max_lines=1,
                                                                 placeholder=f"{example}  (Enter runs it)"), example)
            with gr.Row():
                controls["method"] = control("method", value["method"], info=None, scale=2, min_width=200)
                agg = initial.method == "agg"
                speed = gr.Dropdown([("Full", "full"), ("Fast", "fast")], value="fast" if fast and not agg else "full",
                                    label="Preset", interactive=not agg, scale=1, min_width=90)
                controls["generator"] = ConfigDropdown(
                    [(GENERATOR_LABELS[g], g) for g in generators], value=generators[0], label=WORDS["generator"][0],
                    interactive=len(generators) > 1, scale=1, min_width=110)
            controls["class_label"] = control("class_label", value["class_label"], mode=mode,
                                              visible=shown("class_label", initial.method, generators[0]))
            note = gr.Markdown(elem_classes="dsct-note")
            with gr.Row(equal_height=True):
                run = gr.Button("Translate", variant="primary", scale=2)
                stop = gr.Button("Stop", variant="stop", interactive=False, scale=1)
            status = gr.Markdown(elem_classes="dsct-status")
            cost_note = gr.Markdown(visible=show_cost, elem_classes="dsct-cost")
        with gr.Column(scale=1, min_width=320):
            slider = gr.ImageSlider(label="Before / after (best result)", type="pil", interactive=False, height=380,
                                    max_height=380, elem_classes="dsct-whole")
            results = gr.Gallery(label="Results (best first)", format="png", columns=3, height="auto",
                                 object_fit="contain", fit_columns=False, buttons=["download", "download_all", "share", "fullscreen"],
                                 interactive=False, elem_classes="dsct-results")
            reuse = gr.Button("Use the selected result as the source", size="sm", interactive=False)
            previews = gr.Gallery(label="Previews while sampling", format="png", columns=4, height=160,
                                  object_fit="contain", interactive=False)
    with gr.Accordion(SETTINGS_LABEL, open=False):
        with gr.Row():
            controls["steps"] = control("steps", value["steps"])
            controls["skip"] = control("skip", value["skip"])
        with gr.Row():
            controls["resampling"] = gr.Checkbox(value=value["resampling"], label=WORDS["resampling"][0],
                                                 info=WORDS["resampling"][1])
            controls["resampling"].visible = shown("resampling", initial.method, generators[0])
            controls["resample_repeats"] = control("resample_repeats", value["resample_repeats"], visible=value[
                "resampling"] and shown("resample_repeats", initial.method, generators[0]))
        with gr.Row(equal_height=True):
            controls["samples"] = control("samples", value["samples"])
            controls["seed"] = control("seed", value["seed"])
            randomize = gr.Checkbox(value=True, label="Randomize seed", info="a new seed for every run",
                                    scale=0, min_width=160)
        if mode == "image":
            controls["colour_match"] = control("colour_match", value["colour_match"])
        headings: dict[str, gr.Markdown] = {}  # a group's heading shows while one of its settings does
        with gr.Accordion("Advanced", open=False):
            for group, fields in ADVANCED.items():
                here = [n for n in fields if n in names]
                if here:
                    headings[group] = gr.Markdown(f"**{group}**", visible=any(
                        shown(n, initial.method, generators[0]) for n in here))
                    for n in here:
                        controls[n] = control(n, value[n], visible=shown(n, initial.method, generators[0]),
                                              generator=generators[0])

    missing = set(names) - set(controls)
    assert not missing, f"handler parameters without a control: {missing}"
    planning.serve_endpoint_defaults(mode, {n: controls[n].value for n in names})
    inputs = [described(controls[n], api_help(n)) for n in names]
    triggers = [run.click] + ([controls["text"].submit, controls["source_text"].submit] if mode == "text" else [])
    prepared = gr.on(triggers, functools.partial(prepare_run, mode), [randomize, controls["seed"], *inputs],
                     [controls["seed"], status, stop], show_progress="hidden", api_visibility="private")
    # On ZeroGPU each call gets a GPU of its own, so users need not wait for each other; one local
    # GPU runs one translation at a time, whichever tab it comes from.
    event = prepared.then(HANDLERS[mode], inputs=inputs, outputs=[results, previews], api_name=f"translate_{mode}",
                          validator=make_validator(mode), concurrency_id="gpu", show_progress_on=[status],
                          concurrency_limit=None if planning.ON_ZERO_GPU else 1)
    event.then(lambda: gr.update(interactive=False), None, stop, queue=False, api_visibility="private")
    if show_cost:
        start = {**value, "generator": generators[0]}
        cost_note.value = estimate(mode, *[start.get(n) for n in names])
        gr.on([controls[n].change for n in names], functools.partial(estimate, mode), inputs=inputs,
              outputs=cost_note, queue=False, show_progress="hidden", api_visibility="private")
    stop.click(stopped_note, None, [status, stop], cancels=[event], queue=False, api_visibility="private")
    selected = gr.State(0)
    results.change(before_after, [controls["source"], results], slider, queue=False, api_visibility="private")
    results.change(lambda g: (0, gr.update(interactive=bool(g))), results, [selected, reuse], queue=False,
                   api_visibility="private")  # new results: the best is selected
    results.select(show_selected, [controls["source"], results], [selected, slider], queue=False,
                   api_visibility="private")
    reuse.click(result_path, [results, selected], controls["source"], queue=False, api_visibility="private")
    controls["resampling"].change(lambda on, method: gr.update(visible=on and method == "diffuseit"),
                                  [controls["resampling"], controls["method"]], controls["resample_repeats"],
                                  queue=False, api_visibility="private")

    preset_controls = [controls[n] for n in preset_names]

    groups = {group: [n for n in ADVANCED[group] if n in names] for group in headings}

    def apply_preset(choice: str, generator: str, method: str, *current: Any) -> list[Any]:
        updates, said = preset_updates(mode, choice == "fast", generator, method, preset_names, current)
        agg = method == "agg"
        heading_updates = [gr.update(visible=any(shown(n, method, generator) for n in here)) for here in groups.values()]
        return [*updates, said, gr.update(value="full" if agg else choice, interactive=not agg), *heading_updates]

    for trigger in (speed, controls["generator"], controls["method"]):
        trigger.input(apply_preset, [speed, controls["generator"], controls["method"], *preset_controls],
                      [*preset_controls, note, speed, *headings.values()], queue=False, api_visibility="private")

    rows = TEXT_EXAMPLES if mode == "text" else STYLE_EXAMPLES
    example_inputs = ["source", "source_text", "text"] if mode == "text" else ["source", "style"]
    settings = {n: v for n, v in value.items() if n in SETTINGS}
    gr.Examples(
        [[str(EXAMPLES / row[0]), *([str(EXAMPLES / row[1])] if mode == "image" else row[1:])] for row in rows],
        inputs=[controls[n] for n in example_inputs], outputs=results,
        fn=lambda *row: run_example(mode, generators[0], settings, *row),
        cache_examples=examples is not None, cache_mode=examples, run_on_click=examples is None,
        label="Examples: a click shows the result (cached with the settings at start)" if examples
        else "Examples: a click runs one with the settings at start",
        api_visibility="private",
    )
    return controls


def build_compact_api(defaults: Mapping[str, Any] | None, generators: Sequence[str]) -> None:
    """The one-call endpoint (/translate, also the MCP tool): hidden components, no layout."""
    set_compact_defaults(defaults)
    with gr.Column(visible=False):
        inputs = [ImageInput(type="filepath"), with_example(gr.Textbox(value=""), "Black Leopard"),
                  with_example(gr.Textbox(value=""), "Cat"), with_example(ImageInput(type="filepath"), None),
                  ConfigRadio(list(COMPACT_PRESETS), value="default"), ConfigNumber(value=1, precision=0),
                  ConfigNumber(value=-1, precision=0), ConfigRadio(list(GENERATOR_LABELS), value=generators[0]),
                  ConfigRadio(list(METHOD_LABELS), value="diffuseit"), with_example(gr.Textbox(value="random"), "random")]
        for name, component in zip(COMPACT_INPUTS, inputs):
            component.label = name  # hidden: the label only names the parameter on the API page
        inputs = [described(c, COMPACT_HELP.get(n) or api_help(n)) for n, c in zip(COMPACT_INPUTS, inputs)]
        outputs = [gr.Gallery(format="png"), gr.JSON()]
        button = gr.Button()
    button.click(translate_photo, inputs, outputs, api_name="translate", validator=validate_compact,
                 concurrency_id="gpu", concurrency_limit=None if planning.ON_ZERO_GPU else 1)


def share_the_photo(sources: Sequence[gr.Image]) -> None:
    """One photo for every tab: a new or cleared photo in one is the photo of the others."""
    for source in sources:
        for other in sources:
            if other is not source:
                source.change(mirror_photo, [source, other], other, queue=False, show_progress="hidden",
                              api_visibility="private")


def example_cache_mode(cache_examples: bool) -> str | None:
    """On the Space, examples show cached results: computed at start-up where a GPU is there at start
    (not on ZeroGPU, whose GPU exists only inside a call), else at their first use."""
    if not cache_examples:
        return None
    return "lazy" if planning.ON_ZERO_GPU else "eager"


def build_demo(models: Mapping[str, Models], *, defaults: Mapping[str, Any] | None = None,
               cache_examples: bool = False) -> gr.Blocks:
    """The Blocks app around loaded models (generator name -> Models), queue configured.

    ``defaults`` override the preset's initial control values (tests and tiny models use small
    settings); the fast preset starts selected without a GPU; ``cache_examples`` (the Space)
    caches each example's result.
    """
    if not models:
        raise ValueError("build_demo needs at least one generator's models")
    planning.serve(models)
    generators = [g for g in get_args(GeneratorName) if g in models]
    first = models[generators[0]]
    fast = first.device.type != "cuda"
    page_banner = banner(first, preset("text", fast=True))
    with gr.Blocks(title="DSCT: translate a photo, keep its layout", delete_cache=(3600, 3600)) as demo:
        build_compact_api(defaults, generators)  # first: the API page and the MCP server list it first
        gr.Markdown(HEADER, elem_classes="dsct-header")
        if page_banner:
            gr.Markdown(page_banner, elem_classes="dsct-banner")
        sources = []
        for mode in get_args(Mode):
            with gr.Tab(TAB_LABELS[mode]):
                initial = preset(mode, fast=fast, generator=generators[0], **(defaults or {}))
                sources.append(build_tab(mode, generators, initial, fast, example_cache_mode(cache_examples),
                                         show_cost=planning.ON_ZERO_GPU or first.device.type == "cuda")["source"])
        share_the_photo(sources)
        with gr.Accordion("How it works", open=False):
            gr.Markdown(HOW_IT_WORKS)
    demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)  # explicit: ZeroGPU would cap the queue at 1
    return demo


# --- loading and main ----------------------------------------------------------------------

DEFAULT_GENERATORS = "imagenet ffhq"  # the ImageNet 512 model is opt-in (README: Weights)
TINY_DEFAULTS: dict[str, Any] = dict(steps=20, skip=10, divergence_until=5, resample_repeats=2, size=128,
                                     max_long_side=256)  # a quick pass through the pipeline on a CPU


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
    parser.add_argument("--generators", nargs="+", default=os.environ.get("DSCT_GENERATORS", DEFAULT_GENERATORS).split(),
                        choices=get_args(GeneratorName), help="diffusion models to offer (also DSCT_GENERATORS, e.g. "
                        "'imagenet ffhq imagenet512'); imagenet512 is opt-in: its 2.2 GB file is not fetched by default")
    parser.add_argument("--device", type=torch.device, default=None,
                        help="torch device; default: CUDA when present, else CPU")
    parser.add_argument("--step-capture", default=os.environ.get("DSCT_STEP_CAPTURE", "eager"),
                        choices=get_args(StepCapture), help="how each guided step runs (also DSCT_STEP_CAPTURE; "
                        "README: Captured steps); compile is not available on ZeroGPU")
    args = parser.parse_args(argv)
    if bad := [g for g in args.generators if g not in get_args(GeneratorName)]:  # argparse checks typed values only
        parser.error(f"DSCT_GENERATORS: {', '.join(map(repr, bad))}: each one of {', '.join(get_args(GeneratorName))}")
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
    if warning := banner(next(iter(models.values())), preset("text", fast=True)):
        print(warning.replace("**", ""), file=sys.stderr)
    demo = build_demo(models, defaults=TINY_DEFAULTS if args.tiny else None,
                      cache_examples=bool(os.environ.get("SPACE_ID")))
    demo.launch(**LAUNCH_KWARGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
