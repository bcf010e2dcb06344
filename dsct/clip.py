"""CLIP ensemble for text guidance (SPEC §1 "text guidance", §4 CLIP row): templates, target
directions and batched differentiable random views.

The reference (DiffuseIT `src/vqc_core.py`) runs OpenAI's `clip` package: per model a torchvision
`RandomRotation(10) → RandomResizedCrop(size, scale=(0.8, 1), ratio=(0.9, 1.1)) →
RandomHorizontalFlip → Normalize` pipeline, one view at a time, batch size 1. Here each view is one
affine map (rotation, crop and flip composed) rendered with `F.affine_grid`/`F.grid_sample`
straight to each model's input size, all views of all samples go through one `encode_image` call per
model, and each sample draws its view parameters from its own CPU generator, so a batch with
generators (a, b) equals two single runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import Bottleneck, ModifiedResNet
from open_clip.transformer import CustomResidualAttentionBlock, LayerScale, ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from .errors import ConfigError

__all__ = [
    "OPENAI_MODELS",
    "PRETRAINED_TAG",
    "IMAGENET_TEMPLATES",
    "TINY_CONFIGS",
    "ClipEnsemble",
    "build_clip_models",
    "fold_batchnorm",
    "use_plain_attention",
]

# SPEC §1: the reference ensemble. The `-quickgelu` names build OpenAI's QuickGELU activation; the
# plain open_clip names build nn.GELU, which does not match OpenAI's weights (open_clip only warns).
OPENAI_MODELS = ("RN50-quickgelu", "RN50x4-quickgelu", "ViT-B-32-quickgelu", "RN50x16-quickgelu", "ViT-B-16-quickgelu")
PRETRAINED_TAG = "openai"

# The CLIP paper's 80 ImageNet prompt templates less "a photo of many {}.", as in the reference
# (DiffuseIT's `src/template.py`, shared with the same authors' CLIPstyler `template.py`): 79 prompts.
# Order follows the CLIP notebook; only their mean is used, so order does not matter.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# SPEC §4: d_m = normalise(e_T − 0.4·e_S + 0.2·e_I0)
SOURCE_TEXT_WEIGHT = 0.4
SOURCE_IMAGE_WEIGHT = 0.2

# SPEC §4 random views (reference: RandomRotation(10), RandomResizedCrop(scale, ratio), flip p=0.5)
MAX_ROTATION_DEG = 10.0
CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (0.9, 1.1)
FLIP_PROB = 0.5
CROP_ATTEMPTS = 10  # torchvision's rejection-sampling budget

_TINY_TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)


class ViewParams(NamedTuple):
    """Parameters of N views; sizes and centres in the image's normalised [-1, 1] coordinates."""

    angle: Tensor  # (N,) degrees, positive = counter-clockwise on screen
    scale: Tensor  # (N, 2) crop width/W and height/H of the (rotated) image
    center: Tensor  # (N, 2) crop centre (x, y)
    flip: Tensor  # (N,) bool, horizontal flip


def _view_theta(params: ViewParams, aspect: float) -> Tensor:
    """Affine matrices (N, 2, 3) mapping view coordinates to image coordinates (for `affine_grid`).

    Output point → flip → position in the crop → undo the rotation about the image centre (done in
    pixel units, hence `aspect` = H/W) → normalised input coordinates.
    """
    a = torch.deg2rad(params.angle)
    cos, sin = torch.cos(a), torch.sin(a)
    # inverse rotation in pixel units (y down), conjugated by diag(W/2, H/2)
    rot = torch.stack([torch.stack([cos, -sin * aspect], -1), torch.stack([sin / aspect, cos], -1)], -2)  # (N, 2, 2)
    sign = 1.0 - 2.0 * params.flip.to(params.scale.dtype)
    crop = torch.diag_embed(params.scale * torch.stack([sign, torch.ones_like(sign)], -1))  # (N, 2, 2)
    linear = rot @ crop
    shift = rot @ params.center.unsqueeze(-1)  # (N, 2, 1)
    return torch.cat([linear, shift], -1)


