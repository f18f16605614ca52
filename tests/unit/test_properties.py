"""Properties of the request parser, the argument grammars, the CVT geometry and the
tile grid, for any input (hypothesis).

The number of examples per test comes from the hypothesis profile (tests/unit/conftest.py:
``HYPOTHESIS_PROFILE=thorough`` runs many more).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import urllib.parse

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from iipy.errors import OutOfRange
from iipy.imaging import geometry, region
from iipy.protocols.iip import parser
from iipy.settings import atof, atoi

#: Any text a FastCGI parameter can hold: Unicode, and raw bytes that are not UTF-8 (kept
#: as surrogate escapes, as server/fcgi.py decodes them).
RAW = st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape"))
ANY_TEXT = st.one_of(st.text(max_size=80), RAW)

#: Text made of what request arguments are made of, so that the grammars are reached.
NUMBER_CHARS = "0123456789+-.eExXpP,;:[]! \t&=%infatyINFATY"
NUMERIC_TEXT = st.text(alphabet=NUMBER_CHARS, max_size=40)
ARGUMENT = st.one_of(NUMERIC_TEXT, ANY_TEXT)

LONG_MAX = (1 << 63) - 1
LONG_MIN = -(1 << 63)


# --- parse and url_decode ------------------------------------------------------------------


@given(st.one_of(ANY_TEXT, st.lists(st.text(alphabet="fFiIoObBjJtTlL=&%+,0123456789",
                                            max_size=12), max_size=8).map("&".join)))
def test_parse_never_raises_and_keeps_tokens(query):
    request = parser.parse(query)
    assert request.query == query
    tokens = [t for t in query.split("&") if t]
    assert len(request.commands) <= len(tokens)
    kept = iter(tokens)
    for cmd in request.commands:
        assert cmd.name == cmd.raw_name.lower() and cmd.raw_name and cmd.arg
        assert "&" not in cmd.raw_name
        token = next(t for t in kept if t.partition("=")[0] == cmd.raw_name)
        key, sep, arg = token.partition("=")
        raw_arg = arg if sep else token
        expected = parser.url_decode(raw_arg) if cmd.name in parser._DECODED else raw_arg
        assert cmd.arg == expected


@given(ANY_TEXT)
def test_url_decode_never_raises(text):
    decoded = parser.url_decode(text)
    assert isinstance(decoded, str)
    if "%" not in text and "+" not in text:
        assert decoded == text
    if "\x00" not in text:
        assert "\x00" not in decoded  # %00 is dropped
    assert len(decoded.encode("utf-8", "surrogateescape")) <= \
        len(text.encode("utf-8", "surrogateescape"))


@given(st.one_of(st.text(max_size=60), RAW))
def test_url_decode_inverts_percent_encoding(text):
    assume("\x00" not in text)
    encoded = urllib.parse.quote(text.encode("utf-8", "surrogateescape"), safe="")
    assert parser.url_decode(encoded) == text
    assert parser.url_decode(encoded.replace("%20", "+")) == text


# --- atoi and atof: glibc's strtol and strtod are the oracle ----------------------------------

_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name) if _libc_name else None
needs_libc = pytest.mark.skipif(_libc is None, reason="no C library to compare with")
if _libc is not None:
    _libc.strtol.restype = ctypes.c_long
    _libc.strtol.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    _libc.strtod.restype = ctypes.c_double
    _libc.strtod.argtypes = [ctypes.c_char_p, ctypes.c_void_p]

C_NUMBERS = st.one_of(
    NUMERIC_TEXT,
    st.builds(lambda blank, sign, digits, tail: blank + sign + digits + tail,
              st.text(alphabet=" \t\n\v\f\r", max_size=3), st.sampled_from(["", "+", "-"]),
              st.text(alphabet="0123456789", min_size=1, max_size=30),
              st.text(alphabet="0123456789.eE+-xXpPaAfF", max_size=8)),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats().map(lambda f: f.hex()),
    st.text(alphabet=st.characters(codec="ascii"), max_size=30),
)


@needs_libc
@given(C_NUMBERS)
def test_atoi_and_atof_are_glibcs(text):
    assume("\x00" not in text)
    raw = text.encode("ascii", "replace")
    assert atoi(text) == _libc.strtol(raw, None, 10)
    want, got = _libc.strtod(raw, None), atof(text)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


@given(ANY_TEXT)
def test_atoi_and_atof_never_raise(text):
    assert LONG_MIN <= atoi(text) <= LONG_MAX
    assert isinstance(atof(text), float)


# --- the argument grammars -------------------------------------------------------------------


@given(ARGUMENT)
def test_argument_parsers_never_raise(arg):
    a, b = parser.int_pair(arg)
    assert isinstance(a, int) and isinstance(b, int)
    parser.jtls(arg)
    parser.minmax(arg)
    rows = parser.ctw(arg)
    assert rows and all(row and all(isinstance(v, float) for v in row) for row in rows)
    assert -(1 << 31) <= parser.c_int(arg) < 1 << 31
    angle, mirror = parser.rot(arg)
    assert angle in (0, 90, 180, 270) and isinstance(mirror, bool)
    parser.shd(arg)
    parser.sds(arg)
    res, start, end = parser.til(arg)
    assert end >= start
    assert len(parser.spectra(arg)) == 4
    assert parser.col(arg) in (None, "grey", "binary")
    pfl = parser.pfl(arg)
    assert pfl is None or len(pfl) == 5


@given(ARGUMENT)
def test_rgn_is_a_region_of_the_unit_square(arg):
    r = parser.rgn(arg)
    if r is None:
        return
    x, y, w, h = r
    assert all(math.isfinite(v) for v in r)
    assert 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
    assert 0.0 <= w <= 1.0 and 0.0 < h <= 1.0
    assert x + w <= 1.0 + 1e-12


# --- CVT geometry ----------------------------------------------------------------------------

SIDES = st.integers(1, 1_000_000)
TILES = st.sampled_from([16, 64, 256, 512])
C_INTS = st.one_of(st.integers(-5, 5000), st.integers(LONG_MIN, LONG_MAX).map(
    lambda v: parser.c_int(str(v))))
REGIONS = st.one_of(
    st.none(), ARGUMENT.map(parser.rgn),
    st.tuples(*[st.floats(-2, 3, allow_nan=False)] * 4).map(
        lambda t: parser.rgn(",".join(repr(v) for v in t))))


@given(SIDES, SIDES, TILES, REGIONS, C_INTS, C_INTS, st.integers(64, 5000), st.booleans())
def test_cvt_plan_is_inside_the_level_and_bounded(width, height, tile, rgn, wid, hei, max_cvt,
                                                  upscaling):
    nres = geometry.num_resolutions(width, height, tile, tile)
    p = region.plan(width, height, nres, rgn, wid, hei, max_cvt, upscaling)
    assert 0 <= p.level < nres
    lw, lh = geometry.level_size(width, height, p.level)
    assert 0 <= p.x and 1 <= p.w and p.x + p.w <= lw
    assert 0 <= p.y and 1 <= p.h and p.y + p.h <= lh
    assert 1 <= p.out_w <= max_cvt and 1 <= p.out_h <= max_cvt
    # what is read is bounded by the output, not by the numbers of the request: at most
    # four times the output's pixels each way, or the whole smallest level
    small_w, small_h = geometry.level_size(width, height, nres - 1)
    assert p.w <= max(4 * p.out_w + 4, small_w) or p.h <= max(4 * p.out_h + 4, small_h) or \
        p.level == nres - 1
    assert p.w * p.h <= max(16 * (p.out_w + 1) * (p.out_h + 1), small_w * small_h, lw * 2, lh * 2)


@given(SIDES, SIDES, TILES, REGIONS, C_INTS, C_INTS, st.integers(64, 5000), st.booleans())
def test_fits_cutout_blocks_fit_the_region(width, height, tile, rgn, wid, hei, max_cvt, upscaling):
    nres = geometry.num_resolutions(width, height, tile, tile)
    c = region.cutout(width, height, nres, rgn, wid, hei, max_cvt, upscaling)
    lw, lh = geometry.level_size(width, height, c.level)
    assert c.x + c.w <= lw and c.y + c.h <= lh and c.factor >= 1
    assert 0 <= c.out_w <= max_cvt and 0 <= c.out_h <= max_cvt
    assert c.out_w * c.factor <= c.w and c.out_h * c.factor <= c.h


# --- the tile grid --------------------------------------------------------------------------


@given(SIDES, SIDES, TILES, TILES, st.integers(-3, 40), st.integers(-10, 1 << 40))
def test_tile_windows_are_inside_their_level(width, height, tw, th, res, tile):
    grid = geometry.Grid(width, height, tw, th)
    n = grid.num_resolutions
    smallest = grid.level_size(n - 1)
    assert smallest[0] <= tw and smallest[1] <= th
    if n > 1:
        above = grid.level_size(n - 2)
        assert above[0] > tw or above[1] > th
    sizes = grid.resolution_sizes()
    assert sizes[-1] == (width, height) and len(sizes) == n
    try:
        k, win = grid.tile_window(res, tile)
    except OutOfRange:
        ntx, nty = grid.tiles_across(n - 1 - res) if 0 <= res < n else (0, 0)
        assert not (0 <= res < n) or not (0 <= tile < ntx * nty)
        return
    lw, lh = grid.level_size(k)
    assert k == n - 1 - res
    assert 0 <= win.x < lw and 0 <= win.y < lh
    assert 1 <= win.w <= tw and 1 <= win.h <= th
    assert win.x + win.w <= lw and win.y + win.h <= lh


@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from([16, 32, 64]),
       st.sampled_from([16, 32, 64]), st.data())
def test_tiles_cover_each_level_once(width, height, tw, th, data):
    grid = geometry.Grid(width, height, tw, th)
    res = data.draw(st.integers(0, grid.num_resolutions - 1))
    k = grid.num_resolutions - 1 - res
    lw, lh = grid.level_size(k)
    ntx, nty = grid.tiles_across(k)
    count = np.zeros((lh, lw), np.int32)
    for t in range(ntx * nty):
        _, win = grid.tile_window(res, t)
        count[win.y : win.y + win.h, win.x : win.x + win.w] += 1
    assert (count == 1).all()
