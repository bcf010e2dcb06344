"""``translate``: the library's entry point, a numbered list of stages around the sampler.

validate → prepare images → fixed features → timesteps → generators → guided loop →
colour matching, scoring and ranking. Models come in loaded (``hub.load_models``); nothing here
downloads or reads the environment.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch
from PIL import Image

from . import images
from .clip import prompt_tokens
from .config import MAX_SAMPLES, MAX_TEXT_CHARS, RANGES, TranslationConfig, preset
from .diffusion import Schedule, make_schedule
from .errors import ConfigError, ImageError
from .guidance import build_guide
from .hub import Models
from .sampler import StepEvent, sample_guided
from .scoring import rank_order, score_samples

__all__ = ["Result", "Request", "translate", "check_request", "check_text", "prepare_images", "schedule_for"]

CONTEXT_TOKENS = 77  # CLIP's text context length


@dataclass(frozen=True)
class Result:
    """One translated image, with what it took to make and how it scores."""

    image: Image.Image
    seed: int
    rank: int  # 1 = best
    content_score: float  # structure distance to the source (lower keeps more layout)
    target_score: float  # similarity to the target text / style image (higher is closer)
    terms: dict[str, float] = field(default_factory=dict)  # unweighted loss terms of the last step
    restarts: int = 0
    tiny: bool = False  # made with random tiny models: not a meaningful picture


@functools.lru_cache(maxsize=8)
def schedule_for(steps: int) -> Schedule:
    """The respaced schedule of ``steps`` kept steps (SPEC §2), built once per value."""
    return make_schedule(str(steps))


def check_text(name: str, text: str | None, *, required: bool = True) -> str:
    """Strip a prompt and refuse empty, over-long or control-character text with a clear message."""
    text = (text or "").strip()
    if not text:
        if required:
            raise ConfigError(name, text, "a non-empty description (e.g. 'Black Leopard')")
        return text
    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError(name, text[:40] + "…", f"at most {MAX_TEXT_CHARS} characters (got {len(text)}); CLIP reads only 77 tokens")
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise ConfigError(name, text, "printable text without control characters")
    text = " ".join(text.split())
    if (tokens := prompt_tokens(text)) > CONTEXT_TOKENS:
        raise ConfigError(name, text[:40] + "…", f"a shorter text: CLIP reads {CONTEXT_TOKENS} tokens, this prompt needs {tokens}")
    return text


class Request(NamedTuple):
    """A checked request: decoded RGB images and normalised prompts (None where the mode has none)."""

    source: Image.Image
    style: Image.Image | None
    text: str | None
    source_text: str | None


def check_request(
    config: TranslationConfig, source: images.ImageInput, *, text: str | None = None,
    source_text: str | None = None, style: images.ImageInput | None = None,
) -> Request:
    """Everything about a request that needs no model, so a server can refuse it before taking a GPU."""
    if config.mode == "image" and style is None:
        raise ImageError("image-guided translation needs a style image; none was given")
    if config.mode == "text":
        if style is not None:
            raise ConfigError("mode", config.mode, "'image' when a style image is given")
        text, source_text = check_text("text", text), check_text("source_text", source_text)
    else:
        text = source_text = None
    src = images.load_image(source, name="source image")
    return Request(src, None if style is None else images.load_image(style, name="style image"), text, source_text)


def prepare_images(
    config: TranslationConfig, source: Image.Image, style: Image.Image | None, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
    """Source at the working size and the style image covering that same size, both (1,3,H,W) in
    [-1,1] on ``device``, and the (W, H) the results are returned at."""
    size_kw = dict(size=config.size, max_long_side=config.max_long_side, resize_mode=config.resize_mode)
    work_w, work_h = images.working_size(*source.size, **size_kw)
    x_src, x_style = (None if img is None else images.to_tensor(images.fit_to(img, work_w, work_h)).to(device)
                      for img in (source, style))
    return x_src, x_style, images.output_size(*source.size, **size_kw)


def _check_models(models: Models, config: TranslationConfig) -> None:
    if config.mode == "text" and config.lambda_clip > 0 and models.clip is None:
        raise ConfigError("lambda_clip", config.lambda_clip, "0 unless the CLIP models are loaded (load_clip=True)")
    if config.lambda_id > 0 and models.arcface is None:
        raise ConfigError("lambda_id", config.lambda_id, "0 unless the ArcFace model is loaded (load_arcface=True, faces generator)")


def translate(
    models: Models,
    source: images.ImageInput,
    *,
    text: str | None = None,
    source_text: str | None = None,
    style: images.ImageInput | None = None,
    config: TranslationConfig | None = None,
    seeds: Sequence[int] | None = None,
    callback: Callable[[StepEvent], None] | None = None,
    progress: bool = False,
) -> list[Result]:
    """Translate ``source`` toward ``text`` (with ``source_text``) or toward a ``style`` image.

    Returns ``config.samples`` results (or one per seed), best first. ``callback`` receives a
    ``StepEvent`` after every guided step and may raise ``Cancelled``. Same seed, settings and
    device give the same images.
    """
    # 1.–2. check inputs, decode the images
    mode = "image" if style is not None else "text"
    config = config or preset(mode, generator=models.config.generator)
    request = check_request(config, source, text=text, source_text=source_text, style=style)
    _check_models(models, config)
    seeds = list(seeds) if seeds is not None else [config.seed + k for k in range(config.samples)]
    if not 0 < len(seeds) <= MAX_SAMPLES or any(not isinstance(s, int) or isinstance(s, bool) or not RANGES["seed"][0] <= s <= RANGES["seed"][1] for s in seeds):
        raise ConfigError("seeds", seeds, f"a list of 1 to {MAX_SAMPLES} integers in [0, 2^63)")
    text, source_text = request.text, request.source_text

    x_src, x_style, out_size = prepare_images(config, request.source, request.style, models.device)

    # 3. fixed features, once per call
    schedule = schedule_for(config.steps)
    guide = build_guide(
        config, schedule, x_src, vit=models.vit, clip=models.clip, arcface=models.arcface,
        style=x_style, text=text, source_text=source_text,
    )

    # 4.–6. timesteps, one generator per sample, the guided loop
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out = sample_guided(
        models.unet, schedule, guide, x_src, generators, t_start=config.t_start,
        repeats=config.resample_repeats,
        restart_threshold=config.restart_threshold if config.range_restart else None,
        callback=callback, disable=not progress,
    )

    # 7. postprocess, score, rank
    x = out.x0.clamp(-1, 1)
    if config.mode == "image" and config.colour_match:
        x = images.colour_match_mkl(x, x_style).clamp(-1, 1)
    scores = score_samples(x, guide.fixed, vit=models.vit, clip=models.clip, text=text)
    order = rank_order(scores)
    pictures = images.to_pil(x, out_size)
    return [
        Result(
            image=pictures[k], seed=seeds[k], rank=r + 1,
            content_score=float(scores.content[k]), target_score=float(scores.target[k]),
            terms={name: float(v[k]) for name, v in out.terms.items()},
            restarts=out.restarts[k], tiny=models.tiny,
        )
        for r, k in enumerate(order)
    ]
