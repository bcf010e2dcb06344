"""dsct.losses: reference parity on the fixture ViT, closed forms, per-sample batch semantics."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from dsct.losses import (
    clip_direction_loss,
    contrastive_keys_loss,
    identity_loss,
    pixel_l2_loss,
    range_loss,
    semantic_divergence_loss,
    structure_loss,
    style_cls_loss,
    weighted_sum,
)
from dsct.vit import DinoFeatures

REF_WEIGHTS = {"key_ssim": 1000.0, "contra_keys": 200.0, "dir_cls": 100.0, "style_cls": 2000.0}  # vit_losses.json


@pytest.fixture(scope="module")
def fixture(reference_dir):
    meta = json.loads((reference_dir / "vit_losses.json").read_text())
    tensors = load_file(reference_dir / "vit_losses.safetensors")
    vit = VisionTransformer(**meta["vit_kwargs"]).eval()
    vit.load_state_dict({k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}, strict=True)
    vit.requires_grad_(False)
    return DinoFeatures(vit), tensors


def assert_rel(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    assert got.shape == want.shape
    err = ((got - want).norm() / want.norm()).item()
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def test_reference_vit_losses(fixture):
    dino, t = fixture
    out = t["input.out"].clone().requires_grad_(True)
    to01 = lambda x: x * 0.5 + 0.5  # noqa: E731 — SPEC §4: ViT losses see [0,1]
    f_out = dino(to01(out))
    f_src, f_prev, f_trg = (dino(to01(t[f"input.{n}"])) for n in ("src", "prev", "trg"))
    terms = {
        "key_ssim": structure_loss(f_out.self_sim, f_src.self_sim),
        "contra_keys": contrastive_keys_loss(f_out.keys, f_src.keys),
        "dir_cls": semantic_divergence_loss(f_out.cls, f_prev.cls),
        "style_cls": style_cls_loss(f_out.cls, f_trg.cls),
    }
    for name, value in terms.items():
        assert_rel(value.detach(), t[f"value.{name}"], 1e-5)
    total = weighted_sum(terms, REF_WEIGHTS)
    assert_rel(total.detach(), t["value.weighted_total"], 1e-4)
    (grad,) = torch.autograd.grad(total.sum(), out)
    assert_rel(grad, t["grad.weighted_total_wrt_out"], 1e-4)
    assert_rel(range_loss(t["input.range_x0"]), t["value.range_loss_per_sample"], 1e-5)


def test_structure_loss_zero_for_identical_and_broadcasts():
    sim = torch.rand(3, 10, 10)
    assert torch.equal(structure_loss(sim, sim), torch.zeros(3))
    src = torch.rand(1, 10, 10)
    want = torch.stack([((sim[b] - src[0]) ** 2).mean() for b in range(3)])
    torch.testing.assert_close(structure_loss(sim, src), want)


def test_contrastive_identical_orthogonal_keys_closed_form():
    n, d, tau = 6, 8, 0.07
    keys = torch.eye(n, d).unsqueeze(0) * torch.linspace(0.5, 3.0, n).view(1, n, 1)  # norms differ: cosine must ignore them
    # logits per token: [1/τ (positive), -10/τ (masked diagonal), 0/τ × (n-1)]
    want = -1 / tau + math.log(math.exp(1 / tau) + math.exp(-10 / tau) + (n - 1))
    torch.testing.assert_close(contrastive_keys_loss(keys, keys), torch.tensor([want]), rtol=1e-6, atol=1e-6)


def test_contrastive_matches_explicit_cross_entropy():
    keys, keys_src = torch.randn(2, 7, 5), torch.randn(1, 7, 5)
    got = contrastive_keys_loss(keys, keys_src, temperature=0.1)
    for b in range(2):
        rows = []
        for i in range(7):
            cos = F.cosine_similarity(keys[b, i].expand(7, 5), keys_src[0], dim=-1)
            negatives = torch.cat([cos[:i], torch.tensor([-10.0]), cos[i + 1:]])
            logits = torch.cat([cos[i:i + 1], negatives]) / 0.1
            rows.append(F.cross_entropy(logits[None], torch.tensor([0])))
        torch.testing.assert_close(got[b], torch.stack(rows).mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same tokens"):
        contrastive_keys_loss(keys, torch.randn(1, 6, 5))


def test_range_loss():
    assert torch.equal(range_loss(torch.rand(2, 3, 4, 4) * 2 - 1), torch.zeros(2))
    x0 = torch.stack([torch.full((3, 4, 4), 1.5), torch.zeros(3, 4, 4)])
    torch.testing.assert_close(range_loss(x0), torch.tensor([0.25, 0.0]))


def test_cls_and_pixel_losses_by_hand():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    torch.testing.assert_close(style_cls_loss(a, b), torch.tensor([2.5]))
    torch.testing.assert_close(semantic_divergence_loss(a, b), torch.tensor([-2.5]))
    torch.testing.assert_close(pixel_l2_loss(torch.ones(1, 3, 2, 2), -torch.ones(1, 3, 2, 2)), torch.tensor([4.0]))


def test_clip_direction_and_identity_by_hand():
    preds = [torch.tensor([[1.0, 0.0], [0.0, 0.5]]), torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])]
    dirs = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])]
    torch.testing.assert_close(clip_direction_loss(preds, dirs), torch.tensor([-1.5, -0.5]))
    with pytest.raises(ValueError, match="one direction per CLIP model"):
        clip_direction_loss(preds, dirs[:1])
    e = torch.randn(2, 16)
    torch.testing.assert_close(identity_loss(e, e), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(identity_loss(e, -e), torch.full((2,), 2.0))


def _all_losses(x: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every loss on inputs derived from x (B,3,4,4) against fixed inputs (1,3,4,4)."""
    tokens, tokens_src = x.flatten(2).transpose(1, 2), fixed.flatten(2).transpose(1, 2)  # (B, 16, 3)
    sim, sim_src = tokens @ tokens.transpose(1, 2), tokens_src @ tokens_src.transpose(1, 2)
    vec, vec_src = x.flatten(1), fixed.flatten(1)
    return {
        "structure": structure_loss(sim, sim_src),
        "contra": contrastive_keys_loss(tokens, tokens_src),
        "div": semantic_divergence_loss(vec, vec_src),
        "cls": style_cls_loss(vec, vec_src),
        "l2": pixel_l2_loss(x, fixed),
        "range": range_loss(x * 2),
        "clip": clip_direction_loss([vec[:, :8], vec[:, 8:]], [vec_src[0, :8], vec_src[0, 8:]]),
        "id": identity_loss(vec, vec_src),
    }


