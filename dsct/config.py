"""Every user setting as a frozen dataclass, the presets of SPEC §5, and the one validator.

A config that exists is valid: ``__post_init__`` runs :func:`validate`, and so does
``dataclasses.replace``. Field names are the names of the CLI flags (kebab-case), the API
parameters and the UI controls, so one setting has one name everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

from .errors import ConfigError

__all__ = [
    "Mode", "GeneratorName", "ResizeMode", "DType", "StepCapture", "ClipName",
    "CLIP_CHOICES", "ModelConfig", "TranslationConfig", "PRESETS", "preset", "validate",
    "TEXT_PRESET", "IMAGE_PRESET", "TEXT_FAST_PRESET", "IMAGE_FAST_PRESET",
    "MAX_SAMPLES", "MAX_TEXT_CHARS", "format_range",
    "Method", "AGG_TEXT_PRESET", "AGG_IMAGE_PRESET", "AGG_FACES_PRESET", "AGG_PRESETS", "AGG_ONLY", "DIFFUSEIT_ONLY", "unread_by",
    "ClassRule", "CLASS_RULES", "NUM_CLASSES", "SIZE_MULTIPLE", "GENERATOR_SIZES", "CLASS_CONDITIONAL",
]

Mode = Literal["text", "image"]
Method = Literal["diffuseit", "agg"]
GeneratorName = Literal["imagenet", "ffhq", "imagenet512"]
ResizeMode = Literal["resize", "center_crop"]
DType = Literal["auto", "fp32", "bf16", "fp16"]
StepCapture = Literal["eager", "cuda-graph", "compile"]
ClipName = Literal["RN50-quickgelu", "RN50x4-quickgelu", "ViT-B-32-quickgelu", "RN50x16-quickgelu", "ViT-B-16-quickgelu"]
CLIP_CHOICES: tuple[str, ...] = get_args(ClipName)

# SPEC §6: what each generator needs of the working size. H and W are multiples of 2^(downsamplings)
# (5 at 256, 6 at 512); (size, max_long_side) of its presets: the trained size, the long side 1.75× it.
SIZE_MULTIPLE: dict[str, int] = {"imagenet": 32, "ffhq": 32, "imagenet512": 64}
GENERATOR_SIZES: dict[str, tuple[int, int]] = {"imagenet": (256, 448), "ffhq": (256, 448), "imagenet512": (512, 896)}
NUM_CLASSES = 1000  # the 512 model's ImageNet classes
ClassRule = Literal["random", "auto"]  # or a class id in [0, NUM_CLASSES)
CLASS_RULES: tuple[str, ...] = get_args(ClassRule)
CLASS_CONDITIONAL: tuple[str, ...] = ("imagenet512",)  # the generators that take a class per evaluation (SPEC §6)


MAX_SAMPLES = 16
MAX_TEXT_CHARS = 300  # CLIP sees at most 77 tokens; longer prompts are refused, not cut silently.


def _setting(default: object, help: str):
    """A dataclass field whose help text the CLI and the app reuse."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelConfig:
    """Which networks to load, and how (SPEC §1). Paths override the registry's download."""

    generator: GeneratorName = "imagenet"
    clip_models: tuple[str, ...] = CLIP_CHOICES
    load_clip: bool = True
    load_arcface: bool | None = None  # None: load it with the faces generator, which uses the identity loss
    tiny: bool = False
    dtype: DType = "auto"
    grad_checkpointing: bool = False
    # how a guided step runs: eagerly, replayed as one CUDA graph per shape, or compiled whole (dsct.capture)
    step_capture: StepCapture = "eager"
    unet_path: str | None = None
    vit_path: str | None = None
    arcface_path: str | None = None

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class TranslationConfig:
    """Sampler and loss settings (SPEC §3–5, SPEC-AGG). Defaults are DiffuseIT's text demo and AGG's common
    settings; see ``PRESETS``, ``AGG_PRESETS`` and ``preset``.

    A setting only one method reads (``DIFFUSEIT_ONLY``, ``AGG_ONLY``) must keep its field default under the
    other method, so nothing is silently ignored: the rule compares with the dataclass default, never with a
    preset, and every preset of each method changes only the settings that method reads.
    """

    mode: Mode = _setting("text", "text: guided by a target text; image: guided by a style image")
    steps: int = _setting(100, "diffusion steps: more steps give finer detail and take longer [SPEC §2: respaced "
                               "timesteps; sampling starts at index steps - skip - 1]")
    skip: int = _setting(40, "keep more of the source: higher keeps more of the photo and changes less [SPEC §3: "
                             "leading steps skipped, the source noised to index steps - skip - 1]")
    resample_repeats: int = _setting(10, "how often the first step is repeated for a stronger change; 1 is none [SPEC "
                                         "§3: resampling repeats at the first guided step]")
    divergence_until: int = _setting(50, "push away from the photo until: the early push stops once fewer steps than "
                                         "this remain [SPEC §4: semantic divergence loss while the step index is above "
                                         "this]")
    range_restart: bool = _setting(True, "restart broken samples: start a sample over when its colours run far out of "
                                         "range [SPEC §3: range restart when the denoised x̂0 leaves [-1, 1] too far]")
    max_restarts: int = _setting(3, "restarts per sample at most: bounds the extra time broken samples may take [SPEC "
                                    "§3: cap on range restarts]")
    restart_threshold: float = _setting(0.01, "restart threshold: lower restarts more readily (faces: 0.1) [SPEC §3: "
                                              "weighted range loss that triggers a restart]")
    noise_aug: bool = _setting(True, "structure check on noisy previews: steadier structure guidance [the reference's "
                                     "use_noise_aug_all: ViT losses see x̂0 mixed with x_t]")
    regularize_content: bool = _setting(True, "guard the layout once the text fits: keeps the change from overshooting "
                                              "(text mode) [SPEC §4: contrastive weight doubled while the CLIP loss is "
                                              "below -0.5]")
    prog_contrast: bool = _setting(False, "relax the layout until the text fits: lets a hard change happen sooner "
                                          "(text mode) [SPEC §4: contrastive weight halved while the CLIP loss is "
                                          "above -0.5]")
    colour_match: bool = _setting(False, "match the style's colours: give the result the style image's colour palette "
                                         "(image mode) [the reference's use_colormatch: MKL colour transfer]")
    n_cuts: int = _setting(8, "views of the text check: more random crops give steadier guidance, slower (text mode) "
                              "[SPEC §4: random views per CLIP model and step]")
    lambda_ssim: float = _setting(1000.0, "keep the layout: how strictly the shapes and their arrangement follow the "
                                          "photo [SPEC §4: DINO key self-similarity loss]")
    lambda_contra: float = _setting(200.0, "keep local structure: how closely each patch keeps its own content [SPEC "
                                           "§4: contrastive patch NCE loss on DINO keys]")
    lambda_div: float = _setting(100.0, "push away from the photo early: speeds up the change in the first steps [SPEC "
                                        "§4: semantic divergence from the previous step's DINO [CLS]]")
    lambda_cls: float = _setting(0.0, "take the style's look: how strongly the overall appearance follows the style "
                                      "image (image mode) [SPEC §4: DINO [CLS] distance to the style image]")
    lambda_l2: float = _setting(0.0, "take the style's colours and tones: pulls the pixels toward the style image "
                                     "(image mode) [SPEC §4: pixel L2 to the style image]")
    lambda_clip: float = _setting(2000.0, "follow the text: how strongly the picture is pulled toward the target words "
                                          "(text mode) [SPEC §4: CLIP directional loss]")
    lambda_range: float = _setting(200.0, "keep colours in range: avoids washed-out or saturated blotches [SPEC §4: "
                                          "range loss keeping x̂0 inside [-1, 1]]")
    lambda_id: float = _setting(0.0, "keep the person's identity: the face stays recognisable; Faces model only "
                                     "(with DiffuseIT there: 100) [SPEC §4: ArcFace identity loss]")
    size: int = _setting(256, "working size: short side in pixels the model works at; larger is slower and needs more "
                              "memory [SPEC §3: generator input size, a multiple of 32; of 64 at 512]")
    max_long_side: int = _setting(448, "longest side at most: pixels, in resize mode; a wider photo is cropped to this "
                                       "[SPEC §3: long-side cap, a multiple of 32; of 64 at 512]")
    resize_mode: ResizeMode = _setting("resize", "fit: resize keeps the aspect ratio, center_crop crops a square from "
                                                 "the centre [SPEC §3: input resizing]")
    samples: int = _setting(1, "samples: pictures made at once (cheaper than separate runs), returned best first "
                               "[library: one batch, ranked by content and target scores]")
    seed: int = _setting(0, "seed: the same seed and settings give the same pictures; sample k uses seed + k [library: "
                            "per-sample generator seed]")
    # last, so positional construction keeps its meaning
    method: Method = _setting("diffuseit", "diffuseit redraws the photo step by step, guarded by structure checks; agg "
                              "retraces the photo's own noise path and edits along it [SPEC: DDPM with DINO ViT "
                              "losses; SPEC-AGG: DDIM from the source's inversion, asymmetric gradient guidance]")
    # AGG only (SPEC-AGG §5–8)
    eta_edit: float = _setting(0.7, "randomness of the guided steps; 0 adds no noise [SPEC-AGG §5: DDIM η of the "
                                    "guided steps]")
    eta: float = _setting(0.7, "randomness of the plain steps after the guided ones [SPEC-AGG §5: DDIM η of the "
                               "unguided steps]")
    eta_boost: float = _setting(1.0, "randomness of the last plain steps [SPEC-AGG §5: DDIM η where index ≤ steps - "
                                     "skip - t_boost]")
    t_edit: int = _setting(20, "how many steps are guided: t_edit - 1 of them, right after the skipped ones [SPEC-AGG "
                               "§5: guided while index > steps - skip - t_edit]")
    t_boost: int = _setting(40, "where the last plain steps begin: from there on they use eta_boost [SPEC-AGG §5: "
                                "index ≤ steps - skip - t_boost]")
    lambda_gt: float = _setting(200.0, "keep the photo's content: pulls each guided preview toward the photo's own "
                                       "path [SPEC-AGG §7: L1 of x̂0 to the source's DDIM inversion]")
    inner_iters: int = _setting(1, "refinement passes on the preview per guided step; 1 leaves the picture as it is "
                                   "[SPEC-AGG §6.3: inner AdamW passes on x̂0]")
    inner_lr: float = _setting(0.02, "step size of those refinement passes [SPEC-AGG §6.3: inner AdamW learning rate]")
    symmetric: bool = _setting(False, "apply the guidance the ordinary way instead of AGG's one-sided update [SPEC-AGG "
                                      "§6: plain DDIM on the guided x̂0, the reference's 'both']")
    # ImageNet 512 generator only (SPEC §6)
    class_label: int | str = _setting("random", "ImageNet class the 512 model draws toward: random (a new class at "
                                      "every step, as the reference), auto (the class whose name is closest to the "
                                      "target text; text mode) or a class id 0-999 held for the whole run [SPEC §6: "
                                      "the class-conditional model's y]")

    def __post_init__(self) -> None:
        validate(self)

    @property
    def t_start(self) -> int:
        """Spaced index of the first guided step (SPEC §3: T_spaced - skip - 1)."""
        return self.steps - self.skip - 1

    @property
    def weights(self) -> dict[str, float]:
        """Loss name -> weight of the losses this method reads, the keys ``losses.weighted_sum`` and the guide use."""
        unread = unread_by(self.method)
        return {f.name.removeprefix("lambda_"): getattr(self, f.name) for f in fields(self)
                if f.name.startswith("lambda_") and f.name not in unread}


