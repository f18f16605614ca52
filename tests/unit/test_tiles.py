"""Tiles through the Application, decoded and compared with an independent NumPy model:
orientation (FITS rows flipped), floor pyramid levels, partial edge tiles, every BITPIX
with BSCALE/BZERO/BLANK, cubes, and the pipeline commands VisiOmatic 2 sends."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from iipy.protocols.router import Application
from iipy.settings import Settings

W, H = 983, 1061  # odd sizes: partial edge tiles and dropped rows at every level


def smooth(width: int, height: int) -> np.ndarray:
    """FITS-order float data (row 0 = bottom), smooth so that JPEG noise stays small."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return 10.0 + 80.0 * (x / width) + 30.0 * np.sin(y / 97.0) ** 2


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def model_level(fits_data: np.ndarray, k: int) -> np.ndarray:
    """IIP-orientation level k: flip, then 2x2 means k times with floor sizes."""
    a = fits_data[::-1].astype(np.float64)
    for _ in range(k):
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return a


def model_grey(values: np.ndarray, lo: float, hi: float, gamma: float = 1.0,
               invert: bool = False, contrast: float = 1.0) -> np.ndarray:
    v = (values - lo) / (hi - lo)
    if gamma != 1.0:
        v = np.maximum(v, 0) ** gamma
    if invert:
        v = 1 - v
    return np.trunc(np.clip(v * 255 * contrast, 0, 255))


def assert_close(got: np.ndarray, want: np.ndarray, mean: float = 0.8, p99: float = 2.0):
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.mean() <= mean and np.percentile(diff, 99) <= p99, (diff.mean(), diff.max())


@pytest.fixture(scope="module")
def data():
    return smooth(W, H).astype(np.float32)


