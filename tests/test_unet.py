"""dsct.unet: checkpoint layout, parity with guided-diffusion, and the tiny model's behaviour."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dsct.errors import ConfigError, DSCTError, ImageError
from dsct.unet import (
    DIFFUSION_ONLY_KEYS, GD_MODEL_DEFAULTS, MODEL_CONFIGS, GroupNorm32, UNet, build_unet, checkpoint_filter_fn,
)

REAL_CHECKPOINTS = {"imagenet256": "adm_256_uncond_state_dict.json", "ffhq256": "adm_ffhq_256_state_dict.json"}


def _tiny(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return build_unet("tiny").eval()


def _t(b: int) -> torch.Tensor:
    return torch.linspace(999.0, 3.0, b)


@pytest.mark.parametrize("name", sorted(REAL_CHECKPOINTS))
def test_real_checkpoint_keys_and_shapes(reference_dir, name):
    ref = json.loads((reference_dir / REAL_CHECKPOINTS[name]).read_text())
    model = build_unet(name, device="meta")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    # The checkpoint's own guided-diffusion kwargs build the same network.
    same = UNet.from_guided_diffusion(**ref["config"], device="meta")
    assert {k: list(v.shape) for k, v in same.state_dict().items()} == ref["keys"]


@pytest.mark.parametrize("name", ["unet_imagenet_like", "unet_ffhq_like"])
def test_reference_output(reference_dir, name):
    kwargs = json.loads((reference_dir / "fixtures.json").read_text())[name]["model_kwargs"]
    data = load_file(reference_dir / f"{name}.safetensors")
    model = UNet.from_guided_diffusion(**kwargs, device="meta").eval()  # no random init: weights come next
    weights = {k.removeprefix("weights."): v for k, v in data.items() if k.startswith("weights.")}
    model.load_state_dict(checkpoint_filter_fn(weights, model), strict=True, assign=True)
    y = model(data["input.x"], data["input.t"])
    assert y.shape == data["output.y"].shape
    assert (y - data["output.y"]).abs().max().item() <= 1e-4


def test_checkpoint_filter_fn_strips_dataparallel_prefix():
    model = _tiny()
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    other = build_unet("tiny", device="meta")
    other.load_state_dict(checkpoint_filter_fn(sd, other), strict=True, assign=True)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(other.eval()(x, _t(1)), model(x, _t(1)), rtol=0, atol=0)


def test_checkpoint_filter_fn_rejects_foreign_layouts():
    model = build_unet("tiny", device="meta")
    with pytest.raises(DSCTError, match="input_blocks.0.0.weight"):
        checkpoint_filter_fn({"conv_in.weight": torch.zeros(1)}, model)
    wrong = build_unet("ffhq256", device="meta").state_dict()
    with pytest.raises(DSCTError, match="does not match"):
        checkpoint_filter_fn(wrong, model)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 64, 96), (1, 3, 96, 32)])
def test_tiny_forward_shapes(shape):
    y = _tiny()(torch.randn(shape), _t(shape[0]))
    assert y.shape == (shape[0], 6, *shape[2:])
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_size_not_a_multiple_is_an_image_error():
    with pytest.raises(ImageError) as info:
        _tiny()(torch.randn(1, 3, 60, 64), _t(1))
    assert str(info.value) == "image size (60, 64) must be a multiple of 8 on both sides"  # 3 downsamplings: 2³


def test_gradient_reaches_x():
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    _tiny()(x, _t(2)).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every sample gets a gradient


def test_batch_equals_single_samples():
    model = _tiny()
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([999.0, 120.0])
    both = model(x, t)
    for b in range(2):
        torch.testing.assert_close(both[b : b + 1], model(x[b : b + 1], t[b : b + 1]), rtol=1e-4, atol=1e-5)


def test_timestep_changes_output():
    model, x = _tiny(), torch.randn(1, 3, 32, 32)
    assert not torch.allclose(model(x, torch.tensor([10.0])), model(x, torch.tensor([900.0])))


def test_grad_checkpointing_gives_identical_outputs_and_gradients():
    model = _tiny()
    x0 = torch.randn(2, 3, 64, 64)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        x = x0.clone().requires_grad_(True)
        y = model(x, _t(2))
        (grad,) = torch.autograd.grad(y.square().sum(), x)
        return y.detach(), grad

    y_plain, g_plain = run()
    model.set_grad_checkpointing(True)
    assert all(m.grad_checkpointing for m in model.output_blocks)
    y_ckpt, g_ckpt = run()
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(y_ckpt, y_plain, rtol=0, atol=0)
    torch.testing.assert_close(g_ckpt, g_plain, rtol=0, atol=0)


def test_bf16_autocast_on_cpu():
    model, x, t = _tiny(), torch.randn(2, 3, 64, 64), _t(2)
    y32 = model(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = model(x, t)
    assert y16.dtype == torch.float32 and torch.isfinite(y16).all()
    assert (y16 - y32).abs().max() < 0.05 * y32.abs().max()


def test_builds_on_meta_with_dtype():
    model = build_unet("imagenet256", device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}


def test_from_guided_diffusion_accepts_all_defaults_and_drops_diffusion_keys():
    full = dict(GD_MODEL_DEFAULTS, use_fp16=True, **{k: None for k in DIFFUSION_ONLY_KEYS})
    model = UNet.from_guided_diffusion(**full, device="meta")
    # guided-diffusion defaults: 64px → channel_mult (1, 2, 3, 4), attention at 16 and 8 px.
    assert model.size_multiple == 8
    assert model.out[-1].out_channels == 3  # learn_sigma=False
    n_attn = sum(type(m).__name__ == "AttentionBlock" for m in model.modules())
    assert n_attn == 2 * 2 + 1 + 2 * 3  # encoder (2 levels × 2), middle, decoder (2 levels × 3)


def test_from_guided_diffusion_use_checkpoint_enables_grad_checkpointing():
    model = UNet.from_guided_diffusion(**MODEL_CONFIGS["tiny"], use_checkpoint=True, device="meta")
    assert model.middle_block.grad_checkpointing


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_chanels": 64}, "num_chanels"),
        ({"use_new_attention_order": True}, "use_new_attention_order"),
        ({"image_size": 100}, "channel_mult"),
    ],
)
def test_from_guided_diffusion_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field) as info:
        UNet.from_guided_diffusion(**{**MODEL_CONFIGS["tiny"], "channel_mult": "", **kwargs}, device="meta")
    assert info.value.field == field
    want = {"num_chanels": "num_chanels=64 is not allowed: a guided-diffusion model keyword: "
                           + ", ".join(sorted(GD_MODEL_DEFAULTS)),
            "use_new_attention_order": "use_new_attention_order=True is not allowed: False (no supported checkpoint "
                                       "uses it)",
            "channel_mult": "channel_mult='' is not allowed: explicit, or image_size in [64, 128, 256, 512]"}
    assert str(info.value) == want[field]


def test_from_guided_diffusion_passes_every_model_keyword():
    """Keywords away from their defaults reach the constructor: the same network (modules, heads, dropout) as
    built directly; attention resolutions as a tuple work like the string form (64 // 16 = 4, 64 // 8 = 8)."""
    kw = dict(MODEL_CONFIGS["tiny"], num_head_channels=-1, num_heads=2, num_heads_upsample=1,
              use_scale_shift_norm=False, resblock_updown=False, dropout=0.25, attention_resolutions=(16, 8))
    torch.manual_seed(0)
    built = UNet.from_guided_diffusion(**kw)
    torch.manual_seed(0)
    direct = UNet(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_rates=(4, 8),
                  out_channels=6, num_heads=2, num_head_channels=-1, num_heads_upsample=1,
                  use_scale_shift_norm=False, resblock_updown=False, dropout=0.25)
    assert repr(built) == repr(direct) and "Dropout(p=0.25" in repr(built)
    heads = [[m.num_heads for m in net.modules() if hasattr(m, "num_heads")] for net in (built, direct)]
    assert heads[0] == heads[1] and set(heads[0]) == {1, 2}  # the up path's blocks take num_heads_upsample


def test_build_unet_unknown_name():
    with pytest.raises(ConfigError, match="imagenet256"):
        build_unet("sd15")


def _input_grad(model: UNet, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Flattened fp32 gradient of a scalar loss on the output with respect to the input."""
    x = x0.to(next(model.parameters()).dtype).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x, t).float().square().mean(), x)
    return grad.float().flatten()


def test_native_groupnorm_is_off_by_default_and_exact_in_fp32():
    model, x, t = _tiny(), torch.randn(1, 3, 64, 64), _t(1)
    assert not any(m.native for m in model.modules() if isinstance(m, GroupNorm32))
    y_fp32 = model(x, t)
    model.set_native_groupnorm(True)
    assert all(m.native for m in model.modules() if isinstance(m, GroupNorm32))
    torch.testing.assert_close(model(x, t), y_fp32, rtol=0, atol=0)  # fp32 input: the same kernel either way


def test_native_groupnorm_bf16_input_gradient():
    # Measured on CPU bf16 (torch 2.14.1): cos(native, fp32 GroupNorm) = 0.99948; against the all-fp32 model
    # 0.99906 native, 0.99907 fp32 GroupNorm (default affine 1/0 instead: 0.99878; 0.99829 vs 0.99856). Below
    # issue 12's 0.9999 bar, so fp32 stays the default (the GPU decision is left to benchmarks/bench_step.py); the
    # gap is the size of the bf16 rounding of the rest of the net. These bounds catch a broken native path.
    plain = _tiny()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial affine parameters (the default init is 1 and 0), so a lost bias shows
        for norm in (m for m in plain.modules() if isinstance(m, GroupNorm32)):
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) + 0.5)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen) * 0.5)
    model = _tiny()
    model.load_state_dict(plain.state_dict())
    model = model.to(torch.bfloat16)
    x, t = torch.randn(2, 3, 64, 64), _t(2)
    g_ref = _input_grad(plain, x, t)
    g_fp32_norm = _input_grad(model, x, t)
    model.set_native_groupnorm(True)
    g_native = _input_grad(model, x, t)
    assert next(model.parameters()).dtype == torch.bfloat16

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    assert cos(g_native, g_fp32_norm) >= 0.998
    assert cos(g_native, g_ref) >= cos(g_fp32_norm, g_ref) - 1e-3


def _resampling(model: UNet) -> tuple[list[str], list[str]]:
    """The type names of the last layer of every input / output block that changes resolution in the tiny config."""
    down = [type(model.input_blocks[i][-1]).__name__ for i in (2, 4, 6)]
    up = [type(model.output_blocks[i][-1]).__name__ for i in (1, 3, 5)]
    return down, up


def test_constructor_defaults_are_the_options_every_reference_checkpoint_shares(reference_dir):
    """Given only what differs between the checkpoints (widths, blocks, attention rates, head size), the
    defaults build the real 256 checkpoint: learned σ (6 outputs), scale-shift norm and resampling
    ResBlocks give exactly the reference's key and shape list; its dropout is 0."""
    ref = json.loads((reference_dir / REAL_CHECKPOINTS["imagenet256"]).read_text())
    kw = ref["unet_model_kwargs"]  # guided-diffusion's UNetModel kwargs: attention_resolutions are rates here
    model = UNet(model_channels=kw["model_channels"], channel_mult=kw["channel_mult"], num_res_blocks=kw["num_res_blocks"],
                 attention_rates=kw["attention_resolutions"], num_head_channels=kw["num_head_channels"], device="meta")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref["keys"]
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {kw["dropout"]} == {0.0}
    # Heads by count when no head size is given: guided-diffusion's num_heads=1.
    tiny = UNet(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_rates=(1, 2), device="meta")
    assert [m.num_heads for m in tiny.modules() if hasattr(m, "num_heads")] == [1] * 7  # 2 + 1 + 2 × 2
    # The resampling ResBlocks halve / double the resolution (their pooling has no weights, so no key shows it).
    tiny = UNet(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_rates=(8,), device="meta")
    assert _resampling(tiny) == (["ResBlock"] * 3, ["ResBlock"] * 3)
    assert [type(tiny.input_blocks[i][-1].h_upd).__name__ for i in (2, 4, 6)] == ["Downsample"] * 3
    assert [type(tiny.output_blocks[i][-1].x_upd).__name__ for i in (1, 3, 5)] == ["Upsample"] * 3


def test_options_off_the_checkpoints_build_guided_diffusions_modules():
    """The options no real checkpoint uses, each checked by hand on the tiny config (32 channels, mult 1,2,2,2, one
    block per level, attention at rate 8): heads by count reach the decoder (num_heads_upsample=-1 takes num_heads),
    plain norm adds one embedding value per channel, and without resampling ResBlocks the levels are joined by
    Downsample / Upsample modules with 3×3 convs (guided-diffusion's conv_resample=True), or by average pooling and
    nearest upsampling alone without them."""
    kw = dict(MODEL_CONFIGS["tiny"], num_head_channels=-1, num_heads=2, use_scale_shift_norm=False, resblock_updown=False)
    torch.manual_seed(0)
    model = UNet.from_guided_diffusion(**kw).eval()
    assert [m.num_heads for m in model.modules() if hasattr(m, "num_heads")] == [2] * 4  # encoder 1, middle 1, decoder 2
    blocks = [m for m in model.modules() if type(m).__name__ == "ResBlock"]
    assert [b.emb_layers[1].out_features for b in blocks] == [b.out_layers[-1].out_channels for b in blocks]
    assert [b.emb_layers[1].out_features for b in blocks][:4] == [32, 64, 64, 64]
    assert _resampling(model) == (["Downsample"] * 3, ["Upsample"] * 3)
    assert {(m.op.kernel_size, m.op.stride) for m in model.modules() if type(m).__name__ == "Downsample"} == {((3, 3), (2, 2))}
    assert {m.conv.kernel_size for m in model.modules() if type(m).__name__ == "Upsample"} == {(3, 3)}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64), _t(1)).shape == (1, 6, 64, 64)
    bare = UNet(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_rates=(8,),
                resblock_updown=False, conv_resample=False, device="meta")
    assert _resampling(bare) == (["Downsample"] * 3, ["Upsample"] * 3)
    assert {type(m.op).__name__ for m in bare.modules() if type(m).__name__ == "Downsample"} == {"AvgPool2d"}
    assert {m.conv for m in bare.modules() if type(m).__name__ == "Upsample"} == {None}
    on_meta = UNet.from_guided_diffusion(**kw, device="meta")
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
