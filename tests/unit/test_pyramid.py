"""The shared pyramid: level contents, files on disk, one builder at a time, nothing
half-written read, changed files rebuilt, in-memory fallback."""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings

import numpy as np
import pytest
from astropy.io import fits

from iipy.imaging import pyramid as pyramid_module
from iipy.imaging.geometry import Grid
from iipy.imaging.paths import resolve
from iipy.imaging.pyramid import Pyramid
from iipy.imaging.sources.fits import FitsImage
from iipy.settings import Settings


def model_levels(fits_data: np.ndarray, n: int) -> list[np.ndarray]:
    """IIP-orientation levels 1..n: flip, then NaN-aware 2x2 means with floor sizes."""
    a = fits_data[::-1].astype(np.float64)
    out = []
    for _ in range(n):
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        blocks = a[:h, :w].reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(
            h // 2, w // 2, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks give NaN
            a = np.nanmean(np.where(np.isfinite(blocks), blocks, np.nan), axis=2)
        out.append(a)
    return out


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.normal(100, 5, (1061, 983)).astype(np.float32)
    data[100:104, 200:204] = np.nan  # a whole 2x2-aligned NaN block
    data[301, 11] = np.inf
    fits.PrimaryHDU(data).writeto(tmp_path / "img.fits")
    settings = Settings.from_environ({"FILESYSTEM_PREFIX": str(tmp_path) + "/",
                                      "IIPY_CACHE_DIR": str(tmp_path / "cache")})
    return tmp_path, data, settings


def open_pyramid(settings: Settings, name: str = "img.fits") -> Pyramid:
    fi = FitsImage(resolve(name, settings))
    return Pyramid(fi, Grid(fi.width, fi.height, 256, 256), settings.cache_dir)


def whole_level(p: Pyramid, k: int) -> np.ndarray:
    w, h = p.grid.level_size(k)
    return p.window(k, 0, 0, w, h)


def test_levels_match_model_and_live_on_disk(image):
    tmp_path, data, settings = image
    p = open_pyramid(settings)
    p.complete()
    want = model_levels(data, 3)
    assert [lv.shape for lv in p.levels] == [(1, 530, 491), (1, 265, 245), (1, 132, 122)]
    assert all(isinstance(lv, np.memmap) for lv in p.levels)
    for k, exp in enumerate(want, start=1):
        got = whole_level(p, k)
        assert got.shape == (1,) + exp.shape
        np.testing.assert_allclose(got[0], exp, rtol=1e-6, equal_nan=True)
    # the all-NaN block stays NaN one level up; the Inf pixel is skipped
    assert np.isnan(p.window(1, 100, 479, 1, 1)[0, 0, 0])  # IIP rows 958-959 = FITS 101-102
    (pyramid_dir,) = [d for d in os.listdir(settings.cache_dir) if not d.endswith(".lock")]
    files = sorted(os.listdir(os.path.join(settings.cache_dir, pyramid_dir)))
    assert files == ["level1.f32", "level2.f32", "level3.f32", "meta.json"]


def no_level1_writer(monkeypatch) -> None:
    """Level 1 is left unwritten (as when its writer has not run yet, or died)."""
    monkeypatch.setattr(pyramid_module._Level1Writer, "start",
                        classmethod(lambda cls, pyramid, directory: cls(pyramid, directory)))


def test_level1_is_published_later_and_mapped_by_every_process(image, monkeypatch):
    """The build publishes levels 2 and up; until level 1 is on disk its windows are binned
    per request, the same values bit for bit as the file then written, which every open
    pyramid (each worker's) maps once it is there."""
    tmp_path, data, settings = image
    no_level1_writer(monkeypatch)
    first, second = open_pyramid(settings), open_pyramid(settings)
    first.ensure()
    second.ensure()  # another worker: maps what the first built
    directory = os.path.join(settings.cache_dir, first._key())
    # level 1's blocks are reserved with the others', for its writer
    assert sorted(os.listdir(directory)) == ["level1.f32.part", "level2.f32", "level3.f32",
                                             "meta.json"]
    assert first.levels[0] is None and second.levels[0] is None
    binned = whole_level(second, 1)
    tile = second.window(1, 256, 256, 235, 256)
    monkeypatch.undo()
    first.complete()
    assert sorted(os.listdir(directory)) == ["level1.f32", "level2.f32", "level3.f32",
                                             "meta.json"]
    assert isinstance(first.levels[0], np.memmap)
    np.testing.assert_array_equal(np.asarray(first.levels[0]), binned)
    monkeypatch.setattr(pyramid_module, "LEVEL1_POLL", 0.0)
    np.testing.assert_array_equal(second.window(1, 256, 256, 235, 256), tile)
    assert isinstance(second.levels[0], np.memmap)  # found at its next level-1 window
    first.close()
    second.close()


def test_level1_writer_that_died_is_replaced(image, monkeypatch):
    """What a writer that died left (a damaged ``level1.f32.part``, its lock file) does not
    stop the next process that opens the pyramid from writing level 1 whole."""
    tmp_path, data, settings = image
    no_level1_writer(monkeypatch)
    p = open_pyramid(settings)
    p.ensure()
    p.close()
    directory = os.path.join(settings.cache_dir, p._key())
    with open(os.path.join(directory, "level1.f32.part"), "r+b") as f:
        f.write(b"\xff" * 100000)  # NaN and garbage where the writer stopped
        f.truncate(100000)
    open(os.path.join(directory, "level1.lock"), "w").close()
    monkeypatch.undo()
    q = open_pyramid(settings)
    q.ensure()  # starts the writer in the background
    q._writer.wait()
    assert sorted(os.listdir(directory)) == ["level1.f32", "level2.f32", "level3.f32",
                                             "meta.json"]
    q._look_for_level1(force=True)
    np.testing.assert_allclose(q.levels[0][0], model_levels(data, 1)[0], rtol=1e-6,
                               equal_nan=True)
    q.close()


def test_closing_stops_the_level1_writer(image, monkeypatch):
    """An image closed while its level 1 is being written (the worker's store let it go)
    stops the writer after its band, and the next process writes it.  The writer runs at
    the lowest priority."""
    tmp_path, data, settings = image
    monkeypatch.setattr(pyramid_module, "BAND_BYTES", 8 * 983 * 4)  # many bands
    started, release = threading.Event(), threading.Event()
    nice: list[int] = []
    original = FitsImage.read_rows

    def slow(self, *args, **kwargs):
        if threading.current_thread().name == "iipy-level1":
            nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            started.set()
            release.wait(10)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FitsImage, "read_rows", slow)
    p = open_pyramid(settings)
    p.ensure()
    assert started.wait(10)
    threading.Timer(0.05, release.set).start()
    p.close()  # waits for the writer
    directory = os.path.join(settings.cache_dir, p._key())
    left = os.listdir(directory)
    assert "level1.f32" not in left and "level1.f32.part" in left  # for the next writer
    assert nice and set(nice) == {pyramid_module.WRITER_NICE}  # requests come first
    monkeypatch.undo()
    q = open_pyramid(settings)
    q.complete()
    assert isinstance(q.levels[0], np.memmap)
    q.close()


