"""The words of the page and of the API: labels, help, banners and endpoint descriptions.

A label is for people; the API keeps the parameter names, and its descriptions are these same
words, so the page, ``/gradio_api/info``, gradio_client and the MCP schema say one thing.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from dsct import Models, TranslationConfig, budget
from dsct.config import MAX_SAMPLES, RANGES, format_range, unread_by

SETTINGS = {f.name: f for f in dataclasses.fields(TranslationConfig)}  # every setting, by name
NOT_INPUTS = frozenset({"progress", "request"})  # a handler's parameters that gradio fills, not the caller
CPU_FORWARD_S = 25  # README: one forward of the real 552M UNet on a 2-core CPU

GENERATOR_LABELS: dict[str, str] = {"imagenet": "ImageNet", "ffhq": "Faces", "imagenet512": "ImageNet 512 (4× pixels, slower)"}
CLASS_RULE_LABELS: dict[str, str] = {"random": "Random (a new class every step)", "auto": "Auto (the class closest to the text)"}
TAB_LABELS: dict[str, str] = {"text": "Edit with text", "image": "Restyle with an image"}
SETTINGS_LABEL = "Settings: steps, seed, samples and more"  # the accordion under the first view
FACES_NOTE = "Faces expects an aligned, centred portrait (one face filling the square, as in FFHQ)."
PAPERS = {  # method -> (paper, the authors' code)
    "diffuseit": ("https://arxiv.org/abs/2209.15264", "https://github.com/cyclomon/DiffuseIT"),
    "agg": ("https://arxiv.org/abs/2306.04396", "https://github.com/submissionanon18/AGG"),
}
HEADER = ("# DSCT — translate a photo, keep its layout\n"
          "Turn what a photo shows into something else (*Cat* → *Black Leopard*) or give it the look of a style "
          f"image. DiffuseIT, ICLR 2023 ([paper]({PAPERS['diffuseit'][0]}), [code]({PAPERS['diffuseit'][1]})) · "
          f"AGG, CVPR 2024 ([paper]({PAPERS['agg'][0]}), [code]({PAPERS['agg'][1]})) · [API](?view=api)")
HOW_IT_WORKS = (
    "A pretrained diffusion model redraws the photo step by step. **DiffuseIT** guides every step: a DINO ViT "
    "keeps the structure and CLIP (text) or the style image's DINO features (look) steer it; skipped steps are "
    "taken from the photo itself. **AGG** first runs the photo backwards into noise (a DDIM inversion), then "
    "guides only the first 19 of 60 steps back, pulling each preview toward the inversion's own to keep the "
    "content. Samples come back best first, each with its seed and two scores: *content* is the structure "
    "distance to the photo (lower keeps more of the layout), *target* the closeness to the text or style "
    "(higher is closer). Kwon & Ye, *Diffusion-based Image Translation using Disentangled Style "
    "and Content Representation*, ICLR 2023; *Improving Diffusion-based Image Translation using Asymmetric "
    "Gradient Guidance*, CVPR 2024.")

# The Advanced accordion, grouped as SPEC §4 groups the losses; a tab shows the fields its handler takes.
ADVANCED: dict[str, tuple[str, ...]] = {
    "Content (structure)": ("lambda_ssim", "lambda_contra", "lambda_div", "divergence_until", "noise_aug",
                            "regularize_content", "prog_contrast"),
    "Style / text": ("lambda_clip", "n_cuts", "lambda_cls", "lambda_l2"),
    "Regularisers": ("lambda_range", "lambda_id", "range_restart", "max_restarts", "restart_threshold"),
    "AGG": ("lambda_gt", "eta_edit", "eta", "eta_boost", "t_edit", "t_boost", "inner_iters", "inner_lr", "symmetric"),
    "Size": ("size", "max_long_side", "resize_mode"),
}
METHOD_LABELS: dict[str, str] = {"diffuseit": "DiffuseIT (ICLR 2023)", "agg": "AGG (CVPR 2024) — faster"}
METHOD_NAMES: dict[str, str] = {"diffuseit": "DiffuseIT", "agg": "AGG"}  # in captions
# Every input in words: (label, what it changes in the picture). The labels are for people; the
# API keeps the parameter names, and its descriptions are these same words (see describe).
WORDS: dict[str, tuple[str, str]] = {
    "source": ("Photo to translate", "its layout is kept; any common format, transparency composited on white"),
    "style": ("Style image", "the look to take on: colours, textures, the feel of the picture"),
    "source_text": ("What the photo shows", "a few words, e.g. 'Cat'"),
    "text": ("What it should become", "e.g. 'Black Leopard'"),
    "generator": ("Model", "Faces: aligned portraits, keeps the identity; ImageNet 512: larger pictures, slower"),
    "class_label": ("ImageNet class", "what the 512 model draws toward: Random changes it every step (as the paper), "
                                      "Auto holds the class closest to the text; type to find a class"),
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
    "method": ("Method", "DiffuseIT: the first method, strong changes. AGG: the authors' successor, starts from the "
                         "photo's own noise and guides a third of the steps: faster, keeps more of the layout"),
    "lambda_gt": ("Keep the photo's content (AGG)", "pull toward the photo's own reconstruction; lower changes more"),
    "eta_edit": ("Randomness while editing (AGG)", "0: the same picture from the same seed and noise-free steps"),
    "eta": ("Randomness after editing (AGG)", "fresh noise in the steps that only clean up"),
    "eta_boost": ("Randomness of the last steps (AGG)", "fresh noise in the final steps: finer texture"),
    "t_edit": ("Guided steps (AGG)", "how many of the first steps are guided: one fewer than this"),
    "t_boost": ("Steps before the last ones (AGG)", "the steps after this many use the last steps' randomness"),
    "inner_iters": ("Refinement passes (AGG)", "extra passes on each guided step's preview; 1 is none"),
    "inner_lr": ("Refinement rate (AGG)", "how far each refinement pass moves the preview"),
    "symmetric": ("Symmetric update (AGG)", "the plain update instead of the asymmetric one: a weaker change"),
    "size": ("Working size", "short side in pixels the model works at; larger is slower and needs more memory"),
    "max_long_side": ("Longest side at most", "pixels; a wider photo is cropped to this"),
    "resize_mode": ("Fit", "keep the aspect ratio, or crop a square from the centre"),
}
RESIZE_CHOICES = [("Keep the aspect ratio", "resize"), ("Square crop", "center_crop")]
COMPACT_HELP = {
    "text": "What it should become, e.g. 'Black Leopard' (text mode; leave empty when a style image is given)",
    "source_text": "What the photo shows, e.g. 'Cat' (text mode)",
    "style": "Style image whose look to take on (image mode; then leave text and source_text empty)",
    "preset": "'default' (DiffuseIT: fast; AGG: its one preset), 'fast' (DiffuseIT: about half the time, a weaker "
              "change) or 'full' (DiffuseIT: the paper's settings)",
    "samples": f"Samples: pictures made in one run, 1 to {MAX_SAMPLES}, returned best first",
    "seed": "Seed of the first sample (sample k uses seed + k); -1 draws a random one",
    "generator": "'imagenet' for any photo, 'ffhq' for aligned face portraits (keeps the identity), 'imagenet512' "
                 "for 512-pixel results where this server loads it (4× the pixels, slower)",
    "class_label": "The ImageNet 512 model's class: 'random' (a new one every step), 'auto' (the class whose name is "
                   "closest to the text; text mode) or a class id '0'-'999'; only with generator='imagenet512'",
    "method": "'diffuseit' (ICLR 2023) or 'agg' (CVPR 2024: faster, keeps more of the layout)",
}


def banner(models: Models, fast_config: TranslationConfig) -> str | None:
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


def api_help(name: str) -> str:
    """A parameter's description in the API docs and the MCP schema: the words, then the range."""
    label, info = WORDS[name]
    if name in RANGES:
        low, high = RANGES[name]
        kind = "an integer" if SETTINGS[name].type == "int" else "a number"
        return f"{label}: {info} ({kind} in {format_range(low, high)})"
    return f"{label}: {info}"


