"""The streaming build of a pyramid: every level, written band by band from one pass over
the raw samples, equals the levels binned one by one from the whole float32 image, bit for
bit, whatever the sizes (odd heights at every level), the bands, the sample type and the
channels, on disk and in memory."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from astropy.io import fits

from iipy.imaging import kernels
from iipy.imaging import pyramid as pyramid_module
from iipy.imaging.geometry import Grid
from iipy.imaging.paths import resolve
from iipy.imaging.display import Policy
from iipy.imaging.pyramid import Pyramid
from iipy.imaging.sources.fits import FitsImage, robust_range
from iipy.settings import Settings


def expected(image: FitsImage, nlevels: int) -> list[np.ndarray]:
    """Levels 1..n of every channel: the whole image converted, then binned level by level
    with the NumPy twins."""
    out = [[] for _ in range(nlevels)]
    for c in range(image.channels):
        level = image.read(c, 0, 0, image.width, image.height)
        for k in range(nlevels):
            level = kernels.reference.bin2x2(level)
            out[k].append(level)
    return [np.stack(planes) for planes in out]


def sampled_range(image: FitsImage, c: int) -> tuple[float, float]:
    """The display range from the rows and columns of the sampling grid."""
    step_y = max(1, image.height // pyramid_module.STAT_ROWS)
    step_x = max(1, image.width // pyramid_module.STAT_COLS)
    full = image.read(c, 0, 0, image.width, image.height)
    r = robust_range(full[::step_y, ::step_x].reshape(-1))
    return r.lo, r.hi


def build(tmp_path, hdu: fits.ImageHDU | fits.PrimaryHDU, cache: str | None = "cache"
          ) -> tuple[Pyramid, FitsImage]:
    hdu.writeto(tmp_path / "img.fits", overwrite=True)
    settings = Settings.from_environ({
        "FILESYSTEM_PREFIX": str(tmp_path) + "/",
        "IIPY_CACHE_DIR": str(tmp_path / cache) if cache else "/proc/no-such-dir"})
    image = FitsImage(resolve("img.fits", settings))
    # the mad policy: its sample is the grid's rows, which the streaming must hand over
    # (test_display_policies.py checks that stiff sees every sample in file order)
    p = Pyramid(image, Grid(image.width, image.height, 64, 64), settings.cache_dir,
                policy=Policy("mad"))
    p.ensure()
    return p, image


def whole(p: Pyramid, k: int) -> np.ndarray:
    """Level k as the requests read it (level 1 of an uncompressed image is binned per
    request from the raw samples, not stored)."""
    w, h = p.grid.level_size(k)
    return p.window(k, 0, 0, w, h)


def check(p: Pyramid, image: FitsImage) -> None:
    want = expected(image, len(p.levels))
    assert [lv.shape for lv in p.levels if lv is not None] == [
        w.shape for w, lv in zip(want, p.levels) if lv is not None]
    for k, exp in enumerate(want, start=1):
        got = whole(p, k)
        assert got.shape == exp.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, exp, strict=False)
    for c in range(image.channels):
        assert (p.ranges[c].lo, p.ranges[c].hi) == sampled_range(image, c)


def sky(rng, shape) -> np.ndarray:
    a = rng.normal(100, 5, shape).astype(np.float32)
    a.reshape(-1)[rng.integers(0, a.size, a.size // 50)] = np.nan
    return a


@pytest.mark.parametrize("band_rows", [2, 6, 64])
@pytest.mark.parametrize("shape", [(1061, 983), (515, 700), (256, 1030)])
def test_streamed_levels_equal_the_levels_binned_whole(tmp_path, monkeypatch, band_rows,
                                                       shape) -> None:
    monkeypatch.setattr(pyramid_module, "BAND_BYTES", 8 * shape[1] * band_rows)
    rng = np.random.default_rng(shape[0] + band_rows)
    data = sky(rng, shape)
    data[: 2 * band_rows + 1] = np.nan  # blank rows across band edges
    p, image = build(tmp_path, fits.PrimaryHDU(data))
    assert p.on_disk and p.levels[0] is None
    assert all(isinstance(lv, np.memmap) for lv in p.levels[1:])
    check(p, image)
    p.close()


def test_cube_channels_and_big_endian_doubles(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pyramid_module, "BAND_BYTES", 8 * 300 * 10)
    rng = np.random.default_rng(3)
    cube = np.stack([sky(rng, (333, 300)) * (k + 1) for k in range(3)]).astype(">f8")
    p, image = build(tmp_path, fits.PrimaryHDU(cube))
    assert whole(p, 1).shape == (3, 166, 150)
    check(p, image)
    p.close()


def test_scaled_integers_with_blank(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pyramid_module, "BAND_BYTES", 8 * 401 * 4)
    rng = np.random.default_rng(4)
    raw = rng.integers(-2000, 30000, (299, 401)).astype(np.int16)
    raw[50:60] = -32768
    hdu = fits.PrimaryHDU(raw, do_not_scale_image_data=True)
    hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = 0.5, 100.0, -32768
    p, image = build(tmp_path, hdu)
    assert image.bitpix == 16
    assert np.isnan(whole(p, 1)[0, -27, 10])  # IIP rows 244-245 = FITS rows 54-53: BLANK
    check(p, image)
    p.close()


def test_in_memory_build_is_the_same(tmp_path) -> None:
    rng = np.random.default_rng(6)
    p, image = build(tmp_path, fits.PrimaryHDU(sky(rng, (301, 257))), cache=None)
    assert not p.on_disk and not any(isinstance(lv, np.memmap) for lv in p.levels)
    check(p, image)
    p.close()


@pytest.mark.parametrize("cpus", [1, 2])
def test_build_reads_the_file_once_in_file_order(tmp_path, monkeypatch, cpus) -> None:
    """Every full-resolution row is read once (the one dropped by floor halving for the
    display range only), bottom up; the levels' files are written, never mapped
    writable.  With more than one processor STIFF's statistic reads every row once more,
    in a thread of its own, in the order of the file; with one, the pass hands it the
    rows.  Level 1, written after the others, reads every row once more, bottom up."""
    monkeypatch.setattr(pyramid_module.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(pyramid_module, "BAND_BYTES", 8 * 200 * 8)
    rng = np.random.default_rng(7)
    data = sky(rng, (201, 200))
    (tmp_path / "img.fits").unlink(missing_ok=True)
    fits.PrimaryHDU(data).writeto(tmp_path / "img.fits")
    settings = Settings.from_environ({"FILESYSTEM_PREFIX": str(tmp_path) + "/",
                                      "IIPY_CACHE_DIR": str(tmp_path / "cache")})
    image = FitsImage(resolve("img.fits", settings))
    reads = []
    original = image.read_rows

    def spy(c, y, h, **kw):
        if threading.current_thread().name == "iipy-level1":
            level1.append((y, h, kw.get("binned", False)))
        elif kw.get("convert", True):
            reads.append((y, h, kw.get("binned", False)))
        else:
            scans.append((y, h))
        return original(c, y, h, **kw)

    scans: list[tuple[int, int]] = []
    level1: list[tuple[int, int, bool]] = []

    image.read_rows = spy  # type: ignore[method-assign]
    maps = []
    real_memmap = np.memmap

    def memmap_spy(*args, **kw):
        maps.append(kw.get("mode", args[2] if len(args) > 2 else "r+"))
        return real_memmap(*args, **kw)

    monkeypatch.setattr(pyramid_module.np, "memmap", memmap_spy)
    p = Pyramid(image, Grid(200, 201, 64, 64), settings.cache_dir)
    p.ensure()
    if cpus == 1:
        assert scans == []
        assert reads[0] == (200, 1, False)  # the dropped row (FITS row 0) first
        bands = reads[1:]
    else:  # the statistic's thread: every row once, in the order of the file
        assert [y for y, _ in scans] == sorted((y for y, _ in scans), reverse=True)
        assert sorted(r for y, h in scans for r in range(y, y + h)) == list(range(201))
        bands = reads
    assert all(binned and h <= 16 for _, h, binned in bands)
    assert [y for y, _, _ in bands] == sorted((y for y, _, _ in bands), reverse=True)
    covered = sorted(r for y, h, _ in bands for r in range(y, y + h))
    assert covered == list(range(200))
    assert maps and set(maps) == {"r"}
    p.complete()
    assert all(binned for _, _, binned in level1)
    assert [y for y, _, _ in level1] == sorted((y for y, _, _ in level1), reverse=True)
    assert sorted(r for y, h, _ in level1 for r in range(y, y + h)) == list(range(200))
    assert p.levels[0] is not None and set(maps) == {"r"}
    p.close()
    assert os.listdir(tmp_path / "cache")
