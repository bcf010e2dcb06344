"""``translate``: the library's entry point, a numbered list of stages around the sampler.

validate → prepare images → fixed features (AGG: with the source's DDIM inversion) → timesteps →
generators → the method's loop (DiffuseIT ``sample_guided``, AGG ``sample_agg``) → colour matching,
scoring and ranking. ``translate_many`` runs several images of one working size
in one batch; ``translate`` is it for one image. Models come in loaded (``hub.load_models``); nothing here
downloads or reads the environment.
"""

from __future__ import annotations

import functools
import itertools
import numbers
import unicodedata
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from PIL import Image

from . import images
from .classes import CLASS_NAMES, NAME_TEMPLATE, nearest_class
from .clip import ClipEnsemble, prompt_tokens
from .config import (CLASS_CONDITIONAL, MAX_SAMPLES, MAX_TEXT_CHARS, RANGES, SIZE_MULTIPLE, TranslationConfig,
                     format_range, preset)
from .diffusion import Schedule, make_schedule
from .errors import ConfigError, ImageError
from .capture import step_function
from .guidance import Guide, build_guide, stack_guides
from .hub import Models
from .sampler import SampleOutput, StepEvent, ddim_invert, sample_agg, sample_guided
from .scoring import rank_order, score_samples

__all__ = ["Result", "Request", "Job", "translate", "translate_many", "check_request", "check_text", "prepare_images",
           "schedule_for", "held_classes", "check_models"]

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
    note: str = ""  # why it is not what was asked (e.g. a restart skipped near the deadline)
    class_label: int | None = None  # the 512 generator's class held for the run (an id, or auto's pick); None: drawn


@functools.lru_cache(maxsize=8)
def schedule_for(steps: int) -> Schedule:
    """The respaced schedule of ``steps`` kept steps (SPEC §2), built once per value."""
    return make_schedule(str(steps))


def check_text(name: str, text: str | None, *, required: bool = True) -> str:
    """Strip a prompt and refuse non-strings and empty, over-long or control-character text with a clear message.

    Control characters (Cc: C0, DEL, C1; tab and newlines aside) and unpaired surrogates are refused;
    format characters (Cf: zero-width space, joiners, BOM, …) are kept inside a prompt, since emoji and
    some scripts need them, but alone they make it empty.
    """
    if text is not None and not isinstance(text, str):
        raise ConfigError(name, text, "a string (e.g. 'Black Leopard')")
    text = text or ""
    if any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r" for c in text):
        raise ConfigError(name, text, "printable text without control characters (U+0000–U+001F, U+007F–U+009F)")
    text = text.strip()
    if not "".join(c for c in text if unicodedata.category(c) != "Cf").strip():
        if required:
            raise ConfigError(name, text, "a non-empty description (e.g. 'Black Leopard'); zero-width and other "
                              "invisible format characters do not count")
        return ""
    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError(name, text[:40] + "…", f"at most {MAX_TEXT_CHARS} characters (got {len(text)}); CLIP reads only 77 tokens")
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
    if not isinstance(config, TranslationConfig):
        raise ConfigError("config", config, "a TranslationConfig, e.g. dsct.preset('text', samples=2), or None")
    if style is not None:
        for name, value in (("text", text), ("source_text", source_text)):
            if value is not None:  # the mode would be a guess: refuse instead of picking one
                raise ConfigError(name, value, "left out when a style image is given: give either text (with "
                                  "source_text) for text mode or a style image for image mode, not both")
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
    config: TranslationConfig, source: Image.Image, style: Image.Image | None, device: torch.device, multiple: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
    """Source at the working size and the style image covering that same size, both (1,3,H,W) in
    [-1,1] on ``device``, and the (W, H) the results are returned at. ``multiple``: the generator's
    (``config.SIZE_MULTIPLE``), which the sizes are rounded to."""
    size_kw = dict(size=config.size, max_long_side=config.max_long_side, resize_mode=config.resize_mode,
                   multiple=multiple)
    work_w, work_h = images.working_size(*source.size, **size_kw)
    x_src, x_style = (None if img is None else images.to_tensor(images.fit_to(img, work_w, work_h)).to(device)
                      for img in (source, style))
    return x_src, x_style, images.output_size(*source.size, **size_kw)


