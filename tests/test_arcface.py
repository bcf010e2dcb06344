"""ArcFace IR-SE50 (dsct/arcface.py): checkpoint layout, normalised output, gradients, batching, face crop."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dsct.arcface import Backbone, IRSE50, build_arcface, face_crop
from dsct.errors import ConfigError


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    torch.manual_seed(0)
    model = build_arcface("tiny")
    # random BatchNorm statistics, so eval-mode normalisation is exercised rather than the identity
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_ir_se50_matches_checkpoint_layout(reference_dir):
    manifest = json.loads((reference_dir / "arcface_ir_se50_state_dict.json").read_text())
    model = build_arcface("ir_se50", device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == manifest["keys"]
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]
    assert list(model(torch.empty(2, 3, 112, 112, device="meta")).shape) == manifest["output_shape"]


def test_contract_names_and_errors():
    assert IRSE50 is Backbone
    assert not build_arcface("tiny").training
    with pytest.raises(ConfigError, match="arcface"):
        build_arcface("ir_se100")


def test_output_is_unit_norm(tiny):
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    emb = tiny(x)
    assert emb.shape == (3, 512)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)


def test_gradient_reaches_input(tiny):
    x = (torch.rand(2, 3, 112, 112) * 2 - 1).requires_grad_()
    ref = tiny(torch.rand(2, 3, 112, 112) * 2 - 1).detach()
    (1 - (tiny(x) * ref).sum(-1)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_batch_equals_singles(tiny):
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    batched = tiny(x)
    singles = torch.cat([tiny(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size, box", [(256, (35, 223, 32, 220)), (512, (70, 446, 64, 440))])
def test_face_crop_box(size, box):
    x = torch.rand(2, 3, size, size)
    top, bottom, left, right = box
    expected = F.adaptive_avg_pool2d(x[:, :, top:bottom, left:right], 112)
    out = face_crop(x)
    assert out.shape == (2, 3, 112, 112)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