# (low, high) inclusive numeric ranges; one table so the CLI, the app sliders and the errors agree.
MAX_WEIGHT = 1e6
RANGES: dict[str, tuple[float, float]] = {
    "steps": (2, 1000),
    "skip": (0, 999),
    "resample_repeats": (1, 50),
    "divergence_until": (-1, 999),
    "max_restarts": (0, 10),
    "restart_threshold": (0.0, MAX_WEIGHT),
    "n_cuts": (1, 64),
    **{f"lambda_{name}": (0.0, MAX_WEIGHT) for name in ("ssim", "contra", "div", "cls", "l2", "clip", "range", "id", "gt")},
    "eta_edit": (0.0, 1.0),
    "eta": (0.0, 1.0),
    "eta_boost": (0.0, 1.0),
    "t_edit": (2, 1000),
    "t_boost": (0, 1000),
    "inner_iters": (1, 100),
    "inner_lr": (0.0, 1.0),
    "size": (32, 1024),
    "max_long_side": (32, 2048),
    "samples": (1, MAX_SAMPLES),
    "seed": (0, 2**63 - 1),
}
# Settings one method reads and the other does not: under the other method each keeps its field default.
DIFFUSEIT_ONLY: tuple[str, ...] = ("resample_repeats", "divergence_until", "range_restart", "max_restarts",
                                   "restart_threshold", "lambda_ssim", "lambda_contra", "lambda_div")
