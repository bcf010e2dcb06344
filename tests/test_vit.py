"""dsct.vit: last-block keys, self-similarity and [CLS] from one pass; SPEC §4 preprocessing."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from dsct.errors import ConfigError
from dsct.vit import DINO_NAME, DinoFeatures, ViTFeatures, build_vit, resize_for_vit, vit_input_size

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(1)
    return build_vit("tiny").eval()


def reference_pass(vit, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent route: timm's own forward_features with hooks on the last qkv and block outputs."""
    seen = {}
    h1 = vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, a, out: seen.__setitem__("qkv", out))
    h2 = vit.blocks[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("block", out))
    try:
        vit.forward_features((x01 - MEAN) / STD)
    finally:
        h1.remove()
        h2.remove()
    B, N, _ = seen["qkv"].shape
    heads, head_dim = vit.blocks[-1].attn.num_heads, vit.blocks[-1].attn.head_dim
    k = seen["qkv"].reshape(B, N, 3, heads, head_dim)[:, :, 1]  # (B, N, heads, d)
    return k.reshape(B, N, heads * head_dim), seen["block"][:, 0]


def test_features_match_independent_hooks(tiny_vit):
    x01 = torch.rand(2, 3, 224, 224)
    feats = DinoFeatures(tiny_vit)(x01)
    assert isinstance(feats, ViTFeatures)
    keys_ref, cls_ref = reference_pass(tiny_vit, x01)
    assert feats.keys.shape == (2, 197, 48) and feats.self_sim.shape == (2, 197, 197) and feats.cls.shape == (2, 48)
    torch.testing.assert_close(feats.keys, keys_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats.cls, cls_ref, rtol=1e-5, atol=1e-6)
    cos = F.cosine_similarity(keys_ref[:, :, None, :], keys_ref[:, None, :, :], dim=-1)
    torch.testing.assert_close(feats.self_sim, cos, rtol=1e-5, atol=1e-5)


def test_one_pass_no_final_norm(tiny_vit):
    calls = {"block0": 0, "norm": 0}
    qkv_hooks = tiny_vit.blocks[-1].attn.qkv._forward_hooks
    before = len(qkv_hooks)
    dino = DinoFeatures(tiny_vit)
    h1 = tiny_vit.blocks[0].register_forward_hook(lambda *a: calls.__setitem__("block0", calls["block0"] + 1))
    h2 = tiny_vit.norm.register_forward_hook(lambda *a: calls.__setitem__("norm", calls["norm"] + 1))
    try:
        dino(torch.rand(1, 3, 224, 224))
        assert calls == {"block0": 1, "norm": 0}
        dino(torch.rand(1, 3, 224, 224))
    finally:
        h1.remove()
        h2.remove()
    # one hook for the wrapper's life, not one per call (a captured step may not add hooks), and no
    # tensor kept between calls
    assert len(qkv_hooks) == before + 1 and dino._qkv is None


def test_gradients_reach_input_and_params_untouched(tiny_vit):
    assert all(p.requires_grad for p in tiny_vit.parameters())
    x01 = torch.rand(1, 3, 224, 224, requires_grad=True)
    feats = DinoFeatures(tiny_vit)(x01)
    (feats.keys.square().mean() + feats.self_sim.mean() + feats.cls.square().mean()).backward()
    assert x01.grad is not None and x01.grad.abs().sum() > 0 and torch.isfinite(x01.grad).all()
    assert all(p.requires_grad for p in tiny_vit.parameters())  # the wrapper never changes them
    tiny_vit.zero_grad(set_to_none=True)


def test_batch_equals_singles(tiny_vit):
    x01 = torch.rand(2, 3, 256, 256)
    dino = DinoFeatures(tiny_vit)
    both = dino(x01)
    for b in range(2):
        one = dino(x01[b:b + 1])
        for got, want in zip(both, one):
            torch.testing.assert_close(got[b:b + 1], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("hw", "grid"), [((224, 320), (14, 20)), ((256, 384), (14, 21)), ((384, 256), (21, 14))])
def test_non_square_token_count(tiny_vit, hw, grid):
    feats = DinoFeatures(tiny_vit)(torch.rand(1, 3, *hw))
    n = 1 + grid[0] * grid[1]
    assert feats.keys.shape == (1, n, 48) and feats.self_sim.shape == (1, n, n)
    assert torch.isfinite(feats.self_sim).all()


@pytest.mark.parametrize(
    ("hw", "patch", "want"),
    [
        ((256, 256), 8, (224, 224)),
        ((224, 224), 16, (224, 224)),
        ((256, 512), 8, (224, 448)),
        ((512, 256), 8, (448, 224)),
        ((256, 384), 8, (224, 336)),
        ((256, 300), 8, (224, 256)),  # 262.5 floored to a multiple of 8
        ((100, 1000), 8, (48, 480)),  # long side capped at 480, short side follows the aspect
        ((1000, 100), 16, (480, 48)),
        ((224, 1000), 8, (104, 480)),  # capped although the short side is already 224
    ],
)
def test_resize_rule(hw, patch, want):
    assert vit_input_size(*hw, patch) == want


def test_resize_is_plain_bilinear_and_skipped_at_target():
    x01 = torch.rand(1, 3, 256, 512)
    want = F.interpolate(x01, size=(224, 448), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(resize_for_vit(x01, 8), want, rtol=0, atol=0)
    same = torch.rand(1, 3, 224, 448)
    assert resize_for_vit(same, 8) is same


@pytest.mark.parametrize("height, width, size", [(440, 452, (224, 224)), (300, 951, (144, 480))])
def test_resize_antialiases_when_either_side_shrinks_more_than_twice(height, width, size):
    """Only the width (452 > 2·224) or only the height (300 > 2·144; 951 < 2·480) beyond 2×: antialiased."""
    x01 = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(3))
    assert vit_input_size(height, width, 8) == size
    want = F.interpolate(x01, size=size, mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(resize_for_vit(x01, 8), want, rtol=0, atol=0)
    plain = F.interpolate(x01, size=size, mode="bilinear", align_corners=False, antialias=False)
    assert not torch.allclose(want, plain, atol=1e-3)


def test_resize_matches_torchvision_without_antialias():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x01 = torch.rand(1, 3, 256, 256)
    want = tvf.resize(x01, 224, max_size=480, antialias=False)  # the reference's transform, 0.10 behaviour
    torch.testing.assert_close(resize_for_vit(x01, 8), want, rtol=0, atol=1e-6)


def test_autocast_cpu_bfloat16(tiny_vit):
    x01 = torch.rand(1, 3, 224, 224)
    ref = DinoFeatures(tiny_vit)(x01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = DinoFeatures(tiny_vit)(x01)
    assert all(t.dtype == torch.float32 for t in low)
    torch.testing.assert_close(low.self_sim, ref.self_sim, rtol=0, atol=0.1)


def test_vitb8_matches_timm_on_meta():
    ours = build_vit("dino_vitb8", device="meta")
    theirs = timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0, device="meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 85_807_872
    assert ours.pretrained_cfg["architecture"] + "." + ours.pretrained_cfg["tag"] == DINO_NAME
    feats = DinoFeatures(ours)(torch.rand(2, 3, 256, 384, device="meta"))
    assert feats.keys.shape == (2, 1 + 28 * 42, 768) and feats.cls.shape == (2, 768)


def test_unknown_name():
    with pytest.raises(ConfigError, match="vit='vitb16'"):
        build_vit("vitb16")