@pytest.fixture
def app_for(tmp_path):
    def make(name: str, hdu_list, **env) -> Application:
        fits.HDUList(hdu_list).writeto(tmp_path / name)
        base = {"FILESYSTEM_PREFIX": str(tmp_path) + "/", "IIPY_CACHE_DIR": str(tmp_path / "c"),
                "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}
        base.update(env)
        return Application(Settings.from_environ(base))
    return make


def tile(app: Application, query: str) -> np.ndarray:
    r = app.handle({"QUERY_STRING": query})
    assert r.status == 200, r.body
    assert r.header("Content-Type") == "image/jpeg"
    return decode(r.body)


@pytest.mark.parametrize("res,n,k,x,y,w,h", [
    (3, 0, 0, 0, 0, 256, 256),      # top-left = last FITS rows
    (3, 3, 0, 768, 0, 215, 256),    # right edge: 983 - 768
    (3, 19, 0, 768, 1024, 215, 37),  # bottom-right corner
    (2, 1, 1, 256, 0, 235, 256),    # level 1 is 491x530
    (0, 0, 3, 0, 0, 122, 132),      # smallest level, one tile
])
def test_float_tiles_match_model(app_for, data, res, n, k, x, y, w, h):
    app = app_for("f.fits", [fits.PrimaryHDU(data)])
    got = tile(app, "FIF=f.fits&MINMAX=1:0,130&QLT=100&JTL=%d,%d" % (res, n))
    want = model_grey(model_level(data, k)[y : y + h, x : x + w], 0, 130)
    assert_close(got, want)


def test_flip_puts_fits_row_one_at_the_bottom(app_for):
    d = np.zeros((300, 300), np.float32)
    d[0:20, :] = 100.0  # FITS rows 1..20: the bottom of the displayed image
    app = app_for("flip.fits", [fits.PrimaryHDU(d)])
    got = tile(app, "FIF=flip.fits&MINMAX=1:0,100&QLT=100&JTL=1,2")  # bottom-left tile
    assert got.shape == (44, 256)
    assert got[-15:].mean() > 250 and got[:20].mean() < 5


def _bitpix_case(case: str, data: np.ndarray):
    """(HDU, physical values the server must see) for one storage type."""
    phys = data.astype(np.float64)
    if case == "u8":
        raw = np.round(phys).astype(np.uint8)
        return fits.PrimaryHDU(raw), raw.astype(np.float64)
    if case == "i16":
        raw = np.round(phys * 100).astype(np.int16)
        return fits.PrimaryHDU(raw), raw.astype(np.float64)
    if case == "u16":
        raw = np.round(phys * 500).astype(np.uint16)  # up to 60000: stored with BZERO=32768
        hdu = fits.PrimaryHDU(raw)
        assert hdu.header["BZERO"] == 32768
        return hdu, raw.astype(np.float64)
    if case in ("i32", "i64"):
        raw = np.round(phys * 1e6).astype(np.int32 if case == "i32" else np.int64)
        return fits.PrimaryHDU(raw), raw.astype(np.float64)
    if case == "f64":
        return fits.PrimaryHDU(phys), phys
    # int16 with BSCALE/BZERO and BLANK
    raw = np.round((phys - 50.0) / 0.01).astype(np.int16)
    raw[0:10, 0:10] = -32768
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = 0.01, 50.0, -32768
    phys = raw * 0.01 + 50.0
    phys[0:10, 0:10] = np.nan
    return hdu, phys


@pytest.mark.parametrize("case", ["u8", "i16", "u16", "i32", "i64", "f64", "scaled"])
def test_every_bitpix(app_for, data, case):
    hdu, phys = _bitpix_case(case, data)
    lo, hi = float(np.nanmin(phys)), float(np.nanmax(phys))
    app = app_for("b.fits", [hdu])
    got = tile(app, "FIF=b.fits&MINMAX=1:%r,%r&QLT=100&JTL=3,16" % (lo, hi))  # bottom-left
    level = model_level(phys, 0)[1024:1061, 0:256]
    want = model_grey(np.where(np.isnan(level), lo, level), lo, hi)  # NaN/BLANK: bottom
    assert_close(got, want)
    if case == "scaled":
        assert (got[-10:, :10] <= 2).all()  # the BLANK block, bottom-left


def test_visiomatic_forms(app_for, data):
    app = app_for("f.fits", [fits.PrimaryHDU(data)])
    base = model_level(data, 0)[0:256, 0:256]
    got = tile(app, "FIF=f.fits&INV&CNT=1.5&GAM=0.4545&MINMAX=1:1.5e+1,1.2e2&CTW=1;1;1&QLT=100"
                    "&JTL=3,0")
    want = model_grey(base, 15.0, 120.0, gamma=0.4545, invert=True, contrast=1.5)
    assert_close(got, want, mean=1.0, p99=3.0)
    # MINMAX after the output command is ignored (left to right)
    a = tile(app, "FIF=f.fits&QLT=100&JTL=3,0&MINMAX=1:0,1")
    b = tile(app, "FIF=f.fits&QLT=100&JTL=3,0")
    assert np.array_equal(a, b)


def test_cube_channels_and_colour(app_for, data):
    cube = np.stack([data, data * 0.5, 130 - data]).astype(np.float32)
    app = app_for("c.fits", [fits.PrimaryHDU(cube)])
    mm = "&MINMAX=1:0,130&MINMAX=2:0,130&MINMAX=3:0,130&QLT=100"
    rgb = tile(app, "FIF=c.fits" + mm + "&JTL=3,0")
    assert rgb.shape == (256, 256, 3)
    # VisiOmatic's mono mode on 3 channels: three equal rows give an RGB JPEG of equal
    # channels (iipsrv keeps C >= 3 channels)
    mono = tile(app, "FIF=c.fits" + mm + "&CTW=0,0,1;0,0,1;0,0,1&JTL=3,0")
    assert mono.shape == (256, 256, 3)
    for c in range(3):
        assert_close(mono[..., c], model_grey(model_level(cube[2], 0)[0:256, 0:256], 0, 130))
    # two channels: grey from CTW row 0
    app2 = app_for("c2.fits", [fits.PrimaryHDU(cube[:2])])
    grey = tile(app2, "FIF=c2.fits&MINMAX=1:0,130&MINMAX=2:0,130&QLT=100&CTW=0,1;1,0&JTL=3,0")
    assert grey.shape == (256, 256)
    assert_close(grey, model_grey(model_level(cube[1], 0)[0:256, 0:256], 0, 130))
    colour = tile(app, "FIF=c.fits" + mm + "&CTW=1,0,0;0,1,0;0,0,1&JTL=3,0")
    for c in range(3):
        assert_close(colour[..., c], model_grey(model_level(cube[c], 0)[0:256, 0:256], 0, 130),
                     mean=1.5, p99=5.0)  # 4:2:0 chroma


def test_ctw_uses_at_most_channels_rows_and_columns(app_for, data):
    """Only rows and columns below the channel count take part in CTW: a request with
    many short rows and one long row renders as its C x C corner, in memory of that
    size (the rows were padded to rows x longest row: quadratic in the query's length,
    2.5 GB for a 64 kB query)."""
    cube = np.stack([data, data * 0.5, 130 - data]).astype(np.float32)
    app = app_for("c.fits", [fits.PrimaryHDU(cube)])
    mm = "&MINMAX=1:0,130&MINMAX=2:0,130&MINMAX=3:0,130&QLT=100"
    n = 3000
    big = "&CTW=0,0,1;1,0,0,7;0,1" + ";2" * n + "&CTW=" + ",3" * n
    want = tile(app, "FIF=c.fits" + mm + "&CTW=0,0,1;1,0,0;0,1,0&JTL=3,0")
    tracemalloc.start()
    try:
        got = tile(app, "FIF=c.fits" + mm + big + "&JTL=3,0")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, want)
    assert peak < 16 << 20, peak  # the old padding took > 100 MB here
    # the same for a full-resolution tile (rendered from the raw samples) and a 16-bit
    # export of one channel
    grey = app_for("g.fits", [fits.PrimaryHDU(data)])
    for output in ("JTL=0,0", "JTL=3,5", "WID=200&CVT=png16"):
        want = grey.handle({"QUERY_STRING": "FIF=g.fits&CTW=0.5&" + output})
        tracemalloc.start()
        try:
            got = grey.handle({"QUERY_STRING": "FIF=g.fits&CTW=0.5,9,9" + ";2" * n + "&CTW="
                               + ",3" * n + "&" + output})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got.status == 200 and got.body == want.body, output
        assert peak < 16 << 20, (output, peak)


