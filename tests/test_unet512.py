"""dsct.unet, class-conditional (SPEC §6): the real 512 checkpoint's layout, parity with guided-diffusion's
class-conditional UNet, and the class ids ``y`` required exactly when the model is class-conditional."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dsct.errors import ConfigError, ImageError
from dsct.unet import MODEL_CONFIGS, UNet, build_unet, checkpoint_filter_fn

NAME = "unet_imagenet512_like"


def _tiny512(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return build_unet("tiny512").eval()


def _t(b: int) -> torch.Tensor:
    return torch.linspace(999.0, 3.0, b)


def test_real_512_checkpoint_keys_shapes_and_strict_load_on_meta(reference_dir):
    ref = json.loads((reference_dir / "adm_512_cond_state_dict.json").read_text())
    for model in (build_unet("imagenet512", device="meta"), UNet.from_guided_diffusion(**ref["config"], device="meta")):
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref["keys"]
        assert sum(p.numel() for p in model.parameters()) == ref["params"] == 558_997_638
        manifest = {k: torch.empty(shape, device="meta") for k, shape in ref["keys"].items()}
        model.load_state_dict(checkpoint_filter_fn(manifest, model), strict=True, assign=True)
    assert len(ref["keys"]) == 645 and ref["keys"]["label_emb.weight"] == [1000, 1024]
    assert model.size_multiple == 64  # 7 levels (0.5, 1, 1, 2, 2, 4, 4): 6 downsamplings


def test_reference_output_512(reference_dir):
    kw = json.loads((reference_dir / "fixtures.json").read_text())[NAME]["unet_model_kwargs"]
    data = load_file(reference_dir / f"{NAME}.safetensors")
    # guided-diffusion's UNetModel kwargs, mapped by hand (attention_resolutions there are already downsample rates).
    assert (kw["num_classes"], kw["out_channels"], kw["use_new_attention_order"]) == (1000, 6, False)
    model = UNet(
        model_channels=kw["model_channels"], channel_mult=kw["channel_mult"], num_res_blocks=kw["num_res_blocks"],
        attention_rates=kw["attention_resolutions"], in_channels=kw["in_channels"], out_channels=kw["out_channels"],
        num_heads=kw["num_heads"], num_head_channels=kw["num_head_channels"], num_heads_upsample=kw["num_heads_upsample"],
        use_scale_shift_norm=kw["use_scale_shift_norm"], resblock_updown=kw["resblock_updown"],
        num_classes=kw["num_classes"], device="meta",
    ).eval()
    weights = {k.removeprefix("weights."): v for k, v in data.items() if k.startswith("weights.")}
    model.load_state_dict(checkpoint_filter_fn(weights, model), strict=True, assign=True)
    assert data["input.y"].tolist() == [288, 3]
    y = model(data["input.x"], data["input.t"], y=data["input.y"])
    assert y.shape == data["output.y"].shape == (2, 6, 128, 192)
    assert (y - data["output.y"]).abs().max().item() <= 1e-4
    # The class matters: other ids move the output well beyond the tolerance.
    other = model(data["input.x"], data["input.t"], y=torch.tensor([3, 288]))
    assert (other - data["output.y"]).abs().max().item() > 1e-2


def test_class_cond_builds_the_label_embedding_and_tiny512_is_class_conditional():
    model = UNet.from_guided_diffusion(**{**MODEL_CONFIGS["tiny"], "class_cond": True}, device="meta")
    assert model.num_classes == 1000 and tuple(model.label_emb.weight.shape) == (1000, 128)  # 4 × num_channels
    assert {p.device.type for p in model.parameters()} == {"meta"}  # the label embedding too
    plain = build_unet("tiny", device="meta")
    assert plain.num_classes is None and plain.label_emb is None
    assert "label_emb.weight" not in plain.state_dict()
    tiny = build_unet("tiny512", device="meta")
    assert tiny.num_classes == 1000 and tiny.size_multiple == 64
    assert tiny.input_blocks[0][0].out_channels == 32  # the 0.5× first level of 64 channels


def test_y_is_required_by_a_class_conditional_model():
    with pytest.raises(ConfigError) as info:
        _tiny512()(torch.randn(2, 3, 64, 64), _t(2))
    assert info.value.field == "y"
    assert str(info.value) == "y=None is not allowed: 2 class ids in [0, 1000): this UNet is class-conditional"


def test_y_is_refused_by_an_unconditional_model():
    torch.manual_seed(0)
    with pytest.raises(ConfigError) as info:
        build_unet("tiny").eval()(torch.randn(2, 3, 32, 32), _t(2), y=torch.tensor([1, 2]))
    assert info.value.field == "y"
    assert str(info.value) == "y='class ids of shape (2,)' is not allowed: None: this UNet is unconditional"


@pytest.mark.parametrize("y", [torch.tensor([1.0, 2.0]), torch.tensor([1, 2, 3]), torch.tensor([[1], [2]]),
                               torch.tensor([True, False])])
def test_y_must_be_one_integer_id_per_sample(y):
    with pytest.raises(ConfigError) as info:
        _tiny512()(torch.randn(2, 3, 64, 64), _t(2), y=y)
    assert str(info.value) == (f"y='{y.dtype} of shape {tuple(y.shape)}' is not allowed: "
                               "an integer tensor of shape (2,)")


def test_label_embedding_is_added_to_the_time_embedding():
    model = _tiny512()
    y, t = torch.tensor([7, 999]), _t(2)
    with torch.no_grad():
        model.label_emb.weight[7].fill_(0.25)
        got = model.embed_class(y, 2)
    torch.testing.assert_close(got[0], torch.full((256,), 0.25))
    torch.testing.assert_close(got[1], model.label_emb.weight[999].detach())
    # forward uses time + label: zeroing the label table gives the unconditional output of the same weights
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.label_emb.weight.zero_()
        plain = UNet.from_guided_diffusion(**{**MODEL_CONFIGS["tiny512"], "class_cond": False}).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "label_emb.weight"}, strict=True)
        torch.testing.assert_close(model(x, t, y=y), plain(x, t), rtol=0, atol=0)


def test_class_changes_output_and_batch_equals_single_samples():
    model = _tiny512()
    x, t, y = torch.randn(2, 3, 64, 128), torch.tensor([999.0, 120.0]), torch.tensor([5, 500])
    with torch.no_grad():
        both = model(x, t, y=y)
        assert both.shape == (2, 6, 64, 128)
        for b in range(2):
            torch.testing.assert_close(both[b : b + 1], model(x[b : b + 1], t[b : b + 1], y=y[b : b + 1]),
                                       rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(x, t, y=torch.tensor([6, 500]))[0], both[0])


def test_gradient_reaches_x_with_a_class():
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    _tiny512()(x, _t(1), y=torch.tensor([1])).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_512_size_must_be_a_multiple_of_64():
    with pytest.raises(ImageError, match="multiple of 64"):
        _tiny512()(torch.randn(1, 3, 64, 96), _t(1), y=torch.tensor([1]))


def test_bf16_weights_take_int_ids():
    model = _tiny512().to(torch.bfloat16)
    out = model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16), _t(1), y=torch.tensor([42]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
