"""DINO ViT features for the structure and style losses (SPEC §4 "ViT preprocessing", §1 ViT-B/8).

One pass of timm's ``VisionTransformer`` gives the last block's keys (read from its ``qkv``
projection), their token×token cosine self-similarity and the last block's [CLS] token, as the
reference DiffuseIT ``VitExtractor`` reads them from the DINO hub model, but batched.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["DINO_NAME", "VIT_CONFIGS", "ViTFeatures", "DinoFeatures", "build_vit", "resize_for_vit", "vit_input_size"]

DINO_NAME = "vit_base_patch8_224.dino"
SHORT_SIDE = 224  # SPEC §4: short side 224 ...
MAX_LONG_SIDE = 480  # ... long side at most 480 (reference: torchvision Resize(224, max_size=480))

# timm VisionTransformer kwargs; "tiny" matches the reference fixture's random-weight ViT.
VIT_CONFIGS: dict[str, dict] = {
    "dino_vitb8": dict(img_size=224, patch_size=8, embed_dim=768, depth=12, num_heads=12, num_classes=0, dynamic_img_size=True),
    "tiny": dict(img_size=224, patch_size=16, embed_dim=48, depth=12, num_heads=3, num_classes=0, dynamic_img_size=True),
}


class ViTFeatures(NamedTuple):
    """Last-block DINO features of one batch (SPEC §4)."""

    keys: Tensor  # (B, N, D) K of the last block's qkv, all tokens incl. [CLS], heads concatenated
    self_sim: Tensor  # (B, N, N) cosine similarity of those keys
    cls: Tensor  # (B, D) token 0 of the last block's output, before the final norm


def vit_input_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(H, W) the ViT sees: short side 224, long side ≤ 480, aspect kept, each floored to a patch multiple.

    The reference left sizes unrounded and its patch conv dropped the leftover pixels; flooring
    gives the same token grid while keeping the whole image in view.
    """
    short, long = min(height, width), max(height, width)
    new_short, new_long = SHORT_SIDE, SHORT_SIDE * long / short
    if new_long > MAX_LONG_SIDE:
        new_short, new_long = MAX_LONG_SIDE * new_short / new_long, MAX_LONG_SIDE
    new_short = max(patch_size, int(new_short) // patch_size * patch_size)
    new_long = max(patch_size, int(new_long) // patch_size * patch_size)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def resize_for_vit(x01: Tensor, patch_size: int) -> Tensor:
    """Resize a (B,3,H,W) batch to ``vit_input_size``; a no-op when it already has that size.

    Bilinear without antialiasing up to a 2× downscale, on purpose: the reference ran torchvision 0.10,
    whose tensor ``Resize`` did not antialias (newer torchvision does by default and gives different
    numbers). Beyond 2× (the 512 generator: 512 → 224) plain bilinear reads only 2 of every ≥ 2.3 pixels,
    so the rest would get no ViT gradient at all (SPEC §6): there it antialiases.
    """
    size = vit_input_size(x01.shape[-2], x01.shape[-1], patch_size)
    if tuple(x01.shape[-2:]) == size:
        return x01
    antialias = x01.shape[-2] > 2 * size[0] or x01.shape[-1] > 2 * size[1]
    return F.interpolate(x01, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def imagenet_normalize(x01: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of a [0,1] batch (DINO's training statistics); ``mean`` and
    ``std`` are (3,) tensors already on x01's device (``DinoFeatures`` keeps them as buffers)."""
    return (x01 - mean.to(x01.dtype).view(1, 3, 1, 1)) / std.to(x01.dtype).view(1, 3, 1, 1)


def cosine_self_similarity(tokens: Tensor) -> Tensor:
    """(B, N, D) -> (B, N, N) cosine similarity between all token pairs."""
    unit = F.normalize(tokens, dim=-1)
    return unit @ unit.transpose(-1, -2)


class DinoFeatures(nn.Module):
    """Preprocess and run a timm ViT once; return its last-block ``ViTFeatures``.

    Parameters keep whatever ``requires_grad`` the loader gave them; this wrapper sets nothing.
    The ImageNet statistics are buffers (not saved in state dicts) and the hook that reads the keys
    is registered once, so a call moves nothing from the host and adds no hooks: capturable.
    """

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit
        device = vit.patch_embed.proj.weight.device
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN, device=device), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD, device=device), persistent=False)
        self._qkv: Tensor | None = None
        vit.blocks[-1].attn.qkv.register_forward_hook(self._keep_qkv)

    def _keep_qkv(self, module: nn.Module, args, out: Tensor) -> None:
        self._qkv = out  # only the latest: a ViT call outside forward holds one tensor, not a growing list

    @property
    def patch_size(self) -> int:
        return self.vit.patch_embed.patch_size[0]

    def preprocess(self, x01: Tensor) -> Tensor:
        """SPEC §4 ViT preprocessing: resize (see ``resize_for_vit``), then ImageNet mean/std."""
        x01 = x01.to(self.vit.patch_embed.proj.weight.dtype)
        return imagenet_normalize(resize_for_vit(x01, self.patch_size), self.mean, self.std)

    def forward(self, x01: Tensor) -> ViTFeatures:
        """Features of a batch of images in [0,1], shape (B,3,H,W), any H, W and B; differentiable.

        Keys are read by the forward hook on the last block's ``qkv`` projection, so the model's own
        attention runs unchanged; the blocks run once and the final norm and head are skipped.
        """
        x = self.preprocess(x01)
        last_attn = self.vit.blocks[-1].attn
        self._qkv = None
        [(_, prefix)] = self.vit.forward_intermediates(
            x, indices=1, return_prefix_tokens=True, norm=False, stop_early=True,
            output_fmt="NLC", intermediates_only=True,
        )
        qkv, self._qkv = self._qkv, None  # popped: module state holds no graph between calls
        dim = last_attn.num_heads * last_attn.head_dim
        keys = qkv[..., dim:2 * dim].float()  # (B, N, 3·D) is [q | k | v], each with heads concatenated
        # Similarities in fp32 even under autocast: the structure loss compares values near 1.
        device_type = keys.device.type
        no_autocast = torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else nullcontext()
        with no_autocast:
            self_sim = cosine_self_similarity(keys)
        return ViTFeatures(keys=keys, self_sim=self_sim, cls=prefix[:, 0].float())


def build_vit(name: str = "dino_vitb8", *, device=None, dtype=None) -> VisionTransformer:
    """Random-init timm ViT: "dino_vitb8" (state_dict keys of timm's ``vit_base_patch8_224.dino``) or "tiny"."""
    if name not in VIT_CONFIGS:
        raise ConfigError("vit", name, f"one of {tuple(VIT_CONFIGS)}")
    if name == "dino_vitb8":
        # create_model also attaches DINO's pretrained_cfg (ImageNet mean/std); it downloads nothing.
        return timm.create_model(DINO_NAME, pretrained=False, device=device, dtype=dtype, **VIT_CONFIGS[name])
    return VisionTransformer(**VIT_CONFIGS[name], device=device, dtype=dtype)
