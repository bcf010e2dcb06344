"""Guidance losses of SPEC §4 as pure per-sample functions; weights enter only in ``weighted_sum``.

Every loss returns shape (B,), one value per sample, so summing over the batch gives each sample
exactly the gradient it would get alone. Fixed features (source, target, previous step) may have
batch size 1 and broadcast against the batch. Callers pass fixed features without grad.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "structure_loss",
    "contrastive_keys_loss",
    "semantic_divergence_loss",
    "style_cls_loss",
    "pixel_l2_loss",
    "range_loss",
    "clip_direction_loss",
    "identity_loss",
    "inversion_l1_loss",
    "weighted_sum",
]

NCE_DIAGONAL_FILL = -10.0  # reference PatchLoss: the positive pair is masked out of the negatives with -10


def _mean_per_sample(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: (B, ...) -> (B,)."""
    return x.flatten(1).mean(1)


def structure_loss(self_sim: Tensor, self_sim_src: Tensor) -> Tensor:
    """mean_ij (S_ij − S_src,ij)² of the key self-similarity matrices (B,N,N) — SPEC §4 "structure"."""
    return _mean_per_sample((self_sim - self_sim_src) ** 2)


def contrastive_keys_loss(keys: Tensor, keys_src: Tensor, *, temperature: float = 0.07) -> Tensor:
    """mean_i CE([cos(k_i,k'_i), cos(k_i,k'_j) with j=i set to −10] / τ, class 0) — SPEC §4 "contrastive keys".

    Args:
        keys: (B, N, D) keys of x_in, all N tokens incl. [CLS] (the reference used all of them).
        keys_src: (B or 1, N, D) keys of x_src.
    """
    if keys.shape[-2:] != keys_src.shape[-2:]:
        raise ValueError(f"keys {tuple(keys.shape)} and source keys {tuple(keys_src.shape)} need the same tokens and width")
    sim = F.normalize(keys, dim=-1) @ F.normalize(keys_src, dim=-1).transpose(-1, -2)  # (B, N, N) cos(k_i, k'_j)
    positive = sim.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)  # (B, N, 1)
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    negatives = sim.masked_fill(eye, NCE_DIAGONAL_FILL)  # (B, N, N), out of place
    logits = torch.cat([positive, negatives], dim=-1) / temperature  # (B, N, 1+N), positive first
    return -logits.log_softmax(dim=-1)[..., 0].mean(dim=-1)


def semantic_divergence_loss(cls: Tensor, cls_prev: Tensor) -> Tensor:
    """−mean_d ([CLS] − [CLS]_prev)², (B,D) — SPEC §4 "semantic divergence" (pushes away from the previous step)."""
    return -_mean_per_sample((cls - cls_prev) ** 2)


def style_cls_loss(cls: Tensor, cls_trg: Tensor) -> Tensor:
    """mean_d ([CLS] − [CLS]_trg)², (B,D) — SPEC §4 "style [CLS]"."""
    return _mean_per_sample((cls - cls_trg) ** 2)


def pixel_l2_loss(x: Tensor, x_trg: Tensor) -> Tensor:
    """mean_chw (x − x_trg)², images in [-1,1] — SPEC §4 "pixel L2 to style"."""
    return _mean_per_sample((x - x_trg) ** 2)


def range_loss(x0: Tensor) -> Tensor:
    """mean_chw (x̂0 − clamp(x̂0, −1, 1))², x̂0 in [-1,1] nominally — SPEC §4 "range"."""
    return _mean_per_sample((x0 - x0.clamp(-1.0, 1.0)) ** 2)


def clip_direction_loss(image_embeds: Sequence[Tensor], directions: Sequence[Tensor]) -> Tensor:
    """−mean_m (pred_m · d_m), pred_m (B,D_m) = mean of normalised view embeddings, d_m (D_m,) or one
    per sample (B,D_m) when images with their own prompts share the batch — SPEC §4 "CLIP"."""
    if len(image_embeds) != len(directions) or not image_embeds:
        raise ValueError(f"need one direction per CLIP model, got {len(image_embeds)} embeddings and {len(directions)} directions")
    scores = [(pred * d.to(pred.dtype)).sum(-1) for pred, d in zip(image_embeds, directions)]  # each (B,)
    return -torch.stack(scores).mean(0)


def identity_loss(emb: Tensor, emb_src: Tensor) -> Tensor:
    """1 − cos(ArcFace(x_in), ArcFace(x_src)), embeddings (B,512) — SPEC §4 "identity"."""
    return 1.0 - F.cosine_similarity(emb, emb_src, dim=-1)


def inversion_l1_loss(x0: Tensor, x0_inversion: Tensor) -> Tensor:
    """mean_chw |x̂0 − G[i]|, images in [-1,1]: AGG's pull toward the source's inversion at the same step — SPEC-AGG §7.1 "L1 to inversion"."""
    return _mean_per_sample((x0 - x0_inversion).abs())


def weighted_sum(terms: Mapping[str, Tensor], weights: Mapping[str, float | Tensor]) -> Tensor:
    """Σ_name λ_name·term_name per sample (B,), the one place weights apply; zero weights are skipped.

    A float 0 drops its term entirely; a per-sample weight tensor (B,) zeroes its term exactly
    where it is 0, even if the term is inf or nan there. Weights without a term are ignored
    (the same weight table serves every mode); a term without a weight is an error.
    """
    if not terms:
        raise ValueError("weighted_sum needs at least one term")
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"no weight for loss terms {missing}")
    total = torch.zeros_like(next(iter(terms.values())))
    for name, term in terms.items():
        weight = weights[name]
        if isinstance(weight, Tensor):
            total = total + torch.where(weight != 0, weight * term, torch.zeros_like(term))
        elif weight != 0:
            total = total + weight * term
    return total
