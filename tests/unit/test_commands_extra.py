"""CVT, ROT, SHD, COL, TIL, SPECTRA, PFL errors, SDS with image sequences, LYR/ICC and
the watermark, through the Application (no process, no socket).  Pixels are decoded and
compared with an independent NumPy model; PNG exports (``CVT=png``) are compared
exactly, JPEG ones within JPEG noise."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from iipy.protocols.iip import commands, export, parser, tiles, values
from iipy.imaging import render
from iipy.protocols.router import Application
from iipy.protocols.iip.commands import Context
from iipy.imaging.pyramid import Pyramid
from iipy.protocols.http import Responder, http_date
from iipy.settings import Settings

W, H = 1001, 701  # the size the iipsrv measurements of docs/protocol.md §5.6 used


# --- helpers -------------------------------------------------------------------------------


def smooth(width: int, height: int) -> np.ndarray:
    """FITS-order float data (row 0 = bottom), smooth so that JPEG noise stays small."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return (10.0 + 80.0 * (x / width) + 30.0 * np.sin(y / 97.0) ** 2).astype(np.float32)


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def model_level(fits_data: np.ndarray, k: int) -> np.ndarray:
    """IIP-orientation level k of a 2-D FITS array: flip, then 2x2 means, floor sizes."""
    a = fits_data[::-1].astype(np.float64)
    for _ in range(k):
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return a


def model_resample(a: np.ndarray, out_w: int, out_h: int, bilinear: bool) -> np.ndarray:
    """Pixel-centre resampling, written with np.interp (bilinear) or index arithmetic."""
    h, w = a.shape

    def positions(n_src: int, n_dst: int) -> np.ndarray:
        return (np.arange(n_dst) + 0.5) * n_src / n_dst - 0.5

    if not bilinear:
        xs = np.minimum(np.floor((np.arange(out_w) + 0.5) * w / out_w), w - 1).astype(int)
        ys = np.minimum(np.floor((np.arange(out_h) + 0.5) * h / out_h), h - 1).astype(int)
        return a[ys][:, xs]
    px, py = positions(w, out_w), positions(h, out_h)
    rows = np.array([np.interp(px, np.arange(w), r) for r in a])
    return np.array([np.interp(py, np.arange(h), c) for c in rows.T]).T


