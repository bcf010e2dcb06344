"""What the library refuses or normalises before any model runs: non-finite weights, unbounded
work, 16-bit data, EXIF orientation of PIL inputs, oversized images."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dsct import config as config_module
from dsct import images
from dsct.config import TEXT_PRESET
from dsct.errors import ConfigError, ImageError

FLOAT_FIELDS = [f.name for f in dataclasses.fields(config_module.TranslationConfig) if f.type == "float"]


def test_float_fields_are_the_weights_and_the_threshold():
    assert sorted(FLOAT_FIELDS) == sorted([f"lambda_{k}" for k in ("ssim", "contra", "div", "cls", "l2", "clip", "range", "id", "gt")]
                                          + ["restart_threshold", "eta_edit", "eta", "eta_boost", "inner_lr"])  # + AGG's


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_finite_weights_are_refused(name, value):
    with pytest.raises(ConfigError, match=name) as err:
        dataclasses.replace(TEXT_PRESET, **{name: value})
    assert err.value.field == name


@pytest.mark.parametrize("name, value", [("n_cuts", 10**6), ("max_restarts", 10**6), ("n_cuts", 65), ("max_restarts", 11)])
def test_n_cuts_and_max_restarts_are_bounded(name, value):
    with pytest.raises(ConfigError, match=name):
        dataclasses.replace(TEXT_PRESET, **{name: value})


def test_guided_evaluations_are_capped(monkeypatch):
    # The real cap (5000) is out of reach of the field ranges (≤ 999 + 50); a lower cap shows the check works.
    monkeypatch.setattr(config_module, "MAX_GUIDED_EVALUATIONS", 60)
    ok = dataclasses.replace(TEXT_PRESET, steps=60, skip=0, divergence_until=10, resample_repeats=1)  # 59 + 1
    assert ok.t_start + ok.resample_repeats == 60
    with pytest.raises(ConfigError, match="guided evaluations"):
        dataclasses.replace(ok, resample_repeats=2)


def _half_grey_16bit() -> np.ndarray:
    a = np.zeros((20, 40), np.uint16)
    a[:, 20:] = 128 * 257  # exactly 128/255 of the 16-bit range
    return a


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["pil", "png", "array"])
def test_16_bit_images_are_scaled_by_the_16_bit_range_not_their_maximum(kind, tmp_path):
    a = _half_grey_16bit()
    if kind == "array":
        source = a
    else:
        pil = Image.fromarray(a)
        assert pil.mode == "I;16"
        source = pil
        if kind == "png":
            source = tmp_path / "grey16.png"
            source.write_bytes(_png_bytes(pil))
    out = np.asarray(images.load_image(source), np.int32)
    assert out.shape == (20, 40, 3)
    assert np.abs(out[:, :20]).max() == 0
    assert np.abs(out[:, 20:] - 128).max() <= 1


def _exif_jpeg(orientation: int) -> bytes:
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_exif_orientation_is_applied_to_pil_inputs():
    opened = Image.open(io.BytesIO(_exif_jpeg(6)))  # 6: shown rotated 90° clockwise
    assert opened.size == (40, 20)
    out = images.load_image(opened)
    assert out.size == (20, 40)
    a = np.asarray(out, np.int32)
    assert a[5, 10, 0] > 200 and a[5, 10, 2] < 60  # the left (red) half is now on top
    assert a[35, 10, 2] > 200 and a[35, 10, 0] < 60


def _png_header_for(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of a huge size in a few KB: zlib shrinks its all-zero rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


SIDE = 8100  # 65.6 MP: above the 64 MP cap, below PIL's own decompression-bomb warning (89 MP)


def test_oversized_files_are_refused(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_for(SIDE, SIDE))
    assert Image.open(path).size == (SIDE, SIDE)
    with pytest.raises(ImageError, match="megapixels"):
        images.load_image(path)


def test_oversized_pil_images_are_refused():
    with pytest.raises(ImageError, match="megapixels"):
        images.load_image(Image.new("1", (SIDE, SIDE)))
