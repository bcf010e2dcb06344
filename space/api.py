"""The endpoints: ``translate_text`` and ``translate_image`` (every setting, streamed previews) and
``translate_photo`` (``/translate``, also the MCP tool: a preset and a few arguments), each with
the validator that refuses a bad request before the queue and marks the input it belongs to.
Every request becomes a ``planning.Plan`` through ``make_plan``, the one check.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gradio as gr
from PIL import Image

from dsct import ConfigError, DSCTError, ImageError, preset
from dsct.config import Mode, unread_by

from . import planning
from .planning import Plan, cost, make_plan, settings, work_size
from .results import gallery_rows
from .words import (
    COMPACT_HELP, NOT_INPUTS, SETTINGS, describe, missing_inputs, missing_message, page_message, stopped_line,
)
from .worker import LAST_STEPS, Done, Step, stream, user_error

log = logging.getLogger("dsct.app")


def session_of(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def outputs(updates: Iterator[Step | Done], method: str) -> Iterator[tuple[Any, Any]]:
    """(results gallery, preview gallery) for each update; gr.skip() leaves an output as it is.
    The previews are cleared when the results arrive."""
    for update in updates:
        if isinstance(update, Done):
            yield gallery_rows(update.results, method), []
        else:
            yield gr.skip(), gr.skip() if update.previews is None else update.previews


def planned(mode: Mode, values: Mapping[str, Any]) -> Plan:
    """make_plan, its refusals as gr.Error (shown to the user without a server traceback)."""
    try:
        return make_plan(mode, values)
    except DSCTError as e:
        raise user_error(e) from e


def translate_text(
    source: str | None, source_text: str, text: str, generator: str, steps: int, skip: int, resampling: bool,
    resample_repeats: int, samples: int, seed: int, lambda_ssim: float, lambda_contra: float, lambda_div: float,
    divergence_until: int, noise_aug: bool, regularize_content: bool, prog_contrast: bool, lambda_clip: float,
    n_cuts: int, lambda_range: float, lambda_id: float, range_restart: bool, max_restarts: int,
    restart_threshold: float, size: int, max_long_side: int, resize_mode: str,
    method: str, eta_edit: float, eta: float, eta_boost: float, t_edit: int, t_boost: int, lambda_gt: float,
    inner_iters: int, inner_lr: float, symmetric: bool, class_label: str,
    progress: gr.Progress = gr.Progress(), request: gr.Request | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Translate the source image toward the target text (`text`), given what it shows (`source_text`).

    Streams (results, x̂0 previews); results are best first, captioned with seed and scores. The UI's
    faces preset (generator='ffhq') sets lambda_id=100 and restart_threshold=0.1: API callers pass them.
    """
    plan = planned("text", locals())
    yield from outputs(stream(plan, progress, session_of(request)), plan.config.method)


