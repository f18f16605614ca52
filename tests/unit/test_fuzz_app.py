"""The whole Application, in process, on any request (hypothesis): requests built from a
grammar of the real commands with mutated arguments, and raw random bytes.  Every answer
is one of the statuses a client can be given (200, 304, 400, 404), no error is logged
(an ERROR record is the last-resort 500's traceback), and every 200 holds what its
Content-Type says: a decodable JPEG or PNG, JSON, text.

The number of examples comes from the hypothesis profile (tests/unit/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
from collections.abc import Iterator

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from iipy.protocols.router import Application
from iipy.settings import Settings

#: What any request may get; IIIF adds its redirect and its 501 for upscaling when
#: ALLOW_UPSCALING is off (its specification's statuses).
STATUSES = {200, 304, 400, 404}
IIIF_STATUSES = {303, 501}


class _Errors(logging.Handler):
    """Keeps the ERROR records of the ``iipy`` loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    """An Application (MAX_CVT 256: exports stay small) on small images of every kind,
    and the handler that collects its ERROR records."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(7)
    sky = rng.normal(100, 10, (300, 260)).astype(np.float32)
    sky[5:9, 5:9] = np.nan
    fits.PrimaryHDU(sky).writeto(root / "sky.fits")
    cube = rng.normal(50, 5, (3, 90, 130)).astype(np.float32)
    fits.PrimaryHDU(cube).writeto(root / "cube.fits")
    i16 = rng.integers(-300, 300, (70, 600)).astype(np.int16)
    hdu = fits.PrimaryHDU(i16)
    hdu.header["BLANK"] = -300
    hdu.header["BZERO"] = 32768
    hdu.writeto(root / "int16.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sky[:100, :100], name="SCI"),
                  fits.ImageHDU(sky[100:200, :100], name="ERR")]).writeto(root / "mef.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(i16)]).writeto(root / "comp.fits")
    fits.PrimaryHDU(sky[:, :3]).writeto(root / "thin.fits")
    (root / "text.fits").write_text("not a FITS file\n" * 10)
    (root / "sub").mkdir()
    fits.PrimaryHDU(sky[:50, :50]).writeto(root / "sub" / "a b+c.fits")
    app = Application(Settings.from_environ({
        "FILESYSTEM_PREFIX": str(root) + "/", "IIPY_CACHE_DIR": str(root / "cache"),
        "VERBOSITY": "0", "MEMCACHED_SERVERS": "", "MAX_CVT": "256", "CORS": "*"}))
    errors = _Errors()
    logger = logging.getLogger("iipy")
    logger.addHandler(errors)
    yield app, errors
    logger.removeHandler(errors)


# --- the grammar ------------------------------------------------------------------------------

IMAGES = ["sky.fits", "cube.fits", "int16.fits", "mef.fits", "mef.fits[1]", "mef.fits[SCI]",
          "mef.fits[err,1]", "mef.fits[*]", "mef.fits%5B2%5D", "comp.fits", "comp.fits[1]",
          "thin.fits", "sub/a%20b%2bc.fits", "sky.fits[0]"]
NOT_IMAGES = ["mef.fits[9]", "mef.fits[]", "text.fits", "sub/a+b%2Bc.fits", "missing.fits",
              "../sky.fits", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "sub", "sub/",
              "%00sky.fits", "sky.fits%00"]
FIFS = st.one_of(*[st.sampled_from(IMAGES)] * 4, st.sampled_from(NOT_IMAGES))

SMALL = st.integers(0, 5)
INTS = st.one_of(SMALL, SMALL, SMALL, st.integers(-3, 300), st.integers(-(1 << 40), 1 << 40),
                 st.sampled_from([2147483647, 2147483648, 4294967295, 4294967296, -2147483649,
                                  9223372036854775807, 10 ** 30]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.4545, 1e-309, 5e-324, -0.0, 1e308, 4545.0]))
NUMBER = st.one_of(INTS.map(str), INTS.map(str), st.floats(0, 1).map(repr), FLOATS.map(repr),
                   FLOATS.map(lambda f: f.hex()),
                   st.sampled_from(["nan", "-inf", "infinity", "", " ", "x", "1e", "0x1p99999",
                                    "9" * 30]))


def joined(sep: str, n: int = 6) -> st.SearchStrategy[str]:
    return st.lists(NUMBER, min_size=0, max_size=n).map(sep.join)


OBJECTS = st.sampled_from(["IIP,1.0", "max-size", "tile-size", "resolution-number",
                           "bits-per-channel", "min-max-sample-values", "subject", "Resolutions",
                           "dpi", "copyright", "title", "colorspace,0,0", "colorspace,9,9",
                           "iip-opt-comm", "horizontal-views", "vertical-views", "nope", ""])
TEXT = st.one_of(st.text(max_size=12), st.binary(max_size=12).map(
    lambda b: b.decode("utf-8", "surrogateescape")))

ARGUMENTS = {
    "FIF": FIFS,
    "OBJ": OBJECTS,
    "QLT": NUMBER, "CNT": NUMBER, "WID": NUMBER, "HEI": NUMBER,
    "GAM": st.one_of(NUMBER, st.sampled_from(["log", "asinh", "asinh:0.02", "sqrt", "LOG"])),
    "MINMAX": st.builds(lambda c, a, b: "%s:%s,%s" % (c, a, b), NUMBER, NUMBER, NUMBER),
    "CMP": st.sampled_from(["jet", "hot", "cold", "red", "green", "blue", "grey", "nope", "JET"]),
    "INV": st.just(""),
    "CTW": st.lists(joined(","), min_size=1, max_size=4).map(";".join).map(
        lambda m: m if len(m) % 2 else "[%s]" % m),
    "RGN": joined(",", 5),
    "ROT": st.one_of(NUMBER, NUMBER.map(lambda n: "!" + n)),
    "SDS": joined(",", 3),
    "SHD": joined(",", 3),
    "COL": st.sampled_from(["grey", "gray", "binary", "nope", "GREY"]),
    "LYR": NUMBER, "ICC": NUMBER,
    "JTL": st.one_of(st.builds("{},{}".format, SMALL, SMALL), joined(",", 3)),
    "JTLS": joined(",", 5), "PTL": joined(",", 2),
    "TIL": st.builds(lambda r, a, b: "%s,%s-%s" % (r, a, b), NUMBER, NUMBER, NUMBER),
    "CVT": st.sampled_from(["jpeg", "png", "fits", "JPEG", "tiff", "webp", ""]),
    "PFL": st.builds(lambda r, a, b: "%s:%s-%s" % (r, a, b), NUMBER, joined(",", 2),
                     joined(",", 2)),
    "SPECTRA": joined(",", 4),
    "IIIF": st.sampled_from(["sky.fits", "sky.fits/info.json", "sky.fits/full/max/0/default.jpg",
                             "sky.fits/full/^max/0/default.jpg", "sky.fits/full/^2000,/0/default.png",
                             "sky.fits/0,0,64,64/32,/90/gray.png", "sky.fits/full/pct:1e9/0/x.jpg",
                             "sky.fits/square/!10,10/!0/bitonal.jpg", "cube.fits/full/,5/0/default.jpg",
                             "missing.fits/info.json", "sky.fits/full/full/0/default.webp"]),
    "Zoomify": st.sampled_from(["sky.fits/ImageProperties.xml", "sky.fits/TileGroup0/0-0-0.jpg",
                                "sky.fits/TileGroup0/9-9-9.jpg", "sky.fits/TileGroup99/-1-0-0.jpg"]),
    "DeepZoom": st.sampled_from(["sky.fits.dzi", "sky.fits_files/8/0_0.jpg",
                                 "sky.fits_files/99/0_0.jpg", "sky.fits_files/0/-1_0.png"]),
}

#: A valid argument, or the same mutated: bytes flipped, cut, repeated, percent-encoded,
#: replaced by anything.
def mutated(arg: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def flip(s: str, i: int, c: str) -> str:
        return s[: i % (len(s) + 1)] + c + s[i % (len(s) + 1) + 1 :]

    return st.one_of(
        arg, arg, arg,
        st.builds(flip, arg, st.integers(0, 40), st.characters()),
        st.builds(lambda s, n: s[:n], arg, st.integers(0, 20)),
        st.builds(lambda s, n: s * n, arg, st.integers(2, 6)),
        arg.map(lambda s: "".join("%%%02X" % b for b in s.encode("utf-8", "surrogateescape"))),
        TEXT)


NAMES = st.one_of(st.sampled_from(sorted(ARGUMENTS)), st.sampled_from(sorted(ARGUMENTS)).map(
    str.lower), st.sampled_from(["FOO", "CNV", "ATL", "fif ", "", "=", "obj[]"]), TEXT)


@st.composite
def commands(draw, mutate: bool = True) -> str:
    if mutate:
        name = draw(NAMES)
        arg = draw(mutated(ARGUMENTS.get(name.upper(), TEXT)))
    else:
        name = draw(st.sampled_from(sorted(ARGUMENTS)))
        arg = draw(ARGUMENTS[name])
    if name.upper() == "INV" and not arg:
        return name
    return "%s=%s" % (name, arg)


MODIFIERS = ["QLT", "CNT", "GAM", "MINMAX", "CMP", "INV", "CTW", "WID", "HEI", "RGN", "ROT",
             "SHD", "COL", "SDS", "LYR", "ICC", "OBJ"]
SMALL_PAIR = st.builds("{},{}".format, SMALL, SMALL)
OUTPUTS = st.one_of(
    SMALL_PAIR.map("JTL={}".format),
    st.builds("TIL={},{}-{}".format, SMALL, SMALL, SMALL),
    st.sampled_from(["jpeg", "png", "fits"]).map("CVT={}".format),
    st.builds("PFL={}:{}-{}".format, SMALL, SMALL_PAIR, SMALL_PAIR),
    st.builds("SPECTRA={},{},{},{}".format, SMALL, SMALL, SMALL, SMALL),
    OBJECTS.map("obj={}".format))


@st.composite
def requests(draw) -> str:
    """A third as clients send them (a FIF, modifiers with arguments of their grammar,
    an output command), a third the path-like protocols, a third mutated anywhere
    (names, arguments, separators, no FIF)."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        parts = ["FIF=" + draw(st.sampled_from(IMAGES))]
        for name in draw(st.lists(st.sampled_from(MODIFIERS), max_size=5)):
            arg = draw(ARGUMENTS[name])
            parts.append(name if name == "INV" else "%s=%s" % (name, arg))
        parts.append(draw(OUTPUTS))
        return "&".join(parts)
    if kind == 1:
        name = draw(st.sampled_from(["IIIF", "Zoomify", "DeepZoom"]))
        return "%s=%s" % (name, draw(st.one_of(ARGUMENTS[name], mutated(ARGUMENTS[name]))))
    parts = []
    if draw(st.integers(0, 9)):
        parts.append("FIF=" + draw(st.one_of(FIFS, mutated(FIFS))))
    parts += draw(st.lists(commands(), max_size=6))
    return draw(st.sampled_from(["&"] * 6 + ["&&", ";"])).join(parts)


