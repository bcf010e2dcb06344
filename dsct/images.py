"""Images in and out: decoding, EXIF, modes, the resize/crop policy, and MKL colour matching.

Everything a user can hand us (a path, a PIL image, a numpy array, a tensor) becomes an RGB
tensor in [-1, 1] here, or an ``ImageError`` that says what was wrong. SPEC §3 (input size) and
§4 (image-mode colour matching).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

__all__ = [
    "ImageInput", "MIN_SIDE", "load_image", "working_size", "output_size", "to_tensor", "fit_to",
    "to_pil", "colour_match_mkl",
]

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]
MIN_SIDE = 16  # smaller images carry no structure worth keeping; refused instead of upscaled 16x
MAX_PIXELS = 64_000_000  # larger inputs are refused before decoding (decompression bombs)


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent pixels on white: the UNet knows no alpha, and black would bleed in."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB, scaling 16/32-bit and float data by their own range."""
    if img.mode in ("La", "RGBa"):  # premultiplied alpha: PIL un-premultiplies to LA / RGBA
        return _flatten_alpha(img.convert(img.mode.upper()))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "RGB", "L", "1") and "transparency" in img.info):
        return _flatten_alpha(img)  # an alpha channel, or a transparent palette entry or colour key (PNG tRNS, GIF)
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)  # float data in [0, 1]: 1
        a = np.maximum(a / top, 0.0)  # top is at least the maximum: only negative values need clipping
        return Image.fromarray((a * 255.0 + 0.5).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.uint16:
        u8 = (a.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_:
        if not np.isfinite(a).all():
            raise ImageError("the image array contains NaN or infinite values")
        u8 = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image array dtype {a.dtype}; use uint8, uint16 or float in [0, 1]")
    return Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8)  # uint8: L, RGB or RGBA by the channels


def _from_tensor(t: torch.Tensor) -> Image.Image:
    """A (3,H,W) or (1,3,H,W) tensor in [-1, 1] (the library's convention), as an image."""
    if t.is_meta or not t.is_floating_point():
        raise ImageError(f"an image tensor must hold floating-point values in [-1, 1]; got {t.dtype} on {t.device}")
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ImageError(f"an image tensor must be (3,H,W) or (1,3,H,W) in [-1, 1]; got shape {tuple(t.shape)}")
    x01 = (t.detach().float().cpu().expand(3, -1, -1) * 0.5 + 0.5).permute(1, 2, 0).numpy()
    return _from_array(x01)


def _open(path: Path, name: str) -> Image.Image:
    """Open a file lazily (PIL reads only the header here); every failure is an ImageError in words."""
    if path.is_dir():
        raise ImageError(f"{name}: {path} is a folder, not an image file")
    if not path.exists():
        raise ImageError(f"{name}: file not found: {path}")
    if not path.is_file():
        raise ImageError(f"{name}: {path} is not a regular file")
    try:
        return Image.open(path)
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: cannot read {path.name} as an image: not a format PIL can decode "
                         "(PNG, JPEG, WebP, …)") from e
    except Image.DecompressionBombError as e:  # PIL's own cap (far above ours) refuses in open(): no W x H here
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found[1]) / 1e6:.1f} megapixels" if found else str(e)
        raise ImageError(f"{name} ({path.name}) has {size}; at most {MAX_PIXELS / 1e6:g} megapixels are accepted") from e
    except OSError as e:  # permissions, I/O errors
        raise ImageError(f"{name}: cannot open {path}: {e.strerror or e}") from e


def _decode(img: Image.Image, name: str) -> Image.Image:
    """Check the size (known from the header), then decode, then apply the EXIF orientation.

    A lazily opened file (``Image.open`` without ``load``) is decoded only here, so a truncated
    one fails here, and a decompression bomb never gets that far.
    """
    label = f"{name} ({Path(img.filename).name})" if getattr(img, "filename", "") else name
    if img.width * img.height > MAX_PIXELS:
        raise ImageError(f"{label} is {img.width}x{img.height} ({img.width * img.height / 1e6:.1f} megapixels); "
                         f"at most {MAX_PIXELS / 1e6:g} megapixels are accepted")
    try:
        img.load()
        return ImageOps.exif_transpose(img)
    except OSError as e:  # PIL: "image file is truncated", "cannot load this image", broken data streams
        raise ImageError(f"{label} is truncated or damaged: its pixels cannot be decoded (PIL: {e})") from e
    except ValueError as e:  # e.g. an image whose file was already closed
        raise ImageError(f"{label} cannot be read: {e}") from e