def describe(handler: Callable[..., Any], summary: str, returns: str, helps: Mapping[str, str] = {}) -> None:
    """Give a handler the ``Args:`` docstring gradio reads for its MCP tool, one line per parameter
    (``helps`` overrides the words of WORDS where a parameter means something else there)."""
    names = [p for p in inspect.signature(handler).parameters if p not in NOT_INPUTS]
    args = "\n".join(f"    {n}: {helps.get(n) or api_help(n)}" for n in names)
    handler.__doc__ = f"{summary}\n\nArgs:\n{args}\n\nReturns:\n    {returns}"


def described(component: gr.components.Component, text: str) -> gr.components.Component:
    """Give a component the description /gradio_api/info and gradio_client show for its parameter."""
    own = getattr(component, "api_info_as_input", component.api_info)
    component.api_info_as_input = lambda: {**own(), "additional_description": text}  # type: ignore[method-assign]
    return component


# --- what the page says about a request: refusals, progress, restarts, Stop ---------------------

MISSING: dict[str, str] = {  # a required input left empty, in the page's words
    "source": "a photo to translate",
    "source_text": "what the photo shows (e.g. 'Cat')",
    "text": "what it should become (e.g. 'Black Leopard')",
    "style": "a style image",
}
REQUIRED: dict[str, tuple[str, ...]] = {"text": ("source", "source_text", "text"), "image": ("source", "style")}