def _sample_view_params(generator: torch.Generator, n: int, height: int, width: int) -> ViewParams:
    """Draw n random views (SPEC §4) for one H×W image from one CPU generator, a fixed number of draws.

    Crop sizes are continuous (torchvision rounds to pixels). When all CROP_ATTEMPTS fail, the view
    uses torchvision's fallback: the largest centred crop with the image's aspect ratio clamped to
    CROP_RATIO (the whole image when that ratio is inside it).
    """
    aspect = height / width
    angle = (torch.rand(n, generator=generator) * 2 - 1) * MAX_ROTATION_DEG
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * torch.rand(n, CROP_ATTEMPTS, generator=generator)
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, CROP_ATTEMPTS, generator=generator))
    sx, sy = torch.sqrt(area * ratio * aspect), torch.sqrt(area / (ratio * aspect))  # w/W, h/H
    ok = (sx <= 1) & (sy <= 1)
    first = torch.argmax(ok.int(), dim=1, keepdim=True)  # first valid attempt (0 if none)
    found = ok.any(dim=1)
    scale = torch.stack([sx.gather(1, first)[:, 0], sy.gather(1, first)[:, 0]], -1)
    fallback_ratio = min(max(1 / aspect, CROP_RATIO[0]), CROP_RATIO[1])  # clamped W/H
    fallback = torch.tensor([min(1.0, fallback_ratio * aspect), min(1.0, 1 / (fallback_ratio * aspect))])
    scale = torch.where(found[:, None], scale, fallback)
    center = (1 - scale) * (torch.rand(n, 2, generator=generator) * 2 - 1) * found[:, None]
    flip = torch.rand(n, generator=generator) < FLIP_PROB
    return ViewParams(angle, scale, center, flip)


def _center_params(n: int, height: int, width: int) -> ViewParams:
    """The centred square of side min(H, W): 'resize short side + center crop' (reference test_prep)."""
    side = min(height, width)
    scale = torch.tensor([[side / width, side / height]]).expand(n, 2)
    return ViewParams(torch.zeros(n), scale, torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool))


def _render(x01: Tensor, theta: Tensor, size: tuple[int, int]) -> Tensor:
    """Sample views: x01 (B,3,H,W), theta (B,n,2,3) → (B·n,3,h,w), bilinear.

    Like the reference's tensor path (torchvision 0.10): no antialiasing, edges replicated within the
    last half pixel (as `F.interpolate`), and black (0) where the rotation leaves the image. The n
    grids of a sample are stacked along the height so the image is never copied n times.
    """
    b, n = theta.shape[:2]
    h, w = size
    grid = F.affine_grid(theta.reshape(b * n, 2, 3), [b * n, 3, h, w], align_corners=False)  # (B·n, h, w, 2)
    x01 = x01.to(torch.promote_types(x01.dtype, torch.float32))  # half-precision grids are off by ~0.1 px
    grid = grid.reshape(b, n * h, w, 2).to(x01.dtype)
    views = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B,3,n·h,w)
    inside = (grid.abs() <= 1).all(-1).unsqueeze(1).to(views.dtype)  # (B,1,n·h,w)
    views = views * inside
    return views.reshape(b, 3, n, h, w).transpose(1, 2).reshape(b * n, 3, h, w)