def test_level1_per_request_is_the_level_the_pass_builds(image, monkeypatch):
    """Level 1 binned per request (any window) has the values, bit for bit, of level 1 as
    the pass computes it (kept in memory when the cache is not writable), and level 2 on
    disk is binned from those same values."""
    tmp_path, data, settings = image
    no_level1_writer(monkeypatch)
    on_disk = open_pyramid(settings)
    on_disk.ensure()
    assert on_disk.levels[0] is None
    blocked = Settings.from_environ({"FILESYSTEM_PREFIX": str(tmp_path) + "/",
                                     "IIPY_CACHE_DIR": "/proc/no-such-dir"})
    in_memory = open_pyramid(blocked)
    in_memory.ensure()
    assert not in_memory.on_disk and in_memory.levels[0] is not None
    np.testing.assert_array_equal(whole_level(on_disk, 1), in_memory.levels[0])
    for x, y, w, h in [(0, 0, 256, 256), (256, 256, 235, 256), (490, 529, 1, 1),
                       (3, 7, 100, 1), (17, 0, 1, 530)]:
        np.testing.assert_array_equal(on_disk.window(1, x, y, w, h),
                                      in_memory.levels[0][:, y : y + h, x : x + w])
    np.testing.assert_array_equal(np.asarray(on_disk.levels[1]), in_memory.levels[1])


