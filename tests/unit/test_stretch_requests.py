"""Stretches through the Application: GAM=log/asinh[:BETA]/sqrt/<power>, CNT=st/eq/<factor>, in
JTL tiles and CVT exports, against the NumPy model (``kernels.reference``).

The model of a tile is ``reference.render`` on the level's window (level 0: the FITS data
flipped; reduced levels: ``reference.bin2x2`` of the level above), with the histogram of
CNT=st/eq taken from the smallest level (``reference.histogram``) with the view's range. The
model of an export at a level's own size is the same on the whole level, with CNT=st's
narrowed range (min + d n0/255, min + d n1/255) computed here. Tiles are compared before JPEG
coding (the pixels handed to the encoder), exports as lossless PNG. LOG, ASINH and powers may
differ from the exact formula by 1 DN (the compiled kernel's tables); SQRT, the linear
stretch and both histogram operations are exact.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from iipy.imaging import encode, kernels, render
from iipy.imaging.display import display_range
from iipy.imaging.paths import resolve
from iipy.imaging.kernels import (
    CMAP_HOT,
    CMAP_JET,
    STRETCH_ASINH,
    STRETCH_LOG,
    STRETCH_POWER,
    STRETCH_SQRT,
    reference,
)
from iipy.protocols.router import Application
from iipy.settings import Settings
from tests.unit._stiff import sky_image

F32 = np.float32
TILE = 256
#: MINMAX of the requests: "tight" saturates the stars (CNT=st moves the minimum only),
#: "wide" holds every value (CNT=st moves both ends).
GREY_RANGES = {"tight": [(985.5, 1180.25)], "wide": [(950.0, 80000.0)]}
CUBE_RANGES = {"tight": [(990.0, 1100.0), (985.0, 1300.0), (1000.0, 1600.0)],
               "wide": [(900.0, 6000.0), (1000.0, 3000.0), (1100.0, 2000.0)]}
GREY_RANGE = GREY_RANGES["tight"][0]

#: (query, reference.render keywords): every stretch word, numbers at the edges, CNT's words
#: and their interplay with a later CNT.
CASES = [
    ("GAM=log", dict(stretch=STRETCH_LOG)),
    ("GAM=Logarithm", dict(stretch=STRETCH_LOG)),
    ("GAM=asinh", dict(stretch=STRETCH_ASINH, gamma=0.1)),
    ("GAM=asinh:0.02", dict(stretch=STRETCH_ASINH, gamma=0.02)),
    ("GAM=ASINH:5", dict(stretch=STRETCH_ASINH, gamma=5.0)),
    ("GAM=asinh:0", dict(stretch=STRETCH_ASINH, gamma=1e-6)),
    ("GAM=asinh:1e400", dict(stretch=STRETCH_ASINH, gamma=1e6)),
    ("GAM=asinh:nan", dict(stretch=STRETCH_ASINH, gamma=0.1)),
    ("GAM=sqrt", dict(stretch=STRETCH_SQRT)),
    ("GAM=0.4545", dict(stretch=STRETCH_POWER, gamma=0.4545)),
    ("GAM=4545", dict(stretch=STRETCH_POWER, gamma=4545.0)),
    ("GAM=-4545", dict(stretch=STRETCH_POWER, gamma=-4545.0)),
    ("GAM=1e400", dict(stretch=STRETCH_POWER, gamma=float("inf"))),
    ("GAM=-1e400", dict(stretch=STRETCH_POWER, gamma=float("-inf"))),
    ("GAM=nan", dict(stretch=STRETCH_POWER, gamma=float("nan"))),
    ("GAM=0", dict(stretch=STRETCH_POWER, gamma=0.0)),
    ("GAM=log&GAM=1", dict()),
    ("CNT=st", dict(autostretch=True)),
    ("CNT=Stretch&GAM=asinh", dict(autostretch=True, stretch=STRETCH_ASINH, gamma=0.1)),
    ("CNT=eq", dict(equalize=True)),
    ("CNT=equalization&GAM=sqrt", dict(equalize=True, stretch=STRETCH_SQRT)),
    ("CNT=st&CNT=eq", dict(autostretch=True, equalize=True)),
    ("CNT=st&CNT=1.5", dict(contrast=1.5)),
    ("CNT=0.7&CNT=eq", dict(contrast=0.7, equalize=True)),
    ("CNT=eq&CNT=2", dict(contrast=2.0, equalize=True)),
    ("CNT=1e400&GAM=log", dict(contrast=float("inf"), stretch=STRETCH_LOG)),
    ("CNT=st&GAM=log&INV&CMP=jet", dict(autostretch=True, stretch=STRETCH_LOG, invert=True,
                                         cmap=CMAP_JET)),
    ("CNT=eq&GAM=0.4545&CMP=hot", dict(equalize=True, gamma=0.4545, cmap=CMAP_HOT)),
]


def _cid(case) -> str:
    return case[0]


def _tolerance(kw: dict) -> int:
    """1 DN where the compiled kernel interpolates the curve in a table (LOG, ASINH, a power
    other than 1), else 0."""
    stretch = kw.get("stretch", STRETCH_POWER)
    if stretch == STRETCH_SQRT or (stretch == STRETCH_POWER and kw.get("gamma", 1.0) == 1.0):
        return 0
    return 1


def iip_levels(fits_data: np.ndarray, n: int) -> list[np.ndarray]:
    """Levels 0..n-1 as float32 (C, h, w) in IIP orientation: flipped, then the binning
    twin."""
    planes = fits_data if fits_data.ndim == 3 else fits_data[np.newaxis]
    levels = [np.ascontiguousarray(planes[:, ::-1], F32)]
    for _ in range(1, n):
        levels.append(reference.bin2x2(levels[-1]))
    return levels


def minmax(ranges: list[tuple[float, float]]) -> str:
    return "".join("&MINMAX=%d:%r,%r" % (c + 1, lo, hi) for c, (lo, hi) in enumerate(ranges))


def narrowed(mins, maxs, hist) -> tuple[list[float], list[float]]:
    nz = np.flatnonzero(hist)
    if nz.size == 0:
        return list(mins), list(maxs)
    n0, n1 = int(nz[0]), int(nz[-1])
    return ([lo + (hi - lo) * n0 / 255.0 for lo, hi in zip(mins, maxs)],
            [lo + (hi - lo) * n1 / 255.0 for lo, hi in zip(mins, maxs)])


def model(src: np.ndarray, mins, maxs, smallest: np.ndarray, kw: dict, export: bool
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels before CNT=eq, CNT=eq's table or None) of the view ``kw``."""
    kw = dict(kw)
    eq = kw.pop("equalize", False)
    st = kw.pop("autostretch", False)
    hist = reference.histogram(smallest, mins, maxs)
    if st and export:
        mins, maxs = narrowed(mins, maxs, hist)
        st = False
    out = reference.render(src, mins, maxs, autostretch=st, histogram=hist if st else None, **kw)
    return out, (kernels.equalization_table(hist) if eq else None)