def _clip_normalize(x01: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """CLIP's per-channel normalisation of a [0,1] image; mean and std (3,) already on its device."""
    return (x01 - mean.to(x01.dtype).view(1, -1, 1, 1)) / std.to(x01.dtype).view(1, -1, 1, 1)


def _as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@functools.lru_cache(maxsize=1)
def _bpe() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.tokenizer.SimpleTokenizer()  # the OpenAI BPE vocabulary ships with open_clip


def prompt_tokens(text: str) -> int:
    """Tokens of the longest template filled with ``text``, start/end included (CLIP reads 77)."""
    return max(len(_bpe().encode(t.format(text))) for t in IMAGENET_TEMPLATES) + 2


class ClipEnsemble(nn.Module):
    """Several CLIP models, each with its tokenizer, input size and mean/std (SPEC §1, §4).

    Fixed features (`text_directions`) are computed once per call; the caller wraps them in
    `no_grad`. `encode_views` stays differentiable with respect to its input.
    """

    def __init__(self, models: Sequence[open_clip.CLIP], tokenizers: Sequence, names: Sequence[str]):
        super().__init__()
        if not (len(models) == len(tokenizers) == len(names)) or not models:
            raise ValueError("ClipEnsemble needs one tokenizer and one name per model, and at least one model")
        self.models = nn.ModuleList(models)
        self.tokenizers = list(tokenizers)
        self.names = tuple(names)
        cfgs = [open_clip.get_model_preprocess_cfg(m) for m in models]
        self.input_sizes = tuple(_as_pair(m.visual.image_size) for m in models)
        self.means = tuple(tuple(c.get("mean", OPENAI_DATASET_MEAN)) for c in cfgs)
        self.stds = tuple(tuple(c.get("std", OPENAI_DATASET_STD)) for c in cfgs)
        # on the device with the models (not saved): normalising uploads nothing, so a step can be captured
        for i, (model, mean, std) in enumerate(zip(models, self.means, self.stds)):
            device = next(model.parameters()).device
            self.register_buffer(f"mean_{i}", torch.tensor(mean, device=device), persistent=False)
            self.register_buffer(f"std_{i}", torch.tensor(std, device=device), persistent=False)

    @property
    def embed_dims(self) -> tuple[int, ...]:
        """Embedding width D_m of each model."""
        return tuple(m.visual.output_dim for m in self.models)

    def _encode(self, i: int, views01: Tensor) -> Tensor:
        """Normalised float32 image embeddings (N, D_m) of [0,1] views already at model i's size."""
        model = self.models[i]
        p = next(model.parameters())
        x = _clip_normalize(views01, getattr(self, f"mean_{i}"), getattr(self, f"std_{i}")).to(device=p.device, dtype=p.dtype)
        return F.normalize(model.encode_image(x).float(), dim=-1)

    def _text_embeddings(self, i: int, texts: Sequence[str]) -> Tensor:
        """(len(texts), D_m): per text the mean of the RAW template embeddings, then normalised (SPEC §4).

        All templates of all texts go through one `encode_text` call.
        """
        model = self.models[i]
        prompts = [t.format(text) for text in texts for t in IMAGENET_TEMPLATES]
        tokens = self.tokenizers[i](prompts).to(next(model.parameters()).device)
        emb = model.encode_text(tokens).float().reshape(len(texts), len(IMAGENET_TEMPLATES), -1)
        return F.normalize(emb.mean(1), dim=-1)

    def center_embeddings(self, x01: Tensor) -> list[Tensor]:
        """Per model (B, D_m): normalised embedding of the resized + center-cropped image."""
        b, _, h, w = x01.shape
        theta = _view_theta(_center_params(b, h, w), h / w).to(x01.device).view(b, 1, 2, 3)
        return [self._encode(i, _render(x01, theta, size)) for i, size in enumerate(self.input_sizes)]

    def text_directions(self, target_text: str, source_text: str, src_x01: Tensor,
                        image: list[Tensor] | None = None) -> list[Tensor]:
        """Per model the target direction d_m (D_m,) of SPEC §4.

        Args:
            src_x01: source image (1,3,H,W) in [0,1].
            image: its ``center_embeddings`` where the caller needs them too (AGG's ℓ_0): encoded once.
        """
        if src_x01.ndim != 4 or src_x01.shape[0] != 1:
            raise ValueError(f"src_x01 must have shape (1, 3, H, W), got {tuple(src_x01.shape)}")
        image = self.center_embeddings(src_x01) if image is None else image
        directions = []
        for i in range(len(self.models)):
            e_t, e_s = self._text_embeddings(i, [target_text, source_text])
            e_i0 = image[i][0].to(e_t.device)
            directions.append(F.normalize(e_t - SOURCE_TEXT_WEIGHT * e_s + SOURCE_IMAGE_WEIGHT * e_i0, dim=-1))
        return directions

    @staticmethod
    def draw_views(n_cuts: int, generators: Sequence[torch.Generator], height: int, width: int) -> Tensor:
        """(B, n_cuts, 2, 3) view matrices on the CPU for an H×W batch, sample b's from generators[b].

        Drawn on the host, outside the step, so the step itself draws nothing and can be captured;
        each call draws a fixed number of values from each generator.
        """
        if n_cuts < 1:
            raise ValueError(f"n_cuts must be >= 1, got {n_cuts}")
        return torch.stack([_view_theta(_sample_view_params(g, n_cuts, height, width), height / width) for g in generators])

    def encode_views(self, x01: Tensor, views: Tensor) -> list[Tensor]:
        """Per model (B, D_m): mean over the random views of the normalised image embeddings.

        One set of views per sample serves every model (the reference draws per model). Rotation,
        crop and flip are one bilinear resampling (the reference rotates with nearest neighbour,
        then resamples the crop).

        Args:
            x01: images (B,3,H,W) in [0,1]; gradients flow back to them.
            views: (B, n_cuts, 2, 3) from ``draw_views``, on x01's device.
        """
        b = x01.shape[0]
        if views.ndim != 4 or views.shape[0] != b or views.shape[2:] != (2, 3):
            raise ValueError(f"encode_views needs views of shape ({b}, n_cuts, 2, 3), got {tuple(views.shape)}")
        n_cuts = views.shape[1]
        out = []
        for i, size in enumerate(self.input_sizes):
            emb = self._encode(i, _render(x01, views, size))  # (B·n_cuts, D_m)
            out.append(emb.view(b, n_cuts, -1).mean(1))
        return out

    def plain_text_embeddings(self, texts: Sequence[str], template: str, chunk: int = 256) -> list[Tensor]:
        """Per model (len(texts), D_m): normalised embeddings of each text in one ``template``, ``chunk`` at a time."""
        out = []
        for model, tokenizer in zip(self.models, self.tokenizers):
            device = next(model.parameters()).device
            parts = [model.encode_text(tokenizer([template.format(t) for t in texts[k:k + chunk]]).to(device)).float()
                     for k in range(0, len(texts), chunk)]
            out.append(F.normalize(torch.cat(parts), dim=-1))
        return out

    def text_similarity(self, x01: Tensor, text: str) -> Tensor:
        """(B,): mean over models of cos(center-crop image embedding, template-averaged text embedding); for ranking."""
        image = self.center_embeddings(x01)
        sims = [image[i] @ self._text_embeddings(i, [text])[0].to(image[i].device) for i in range(len(self.models))]
        return torch.stack(sims).mean(0)


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    """conv → eval BN as one conv, per output channel: W' = W·γ/√(σ²+ε), b' = β + (b − μ)·γ/√(σ²+ε)."""
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = torch.zeros_like(scale) if conv.bias is None else conv.bias.double()
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = bn.bias.double() + (bias - bn.running_mean.double()) * scale
    dtype, trainable = conv.weight.dtype, conv.weight.requires_grad
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=trainable)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=trainable)
    setattr(parent, bn_name, nn.Identity())


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each BatchNorm of open_clip's ResNet towers (stem, bottlenecks, shortcuts) into the conv
    before it; returns how many were folded. A frozen eval model then runs one kernel per conv→BN.

    Call after the weights are loaded (the folded model has conv biases instead of the checkpoint's
    BN keys), in eval mode only: a folded model has no batch statistics to train with.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model: training BatchNorm uses batch statistics")
    pairs: list[tuple[nn.Module, str, str]] = []
    for module in model.modules():
        if isinstance(module, (ModifiedResNet, Bottleneck)):
            pairs += [(module, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
        if isinstance(module, Bottleneck) and module.downsample is not None:
            pairs.append((module.downsample, "0", "1"))  # shortcut: avgpool "-1", conv "0", BN "1"
    pairs = [(parent, c, b) for parent, c, b in pairs if isinstance(getattr(parent, b), nn.BatchNorm2d)]
    with torch.no_grad():
        for parent, conv_name, bn_name in pairs:
            _fold_pair(parent, conv_name, bn_name)
    return len(pairs)


def _plain_block(block: ResidualAttentionBlock) -> CustomResidualAttentionBlock:
    """The same block as open_clip's "custom" type (linear qkv + SDPA), holding the same tensors."""
    width = block.ln_1.normalized_shape[0]
    with torch.device("meta"):  # no init: every tensor comes from the old block
        plain = CustomResidualAttentionBlock(
            width, block.attn.num_heads, block.mlp.c_fc.out_features / width,
            ls_init_value=1.0 if isinstance(block.ls_1, LayerScale) else None,
            act_layer=type(block.mlp.gelu), norm_layer=functools.partial(type(block.ln_1), eps=block.ln_1.eps),
        )
    plain.load_state_dict(block.state_dict(), strict=True, assign=True)
    return plain.requires_grad_(block.ln_1.weight.requires_grad).train(block.training)


def use_plain_attention(model: nn.Module) -> int:
    """Swap the image tower's nn.MultiheadAttention blocks for open_clip's plain-linear + SDPA blocks;
    returns how many. Same keys and tensors, same maths, fewer kernels: with an input that needs grad,
    MultiheadAttention runs its projection as a batched GEMM over the positions.

    The text tower is left alone (its causal mask runs once per call, without grad); open_clip's
    grad checkpointing passes arguments the plain block does not take, so do not combine the two.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, VisionTransformer):
            blocks = module.transformer.resblocks
            for k, block in enumerate(blocks):
                if isinstance(block, ResidualAttentionBlock):
                    blocks[k] = _plain_block(block)
                    n += 1
    return n


# Tiny configs (open_clip's own CLIP class): one ModifiedResNet tower, one ViT tower; real vocabulary
# and context length so the real tokenizer works. Different widths and input sizes on purpose.
TINY_CONFIGS: dict[str, dict] = {
    "tiny-rn": dict(
        embed_dim=32,
        vision_cfg=dict(layers=(1, 1, 1, 1), width=8, head_width=16, image_size=64),
        text_cfg=_TINY_TEXT,
    ),
    "tiny-vit": dict(
        embed_dim=24,
        vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=16, image_size=48),
        text_cfg=_TINY_TEXT,
    ),
}


def _build_one(name: str) -> open_clip.CLIP:
    """Random-init CLIP model (QuickGELU) in the current default device context."""
    if name in TINY_CONFIGS:
        model = open_clip.CLIP(**TINY_CONFIGS[name], quick_gelu=True)
        size = model.visual.image_size
        open_clip.set_model_preprocess_cfg(model, dict(size=size, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD))
        return model
    device = torch.get_default_device()
    return open_clip.create_model(name, pretrained=None, device=device, force_quick_gelu=True)


def build_clip_models(
    names: Sequence[str] | str = OPENAI_MODELS,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ClipEnsemble:
    """Random-init ensemble in eval mode (weights come from hub.py). `names`: OPENAI_MODELS entries or "tiny"."""
    if isinstance(names, str):
        names = tuple(TINY_CONFIGS) if names == "tiny" else (names,)
    allowed = (*OPENAI_MODELS, *TINY_CONFIGS)
    for name in names:
        if name not in allowed:
            raise ConfigError("clip_models", name, f"one of {', '.join(allowed)} or 'tiny'")
    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        models = [_build_one(name) for name in names]
    if dtype is not None:
        models = [m.to(dtype=dtype) for m in models]
    tokenizers = [open_clip.get_tokenizer("RN50-quickgelu" if n in TINY_CONFIGS else n) for n in names]
    return ClipEnsemble(models, tokenizers, names).eval()
