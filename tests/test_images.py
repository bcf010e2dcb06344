"""Image input: every mode and container becomes RGB, EXIF is honoured, bad input is an ImageError."""

from __future__ import annotations

import struct
import zlib

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
        (torch.zeros(3, 20, 20, dtype=torch.uint8), "floating-point values in \\[-1, 1\\]; got torch.uint8"),
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


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG with a valid IHDR (the size) and no pixel data: it opens, and fails to decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_a_folder_is_called_a_folder(tmp_path):
    folder = tmp_path / "x.png"
    folder.mkdir()
    with pytest.raises(ImageError) as err:
        images.load_image(folder, name="source image")
    assert str(err.value) == f"source image: {folder} is a folder, not an image file"


def test_truncated_file_is_reported_in_words_as_path_and_as_lazy_pil(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # noise does not compress: the cut falls inside the pixel data
    lazy = Image.open(path)  # header only: decoding happens inside load_image
    for image in (path, lazy):
        with pytest.raises(ImageError, match=r"^style image \(cut\.png\) is truncated or damaged: its pixels cannot be "
                                             r"decoded \(PIL: image file is truncated\)$"):
            images.load_image(image, name="style image")


def test_closed_pil_image_is_an_image_error(tmp_path):
    path = tmp_path / "closed.png"
    _gradient(32, 32).save(path)
    closed = Image.open(path)
    closed.close()
    with pytest.raises(ImageError, match=r"^image \(closed\.png\) cannot be read: Operation on closed image$"):
        images.load_image(closed)


def test_size_cap_is_read_from_the_header_before_decoding(tmp_path):
    """9000x8000 = 72.0 megapixels, over the 64 accepted: refused by size, not as a damaged file."""
    path = tmp_path / "huge.png"
    _png_header_only(path, 9000, 8000)
    for image in (path, Image.open(path)):
        with pytest.raises(ImageError) as err:
            images.load_image(image, name="source image")
        assert str(err.value) == "source image (huge.png) is 9000x8000 (72.0 megapixels); at most 64 megapixels are accepted"


def test_pil_decompression_bomb_gives_size_and_limit(tmp_path):
    """PIL itself refuses 20000x20000 (400 megapixels) in Image.open; the message keeps both numbers."""
    path = tmp_path / "bomb.png"
    _png_header_only(path, 20000, 20000)
    with pytest.raises(ImageError) as err:
        images.load_image(path, name="source image")
    assert str(err.value) == "source image (bomb.png) has 400.0 megapixels; at most 64 megapixels are accepted"


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