def assert_model(got: np.ndarray, want: np.ndarray, table: np.ndarray | None, tol: int) -> None:
    """got equals the model, or (LOG, ASINH) the model's value 1 DN off, through CNT=eq's
    table when there is one."""
    assert got.shape == want.shape and got.dtype == np.uint8
    q = want.astype(np.int16)
    ok = np.zeros(got.shape, bool)
    for d in range(-tol, tol + 1):
        v = np.clip(q + d, 0, 255)
        ok |= got == (table[v] if table is not None else v)
    assert ok.all(), (np.argwhere(~ok)[:5], got[~ok][:5], want[~ok][:5])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A 600x520 grey sky (3 levels: 600x520, 300x260, 150x130) with stars, a galaxy and
    NaN pixels (none in a whole 2x2 block, so that the smallest level has none and CNT=st's
    lowest level is not 0), and a 3-plane 300x280 cube (2 levels), FITS order."""
    root = tmp_path_factory.mktemp("stretch")
    grey = sky_image(600, 520, 41, nstars=120, galaxy=True)
    grey[300, 50:90] = np.nan
    grey[11, 7] = np.nan
    fits.PrimaryHDU(grey).writeto(root / "grey.fits")
    cube = np.stack([sky_image(300, 280, 50 + k, nstars=40) * F32(1 + 0.1 * k)
                     for k in range(3)])
    fits.PrimaryHDU(cube).writeto(root / "cube.fits")
    return root, {"grey.fits": grey, "cube.fits": cube}


@pytest.fixture(scope="module")
def app(images, tmp_path_factory) -> Application:
    root, _ = images
    return Application(Settings.from_environ({
        "FILESYSTEM_PREFIX": str(root) + "/",
        "IIPY_CACHE_DIR": str(tmp_path_factory.mktemp("stretchcache")),
        "VERBOSITY": "0", "MEMCACHED_SERVERS": "", "MAX_IMAGE_CACHE_SIZE": "0"}))


@pytest.fixture
def sent(monkeypatch) -> list[np.ndarray]:
    """The pixels every JPEG of the test was encoded from."""
    seen: list[np.ndarray] = []
    real = encode.jpeg

    def spy(pixels: np.ndarray, quality: int) -> bytes:
        seen.append(np.array(pixels, copy=True))
        return real(pixels, quality)

    monkeypatch.setattr(encode, "jpeg", spy)
    return seen


def jtl(app: Application, sent: list[np.ndarray], query: str) -> np.ndarray:
    sent.clear()
    r = app.handle({"QUERY_STRING": query})
    assert r.status == 200, r.body
    assert r.header("Content-Type") == "image/jpeg"
    assert len(sent) == 1
    return sent[0]


def png(app: Application, query: str) -> np.ndarray:
    r = app.handle({"QUERY_STRING": query})
    assert r.status == 200, r.body
    assert r.header("Content-Type") == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.body)))


# ---------------------------------------------------------------------------------------------
# JTL
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_cid)
@pytest.mark.parametrize("span", ["tight", "wide"])
@pytest.mark.parametrize(("res", "tile", "k", "x", "y"), [(2, 4, 0, 256, 256), (1, 1, 1, 256, 0),
                                                          (0, 0, 2, 0, 0)])
def test_grey_tile_matches_model(app, images, sent, case, span, res, tile, k, x, y) -> None:
    query, kw = case
    _, data = images
    levels = iip_levels(data["grey.fits"], 3)
    lw, lh = levels[k].shape[2], levels[k].shape[1]
    src = np.ascontiguousarray(levels[k][:, y : y + TILE, x : x + TILE])
    assert src.shape[1:] == (min(TILE, lh - y), min(TILE, lw - x))
    ranges = GREY_RANGES[span]
    got = jtl(app, sent, "FIF=grey.fits%s&%s&JTL=%d,%d" % (minmax(ranges), query, res, tile))
    want, table = model(src, [ranges[0][0]], [ranges[0][1]], levels[2], kw, export=False)
    assert_model(got, want, table, _tolerance(kw))


@pytest.mark.parametrize("case", CASES, ids=_cid)
@pytest.mark.parametrize("span", ["tight", "wide"])
def test_colour_tile_matches_model(app, images, sent, case, span) -> None:
    """Three planes mixed by CTW (VisiOmatic's colour mode); CMP keeps channel 0."""
    query, kw = case
    _, data = images
    levels = iip_levels(data["cube.fits"], 2)
    src = np.ascontiguousarray(levels[0][:, 256:280, 0:256])
    ctw = [[0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.3, 0.7]]
    ranges = CUBE_RANGES[span]
    got = jtl(app, sent, "FIF=cube.fits%s&CTW=0.6,0.4,0;0,1,0;0,0.3,0.7&%s&JTL=1,2"
              % (minmax(ranges), query))
    want, table = model(src, [lo for lo, _ in ranges], [hi for _, hi in ranges], levels[1],
                        dict(kw, ctw=ctw), export=False)
    assert_model(got, want, table, _tolerance(kw))


@pytest.mark.parametrize("query,kw", [
    ("GAM=asinh&CNT=st", dict(stretch=STRETCH_ASINH, gamma=0.1, autostretch=True)),
    ("CNT=eq&GAM=log", dict(stretch=STRETCH_LOG, equalize=True)),
])
def test_default_range_is_the_reported_one(app, images, sent, query, kw) -> None:
    """Without MINMAX the range is the image's default (stiff), as OBJ reports it."""
    _, data = images
    cube = data["cube.fits"]
    ranges = [display_range(cube[c], "stiff") for c in range(3)]
    r = app.handle({"QUERY_STRING": "FIF=cube.fits&obj=min-max-sample-values"})
    shown = [float(v) for v in r.body.decode().split(":", 1)[1].split()]
    assert shown == [float("%.9g" % v) for pair in ranges for v in pair]
    levels = iip_levels(cube, 2)
    got = jtl(app, sent, "FIF=cube.fits&%s&JTL=0,0" % query)
    want, table = model(levels[1], [lo for lo, _ in ranges], [hi for _, hi in ranges],
                        levels[1], kw, export=False)
    assert_model(got, want, table, _tolerance(kw))


def test_sent_jpeg_holds_the_stretch(app, images, sent) -> None:
    """The bytes carry the pixels the encoder was given (QLT=100: a few DN of JPEG noise)."""
    lo, hi = GREY_RANGE
    r = app.handle({"QUERY_STRING": "FIF=grey.fits&MINMAX=1:%r,%r&GAM=asinh&CNT=eq&QLT=100"
                                    "&JTL=0,0" % (lo, hi)})
    assert r.status == 200
    decoded = np.asarray(Image.open(io.BytesIO(r.body))).astype(np.int16)
    assert np.abs(decoded - sent[-1]).mean() < 1.0
    plain = app.handle({"QUERY_STRING": "FIF=grey.fits&MINMAX=1:%r,%r&QLT=100&JTL=0,0"
                                        % (lo, hi)})
    linear = np.asarray(Image.open(io.BytesIO(plain.body))).astype(np.int16)
    assert np.abs(decoded - linear).mean() > 10  # the stretch shows


# ---------------------------------------------------------------------------------------------
# CVT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_cid)
@pytest.mark.parametrize("span", ["tight", "wide"])
@pytest.mark.parametrize(("size", "k"), [("", 0), ("WID=150&", 2)])
def test_grey_export_matches_model(app, images, case, span, size, k) -> None:
    """CVT=png of the whole image at full size (level 0) and at the smallest level's size
    (level 2 read as it is): no resampling, so the model is the level's."""
    query, kw = case
    _, data = images
    levels = iip_levels(data["grey.fits"], 3)
    ranges = GREY_RANGES[span]
    got = png(app, "FIF=grey.fits%s&%s&%sCVT=png" % (minmax(ranges), query, size))
    want, table = model(levels[k], [ranges[0][0]], [ranges[0][1]], levels[2], kw, export=True)
    assert_model(got, want, table, _tolerance(kw))


@pytest.mark.parametrize("case", [c for c in CASES if "CNT=" in c[0]], ids=_cid)
@pytest.mark.parametrize("span", ["tight", "wide"])
def test_colour_export_matches_model(app, images, case, span) -> None:
    query, kw = case
    _, data = images
    levels = iip_levels(data["cube.fits"], 2)
    ranges = CUBE_RANGES[span]
    got = png(app, "FIF=cube.fits%s&%s&CVT=png" % (minmax(ranges), query))
    want, table = model(levels[0], [lo for lo, _ in ranges], [hi for _, hi in ranges],
                        levels[1], kw, export=True)
    assert_model(got, want, table, _tolerance(kw))


def test_equalisation_comes_after_col(app, images) -> None:
    """CNT=eq maps the bytes COL=grey made of the colour output (iipsrv 1.2's order)."""
    _, data = images
    levels = iip_levels(data["cube.fits"], 2)
    ranges = CUBE_RANGES["tight"]
    mins = [lo for lo, _ in ranges]
    maxs = [hi for _, hi in ranges]
    got = png(app, "FIF=cube.fits%s&CNT=eq&COL=grey&CVT=png" % minmax(ranges))
    rgb = reference.render(levels[0], mins, maxs).astype(np.uint32)
    grey = ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471) >> 16)
    table = kernels.equalization_table(reference.histogram(levels[1], mins, maxs))
    assert np.array_equal(got, table[grey])


