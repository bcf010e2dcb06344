"""The Gradio components that carry settings: each hands its value to dsct unchecked, so an API
caller's bad value gets TranslationConfig's message (which names the field), as on the page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from dsct import TranslationConfig, preset
from dsct.classes import class_name
from dsct.config import CLASS_CONDITIONAL, NUM_CLASSES, RANGES, SIZE_MULTIPLE

from .words import CLASS_RULE_LABELS, FACES_NOTE, METHOD_LABELS, RESIZE_CHOICES, SETTINGS, WORDS, unread_inputs

# Sliders stop where hand-tuning stops (the SPEC §5 weights are at most 3000); the API may send
# anything in config.RANGES, and TranslationConfig, not the slider, decides what is valid.
WEIGHT_SLIDER_MAX = 10_000.0
NUMBER_FIELDS = frozenset({"seed", "restart_threshold"})  # typed, not slid: their ranges span decades


class Unchecked:
    """Mixed into an input so that its value reaches TranslationConfig as sent: an API caller's
    out-of-range value or unknown choice then gets the config's message, which names the field
    (gradio's own refusal reaches gradio_client as a bare 400)."""

    is_template = True  # rendered by the frontend as the plain component

    def preprocess(self, payload: Any) -> Any:
        return payload

    def get_block_name(self) -> str:  # gradio names a template by its first base: here, the gradio one
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio.")).__name__.lower()

    get_block_class = get_block_name


class ConfigSlider(Unchecked, gr.Slider):
    """A slider whose bounds guide the hand only."""

    integer = False  # set on an instance for an int setting: the API page and gradio_client then type it int

    def api_info(self) -> dict[str, Any]:
        return {**super().api_info(), "type": "integer"} if self.integer else super().api_info()


class ConfigNumber(Unchecked, gr.Number):
    """A number box whose range and type TranslationConfig checks."""


class ConfigRadio(Unchecked, gr.Radio):
    """Radio buttons whose choice dsct checks."""


class ConfigDropdown(Unchecked, gr.Dropdown):
    """A dropdown whose choice dsct checks."""


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


SIZE_FIELDS = ("size", "max_long_side")  # sliders that step in the generator's multiple (config.SIZE_MULTIPLE)


def class_choices(mode: str) -> list[tuple[str, str]]:
    """The 512 model's class list: Random, Auto (text mode: it reads the text), then every class as
    "288 leopard", searchable by typing."""
    rules = [(label, rule) for rule, label in CLASS_RULE_LABELS.items() if rule != "auto" or mode == "text"]
    return rules + [(class_name(k), str(k)) for k in range(NUM_CLASSES)]


def control(name: str, value: Any, *, mode: str = "text", generator: str = "imagenet",
            **extra: Any) -> gr.components.Component:
    """The input for one TranslationConfig field, labelled in words (WORDS); ``mode``: the tab's; the
    sizes step in ``generator``'s multiple."""
    label, info = WORDS[name]
    field, kw = SETTINGS[name], dict(value=value, label=label, info=info) | extra
    if field.type == "bool":
        return gr.Checkbox(**kw)
    if name == "resize_mode":
        return ConfigRadio(choices=RESIZE_CHOICES, **kw)
    if name == "method":
        return ConfigDropdown(choices=[(label, m) for m, label in METHOD_LABELS.items()], **kw)
    if name == "class_label":
        return ConfigDropdown(choices=class_choices(mode), filterable=True, **kw)
    low, high = RANGES[name]
    is_int = field.type == "int"
    if name in NUMBER_FIELDS:
        return ConfigNumber(minimum=low, maximum=high, precision=0 if is_int else None, **kw)
    if name.startswith("lambda_"):
        high = min(high, WEIGHT_SLIDER_MAX)
    step = SIZE_MULTIPLE[generator] if name in SIZE_FIELDS else 0.01 if high <= 1 and not is_int else 1
    slider = ConfigSlider(minimum=low, maximum=high, step=step, **kw)
    slider.integer = is_int  # not a constructor argument: gradio reads __init__'s signature for the page's config
    return slider


def config_values(config: TranslationConfig, names: Sequence[str]) -> list[Any]:
    """Values for the controls ``names``: config fields, plus the resampling toggle (a class id as the
    class list's string)."""
    return [config.resample_repeats > 1 if n == "resampling" else str(config.class_label) if n == "class_label"
            else getattr(config, n) for n in names]


def shown(name: str, method: str, generator: str) -> bool:
    """Whether a setting's control is shown: only those that do something with this method and generator."""
    if name in unread_inputs(method):
        return False
    if name == "class_label":
        return generator in CLASS_CONDITIONAL
    return name != "lambda_id" or generator == "ffhq"


def preset_updates(mode: str, fast: bool, generator: str, method: str, names: Sequence[str], current: Sequence[Any]
                   ) -> tuple[list[Any], str]:
    """The controls ``names`` set to a preset of this method and generator, and a note of what changed.

    A switch of preset, model or method rewrites settings the user may have tuned: the note names
    each one with its old and new value, so nothing changes unseen. Only the settings the choice reads
    are shown (AGG has one preset: Fast is DiffuseIT's).
    """
    config = preset(mode, method=method, fast=fast and method == "diffuseit", generator=generator)
    values = config_values(config, names)
    changed = [f"{WORDS[n][0]} {old} → {new}" for n, old, new in zip(names, current, values)
               if old != new and n != "method"]
    visible = {n: shown(n, method, generator) for n in names}
    if "resample_repeats" in visible:  # and only while resampling is on
        visible["resample_repeats"] &= config.resample_repeats > 1
    # the size sliders move in the generator's multiple (64 at 512), so they offer only sizes it accepts
    step = {"step": SIZE_MULTIPLE[generator]}
    updates = [gr.update(value=v, visible=visible[n], **(step if n in SIZE_FIELDS else {})) for n, v in zip(names, values)]
    note = f"Preset applied: {'; '.join(changed)}." if changed else ""
    if generator == "ffhq":
        note = f"{FACES_NOTE} {note}".strip()
    return updates, note


def with_example(component: gr.components.Component, payload: Any) -> gr.components.Component:
    """Give a component the example value the API page's snippet sends, so the snippet runs as shown
    (gradio's defaults, "Hello!!" and a picture for every image input, make a request it must refuse)."""
    component.example_payload = lambda: payload  # type: ignore[method-assign]
    return component