def check_models(models: Models, config: TranslationConfig) -> None:
    """What a config asks of the loaded networks: the losses' models, the generator's sizes and classes
    (a server checks it before it takes a GPU)."""
    if config.mode == "text" and config.lambda_clip > 0 and models.clip is None:
        raise ConfigError("lambda_clip", config.lambda_clip, "0 unless the CLIP models are loaded (load_clip=True)")
    if config.lambda_id > 0 and models.arcface is None:
        raise ConfigError("lambda_id", config.lambda_id, "0 unless the ArcFace model is loaded (load_arcface=True, faces generator)")
    multiple = SIZE_MULTIPLE[models.config.generator]
    for name in ("size", "max_long_side"):
        if getattr(config, name) % multiple:
            raise ConfigError(name, getattr(config, name), f"a multiple of {multiple} with generator="
                              f"{models.config.generator!r} (its UNet halves the image {multiple.bit_length() - 1} times)")
    if models.unet.num_classes is None and config.class_label != "random":
        raise ConfigError("class_label", config.class_label, f"'random' (its default) with generator="
                          f"{models.config.generator!r}, which has no classes: only generator="
                          f"{' or '.join(map(repr, CLASS_CONDITIONAL))} reads it")
    if config.class_label == "auto" and models.clip is None:
        raise ConfigError("class_label", "auto", "'random' or a class id unless the CLIP models are loaded (load_clip=True)")


