"""Work per guided step, counted by hooks on the real (tiny) modules (benchmarks/counters.py).

One UNet pass with grad (1 forward + 1 backward), one ViT pass (+ its backward), one batched
encode per CLIP model of n_models × n_cuts images in text mode and none in image mode, fixed
features computed once before the loop, and no parameter ever gets a .grad. Speed is not tested.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.counters import attention_blocks, params_with_grad, watch_models
from dsct import translate
from dsct.guidance import build_guide
from dsct.images import fit_to, to_tensor
from dsct.pipeline import schedule_for
from dsct.sampler import sample_guided

from helpers import picture, small, tiny_models

STEPS = 3


def _run(mode: str, batch: int = 1, *, steps: int = STEPS, repeats: int = 1):
    """build_guide, then ``steps`` guided steps (+ repeats - 1); returns (fixed counts, loop counts, models)."""
    m = tiny_models()
    cfg = small(mode)
    x_src = to_tensor(fit_to(picture(seed=0), 64, 64))
    x_style = to_tensor(fit_to(picture(seed=9), 64, 64)) if mode == "image" else None
    sched = schedule_for(cfg.steps)
    with watch_models(m) as counter:
        guide = build_guide(cfg, sched, x_src, vit=m.vit, clip=m.clip, style=x_style, text="Black Leopard", source_text="Cat")
        fixed = counter.snapshot()
        counter.reset()
        sample_guided(m.unet, sched, guide, x_src, [torch.Generator().manual_seed(s) for s in range(batch)],
                      t_start=steps - 1, repeats=repeats, restart_threshold=None)
        return fixed, counter.snapshot(), m, cfg


@pytest.mark.parametrize("batch", [1, 2])
def test_text_step_is_one_unet_pass_one_vit_pass_and_batched_clip_views(batch):
    fixed, counts, m, cfg = _run("text", batch)
    assert counts["unet.forward"] == STEPS and counts["unet.backward"] == STEPS
    assert counts["unet.images"] == STEPS * batch
    assert counts["unet_attention.forward"] == STEPS * attention_blocks(m.unet)  # no attention recomputed
    assert counts["vit.forward"] == counts["vit_patch_embed.forward"] == STEPS
    assert counts["vit.backward"] == STEPS
    assert len(m.clip.names) == 2
    for name in m.clip.names:  # one encode_image per model and step, all views of all samples in it
        assert counts[f"clip:{name}.forward"] == STEPS
        assert counts[f"clip:{name}.images"] == STEPS * batch * cfg.n_cuts
        assert counts[f"clip:{name}.backward"] == STEPS
    # fixed features once, before the loop: source ViT features, one centre view per CLIP model, no UNet
    assert fixed["vit.forward"] == 1 and fixed["vit.backward"] == 0 and fixed["unet.forward"] == 0
    assert all(fixed[f"clip:{name}.images"] == 1 for name in m.clip.names)
    assert params_with_grad(m) == (0, 0)


def test_image_step_runs_no_clip_and_style_features_once():
    fixed, counts, m, _ = _run("image")
    assert counts["unet.forward"] == counts["unet.backward"] == STEPS
    assert counts["vit.forward"] == counts["vit.backward"] == STEPS
    assert not any(k.startswith("clip:") for k in counts)
    assert fixed["vit.forward"] == 2  # source and style image, once each
    assert params_with_grad(m) == (0, 0)


def test_resampling_repeats_count_as_guided_evaluations():
    _, counts, _, _ = _run("image", steps=2, repeats=3)
    assert counts["unet.forward"] == counts["unet.backward"] == counts["vit.forward"] == 2 + 3 - 1


def test_counters_see_recomputation_under_grad_checkpointing():
    """The hooks can tell: checkpointed UNet blocks run their attention twice, the UNet still once."""
    m = tiny_models()
    m.unet.set_grad_checkpointing(True)
    try:
        _, counts, _, _ = _run("image", steps=2)
    finally:
        m.unet.set_grad_checkpointing(False)
    assert counts["unet.forward"] == 2
    assert counts["unet_attention.forward"] == 2 * 2 * attention_blocks(m.unet)


def test_translate_counts_fixed_features_loop_and_scoring():
    m = tiny_models()
    cfg = small("text", range_restart=False)
    evaluations = cfg.t_start + cfg.resample_repeats
    with watch_models(m) as counter:
        translate(m, picture(), text="Black Leopard", source_text="Cat", config=cfg)
        counts = counter.snapshot()
    assert counts["unet.forward"] == counts["unet.backward"] == evaluations
    assert counts["vit.forward"] == 1 + evaluations + 1  # source once, one per evaluation, one for scoring
    for name in m.clip.names:  # centre view of the source, the views of each evaluation, scoring's centre view
        assert counts[f"clip:{name}.images"] == 1 + evaluations * cfg.n_cuts + 1
    assert params_with_grad(m) == (0, 0)
