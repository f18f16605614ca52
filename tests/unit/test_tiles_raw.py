"""Full-resolution tiles rendered straight from the raw samples (``render.render_raw``):
the same pixels as the float32 window rendered, and the path the tile requests take."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from iipy.imaging import render
from iipy.imaging.geometry import Grid
from iipy.imaging.paths import resolve
from iipy.imaging.pyramid import Pyramid
from iipy.imaging.render import View
from iipy.imaging.sources.fits import FitsImage
from iipy.protocols.router import Application
from iipy.settings import Settings

VIEWS = [View(), View(gamma=0.4545), View(cmap=3, invert=True, contrast=1.5),
         View(minmax={0: (90.0, 120.0)}, gamma=2.0),
         View(ctw=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
         View(colour="binary")]


def _settings(tmp_path) -> Settings:
    return Settings.from_environ({"FILESYSTEM_PREFIX": str(tmp_path) + "/",
                                  "IIPY_CACHE_DIR": str(tmp_path / "cache"),
                                  "MEMCACHED_SERVERS": "", "VERBOSITY": "0"})


@pytest.mark.parametrize("kind", ["float32", "int16_blank", "cube"])
def test_raw_tiles_equal_window_tiles(tmp_path, kind) -> None:
    rng = np.random.default_rng(3)
    if kind == "float32":
        hdu = fits.PrimaryHDU(rng.normal(100, 5, (300, 280)).astype(np.float32))
        hdu.data[10:20, 30:40] = np.nan
    elif kind == "int16_blank":
        hdu = fits.PrimaryHDU(rng.integers(-100, 3000, (300, 280)).astype(np.int16),
                              do_not_scale_image_data=True)
        hdu.data[5:9] = -32768
        hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = 0.05, 90.0, -32768
    else:
        hdu = fits.PrimaryHDU(rng.normal(100, 5, (3, 300, 280)).astype(">f8"))
    hdu.writeto(tmp_path / "img.fits")
    settings = _settings(tmp_path)
    image = FitsImage(resolve("img.fits", settings))
    p = Pyramid(image, Grid(image.width, image.height, 128, 128), settings.cache_dir)
    p.ensure()
    for x, y, w, h in [(0, 0, 128, 128), (128, 256, 128, 44), (256, 128, 24, 128)]:
        raw = p.raw_window(0, x, y, w, h)
        assert raw is not None and raw.samples.shape == (image.channels, h, w)
        for view in VIEWS:
            want = render.render(p.window(0, x, y, w, h), view, p.ranges)
            np.testing.assert_array_equal(render.render_raw(raw, view, p.ranges), want)
    assert p.raw_window(1, 0, 0, 64, 64) is None  # reduced levels are float32 already
    p.close()
    image.close()


def test_compressed_data_has_no_raw_window(tmp_path) -> None:
    data = np.random.default_rng(4).normal(100, 5, (200, 150)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(tmp_path / "c.fits")
    image = FitsImage(resolve("c.fits", _settings(tmp_path)))
    assert image.raw_window(0, 0, 64, 64) is None
    image.close()


def test_full_resolution_tiles_take_the_raw_path(tmp_path, monkeypatch) -> None:
    data = np.random.default_rng(5).normal(100, 5, (600, 520)).astype(np.float32)
    fits.PrimaryHDU(data).writeto(tmp_path / "img.fits")
    app = Application(_settings(tmp_path))
    q = "FIF=img.fits&GAM=0.4545&CTW=1;1;1&JTL=%d,%d"
    before = app.handle({"QUERY_STRING": q % (2, 5)}).body  # full resolution
    app.handle({"QUERY_STRING": q % (0, 0)})  # the pyramid is built
    original = Pyramid.window
    levels_read = []

    def spy(self, k, *args):
        levels_read.append(k)
        return original(self, k, *args)

    monkeypatch.setattr(Pyramid, "window", spy)
    app2 = Application(_settings(tmp_path))
    r = app2.handle({"QUERY_STRING": q % (2, 5)})
    assert r.status == 200 and r.body == before
    assert levels_read == []  # full resolution: no float32 window
    assert app2.handle({"QUERY_STRING": q % (1, 1)}).status == 200
    assert levels_read == [1]  # a reduced level is float32 already
    # SHD needs the float32 window and its margin
    assert app2.handle({"QUERY_STRING": "FIF=img.fits&SHD=30,60&JTL=2,5"}).status == 200
    assert levels_read == [1, 0]
