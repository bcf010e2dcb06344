"""The guidance loss of one step (SPEC §4): fixed features once, then one call per guided step.

``build_guide`` computes everything about the fixed images before the loop — the source's ViT
keys and self-similarity and [CLS], the style image's [CLS], the CLIP text directions and the
source's ArcFace embedding. ``Guide.__call__`` then costs one ViT pass (all ViT losses share it),
one batched CLIP call per model, and the cheap pixel terms. The per-sample state that changes from
step to step (previous [CLS], previous CLIP loss) is passed in and returned, never hidden, so the
sampler can drop or restart samples independently. A call takes and returns tensors only and
draws nothing: the CLIP views come in (``Guide.draw_views``, on the host), so a step can be
captured as a CUDA graph or compiled whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from . import losses
from .arcface import face_crop
from .config import TranslationConfig
from .diffusion import Schedule, extract

__all__ = ["FixedFeatures", "GuideState", "Guide", "build_guide", "stack_guides", "vit_features", "model_dtype"]


def _rows(value, idx: Tensor):
    """Rows ``idx`` of a tensor, of each tensor of a list, or None."""
    if value is None:
        return None
    return [v[idx] for v in value] if isinstance(value, list) else value[idx]


class FixedFeatures(NamedTuple):
    """Features of the images that never change during a call. Batch dimension 1, shared by every
    sample; or one row per sample when several images share the batch (``stack_guides``), the
    CLIP directions then (B,D) too. A tuple of tensors (and None), so a captured step can take
    them as inputs."""

    src: Tensor  # (1,3,H,W) in [-1,1]
    src_keys: Tensor
    src_self_sim: Tensor
    src_cls: Tensor
    trg: Tensor | None = None  # style image at the working size, [-1,1]
    trg_cls: Tensor | None = None
    clip_directions: list[Tensor] | None = None
    src_identity: Tensor | None = None

    def take(self, index: Sequence[int]) -> FixedFeatures:
        """The rows of the samples ``index``, as ``GuideState.take``; shared features stay as they are."""
        if self.src.shape[0] == 1:
            return self
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.src.device)
        return FixedFeatures(*(_rows(value, idx) for value in self))


class GuideState(NamedTuple):
    """Per-sample memory between guided steps; index it with ``take`` when samples leave."""

    prev_cls: Tensor  # (B,D) [CLS] of the previous guided step's input (source at first)
    prev_clip: Tensor  # (B,) previous CLIP loss, for the adaptive content weight

    def take(self, index: Sequence[int]) -> GuideState:
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.prev_cls.device)
        return GuideState(self.prev_cls[idx], self.prev_clip[idx])


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype a network's weights are stored in: inputs are cast to it, outputs back to fp32."""
    return next(module.parameters()).dtype


def vit_features(vit: torch.nn.Module, x: Tensor):
    """ViT features of images in [-1,1], in fp32 whatever dtype the ViT is stored in."""
    feats = vit((x * 0.5 + 0.5).to(model_dtype(vit)))
    return type(feats)(*(f.float() for f in feats))


def _identity(arcface: torch.nn.Module, x: Tensor) -> Tensor:
    return arcface(face_crop(x).to(model_dtype(arcface))).float()


