"""CLIP ensemble (dsct/clip.py): QuickGELU builds, templates, directions, batched differentiable views."""

from __future__ import annotations

import contextlib
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from dsct.clip import (
    IMAGENET_TEMPLATES, OPENAI_MODELS, TINY_CONFIGS, ClipEnsemble, ViewParams, _render, _sample_view_params,
    _view_theta, build_clip_models, fold_batchnorm, use_plain_attention,
)
from dsct.errors import ConfigError

MISSING_TEMPLATE = "a photo of many {}."


@pytest.fixture(scope="module")
def ens() -> ClipEnsemble:
    torch.manual_seed(0)
    return build_clip_models("tiny")


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@contextlib.contextmanager
def _count_calls(ens: ClipEnsemble, method: str):
    """Record the batch size of every call of `method` on each model of the ensemble."""
    calls: list[int] = []
    for m in ens.models:
        setattr(m, method, lambda x, _f=getattr(m, method): calls.append(len(x)) or _f(x))
    try:
        yield calls
    finally:
        for m in ens.models:
            delattr(m, method)


def _activations(model: torch.nn.Module) -> tuple[int, int]:
    quick = sum(isinstance(m, QuickGELU) for m in model.modules())
    gelu = sum(type(m) is torch.nn.GELU for m in model.modules())
    return quick, gelu


@pytest.mark.parametrize("name, size", zip(OPENAI_MODELS, (224, 288, 224, 384, 224)))
def test_real_models_build_quickgelu_on_meta(name, size):
    ens = build_clip_models([name], device="meta")
    model = ens.models[0]
    assert next(model.parameters()).device.type == "meta"
    quick, gelu = _activations(model)
    assert quick > 0 and gelu == 0
    assert ens.input_sizes == ((size, size),)
    assert ens.means[0] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert ens.stds[0] == pytest.approx((0.26862954, 0.26130258, 0.27577711))


def test_plain_name_is_gelu_and_rejected():
    # open_clip builds nn.GELU for the plain name: OpenAI weights would load silently into the wrong net
    with torch.device("meta"):
        plain = open_clip.create_model("RN50", pretrained=None, device="meta")
    quick, gelu = _activations(plain)
    assert quick == 0 and gelu > 0
    with pytest.raises(ConfigError, match="clip_models"):
        build_clip_models(["RN50"], device="meta")


def test_templates_are_openai_80_less_one():
    openai = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(openai) == 80
    assert len(IMAGENET_TEMPLATES) == 79 == len(set(IMAGENET_TEMPLATES))
    assert MISSING_TEMPLATE not in IMAGENET_TEMPLATES
    assert set(IMAGENET_TEMPLATES) == set(openai) - {MISSING_TEMPLATE}
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)