def test_compressed_image_stores_level1(image):
    """Tile-compressed data is not read in place: its level 1 is stored with the others."""
    tmp_path, data, settings = image
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="GZIP_1",
                                                       quantize_level=0)]).writeto(
        tmp_path / "comp.fits")
    p = open_pyramid(settings, "comp.fits")
    p.ensure()
    assert p._first_stored() == 1
    assert p.on_disk and all(isinstance(lv, np.memmap) for lv in p.levels)
    np.testing.assert_allclose(p.levels[0][0], model_levels(data, 1)[0], rtol=1e-6,
                               equal_nan=True)


def test_second_open_reads_no_fits_data(image, monkeypatch):
    _, data, settings = image
    open_pyramid(settings).ensure()
    p = open_pyramid(settings)

    def no_read(*args, **kwargs):
        raise AssertionError("the FITS data was read again")

    monkeypatch.setattr(p.image, "read", no_read)
    monkeypatch.setattr(p.image, "read_rows", no_read)
    p.ensure()
    assert p.levels[2].shape == (1, 132, 122)
    assert p.ranges[0].lo < 100 < p.ranges[0].hi
    monkeypatch.undo()
    np.testing.assert_allclose(whole_level(p, 1)[0], model_levels(data, 1)[0], rtol=1e-6,
                               equal_nan=True)


def _build_in_child(settings: Settings, queue) -> None:
    p = open_pyramid(settings)
    p.ensure()
    queue.put(float(np.nansum(np.asarray(p.levels[1]), dtype=np.float64)))


