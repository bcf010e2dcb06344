"""Image input: every mode and container becomes RGB, EXIF is honoured, bad input is an ImageError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dsct import images
from dsct.errors import ImageError


def _gradient(w: int, h: int) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    a[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return Image.fromarray(a)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "La", "RGBa", "L", "1", "P", "CMYK", "I;16", "I", "F", "YCbCr", "HSV", "LAB"])
def test_modes_become_rgb(mode):
    img = _gradient(40, 30)
    if mode == "I;16":
        src = Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257))
    elif mode == "F":
        src = Image.fromarray(np.asarray(img.convert("L"), np.float32) / 255.0)
    else:
        src = img.convert(mode)
    out = images.load_image(src)
    assert out.mode == "RGB" and out.size == (40, 30)
    grey = np.asarray(out.convert("L"), np.float64)
    assert grey.max() - grey.min() > 100  # contrast survives, 16-bit and float are rescaled


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert images.load_image(rgba).getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = _gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert images.load_image(path).size == (20, 40)


def test_arrays_and_tensors():
    a = np.random.default_rng(0).random((24, 32, 3))
    assert images.load_image(a).size == (32, 24)
    assert images.load_image((a * 65535).astype(np.uint16)).size == (32, 24)
    t = torch.rand(1, 3, 24, 32) * 2 - 1
    back = images.to_tensor(images.load_image(t))
    assert torch.allclose(back, t, atol=1 / 127.5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (None, "no source image"),
        (Image.new("RGB", (1, 1)), "at least 16"),
        (np.zeros((0, 5, 3), np.uint8), "at least 16"),
        (np.zeros((20, 20, 2), np.uint8), "shape"),
        (np.full((20, 20, 3), np.nan), "NaN"),
        ("/no/such/file.png", "not found"),
        (12, "expected a path"),
    ],
)
def test_bad_inputs(bad, match):
    with pytest.raises(ImageError, match=match):
        images.load_image(bad, name="source image")


def test_not_an_image_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="cannot read"):
        images.load_image(path)


@pytest.mark.parametrize(
    "wh, mode, work, out",
    [
        ((256, 256), "resize", (256, 256), (256, 256)),
        ((640, 480), "resize", (352, 256), (341, 256)),
        ((480, 640), "resize", (256, 352), (256, 341)),
        ((3000, 300), "resize", (448, 256), (448, 256)),  # long side capped
        ((640, 480), "center_crop", (256, 256), (256, 256)),
    ],
)
def test_working_and_output_sizes(wh, mode, work, out):
    kw = dict(size=256, max_long_side=448, resize_mode=mode)
    assert images.working_size(*wh, **kw) == work
    assert images.output_size(*wh, **kw) == out
    assert work[0] % 32 == 0 and work[1] % 32 == 0


def test_colour_match_gives_reference_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    mix = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.1, 0.0, 0.7]])
    ref = (mix @ torch.rand(3, 400, generator=g)).reshape(1, 3, 20, 20) + 0.2
    out = images.colour_match_mkl(x, ref)
    for k in range(2):
        o = out[k].flatten(1).double()
        assert torch.allclose(o.mean(1), ref[0].flatten(1).double().mean(1), atol=1e-5)
        assert torch.allclose(torch.cov(o), torch.cov(ref[0].flatten(1).double()), atol=1e-4)
