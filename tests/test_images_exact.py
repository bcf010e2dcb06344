"""dsct.images to the pixel and to the word: decoded values by hand, sizes by hand, every message exact.

Expected pixel values are written out from the documented scalings (8-bit: as is; 16-bit: /257;
float: ×255; tensors: ×0.5+0.5; alpha: over white), rounded half up; sizes from SPEC §3's rule
(short side ``size``, long side a multiple of 32, capped). No model runs.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dsct import images
from dsct.errors import ImageError


def rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img, np.int64)


def grey_levels(img: Image.Image) -> np.ndarray:
    """The grey level of each pixel of an RGB image whose three channels must agree."""
    a = rgb(img)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return a[..., 0]


def error(image, name: str = "source image") -> str:
    with pytest.raises(ImageError) as err:
        images.load_image(image, name=name)
    return str(err.value)


def round_half_up(num: int, den: int) -> int:
    """floor(num / den + 1/2) in integers."""
    return (2 * num + den) // (2 * den)


# --- arrays ------------------------------------------------------------------------------------------

def test_uint16_arrays_are_divided_by_257():
    values = np.array([[0, 128, 129, 256, 257 * 128, 51529, 65535, 65406, 65407] * 2] * 16, np.uint16)
    want = [round_half_up(int(v), 257) for v in values[0]]
    assert want[:9] == [0, 0, 1, 1, 128, 201, 255, 254, 255]
    np.testing.assert_array_equal(grey_levels(images.load_image(values)), np.array([want] * 16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_arrays_are_scaled_by_255_and_clipped(dtype):
    values = np.array([[-0.5, 0.0, 0.001, 0.002, 0.5, 1.0, 1.5, 2.0] * 2] * 16, dtype)
    want = [0, 0, 0, 1, 128, 255, 255, 255]  # 0.002·255 = 0.51 rounds up; 0.5·255 = 127.5 rounds up
    np.testing.assert_array_equal(grey_levels(images.load_image(values)), np.array([want * 2] * 16))


def test_bool_arrays_are_black_and_white():
    a = np.zeros((16, 16), bool)
    a[:, 8:] = True
    np.testing.assert_array_equal(grey_levels(images.load_image(a)), np.where(a, 255, 0))


def test_uint8_arrays_in_every_layout():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(grey_levels(images.load_image(grey)), grey)
    np.testing.assert_array_equal(grey_levels(images.load_image(grey[..., None])), grey)
    colour = np.stack([grey, 255 - grey, np.full_like(grey, 7)], axis=-1)
    np.testing.assert_array_equal(rgb(images.load_image(colour)), colour)


def test_rgba_arrays_are_put_on_white():
    a = np.zeros((16, 16, 4), np.uint8)
    a[..., :3] = (200, 100, 0)
    a[:, :8, 3] = 255  # left opaque, right transparent
    out = rgb(images.load_image(a))
    assert (out[:, :8] == (200, 100, 0)).all() and (out[:, 8:] == 255).all()


def test_array_errors_in_words():
    assert error(np.zeros((20, 20, 2), np.uint8)) == \
        "an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape (20, 20, 2)"
    assert error(np.zeros((20, 20, 5), np.uint8)) == \
        "an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape (20, 20, 5)"
    assert error(np.zeros((1, 20, 20, 3), np.uint8)) == \
        "an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape (1, 20, 20, 3)"
    assert error(np.zeros(20, np.uint8)) == "an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape (20,)"
    for bad in (np.nan, np.inf, -np.inf):
        a = np.zeros((20, 20, 3))
        a[3, 4, 1] = bad
        assert error(a) == "the image array contains NaN or infinite values"
    assert error(np.zeros((20, 20, 3), np.int32)) == "unsupported image array dtype int32; use uint8, uint16 or float in [0, 1]"
    assert error(np.zeros((20, 20), np.complex64)) == \
        "unsupported image array dtype complex64; use uint8, uint16 or float in [0, 1]"


# --- tensors -------------------------------------------------------------------------------------------

def test_tensors_map_minus_one_to_black_and_one_to_white():
    row = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, -3.0, 0.002])
    # ×0.5+0.5, then ×255 rounded half up: 0 → 127.5 → 128, 0.5 → 191.25, 0.002 → 127.755
    want = np.array([0, 64, 128, 191, 255, 255, 0, 128] * 2)
    t = row.repeat(2).expand(16, 16)
    for shape in [(1, 16, 16), (1, 1, 16, 16)]:  # grey tensors, with and without the batch axis
        np.testing.assert_array_equal(grey_levels(images.load_image(t.reshape(shape))), np.stack([want] * 16))
    colour = torch.stack([t, -t, torch.zeros_like(t)])  # (3, H, W): channel order R, G, B
    for tensor in (colour, colour[None], colour.requires_grad_(True), colour.to(torch.bfloat16)):
        out = rgb(images.load_image(tensor))
        np.testing.assert_array_equal(out[..., 0], np.stack([want] * 16))
        assert (out[..., 2] == 128).all()
    flipped = rgb(images.load_image(-colour.detach()))  # R = -t, G = t
    assert tuple(flipped[0, 0]) == (255, 0, 128)


def test_tensor_errors_in_words():
    assert error(torch.zeros(3, 20, 20, dtype=torch.uint8)) == \
        "an image tensor must hold floating-point values in [-1, 1]; got torch.uint8 on cpu"
    assert error(torch.zeros(3, 20, 20, device="meta")) == \
        "an image tensor must hold floating-point values in [-1, 1]; got torch.float32 on meta"
    for shape in [(2, 20, 20), (4, 20, 20), (2, 3, 20, 20), (20, 20), (1, 1, 3, 20, 20)]:
        assert error(torch.zeros(shape)) == \
            f"an image tensor must be (3,H,W) or (1,3,H,W) in [-1, 1]; got shape {shape}"


# --- PIL modes -------------------------------------------------------------------------------------------

def _pil_16(mode: str, values: np.ndarray) -> Image.Image:
    img = Image.new(mode, (values.shape[1], values.shape[0]))
    for y, x in np.ndindex(values.shape):
        img.putpixel((x, y), int(values[y, x]))
    return img


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N"])
def test_16_bit_modes_use_the_16_bit_range(mode):
    values = np.array([[0, 257 * 128, 51529, 65535] * 4] * 16)
    img = _pil_16(mode, values)
    assert img.mode == mode
    want = [round_half_up(int(v), 65535 // 255) for v in values[0]]  # 65535 / 255 = 257
    assert want[:4] == [0, 128, 201, 255]
    np.testing.assert_array_equal(grey_levels(images.load_image(img)), np.array([want] * 16))


def test_16_bit_images_with_tiny_values_stay_black():
    img = _pil_16("I;16", np.array([[0, 1] * 8] * 16))  # 1/65535 of the range, not the image's own maximum
    assert (grey_levels(images.load_image(img)) == 0).all()


def test_32_bit_integer_images_use_their_own_maximum():
    values = np.array([[-1000, -5, 0, 250, 500, 999, 1000] * 3] * 16)
    img = _pil_16("I", values)
    want = [0, 0, 0, 64, 128, 255, 255]  # v/1000·255: 63.75 → 64, 127.5 → 128, 254.7 → 255; negatives → 0
    np.testing.assert_array_equal(grey_levels(images.load_image(img)), np.array([want * 3] * 16))
    ones = _pil_16("I", np.array([[0, 1] * 8] * 16))  # a maximum of 1 is the full range
    np.testing.assert_array_equal(grey_levels(images.load_image(ones)), np.array([[0, 255] * 8] * 16))
    zeros = Image.new("I", (16, 16), 0)  # all black, no division by zero
    assert (grey_levels(images.load_image(zeros)) == 0).all()


def test_float_images_in_0_1_as_is_and_larger_ones_by_their_maximum():
    small = Image.fromarray(np.array([[0.0, 0.25, 0.5, 0.75] * 4] * 16, np.float32))
    assert small.mode == "F"
    np.testing.assert_array_equal(grey_levels(images.load_image(small)), np.array([[0, 64, 128, 191] * 4] * 16))
    large = Image.fromarray(np.array([[0.0, 1.0, 2.0, 4.0] * 4] * 16, np.float32))
    np.testing.assert_array_equal(grey_levels(images.load_image(large)), np.array([[0, 64, 128, 255] * 4] * 16))
    just_over = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0] * 4] * 16, np.float32))  # a maximum of 2 is the top
    np.testing.assert_array_equal(grey_levels(images.load_image(just_over)), np.array([[0, 64, 128, 255] * 4] * 16))


def test_float_images_are_scaled_in_double_precision():
    # float32 values just below a rounding tie k + 1/2 (of 255 levels): exactly, they round down
    below = [np.nextafter(np.float32((k + 0.5) / 255), np.float32(0)) for k in (0, 128, 200)]
    assert [float(v) * 255 % 1 < 0.5 for v in below] == [True] * 3
    want = [int(float(v) * 255 + 0.5) for v in below]
    assert want == [0, 128, 200]
    img = Image.fromarray(np.array([below * 6] * 16, np.float32)[:, :16])
    np.testing.assert_array_equal(grey_levels(images.load_image(img)), np.array([(want * 6)[:16]] * 16))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "La", "RGBa", "PA"])
def test_transparent_pixels_become_white_and_opaque_ones_keep_their_colour(mode):
    a = np.zeros((16, 16, 4), np.uint8)
    a[..., :3] = (90, 90, 90)
    a[:, :8, 3] = 255
    rgba = Image.fromarray(a, "RGBA")
    img = rgba.convert("LA").convert("La") if mode == "La" else rgba.convert(mode)  # PIL's RGBA → La drops alpha
    assert img.mode == mode
    out = rgb(images.load_image(img))
    assert (out[:, :8] == 90).all() and (out[:, 8:] == 255).all()


def test_palette_transparency_becomes_white():
    p = Image.new("P", (16, 16), 0)
    p.putpalette([10, 20, 30, 200, 100, 0] + [0, 0, 0] * 254)
    p.paste(1, (8, 0, 16, 16))
    assert (rgb(images.load_image(p))[:, 8:] == (200, 100, 0)).all()  # no transparency: the palette colour
    p.info["transparency"] = 1
    out = rgb(images.load_image(p))
    assert (out[:, :8] == (10, 20, 30)).all() and (out[:, 8:] == 255).all()


@pytest.mark.parametrize("mode, key, other", [("RGB", (1, 2, 3), (200, 100, 50)), ("L", 7, 90), ("1", 0, 255)])
def test_colour_key_transparency_of_pngs_becomes_white(mode, key, other, tmp_path):
    """A PNG's tRNS chunk makes one colour transparent in RGB, grey and 1-bit images too."""
    img = Image.new(mode, (16, 16), key)
    img.paste(other, (0, 0, 8, 16))
    path = tmp_path / "keyed.png"
    img.save(path, transparency=key)
    assert Image.open(path).info["transparency"] == key
    out = rgb(images.load_image(path))
    assert (out[:, 8:] == 255).all()  # the key colour is transparent
    want = other if mode == "RGB" else (other,) * 3
    assert (out[:, :8] == want).all()
    plain = tmp_path / "plain.png"
    img.save(plain)  # the same pixels without the key keep their colour
    kept = {"RGB": key, "L": (7, 7, 7), "1": (0, 0, 0)}[mode]
    assert (rgb(images.load_image(plain))[:, 8:] == kept).all()