def test_mef_selector_and_default_hdu(app_for, data):
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI"),
            fits.ImageHDU(np.zeros((50, 60), np.float32), name="WHT")]
    app = app_for("m.fits", hdus)
    ok = app.handle({"QUERY_STRING": "FIF=m.fits&obj=max-size"})
    assert ok.body == b"\r\nMax-size:983 1061\r\n"  # the first image HDU
    for sel in ("%5B2%5D", "[2]", "[WHT]", "[wht,1]"):
        r = app.handle({"QUERY_STRING": "FIF=m.fits%s&obj=max-size" % sel})
        assert r.body == b"\r\nMax-size:60 50\r\n", sel
    r = app.handle({"QUERY_STRING": "FIF=m.fits[7]&obj=max-size"})
    assert r.status == 404
    r = app.handle({"QUERY_STRING": "FIF=m.fits[0]&obj=max-size"})  # primary has no data
    assert r.status == 404


def test_metadata_answer_for_visiomatic(app_for, data):
    h = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CD1_1": -5e-5, "CD2_2": 5e-5,
                     "CRPIX1": 1.0, "CRPIX2": 1.0, "CRVAL1": 150.0, "CRVAL2": 2.0})
    app = app_for("f.fits", [fits.PrimaryHDU(data, h)])
    r = app.handle({"QUERY_STRING": "FIF=f.fits&obj=IIP,1.0&obj=max-size&obj=tile-size"
                    "&obj=resolution-number&obj=bits-per-channel&obj=min-max-sample-values"
                    "&obj=subject"})
    assert r.status == 200
    text = r.body.decode()
    lines = text.split("\r\n")
    assert lines[:5] == ["IIP:1.0", "Max-size:983 1061", "Tile-size:256 256",
                         "Resolution-number:4", "Bits-per-channel:32"]
    assert lines[5].startswith("Min-Max-sample-values: ")
    lo, hi = (float(v) for v in lines[5].split(":")[1].split())
    assert lines[5] == "Min-Max-sample-values: %.9g  %.9g" % (lo, hi)
    assert 10 <= lo < hi <= 120
    n = int(lines[6].split("/")[1].split(":")[0])
    header = lines[6].split(":", 1)[1]
    assert len(header) == n and n % 80 == 0
    assert text.endswith("\r\n")
    assert r.header("Last-Modified").endswith(" GMT")


def test_if_modified_since(app_for, data):
    app = app_for("f.fits", [fits.PrimaryHDU(data)])
    r = app.handle({"QUERY_STRING": "FIF=f.fits&JTL=0,0"})
    lm = r.header("Last-Modified")
    r304 = app.handle({"QUERY_STRING": "FIF=f.fits&JTL=0,0", "HTTP_IF_MODIFIED_SINCE": lm})
    assert r304.to_bytes() == b"Status: 304 Not Modified\r\nServer: %s\r\n\r\n" % \
        app.settings.server_token.encode()
    older = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert app.handle({"QUERY_STRING": "FIF=f.fits&JTL=0,0",
                       "HTTP_IF_MODIFIED_SINCE": older}).status == 200
    for garbage in ("garbage", "Mon, 01 Jan 99999999999 00:00:00 GMT",
                    "Mon, 01 Jan 2020 99999999999999:00:00 GMT", "1 Jan 9999 23:59:59 -2400",
                    "Mon, 01 Jan 2020 00:00:00 +99999999", "\udcff"):
        # ignored, as unreadable dates are (a huge year or hour raised OverflowError
        # outside the error mapping: a 500)
        assert app.handle({"QUERY_STRING": "FIF=f.fits&JTL=0,0",
                           "HTTP_IF_MODIFIED_SINCE": garbage}).status == 200, garbage


