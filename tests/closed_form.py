"""Closed-form stand-ins for the networks (shared by the SPEC wiring tests).

Not the tiny real networks of STYLE §9, on purpose: each output is a known function of the input,
so a test can compute what the sampler or the guide must do by hand. Each records what it is fed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsct.vit import ViTFeatures

LAMBDAS = ("ssim", "contra", "div", "cls", "l2", "clip", "range", "id")


def zero_weights() -> dict[str, float]:
    """Every loss weight set to 0: a test turns on only the terms it checks."""
    return {f"lambda_{k}": 0.0 for k in LAMBDAS}


class LinearEps(nn.Module):
    """A "UNet" with the real call signature (x_t, t_model) and 6 output channels: ε = a·x_t, v = v."""

    num_classes = None  # what the pipeline reads of a UNet: no classes

    def __init__(self, a: float = 0.5, v: float = 0.2):
        super().__init__()
        self.a, self.v = a, v
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives model_dtype a dtype
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return torch.cat([self.a * x, torch.full_like(x, self.v)], dim=1)


class ClassEps(LinearEps):
    """LinearEps with ImageNet's classes: records each pass's class ids (None on the meta device, which
    holds no values) and refuses ids made on another device than the input, as a GPU would."""

    num_classes = 1000

    def __init__(self):
        super().__init__()
        self.ys: list[list[int] | None] = []

    def forward(self, x, t, y):
        assert y.device == x.device, f"class ids on {y.device}, input on {x.device}"
        self.ys.append(None if y.is_meta else y.tolist())
        return super().forward(x, t)


class SpyViT(nn.Module):
    """Tokens = 16×16 average pools of the [0,1] input; [CLS] = per-channel mean of the input."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.seen: list[torch.Tensor] = []

    def forward(self, x01):
        self.seen.append(x01.detach().clone())
        keys = F.avg_pool2d(x01, 16).flatten(2).transpose(1, 2) + 0.1  # (B, N, 3)
        unit = F.normalize(keys, dim=-1)
        return ViTFeatures(keys=keys, self_sim=unit @ unit.transpose(1, 2), cls=x01.mean((2, 3)))


class SpyClip(nn.Module):
    """One "CLIP model": view embedding = per-channel mean of the [0,1] input, direction fixed."""

    direction = torch.tensor([0.6, 0.0, 0.8])

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.seen: list[torch.Tensor] = []

    def text_directions(self, target_text, source_text, src_x01, image=None):
        return [self.direction]

    @staticmethod
    def draw_views(n_cuts, generators, height, width):
        return torch.zeros(len(generators), n_cuts, 2, 3)

    def encode_views(self, x01, views):
        self.seen.append(x01.detach().clone())
        return [x01.mean((2, 3))]

    def center_embeddings(self, x01):
        """The source's own embedding (AGG's ℓ_0): the same per-channel mean, no views."""
        return [x01.mean((2, 3))]


class SpyArcFace(nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return F.normalize(x.mean((2, 3)), dim=-1)


class FakeClock:
    """A stand-in for time.monotonic: 0 at the start; as a forward hook, each call of the module it
    hooks costs the next entry of ``costs`` (then 1 s each)."""

    def __init__(self, costs=()):
        self.now, self.costs, self.calls = 0.0, list(costs), 0

    def __call__(self) -> float:
        return self.now

    def advance(self, *_):
        self.now += self.costs[self.calls] if self.calls < len(self.costs) else 1.0
        self.calls += 1