def test_concurrent_builders_share_one_build(image, monkeypatch):
    _, _, settings = image
    calls = multiprocessing.get_context("fork").Value("i", 0)
    original = Pyramid._build

    def counting_build(self, *args, **kwargs):
        with calls.get_lock():
            calls.value += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Pyramid, "_build", counting_build)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(settings, queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    sums = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0
    assert calls.value == 1
    assert len(set(sums)) == 1


def test_crashed_build_leftovers_are_rebuilt(image):
    _, data, settings = image
    p = open_pyramid(settings)
    directory = os.path.join(settings.cache_dir, p._key())
    os.makedirs(directory)
    with open(os.path.join(directory, "level1.f32.tmp999"), "wb") as f:
        f.write(b"\0" * 100)  # a build that died before meta.json
    p.complete()
    assert sorted(os.listdir(directory)) == ["level1.f32", "level2.f32", "level3.f32",
                                             "meta.json"]
    np.testing.assert_allclose(p.levels[0][0], model_levels(data, 1)[0], rtol=1e-6,
                               equal_nan=True)


def test_changed_file_gets_a_new_pyramid(image):
    tmp_path, data, settings = image
    open_pyramid(settings).ensure()
    fits.PrimaryHDU(data * 2).writeto(tmp_path / "img.fits", overwrite=True)
    os.utime(tmp_path / "img.fits", ns=(0, 10**18))
    p = open_pyramid(settings)
    p.ensure()
    assert len(os.listdir(settings.cache_dir)) == 4  # two pyramids, two lock files
    np.testing.assert_allclose(p.levels[1][0], model_levels(data * 2, 2)[1], rtol=1e-6,
                               equal_nan=True)


def test_unwritable_cache_builds_in_memory(image):
    tmp_path, data, settings = image
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    p = open_pyramid(settings.replace(cache_dir=str(blocker / "cache")))
    p.ensure()
    assert not isinstance(p.levels[0], np.memmap)
    np.testing.assert_allclose(p.levels[1][0], model_levels(data, 2)[1], rtol=1e-6,
                               equal_nan=True)


def test_build_memory_is_banded(image, monkeypatch):
    """Level 1 is read in bands of rows, never the whole image at once."""
    _, _, settings = image
    monkeypatch.setattr(pyramid_module, "BAND_BYTES", 983 * 8 * 16)  # 16 output rows
    p = open_pyramid(settings)
    heights = []
    original = p.image.read_rows

    def spy(channel, y, h, **buffers):
        heights.append(h)
        return original(channel, y, h, **buffers)

    p.image.read_rows = spy  # type: ignore[method-assign]
    p.ensure()
    assert max(heights) <= 32


def test_pyramid_build_beats_the_worker_heartbeat(image):
    """A long build inside one request keeps the worker's heartbeat going (the FastCGI
    worker sets Application.heartbeat), so it is not killed as hung."""
    from iipy.protocols.router import Application

    _, _, settings = image
    app = Application(settings.replace(memcached_servers="", verbosity=0))
    beats = []
    app.heartbeat = lambda: beats.append(1)
    assert app.handle({"QUERY_STRING": "FIF=img.fits&JTL=0,0"}).status == 200
    assert len(beats) >= 3  # one per band of every level


def thin_model_levels(fits_data: np.ndarray, n: int) -> list[np.ndarray]:
    """Levels 1..n when a side reaches one pixel: sizes max(1, floor(s / 2)), a side of
    one pixel binned with itself (a 2x1 or 1x2 block, NaN-aware mean)."""
    a = fits_data[::-1].astype(np.float64)
    out = []
    for _ in range(n):
        if a.shape[0] == 1:
            a = np.repeat(a, 2, axis=0)
        if a.shape[1] == 1:
            a = np.repeat(a, 2, axis=1)
        out.append(model_levels(a[::-1], 1)[0])
        a = out[-1]
    return out


@pytest.mark.parametrize("shape", [(600, 3), (600, 1), (3, 600), (1, 600), (10, 4096)])
@pytest.mark.parametrize("where", ["disk", "memory", "per-request"])
def test_levels_of_thin_images_are_one_pixel_wide(tmp_path, monkeypatch, shape, where):
    """An image narrower (or lower) than 2^k pixels has levels one pixel wide (high), as
    ``geometry.level_size`` says: binning used to give zero columns and a 500.  The
    same values on disk, in memory, and computed per request from the full data."""
    rng = np.random.default_rng(3)
    data = rng.normal(50, 9, shape).astype(np.float32)
    data.flat[::7] = np.nan
    fits.PrimaryHDU(data).writeto(tmp_path / "thin.fits")
    cache = tmp_path / "cache"
    if where != "disk":
        cache.write_text("")  # not a directory: the levels stay in memory
    if where == "per-request":  # no memory at all: every level is computed per request
        monkeypatch.setattr(pyramid_module, "MIN_KEPT_BYTES", 0)
    settings = Settings.from_environ({"FILESYSTEM_PREFIX": str(tmp_path) + "/",
                                      "IIPY_CACHE_DIR": str(cache)})
    fi = FitsImage(resolve("thin.fits", settings))
    grid = Grid(fi.width, fi.height, 256, 256)
    p = Pyramid(fi, grid, settings.cache_dir, memory_mb=0 if where == "per-request" else 64)
    p.ensure()
    assert p.on_disk == (where == "disk")
    if where != "disk":  # on disk, level 1 may be still being written: binned until then
        assert (p.levels[0] is None) == (where == "per-request")
    want = thin_model_levels(data, grid.num_resolutions - 1)
    for k, exp in enumerate(want, 1):
        w, h = grid.level_size(k)
        assert exp.shape == (h, w)
        np.testing.assert_allclose(p.window(k, 0, 0, w, h)[0], exp, rtol=1e-6, equal_nan=True)
    if shape[1] > 1000:  # a window that is not the whole level, per request as well
        np.testing.assert_allclose(p.window(2, 300, 0, 5, 2)[0], want[1][:, 300:305],
                                   rtol=1e-6, equal_nan=True)