def model_grey(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    v = (values - lo) / (hi - lo)
    return np.trunc(np.clip(np.nan_to_num(v, nan=0.0) * 255, 0, 255))


def assert_close(got: np.ndarray, want: np.ndarray, mean: float = 0.8, p99: float = 2.0):
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.mean() <= mean and np.percentile(diff, 99) <= p99, (diff.mean(), diff.max())


@pytest.fixture
def env(tmp_path):
    """``make(files={name: hdus}, **settings) -> Application`` serving tmp_path."""
    def make(files: dict | None = None, **extra) -> Application:
        for name, hdus in (files or {}).items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fits.HDUList(hdus).writeto(path, overwrite=True)
        base = {"FILESYSTEM_PREFIX": str(tmp_path) + "/", "IIPY_CACHE_DIR": str(tmp_path / "c"),
                "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}
        base.update({k: str(v) for k, v in extra.items()})
        return Application(Settings.from_environ(base))
    make.dir = tmp_path
    return make


def get(app: Application, query: str, status: int = 200):
    r = app.handle({"QUERY_STRING": query})
    assert r.status == status, (r.status, r.body[:300])
    return r


def image(app: Application, query: str) -> np.ndarray:
    r = get(app, query)
    assert r.header("Content-Type") in ("image/jpeg", "image/png")
    return decode(r.body)


@pytest.fixture
def grey(env):
    data = smooth(W, H)
    return env({"g.fits": [fits.PrimaryHDU(data)]}), data


# --- CVT: sizes, headers, pixels -------------------------------------------------------------


@pytest.mark.parametrize("query,size", [
    ("WID=100", (100, 70)), ("HEI=100", (143, 100)), ("WID=100&HEI=100", (100, 70)),
    ("", (1001, 701)), ("WID=2000", (2000, 1401)), ("WID=6000", (5000, 3501)),
    ("RGN=0.25,0.25,0.5,0.5&WID=200", (200, 140)), ("RGN=0,0,0.5,0.5", (1001, 701)),
    ("RGN=-0.1,-0.1,1.2,1.2&WID=500", (500, 350)), ("RGN=0.1,0.2,0.3,0.25&WID=400", (399, 233)),
    ("ROT=90&WID=100", (70, 100)), ("ROT=!270&HEI=100", (100, 143)),
])
def test_cvt_sizes_as_iipsrv(grey, query, size):
    app, _ = grey
    got = image(app, "FIF=g.fits&%s%sCVT=jpeg" % (query, "&" if query else ""))
    assert (got.shape[1], got.shape[0]) == size


def test_cvt_headers_and_file_names(env):
    data = smooth(300, 200)
    app = env({"sub/sky.v2.fits": [fits.PrimaryHDU(data), fits.ImageHDU(data, name="SCI")],
               "plain": [fits.PrimaryHDU(data)]})
    r = get(app, "FIF=sub/sky.v2.fits&WID=30&CVT=jpeg")
    assert [k for k, _ in r.headers] == ["Server", "X-Powered-By", "Cache-Control",
                                         "Last-Modified", "Content-Type",
                                         "Content-Disposition", "Content-Length"]
    assert r.header("Content-Type") == "image/jpeg"
    assert r.header("Content-Disposition") == 'inline;filename="sky.v2.jpg"'
    assert r.body[:3] == b"\xff\xd8\xff" and r.body[-2:] == b"\xff\xd9"
    r = get(app, "FIF=sub/sky.v2.fits[SCI]&CVT=png")
    assert r.header("Content-Type") == "image/png"
    assert r.header("Content-Disposition") == 'inline;filename="sky.v2.png"'
    assert r.body[:8] == b"\x89PNG\r\n\x1a\n"
    r = get(app, "FIF=plain&WID=10&CVT=JPEG")
    assert r.header("Content-Disposition") == 'inline;filename="plain.jpg"'
    # any other format is JPEG, as in iipsrv 1.1
    assert get(app, "FIF=plain&WID=10&CVT=tiff").header("Content-Type") == "image/jpeg"
    # without an image: error 1 3 with an empty argument
    assert get(app, "CVT=jpeg", 400).body == b"Error/4:1 3 \r\n"


def test_export_file_name_cannot_break_the_header():
    name = export.export_filename('a"b\r\nX-Evil: 1\\.fits', ".jpg")
    assert name == "a_b__X-Evil: 1_.jpg"
    assert export.export_filename("dir/x.y.fits[2]", ".png") == "x.y.png"
    assert export.export_filename("caf\xe9.fits", ".jpg") == "caf\xc3\xa9.jpg"  # UTF-8 bytes


@pytest.mark.parametrize("interpolation", [1, 0])
@pytest.mark.parametrize("query,k,source,out", [
    ("WID=100", 2, (0, 0, 250, 175), (100, 70)),                          # downscaled
    ("RGN=0.25,0.25,0.5,0.5&WID=200", 1, (125, 88, 251, 176), (200, 140)),
    ("RGN=0.1,0.2,0.3,0.25&WID=400", 0, (100, 140, 300, 175), (399, 233)),
    ("RGN=0.5,0.5,0.05,0.05&WID=300", 0, (501, 351, 50, 35), (300, 210)),  # upscaled
    ("", 0, (0, 0, 1001, 701), (1001, 701)),                              # as is
])
def test_cvt_pixels_match_model(env, interpolation, query, k, source, out):
    data = smooth(W, H)
    app = env({"g.fits": [fits.PrimaryHDU(data)]}, INTERPOLATION=interpolation)
    got = image(app, "FIF=g.fits&MINMAX=1:0,130&%s%sCVT=png" % (query, "&" if query else ""))
    x, y, w, h = source
    level = model_level(data, k)[y : y + h, x : x + w]
    want = model_grey(model_resample(level, out[0], out[1], interpolation != 0), 0, 130)
    assert got.shape == (out[1], out[0])
    diff = np.abs(got.astype(float) - want)
    assert diff.max() <= 1 and diff.mean() < 0.05  # float32 against float64 rounding


def test_cvt_nan_pixels_are_the_bottom_of_the_range(env):
    data = smooth(300, 200)
    data[100:120, 100:140] = np.nan
    app = env({"n.fits": [fits.PrimaryHDU(data)]})
    got = image(app, "FIF=n.fits&MINMAX=1:0,130&WID=150&CVT=png")
    # FITS rows 100..119 are IIP rows 80..99, halved: rows 40..49, columns 50..69
    assert (got[41:49, 51:69] == 0).all()
    assert got[20:30, 51:69].min() > 10  # no NaN leaks outside the block


def test_cvt_colour_and_display_modifiers(env):
    data = smooth(W, H)
    cube = np.stack([data, data * 0.5, 130 - data]).astype(np.float32)
    app = env({"c.fits": [fits.PrimaryHDU(cube)]})
    mm = "MINMAX=1:0,130&MINMAX=2:0,130&MINMAX=3:0,130"
    rgb = image(app, "FIF=c.fits&%s&WID=250&CVT=png" % mm)
    assert rgb.shape == (175, 250, 3)
    for c in range(3):
        want = model_grey(model_level(cube[c], 2), 0, 130)
        assert np.abs(rgb[..., c] - want).max() <= 1
    # V2's mono mode on channel 2 with GAM, INV, CNT: grey from CTW row 0
    got = image(app, "FIF=c.fits&INV&CNT=1.5&GAM=0.5&%s&CTW=0,1,0;0,1,0;0,1,0&WID=250&CVT=png" % mm)
    assert got.shape == (175, 250, 3)
    v = model_level(cube[1], 2) / 130
    want = np.trunc(np.clip((1 - np.maximum(v, 0) ** 0.5) * 255 * 1.5, 0, 255))
    assert np.abs(got[..., 0] - want).max() <= 1
    jet = image(app, "FIF=c.fits&CMP=jet&%s&WID=250&CVT=jpeg" % mm)
    assert jet.shape == (175, 250, 3)


def test_cvt_reads_the_smallest_sufficient_level(env, monkeypatch):
    """2048 x 2048 with 16-pixel tiles: levels 2048 ... 16 (k = 0 .. 7)."""
    data = smooth(2048, 2048)
    app = env({"big.fits": [fits.PrimaryHDU(data)]}, IIPY_TILE_SIZE=16)
    reads = []
    original = Pyramid.window

    def spy(self, k, x, y, w, h):
        reads.append((k, x, y, w, h))
        return original(self, k, x, y, w, h)

    monkeypatch.setattr(Pyramid, "window", spy)
    assert image(app, "FIF=big.fits&WID=100&CVT=jpeg").shape == (100, 100)
    assert {r[0] for r in reads} == {4}  # 128 x 128 level, not the 2048 data
    reads.clear()
    # a 400-pixel view of a 512-pixel region: full resolution, that region only
    assert image(app, "FIF=big.fits&RGN=0.5,0.5,0.25,0.25&WID=400&CVT=jpeg").shape == (400, 400)
    assert {r[0] for r in reads} == {0}
    assert min(r[1] for r in reads) == 1024 and max(r[1] + r[3] for r in reads) == 1536
    assert sum(r[3] * r[4] for r in reads) <= 512 * 512 * 1.1
    reads.clear()
    # a 200-pixel view of it: level 1, where the region is 256 pixels wide
    assert image(app, "FIF=big.fits&RGN=0.5,0.5,0.25,0.25&WID=200&CVT=jpeg").shape == (200, 200)
    assert {r[0] for r in reads} == {1}
    assert min(r[1] for r in reads) == 512 and max(r[1] + r[3] for r in reads) == 768
    reads.clear()
    # huge numbers: a bounded image read from the smallest level
    got = image(app, "FIF=big.fits&WID=99999999999999999999&HEI=-7&RGN=-1e300,nan,1e300,1e300"
                     "&CVT=jpeg")
    assert got.shape == (5000, 5000)
    assert {r[0] for r in reads} == {7}


def test_cvt_memory_is_bounded_by_strips(env, monkeypatch):
    """The float data handled at once stay under the strip budget, whatever the region."""
    data = smooth(W, H)
    app = env({"g.fits": [fits.PrimaryHDU(data)]})
    sizes = []
    original = render.normalise

    def spy(src, mins, maxs):
        sizes.append(np.asarray(src).nbytes)
        return original(src, mins, maxs)

    monkeypatch.setattr(render, "normalise", spy)
    monkeypatch.setattr(render, "STRIP_BYTES", 1 << 20)
    monkeypatch.setattr(render.export, "__defaults__",
                        render.export.__defaults__[:-1] + (1 << 20,))
    whole = image(app, "FIF=g.fits&MINMAX=1:0,130&QLT=100&CVT=png")
    assert len(sizes) > 5 and max(sizes) <= 1 << 20
    want = model_grey(model_level(data, 0), 0, 130)
    assert np.abs(whole - want).max() <= 1


# --- ROT -------------------------------------------------------------------------------------


def quadrants(width: int = 256, height: int = 192) -> np.ndarray:
    """FITS-order data whose displayed quadrants are 50 (TL), 100 (TR), 150 (BL), 200 (BR)."""
    a = np.zeros((height, width), np.float32)
    a[: height // 2, : width // 2] = 150  # FITS rows 0.. are the bottom
    a[: height // 2, width // 2 :] = 200
    a[height // 2 :, : width // 2] = 50
    a[height // 2 :, width // 2 :] = 100
    return a


@pytest.mark.parametrize("rot,corners", [
    ("0", (50, 100, 150, 200)),
    ("90", (150, 50, 200, 100)),      # clockwise, as iipsrv 1.1
    ("180", (200, 150, 100, 50)),
    ("270", (100, 200, 50, 150)),
    ("!0", (100, 50, 200, 150)),      # mirror
    ("!90", (200, 100, 150, 50)),     # mirror, then 90 clockwise
    ("!180", (150, 200, 50, 100)),    # vertical flip
    ("!270", (50, 150, 100, 200)),
    ("-90", (100, 200, 50, 150)),     # taken modulo 360
    ("450", (150, 50, 200, 100)),
    ("45", (50, 100, 150, 200)),      # not a multiple of 90: ignored
    ("inf", (50, 100, 150, 200)),
    ("1e300", (50, 100, 150, 200)),
])
def test_rot_cvt_and_tile_orientation(env, rot, corners):
    app = env({"q.fits": [fits.PrimaryHDU(quadrants())]})
    base = "FIF=q.fits&MINMAX=1:0,255&ROT=%s" % rot
    for got in (image(app, base + "&CVT=png"), image(app, base + "&QLT=100&JTL=0,0")):
        quarter = parser.rot(rot)[0] in (90, 270)
        assert got.shape == ((256, 192) if quarter else (192, 256))
        tl, tr, bl, br = got[5, 5], got[5, -6], got[-6, 5], got[-6, -6]
        assert np.abs(np.array([tl, tr, bl, br], float) - corners).max() <= 2, rot


def test_rot_180_mirrors_the_tile_index(env):
    data = smooth(W, H)
    app = env({"g.fits": [fits.PrimaryHDU(data)]})
    # tile 0 under ROT=180 is tile 11 (the bottom-right one, 233 x 189) turned round
    got = image(app, "FIF=g.fits&MINMAX=1:0,130&QLT=100&ROT=180&JTL=2,0")
    want = model_grey(model_level(data, 0)[512:701, 768:1001], 0, 130)[::-1, ::-1]
    assert_close(got, want)
    # 90 and the vertical flip keep the index
    got = image(app, "FIF=g.fits&MINMAX=1:0,130&QLT=100&ROT=90&JTL=2,0")
    assert_close(got, np.rot90(model_grey(model_level(data, 0)[0:256, 0:256], 0, 130), -1))
    got = image(app, "FIF=g.fits&MINMAX=1:0,130&QLT=100&ROT=!180&JTL=2,0")
    assert_close(got, model_grey(model_level(data, 0)[0:256, 0:256], 0, 130)[::-1])
    # obj=max-size reports the rotated size
    assert get(app, "FIF=g.fits&ROT=270&obj=max-size").body == b"\r\nMax-size:701 1001\r\n"


# --- SHD, COL ---------------------------------------------------------------------------------


def normals_model(v: np.ndarray, h: int, e: int) -> np.ndarray:
    """iipsrv's SHD on three normalised channels (checked against iipsrv 1.1)."""
    hr, er = math.radians(h), math.radians(e)
    light = np.array([abs(math.sin(hr)) * (-1 if h > 180 else 1), math.cos(hr), -math.sin(er)])
    light /= np.linalg.norm(light)
    n = 1 - 2 * v
    out = np.clip(0.5 * np.tensordot(light, n, axes=1), 0, 1)
    out[(v == 0).all(axis=0)] = 0
    return np.trunc(out * 255)


@pytest.mark.parametrize("h,e", [(0, 0), (45, 30), (200, 60), (315, 30), (-90, 0), (400, 10)])
def test_shd_on_three_channels_reads_normals(env, h, e):
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, (3, 8, 8)).astype(np.float32)
    blocks[:, 0, 0] = 0
    cube = np.repeat(np.repeat(blocks, 16, axis=1), 16, axis=2)  # 128 x 128, IIP = flipped
    app = env({"n.fits": [fits.PrimaryHDU(cube)]})
    mm = "&".join("MINMAX=%d:0,255" % c for c in (1, 2, 3))
    got = image(app, "FIF=n.fits&%s&SHD=%d,%d&QLT=100&JTL=0,0" % (mm, h, e))
    assert got.shape == (128, 128)  # one channel
    want = normals_model(blocks[:, ::-1] / 255.0, h, e)
    assert np.abs(got[8::16, 8::16] - want).max() <= 2
    cvt = image(app, "FIF=n.fits&%s&SHD=%d,%d&CVT=png" % (mm, h, e))
    assert np.abs(cvt[8::16, 8::16] - want).max() <= 1


def test_shd_on_one_channel_is_a_relief_without_tile_seams(env):
    data = smooth(600, 400)
    data[150:160, 250:350] += 60  # a ridge
    app = env({"r.fits": [fits.PrimaryHDU(data)],
               "flat.fits": [fits.PrimaryHDU(np.full((50, 60), 70.0, np.float32))]})
    q = "FIF=r.fits&MINMAX=1:0,200&SHD=%s&QLT=100&CVT=png"
    flat = image(app, "FIF=flat.fits&MINMAX=1:0,200&SHD=0,30&CVT=png")
    whole = image(app, q % "135,30")
    # model: height = 255 v, light from azimuth 135 (south-east) at elevation 30
    z = np.clip(model_level(data, 0) / 200, 0, 1) * 255
    gy, gx = np.gradient(z)
    a, e = math.radians(135), math.radians(30)
    light = (math.cos(e) * math.sin(a), math.cos(e) * math.cos(a), math.sin(e))
    want = np.trunc(np.clip((-light[0] * gx + light[1] * gy + light[2])
                            / np.sqrt(gx ** 2 + gy ** 2 + 1), 0, 1) * 255)
    assert np.abs(whole - want).max() <= 1
    assert (flat == 127).all()  # a flat area gives sin(30) = 0.5
    # the tiles of level 0 put together give the same image: no seams at tile edges
    tiles = np.zeros_like(whole)
    for n in range(6):
        row, col = divmod(n, 3)
        t = image(app, "FIF=r.fits&MINMAX=1:0,200&SHD=135,30&QLT=100&JTL=2,%d" % n)
        tiles[row * 256 : row * 256 + t.shape[0], col * 256 : col * 256 + t.shape[1]] = t
    assert_close(tiles, whole.astype(float), mean=0.5, p99=2)


def test_col_grey_and_binary(env):
    data = smooth(300, 200)
    cube = np.stack([data, data * 0.5, 130 - data]).astype(np.float32)
    app = env({"c.fits": [fits.PrimaryHDU(cube)]})
    mm = "MINMAX=1:0,130&MINMAX=2:0,130&MINMAX=3:0,130"
    rgb = image(app, "FIF=c.fits&%s&CVT=png" % mm).astype(np.uint32)
    grey = image(app, "FIF=c.fits&%s&COL=grey&CVT=png" % mm)
    assert grey.shape == (200, 300)
    lum = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471) >> 16
    assert np.array_equal(grey, lum)
    binary = image(app, "FIF=c.fits&%s&COL=binary&CVT=png" % mm)
    assert set(np.unique(binary)) == {0, 255}
    assert image(app, "FIF=c.fits&%s&COL=GRAY&QLT=100&JTL=0,0" % mm).ndim == 2


# --- TIL, JTLS, LYR, ICC ---------------------------------------------------------------------


def til_parts(body: bytes) -> list[tuple[int, int, bytes]]:
    parts, i = [], 0
    while i < len(body):
        colon = body.index(b":", i)
        head = body[i:colon].decode()
        assert head.startswith("Tile,")
        res, n, zero_len = head[5:].split(",")
        zero, length = zero_len.split("/")
        assert zero == "0"
        length = int(length)
        assert body[colon + 1 : colon + 9] == b"\x02\x00\x00\x00\x00\x11\x00\x00"
        parts.append((int(res), int(n), body[colon + 9 : colon + 1 + length]))
        assert body[colon + 1 + length : colon + 3 + length] == b"\r\n"
        i = colon + 3 + length
    return parts


def test_til_framing_and_order(grey):
    app, _ = grey
    r = get(app, "FIF=g.fits&TIL=2,3-4")  # columns 0..3, rows 0..1 of a 4 x 3 grid
    assert [k for k, _ in r.headers] == ["Server", "Content-Type", "Last-Modified",
                                         "Cache-Control", "Content-Length"]
    assert r.header("Content-Type") == "application/vnd.netfpx"
    parts = til_parts(r.body)
    assert [(res, n) for res, n, _ in parts] == [(2, 0), (2, 4), (2, 1), (2, 5), (2, 2), (2, 6),
                                                 (2, 3), (2, 7)]
    for res, n, jpeg in parts:  # the very bytes JTL sends
        assert jpeg == get(app, "FIF=g.fits&JTL=%d,%d" % (res, n)).body
    assert [n for _, n, _ in til_parts(get(app, "FIF=g.fits&TIL=2,5-0").body)] == [5]
    assert [n for _, n, _ in til_parts(get(app, "FIF=g.fits&TIL=2").body)] == [2]
    assert [n for _, n, _ in til_parts(get(app, "FIF=g.fits&TIL=2,-1").body)] == [0, 1]
    assert get(app, "FIF=g.fits&TIL=3,0", 404).body == b"Asked for non-existent resolution: 3"
    assert get(app, "FIF=g.fits&TIL=2,11-99", 404).body == b"Asked for non-existent tile: 99"
    assert get(app, "TIL=0,0", 400).body == b"Error/4:1 3 \r\n"


def test_til_is_limited(env, monkeypatch):
    data = smooth(W, H)
    app = env({"g.fits": [fits.PrimaryHDU(data)]}, IIPY_TILE_SIZE=16)
    monkeypatch.setattr(tiles, "TIL_MAX_TILES", 10)
    r = get(app, "FIF=g.fits&TIL=6,0-99999", 404)
    r = get(app, "FIF=g.fits&TIL=6,0-300", 400)
    assert r.body.startswith(b"TIL :: Error: ")
    assert len(til_parts(get(app, "FIF=g.fits&TIL=6,0-4").body)) == 5


def test_jtls_lyr_icc(grey):
    app, _ = grey
    plain = get(app, "FIF=g.fits&JTL=2,1").body
    assert get(app, "FIF=g.fits&JTLS=0,2,1,90").body == plain
    assert get(app, "FIF=g.fits&LYR=3&ICC=whatever&JTL=2,1").body == plain
    assert get(app, "FIF=g.fits&SDS=0,90&JTL=2,1").body == plain  # a single file: one view


# --- PFL ---------------------------------------------------------------------------------------


def test_pfl_visiomatic_forms_and_errors(env, monkeypatch):
    d = np.arange(12 * 10, dtype=np.float32).reshape(10, 12)
    app = env({"p.fits": [fits.PrimaryHDU(d)]})
    # profile (horizontal, vertical) and point value, as V2 sends them (§12.1)
    assert get(app, "FIF=p.fits&PFL=0:1,2-4,2").body == \
        b'{\n\t"profile": [85.000000000,86.000000000,87.000000000]\n}'
    assert get(app, "FIF=p.fits&PFL=0:3,1-3,3").body == \
        b'{\n\t"profile": [99.000000000,87.000000000]\n}'
    assert get(app, "FIF=p.fits&PFL=0:5,5-5,5").body == b'{\n\t"profile": [53.000000000]\n}'
    for query, text in [("PFL=0:0,0-12,0", b"outside"), ("PFL=0:-1,0-3,0", b"outside"),
                        ("PFL=0:0,99999999999999999999-0,0", b"outside"),
                        ("PFL=1:0,0", b"resolution 1 outside 0-0"), ("PFL=junk", b"expected")]:
        r = get(app, "FIF=p.fits&" + query, 400)
        assert r.body.startswith(b"PFL :: Error: ") and text in r.body, r.body
    monkeypatch.setattr(values, "PFL_MAX_VALUES", 5)
    assert get(app, "FIF=p.fits&PFL=0:0,0-5,0").status == 200
    r = get(app, "FIF=p.fits&PFL=0:0,0-6,0", 400)
    assert r.body == b"PFL :: Error: 6 values requested, at most 5"


# --- SPECTRA ------------------------------------------------------------------------------------


def test_spectra_on_a_cube(env):
    data = np.arange(300 * 200, dtype=np.float32).reshape(200, 300)
    cube = np.stack([data, data * 2, -data]).astype(np.float32)
    app = env({"c.fits": [fits.PrimaryHDU(cube)]})
    r = get(app, "FIF=c.fits&SPECTRA=1,1,10,20")  # tile 1 starts at column 256
    value = data[199 - 20, 256 + 10]
    assert r.body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<spectra>\n'
        + b"".join(b"\t<point>\n\t\t<wavelength>%d</wavelength>\n\t\t<reflectance>%f"
                   b"</reflectance>\n\t</point>\n" % (c, f * value)
                   for c, f in enumerate((1, 2, -1)))
        + b"</spectra>")
    assert r.header("Content-Type") == "application/xml"
    # outside the nominal tile: 400 with iipsrv's text; outside a partial tile: no point
    r = get(app, "FIF=c.fits&SPECTRA=1,0,256,0", 400)
    assert r.body == b"SPECTRA :: Error: x,y coordinates outside of tile boundaries"
    assert get(app, "FIF=c.fits&SPECTRA=1,1,100,0").body == \
        b'<?xml version="1.0" encoding="UTF-8"?>\n<spectra>\n</spectra>'
    assert get(app, "FIF=c.fits&SPECTRA=1,9,0,0", 404).body == b"Asked for non-existent tile: 9"
    assert get(app, "SPECTRA=1,0,0,0", 400).body == b"Error/4:1 3 \r\n"


# --- image sequences ------------------------------------------------------------------------------


@pytest.fixture
def sequence(env):
    files = {}
    for h, v, value in [(0, 90, 10.0), (10, 90, 20.0), (20, 90, 30.0), (0, 100, 40.0)]:
        files["seq_pyr_%03d_%03d.fits" % (h, v)] = [
            fits.PrimaryHDU(np.full((40, 60), value, np.float32))]
    files["other/s_x_000_090.fits"] = [fits.PrimaryHDU(np.full((40, 60), 5.0, np.float32))]
    return env(files)


def test_sequence_views_and_sds(sequence, env):
    app = sequence
    r = get(app, "FIF=seq&obj=horizontal-views&obj=vertical-views&obj=max-size")
    assert r.body == b"\r\nHorizontal-views:0 10 20\r\nVertical-views:90 100\r\nMax-size:60 40\r\n"
    mm = "MINMAX=1:0,50&QLT=100"
    value = lambda q: int(np.median(image(app, "FIF=seq&%s&%s" % (mm, q))))  # noqa: E731
    assert abs(value("JTL=0,0") - 51) <= 1  # 10 / 50 of 255: the 000_090 file
    assert abs(value("SDS=10,90&JTL=0,0") - 102) <= 1
    assert abs(value("SDS=0,100&JTL=0,0") - 204) <= 1
    assert abs(value("JTLS=20,0,0,90") - 153) <= 1
    assert get(app, "FIF=seq&SDS=10&JTL=0,0", 404).status == 404  # no 010_010 file
    r = get(app, "FIF=seq&WID=30&CVT=jpeg")
    assert r.header("Content-Disposition") == 'inline;filename="seq.jpg"'
    first = os.stat(env.dir / "seq_pyr_000_090.fits").st_mtime
    assert r.header("Last-Modified") == http_date(first)
    # PFL and SPECTRA give one value list / point per horizontal view
    assert get(app, "FIF=seq&PFL=0:1,1-3,1").body == (
        b'{\n\t"profile": {\n\t\t"0": [10.000000000,10.000000000],\n'
        b'\t\t"10": [20.000000000,20.000000000],\n\t\t"20": [30.000000000,30.000000000]\n\t}\n}')
    body = get(app, "FIF=seq&SPECTRA=0,0,1,1").body
    assert body.count(b"<point>") == 3 and b"<wavelength>20</wavelength>" in body
    with pytest.MonkeyPatch.context() as mp:  # more views than a request may read
        mp.setattr(values, "MAX_VIEWS", 2)
        assert get(app, "FIF=seq&PFL=0:1,1-3,1", 400).body == \
            b"3 views in the sequence, at most 2 are read per request"
    # a custom FILENAME_PATTERN, and a sequence in a subdirectory
    app2 = env(FILENAME_PATTERN="_x_")
    assert get(app2, "FIF=other/s&obj=horizontal-views").body == b"\r\nHorizontal-views:0\r\n"
    assert get(app, "FIF=nothing&obj=max-size", 404).body == \
        b"nothing is neither a file nor part of an image sequence"


def test_sequence_with_two_extensions_is_a_file_error(env):
    data = [fits.PrimaryHDU(np.zeros((10, 10), np.float32))]
    app = env({"dup_pyr_000_090.fits": data, "dup_pyr_000_090.fit": data})
    r = get(app, "FIF=dup&obj=max-size", 404)
    assert r.body.startswith(b"There are multiple file extensions matching")


# --- watermark ---------------------------------------------------------------------------------------


def write_watermark(path, size=(40, 20), value=200, mode="L"):
    wm = Image.new(mode, size, 0)
    inner = Image.new(mode, (size[0] // 2, size[1]), value if mode == "L" else (value,) * len(mode))
    wm.paste(inner, (size[0] // 2, 0))
    wm.save(path)
    return path


def flat_app(env, **extra):
    return env({"f.fits": [fits.PrimaryHDU(np.full((300, 600), 100.0, np.float32))]},
               **extra)


def test_watermark_is_added_with_opacity(env):
    wm = write_watermark(env.dir / "wm.tif")
    app = flat_app(env, WATERMARK=wm, WATERMARK_OPACITY=0.5, WATERMARK_PROBABILITY=1)
    got = image(app, "FIF=f.fits&MINMAX=1:0,255&QLT=100&JTL=2,0").astype(int)
    # 100 everywhere, 100 + 0.5 * 200 where the white half of the watermark landed
    assert got.shape == (256, 256)
    bright = got > 150
    assert 0.5 * 20 * 20 <= bright.sum() <= 1.5 * 20 * 20
    assert abs(np.median(got[bright]) - 200) <= 2 and abs(np.median(got[~bright]) - 100) <= 2
    ys, xs = np.nonzero(bright)
    assert ys.max() - ys.min() <= 21 and xs.max() - xs.min() <= 21  # one 20 x 20 square
    # cached with the watermark: the same bytes again
    assert get(app, "FIF=f.fits&MINMAX=1:0,255&QLT=100&JTL=2,0").body == \
        get(app, "FIF=f.fits&MINMAX=1:0,255&QLT=100&JTL=2,0").body


def test_watermark_probability_scaling_and_formats(env):
    wm = write_watermark(env.dir / "wm.png", size=(400, 100), mode="RGBA")
    none = flat_app(env, WATERMARK=wm, WATERMARK_PROBABILITY=0)
    assert (image(none, "FIF=f.fits&MINMAX=1:0,255&CVT=png") == 100).all()
    app = flat_app(env, WATERMARK=wm, WATERMARK_OPACITY=1, WATERMARK_PROBABILITY=1)
    # the 400 x 100 watermark does not fit a 88-pixel-wide edge tile: scaled down to fit
    got = image(app, "FIF=f.fits&MINMAX=1:0,255&QLT=100&JTL=2,2").astype(int)
    assert got.shape == (256, 88)
    assert (got > 250).sum() > 0.5 * 44 * 22
    # a CVT gets one watermark per tile-sized block
    cvt = image(app, "FIF=f.fits&MINMAX=1:0,255&CVT=png")
    assert cvt.shape == (300, 600)
    for x0 in (0, 256, 512):
        assert (cvt[:, x0 : x0 + 256] == 255).any()
    # an unreadable watermark: no watermark, no error
    (env.dir / "bad.tif").write_bytes(b"not an image")
    bad = flat_app(env, WATERMARK=env.dir / "bad.tif")
    assert (image(bad, "FIF=f.fits&MINMAX=1:0,255&CVT=png") == 100).all()


# --- the response cache ------------------------------------------------------------------------------


class DictCache:
    def __init__(self):
        self.data: dict = {}

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value):
        self.data[key] = value


def test_cvt_goes_through_the_cache_and_errors_do_not(grey):
    app, _ = grey
    cache = DictCache()

    def run(query):
        ctx = Context(app.settings, Responder(app.settings), app.store, cache=cache)
        return commands.run(parser.parse(query), ctx), ctx

    r1, ctx1 = run("FIF=g.fits&RGN=0,0,0.5,0.5&WID=100&CVT=jpeg")
    assert r1.status == 200 and not ctx1.timings.cache_hit
    keys = [k for k in cache.data if k[0] == "CVT"]
    assert len(keys) == 1
    r2, ctx2 = run("FIF=g.fits&RGN=0,0,0.5,0.5&WID=100&CVT=jpeg")
    assert ctx2.timings.cache_hit and r2.to_bytes() == r1.to_bytes()
    run("FIF=g.fits&RGN=0,0,0.5,0.5&WID=100&ROT=90&CVT=jpeg")
    run("FIF=g.fits&RGN=0,0,0.5,0.5&WID=100&CVT=png")
    assert len([k for k in cache.data if k[0] == "CVT"]) == 3
    before = dict(cache.data)
    r, _ = run("CVT=jpeg")
    assert r.status == 400 and cache.data == before
