"""Scores of finished samples and their ranking (best first).

content: the structure loss (key self-similarity MSE, SPEC §4) between output and source —
lower keeps more of the source's layout. target: CLIP similarity to the target text (text mode)
or cosine similarity of DINO [CLS] tokens to the style image (image mode) — higher is closer to
the target. Ranking sums each sample's rank under both scores (rank-sum is scale-free, so neither
score dominates by its units) and breaks ties by the target score.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses
from .guidance import FixedFeatures, model_dtype, vit_features

__all__ = ["Scores", "score_samples", "rank_order"]


class Scores(NamedTuple):
    content: Tensor  # (B,) lower is better
    target: Tensor  # (B,) higher is better


@torch.no_grad()
def score_samples(x: Tensor, fixed: FixedFeatures, *, vit: torch.nn.Module, clip: torch.nn.Module | None = None, text: str | None = None) -> Scores:
    """Scores of final images x (B,3,H,W) in [-1,1] against the call's fixed features."""
    feats = vit_features(vit, x)
    content = losses.structure_loss(feats.self_sim, fixed.src_self_sim)
    if fixed.trg_cls is not None:
        target = F.cosine_similarity(feats.cls, fixed.trg_cls.expand_as(feats.cls), dim=-1)
    elif clip is not None and text:
        x01 = (x * 0.5 + 0.5).to(model_dtype(clip))
        target = clip.text_similarity(x01, text).float()
    else:
        target = torch.zeros_like(content)
    return Scores(content, target)


def rank_order(scores: Scores) -> list[int]:
    """Sample indices best first: smallest rank(content ↑) + rank(target ↓), ties by target."""
    content, target = scores.content.tolist(), scores.target.tolist()
    n = len(content)
    by_content = {k: r for r, k in enumerate(sorted(range(n), key=lambda k: content[k]))}
    by_target = {k: r for r, k in enumerate(sorted(range(n), key=lambda k: -target[k]))}
    return sorted(range(n), key=lambda k: (by_content[k] + by_target[k], -target[k], k))