RAW_QUERIES = st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape"))
HEADERS = st.fixed_dictionaries({}, optional={
    "REQUEST_METHOD": st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "PUT", "", "get"]),
    "HTTP_IF_MODIFIED_SINCE": st.one_of(TEXT, st.sampled_from([
        "Mon, 01 Jan 2001 00:00:00 GMT", "Mon, 01 Jan 2100 00:00:00 GMT",
        "Mon, 01 Jan 99999999999 00:00:00 GMT"])),
    "REQUEST_URI": TEXT,
})


def check(fuzz_app, query: str, headers: dict | None = None) -> None:
    app, errors = fuzz_app
    errors.records.clear()
    params = dict(headers or {})
    params["QUERY_STRING"] = query
    r = app.handle(params)
    if r.status == 204:  # OPTIONS: the CORS preflight
        assert params.get("REQUEST_METHOD") == "OPTIONS"
        return
    if r.status == 405:
        assert params.get("REQUEST_METHOD") not in ("GET", "HEAD", "POST", "", None)
        return
    if r.status in IIIF_STATUSES:
        assert query.lower().startswith("iiif=") or "&iiif=" in query.lower(), (r.status, query)
        if r.status == 303:
            assert len(r.to_bytes()) < 4096  # a header block nginx's default buffer takes
    else:
        assert r.status in STATUSES, (r.status, r.body[:200])
    assert not errors.records, errors.records[0].getMessage()
    if r.status != 200 or not r.body:
        return
    kind = r.header("Content-Type") or ""
    if kind in ("image/jpeg", "image/png"):
        Image.open(io.BytesIO(r.body)).load()
    elif kind == "application/json" or kind.startswith("application/ld+json"):
        json.loads(r.body)
    elif kind == "application/fits":
        with fits.open(io.BytesIO(r.body)) as hdul:
            assert hdul[0].data is not None