AGG_ONLY: tuple[str, ...] = ("eta_edit", "eta", "eta_boost", "t_edit", "t_boost", "lambda_gt", "inner_iters",
                             "inner_lr", "symmetric")


def unread_by(method: str) -> tuple[str, ...]:
    """The settings ``method`` does not read (the other method's own ones)."""
    return AGG_ONLY if method == "diffuseit" else DIFFUSEIT_ONLY

MAX_GUIDED_EVALUATIONS = 5000  # steps after skip plus repeats: bounds the work one call can ask for


def _format_number(value: float) -> str:
    """A range bound as people write it: 2^63 − 1 or 2^40 for big powers of two, plain digits otherwise."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:g}"
    n = int(value)
    if n > 2**32 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    if n > 2**32 and n & (n + 1) == 0:
        return f"2^{n.bit_length()} − 1"
    return str(n)


def format_range(low: float, high: float) -> str:
    """An inclusive range for messages, e.g. [0, 2^63 − 1] (``:g`` would print 9.22337e+18)."""
    return f"[{_format_number(low)}, {_format_number(high)}]"


def _check_choice(name: str, value: object, kind: object) -> None:
    choices = get_args(kind)
    if value not in choices:
        raise ConfigError(name, value, f"one of {', '.join(map(repr, choices))}")


def validate(cfg: ModelConfig | TranslationConfig) -> None:
    """The one place settings are checked; raises ConfigError naming field, value and range."""
    hints = {"method": Method, "mode": Mode, "generator": GeneratorName, "resize_mode": ResizeMode, "dtype": DType,
             "step_capture": StepCapture}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in hints:
            _check_choice(f.name, value, hints[f.name])
        elif f.type in ("bool",) and not isinstance(value, bool):
            raise ConfigError(f.name, value, "true or false")
        elif f.name in RANGES:
            low, high = RANGES[f.name]
            is_int = f.type == "int"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (is_int and not float(value).is_integer()):
                raise ConfigError(f.name, value, f"{'an integer' if is_int else 'a number'} in {format_range(low, high)}")
            if not math.isfinite(value) or not low <= value <= high:
                raise ConfigError(f.name, value, f"a value in {format_range(low, high)}")
            if is_int and not isinstance(value, int):
                object.__setattr__(cfg, f.name, int(value))
    if isinstance(cfg, ModelConfig):
        _validate_models(cfg)
    else:
        _validate_class_label(cfg)
        _validate_translation(cfg)


def _validate_models(cfg: ModelConfig) -> None:
    if cfg.load_arcface is None:
        object.__setattr__(cfg, "load_arcface", cfg.generator == "ffhq")
    if not isinstance(cfg.load_arcface, bool):
        raise ConfigError("load_arcface", cfg.load_arcface, "true, false or None (with the faces generator)")
    if isinstance(cfg.clip_models, list):
        object.__setattr__(cfg, "clip_models", tuple(cfg.clip_models))
    if not isinstance(cfg.clip_models, tuple) or not cfg.clip_models:
        raise ConfigError("clip_models", cfg.clip_models, f"a non-empty tuple of {', '.join(CLIP_CHOICES)}")
    for name in cfg.clip_models:
        if name not in CLIP_CHOICES:
            raise ConfigError("clip_models", name, f"each one of {', '.join(CLIP_CHOICES)}")
    if len(set(cfg.clip_models)) != len(cfg.clip_models):
        raise ConfigError("clip_models", cfg.clip_models, "each model at most once")


def _validate_class_label(cfg: TranslationConfig) -> None:
    """'random', 'auto' (text mode) or an id; an id written as digits (a CLI or API string) becomes the int."""
    value = cfg.class_label
    if isinstance(value, str):
        value = value.strip().lower()
        value = int(value) if value.isascii() and value.isdecimal() else value
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)  # e.g. a NumPy integer
    if isinstance(value, bool) or not (value in CLASS_RULES or isinstance(value, int) and 0 <= value < NUM_CLASSES):
        raise ConfigError("class_label", cfg.class_label, f"'random', 'auto' or a class id in [0, {NUM_CLASSES - 1}]")
    if value == "auto" and cfg.mode != "text":
        raise ConfigError("class_label", value, "'random' or a class id in image mode: 'auto' picks the class from "
                          "the target text")
    object.__setattr__(cfg, "class_label", value)


def _check_unread(cfg: TranslationConfig) -> None:
    """Refuse a setting the chosen method does not read when it differs from its field default."""
    other = "agg" if cfg.method == "diffuseit" else "diffuseit"
    defaults = {f.name: f.default for f in fields(cfg)}
    for name in unread_by(cfg.method):
        if getattr(cfg, name) != defaults[name]:
            raise ConfigError(name, getattr(cfg, name), f"{defaults[name]!r} (its default) with method={cfg.method!r}: "
                              f"only method={other!r} reads it")


def _validate_translation(cfg: TranslationConfig) -> None:
    _check_unread(cfg)
    if cfg.skip >= cfg.steps:
        raise ConfigError("skip", cfg.skip, f"fewer than steps ({cfg.steps}); skip {cfg.steps - 1} leaves a single step")
    work = cfg.t_start + (1 if cfg.method == "agg" else cfg.resample_repeats)
    if work > MAX_GUIDED_EVALUATIONS:
        raise ConfigError("steps", cfg.steps, f"at most {MAX_GUIDED_EVALUATIONS} guided evaluations per sample (steps - skip - 1 + resample_repeats); asked for {work}")
    if cfg.size % 32 or cfg.max_long_side % 32:
        bad = "size" if cfg.size % 32 else "max_long_side"
        raise ConfigError(bad, getattr(cfg, bad), "a multiple of 32, and of 64 with generator='imagenet512' (the "
                          "UNet halves the image 5 times, 6 at 512)")
    seed_low, seed_high = RANGES["seed"]
    if cfg.seed + cfg.samples - 1 > seed_high:
        raise ConfigError("seed", cfg.seed, f"a value in {format_range(seed_low, seed_high - cfg.samples + 1)} with "
                          f"samples={cfg.samples}: sample k uses seed + k, which must stay in {format_range(seed_low, seed_high)}")
    if cfg.max_long_side < cfg.size:
        raise ConfigError("max_long_side", cfg.max_long_side, f"at least size ({cfg.size})")
    if cfg.mode == "text" and cfg.lambda_clip == 0 and (cfg.method == "agg" or cfg.lambda_ssim == cfg.lambda_contra == 0):
        raise ConfigError("lambda_clip", 0.0, "a positive weight in text mode (nothing would guide the translation)")


TEXT_PRESET = TranslationConfig()
IMAGE_PRESET = TranslationConfig(
    mode="image", steps=200, skip=80, divergence_until=100, regularize_content=False, colour_match=True,
    lambda_cls=2000.0, lambda_l2=3000.0, lambda_clip=0.0,
)
# Fast: half the steps and fewer resampling repeats — about 2.5x less work, with a weaker,
# less detailed change of appearance (the structure is kept as well).
TEXT_FAST_PRESET = dataclasses.replace(TEXT_PRESET, steps=50, skip=20, divergence_until=25, resample_repeats=4)
IMAGE_FAST_PRESET = dataclasses.replace(IMAGE_PRESET, steps=100, skip=40, divergence_until=50, resample_repeats=4)

PRESETS: dict[str, TranslationConfig] = {
    "text": TEXT_PRESET,
    "image": IMAGE_PRESET,
    "text-fast": TEXT_FAST_PRESET,
    "image-fast": IMAGE_FAST_PRESET,
}


# SPEC-AGG §8: the reference demos (run_demo.sh). Each changes only settings AGG reads (the rest keep their
# field defaults, which AGG does not read). Every mode: respacing "100", skip 40, t_edit 20, t_boost 40.
AGG_TEXT_PRESET = TranslationConfig(method="agg", lambda_clip=200.0, prog_contrast=True)
AGG_IMAGE_PRESET = TranslationConfig(method="agg", mode="image", regularize_content=False, lambda_cls=200.0,
                                     lambda_l2=200.0, lambda_clip=0.0)
AGG_FACES_PRESET = dataclasses.replace(AGG_TEXT_PRESET, eta_edit=0.0, eta=0.0)  # FFHQ UNet, λ_id 0

AGG_PRESETS: dict[str, TranslationConfig] = {
    "text": AGG_TEXT_PRESET,
    "image": AGG_IMAGE_PRESET,
    "faces": AGG_FACES_PRESET,
}


def _agg_base(mode: Mode, fast: bool, generator: GeneratorName) -> TranslationConfig:
    """SPEC-AGG §8: text / image, and the faces demo for the FFHQ generator in text mode."""
    if fast:
        raise ConfigError("fast", fast, "False with method='agg' (SPEC-AGG §8 defines no fast preset)")
    if generator == "ffhq" and mode == "text":
        return AGG_FACES_PRESET
    return AGG_PRESETS[mode]


def preset(mode: Mode, *, method: Method = "diffuseit", fast: bool = False, generator: GeneratorName = "imagenet",
           **overrides: object) -> TranslationConfig:
    """The preset of a method for a mode and generator, with ``overrides`` applied.

    DiffuseIT: SPEC §5, adapted to the generator (FFHQ: identity loss, restart 0.1). AGG: SPEC-AGG §8's
    text, image, or (FFHQ, text) faces preset; it has no fast variant. Every preset works at its
    generator's trained size (SPEC §6: 512 with its long side up to 896 for the ImageNet 512 model).
    """
    _check_choice("method", method, Method)
    _check_choice("mode", mode, Mode)
    _check_choice("generator", generator, GeneratorName)
    if method == "agg":
        base = _agg_base(mode, fast, generator)
    else:
        base = PRESETS[f"{mode}-fast" if fast else mode]
        if generator == "ffhq":
            base = dataclasses.replace(base, lambda_id=100.0, restart_threshold=0.1)
    size, long_side = GENERATOR_SIZES[generator]
    base = dataclasses.replace(base, size=size, max_long_side=long_side)
    unknown = set(overrides) - {f.name for f in fields(TranslationConfig)}
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(name, overrides[name], "a TranslationConfig field")
    return dataclasses.replace(base, **overrides)
