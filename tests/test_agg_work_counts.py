"""AGG's work (SPEC-AGG §9), counted by hooks on the real tiny modules through ``benchmarks.bench_step.count_agg``.

Every expected number below is written out by hand from SPEC-AGG §4, §5, §6 and §9, never read from the library.

Small settings (seconds on a CPU): respacing "10", skip 3, t_edit 3, t_boost 5, 32×32.
  i_start = T' − S − 1 = 10 − 3 − 1 = 6, so Stage A is 6 + 1 = 7 UNet passes (§4), once per source.
  guided while i > T' − S − t_edit = 4: i = 6, 5 → 2 steps (§5);
  η while i > T' − S − t_boost = 2: i = 4, 3 → 2 steps; η_boost: i = 2, 1, 0 → 3 steps; 2 + 2 + 3 = 7.
  Per sample: 7 forwards (2 with grad) + 2 backwards; per source 7 forwards without grad.
The defaults (slow, deselected): 60 per source; per sample 60 forwards (19 with grad) + 19 backwards.
"""

from __future__ import annotations

import pytest

from benchmarks.bench_step import count_agg
from dsct.config import preset

from helpers import picture, tiny_models

SMALL_AGG = dict(size=32, max_long_side=32, steps=10, skip=3, t_edit=3, t_boost=5)
N_CUTS = 8  # SPEC §4 / SPEC-AGG §7.3: 8 views per CLIP loss


def _counts(mode: str, batch: int, **settings):
    m = tiny_models()
    cfg = preset(mode, method="agg", **settings)
    return count_agg(m, mode, batch, source=picture(seed=0), style=picture(seed=9), config=cfg), m


def _check(row: dict, m, mode: str, batch: int, *, inversion: int, guided: int, plain: int) -> None:
    # Stage A: once per source, batch 1, no grad (§4, §9 "ours")
    assert row["inversion_unet_forwards"] == inversion
    assert row["inversion_unet_images"] == inversion
    assert row["inversion_unet_forwards_grad"] == 0
    assert row["fixed_unet_forwards"] == 0
    # the loop: one batched UNet call per step; per sample guided + plain forwards, guided of them with grad
    assert (row["guided_steps"], row["plain_steps"]) == (guided, plain)
    assert row["loop_unet_forwards"] == guided + plain
    assert row["loop_unet_forwards_grad"] == guided
    assert row["loop_unet_backwards"] == guided  # one backward through the UNet per guided step (§6.1)
    assert row["per_sample_unet_forwards"] == guided + plain
    assert row["per_sample_unet_forwards_grad"] == guided
    # the guided block comes first (i_start down), then every plain step: two groups of steps
    groups = row["step_groups"]
    assert [(g["first_i"], g["last_i"], g["steps"]) for g in groups] == [
        (inversion - 1, inversion - guided, guided), (inversion - guided - 1, 0, plain)]
    guided_step, plain_step = groups[0]["per_step"], groups[1]["per_step"]
    assert (guided_step["unet.forward"], guided_step["unet.forward_grad"], guided_step["unet.backward"]) == (1, 1, 1)
    assert guided_step["unet.images"] == batch
    assert (plain_step["unet.forward"], plain_step["unet.images"]) == (1, batch)
    assert "unet.forward_grad" not in plain_step and "unet.backward" not in plain_step
    assert not any(k.startswith(("vit", "clip:")) for k in plain_step)  # plain DDIM: the UNet alone
    if mode == "image":
        # §9: ViT 1 pass with grad per guided step; none in the inner pass at inner_iters 1 (image: no L_b)
        assert (guided_step["vit.forward"], guided_step["vit.forward_grad"], guided_step["vit.backward"]) == (1, 1, 1)
        assert guided_step["vit.images"] == batch
        assert (row["loop_vit_forwards"], row["loop_vit_backwards"]) == (guided, guided)
        assert not any(k.startswith("clip:") for k in guided_step)
        # fixed: the style image's [CLS] (§9, per source) and the source's features for the content score (§2)
        assert row["fixed_vit_forwards"] == 2
    else:
        # §2: no ViT inside text steps; §9: per CLIP model 8 views with grad (L_a) + 8 without (inner ℓ)
        assert row["loop_vit_forwards"] == 0 and not any(k.startswith("vit") for k in guided_step)
        assert len(m.clip.names) == 2
        for name in m.clip.names:
            assert guided_step[f"clip:{name}.forward"] == 2
            assert guided_step[f"clip:{name}.forward_grad"] == 1
            assert guided_step[f"clip:{name}.images_grad"] == N_CUTS * batch
            assert guided_step[f"clip:{name}.images"] == 2 * N_CUTS * batch
            assert guided_step[f"clip:{name}.backward"] == 1
            assert row["loop_clip_per_model"][name] == dict(
                images_grad=guided * N_CUTS * batch, images_no_grad=guided * N_CUTS * batch, backward=guided)
            # per source: the centre view e_I0, encoded once for d_m (§7.3) and ℓ_0 (§7.4)
            assert row["fixed_clip_images_per_model"][name] == 1
        assert row["fixed_vit_forwards"] == 1  # the source's features, for the content score only
    # the whole translate: Stage A once + the batched loop, then ranking (one ViT pass per sample, §2)
    assert row["translate_unet_forwards"] == inversion + guided + plain
    assert row["translate_unet_images"] == inversion + batch * (guided + plain)
    assert row["translate_unet_backwards"] == guided
    assert row["pieces_not_in_translate"] == {}
    scoring = row["scoring"]
    assert (scoring["vit.forward"], scoring["vit.images"]) == (1, batch)
    assert not any(k.startswith("unet") for k in scoring)
    for name in m.clip.names if mode == "text" else ():
        assert scoring[f"clip:{name}.images"] == batch  # the target score: one centre view per sample
    assert row["params_with_grad"] == 0


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("mode", ["text", "image"])
def test_agg_work_small(mode, batch):
    row, m = _counts(mode, batch, **SMALL_AGG)
    _check(row, m, mode, batch, inversion=7, guided=2, plain=5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["text", "image"])
def test_agg_work_at_the_defaults_is_spec_agg_section_9(mode):
    """SPEC-AGG §9 at the defaults: 60 per source; per sample 60 forwards (19 with grad) + 19 backwards."""
    row, m = _counts(mode, 1, size=32, max_long_side=32)
    assert (row["steps"], row["skip"], row["t_edit"], row["t_boost"]) == (100, 40, 20, 40)
    _check(row, m, mode, 1, inversion=60, guided=19, plain=41)