def missing_inputs(mode: str, values: Mapping[str, Any]) -> list[str]:
    """The required inputs of a tab left empty (a blank prompt counts as empty), in page order."""
    return [n for n in REQUIRED[mode] if values.get(n) is None or (isinstance(values[n], str) and not values[n].strip())]


def join_words(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def unread_inputs(method: str) -> tuple[str, ...]:
    """A handler's inputs ``method`` does not read: its unread settings, and with AGG DiffuseIT's
    resampling toggle."""
    return unread_by(method) + (("resampling",) if method == "agg" else ())


def missing_message(missing: list[str]) -> str:
    """The required inputs left empty, named together in the page's words."""
    return f"Add {join_words([MISSING[n] for n in missing])}."


def page_message(error: Exception) -> str:
    """A refusal as the page says it, beside the button: what to change, in the controls' words.

    The API keeps the library's precise wording (which names the parameter); this is for people.
    """
    text = str(error)
    field = getattr(error, "field", None)
    if field in WORDS and hasattr(error, "allowed"):
        return f"{WORDS[field][0]}: {error.allowed}."
    if "style image" in text:
        what = "The style image"
    elif "source image" in text:
        what = "The photo"
    else:
        return text
    if "not a format PIL can decode" in text:
        return f"{what} cannot be read: use a PNG, JPEG or WebP picture."
    return f"{what} cannot be used: {text.split(': ', 1)[-1]}"


def clock(seconds: float) -> str:
    """0:07, 2:05, 1:02:03."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def user_step(evaluation: int, config: TranslationConfig) -> int:
    """The step of the user's ``steps`` an evaluation belongs to: the skipped steps come from the
    photo, and resampling repeats the first guided step, so the last evaluation is step ``steps``."""
    repeats = config.resample_repeats if config.method == "diffuseit" else 1  # AGG does not resample
    return config.skip + 1 + max(0, evaluation - repeats)


def progress_line(evaluation: int, config: TranslationConfig, elapsed: float, left: float) -> str:
    """The one progress line: the user's step count, resampling when it adds evaluations, the time."""
    parts = [f"Step {user_step(evaluation, config)} of {config.steps}"]
    if config.method == "diffuseit" and config.resample_repeats > 1 and evaluation <= config.resample_repeats:
        parts.append(f"resampling the first step, {evaluation} of {config.resample_repeats}")
    parts += [f"{clock(elapsed)} elapsed", f"about {clock(left)} left"]
    return " · ".join(parts)


def restart_line(sample: int, restarts: int, max_restarts: int) -> str:
    return f"sample {sample + 1} left the valid range: restarted, {restarts} of {max_restarts}"


def stopped_line(step: int | None, steps: int | None) -> str:
    return "Stopped before the first step." if step is None else f"Stopped at step {step} of {steps}."
