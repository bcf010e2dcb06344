"""The metrics of ``python -m dsct eval`` as pure functions over features (README "Evaluate").

Inputs are feature tensors already computed (``evaluate.py`` runs the networks); nothing here loads
a model or a file, so every formula can be checked in closed form. Feature statistics are taken in
float64: SFID and FID subtract numbers of order 1 summed over 2048 dimensions.

SFID and CSFID are FlexIT's (Couairon et al., CVPR 2022): squared distances between *means* of
Inception pool features, no covariance term. CSFID averages one distance per requested target class,
unweighted, so a class with many outputs counts as much as one with few; its value has a sampling
floor of about mean_c tr(Σ_c)/n_c (``sampling_floor``) and is only comparable at equal counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DSCTError
from .losses import structure_loss

__all__ = [
    "CLIPSCORE_WEIGHT", "RefStats", "ClassDistances", "squared_distance", "sfid", "class_means", "csfid",
    "sampling_floor", "mean_and_covariance", "frechet_distance", "art_fid", "clip_score",
    "directional_similarity", "structure_distance", "cls_cosine", "add_to_sums", "stats_from_sums", "reference_stats",
]

CLIPSCORE_WEIGHT = 2.5  # Hessel et al. 2021: CLIPScore = w · max(cos, 0), w = 2.5


class RefStats(NamedTuple):
    """Reference statistics of Inception features: the global mean, each class's mean, and the image
    counts where known (FlexIT's published file has none)."""

    mean: Tensor  # (D,) float64
    class_means: dict[str, Tensor]  # class label -> (D,) float64
    counts: dict[str, int] | None  # class label -> reference images of that class


class ClassDistances(NamedTuple):
    """CSFID and what it was made of: each requested class's distance and its output count."""

    value: float | None  # None where no class has an output
    per_class: dict[str, float]
    counts: dict[str, int]


def squared_distance(a: Tensor, b: Tensor) -> float:
    """‖a − b‖², in float64."""
    return float(((a.double() - b.double()) ** 2).sum())


def _check_width(features: Tensor, ref: Tensor) -> None:
    """Output features and reference statistics of different widths come from different networks or layers."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise DSCTError(f"SFID needs at least one output feature row, got shape {tuple(features.shape)}")
    if features.shape[1] != ref.shape[-1]:
        raise DSCTError(f"the reference statistics have {ref.shape[-1]} features per image, the outputs {features.shape[1]}: "
                        "build them with the same Inception layer (pool3, 2048)")


def sfid(features: Tensor, ref_mean: Tensor) -> float:
    """FlexIT's SFID: ‖mean of all output features − the reference mean‖² (means only, no covariance).

    Args:
        features: (N, D) one row per output.
    """
    _check_width(features, ref_mean)
    return squared_distance(features.double().mean(0), ref_mean)


def class_means(features: Tensor, labels: Sequence[str]) -> dict[str, Tensor]:
    """Each label's mean feature row (float64), labels in first-seen order."""
    if features.shape[0] != len(labels):
        raise ValueError(f"{features.shape[0]} feature rows but {len(labels)} labels")
    groups: dict[str, list[int]] = {}
    for k, label in enumerate(labels):
        groups.setdefault(label, []).append(k)
    return {label: features[rows].double().mean(0) for label, rows in groups.items()}


def csfid(features: Tensor, labels: Sequence[str], ref_class_means: Mapping[str, Tensor]) -> ClassDistances:
    """FlexIT's CSFID: for each target class among ``labels``, ‖mean of its outputs − its reference
    mean‖², then the plain mean over those classes. Reference classes with no output are ignored; an
    output class the reference lacks is an error (its distance would be a guess)."""
    means = class_means(features, labels)
    if unknown := [c for c in means if c not in ref_class_means]:
        raise DSCTError(f"the reference statistics have no class {', '.join(map(repr, unknown[:3]))}"
                        f"{' …' if len(unknown) > 3 else ''}: the classes file and the statistics must use the same labels")
    for c in means:
        _check_width(features, ref_class_means[c])
    per_class = {c: squared_distance(m, ref_class_means[c]) for c, m in means.items()}
    counts = {c: list(labels).count(c) for c in means}
    value = sum(per_class.values()) / len(per_class) if per_class else None
    return ClassDistances(value, per_class, counts)


def sampling_floor(features: Tensor, labels: Sequence[str]) -> float | None:
    """mean_c tr(Σ_c)/n_c over classes with at least two outputs: what CSFID would be for outputs drawn
    from the reference classes themselves (E‖x̄_c − μ_c‖² = tr(Σ_c)/n_c), estimated from the outputs'
    own spread (unbiased covariance). None when no class has two outputs."""
    terms = []
    for label in dict.fromkeys(labels):
        rows = features[[k for k, l in enumerate(labels) if l == label]].double()
        n = rows.shape[0]
        if n >= 2:
            terms.append(float(rows.var(0, correction=1).sum()) / n)
    return sum(terms) / len(terms) if terms else None


def mean_and_covariance(features: Tensor) -> tuple[Tensor, Tensor]:
    """(D,) mean and (D, D) unbiased covariance in float64, as FID uses them (numpy's ``cov(rowvar=False)``)."""
    x = features.double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise DSCTError(f"FID needs at least two images per set, got {x.shape[0] if x.ndim == 2 else 0}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(c: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding set to 0)."""
    values, vectors = torch.linalg.eigh((c + c.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """FID: ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½.

    The symmetric form keeps every matrix symmetric PSD, so the square roots come from ``eigh`` and
    the result needs no imaginary part dropped (pytorch-fid's ``sqrtm(Σ1 Σ2)`` has the same trace).
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * cross)


def art_fid(lpips: float, fid: float) -> float:
    """ArtFID (Wright & Ommer 2022) = (1 + LPIPS content distance)(1 + FID to the style images)."""
    return (1.0 + lpips) * (1.0 + fid)


def clip_score(image_embeds: Tensor, text_embeds: Tensor, weight: float = CLIPSCORE_WEIGHT) -> Tensor:
    """CLIPScore per row: w · max(cos(image, text), 0) (Hessel et al. 2021). Both (N, D)."""
    return weight * F.cosine_similarity(image_embeds.double(), text_embeds.double(), dim=-1).clamp_min(0)


def directional_similarity(src_image: Tensor, out_image: Tensor, src_text: Tensor, trg_text: Tensor) -> Tensor:
    """CLIP directional similarity per row: cos(E(out) − E(src), E(target text) − E(source text)).

    1 when the image moved exactly the way the texts differ; unit embeddings (N, D) expected.
    """
    return F.cosine_similarity((out_image - src_image).double(), (trg_text - src_text).double(), dim=-1)


def structure_distance(self_sim: Tensor, self_sim_src: Tensor) -> Tensor:
    """Splice's structure distance per row: mean_ij (S_ij − S_src,ij)² of DINO key self-similarities (B, N, N).

    The same formula as the structure loss that guides the translation, so eval and guidance agree.
    """
    if self_sim.shape[-2:] != self_sim_src.shape[-2:]:
        raise DSCTError(f"structure distance needs the same token grid, got {tuple(self_sim.shape[-2:])} "
                        f"and {tuple(self_sim_src.shape[-2:])}: output and source differ in size")
    return structure_loss(self_sim.double(), self_sim_src.double())


def cls_cosine(cls: Tensor, cls_style: Tensor) -> Tensor:
    """cos(DINO [CLS] of the output, [CLS] of the style image) per row, (N, D)."""
    return F.cosine_similarity(cls.double(), cls_style.double(), dim=-1)


def add_to_sums(sums: dict[str, Tensor], counts: dict[str, int], features: Tensor, labels: Sequence[str]) -> None:
    """Add a batch of reference features to per-class float64 sums and counts (a reference set as large as
    ImageNet's training set never has to sit in memory at once)."""
    for row, label in zip(features.double(), labels):
        sums[label] = sums[label] + row if label in sums else row.clone()
        counts[label] = counts.get(label, 0) + 1


def stats_from_sums(sums: Mapping[str, Tensor], counts: Mapping[str, int]) -> RefStats:
    """Global mean over every reference image (so each class weighs by its image count), each class's mean."""
    if not counts:
        raise DSCTError("no reference images: nothing to build statistics from")
    total = sum(sums.values())
    return RefStats(total / sum(counts.values()), {c: sums[c] / counts[c] for c in sums}, dict(counts))


def reference_stats(features: Tensor, labels: Sequence[str]) -> RefStats:
    """Global mean over every reference image, each class's mean, and the counts."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    add_to_sums(sums, counts, features, labels)
    return stats_from_sums(sums, counts)