@given(requests(), HEADERS)
@example("FIF=sky.fits&GAM=4545&JTL=0,0", {})
@example("FIF=int16.fits&GAM=1e308&CNT=-inf&JTL=1,0", {})
@example("FIF=sky.fits&RGN=0,0,1,1e-309&CVT=jpeg", {})
@example("FIF=sky.fits&JTL=%s,0" % ("9" * 5000), {})
@example("FIF=thin.fits&JTL=0,0", {})
@example("FIF=cube.fits&CTW=" + "1;" * 2000 + "1," * 2000 + "&JTL=0,0", {})
@example("FIF=sky.fits&JTL=0,0", {"HTTP_IF_MODIFIED_SINCE": "Mon, 01 Jan 99999999999 00:00:00 GMT"})
@example("IIIF=" + "9" * 5000, {})
@example("IIIF=sky.fits&X=" + "9" * 5000, {"REQUEST_URI": "/iipsrv.fcgi?IIIF=sky.fits&X=" + "9" * 5000})
def test_requests_from_the_grammar(fuzz_app, query, headers):
    check(fuzz_app, query, headers)


@given(RAW_QUERIES)
def test_raw_bytes(fuzz_app, query):
    check(fuzz_app, query)


@given(st.lists(commands(), max_size=8).map("&".join))
def test_commands_without_an_image(fuzz_app, query):
    check(fuzz_app, query)