# ---------------------------------------------------------------------------------------------
# The histogram, SHD, the cache key
# ---------------------------------------------------------------------------------------------


def test_every_tile_shares_the_smallest_levels_mapping(app, images, sent, monkeypatch) -> None:
    """CNT=st and CNT=eq use the smallest level's histogram for every tile of every level
    (no seams between tiles), computed once per range and kept by the open image."""
    _, data = images
    levels = iip_levels(data["grey.fits"], 3)
    lo, hi = 990.0, 1150.0  # a range no other test asks for
    calls = []
    real = kernels.histogram
    monkeypatch.setattr(kernels, "histogram", lambda *a: calls.append(1) or real(*a))
    table = kernels.equalization_table(reference.histogram(levels[2], [lo], [hi]))
    for res, n, k, x, y in [(2, 0, 0, 0, 0), (2, 8, 0, 512, 512), (1, 3, 1, 256, 256),
                            (0, 0, 2, 0, 0)]:
        got = jtl(app, sent, "FIF=grey.fits&MINMAX=1:%r,%r&CNT=eq&JTL=%d,%d" % (lo, hi, res, n))
        src = np.ascontiguousarray(levels[k][:, y : y + TILE, x : x + TILE])
        assert np.array_equal(got, table[reference.render(src, [lo], [hi])])
    jtl(app, sent, "FIF=grey.fits&MINMAX=1:%r,%r&CNT=eq&CNT=st&JTL=2,1" % (lo, hi))
    assert len(calls) == 1
    image = app.store.open(resolve("grey.fits", app.settings))
    view = render.View(minmax={0: (lo, hi)}, equalize=True)
    assert image.histogram(view) is image.histogram(render.View(minmax={0: (lo, hi)},
                                                                autostretch=True))
    assert not image.histogram(view).flags.writeable
    assert image.histogram(render.View(minmax={0: (lo, hi)})) is None  # no CNT word
    assert len(calls) == 1


