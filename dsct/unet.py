"""ADM UNet (Dhariwal & Nichol 2021), the generator of SPEC §1, checkpoint-compatible with
OpenAI guided-diffusion.

Module and parameter names follow guided-diffusion's ``UNetModel`` (``time_embed``,
``input_blocks.N.M``, ``middle_block``, ``output_blocks``, ``out``) so its checkpoints
(``256x256_diffusion_uncond.pt``, ``ffhq_10m.pt``, the class-conditional ``512x512_diffusion.pt``) load with
``strict=True`` and no renaming.
Attention keeps the checkpoints' *legacy* head split and runs through
``F.scaled_dot_product_attention``; GroupNorm runs in fp32 by default, so the model works under CUDA
autocast (fp16/bf16) in place of guided-diffusion's ``use_fp16`` weight conversion
(``UNet.set_native_groupnorm`` runs it in the activations' dtype instead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dsct.errors import ConfigError, DSCTError, ImageError

__all__ = ["DIFFUSION_ONLY_KEYS", "GD_MODEL_DEFAULTS", "IMAGENET_CLASSES", "MODEL_CONFIGS", "UNet", "build_unet", "checkpoint_filter_fn", "timestep_embedding"]

# Keys of guided-diffusion's ``model_and_diffusion_defaults()`` that configure the diffusion
# process, not the network; ``UNet.from_guided_diffusion`` drops them.
DIFFUSION_ONLY_KEYS = (
    "diffusion_steps",
    "noise_schedule",
    "timestep_respacing",
    "use_kl",
    "predict_xstart",
    "rescale_timesteps",
    "rescale_learned_sigmas",
)
# guided-diffusion's default channel multipliers per image size (``channel_mult=""``).
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
NORM_GROUPS = 32
IMAGENET_CLASSES = 1000  # guided-diffusion's NUM_CLASSES: what class_cond=True means


# --- helpers -------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of float timesteps, [cos | sin] halves as guided-diffusion orders them.

    Args:
        t: (B,) timesteps as the model sees them (original indices, float).
    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back, so fp16/bf16 activations keep their statistics.

    With ``native`` set (``UNet.set_native_groupnorm``) it runs on the input's dtype instead: the
    native kernel accumulates its statistics in fp32 anyway, and skipping the two casts saves a full
    read and write of every normalised activation (the largest memory item of a guided step).
    """

    native: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if self.native:
            w = None if self.weight is None else self.weight.to(x.dtype)
            b = None if self.bias is None else self.bias.to(x.dtype)
            return F.group_norm(x, self.num_groups, w, b, self.eps)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _norm(channels: int, dd: dict) -> GroupNorm32:
    return GroupNorm32(NORM_GROUPS, channels, **dd)


# --- blocks --------------------------------------------------------------------------------