# --- damaged files ----------------------------------------------------------------------------

HEADER_KEYS = ["BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BSCALE", "BZERO", "BLANK",
               "CDELT1", "CRPIX1", "CD1_1", "PC1_1", "CROTA2", "CTYPE1", "OBJECT", "FILTER",
               "EXTEND", "END"]
HEADER_VALUES = ["0", "-1", "1", "2", "3", "8", "16", "-16", "-32", "-64", "64", "7", "-45",
                 "999999999", "-999999999", "1E300", "NAN", "1.5", "'abc'", "'abc", "T", "",
                 "2147483648", "3000", "1.2.3", "(1, 2)"]


def _base_files() -> dict[str, bytes]:
    """Small files of every sample type and shape, as bytes (written once)."""
    import io as _io

    rng = np.random.default_rng(11)
    out = {}
    for dtype in (np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64):
        for shape in ((40, 30), (3, 20, 25), (2, 2, 10, 12), (300, 4)):
            hdr = fits.Header([("BSCALE", 1.0), ("BZERO", 0.0), ("CTYPE1", "RA---TAN"),
                               ("CDELT1", -1e-4), ("CRPIX1", 1.0), ("OBJECT", "x"),
                               ("FILTER", "r")])
            if np.dtype(dtype).kind in "iu":
                hdr["BLANK"] = 7
            data = rng.normal(100, 20, shape).astype(dtype)
            buf = _io.BytesIO()
            fits.PrimaryHDU(data, header=hdr).writeto(buf)
            out["%s-%d" % (np.dtype(dtype).name, len(shape))] = buf.getvalue()
    buf = _io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((20, 30), np.float32), name="SCI"),
                  fits.CompImageHDU(rng.integers(0, 9, (40, 50)).astype(np.int16))]).writeto(buf)
    out["mef"] = buf.getvalue()
    return out