@pytest.mark.parametrize("query", ["CNT=st", "CNT=eq", "CNT=st&CNT=eq&GAM=asinh"])
def test_shade_with_histogram_words(app, images, sent, query) -> None:
    """SHD: CNT=st narrows the range before the shading (the relief of the narrowed values),
    CNT=eq maps the shaded bytes; tiles and the export agree."""
    base = "FIF=grey.fits%s&SHD=315,40&%s" % (minmax(GREY_RANGES["wide"]), query)
    tiles = [jtl(app, sent, base + "&JTL=1,%d" % n) for n in range(4)]
    whole = png(app, base + "&WID=300&CVT=png")
    assert whole.shape == (260, 300)
    top = np.hstack([tiles[0], tiles[1]])
    bottom = np.hstack([tiles[2], tiles[3]])
    assert np.array_equal(np.vstack([top, bottom]), whole)
    plain = png(app, "FIF=grey.fits%s&SHD=315,40&WID=300&CVT=png" % minmax(GREY_RANGES["wide"]))
    assert not np.array_equal(plain, whole)


def test_view_key_tells_stretches_apart() -> None:
    keys = set()
    for stretch, gamma, st, eq in [(STRETCH_POWER, 1.0, False, False),
                                   (STRETCH_LOG, 0.0, False, False),
                                   (STRETCH_SQRT, 0.0, False, False),
                                   (STRETCH_ASINH, 0.1, False, False),
                                   (STRETCH_ASINH, 0.2, False, False),
                                   (STRETCH_POWER, 1.0, True, False),
                                   (STRETCH_POWER, 1.0, False, True),
                                   (STRETCH_POWER, 1.0, True, True)]:
        view = render.View(stretch=stretch, gamma=gamma, autostretch=st, equalize=eq)
        keys.add(view.key())
    assert len(keys) == 8