def test_rgb_and_other_modes_keep_their_colours():
    a = np.zeros((16, 16, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 200, 100, 50
    src = Image.fromarray(a)
    np.testing.assert_array_equal(rgb(images.load_image(src)), a)
    np.testing.assert_array_equal(rgb(images.load_image(src.convert("L"))), np.full((16, 16, 3), 124))  # ITU-R 601-2 luma


# --- files -----------------------------------------------------------------------------------------------

def _png_header_only(path, width: int, height: int) -> None:
    """A PNG with a valid IHDR (the size) and no pixel data: it opens, and fails to decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_file_errors_in_words(tmp_path):
    missing = tmp_path / "gone.png"
    assert error(missing) == f"source image: file not found: {missing}"
    assert error(str(missing), name="style image") == f"style image: file not found: {missing}"
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"no image here")
    assert error(junk) == "source image: cannot read junk.jpg as an image: not a format PIL can decode (PNG, JPEG, WebP, …)"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_a_fifo_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert error(fifo) == f"source image: {fifo} is not a regular file"


def test_os_errors_give_the_reason_in_words(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.new("RGB", (16, 16)).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.Image, "open", refuse)
    assert error(path) == f"source image: cannot open {path}: Permission denied"

    def broken(*args, **kwargs):
        raise OSError("the disk went away")

    monkeypatch.setattr(images.Image, "open", broken)
    assert error(path) == f"source image: cannot open {path}: the disk went away"


def test_decompression_bomb_megapixels_to_one_decimal(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 14092, 14196)  # 200 050 032 pixels: 200.05003 megapixels
    assert error(path) == "source image (bomb.png) has 200.1 megapixels; at most 64 megapixels are accepted"


def test_decompression_bomb_with_other_wording_keeps_pils_words(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 32, 32)

    def bomb(*args, **kwargs):
        raise Image.DecompressionBombError("too big for PIL")

    monkeypatch.setattr(images.Image, "open", bomb)
    assert error(path) == "source image (bomb.png) has too big for PIL; at most 64 megapixels are accepted"


def test_the_pixel_cap_is_inclusive(tmp_path):
    at_cap, over = tmp_path / "cap.png", tmp_path / "over.png"
    _png_header_only(at_cap, 8000, 8000)  # exactly 64 000 000: accepted, then fails to decode (no pixel data)
    _png_header_only(over, 8000, 8001)
    assert error(at_cap).startswith("source image (cap.png) is truncated or damaged: its pixels cannot be decoded (PIL: ")
    assert error(over) == "source image (over.png) is 8000x8001 (64.0 megapixels); at most 64 megapixels are accepted"
    assert error(Image.new("1", (8100, 8100)), name="image") == \
        "image is 8100x8100 (65.6 megapixels); at most 64 megapixels are accepted"


def test_sides_of_16_pixels_are_enough():
    assert images.load_image(Image.new("RGB", (16, 16))).size == (16, 16)
    assert images.load_image(Image.new("RGB", (16, 40))).size == (16, 40)
    assert error(Image.new("RGB", (15, 40)), name="style image") == "style image is 15x40; each side must be at least 16 pixels"
    assert error(Image.new("RGB", (40, 15))) == "source image is 40x15; each side must be at least 16 pixels"


def test_other_inputs_in_words():
    assert error(None) == "no source image was given"
    with pytest.raises(ImageError) as err:
        images.load_image(None)
    assert str(err.value) == "no image was given"
    assert error(3.5) == "source image: expected a path, PIL image, numpy array or tensor, got float"
    assert error([[0, 1]]) == "source image: expected a path, PIL image, numpy array or tensor, got list"


def test_paths_as_str_and_pathlike_give_the_same_pixels(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(a).save(path)
    for source in (path, str(path)):
        np.testing.assert_array_equal(rgb(images.load_image(source)), a)


# --- sizes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wh, size, cap, work, out", [
    ((640, 480), 256, 448, (352, 256), (341, 256)),  # 640·256/480 = 341.3 → 10.67·32 → 11·32
    ((480, 640), 256, 448, (256, 352), (256, 341)),
    ((700, 480), 256, 448, (384, 256), (373, 256)),  # 373.3 → 11.67·32 → 12·32; returned at 373
    ((600, 480), 256, 448, (320, 256), (320, 256)),  # 320 exactly
    ((610, 480), 256, 448, (320, 256), (320, 256)),  # 325.3 → 320 (round down), returned at ≤ 320
    ((3000, 300), 256, 448, (448, 256), (448, 256)),  # capped
    ((300, 3000), 256, 448, (256, 448), (256, 448)),
    ((500, 500), 256, 448, (256, 256), (256, 256)),
    ((257, 256), 256, 448, (256, 256), (256, 256)),
    ((64, 90), 64, 128, (64, 96), (64, 90)),  # 90/32 = 2.8 → 96, returned at 90
    ((90, 64), 64, 128, (96, 64), (90, 64)),
])
def test_working_and_output_sizes_by_hand(wh, size, cap, work, out):
    kw = dict(size=size, max_long_side=cap, resize_mode="resize")
    assert images.working_size(*wh, **kw) == work
    assert images.output_size(*wh, **kw) == out


def test_center_crop_is_square_at_the_short_side():
    for wh in [(640, 480), (480, 640), (100, 100)]:
        kw = dict(size=96, max_long_side=128, resize_mode="center_crop")
        assert images.working_size(*wh, **kw) == (96, 96)
        assert images.output_size(*wh, **kw) == (96, 96)


def test_fit_to_scales_then_crops_the_middle():
    a = np.zeros((64, 128, 3), np.uint8)
    a[:, :32], a[:, 32:96], a[:, 96:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    wide = Image.fromarray(a)
    green = np.broadcast_to(np.array([0, 255, 0]), (32, 32, 3))
    inner = np.s_[2:-2, 2:-2]  # Lanczos reads a few pixels past the crop: the outer columns ring
    assert np.abs(rgb(images.fit_to(wide, 32, 32))[inner] - green[inner]).max() <= 2
    tall = wide.transpose(Image.Transpose.ROTATE_90)  # 64 wide, 128 high: the middle rows are green
    assert images.fit_to(tall, 32, 32).size == (32, 32)
    assert np.abs(rgb(images.fit_to(tall, 32, 32))[inner] - green[inner]).max() <= 2
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    assert images.fit_to(noise, 20, 20).tobytes() == noise.resize((20, 20), Image.Resampling.LANCZOS).tobytes()


# --- tensors in and out ----------------------------------------------------------------------------------

def test_to_tensor_by_hand():
    a = np.zeros((2, 3, 3), np.uint8)
    a[0, 0] = (0, 51, 255)
    a[1, 2] = (102, 204, 153)
    t = images.to_tensor(Image.fromarray(a))
    assert t.shape == (1, 3, 2, 3) and t.dtype == torch.float32 and t.is_contiguous()
    torch.testing.assert_close(t[0, :, 0, 0], torch.tensor([-1.0, -0.6, 1.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(t[0, :, 1, 2], torch.tensor([-0.2, 0.6, 0.2]), rtol=0, atol=1e-6)
    grey = images.to_tensor(Image.fromarray(np.full((2, 2), 255, np.uint8)))  # an L image becomes 3 channels
    assert grey.shape == (1, 3, 2, 2) and (grey == 1).all()


def test_to_pil_by_hand():
    row = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.2, 1.0, 3.0])
    # (x+1)·127.5 after clamping: 0, 0, 63.75 → 64, 127.5 → 128 (ties to even), 153, 255, 255
    want = np.array([0, 0, 64, 128, 153, 255, 255])
    x = torch.stack([row.expand(4, 7), -row.expand(4, 7), torch.zeros(4, 7)])[None].repeat(2, 1, 1, 1)
    x[1] = x[1].flip(0)
    out = images.to_pil(x.requires_grad_(True))
    assert len(out) == 2 and all(im.size == (7, 4) and im.mode == "RGB" for im in out)
    a, b = rgb(out[0]), rgb(out[1])
    np.testing.assert_array_equal(a[..., 0], np.stack([want] * 4))
    np.testing.assert_array_equal(a[..., 2], np.full((4, 7), 128))
    np.testing.assert_array_equal(b[..., 2], np.stack([want] * 4))  # channels of the second sample reversed
    assert images.to_pil(x.to(torch.bfloat16))[0].size == (7, 4)


def test_to_pil_resizes_with_lanczos_only_when_asked():
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain = images.to_pil(x)[0]
    same = images.to_pil(x, (48, 32))[0]
    assert same.tobytes() == plain.tobytes()
    resized = images.to_pil(x, (30, 20))[0]
    assert resized.size == (30, 20)
    assert resized.tobytes() == plain.resize((30, 20), Image.Resampling.LANCZOS).tobytes()
    assert images.to_pil(x, [30, 20])[0].size == (30, 20)


# --- colour matching -------------------------------------------------------------------------------------

def _hadamard_image(scales, means) -> torch.Tensor:
    """(1,3,2,2): channel c = means[c] + scales[c]·h_c with h_c orthogonal, zero-mean ±1 patterns,
    so the RGB covariance is diag(scales²·4/3) exactly (unbiased, N = 4)."""
    h = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)
    s, m = torch.tensor(scales, dtype=torch.float64), torch.tensor(means, dtype=torch.float64)
    return (m[:, None] + s[:, None] * h).reshape(1, 3, 2, 2)


def test_colour_match_diagonal_case_by_hand():
    eps = 1e-5
    x = _hadamard_image([0.1, 0.2, 0.4], [0.0, -0.2, 0.3])
    ref = _hadamard_image([0.3, 0.05, 0.4], [0.5, 0.1, -0.4])
    h = (x - torch.tensor([0.0, -0.2, 0.3], dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        [0.1, 0.2, 0.4], dtype=torch.float64).view(1, 3, 1, 1)
    var_x = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64) ** 2 * 4 / 3 + eps
    var_r = torch.tensor([0.3, 0.05, 0.4], dtype=torch.float64) ** 2 * 4 / 3 + eps
    gain = (var_r / var_x).sqrt()  # diagonal MKL map: T = sqrt(B/A) per channel
    want = torch.tensor([0.5, 0.1, -0.4], dtype=torch.float64).view(1, 3, 1, 1) + \
        (gain * torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)).view(1, 3, 1, 1) * h
    got = images.colour_match_mkl(x, ref)
    assert got.dtype == torch.float64 and got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # without the regulariser the diagonal map reproduces the reference exactly (same ±1 patterns)
    torch.testing.assert_close(images.colour_match_mkl(x, ref, eps=0.0), ref, rtol=0, atol=1e-10)


def test_colour_match_map_is_the_symmetric_one():
    """Mean and covariance fix T only up to a rotation; MKL is the symmetric positive definite T with
    T A T = B. Checked against an eigendecomposition done here in numpy."""
    g = torch.Generator().manual_seed(3)
    mix_a = torch.tensor([[1.0, 0.4, 0.1], [0.0, 0.8, 0.3], [0.2, 0.0, 0.6]], dtype=torch.float64)
    mix_b = torch.tensor([[0.5, 0.0, 0.2], [0.3, 1.2, 0.0], [0.0, 0.1, 0.4]], dtype=torch.float64)
    xa = (mix_a @ torch.rand(3, 64, generator=g, dtype=torch.float64)).reshape(1, 3, 8, 8)
    rb = (mix_b @ torch.rand(3, 100, generator=g, dtype=torch.float64)).reshape(1, 3, 10, 10) + 0.3
    eps = 1e-5

    def sqrtm(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(w)) @ v.T

    pa, pb = xa.reshape(3, -1).numpy(), rb.reshape(3, -1).numpy()
    a = np.cov(pa) + eps * np.eye(3)
    b = np.cov(pb) + eps * np.eye(3)
    ah = sqrtm(a)
    ahi = np.linalg.inv(ah)
    t = ahi @ sqrtm(ah @ b @ ah) @ ahi
    want = t @ (pa - pa.mean(1, keepdims=True)) + pb.mean(1, keepdims=True)
    got = images.colour_match_mkl(xa.float(), rb.float())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.reshape(3, -1).double().numpy(), want, rtol=0, atol=1e-5)


def test_colour_match_per_sample_with_one_or_many_references():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 6, 6, generator=g, dtype=torch.float64)
    refs = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64).view(1, 3, 1, 1)
    each = images.colour_match_mkl(x, refs)
    shared = images.colour_match_mkl(x, refs[:1])
    assert each.shape == shared.shape == x.shape
    for k in range(4):
        torch.testing.assert_close(each[k:k + 1], images.colour_match_mkl(x[k:k + 1], refs[k:k + 1]))
        torch.testing.assert_close(shared[k:k + 1], images.colour_match_mkl(x[k:k + 1], refs[:1]))
        o = each[k].flatten(1)
        torch.testing.assert_close(o.mean(1), refs[k].flatten(1).mean(1), rtol=0, atol=1e-12)


def test_sqrtm_of_a_psd_matrix_by_hand():
    c = torch.tensor([[4.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(images._sqrtm_psd(c), torch.diag(torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64)))
    rot = torch.tensor([[0.6, -0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    s = rot @ torch.diag(torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)) @ rot.T
    r = images._sqrtm_psd(s)
    torch.testing.assert_close(r @ r, s)
    torch.testing.assert_close(r, rot @ torch.diag(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)) @ rot.T)
    tiny_negative = torch.diag(torch.tensor([-1e-12, 1.0, 4.0], dtype=torch.float64))  # round-off below zero: treated as 0
    torch.testing.assert_close(images._sqrtm_psd(tiny_negative), torch.diag(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)))


def test_megapixels_in_the_message_are_rounded_from_the_exact_count(tmp_path):
    path = tmp_path / "big.png"
    _png_header_only(path, 7388, 8683)  # 64 150 004 pixels: 64.150004 megapixels, just above a rounding tie
    assert error(path) == "source image (big.png) is 7388x8683 (64.2 megapixels); at most 64 megapixels are accepted"


def test_a_mode_pil_cannot_convert_is_named(monkeypatch):
    real = Image.Image.convert

    def convert(self, mode=None, *args, **kwargs):
        if self.mode == "HSV":
            raise ValueError("conversion from HSV to RGB not supported")
        return real(self, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", convert)
    assert error(Image.new("HSV", (16, 16)), name="style image") == \
        "style image: cannot convert image mode 'HSV' to RGB (conversion from HSV to RGB not supported)"