def translate_image(
    source: str | None, style: str | None, generator: str, steps: int, skip: int, resampling: bool,
    resample_repeats: int, samples: int, seed: int, colour_match: bool, lambda_ssim: float, lambda_contra: float,
    lambda_div: float, divergence_until: int, noise_aug: bool, lambda_cls: float, lambda_l2: float,
    lambda_range: float, lambda_id: float, range_restart: bool, max_restarts: int, restart_threshold: float,
    size: int, max_long_side: int, resize_mode: str,
    method: str, eta_edit: float, eta: float, eta_boost: float, t_edit: int, t_boost: int, lambda_gt: float,
    inner_iters: int, inner_lr: float, symmetric: bool, class_label: str,
    progress: gr.Progress = gr.Progress(), request: gr.Request | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Translate the source image toward the look of the style image, keeping the source's structure.

    Yields (results best first, x̂0 previews). For the UI's faces preset, API callers choosing
    generator='ffhq' also pass lambda_id=100 and restart_threshold=0.1.
    """
    plan = planned("image", locals())
    yield from outputs(stream(plan, progress, session_of(request)), plan.config.method)


HANDLERS: dict[str, Callable[..., Iterator[tuple[Any, Any]]]] = {"text": translate_text, "image": translate_image}


def handler_inputs(mode: Mode) -> list[str]:
    """A handler's parameters in order: the UI inputs it is wired to, one to one."""
    return [p for p in inspect.signature(HANDLERS[mode]).parameters if p not in NOT_INPUTS]


def field_of(error: DSCTError, names: Sequence[str]) -> str:
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
        config = preset(mode, generator=generator, **settings(mode, values_by_name))
        width, height = config.max_long_side, config.size  # the largest working size, until a source is given
        if values_by_name.get("source"):
            with Image.open(values_by_name["source"]) as im:  # the header only
                width, height = work_size(config, generator, *im.size)
        seconds, memory = cost(generator, config, width * height)
    except DSCTError as e:
        return f"*{e}*"
    except Exception:  # noqa: BLE001 — an unreadable upload: the validator will say why; no estimate
        return ""
    where = "of your daily ZeroGPU quota" if planning.ON_ZERO_GPU else "on this GPU"
    return f"≈ {seconds:.0f} s {where} · ≈ {memory:.0f} GB"


COMPACT_INPUTS = ("source", "text", "source_text", "style", "preset", "samples", "seed", "generator", "method",
                  "class_label")
COMPACT_PRESETS = ("default", "full", "fast")
COMPACT_DEFAULTS: dict[str, Any] = {}  # the server's own defaults (tiny models: small settings): set_compact_defaults


def set_compact_defaults(defaults: Mapping[str, Any] | None) -> None:
    """The settings the compact endpoint's presets start from on this server (the layout's ``defaults``)."""
    COMPACT_DEFAULTS.clear()
    COMPACT_DEFAULTS.update(defaults or {})


def compact_request(values: Mapping[str, Any]) -> tuple[Mode, dict[str, Any]]:
    """The compact endpoint's few arguments as a full handler request: the method's preset fills the rest.

    'default' is DiffuseIT's fast preset (as before AGG) and AGG's one preset; the server's own
    defaults apply where the method reads them.
    """
    mode: Mode = "image" if values.get("style") else "text"
    choice, seed, method = values.get("preset"), values.get("seed"), values.get("method")
    if choice not in COMPACT_PRESETS:
        raise ConfigError("preset", choice, " or ".join(map(repr, COMPACT_PRESETS)))
    if method == "agg" and choice == "fast":
        raise ConfigError("preset", choice, "'default' or 'full' with method='agg': AGG has one preset (it is the "
                          "faster method already)")
    unread = unread_by(method)
    base = preset(mode, method=method, fast=choice in ("default", "fast") and method == "diffuseit",
                  generator=values.get("generator"), **{k: v for k, v in COMPACT_DEFAULTS.items() if k not in unread})
    chosen = {f: getattr(base, f) for f in SETTINGS if f != "mode"}
    return mode, {**chosen, "samples": values.get("samples"), "seed": random_seed() if seed == -1 else seed,
                  "source": values.get("source"), "style": values.get("style") or None,
                  "text": values.get("text") or None, "source_text": values.get("source_text") or None,
                  "generator": values.get("generator"), "class_label": values.get("class_label") or "random"}


def validator(names: Sequence[str], to_request: Callable[[Mapping[str, Any]], tuple[Mode, Mapping[str, Any]]]
               ) -> Callable[..., list[dict[str, Any]]]:
    """An event's validator: runs before the queue (no GPU, no waiting) and marks the bad input."""

    def validate(*values: Any) -> list[dict[str, Any]]:
        try:
            make_plan(*to_request(dict(zip(names, values))))
        except DSCTError as e:
            bad, message = field_of(e, names), str(e)
        except Exception as e:  # noqa: BLE001 — a bug must not reach the client as a bare HTTP 400
            log.error("validation failed", exc_info=e)
            bad, message = names[0], f"this request could not be checked ({type(e).__name__}: {e})"
        else:
            return [gr.validate(True, "") for _ in names]
        return [gr.validate(n != bad, message if n == bad else "") for n in names]

    return validate


def make_validator(mode: Mode) -> Callable[..., list[dict[str, Any]]]:
    return validator(handler_inputs(mode), lambda values: (mode, values))


def translate_photo(source: str | None, text: str | None = None, source_text: str | None = None,
                    style: str | None = None, preset: str = "default", samples: int = 1, seed: int = -1,
                    generator: str = "imagenet", method: str = "diffuseit", class_label: str = "random",
                    progress: gr.Progress = gr.Progress()) -> tuple[list[tuple[Any, str]], dict[str, Any]]:
    # the docstring (the endpoint's and MCP tool's description) is written by describe, from COMPACT_HELP
    try:
        mode, values = compact_request(dict(zip(COMPACT_INPUTS, (source, text, source_text, style, preset, samples,
                                                                  seed, generator, method, class_label))))
    except DSCTError as e:
        raise user_error(e) from e
    plan = planned(mode, values)
    results = [u.results for u in stream(plan, progress) if isinstance(u, Done)][-1]
    info = {"mode": mode, "method": plan.config.method, "seeds": [r.seed for r in results],
            "results": [{"rank": r.rank, "seed": r.seed, "content_score": r.content_score,
                         "target_score": r.target_score, "restarts": r.restarts, "note": r.note, "tiny": r.tiny,
                         "class_label": r.class_label}
                        for r in results]}
    return gallery_rows(results, plan.config.method), info


validate_compact = validator(COMPACT_INPUTS, compact_request)


def run_example(mode: Mode, generator: str, initial: Mapping[str, Any], source: str, second: str,
                third: str | None = None) -> list[tuple[Any, str]]:
    """The final gallery for one example row (what lazy caching stores), at the tab's initial settings."""
    inputs = dict(source=source, style=second) if mode == "image" else dict(source=source, source_text=second,
                                                                             text=third)
    plan = planned(mode, {**initial, **inputs, "generator": generator})
    results = [u.results for u in stream(plan, None) if isinstance(u, Done)]
    return gallery_rows(results[-1], plan.config.method)


def random_seed() -> int:
    return random.randrange(2**31)


def pick_seed(randomize: bool, seed: Any) -> Any:
    """The seed the run will use, shown in the seed box before it starts."""
    return random_seed() if randomize else seed


def prepare_run(mode: Mode, randomize: bool, seed: Any, *values: Any) -> tuple[Any, str, Any]:
    """What a click on Translate does first, before the queue: the seed the run will use (shown in the
    seed box), and a refusal in the page's words beside the button and as a toast. The validator then
    marks the field with the API's wording; the Stop button is enabled only for a run that starts.
    """
    seed = pick_seed(randomize, seed)
    values_by_name = {**dict(zip(handler_inputs(mode), values)), "seed": seed}
    missing = missing_inputs(mode, values_by_name)
    try:
        message = missing_message(missing) if missing else None
        if message is None:
            make_plan(mode, values_by_name)
    except DSCTError as e:
        message = page_message(e)
    except Exception:  # noqa: BLE001 — the validator reports what could not be checked
        return seed, "", gr.update(interactive=False)
    if message is None:
        return seed, "", gr.update(interactive=True)
    gr.Warning(message)
    return seed, f"**⚠ {message}**", gr.update(interactive=False)


def stopped_note(request: gr.Request | None = None) -> tuple[str, Any]:
    """What the page says after Stop: the step the run had reached."""
    step, steps = LAST_STEPS.pop(session_of(request), (None, None))
    return stopped_line(step, steps), gr.update(interactive=False)


describe(translate_photo, "Translate a photo toward a target text or the look of a style image, keeping its "
         "layout (DiffuseIT or AGG).", "(gallery, info): the pictures best first with captions, and JSON with the "
         "mode, the method, the seeds and each result's scores (content: lower keeps more of the layout; target: "
         "higher is closer)", COMPACT_HELP)
describe(translate_text, "Translate a photo toward a target text, keeping its layout (DiffuseIT or AGG).",
         "(results, previews): the pictures best first, captioned with seed and scores; x̂0 previews while running")
describe(translate_image, "Translate a photo toward the look of a style image, keeping its layout "
         "(DiffuseIT or AGG).",
         "(results, previews): the pictures best first, captioned with seed and scores; x̂0 previews while running")