BASE_FILES = _base_files()


def _set(raw: bytes, hdu_start: int, key: str, value: str) -> bytes:
    """Overwrite (or, if absent, replace the END card by) the card ``key = value``."""
    card = ("%-8s= %20s" % (key, value)).ljust(80).encode("latin-1")[:80]
    for off in range(hdu_start, min(len(raw), hdu_start + 2880 * 4), 80):
        name = raw[off : off + 8].decode("latin-1").strip()
        if name == key or name == "END":
            return raw[:off] + card + raw[off + 80 :]
    return raw


@st.composite
def damaged_files(draw) -> bytes:
    raw = BASE_FILES[draw(st.sampled_from(sorted(BASE_FILES)))]
    starts = [m.start() for m in re.finditer(rb"(SIMPLE  =|XTENSION=)", raw) if m.start() % 2880 == 0]
    for _ in range(draw(st.integers(1, 3))):
        raw = _set(raw, draw(st.sampled_from(starts)), draw(st.sampled_from(HEADER_KEYS)),
                   draw(st.sampled_from(HEADER_VALUES)))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] if draw(st.booleans()) else raw[:cut] + bytes(
            draw(st.binary(min_size=1, max_size=64))) + raw[cut + 64 :]
    return raw


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the test if its body runs longer than ``seconds`` (SIGALRM):
    a request that loops fails the test instead of hanging the suite."""
    def expire(signum, frame):
        raise TimeoutError("a request ran longer than %g s" % seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.filterwarnings("ignore")  # astropy's warnings about the damage
@given(damaged_files())
@example(_set(BASE_FILES["int32-4"], 0, "NAXIS1", "-16"))  # a data size of -2880: a loop
@example(_set(BASE_FILES["mef"], 2880, "NAXIS2", "-45"))
@example(_set(BASE_FILES["float32-3"], 0, "NAXIS3", "0"))  # no planes
@example(_set(BASE_FILES["float64-2"], 0, "CDELT1", "NAN"))  # unparsable
@example(_set(BASE_FILES["int16-2"], 0, "OBJECT", "'abc"))
@example(BASE_FILES["uint8-2"].replace(b"NAXIS1  =                   30",
                                       b"NAXIS1  =                    3"))  # 3 x 40
def test_damaged_files(fuzz_app, raw):
    """Header cards set to wrong values (negative, zero, huge axis lengths, BITPIX of no
    type, unparsable numbers, a missing END), files cut or overwritten: every request is
    answered with a 200 or a file error, never a 500 or a hang (a negative NAXISn made
    astropy read the file round for ever)."""
    app, _ = fuzz_app
    root = app.settings.filesystem_prefix
    name = "damaged-%d.fits" % len(os.listdir(root))
    with open(os.path.join(root, name), "wb") as f:
        f.write(raw)
    try:
        for query in ("obj=IIP,1.0&obj=max-size&obj=resolution-number&obj=min-max-sample-values"
                      "&obj=subject&obj=title", "GAM=0.4545&CTW=1;1;1&JTL=0,0", "JTL=1,0",
                      "PFL=1:0,5-20,5", "RGN=0.1,0.1,0.5,0.5&WID=50&CVT=jpeg", "CVT=fits",
                      "SPECTRA=0,0,1,1", "FIF=%s[1]&JTL=0,0" % name, "FIF=%s[SCI]&JTL=0,0" % name,
                      "FIF=%s[*]&JTL=0,0" % name):
            with time_limit(10):
                check(fuzz_app, query if query.startswith("FIF=") else "FIF=%s&%s" % (name, query))
    finally:
        os.unlink(os.path.join(root, name))
