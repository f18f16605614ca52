"""Region export (CVT), profiles (PFL), SPECTRA, TIL, ROT, SHD, image sequences and the
watermark, through a real nginx in front of ``iipsrv.fcgi --bind``.

Pins, over HTTP:

* VisiOmatic 2's snapshot and profile requests of docs/protocol.md §12.1, verbatim: the
  decoded snapshot equals a NumPy model (region of §7.5 in the level that covers the
  output, pixel-centre bilinear resampling, the §6 pipeline in the ASTRO order), the
  profile holds the FITS values (flipped, §7.6) in iipsrv's format with ``null`` for NaN;
* CVT headers (§8.3), sizes (§5.6), PNG as an extension, ROT, SHD;
* requests with huge WID/HEI/RGN/PFL numbers: a bounded image or an error, quickly, and
  the worker's memory unchanged afterwards;
* image sequences (§4.1) with SDS, and the watermark (§9.1).

The model is computed from the FITS file read with astropy (``_model``), not from iipy.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from tests.e2e import _model as model
from tests.e2e.conftest import ServerProcess, http_get

pytestmark = pytest.mark.e2e

SKY_W, SKY_H = 2048, 1536  # examples/make_examples.py; levels 2048, 1024, 512, 256 wide
BIG = "9" * 400


# --------------------------------------------------------------------------- helpers


def c_round(v: float) -> int:
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def clamp_rgn(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """§5.8, in order: x, y to [0, 1]; w to 1 - x then [0, 1]; h to [0, 1]."""
    x, y = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    if x + w > 1:
        w = 1 - x
    return x, y, min(max(w, 0.0), 1.0), min(max(h, 0.0), 1.0)


def region_at(width: int, height: int, k: int, rgn) -> tuple[int, int, int, int]:
    """§7.5 step 2: the region at level k (halvings)."""
    x, y, w, h = rgn
    out = []
    for pos, size, full in ((x, w, width), (y, h, height)):
        exact = full / 2 ** k
        start, total = c_round(pos * exact), c_round(exact)
        length = max(1, min(c_round(size * total), total - c_round(pos * total)))
        out.append((start, max(1, min(length, (full >> k) - start))))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def covering_level(width: int, height: int, nres: int, rgn, out_w: int, out_h: int) -> int:
    """The level the issue asks for: the most reduced one whose region still has at
    least the output's size each way."""
    k = 0
    while k + 1 < nres:
        _, _, w, h = region_at(width, height, k + 1, rgn)
        if w < out_w or h < out_h:
            break
        k += 1
    return k