def test_cached_answers_differ_per_stretch(images, tmp_path) -> None:
    """With the response cache on, each stretch gets its own answer."""
    root, _ = images
    app = Application(Settings.from_environ({
        "FILESYSTEM_PREFIX": str(root) + "/", "IIPY_CACHE_DIR": str(tmp_path / "c"),
        "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}))
    bodies = []
    for q in ["", "&GAM=log", "&GAM=sqrt", "&GAM=asinh", "&GAM=asinh:0.5", "&CNT=st", "&CNT=eq",
              "&CNT=st&CNT=eq"]:
        for _ in range(2):
            r = app.handle({"QUERY_STRING": "FIF=grey.fits%s%s&JTL=1,0"
                                            % (minmax(GREY_RANGES["wide"]), q)})
            assert r.status == 200
        bodies.append(r.body)
    assert len(set(bodies)) == len(bodies)


# ---------------------------------------------------------------------------------------------
# 16-bit exports and TIFF
# ---------------------------------------------------------------------------------------------


def _stretched(v: np.ndarray, stretch: int, gamma: float) -> np.ndarray:
    """GAM's curves written out (float32 in, float32 out), from docs/protocol.md §5.14."""
    v = np.maximum(v, F32(0))
    x = v.astype(np.float64)
    if stretch == STRETCH_LOG:
        return (np.log1p(255.0 * x) / np.log(256.0)).astype(F32)
    if stretch == STRETCH_ASINH:
        return (np.arcsinh(x / gamma) / np.arcsinh(1.0 / gamma)).astype(F32)
    if stretch == STRETCH_SQRT:
        return np.sqrt(v)
    return v ** F32(gamma)


@pytest.mark.parametrize("query,stretch,gamma", [
    ("GAM=log", STRETCH_LOG, 0.0), ("GAM=asinh:0.05", STRETCH_ASINH, 0.05),
    ("GAM=sqrt", STRETCH_SQRT, 0.0), ("GAM=0.4545", STRETCH_POWER, 0.4545),
])
@pytest.mark.parametrize("cnt", ["", "&CNT=st"])
def test_16bit_export_is_stretched(app, images, query, stretch, gamma, cnt) -> None:
    """CVT=png16 of one channel: the stretch on normalised float32 values, then
    v * 65535 truncated (CNT=st: the narrowed range, as for 8 bits). The asinh and log
    formulas in float64 may round the other way than iipy's own by one float32 step:
    at most 1 of 65535 apart."""
    _, data = images
    levels = iip_levels(data["grey.fits"], 3)
    (lo, hi), = GREY_RANGES["wide"]
    r = app.handle({"QUERY_STRING": "FIF=grey.fits%s&%s%s&WID=150&CVT=png16"
                    % (minmax(GREY_RANGES["wide"]), query, cnt)})
    assert r.status == 200
    img = Image.open(io.BytesIO(r.body))
    assert img.mode.startswith("I;16")
    got = np.asarray(img).astype(np.int64)
    if cnt:
        (lo,), (hi,) = narrowed([lo], [hi], reference.histogram(levels[2], [lo], [hi]))
    f = F32(1) / (F32(hi) - F32(lo))
    with np.errstate(all="ignore"):
        v = (levels[2][0] - F32(lo)) * f
        v[~np.isfinite(levels[2][0])] = 0
        t = _stretched(v, stretch, gamma) * F32(65535)
    want = np.clip(t, 0, 65535).astype(np.int64)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1
    assert (got != got[0, 0]).any()


def test_16bit_export_with_equalisation_is_8bit(app, images) -> None:
    """CNT=eq maps 256 levels: a CVT=png16 of it is the 8-bit PNG."""
    q = "FIF=grey.fits%s&CNT=eq&WID=150&CVT=" % minmax(GREY_RANGES["tight"])
    r16 = app.handle({"QUERY_STRING": q + "png16"})
    r8 = app.handle({"QUERY_STRING": q + "png"})
    assert r16.status == 200 and Image.open(io.BytesIO(r16.body)).mode == "L"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r16.body))),
                          np.asarray(Image.open(io.BytesIO(r8.body))))