_NAME_TABLES: weakref.WeakKeyDictionary[ClipEnsemble, list[torch.Tensor]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def held_classes(models: Models, config: TranslationConfig, texts: Sequence[str | None]) -> list[int | None]:
    """Per request the class the 512 generator holds for the whole run (SPEC §6), or None: drawn per
    evaluation ("random", or a generator without classes). "auto": the class whose name CLIP finds
    closest to the request's target text; the names' embeddings are computed once per CLIP ensemble."""
    if models.unet.num_classes is None or config.class_label == "random":
        return [None] * len(texts)
    if config.class_label != "auto":
        return [int(config.class_label)] * len(texts)
    if models.clip not in _NAME_TABLES:
        _NAME_TABLES[models.clip] = models.clip.plain_text_embeddings(CLASS_NAMES, NAME_TEMPLATE)
    names, wanted = _NAME_TABLES[models.clip], models.clip.plain_text_embeddings(list(texts), NAME_TEMPLATE)
    return [nearest_class([e[k] for e in wanted], names) for k in range(len(texts))]


def _check_seeds(config: TranslationConfig, seeds: Iterable[int] | None) -> list[int]:
    """The explicit seeds, one per sample, or ``config.seed + k`` for each of ``config.samples``."""
    if seeds is None:
        return [config.seed + k for k in range(config.samples)]
    low, high = RANGES["seed"]
    allowed = f"a list of 1 to {MAX_SAMPLES} integers in {format_range(low, high)}"
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ConfigError("seeds", seeds, allowed)
    listed = list(itertools.islice(seeds, MAX_SAMPLES + 1))  # an endless iterable is refused, not exhausted
    if not 0 < len(listed) <= MAX_SAMPLES or any(
            not isinstance(s, numbers.Integral) or isinstance(s, bool) or not low <= s <= high for s in listed):
        raise ConfigError("seeds", seeds if isinstance(seeds, Sequence) else listed, allowed)
    return [int(s) for s in listed]


class Job(NamedTuple):
    """One image of ``translate_many`` with its own prompts: a text (with ``source_text``) or a style image."""

    source: images.ImageInput
    text: str | None = None
    source_text: str | None = None
    style: images.ImageInput | None = None


def translate(
    models: Models,
    source: images.ImageInput,
    *,
    text: str | None = None,
    source_text: str | None = None,
    style: images.ImageInput | None = None,
    config: TranslationConfig | None = None,
    seeds: Iterable[int] | None = None,
    callback: Callable[[StepEvent], None] | None = None,
    progress: bool = False,
    deadline: float | None = None,
) -> list[Result]:
    """Translate ``source`` toward ``text`` (with ``source_text``) or toward a ``style`` image.

    Returns ``config.samples`` results (or one per seed), best first. ``callback`` receives a
    ``StepEvent`` after every guided step and may raise ``Cancelled``. Same seed, settings and
    device give the same images. ``deadline`` (a ``time.monotonic()`` value, e.g. the end of a
    GPU time budget): near it no range restart starts and only the samples that finished are
    returned, in rank order.
    """
    return translate_many(models, [Job(source, text, source_text, style)], config=config, seeds=seeds,
                          callback=callback, progress=progress, deadline=deadline)[0]


def translate_many(
    models: Models,
    jobs: Sequence[Job],
    *,
    config: TranslationConfig | None = None,
    seeds: Iterable[int] | None = None,
    callback: Callable[[StepEvent], None] | None = None,
    progress: bool = False,
    deadline: float | None = None,
) -> list[list[Result]]:
    """``translate`` for several images of one working size in one batch, each with its own prompts.

    Every image gets the samples (seeds) ``translate`` would give it, and all of them share each
    guided step's UNet, ViT and CLIP passes; the results (one list per job, best first) are those of
    separate calls up to floating-point batch effects. Batch row j·samples + k is job j's sample k
    (``StepEvent.sample_ids``). Before a deadline a job may come back with fewer results, or none.
    """
    # 1.–2. check inputs, decode the images
    if not isinstance(models, Models):
        raise ConfigError("models", models, "the Models that dsct.load_models(ModelConfig(...)) returns")
    if callback is not None and not callable(callback):
        raise ConfigError("callback", callback, "a function called with each StepEvent, or None")
    if not isinstance(jobs, Sequence) or not jobs or not all(isinstance(j, Job) for j in jobs):  # a str holds no Job
        raise ConfigError("jobs", jobs, "a non-empty list of dsct.Job(source, text=…, source_text=…) or Job(source, style=…)")
    if config is None:
        config = preset("image" if jobs[0].style is not None else "text", generator=models.config.generator)
    requests = [check_request(config, j.source, text=j.text, source_text=j.source_text, style=j.style) for j in jobs]
    check_models(models, config)
    seeds = _check_seeds(config, seeds)
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))):
        raise ConfigError("deadline", deadline, "None or a time.monotonic() value")

    multiple = SIZE_MULTIPLE[models.config.generator]
    prepared = [prepare_images(config, r.source, r.style, models.device, multiple) for r in requests]
    for k, (x, _, _) in enumerate(prepared[1:], 1):
        if x.shape != prepared[0][0].shape:
            raise ImageError(f"images translated in one batch need one working size: image {k + 1} is worked on at "
                             f"{x.shape[3]}×{x.shape[2]}, the first at {prepared[0][0].shape[3]}×{prepared[0][0].shape[2]}")

    # 3. fixed features, once per image (AGG: its DDIM inversion too, SPEC-AGG §4); one row per sample
    # when several images share the batch
    schedule = schedule_for(config.steps)
    classes = held_classes(models, config, [r.text for r in requests])
    guides = [
        build_guide(config, schedule, x_src, vit=models.vit, clip=models.clip, arcface=models.arcface,
                    style=x_style, text=r.text, source_text=r.source_text, class_id=c,
                    inversion=ddim_invert(models.unet, schedule, x_src, config.t_start,
                                          None if c is None else torch.tensor([c], device=x_src.device))
                    if config.method == "agg" else None)
        for (x_src, x_style, _), r, c in zip(prepared, requests, classes)
    ]
    guide = stack_guides(guides, len(seeds))

    # 4.–6. timesteps, one generator per sample, the method's loop
    generators = [torch.Generator().manual_seed(s) for _ in jobs for s in seeds]
    if config.method == "agg":  # eager steps: step_capture applies to DiffuseIT's guided step only
        out = sample_agg(models.unet, guide.schedule, guide, guide.fixed.inv_start, generators,
                         callback=callback, disable=not progress, deadline=deadline)
    else:
        step = step_function(models.config.step_capture, models.unet, guide.schedule, guide, len(generators))
        out = sample_guided(
            models.unet, guide.schedule, guide, guide.fixed.src, generators, t_start=config.t_start,
            repeats=config.resample_repeats,
            restart_threshold=config.restart_threshold if config.range_restart else None,
            callback=callback, disable=not progress, deadline=deadline, step=step,
        )

    # 7. postprocess, score, rank: per image
    return [_results(models, config, out, rows, seeds, guides[j], requests[j].text, prepared[j][1], prepared[j][2], classes[j])
            for j in range(len(jobs))
            for rows in [[n for n, row in enumerate(out.finished) if row // len(seeds) == j]]]


def _results(models: Models, config: TranslationConfig, out: SampleOutput, rows: list[int], seeds: list[int],
             guide: Guide, text: str | None, x_style: torch.Tensor | None, out_size: tuple[int, int],
             class_label: int | None) -> list[Result]:
    """One image's results: its finished samples (``rows`` of ``out.x0``) colour-matched, scored, ranked."""
    if not rows:
        return []
    x = out.x0[rows].clamp(-1, 1)
    if config.mode == "image" and config.colour_match:
        x = images.colour_match_mkl(x, x_style).clamp(-1, 1)
    scores = score_samples(x, guide.fixed, vit=models.vit, clip=models.clip, text=text)
    pictures = images.to_pil(x, out_size)
    return [
        Result(
            image=pictures[k], seed=seeds[row % len(seeds)], rank=r + 1,
            content_score=float(scores.content[k]), target_score=float(scores.target[k]),
            terms={name: float(v[rows[k]]) for name, v in out.terms.items()},
            restarts=out.restarts[row], tiny=models.tiny, note=out.notes.get(row, ""), class_label=class_label,
        )
        for r, k in enumerate(rank_order(scores))
        for row in [out.finished[rows[k]]]
    ]