def resample(a: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Pixel-centre bilinear resampling of (C, h, w), with np.interp along each axis."""
    c, h, w = a.shape
    px = (np.arange(out_w) + 0.5) * w / out_w - 0.5
    py = (np.arange(out_h) + 0.5) * h / out_h - 0.5
    out = np.empty((c, out_h, out_w), np.float64)
    for i in range(c):
        rows = np.array([np.interp(px, np.arange(w), r) for r in a[i]])
        out[i] = np.array([np.interp(py, np.arange(h), col) for col in rows.T]).T
    return out


def model_export(levels, query: str, rgn, out_w: int, out_h: int,
                 defaults: list[tuple[float, float]]) -> np.ndarray:
    """The snapshot model: normalise (§6.1), resample, then the rest of §6.2."""
    full = levels[0]
    channels, height, width = full.shape
    k = covering_level(width, height, len(levels), rgn, out_w, out_h)
    x, y, w, h = region_at(width, height, k, rgn)
    view = model.parse_view(query, channels)
    src = levels[k][:, y : y + h, x : x + w].astype(np.float64)
    norm = np.empty_like(src)
    for c in range(channels):
        lo, hi = view.minmax.get(c, defaults[c])
        v = (src[c] - lo) / (hi - lo)
        norm[c] = np.where(np.isfinite(v), v, 0.0)
    view.minmax = {c: (0.0, 1.0) for c in range(channels)}
    return model.render(resample(norm, out_w, out_h).astype(np.float32), view, defaults)


def rss_mb(pid: int) -> float:
    """The worker's anonymous resident memory (what an allocation costs): the pages of
    the memory-mapped image and pyramid it touched are shared page cache, not growth."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


def worker_pid(server: ServerProcess) -> int:
    """The one worker (IIPY_WORKERS=1) of the iipy master."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server.proc.pid and fields[0] != "Z":
                pids.append(int(entry))
    assert len(pids) == 1, pids
    return pids[0]


def decode(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as im:
        return np.asarray(im)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pyramid_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pyramids")


@pytest.fixture(scope="module")
def sky(example_data):
    planes = model.fits_planes(example_data["sky"])
    return model.iip_levels(planes)


@pytest.fixture
def front(iipy_server, nginx, pyramid_dir):
    """``start(**env) -> (server, url)``: iipy (one worker) behind nginx."""
    def start(**env):
        env.setdefault("IIPY_CACHE_DIR", pyramid_dir)
        env.setdefault("MEMCACHED_SERVERS", "")
        env.setdefault("IIPY_WORKERS", 1)
        server = iipy_server(**env)
        return server, nginx(server, keepalive=True)
    return start


def get(url, query: str, status: int = 200):
    code, headers, body = http_get(f"{url.iip}?{query}")
    assert code == status, (query, code, body[:300])
    return headers, body


def defaults_of(url, name: str) -> list[tuple[float, float]]:
    _, body = get(url, f"FIF={name}&obj=min-max-sample-values")
    return model.parse_min_max(body.decode().strip())


# --------------------------------------------------------------------------- VisiOmatic 2


@pytest.mark.parametrize("rgn,wid,size", [
    # the map view wider than the image (negative left, width past 1), 1264 screen pixels
    ("-0.1171875,0.2083333333333333,1.234375,0.5", 1264, (1264, 474)),
    # a zoomed-in view, "native pixels": WID = the view width in image pixels
    ("0.3046875,0.4453125,0.0625,0.0416666666666667", 128, (128, 64)),
    # a whole-image view: 1024 wide, from the 1024 level (no full-resolution read)
    ("0,0,1,1", 1024, (1024, 768)),
])
def test_v2_snapshot_matches_the_model(front, sky, rgn, wid, size):
    """§12.1 request 4 verbatim: the tile URL with JTL replaced by RGN, WID and CVT."""
    _, url = front()
    query = (f"FIF=sky.fits&GAM=0.4545&MINMAX=1:80,600&CTW=1;1;1&QLT=100&RGN={rgn}&WID={wid}"
             "&CVT=jpeg")
    headers, body = get(url, query)
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Disposition"] == 'inline;filename="sky.jpg"'
    assert headers["X-Powered-By"] == "IIPImage"
    assert headers["Last-Modified"].endswith(" GMT")
    got, components = model.decode_jpeg(body)
    assert components == 1 and (got.shape[1], got.shape[0]) == size
    parts = [float(v) for v in rgn.split(",")]
    want = model_export(sky, query, clamp_rgn(*parts), size[0], size[1], [(80.0, 600.0)])
    model.assert_close(got, model.jpeg_roundtrip(want), mean=0.6, p99=2, what=query)


def test_v2_profile_and_point_value(front, example_data):
    """§12.1 request 3 verbatim: ``PFL=<R-1>:x1,y1-x2,y2`` (horizontal, vertical, a point):
    the FITS values, flipped (§7.6), iipsrv's format, ``null`` for NaN (§5.22, §12.4)."""
    _, url = front()
    data = model.fits_planes(example_data["sky"])[0][::-1].astype(np.float64)
    for query, want in [
        ("PFL=3:100,200-400,200", data[200, 100:400]),
        ("PFL=3:1500,1000-1500,1300", data[1000:1300, 1500]),
        ("PFL=3:310,430-310,430", data[430, 310:311]),  # inside the NaN block
        ("PFL=3:290,430-330,430", data[430, 290:330]),
    ]:
        headers, body = get(url, "FIF=sky.fits&" + query)
        assert headers["Content-Type"] == "application/json"
        text = ",".join("null" if not np.isfinite(v) else "%.9f" % v for v in want)
        assert body == b'{\n\t"profile": [' + text.encode() + b"]\n}", query
        parsed = json.loads(body)["profile"]  # valid JSON for V2's JSON.parse
        assert len(parsed) == len(want)
    # the cube: pixel-interleaved channels (§5.22)
    cube = model.fits_planes(example_data["cube"])[:, ::-1].astype(np.float64)
    _, body = get(url, "FIF=cube.fits&PFL=3:10,20-13,20")
    assert json.loads(body)["profile"] == pytest.approx(cube[:, 20, 10:13].T.ravel().tolist())
    # a line outside the image, or longer than the limit: a 400 saying why
    _, body = get(url, "FIF=sky.fits&PFL=3:0,0-2049,0", 400)
    assert body.startswith(b"PFL :: Error: ")


# --------------------------------------------------------------------------- CVT forms


def test_cvt_sizes_png_rotation_and_thumbnail(front, sky):
    """§5.6/§7.5 sizes on the 2048 x 1536 image (levels 2048, 1024, 512, 256 wide)."""
    _, url = front()
    for query, size in [
        ("WID=200", (200, 150)), ("HEI=100", (133, 100)), ("WID=300&HEI=300", (300, 225)),
        ("RGN=0.25,0.25,0.5,0.5&WID=400", (400, 300)), ("ROT=90&WID=200", (150, 200)),
        ("ROT=!180&WID=200", (200, 150)), ("", (2048, 1536)), ("WID=6000", (5000, 3750)),
        # a thin strip: the height is limited to MAX_CVT, the width follows the aspect
        ("RGN=0,0,0.01,1&WID=100", (65, 5000)),
    ]:
        _, body = get(url, f"FIF=sky.fits&{query}&CVT=jpeg")
        got = decode(body)
        assert (got.shape[1], got.shape[0]) == size, query
    # PNG (an extension): lossless, so the thumbnail equals the model exactly (±1 for
    # float32 rounding); it comes from the 256-wide level, not the full image
    headers, body = get(url, "FIF=sky.fits&MINMAX=1:80,600&WID=200&CVT=png")
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == 'inline;filename="sky.png"'
    got = decode(body)
    want = model_export(sky, "MINMAX=1:80,600", (0, 0, 1, 1), 200, 150, [(80.0, 600.0)])
    assert got.shape == (150, 200) and np.abs(got.astype(int) - want).max() <= 1
    # ROT on the export: 90 clockwise, mirror, vertical flip
    plain = decode(get(url, "FIF=sky.fits&MINMAX=1:80,600&WID=200&CVT=png")[1])
    for rot, expect in [("90", np.rot90(plain, -1)), ("180", plain[::-1, ::-1]),
                        ("270", np.rot90(plain, 1)), ("!0", plain[:, ::-1]),
                        ("!180", plain[::-1]), ("!90", np.rot90(plain[:, ::-1], -1))]:
        got = decode(get(url, f"FIF=sky.fits&MINMAX=1:80,600&ROT={rot}&WID=200&CVT=png")[1])
        assert np.array_equal(got, expect), rot


def test_shd_til_spectra_lyr_icc_through_nginx(front, example_data):
    _, url = front()
    headers, body = get(url, "FIF=cube.fits&SHD=45,30&QLT=100&JTL=3,0")
    assert model.decode_jpeg(body)[1] == 1  # shading: one channel
    headers, body = get(url, "FIF=sky.fits&SHD=135,30&WID=300&CVT=jpeg")
    assert model.decode_jpeg(body)[0].shape == (225, 300)
    # TIL: iipsrv's framing, column by column, the JTL bytes inside
    headers, body = get(url, "FIF=sky.fits&TIL=1,0-1")
    assert headers["Content-Type"] == "application/vnd.netfpx"
    tile0 = get(url, "FIF=sky.fits&JTL=1,0")[1]
    assert body.startswith(b"Tile,1,0,0/%d:\x02\x00\x00\x00\x00\x11\x00\x00" % (len(tile0) + 8)
                           + tile0 + b"\r\nTile,1,1,0/")
    # SPECTRA on the cube: one point per plane, wavelength = plane index
    headers, body = get(url, "FIF=cube.fits&SPECTRA=3,0,10,20")
    assert headers["Content-Type"] == "application/xml"
    cube = model.fits_planes(example_data["cube"])[:, ::-1]
    assert body == (b'<?xml version="1.0" encoding="UTF-8"?>\n<spectra>\n' + b"".join(
        b"\t<point>\n\t\t<wavelength>%d</wavelength>\n\t\t<reflectance>%f</reflectance>\n"
        b"\t</point>\n" % (c, float(cube[c, 20, 10])) for c in range(3)) + b"</spectra>")
    assert get(url, "FIF=cube.fits&SPECTRA=3,0,300,0", 400)[1] == \
        b"SPECTRA :: Error: x,y coordinates outside of tile boundaries"
    # LYR and ICC are accepted and change nothing
    assert get(url, "FIF=sky.fits&LYR=4&ICC=1&JTL=1,0")[1] == tile0


# --------------------------------------------------------------------------- bounds


def test_huge_numbers_give_bounded_answers_and_leave_memory_alone(front):
    """A request with huge WID/HEI/RGN/PFL numbers is answered quickly with a bounded
    image or an error, and the worker's memory afterwards is what it was before."""
    server, url = front()
    pid = worker_pid(server)
    normal = ["FIF=sky.fits&GAM=0.4545&CTW=1;1;1&RGN=0.2,0.2,0.5,0.5&WID=1000&CVT=jpeg",
              "FIF=cube.fits&CTW=1,0,0;0,1,0;0,0,1&WID=800&CVT=jpeg",
              "FIF=sky.fits&PFL=3:0,0-2000,0", "FIF=sky.fits&JTL=3,5"]
    for _ in range(3):
        for q in normal:
            get(url, q)
    before = rss_mb(pid)
    huge = [
        (f"FIF=sky.fits&WID={BIG}&HEI=-{BIG}&RGN=-1e300,nan,1e300,1e300&CVT=jpeg", 200),
        (f"FIF=cube.fits&WID={BIG}&HEI={BIG}&CVT=png", 200),
        ("FIF=cube.fits&WID=2147483647&HEI=2147483647&RGN=0,0,1e-300,1e-300&CVT=jpeg", 200),
        (f"FIF=sky.fits&RGN=1e-300,1e-300,{BIG},{BIG}&WID=-1&CVT=jpeg", 200),
        (f"FIF=sky.fits&ROT=90&HEI={BIG}&SHD=1,2&CVT=jpeg", 200),
        (f"FIF=sky.fits&PFL=3:0,0-{BIG},0", 400),
        (f"FIF=sky.fits&PFL={BIG}:0,0-1,0", 400),
        (f"FIF=sky.fits&PFL=3:-{BIG},0", 400),
        (f"FIF=sky.fits&TIL=3,0-{BIG}", 404),
        (f"FIF=sky.fits&SPECTRA=3,0,{BIG},{BIG}", 400),
    ]
    timings = []
    for query, status in huge:
        start = time.monotonic()
        headers, body = get(url, query, status)
        timings.append(time.monotonic() - start)
        if status == 200:
            got = decode(body)
            assert max(got.shape[:2]) <= 5000, (query, got.shape)
    assert max(timings) < 10, timings
    for _ in range(3):
        for q in normal:
            get(url, q)
    after = rss_mb(pid)
    print(f"worker RSS {before:.1f} MB before, {after:.1f} MB after; times {timings}")
    assert after - before < 40, (before, after)
    assert worker_pid(server) == pid  # the same worker, never restarted


# --------------------------------------------------------------------------- sequences, watermark


@pytest.fixture
def sequence_dir(tmp_path) -> Path:
    for h, v, value in [(0, 90, 100.0), (30, 90, 200.0), (60, 90, 300.0), (0, 120, 400.0)]:
        fits.PrimaryHDU(np.full((300, 400), value, np.float32)).writeto(
            tmp_path / ("obs_pyr_%03d_%03d.fits" % (h, v)))
    return tmp_path


def test_image_sequence_and_sds(front, sequence_dir):
    _, url = front(FILESYSTEM_PREFIX=f"{sequence_dir}/")
    _, body = get(url, "FIF=obs&obj=horizontal-views&obj=vertical-views")
    assert body == b"\r\nHorizontal-views:0 30 60\r\nVertical-views:90 120\r\n"
    for sds, value in [("", 100), ("SDS=30,90&", 200), ("SDS=60,90&", 300), ("SDS=0,120&", 400)]:
        got = decode(get(url, f"FIF=obs&{sds}MINMAX=1:0,512&CVT=png")[1])
        assert (got == int(value / 512 * 255)).all(), sds
    get(url, "FIF=obs&SDS=45,90&JTL=0,0", 404)
    _, body = get(url, "FIF=obs&PFL=1:0,0-2,0")
    assert json.loads(body) == {"profile": {"0": [100, 100], "30": [200, 200], "60": [300, 300]}}


def test_watermark_through_nginx(front, tmp_path):
    mark = Image.new("L", (64, 32), 0)
    mark.paste(255, (8, 8, 56, 24))
    mark.save(tmp_path / "mark.tif")
    _, url = front(WATERMARK=tmp_path / "mark.tif", WATERMARK_OPACITY=0.25)
    tile = decode(get(url, "FIF=sky.fits&CNT=0&QLT=100&JTL=3,0")[1])
    # a black tile (CNT=0) with the watermark added at 0.25 x 255 = 63, somewhere inside
    lit = tile > 31
    assert 0.7 * 48 * 16 <= lit.sum() <= 1.3 * 48 * 16
    assert abs(int(np.median(tile[lit])) - 63) <= 3
    export = decode(get(url, "FIF=sky.fits&CNT=0&CVT=png")[1])  # 2048 x 1536: 8 x 6 blocks
    assert export.shape == (1536, 2048) and (export == 63).sum() == 48 * 16 * 48