def test_changed_file_is_reopened(app_for, data, tmp_path):
    app = app_for("f.fits", [fits.PrimaryHDU(data)])
    assert app.handle({"QUERY_STRING": "FIF=f.fits&obj=max-size"}).body == \
        b"\r\nMax-size:983 1061\r\n"
    import os
    fits.PrimaryHDU(np.zeros((10, 20), np.float32)).writeto(tmp_path / "f.fits", overwrite=True)
    os.utime(tmp_path / "f.fits", ns=(1, 2_000_000_000_000_000_000))
    assert app.handle({"QUERY_STRING": "FIF=f.fits&obj=max-size"}).body == b"\r\nMax-size:20 10\r\n"


def test_pfl_values_and_format(app_for):
    d = np.arange(12 * 10, dtype=np.float32).reshape(10, 12)
    d[9, 3] = np.nan  # IIP row 0, column 3
    app = app_for("p.fits", [fits.PrimaryHDU(d)])
    r = app.handle({"QUERY_STRING": "FIF=p.fits&PFL=0:1,0-5,0"})
    assert r.body == (b'{\n\t"profile": [109.000000000,110.000000000,null,112.000000000]\n}')
    assert r.header("Content-Type") == "application/json"
    r = app.handle({"QUERY_STRING": "FIF=p.fits&PFL=0:2,1-2,4"})  # vertical, end exclusive
    assert r.body == b'{\n\t"profile": [98.000000000,86.000000000,74.000000000]\n}'
    ints = np.array([[0, 255, 9], [65535, 7, 8]], np.int32)
    app = app_for("i.fits", [fits.PrimaryHDU(ints)])
    r = app.handle({"QUERY_STRING": "FIF=i.fits&PFL=0:0,0-2,0"})
    assert r.body == b'{\n\t"profile": [65535,7]\n}'


def test_mef_extensions_as_channels(app_for, data):
    """``[*]``: every 2-D image extension of the first one's size is a channel, each
    with its own scaling; labels come from FILTER."""
    scaled = fits.ImageHDU(np.round((data * 0.5 - 5.0) / 0.01).astype(np.int16), name="R")
    scaled.header["BSCALE"], scaled.header["BZERO"], scaled.header["FILTER"] = 0.01, 5.0, "r"
    g = fits.ImageHDU(data, name="G")
    g.header["FILTER"] = "g"
    i = fits.ImageHDU(130 - data, name="I")
    i.header["FILTER"] = "i"
    other = fits.ImageHDU(np.zeros((10, 10), np.float32), name="SMALL")
    app = app_for("mef.fits", [fits.PrimaryHDU(), g, scaled, other, i])
    r = app.handle({"QUERY_STRING": "FIF=mef.fits[*]&obj=max-size&obj=subject"})
    assert r.status == 200
    text = r.body.decode()
    assert "Max-size:983 1061" in text
    for n, band in ((1, "g"), (2, "r"), (3, "i")):
        assert ("CHAN%04d= '%s" % (n, band)) in text
    mm = "&MINMAX=1:0,130&MINMAX=2:0,130&MINMAX=3:0,130&QLT=100"
    rgb = tile(app, "FIF=mef.fits%5B*%5D" + mm + "&CTW=1,0,0;0,1,0;0,0,1&JTL=3,0")
    want_r = model_grey(model_level(data * 0.5, 0)[0:256, 0:256], 0, 130)  # raw*0.01 + 5
    assert rgb.shape == (256, 256, 3)
    assert_close(rgb[..., 1], want_r, mean=1.5, p99=5.0)  # the scaled int16 plane
    r = app.handle({"QUERY_STRING": "FIF=mef.fits[*]&PFL=3:0,0-2,0"})
    vals = [float(v) for v in r.body.split(b"[")[1].split(b"]")[0].split(b",")]
    assert len(vals) == 6  # two pixels x three channels, pixel-interleaved
    assert vals[0] == pytest.approx(data[-1, 0], abs=1e-4)
    assert vals[1] == pytest.approx(data[-1, 0] * 0.5, abs=0.006)
    assert vals[2] == pytest.approx(130 - data[-1, 0], abs=1e-4)