@dataclass(frozen=True)
class Guide:
    """Callable guidance: ``guide(x_t, x0_pred, i, state, views) -> (loss (B,), terms, new_state)``."""

    config: TranslationConfig
    schedule: Schedule
    fixed: FixedFeatures
    vit: torch.nn.Module
    clip: torch.nn.Module | None = None
    arcface: torch.nn.Module | None = None

    def take(self, index: Sequence[int]) -> Guide:
        """This guide for the samples ``index`` only (the rows that stay when others leave to restart)."""
        fixed = self.fixed.take(index)
        return self if fixed is self.fixed else dataclasses.replace(self, fixed=fixed)

    def initial_state(self, batch: int) -> GuideState:
        cls = self.fixed.src_cls.expand(batch, -1).clone()
        return GuideState(cls, torch.zeros(batch, device=cls.device))

    def draw_views(self, generators: Sequence[torch.Generator], height: int, width: int) -> Tensor | None:
        """This step's CLIP views (B, n_cuts, 2, 3) on the device, drawn on the host from each sample's
        generator; None when no CLIP loss runs (and then nothing is drawn)."""
        if self.clip is None or self.fixed.clip_directions is None or self.config.weights["clip"] <= 0:
            return None
        views = self.clip.draw_views(self.config.n_cuts, generators, height, width)
        return views.to(self.fixed.src.device, non_blocking=True)

    def _weights(self, state: GuideState) -> dict[str, float | Tensor]:
        """SPEC §4 adaptive content weight from the previous step's CLIP loss, per sample."""
        cfg, weights = self.config, dict(self.config.weights)
        if cfg.mode == "text" and (cfg.regularize_content or cfg.prog_contrast):
            scale = torch.ones_like(state.prev_clip)
            if cfg.regularize_content:  # still far from the text: double
                scale = torch.where(state.prev_clip < -0.5, 2.0, scale)
            if cfg.prog_contrast:  # close to it: halve
                scale = torch.where(state.prev_clip > -0.5, 0.5, scale)
            weights["contra"] = cfg.lambda_contra * scale
        return weights

    def __call__(self, x_t: Tensor, x0_pred: Tensor, i: Tensor, state: GuideState,
                 views: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], GuideState]:
        cfg, fixed, w = self.config, self.fixed, self.config.weights
        # noise-augmented input: x_in = x̂0·s_t + x_t·(1 − s_t), s_t = sqrt(1 − ᾱ_t)
        s = extract(self.schedule.sqrt_one_minus_alphas_cumprod, i, x_t)
        x_in = x0_pred * s + x_t * (1 - s)
        vit_in = x_in if cfg.noise_aug else x0_pred
        terms: dict[str, Tensor] = {"range": losses.range_loss(x0_pred)}
        new_state = state
        if any(w[k] > 0 for k in ("ssim", "contra", "div", "cls")):
            feats = vit_features(self.vit, vit_in)  # the one ViT pass of this step
            terms["ssim"] = losses.structure_loss(feats.self_sim, fixed.src_self_sim)
            terms["contra"] = losses.contrastive_keys_loss(feats.keys, fixed.src_keys)
            active = (i > cfg.divergence_until).to(feats.cls.dtype)
            terms["div"] = losses.semantic_divergence_loss(feats.cls, state.prev_cls) * active
            if fixed.trg_cls is not None:
                terms["cls"] = losses.style_cls_loss(feats.cls, fixed.trg_cls)
            new_state = new_state._replace(prev_cls=feats.cls.detach())
        if fixed.trg is not None and w["l2"] > 0:
            terms["l2"] = losses.pixel_l2_loss(x_in, fixed.trg)
        if self.clip is not None and fixed.clip_directions is not None and w["clip"] > 0:
            if views is None:
                raise ValueError("the CLIP loss needs this step's views: pass guide.draw_views(...)")
            x01 = (x_in * 0.5 + 0.5).to(model_dtype(self.clip))
            embeds = [e.float() for e in self.clip.encode_views(x01, views)]
            terms["clip"] = losses.clip_direction_loss(embeds, fixed.clip_directions)
            new_state = new_state._replace(prev_clip=terms["clip"].detach())
        if self.arcface is not None and fixed.src_identity is not None and w["id"] > 0:
            terms["id"] = losses.identity_loss(_identity(self.arcface, x_in), fixed.src_identity)
        loss = losses.weighted_sum(terms, self._weights(state))
        return loss, terms, new_state


@torch.no_grad()
def build_guide(
    config: TranslationConfig,
    schedule: Schedule,
    src: Tensor,
    *,
    vit: torch.nn.Module,
    clip: torch.nn.Module | None = None,
    arcface: torch.nn.Module | None = None,
    style: Tensor | None = None,
    text: str | None = None,
    source_text: str | None = None,
) -> Guide:
    """Compute the fixed features once (SPEC §3 fix: the reference redid this every step)."""
    schedule = schedule.to(src.device)  # read inside every step: keep it where the step runs
    src_feats = vit_features(vit, src)
    trg_cls = vit_features(vit, style).cls if style is not None else None
    directions = None
    if config.mode == "text" and clip is not None and config.lambda_clip > 0:
        src01 = (src * 0.5 + 0.5).to(model_dtype(clip))
        directions = [d.float() for d in clip.text_directions(text or "", source_text or "", src01)]
    identity = _identity(arcface, src) if arcface is not None and config.lambda_id > 0 else None
    fixed = FixedFeatures(
        src=src, src_keys=src_feats.keys, src_self_sim=src_feats.self_sim, src_cls=src_feats.cls,
        trg=style, trg_cls=trg_cls, clip_directions=directions, src_identity=identity,
    )
    return Guide(config, schedule, fixed, vit, clip=clip if directions is not None else None,
                 arcface=arcface if identity is not None else None)


def stack_guides(guides: Sequence[Guide], samples: int) -> Guide:
    """One guide for several images of one working size translated in one batch, ``samples`` each.

    Each image's fixed features are repeated for its samples, image after image: rows
    j·samples … (j+1)·samples − 1 are image j's. Every loss is per sample, so each row gets what
    it would get in a call of its own. One image gives its own guide (features shared by its rows).
    """
    if not guides:
        raise ValueError("stack_guides needs at least one guide")
    first = guides[0]
    if len(guides) == 1:
        return first
    for g in guides[1:]:
        if g.config != first.config or any(a is not b for a, b in zip((g.vit, g.clip, g.arcface),
                                                                      (first.vit, first.clip, first.arcface))):
            raise ValueError("guides stacked into one batch need the same settings and networks")
        if g.fixed.src.shape != first.fixed.src.shape:
            raise ValueError(f"images in one batch need one working size: {tuple(g.fixed.src.shape)[2:]} is not "
                             f"{tuple(first.fixed.src.shape)[2:]}")

    def stacked(values: list):
        if values[0] is None:
            return None
        if isinstance(values[0], list):  # CLIP directions, (D,) per model: (images·samples, D)
            return [torch.stack([v[m] for v in values]).repeat_interleave(samples, 0) for m in range(len(values[0]))]
        return torch.cat(values).repeat_interleave(samples, 0)

    fixed = FixedFeatures(*(stacked([g.fixed[k] for g in guides]) for k in range(len(first.fixed))))
    return dataclasses.replace(first, fixed=fixed)