class Upsample(nn.Module):
    """Nearest ×2, then an optional 3×3 conv (parameter name ``conv`` as in the checkpoints)."""

    def __init__(self, channels: int, *, use_conv: bool, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, device=device, dtype=dtype) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Downsample(nn.Module):
    """Stride-2 3×3 conv, or 2×2 average pooling without parameters (attribute ``op``)."""

    def __init__(self, channels: int, *, use_conv: bool, device=None, dtype=None):
        super().__init__()
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=1, device=device, dtype=dtype)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (up/down).

    With ``scale_shift`` the embedding modulates the second norm as ``norm(h)·(1+scale)+shift``
    (ADM's "scale-shift norm"); otherwise it is added before that norm.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        *,
        out_channels: int,
        dropout: float = 0.0,
        scale_shift: bool = True,
        up: bool = False,
        down: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(channels, dd), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1, **dd))
        if up:
            self.h_upd, self.x_upd = Upsample(channels, use_conv=False), Upsample(channels, use_conv=False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, use_conv=False), Downsample(channels, use_conv=False)
        else:
            self.h_upd = self.x_upd = None
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1), **dd))
        self.out_layers = nn.Sequential(
            _norm(out_channels, dd), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1, **dd)
        )
        # guided-diffusion uses a 1×1 conv when the width changes (its use_conv=False default).
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1, **dd)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers[:-1](x)
        if self.h_upd is not None:  # resample between the activation and the conv, as ADM does
            h, x = self.h_upd(h), self.x_upd(x)
        h = self.in_layers[-1](h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + emb_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with guided-diffusion's legacy head split.

    The 1×1 ``qkv`` conv output is reshaped to (B·heads, 3·ch, T) and *then* split into q, k, v:
    the checkpoints' weights are laid out head-major ([q_h, k_h, v_h] per head), which differs
    from the "new" order (split first, then heads).
    """

    def __init__(self, channels: int, *, num_heads: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if channels % num_heads:
            raise ConfigError("num_heads", num_heads, f"a divisor of the block width {channels}")
        self.num_heads = num_heads
        self.norm = _norm(channels, dd)
        self.qkv = nn.Conv1d(channels, channels * 3, 1, **dd)
        self.proj_out = nn.Conv1d(channels, channels, 1, **dd)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, T)
        qkv = self.qkv(self.norm(x))
        t = qkv.shape[-1]
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, t).split(ch, dim=1)  # each (B·heads, ch, T)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B·heads, T, ch)
        h = self.proj_out(a.transpose(1, 2).reshape(b, c, t))
        return (x + h).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """Runs its layers in order, giving the timestep embedding to those that take it.

    With ``grad_checkpointing`` each res/attention block is recomputed in backward instead of
    keeping its activations (``torch.utils.checkpoint``, non-reentrant).
    """

    grad_checkpointing: bool = False

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            args = (h, emb) if isinstance(layer, ResBlock) else (h,)
            if self.grad_checkpointing and isinstance(layer, (ResBlock, AttentionBlock)) and torch.is_grad_enabled():
                h = checkpoint(layer, *args, use_reentrant=False, preserve_rng_state=False)  # eval: no randomness; and no RNG read inside a CUDA graph capture
            else:
                h = layer(*args)
        return h


# --- the model -----------------------------------------------------------------------------


class UNet(nn.Module):
    """ADM UNet: ε and the variance interpolation v from a noisy image and its timestep.

    Args:
        model_channels: base width (guided-diffusion ``num_channels``).
        channel_mult: width multiplier per resolution level; H and W must be multiples of
            ``2 ** (len(channel_mult) - 1)``.
        attention_rates: downsample rates (1, 2, 4, …) whose blocks have self-attention.
        num_head_channels: channels per attention head; -1 to use ``num_heads`` instead.
        num_heads_upsample: heads in the decoder when ``num_head_channels`` is -1 (-1: same).
        num_classes: class-conditional when set: a label embedding (``label_emb``) is added to the
            timestep embedding, and ``forward`` requires class ids ``y`` (SPEC §6's 512 model).
        weights: PyTorch default init. ADM zero-initialises its output convs for training; these
            models are only ever loaded (or random test models), so that is skipped to keep
            random models' outputs input-dependent.
    """

    def __init__(
        self,
        *,
        model_channels: int,
        channel_mult: Sequence[float],
        num_res_blocks: int,
        attention_rates: Sequence[int],
        in_channels: int = 3,
        out_channels: int = 6,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        dropout: float = 0.0,
        num_classes: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.model_channels = model_channels
        self.num_classes = num_classes
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        emb_dim = model_channels * 4

        def heads(ch: int, n: int) -> int:
            return n if num_head_channels == -1 else ch // num_head_channels

        def res(ch_in: int, ch_out: int, **updown: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, out_channels=ch_out, dropout=dropout, scale_shift=use_scale_shift_norm, **updown, **dd)

        def resample(ch: int, up: bool) -> nn.Module:
            if resblock_updown:
                return res(ch, ch, up=up, down=not up)
            return (Upsample if up else Downsample)(ch, use_conv=conv_resample, **dd)

        num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim, **dd), nn.SiLU(), nn.Linear(emb_dim, emb_dim, **dd))
        # Registered right after time_embed, as guided-diffusion does, so the state_dict order matches too.
        self.label_emb = None if num_classes is None else nn.Embedding(num_classes, emb_dim, **dd)

        # Encoder: per level, num_res_blocks blocks (+ attention), then a downsample but for the last.
        ch = first_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1, **dd))])
        skip_chans, rate = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if rate in attention_rates:
                    layers.append(AttentionBlock(ch, num_heads=heads(ch, num_heads), **dd))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(resample(ch, up=False)))
                skip_chans.append(ch)
                rate *= 2

        self.middle_block = EmbedSequential(res(ch, ch), AttentionBlock(ch, num_heads=heads(ch, num_heads), **dd), res(ch, ch))

        # Decoder: per level, num_res_blocks + 1 blocks eating one skip each, then an upsample.
        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if rate in attention_rates:
                    layers.append(AttentionBlock(ch, num_heads=heads(ch, num_heads_upsample), **dd))
                if level and i == num_res_blocks:
                    layers.append(resample(ch, up=True))
                    rate //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(_norm(ch, dd), nn.SiLU(), nn.Conv2d(first_ch, out_channels, 3, padding=1, **dd))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """ε and v (learned-σ split: channels [:3] and [3:]) for x_t at original timesteps t.

        Args:
            x: (B, C, H, W) noisy image in [-1, 1] scale; H, W multiples of ``size_multiple``.
            t: (B,) float original-index timesteps (see ``dsct.diffusion.model_timesteps``).
            y: (B,) integer class ids in [0, num_classes): required by a class-conditional model,
                refused by an unconditional one (a silently ignored class would hide a caller's bug).
        Returns:
            (B, out_channels, H, W) in x's dtype (also under autocast).
        """
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ImageError(f"image size {tuple(x.shape[-2:])} must be a multiple of {self.size_multiple} on both sides")
        emb = self.embed_time(t)
        if (label := self.embed_class(y, x.shape[0])) is not None:
            emb = emb + label
        h, skips = self.encode(x, emb)
        h = self.middle_block(h, emb)
        h = self.decode(h, skips, emb)
        return self.out(h).to(x.dtype)

    def embed_time(self, t: Tensor) -> Tensor:
        """Timestep embedding (B, 4·model_channels) that conditions every ResBlock."""
        return self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))

    def embed_class(self, y: Tensor | None, batch: int) -> Tensor | None:
        """The label embedding (B, 4·model_channels) added to the timestep embedding; None when unconditional.

        No range check on the ids: it would cost a device sync per evaluation (and break CUDA graph
        capture); ``nn.Embedding`` itself rejects an id out of range.
        """
        if self.label_emb is None:
            if y is not None:
                raise ConfigError("y", f"class ids of shape {tuple(y.shape)}", "None: this UNet is unconditional")
            return None
        if y is None:
            raise ConfigError("y", None, f"{batch} class ids in [0, {self.num_classes}): this UNet is class-conditional")
        if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ConfigError("y", f"{y.dtype} of shape {tuple(y.shape)}", f"an integer tensor of shape ({batch},)")
        return self.label_emb(y)

    def encode(self, x: Tensor, emb: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Encoder pass; returns the bottom features and every block's output for the skips."""
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return h, skips

    def decode(self, h: Tensor, skips: list[Tensor], emb: Tensor) -> Tensor:
        """Decoder pass; each block first concatenates the matching encoder output."""
        for block, skip in zip(self.output_blocks, reversed(skips), strict=True):
            h = block(torch.cat([h, skip], dim=1), emb)
        return h

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute res/attention blocks in backward: less memory for guidance gradients, ~30% slower."""
        for module in self.modules():
            if isinstance(module, EmbedSequential):
                module.grad_checkpointing = enable

    def set_native_groupnorm(self, enable: bool = True) -> None:
        """Run every GroupNorm in the activations' dtype (see ``GroupNorm32``); off: fp32, the default.

        It matters for weights cast to bf16/fp16 (``dsct.hub.load_models``); under CUDA autocast, autocast's
        own fp32 policy for ``group_norm`` still applies.
        """
        for module in self.modules():
            if isinstance(module, GroupNorm32):
                module.native = enable

    @classmethod
    def from_guided_diffusion(cls, *, device=None, dtype=None, **kwargs: object) -> UNet:
        """Build from guided-diffusion's ``model_and_diffusion_defaults()``-style keywords.

        Accepts every key of that dict. Diffusion-only keys (``DIFFUSION_ONLY_KEYS``) are dropped;
        ``use_fp16`` is ignored (run under ``torch.autocast`` instead); ``use_checkpoint`` turns on
        ``set_grad_checkpointing``. ``attention_resolutions`` is a string of feature-map sizes
        ("32,16,8"), turned into downsample rates ``image_size // res``; ``channel_mult=""`` picks
        guided-diffusion's default for ``image_size``; ``class_cond`` gives ImageNet's 1000 classes.

        Raises:
            ConfigError: for an unknown key, an unsupported option (``use_new_attention_order``)
                or an image size without a default channel_mult.
        """
        cfg = dict(GD_MODEL_DEFAULTS)
        for key, value in kwargs.items():
            if key in DIFFUSION_ONLY_KEYS or key == "use_fp16":
                continue
            if key not in GD_MODEL_DEFAULTS:
                raise ConfigError(key, value, f"a guided-diffusion model keyword: {', '.join(sorted(GD_MODEL_DEFAULTS))}")
            cfg[key] = value
        if cfg["use_new_attention_order"]:
            raise ConfigError("use_new_attention_order", True, "False (no supported checkpoint uses it)")
        image_size = int(cfg["image_size"])
        mult = cfg["channel_mult"]
        if isinstance(mult, str):
            if mult == "" and image_size not in DEFAULT_CHANNEL_MULT:
                raise ConfigError("channel_mult", mult, f"explicit, or image_size in {sorted(DEFAULT_CHANNEL_MULT)}")
            mult = DEFAULT_CHANNEL_MULT[image_size] if mult == "" else tuple(float(m) for m in mult.split(","))
        res = cfg["attention_resolutions"]
        res = res.split(",") if isinstance(res, str) else res
        model = cls(
            model_channels=int(cfg["num_channels"]),
            channel_mult=tuple(mult),
            num_res_blocks=int(cfg["num_res_blocks"]),
            attention_rates=tuple(image_size // int(r) for r in res),
            out_channels=6 if cfg["learn_sigma"] else 3,
            num_heads=int(cfg["num_heads"]),
            num_head_channels=int(cfg["num_head_channels"]),
            num_heads_upsample=int(cfg["num_heads_upsample"]),
            use_scale_shift_norm=bool(cfg["use_scale_shift_norm"]),
            resblock_updown=bool(cfg["resblock_updown"]),
            dropout=float(cfg["dropout"]),
            num_classes=IMAGENET_CLASSES if cfg["class_cond"] else None,
            device=device,
            dtype=dtype,
        )
        model.set_grad_checkpointing(bool(cfg["use_checkpoint"]))
        return model


def build_unet(name: str, *, device=None, dtype=None) -> UNet:
    """A randomly initialised UNet of ``MODEL_CONFIGS[name]``; weights are loaded by ``dsct.hub``."""
    if name not in MODEL_CONFIGS:
        raise ConfigError("unet", name, f"one of {', '.join(MODEL_CONFIGS)}")
    return UNet.from_guided_diffusion(**MODEL_CONFIGS[name], device=device, dtype=dtype)


# --- checkpoint helpers --------------------------------------------------------------------

_SENTINEL_KEY = "input_blocks.0.0.weight"


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: UNet) -> dict[str, Tensor]:
    """Map a checkpoint's keys onto ``model``; then ``load_state_dict(strict=True)`` runs.

    Handles: guided-diffusion's own layout (kept 1:1; our modules carry its names) and the
    ``module.`` prefix of ``nn.DataParallel``/DDP saves. Anything else raises DSCTError.
    """
    sd = dict(state_dict)
    if _SENTINEL_KEY not in sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if _SENTINEL_KEY not in sd:
        raise DSCTError(f"not a guided-diffusion UNet checkpoint: it has no {_SENTINEL_KEY!r} key")
    expected = model.state_dict().keys()
    if sd.keys() != expected:
        missing, unexpected = sorted(expected - sd.keys())[:5], sorted(sd.keys() - expected)[:5]
        raise DSCTError(f"UNet checkpoint does not match the architecture: missing {missing}, unexpected {unexpected}")
    return sd


# --- configs -------------------------------------------------------------------------------

# Model keywords of guided-diffusion's model_and_diffusion_defaults(), with its defaults.
GD_MODEL_DEFAULTS: dict[str, object] = dict(
    image_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    num_head_channels=-1,
    attention_resolutions="16,8",
    channel_mult="",
    dropout=0.0,
    class_cond=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_new_attention_order=False,
    learn_sigma=False,
)

_ADM_256 = dict(
    image_size=256,
    num_res_blocks=2,
    num_heads=4,
    num_head_channels=64,
    channel_mult="",
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
)
MODEL_CONFIGS: dict[str, dict] = {
    # 256x256_diffusion_uncond.pt (SPEC §1), 552.8 M parameters.
    "imagenet256": dict(_ADM_256, num_channels=256, attention_resolutions="32,16,8"),
    # 512x512_diffusion.pt (SPEC §6), class-conditional, 559.0 M parameters; H, W multiples of 64.
    "imagenet512": dict(_ADM_256, image_size=512, num_channels=256, attention_resolutions="32,16,8", class_cond=True),
    # ffhq_10m.pt (SPEC §1), 93.6 M parameters.
    "ffhq256": dict(_ADM_256, num_channels=128, num_res_blocks=1, attention_resolutions="16"),
    # Test model: the same code paths at a small width; any H, W multiple of 8 (of 32 in the app).
    "tiny": dict(
        _ADM_256, image_size=64, num_channels=32, num_res_blocks=1, num_head_channels=16,
        channel_mult="1,2,2,2", attention_resolutions="8",
    ),
}
# Test model of the 512 code paths: class-conditional, a 0.5× first level, 7 levels (H, W multiples of 64).
MODEL_CONFIGS["tiny512"] = dict(MODEL_CONFIGS["tiny"], image_size=512, num_channels=64, channel_mult="0.5,1,1,1,1,1,1",
                                attention_resolutions="8", class_cond=True)