@pytest.mark.parametrize("query,kw", [
    ("CNT=eq", dict(equalize=True)),
    ("MINMAX=1:-100,400&GAM=log&CNT=st", dict(stretch=STRETCH_LOG, autostretch=True)),
    ("GAM=asinh:0.3&CNT=eq", dict(stretch=STRETCH_ASINH, gamma=0.3, equalize=True)),
])
def test_tiff_tiles_use_the_files_smallest_level(tmp_path, sent, query, kw) -> None:
    """An 8-bit TIFF whose levels are stored independently: a stretch is a float
    operation (the samples are not sent as they are), and the histogram is the one of
    the file's smallest level, with the TIFF's own range (0, 255)."""
    from tests.unit._tiff_files import random_levels, write_levels

    levels = random_levels((520, 600), "uint8", 3, seed=9)
    write_levels(tmp_path / "t.tif", levels)
    app = Application(Settings.from_environ({
        "FILESYSTEM_PREFIX": str(tmp_path) + "/", "IIPY_CACHE_DIR": str(tmp_path / "c"),
        "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}))
    r = app.handle({"QUERY_STRING": "FIF=t.tif&obj=min-max-sample-values"})
    assert r.body == b"\r\nMin-Max-sample-values: 0  255\r\n"
    lo, hi = (-100.0, 400.0) if "MINMAX" in query else (0.0, 255.0)
    got = jtl(app, sent, "FIF=t.tif&%s&JTL=2,1" % query)
    src = levels[0][np.newaxis, 0:256, 256:512].astype(F32)
    smallest = levels[2][np.newaxis].astype(F32)
    want, table = model(src, [lo], [hi], smallest, kw, export=False)
    assert_model(got, want, table, _tolerance(kw))
    plain = jtl(app, sent, "FIF=t.tif&JTL=2,1")
    assert np.array_equal(plain, levels[0][0:256, 256:512])  # no operation: the samples


def test_narrowed_range_and_apply_stretch_edges() -> None:
    """narrowed_range: an empty histogram changes nothing, one level gives an empty range
    (normalised with the factor 1e30, as the kernel's CNT=st); apply_stretch: GAM=1 is the
    values themselves, the others the formulas."""
    empty = np.zeros(256, np.int64)
    lo, hi = kernels.narrowed_range([10.0, 0.0], [20.0, 1.0], empty)
    assert lo.tolist() == [10.0, 0.0] and hi.tolist() == [20.0, 1.0]
    one = empty.copy()
    one[51] = 7
    lo, hi = kernels.narrowed_range([0.0], [255.0], one)
    assert lo.tolist() == hi.tolist() == [51.0]
    h = empty.copy()
    h[[3, 200]] = 1
    lo, hi = kernels.narrowed_range([-1.0], [254.0], h)
    assert lo.tolist() == [2.0] and hi.tolist() == [199.0]
    v = np.array([-1.0, 0.0, 0.25, 1.0, 3.0, np.nan], F32)
    np.testing.assert_array_equal(kernels.apply_stretch(v, STRETCH_POWER, 1.0), v)
    for stretch, gamma in [(STRETCH_LOG, 0.0), (STRETCH_ASINH, 0.1), (STRETCH_SQRT, 0.0),
                           (STRETCH_POWER, 0.4545)]:
        got = kernels.apply_stretch(v, stretch, gamma)
        want = _stretched(v, stretch, gamma)
        np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
        assert got[0] == 0 and got[1] == 0 and got[3] == 1  # max(v, 0); f(0) = 0, f(1) = 1
