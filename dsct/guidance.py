"""The guidance loss of one step (SPEC §4): fixed features once, then one call per guided step.

``build_guide`` computes everything about the fixed images before the loop — the source's ViT
keys and self-similarity and [CLS], the style image's [CLS], the CLIP text directions and the
source's ArcFace embedding. ``Guide.__call__`` then costs one ViT pass (all ViT losses share it),
one batched CLIP call per model, and the cheap pixel terms. The per-sample state that changes from
step to step (previous [CLS], previous CLIP loss) is passed in and returned, never hidden, so the
sampler can drop or restart samples independently. A call takes and returns tensors only and
draws nothing: the CLIP views come in (``Guide.draw_views``, on the host), so a step can be
captured as a CUDA graph or compiled whole.

AGG (SPEC-AGG §7) shares the fixed features, the views and the CLIP term; it adds the source's DDIM
inversion to the fixed features, its own step loss (``Guide.agg_loss``, L_a) and the inner pass on x̂0
(``Guide.inner_pass``, L_b).
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

__all__ = ["FixedFeatures", "GuideState", "Guide", "build_guide", "stack_guides", "vit_features", "model_dtype",
           "INNER_DELTA0", "INNER_BETAS", "INNER_EPS", "INNER_WEIGHT_DECAY", "INNER_MIX_STRIDE"]

# SPEC-AGG §6.3: AdamW on an additive x̂0 bias (reference IE:263-330)
INNER_DELTA0 = 1e-8
INNER_BETAS = (0.9, 0.999)
INNER_EPS = 1e-8
INNER_WEIGHT_DECAY = 0.01
# SPEC-AGG §7.4 quirk (b), kept: the inner pass mixes with s_j at j = floor(i / 10), not s_i
INNER_MIX_STRIDE = 10


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
    # AGG (SPEC-AGG §4): the source's DDIM inversion and the CLIP loss ℓ_0 of the source itself
    inv_start: Tensor | None = None  # (1,3,H,W) x_{t_start}, where every sample starts
    inv_x0: Tensor | None = None  # (1,t_start+1,3,H,W) G[0 … t_start], x̂0 of each inversion step
    src_clip_loss: Tensor | None = None  # (1,) ℓ_0 = −mean_m(e_I0,m · d_m), no views
    # the 512 generator's class held for the whole run (class_label an id or "auto"); None: a new one per evaluation
    class_id: Tensor | None = None  # (1,) long

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
        """Before the first step: the source's [CLS]; the previous CLIP loss 0 (DiffuseIT) or ℓ_0 (AGG, text)."""
        cls = self.fixed.src_cls.expand(batch, -1).clone()
        clip = self.fixed.src_clip_loss
        prev_clip = torch.zeros(batch, device=cls.device) if clip is None else clip.expand(batch).clone()
        return GuideState(cls, prev_clip)

    def draw_views(self, generators: Sequence[torch.Generator], height: int, width: int) -> Tensor | None:
        """This step's CLIP views (B, n_cuts, 2, 3) on the device, drawn on the host from each sample's
        generator; None when no CLIP loss runs (and then nothing is drawn)."""
        if self.clip is None or self.fixed.clip_directions is None or self.config.weights["clip"] <= 0:
            return None
        views = self.clip.draw_views(self.config.n_cuts, generators, height, width)
        return views.to(self.fixed.src.device, non_blocking=True)

    def _frac(self, prev_clip: Tensor) -> Tensor | None:
        """The reference's ``frac`` per sample from the previous CLIP loss (text mode; None when neither flag
        is on): 2 while it is below −0.5 (regularize_content), 0.5 while above (prog_contrast), else 1."""
        cfg = self.config
        if cfg.mode != "text" or not (cfg.regularize_content or cfg.prog_contrast):
            return None
        frac = torch.ones_like(prev_clip)
        if cfg.regularize_content:
            frac = torch.where(prev_clip < -0.5, 2.0, frac)
        if cfg.prog_contrast:
            frac = torch.where(prev_clip > -0.5, 0.5, frac)
        return frac

    def _weights(self, state: GuideState) -> dict[str, float | Tensor]:
        """SPEC §4 adaptive content weight: λ_contra·frac (doubled while far from the text, halved when close)."""
        weights, frac = dict(self.config.weights), self._frac(state.prev_clip)
        if frac is not None:
            weights["contra"] = self.config.lambda_contra * frac
        return weights

    def _mix(self, x_t: Tensor, x0: Tensor, j: Tensor) -> Tensor:
        """Noise-augmented input s_j·x̂0 + (1 − s_j)·x_t, s_j = sqrt(1 − ᾱ_j) (SPEC §4, SPEC-AGG §7)."""
        s = extract(self.schedule.sqrt_one_minus_alphas_cumprod, j, x_t)
        return x0 * s + x_t * (1 - s)

    def _clip_loss(self, x_in: Tensor, views: Tensor | None) -> Tensor:
        """CLIP directional loss (B,) of images in [-1,1] over this step's views."""
        if views is None:
            raise ValueError("the CLIP loss needs this step's views: pass guide.draw_views(...)")
        x01 = (x_in * 0.5 + 0.5).to(model_dtype(self.clip))
        embeds = [e.float() for e in self.clip.encode_views(x01, views)]
        return losses.clip_direction_loss(embeds, self.fixed.clip_directions)

    def _uses_clip(self) -> bool:
        return self.clip is not None and self.fixed.clip_directions is not None and self.config.weights["clip"] > 0

    def __call__(self, x_t: Tensor, x0_pred: Tensor, i: Tensor, state: GuideState,
                 views: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], GuideState]:
        cfg, fixed, w = self.config, self.fixed, self.config.weights
        x_in = self._mix(x_t, x0_pred, i)
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
        if self._uses_clip():
            terms["clip"] = self._clip_loss(x_in, views)
            new_state = new_state._replace(prev_clip=terms["clip"].detach())
        if self.arcface is not None and fixed.src_identity is not None and w["id"] > 0:
            terms["id"] = losses.identity_loss(_identity(self.arcface, x_in), fixed.src_identity)
        loss = losses.weighted_sum(terms, self._weights(state))
        return loss, terms, new_state

    def _inversion_x0(self, i: Tensor) -> Tensor:
        """G[i] per sample (B,3,H,W): the inversion's x̂0 at the spaced step i."""
        g = self.fixed.inv_x0
        rows = torch.zeros_like(i) if g.shape[0] == 1 else torch.arange(len(i), device=i.device)
        return g[rows, i.to(g.device)]

    def agg_loss(self, x_t: Tensor, x0_pred: Tensor, i: Tensor, state: GuideState,
                 views: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], GuideState]:
        """AGG's step loss L_a (SPEC-AGG §7.1) on x̂0 = x̂0(x_t, i): (loss (B,), unweighted terms, new state).

        CLIP on mix_i(x_t, x̂0) weighted λ_clip/frac; [CLS] on the mix (noise_aug) or x̂0; pixel MSE, range
        and L1 to the inversion on x̂0. The state's CLIP loss becomes this step's (the inner pass overwrites it).
        """
        cfg, fixed, w = self.config, self.fixed, self.config.weights
        x_in = self._mix(x_t, x0_pred, i)
        vit_in = x_in if cfg.noise_aug else x0_pred
        # SPEC-AGG §7.1: G[t_start] came from the same x_t, so the term is 0 there; dropped so that a batched
        # pass differing from the inversion's by rounding puts no sign(rounding) into the gradient
        first = (i == cfg.t_start).to(x0_pred.dtype)
        terms = {"range": losses.range_loss(x0_pred),
                 "gt": losses.inversion_l1_loss(x0_pred, self._inversion_x0(i)) * (1 - first)}
        if fixed.trg_cls is not None and w["cls"] > 0:
            terms["cls"] = losses.style_cls_loss(vit_features(self.vit, vit_in).cls, fixed.trg_cls)
        if fixed.trg is not None and w["l2"] > 0:
            terms["l2"] = losses.pixel_l2_loss(x0_pred, fixed.trg)  # on x̂0, not mixed (SPEC-AGG §7.1)
        new_state = state
        if self._uses_clip():
            terms["clip"] = self._clip_loss(x_in, views)
            new_state = state._replace(prev_clip=terms["clip"].detach())
        if self.arcface is not None and fixed.src_identity is not None and w["id"] > 0:
            terms["id"] = losses.identity_loss(_identity(self.arcface, vit_in), fixed.src_identity)
        weights, frac = dict(w), self._frac(state.prev_clip)
        if frac is not None:
            weights["clip"] = cfg.lambda_clip / frac
        return losses.weighted_sum(terms, weights), terms, new_state

    def _inner_clip(self, x_t: Tensor, x_c: Tensor, i: Tensor, views: Tensor | None) -> Tensor:
        """L_b's CLIP term: the mix uses s_j, j = floor(i/10) (SPEC-AGG §7.4 quirk (b), kept on purpose)."""
        return self._clip_loss(self._mix(x_t, x_c, torch.div(i, INNER_MIX_STRIDE, rounding_mode="floor")), views)

    def _inner_loss(self, x_t: Tensor, x_c: Tensor, i: Tensor, views: Tensor | None) -> Tensor:
        """L_b (SPEC-AGG §7.2) on x_c = x̂0' + δ, per sample; weights without frac."""
        fixed, w = self.fixed, self.config.weights
        terms = {"range": losses.range_loss(x_c), "gt": losses.inversion_l1_loss(x_c, self._inversion_x0(i))}
        if self._uses_clip():
            terms["clip"] = self._inner_clip(x_t, x_c, i, views)
        if fixed.trg_cls is not None and w["cls"] > 0:
            terms["cls"] = losses.style_cls_loss(vit_features(self.vit, x_c).cls, fixed.trg_cls)
        if fixed.trg is not None and w["l2"] > 0:
            terms["l2"] = losses.pixel_l2_loss(x_c, fixed.trg)
        return losses.weighted_sum(terms, w)

    def inner_pass(self, x_t: Tensor, x0_shifted: Tensor, i: Tensor,
                   views: Sequence[Tensor | None]) -> tuple[Tensor, Tensor | None]:
        """AGG's inner optimisation (SPEC-AGG §6.3): x̂0'' and the CLIP loss at it (None without CLIP).

        AdamW on δ (δ_0 = 1e-8) for ``inner_iters`` iterations; x̂0'' is the last iteration's x̂0' + δ,
        taken before its update, so only inner_iters − 1 updates reach the image (none at the default 1).
        The last iteration therefore computes only its CLIP loss, which becomes ℓ (quirk (a), kept).
        ``views``: one set per iteration.
        """
        cfg = self.config
        x_t, x0_shifted = x_t.detach(), x0_shifted.detach()
        delta = torch.full_like(x0_shifted, INNER_DELTA0, requires_grad=True)
        opt = torch.optim.AdamW([delta], lr=cfg.inner_lr, betas=INNER_BETAS, eps=INNER_EPS,
                                weight_decay=INNER_WEIGHT_DECAY)
        for k in range(cfg.inner_iters - 1):
            loss = self._inner_loss(x_t, x0_shifted + delta, i, views[k])
            # every weight of L_b zero: no graph to differentiate, the gradient is zero (AdamW still decays δ)
            delta.grad = torch.autograd.grad(loss.sum(), delta)[0] if loss.requires_grad else torch.zeros_like(delta)
            opt.step()
        with torch.no_grad():
            x_c = x0_shifted + delta
            clip = self._inner_clip(x_t, x_c, i, views[-1]) if self._uses_clip() else None
        return x_c.detach(), clip


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
    inversion: tuple[Tensor, Tensor] | None = None,
    class_id: int | None = None,
) -> Guide:
    """Compute the fixed features once (SPEC §3 fix: the reference redid this every step).

    ``inversion``: AGG's Stage A for this source, (x_start, G) from ``sampler.ddim_invert``; required
    with method="agg" (SPEC-AGG §4: computed once per source, shared by all its samples). ``class_id``: the
    class a class-conditional generator holds for the whole run (SPEC §6); None draws one per evaluation.
    """
    if config.method == "agg" and inversion is None:
        raise ValueError("method='agg' needs the source's DDIM inversion: pass inversion=ddim_invert(...)")
    schedule = schedule.to(src.device)  # read inside every step: keep it where the step runs
    src_feats = vit_features(vit, src)
    trg_cls = vit_features(vit, style).cls if style is not None else None
    directions = src_clip_loss = None
    if config.mode == "text" and clip is not None and config.lambda_clip > 0:
        src01 = (src * 0.5 + 0.5).to(model_dtype(clip))
        if config.method == "agg":  # SPEC-AGG §7.4: ℓ_0, the source itself, no views; its embedding serves d_m too
            src_embeds = clip.center_embeddings(src01)
            directions = [d.float() for d in clip.text_directions(text or "", source_text or "", src01, src_embeds)]
            src_clip_loss = losses.clip_direction_loss([e.float() for e in src_embeds], directions)
        else:
            directions = [d.float() for d in clip.text_directions(text or "", source_text or "", src01)]
    identity = _identity(arcface, src) if arcface is not None and config.lambda_id > 0 else None
    inv_start, inv_x0 = inversion if inversion is not None else (None, None)
    fixed = FixedFeatures(
        src=src, src_keys=src_feats.keys, src_self_sim=src_feats.self_sim, src_cls=src_feats.cls,
        trg=style, trg_cls=trg_cls, clip_directions=directions, src_identity=identity,
        inv_start=inv_start, inv_x0=inv_x0, src_clip_loss=src_clip_loss,
        class_id=None if class_id is None else torch.tensor([class_id], device=src.device),
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