def test_batch_of_two_equals_singles_and_gradients_flow():
    x, fixed = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(1, 3, 4, 4)
    both = _all_losses(x, fixed)
    weights = {name: 1.0 for name in both}
    (grad_both,) = torch.autograd.grad(weighted_sum(both, weights).sum(), x)
    for b in range(2):
        xb = x[b:b + 1].detach().requires_grad_(True)
        one = _all_losses(xb, fixed)
        for name, value in one.items():
            assert both[name].shape == (2,), name
            torch.testing.assert_close(both[name][b:b + 1], value, msg=name)
            (g,) = torch.autograd.grad(value.sum(), xb, retain_graph=True)
            assert torch.isfinite(g).all() and g.abs().sum() > 0, name
        (grad_one,) = torch.autograd.grad(weighted_sum(one, weights).sum(), xb)
        torch.testing.assert_close(grad_both[b:b + 1], grad_one)


def test_weighted_sum():
    terms = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 5.0]), "c": torch.tensor([float("nan"), float("inf")])}
    got = weighted_sum(terms, {"a": 2.0, "b": torch.tensor([0.0, 10.0]), "c": 0.0, "unused": 7.0})
    torch.testing.assert_close(got, torch.tensor([2.0 * 1 + 0.0, 2.0 * 2 + 10.0 * 5]))
    masked = weighted_sum({"c": terms["c"]}, {"c": torch.tensor([0.0, 0.0])})
    assert torch.equal(masked, torch.zeros(2))
    with pytest.raises(KeyError, match="no weight"):
        weighted_sum(terms, {"a": 1.0})
