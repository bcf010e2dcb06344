"""ArcFace IR-SE50 face-identity embedder (SPEC §1 "identity", §4 identity row).

The layout is TreB1eN's InsightFace_Pytorch `Backbone(input_size=112, num_layers=50, mode="ir_se")`,
the network of the `model_ir_se50.pth` checkpoint used by e4e/StyleFeatureEditor and by the
reference's `IDLoss`: state-dict keys and shapes match it exactly, so it loads with `strict=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["ARCFACE_CONFIGS", "INPUT_SIZE", "FACE_BOX", "Backbone", "IRSE50", "build_arcface", "face_crop"]

INPUT_SIZE = 112  # the 112×112 variant: four stride-2 stages leave 7×7
# SPEC §4 identity crop of a 256² image (reference IDLoss: x[:, :, 35:223, 32:220]) as (top, bottom, left, right)
FACE_BOX = (35, 223, 32, 220)
_FACE_BOX_BASE = 256


class SEModule(nn.Module):
    """Squeeze-and-excitation gate: channels scaled by sigmoid(fc2(relu(fc1(mean)))) ."""

    def __init__(self, channels: int, reduction: int = 16, *, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False, **dd)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False, **dd)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class BottleneckIRSE(nn.Module):
    """Pre-activation residual unit (BN → conv → PReLU → strided conv → BN → SE) + shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int, *, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if in_channels == channels:
            self.shortcut_layer = nn.MaxPool2d(1, stride)  # parameter-free subsampling
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False, **dd),
                nn.BatchNorm2d(channels, **dd),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels, **dd),
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False, **dd),
            nn.PReLU(channels, **dd),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False, **dd),
            nn.BatchNorm2d(channels, **dd),
            SEModule(channels, **dd),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class Backbone(nn.Module):
    """ArcFace IR-SE network: x (B,3,112,112) in [-1,1] → (B, embed_dim) L2-normalised embedding.

    Args:
        units: residual units per stage (IR-SE50: 3, 4, 14, 3); the first unit of each stage has stride 2.
        widths: channels per stage (IR-SE50: 64, 128, 256, 512); the stem has widths[0].
        drop_ratio: dropout before the embedding (the reference builds 0.6; inactive in eval).
    """

    def __init__(
        self,
        *,
        units: tuple[int, ...] = (3, 4, 14, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        embed_dim: int = 512,
        drop_ratio: float = 0.6,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False, **dd),
            nn.BatchNorm2d(widths[0], **dd),
            nn.PReLU(widths[0], **dd),
        )
        blocks, in_ch = [], widths[0]
        for n, ch in zip(units, widths):
            for k in range(n):
                blocks.append(BottleneckIRSE(in_ch, ch, 2 if k == 0 else 1, **dd))
                in_ch = ch
        self.body = nn.Sequential(*blocks)
        side = INPUT_SIZE // 2 ** len(units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch, **dd),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(in_ch * side * side, embed_dim, **dd),
            nn.BatchNorm1d(embed_dim, **dd),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_layer(x)
        x = self.body(x)
        x = self.output_layer(x)
        return F.normalize(x, dim=-1)


IRSE50 = Backbone  # the contract's name for the same class


def face_crop(x: Tensor) -> Tensor:
    """SPEC §4 identity crop: rows 35–223, columns 32–220 of a 256² image, average-pooled to 112².

    Other sizes use the same box scaled to H and W (rounded to pixels). Works for [-1,1] or [0,1].

    Args:
        x: images (B,3,H,W).
    """
    h, w = x.shape[-2:]
    top, bottom, left, right = FACE_BOX
    rows = slice(round(top * h / _FACE_BOX_BASE), round(bottom * h / _FACE_BOX_BASE))
    cols = slice(round(left * w / _FACE_BOX_BASE), round(right * w / _FACE_BOX_BASE))
    return F.adaptive_avg_pool2d(x[..., rows, cols], INPUT_SIZE)


ARCFACE_CONFIGS: dict[str, dict] = {
    "ir_se50": dict(units=(3, 4, 14, 3), widths=(64, 128, 256, 512)),
    "tiny": dict(units=(1, 1, 1, 1), widths=(16, 32, 48, 64)),
}


def build_arcface(name: str = "ir_se50", *, device=None, dtype=None) -> Backbone:
    """Random-init ArcFace in eval mode (weights come from hub.py); "tiny" is the same class, narrow."""
    if name not in ARCFACE_CONFIGS:
        raise ConfigError("arcface", name, f"one of {', '.join(ARCFACE_CONFIGS)}")
    return Backbone(**ARCFACE_CONFIGS[name], device=device, dtype=dtype).eval()