def test_tokenizer_offline(ens, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for tok in ens.tokenizers:
        tokens = tok(["a photo of a cat.", "graffiti of the black leopard."])
        assert tokens.shape == (2, 77)
        assert (tokens[:, 0] == 49406).all() and (tokens == 49407).sum() == 2  # <start>, one <end> each


def test_text_directions_formula(ens):
    src = torch.rand(1, 3, 64, 64)  # square: resize + center crop is a plain resize
    with _count_calls(ens, "encode_text") as calls, torch.no_grad():
        dirs = ens.text_directions("black leopard", "cat", src)
    assert calls == [2 * 79] * len(ens.models)  # all templates of both texts in one call per model
    assert [d.shape for d in dirs] == [(32,), (24,)]
    with torch.no_grad():
        per_model = zip(ens.models, ens.tokenizers, ens.input_sizes, ens.means, ens.stds, dirs)
        for model, tok, size, mean, std, d in per_model:
            torch.testing.assert_close(d.norm(), torch.tensor(1.0))
            e_t, e_s = (
                F.normalize(model.encode_text(tok([t.format(s) for t in IMAGENET_TEMPLATES])).mean(0), dim=-1)
                for s in ("black leopard", "cat")
            )
            img = F.interpolate(src, size, mode="bilinear", align_corners=False)
            img = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
            e_i0 = F.normalize(model.encode_image(img), dim=-1)[0]
            torch.testing.assert_close(d, F.normalize(e_t - 0.4 * e_s + 0.2 * e_i0, dim=-1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1, 3, H, W"):
        ens.text_directions("a", "b", torch.rand(2, 3, 64, 64))
    # AGG hands in the source's centre embeddings it already has: the same directions, no image encoded again
    with torch.no_grad():
        centre = ens.center_embeddings(src)
        with _count_calls(ens, "encode_image") as images:
            again = ens.text_directions("black leopard", "cat", src, centre)
    assert images == [] and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(again, dirs))


def test_identity_view_is_plain_resize():
    x = torch.rand(2, 3, 40, 56)
    ident = ViewParams(torch.zeros(2), torch.ones(2, 2), torch.zeros(2, 2), torch.zeros(2, dtype=torch.bool))
    theta = _view_theta(ident, 40 / 56).view(2, 1, 2, 3)
    for size in [(32, 32), (48, 48), (30, 70)]:  # down, up, mixed
        expected = F.interpolate(x, size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(_render(x, theta, size), expected, atol=1e-5, rtol=0)


def test_view_rotation_crop_flip_geometry():
    x = torch.rand(1, 3, 40, 56)
    # +90° about the centre, then the central 40×40 crop == rot90 (counter-clockwise) of that square
    params = ViewParams(torch.tensor([90.0]), torch.tensor([[40 / 56, 1.0]]), torch.zeros(1, 2), torch.tensor([False]))
    out = _render(x, _view_theta(params, 40 / 56).view(1, 1, 2, 3), (40, 40))
    torch.testing.assert_close(out, torch.rot90(x[..., 8:48], 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    # flip only
    params = ViewParams(torch.zeros(1), torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([True]))
    out = _render(x, _view_theta(params, 40 / 56).view(1, 1, 2, 3), (40, 56))
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)
    # a rotated view is black (0) in the corners the rotation leaves empty
    params = ViewParams(torch.tensor([10.0]), torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([False]))
    out = _render(torch.ones(1, 3, 64, 64), _view_theta(params, 1.0).view(1, 1, 2, 3), (64, 64))
    assert out[..., 0, 0].eq(0).all() and out[..., 32, 32].eq(1).all()


@pytest.mark.parametrize("height, width", [(256, 256), (256, 192), (240, 256)])
def test_view_params_ranges(height, width):
    p = _sample_view_params(torch.Generator().manual_seed(0), 4000, height, width)
    area = p.scale.prod(-1)  # fraction of the image area
    ratio = p.scale[:, 0] / p.scale[:, 1] * width / height  # crop w/h in pixels
    assert p.angle.abs().max() <= 10
    assert area.min() >= 0.8 - 1e-6 and area.max() <= 1 + 1e-6
    assert ratio.min() >= 0.9 - 1e-6 and ratio.max() <= 1.1 + 1e-6
    assert (p.center.abs() + p.scale).max() <= 1 + 1e-6  # crop inside the (rotated) image
    assert 0.45 < p.flip.float().mean() < 0.55
    again = _sample_view_params(torch.Generator().manual_seed(0), 4000, height, width)
    assert all(torch.equal(a, b) for a, b in zip(p, again))


def test_view_params_fallback_for_wide_images():
    # 256×384: no crop of ≥ 80 % area has w/h ≤ 1.1, so torchvision's fallback (centred, ratio 1.1) applies
    p = _sample_view_params(torch.Generator().manual_seed(0), 100, 256, 384)
    torch.testing.assert_close(p.scale, torch.tensor([[256 * 1.1 / 384, 1.0]]).expand(100, 2))
    assert p.center.eq(0).all()


def test_views_are_differentiable(ens):
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = ens.encode_views(x, ens.draw_views(3, _gens(1, 2), 64, 64))
    assert [o.shape for o in out] == [(2, 32), (2, 24)]
    sum(o.sum() for o in out).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_batched_views_equal_views_one_by_one(ens):
    x = torch.rand(1, 3, 64, 64)
    with _count_calls(ens, "encode_image") as calls, torch.no_grad():
        batched = ens.encode_views(x, ens.draw_views(4, _gens(7), 64, 64))
    assert calls == [4] * len(ens.models)  # one call per model on all views
    theta = _view_theta(_sample_view_params(torch.Generator().manual_seed(7), 4, 64, 64), 1.0)
    with torch.no_grad():
        for i, size in enumerate(ens.input_sizes):
            singles = [ens._encode(i, _render(x, theta[k].view(1, 1, 2, 3), size)) for k in range(4)]
            torch.testing.assert_close(batched[i], torch.cat(singles).mean(0, keepdim=True), atol=1e-5, rtol=1e-5)


def test_batch_of_two_equals_singles(ens):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        both = ens.encode_views(x, ens.draw_views(3, _gens(11, 12), 64, 64))
        first = ens.encode_views(x[:1], ens.draw_views(3, _gens(11), 64, 64))
        second = ens.encode_views(x[1:], ens.draw_views(3, _gens(12), 64, 64))
    for b, f, s in zip(both, first, second):
        torch.testing.assert_close(b, torch.cat([f, s]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"views of shape \(2, n_cuts, 2, 3\)"):
        ens.encode_views(x, ens.draw_views(3, _gens(1), 64, 64))


def test_text_similarity(ens):
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        sim = ens.text_similarity(x, "a cat")
        singles = torch.cat([ens.text_similarity(x[i : i + 1], "a cat") for i in range(3)])
    assert sim.shape == (3,) and sim.abs().max() <= 1
    torch.testing.assert_close(sim, singles, atol=1e-5, rtol=1e-5)


def test_plain_text_embeddings_in_one_template_chunk_by_chunk(ens):
    """Per model, each text in the one template through the model's own tokenizer and text tower, unit norm;
    chunks change nothing (the 512 model's 1 000 class names go through 256 at a time)."""
    names = ["tiger", "tabby cat", "goldfish"]
    with torch.no_grad():
        got = ens.plain_text_embeddings(names, "a photo of a {}.")
        chunked = ens.plain_text_embeddings(names, "a photo of a {}.", chunk=2)
        for model, tokenizer, emb, emb2 in zip(ens.models, ens.tokenizers, got, chunked):
            want = model.encode_text(tokenizer([f"a photo of a {n}." for n in names])).float()
            torch.testing.assert_close(emb, want / want.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(emb2, emb, rtol=1e-5, atol=1e-6)
    assert len(got) == len(ens.models) >= 2


def _tiny_resnet_clip(seed: int) -> open_clip.CLIP:
    """The tiny ResNet CLIP with every BatchNorm given non-trivial random affine parameters and statistics."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CONFIGS["tiny-rn"], quick_gelu=True).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.5)
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def test_fold_batchnorm_keeps_image_embeddings_and_gradients():
    plain = _tiny_resnet_clip(0)
    folded = open_clip.CLIP(**TINY_CONFIGS["tiny-rn"], quick_gelu=True).eval()
    folded.load_state_dict(plain.state_dict(), strict=True)  # the checkpoint's keys load; folding comes after
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert fold_batchnorm(folded) == n_bn == 3 + 4 * 4  # stem 3; 4 bottlenecks of 3 + a shortcut each
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert fold_batchnorm(folded) == 0  # nothing left to fold

    x0 = torch.rand(3, 3, 64, 64)
    out = []
    for model in (plain, folded):
        x = x0.clone().requires_grad_(True)
        emb = model.encode_image(x)
        (grad,) = torch.autograd.grad(emb.square().sum(), x)
        out.append((emb.detach(), grad))
    (e_plain, g_plain), (e_fold, g_fold) = out
    assert (e_fold - e_plain).abs().max() <= 1e-5 * e_plain.abs().max()
    assert (g_fold - g_plain).abs().max() <= 1e-4 * g_plain.abs().max()


def test_fold_batchnorm_needs_eval_and_leaves_vit_alone():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(_tiny_resnet_clip(0).train())
    torch.manual_seed(0)
    vit = open_clip.CLIP(**TINY_CONFIGS["tiny-vit"], quick_gelu=True).eval()
    keys = vit.state_dict().keys()
    assert fold_batchnorm(vit) == 0 and vit.state_dict().keys() == keys


def _encode_with_grad(model: open_clip.CLIP, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x0.clone().requires_grad_(True)
    emb = model.encode_image(x)
    (grad,) = torch.autograd.grad(emb.square().sum(), x)
    return emb.detach(), grad


def test_plain_attention_keeps_tensors_and_outputs():
    torch.manual_seed(0)
    plain = open_clip.CLIP(**TINY_CONFIGS["tiny-vit"], quick_gelu=True).eval().requires_grad_(False)
    swapped = open_clip.CLIP(**TINY_CONFIGS["tiny-vit"], quick_gelu=True).eval()
    swapped.load_state_dict(plain.state_dict(), strict=True)
    swapped.requires_grad_(False)
    n_blocks = len(plain.visual.transformer.resblocks)
    assert use_plain_attention(swapped) == n_blocks
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in swapped.visual.modules())
    before, after = plain.state_dict(), swapped.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(p.requires_grad for p in swapped.parameters())

    x0 = torch.rand(3, 3, 48, 48)
    (e_plain, g_plain), (e_swap, g_swap) = _encode_with_grad(plain, x0), _encode_with_grad(swapped, x0)
    assert (e_swap - e_plain).abs().max() <= 1e-5 * e_plain.abs().max()
    assert (g_swap - g_plain).abs().max() <= 1e-5 * g_plain.abs().max()


@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-16-quickgelu", "RN50-quickgelu"])
def test_plain_attention_real_towers_keep_keys(name):
    model = build_clip_models([name], device="meta").models[0]
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert use_plain_attention(model) == (12 if name.startswith("ViT") else 0)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
