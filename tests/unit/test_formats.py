"""Output formats: PNG (8 and 16 bits), WebP and AVIF in ``imaging/encode.py``, and the
CVT extensions that use them (``CVT=png``, ``png16``, ``webp``, ``avif``), decoded and
compared with the same NumPy model as the CVT tests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image, features

from iipy.imaging import encode, render
from iipy.imaging.watermark import Watermark
from tests.unit.test_commands_extra import get, model_grey, model_level, smooth


def decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


@pytest.fixture
def rgb() -> np.ndarray:
    y, x = np.mgrid[0:60, 0:90]
    return np.stack([x * 2, y * 4, (x + y) % 256], axis=-1).astype(np.uint8)


def test_formats_follow_pillow():
    assert encode.FORMATS[:2] == ("jpg", "png")
    assert ("webp" in encode.FORMATS) == features.check("webp")
    assert ("avif" in encode.FORMATS) == features.check("avif")
    # this installation's Pillow has both (Pillow >= 11.3 wheels carry libavif)
    assert set(encode.FORMATS) == {"jpg", "png", "webp", "avif"}


def test_png_8_bit_is_exact_and_png_quality_is_the_compression_level(rgb):
    for pixels in (rgb, rgb[..., 1]):
        for level in (0, 1, 9):
            image = decode(encode.png(pixels, level))
            assert image.mode == ("RGB" if pixels.ndim == 3 else "L")
            assert np.array_equal(np.asarray(image), pixels)
    assert len(encode.png(rgb, 0)) > len(encode.png(rgb, 9))
    assert encode.png(rgb, 99) == encode.png(rgb, 9)  # clamped


def test_png_16_bit_keeps_every_bit():
    values = (np.arange(64 * 40, dtype=np.uint32) * 25).reshape(40, 64).astype(np.uint16)
    data = encode.png(values)
    assert data[24] == 16 and data[25] == 0  # IHDR: bit depth 16, grey
    image = decode(data)
    assert image.mode == "I;16"
    assert np.array_equal(np.asarray(image), values)
    with pytest.raises(ValueError):
        encode.png(np.zeros((4, 4, 3), np.uint16))


def test_webp_lossless_and_lossy(rgb):
    lossless = decode(encode.webp(rgb, -1))
    assert lossless.format == "WEBP" and np.array_equal(np.asarray(lossless), rgb)
    grey = decode(encode.webp(rgb[..., 0], -1))
    assert np.array_equal(np.asarray(grey)[..., 1], rgb[..., 0])  # stored as colour
    low, high = encode.webp(rgb, 10), encode.webp(rgb, 100)
    assert len(low) < len(high)
    assert np.abs(np.asarray(decode(high)).astype(int) - rgb).mean() < 3


def test_avif(rgb):
    image = decode(encode.avif(rgb, 90))
    assert image.format == "AVIF" and image.size == (90, 60)
    assert np.abs(np.asarray(image.convert("RGB")).astype(int) - rgb).mean() < 4
    grey = decode(encode.avif(rgb[..., 0], -1))  # monochrome, lossless quantiser
    assert np.array_equal(np.asarray(grey.convert("L")), rgb[..., 0])
    assert len(encode.avif(rgb, 5)) < len(encode.avif(rgb, 95))


def test_watermark_on_16_bit_output():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 10, 255
    wm = Watermark(rgba, 1.0, 1.0, lambda a, w, h: a)
    pixels = np.full((2, 2), 1000, np.uint16)
    wm.apply(pixels)
    assert (pixels == 1000 + 10 * 257).all()
    top = np.full((2, 2), 65500, np.uint16)
    wm.apply(top)
    assert (top == 65535).all()


# --- CVT --------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path):
    from iipy.protocols.router import Application
    from iipy.settings import Settings

    data = smooth(300, 200)
    fits.PrimaryHDU(data).writeto(tmp_path / "g.fits")
    cube = np.stack([data, data * 0.5, 130 - data]).astype(np.float32)
    fits.PrimaryHDU(cube).writeto(tmp_path / "c.fits")

    def make(**extra) -> Application:
        env = {"FILESYSTEM_PREFIX": str(tmp_path) + "/", "IIPY_CACHE_DIR": str(tmp_path / "c"),
               "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}
        env.update({k: str(v) for k, v in extra.items()})
        return Application(Settings.from_environ(env))
    make.data = data
    return make


def test_cvt_png16_on_one_channel(app):
    a = app()
    r = get(a, "FIF=g.fits&MINMAX=1:0,130&CVT=png16")
    assert r.header("Content-Type") == "image/png"
    assert r.header("Content-Disposition") == 'inline;filename="g.png"'
    got = np.asarray(decode(r.body)).astype(np.float64)
    assert got.shape == (200, 300)
    v = np.clip((model_level(app.data, 0) - 0) / 130, 0, 1)
    assert np.abs(got - np.trunc(v * 65535)).max() <= 2  # float32 against float64
    eight = np.asarray(decode(get(a, "FIF=g.fits&MINMAX=1:0,130&CVT=png").body)).astype(int)
    assert np.abs((got.astype(int) >> 8) - eight).max() <= 1
    assert len(np.unique(got)) > 4 * len(np.unique(eight))  # the low byte carries data
    # GAM, INV, CNT and a first CTW row, as in the 8-bit pipeline
    got = np.asarray(decode(get(a, "FIF=g.fits&MINMAX=1:0,130&GAM=0.5&INV&CNT=1.2&CTW=0.8"
                                   "&CVT=png16").body)).astype(np.float64)
    v = 1 - np.maximum(0.8 * model_level(app.data, 0) / 130, 0) ** 0.5
    assert np.abs(got - np.trunc(np.clip(v * 65535 * 1.2, 0, 65535))).max() <= 40


@pytest.mark.parametrize("query", ["FIF=g.fits&CMP=jet&CVT=png16", "FIF=c.fits&CVT=png16",
                                   "FIF=g.fits&COL=binary&CVT=png16"])
def test_cvt_png16_falls_back_to_8_bits(app, query):
    image = decode(get(app(), query).body)
    assert image.mode in ("RGB", "L")


@pytest.mark.parametrize("fmt,media,pil", [("webp", "image/webp", "WEBP"),
                                           ("avif", "image/avif", "AVIF"),
                                           ("PNG", "image/png", "PNG")])
def test_cvt_webp_avif(app, fmt, media, pil):
    a = app(WEBP_QUALITY=-1, AVIF_QUALITY=95)
    r = get(a, "FIF=c.fits&MINMAX=1:0,130&MINMAX=2:0,130&MINMAX=3:0,130&WID=150&CVT=" + fmt)
    assert r.header("Content-Type") == media
    assert r.header("Content-Disposition") == 'inline;filename="c.%s"' % fmt.lower()
    image = decode(r.body)
    assert image.format == pil and image.size == (150, 100)
    png = np.asarray(decode(get(a, "FIF=c.fits&MINMAX=1:0,130&MINMAX=2:0,130&MINMAX=3:0,130"
                                   "&WID=150&CVT=png").body)).astype(int)
    diff = np.abs(np.asarray(image.convert("RGB")).astype(int) - png)
    assert diff.mean() < 2.5, diff.mean()
    if fmt == "webp":
        assert diff.max() == 0  # WEBP_QUALITY=-1: lossless


def test_cvt_qualities_change_the_bytes_not_the_pixels(app):
    query = "FIF=g.fits&MINMAX=1:0,130&CVT=png"
    small, fast = get(app(PNG_QUALITY=9), query).body, get(app(PNG_QUALITY=0), query).body
    assert len(small) < len(fast)
    assert np.array_equal(np.asarray(decode(small)), np.asarray(decode(fast)))
    query = "FIF=g.fits&MINMAX=1:0,130&CVT=webp"
    assert len(get(app(WEBP_QUALITY=5), query).body) < len(get(app(WEBP_QUALITY=90), query).body)


def test_cvt_unknown_formats_stay_jpeg(app):
    for arg in ("jpeg", "JPG", "tiff", "png17", "gif"):
        assert get(app(), "FIF=g.fits&WID=20&CVT=" + arg).header("Content-Type") == "image/jpeg"


def test_renders_16bit():
    view = render.View()
    assert render.renders_16bit(view, 1) and render.renders_16bit(view, 2)
    assert not render.renders_16bit(view, 3)
    view.colour = "grey"
    assert render.renders_16bit(view, 1)
    view.colour = "binary"
    assert not render.renders_16bit(view, 1)