def _in_memory(image: object, name: str) -> Image.Image:
    """A PIL image, numpy array or tensor as a PIL image (not yet checked or decoded)."""
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    if isinstance(image, Image.Image):
        return image
    raise ImageError(f"{name}: expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")


def load_image(image: ImageInput | None, *, name: str = "image") -> Image.Image:
    """Decode and normalise one input to an 8-bit RGB PIL image, EXIF orientation applied."""
    if image is None:
        raise ImageError(f"no {name} was given")
    if isinstance(image, (str, os.PathLike)):
        with _open(Path(image), name) as opened:
            image = _decode(opened, name)
    else:
        image = _decode(_in_memory(image, name), name)
    if min(image.size) < MIN_SIDE:
        raise ImageError(f"{name} is {image.width}x{image.height}; each side must be at least {MIN_SIDE} pixels")
    try:
        return _to_rgb(image)
    except (ValueError, OSError) as e:  # a mode PIL cannot convert
        raise ImageError(f"{name}: cannot convert image mode {image.mode!r} to RGB ({e})") from e


def working_size(width: int, height: int, *, size: int, max_long_side: int, resize_mode: str,
                 multiple: int = 32) -> tuple[int, int]:
    """(W, H) the sampler runs at: short side ``size``, long side a multiple of ``multiple`` (the generator's,
    ``config.SIZE_MULTIPLE``) up to the cap; ``size`` and the cap are multiples of it already."""
    if resize_mode == "center_crop":
        return size, size
    short, long = min(width, height), max(width, height)
    long_out = min(max_long_side, max(size, round(long * size / short / multiple) * multiple))
    return (long_out, size) if width >= height else (size, long_out)


def output_size(width: int, height: int, *, size: int, max_long_side: int, resize_mode: str,
                multiple: int = 32) -> tuple[int, int]:
    """(W, H) returned to the user: the source's own aspect ratio at the working resolution."""
    w, h = working_size(width, height, size=size, max_long_side=max_long_side, resize_mode=resize_mode,
                        multiple=multiple)
    # the long side at the source's aspect, capped by the working one (so a center crop stays square)
    if width >= height:
        return min(w, round(width * h / height)), h
    return w, min(h, round(height * w / width))


def fit_to(img: Image.Image, width: int, height: int) -> Image.Image:
    """Cover (width, height) keeping aspect: scale, then crop the overflow evenly (fit's default centring)."""
    return ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1]."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(x: torch.Tensor, size: tuple[int, int] | None = None) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB images, optionally resized (Lanczos) to size=(W, H)."""
    u8 = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    images = [Image.fromarray(a) for a in u8]  # (H, W, 3) uint8: RGB
    if size is not None:
        images = [im if im.size == tuple(size) else im.resize(tuple(size), Image.Resampling.LANCZOS) for im in images]
    return images


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return vecs @ torch.diag_embed(vals.clamp_min(0).sqrt()) @ vecs.mT


def _cov(pix: torch.Tensor, eps: float) -> torch.Tensor:
    """Covariance of (3, N) pixels plus ε·I (added in place on the diagonal: no tensor to place on a
    device), so that a flat image's covariance stays invertible."""
    cov = torch.cov(pix)
    cov.diagonal().add_(eps)
    return cov


def colour_match_mkl(x: torch.Tensor, reference: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """Monge–Kantorovich linear colour transfer: give x the RGB mean and covariance of reference.

    T = A^-1/2 (A^1/2 B A^1/2)^1/2 A^-1/2 with A, B the covariances of x and reference
    (Pitié & Kokaram 2007); the reference's ``use_colormatch`` (MKL). Works per sample in float64.
    Args: x (B,3,H,W), reference (1 or B,3,h,w), both in the same value range.
    """
    out = []
    ref = reference.expand(x.shape[0], -1, -1, -1)
    for xi, ri in zip(x.double(), ref.double()):
        a_pix, b_pix = xi.flatten(1), ri.flatten(1)  # (3, N)
        mu_a, mu_b = a_pix.mean(1, keepdim=True), b_pix.mean(1, keepdim=True)
        cov_a, cov_b = _cov(a_pix, eps), _cov(b_pix, eps)
        a_half = _sqrtm_psd(cov_a)
        a_half_inv = torch.linalg.inv(a_half)
        t = a_half_inv @ _sqrtm_psd(a_half @ cov_b @ a_half) @ a_half_inv
        out.append((t @ (a_pix - mu_a) + mu_b).reshape(xi.shape))
    return torch.stack(out).to(x.dtype)
