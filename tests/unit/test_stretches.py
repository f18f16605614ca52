"""Stretches (GAM=log, asinh, sqrt), the histogram operations (CNT=st, CNT=eq), their parsers,
parameter validation and the integer sample types of to_float32.

Compiled kernel against NumPy twin: SQRT, the histogram, CNT=st and CNT=eq are bit-identical
(DN difference 0); LOG and ASINH go through a lookup table in the compiled kernel and are
within 1 DN of the twin's exact formula (the bound is proven in iipy/imaging/kernels.py and checked here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from iipy.imaging import kernels
from tests.unit import kernel_hooks
from iipy.imaging.kernels import (
    CMAP_BLUE,
    CMAP_COLD,
    CMAP_GREEN,
    CMAP_HOT,
    CMAP_JET,
    CMAP_NONE,
    CMAP_RED,
    STRETCH_ASINH,
    STRETCH_LOG,
    STRETCH_POWER,
    STRETCH_SQRT,
    reference,
)
from iipy.protocols.iip.stretch import parse_contrast, parse_stretch

F32 = np.float32
RNG_SEED = 20240611
CMAPS = [CMAP_NONE, CMAP_HOT, CMAP_COLD, CMAP_JET, CMAP_RED, CMAP_GREEN, CMAP_BLUE]
TABLE_STRETCHES = [(STRETCH_LOG, 0.0), (STRETCH_ASINH, 0.1), (STRETCH_ASINH, 0.01),
                   (STRETCH_ASINH, 1.0), (STRETCH_ASINH, 1e-6), (STRETCH_ASINH, 1e6)]
ALL_STRETCHES = TABLE_STRETCHES + [(STRETCH_SQRT, 0.0), (STRETCH_POWER, 0.4545)]

needs_ext = pytest.mark.skipif(not kernels.ACCELERATED, reason="iipy._kernels not built")


def _dn_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == np.uint8 and b.dtype == np.uint8
    if a.size == 0:
        return 0
    return int(np.max(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def _allowed(stretch: int) -> int:
    """DN difference allowed between the compiled kernel and the twin."""
    return 0 if stretch == STRETCH_SQRT else 1


def _sid(s: tuple[int, float]) -> str:
    return {STRETCH_POWER: "power", STRETCH_LOG: "log", STRETCH_ASINH: "asinh",
            STRETCH_SQRT: "sqrt"}[s[0]] + f"{s[1]:g}"


def _dense_v() -> np.ndarray:
    """Dense sweep of normalised values: [0, 1], 30 decades down to 1e-30, above 1 up to 8.5,
    random float32 bit patterns, negatives and special values."""
    rng = np.random.default_rng(RNG_SEED)
    parts = [
        np.linspace(0.0, 1.0, 300_001),
        np.geomspace(1e-30, 1.0, 40_000),
        np.linspace(1.0, 8.5, 20_001),
        rng.integers(0x32800000, 0x41800000, 100_000, dtype=np.uint32).view(F32),
        -np.geomspace(1e-30, 10.0, 1000),
        np.array([-1.0, -0.0, 0.0, np.nan, np.inf, -np.inf, 2.0**-24, 2.0**-25, 7.999999, 8.0,
                  1.0, 0.5, 3e38]),
    ]
    return np.concatenate([np.asarray(p, dtype=F32) for p in parts])


def _tile(shape, rng) -> np.ndarray:
    """Sky-like float32 samples with NaN, infinities, negatives and bright values."""
    a = rng.normal(100.0, 30.0, size=shape)
    a += rng.exponential(200.0, size=shape) * (rng.random(shape) < 0.05)
    a = a.astype(F32)
    flat = a.reshape(-1)
    n = flat.size // 20
    idx = rng.permutation(flat.size)[:n]
    flat[idx] = rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0, -500.0, 1e4], F32), size=n)
    return a


# ---------------------------------------------------------------------------------------------
# Compiled kernel against the twin
# ---------------------------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("st", ALL_STRETCHES, ids=_sid)
@pytest.mark.parametrize("cmap", CMAPS)
@pytest.mark.parametrize("opts", [{}, {"invert": True}, {"contrast": 1.5}, {"contrast": 0.3},
                                  {"contrast": 10.0, "invert": True}],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_stretch_dense_sweep_matches_twin(st, cmap, opts) -> None:
    v = _dense_v().reshape(1, 1, -1)
    kw = dict(stretch=st[0], gamma=st[1], cmap=cmap, **opts)
    got = kernels.render(v, [0.0], [1.0], **kw)
    want = reference.render(v, [0.0], [1.0], **kw)
    assert _dn_diff(got, want) <= _allowed(st[0])


@needs_ext
@pytest.mark.parametrize("st", ALL_STRETCHES, ids=_sid)
@pytest.mark.parametrize("nchan", [1, 2, 3, 5])
@pytest.mark.parametrize(
    "opts",
    [{}, {"cmap": CMAP_JET, "invert": True}, {"cmap": CMAP_HOT, "contrast": 2.0},
     {"ctw": [[0.5, 0.5], [1.0], [0.0, 1.0]]}, {"ctw": [[1.0, -1.0, 0.5]] * 3, "invert": True},
     {"contrast": 1e6}],
    ids=lambda o: ",".join(f"{k}" for k in o) or "default",
)
def test_stretch_random_tiles_match_twin(st, nchan, opts) -> None:
    rng = np.random.default_rng(RNG_SEED + nchan)
    x = _tile((nchan, 67, 53), rng)
    mins = list(rng.uniform(20.0, 80.0, nchan))
    maxs = list(rng.uniform(150.0, 400.0, nchan))
    kw = dict(stretch=st[0], gamma=st[1], **opts)
    got = kernels.render(x, mins, maxs, **kw)
    want = reference.render(x, mins, maxs, **kw)
    assert got.shape == want.shape and got.flags.c_contiguous
    assert _dn_diff(got, want) <= _allowed(st[0])
    # Some pixels are outside the table (above 2**e_hi, tiny, NaN after CTW): both paths ran.
    assert got.size > 0


@needs_ext
@pytest.mark.parametrize("st", TABLE_STRETCHES, ids=_sid)
def test_stretch_table_error_bound(st) -> None:
    v = _dense_v()
    v = v[np.isfinite(v) & (v >= 2.0**-24) & (v < 8.0)]
    got = kernel_hooks.stretch_with_table(v, st[0], st[1], 3).astype(np.float64)
    code, g32, p0, p1 = kernels._stretch_params(*st)
    x = v.astype(np.float64)
    exact = np.log1p(255.0 * x) * p1 if code == STRETCH_LOG else np.arcsinh(x * p0) * p1
    assert np.abs(got - exact).max() <= kernels._table_error(code, g32, p0, p1, 3)


@needs_ext
@pytest.mark.parametrize("st", TABLE_STRETCHES, ids=_sid)
def test_stretch_table_vector_and_scalar_paths_agree(st) -> None:
    rng = np.random.default_rng(RNG_SEED)
    v = rng.uniform(-0.2, 1.2, 4000).astype(F32)
    fast = kernel_hooks.stretch_with_table(v, st[0], st[1], 3)
    mixed = np.empty(8000, dtype=F32)
    mixed[0::2] = v
    mixed[1::2] = np.nan
    slow = kernel_hooks.stretch_with_table(mixed, st[0], st[1], 3)
    np.testing.assert_array_equal(slow[0::2].view(np.uint32), fast.view(np.uint32))
    assert np.isnan(slow[1::2]).all()


def test_stretch_tables_are_used_for_common_requests() -> None:
    for code, param in TABLE_STRETCHES:
        _, g32, p0, p1 = kernels._stretch_params(code, param)
        for cmap, cnt in ((CMAP_JET, 1.5), (CMAP_NONE, 1.0), (CMAP_HOT, 3.0)):
            e_hi = kernels._table_upper_exponent(code, g32, p0, p1, cnt, cmap)
            assert e_hi == kernels.LUT_EMAX, (code, param, cmap)
        # No table can keep the promise at an absurd contrast: the exact formula is used.
        assert kernels._table_upper_exponent(code, g32, p0, p1, 1e9, CMAP_JET) is None
    assert kernels._table_upper_exponent(STRETCH_SQRT, 0.0, 0.0, 0.0, 1.0, CMAP_NONE) is None


@needs_ext
@pytest.mark.parametrize("st", ALL_STRETCHES, ids=_sid)
def test_stretch_odd_shapes_and_layouts(st) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = _tile((3, 29, 31), rng)
    for view in (x, x.astype(">f4"), np.repeat(x, 2, axis=2)[:, :, ::2], x[:, :1, :1],
                 x[:, :0, :]):
        kw = dict(stretch=st[0], gamma=st[1])
        got = kernels.render(view, [0.0] * 3, [300.0] * 3, **kw)
        want = reference.render(np.ascontiguousarray(view, F32), [0.0] * 3, [300.0] * 3, **kw)
        assert got.shape == want.shape
        assert _dn_diff(got, want) <= _allowed(st[0])


# ---------------------------------------------------------------------------------------------
# Known values (both implementations)
# ---------------------------------------------------------------------------------------------

BOTH = pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])


def _render_v(fn, values, **kw) -> np.ndarray:
    x = np.asarray(values, dtype=F32).reshape(1, 1, -1)
    return fn(x, [0.0], [1.0], **kw).reshape(-1)


@BOTH
def test_log_known_values(fn) -> None:
    vs = [0.0, 1 / 255, 0.01, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, -0.5]
    # iipsrv 1.2: out = log(1 + 255 v) / log(256), on max(v, 0); quantised by truncation
    want = [int(255 * math.log1p(255 * max(v, 0.0)) / math.log(256)) for v in vs[:-2]]
    want += [255, 0]
    assert want[:8] == [0, 31, 58, 150, 191, 223, 241, 255]
    got = _render_v(fn, vs, stretch=STRETCH_LOG).tolist()
    assert got == want
    inv = _render_v(fn, [0.0, 0.5, 1.0], stretch=STRETCH_LOG, invert=True).tolist()
    assert inv == [255, 31, 0]  # 255 (1 - 0.87569) = 31.7


@BOTH
def test_asinh_known_values(fn) -> None:
    # asinh(v / 0.1) / asinh(10): v = 1 gives 1 exactly, hence 255.
    vs = [0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 4.0, -1.0]
    want = [int(255 * math.asinh(v / 0.1) / math.asinh(10.0)) for v in vs[:-2]] + [255, 0]
    assert want[:6] == [0, 8, 40, 74, 196, 255]
    assert _render_v(fn, vs, stretch=STRETCH_ASINH, gamma=0.1).tolist() == want
    # Another softening; a huge BETA is linear, a tiny one close to a step.
    assert _render_v(fn, [0.5, 1.0], stretch=STRETCH_ASINH, gamma=1.0).tolist() == [
        int(255 * math.asinh(0.5) / math.asinh(1.0)), 255]
    assert _render_v(fn, [0.25, 0.5, 1.0], stretch=STRETCH_ASINH, gamma=1e6).tolist() == [
        63, 127, 255]
    assert _render_v(fn, [1e-3, 1.0], stretch=STRETCH_ASINH, gamma=1e-6).tolist() == [
        int(255 * math.asinh(1e3) / math.asinh(1e6)), 255]


@BOTH
def test_sqrt_known_values(fn) -> None:
    vs = [0.0, 0.01, 0.25, 0.5, 1.0, 4.0, -0.25]
    assert _render_v(fn, vs, stretch=STRETCH_SQRT).tolist() == [0, 25, 127, 180, 255, 255, 0]
    # sqrt and GAM=0.5 are the same curve
    v = np.linspace(0, 1, 1001, dtype=F32)
    s = _render_v(fn, v, stretch=STRETCH_SQRT)
    p = _render_v(fn, v, gamma=0.5)
    assert _dn_diff(s, p) <= 1


@BOTH
def test_stretch_sits_after_ctw_and_before_inv_and_colormap(fn) -> None:
    x = np.array([[[0.2]], [[0.3]]], dtype=F32)
    # CTW: 0.2 + 0.3 = 0.5, then log: 0.87569, then INV: 0.12431, then JET (R, G, B).
    got = fn(x, [0.0, 0.0], [1.0, 1.0], ctw=[[1.0, 1.0]], stretch=STRETCH_LOG, invert=True,
             cmap=CMAP_JET)
    v = 1.0 - math.log1p(127.5) / math.log(256)
    b = min(4 * v + 0.5, 1.0)
    assert got.reshape(-1).tolist() == [0, 0, int(255 * b)]
    # Contrast multiplies after the stretch: log(1 + 255 * 0.1) / log(256) = 0.5915... x 1.5
    got = _render_v(fn, [0.1], stretch=STRETCH_LOG, contrast=1.5)
    assert got.tolist() == [int(255 * 1.5 * math.log1p(25.5) / math.log(256))]


@BOTH
def test_stretch_values_above_one_are_not_clipped_before(fn) -> None:
    # 2 -> asinh(20)/asinh(10) > 1, then INV gives a negative value -> 0; a colormap sees > 1.
    assert _render_v(fn, [2.0], stretch=STRETCH_ASINH, gamma=0.1, invert=True).tolist() == [0]
    # JET of a value above 1 is (0.5, 0, 0) per the protocol's table
    x = np.array([[[2.0]]], F32)
    got = fn(x, [0.0], [1.0], stretch=STRETCH_LOG, cmap=CMAP_JET)
    assert got.reshape(-1).tolist() == [127, 0, 0]


# ---------------------------------------------------------------------------------------------
# Histogram, CNT=st, CNT=eq
# ---------------------------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("nchan", [1, 2, 3, 5])
def test_histogram_matches_twin(nchan) -> None:
    rng = np.random.default_rng(RNG_SEED + nchan)
    x = _tile((nchan, 83, 61), rng)
    mins = list(rng.uniform(20.0, 80.0, nchan))
    maxs = list(rng.uniform(150.0, 400.0, nchan))
    got = kernels.histogram(x, mins, maxs)
    want = reference.histogram(x, mins, maxs)
    assert got.dtype == np.int64 and got.shape == (256,)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == 83 * 61
    # degenerate and non-finite ranges
    for lo, hi in ((5.0, 5.0), (np.nan, 1.0), (-1e39, 1e39), (300.0, 0.0)):
        np.testing.assert_array_equal(kernels.histogram(x, lo, hi), reference.histogram(x, lo, hi))


@pytest.mark.parametrize("fn", [kernels.histogram, reference.histogram], ids=["kernel", "twin"])
def test_histogram_hand_values(fn) -> None:
    # one channel: level = trunc(255 v), non-finite -> 0, clamped to 0..255
    x = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan, 0.999, 1 / 255]], dtype=F32)
    h = fn(x, 0.0, 1.0)
    assert h.sum() == 8
    assert {int(i): int(h[i]) for i in np.flatnonzero(h)} == {0: 3, 127: 1, 254: 1, 255: 2, 1: 1}
    # two channels: the mean of the levels, half rounded up: (1 + 2) / 2 -> 2, (0 + 255) / 2 -> 128
    x2 = np.array([[[1 / 255, 0.0, 0.5]], [[2 / 255, 1.0, 0.5]]], dtype=F32)
    h2 = fn(x2, [0.0, 0.0], [1.0, 1.0])
    assert {int(i): int(h2[i]) for i in np.flatnonzero(h2)} == {2: 1, 128: 1, 127: 1}
    # three channels: (0 + 0 + 1) / 3 -> 0, (1 + 1 + 0) / 3 -> 1
    x3 = np.array([[[0.0, 1 / 255]], [[0.0, 1 / 255]], [[1 / 255, 0.0]]], dtype=F32)
    h3 = fn(x3, 0.0, 1.0)
    assert h3[0] == 1 and h3[1] == 1


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_autostretch_maps_first_and_last_levels_to_black_and_white(fn) -> None:
    # 8-bit-like data 0..255 with range 0..255: levels are the values; used levels 50..200.
    x = np.array([[50.0, 60.0, 125.0, 200.0]], dtype=F32)
    got = fn(x, 0.0, 255.0, autostretch=True)
    # (v - 50) / 150 as iipsrv 1.2 does for 8-bit data (min, max := first, last bins)
    assert got.reshape(-1).tolist() == [0, int(255 * 10 / 150), int(255 * 75 / 150), 255]
    # A histogram from elsewhere (the smallest level) decides the range.
    h = np.zeros(256, np.int64)
    h[[25, 225]] = 1
    got = fn(x, 0.0, 255.0, autostretch=True, histogram=h)
    assert got.reshape(-1).tolist() == [int(255 * (50 - 25) / 200.0), int(255 * 35 / 200.0),
                                        int(255 * 100 / 200.0), int(255 * 175 / 200.0)]
    # One level only: factor 1e30 (like a degenerate range); an empty histogram changes nothing.
    one = np.zeros(256, np.int64)
    one[100] = 4
    assert fn(x, 0.0, 255.0, autostretch=True, histogram=one).reshape(-1).tolist() == [0, 0, 255,
                                                                                        255]
    empty = np.zeros(256, np.int64)
    assert np.array_equal(fn(x, 0.0, 255.0, autostretch=True, histogram=empty), fn(x, 0.0, 255.0))
    # Every channel narrowed with the same levels, in its own units
    x2 = np.array([[[50.0, 200.0]], [[1050.0, 2500.0]]], dtype=F32)
    got = fn(x2, [0.0, 0.0], [255.0, 2550.0], autostretch=True, histogram=h)
    want = fn(x2, [25.0, 250.0], [225.0, 2250.0])
    assert _dn_diff(got, want) <= 1


@needs_ext
@pytest.mark.parametrize("nchan", [1, 3, 5])
@pytest.mark.parametrize("st", [(STRETCH_POWER, 1.0), (STRETCH_SQRT, 0.0)], ids=_sid)
@pytest.mark.parametrize("cmap", [CMAP_NONE, CMAP_JET])
def test_histogram_operations_match_twin_exactly(nchan, st, cmap) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = _tile((nchan, 64, 64), rng)
    small = kernels.bin2x2(kernels.bin2x2(x))
    mins, maxs = [40.0] * nchan, [300.0] * nchan
    hist = kernels.histogram(small, mins, maxs)
    for kw in ({"autostretch": True}, {"equalize": True}, {"autostretch": True, "equalize": True},
               {"equalize": True, "histogram": hist}, {"autostretch": True, "histogram": hist,
                                                       "invert": True, "contrast": 1.3}):
        kw = dict(kw, stretch=st[0], gamma=st[1], cmap=cmap)
        got = kernels.render(x, mins, maxs, **kw)
        want = reference.render(x, mins, maxs, **kw)
        assert _dn_diff(got, want) == 0, kw


@needs_ext
def test_equalize_with_table_stretches_maps_kernel_bytes() -> None:
    # With LOG the bytes before CNT=eq may differ by 1 DN; the mapping itself is exact.
    rng = np.random.default_rng(RNG_SEED)
    x = _tile((1, 64, 64), rng)
    hist = kernels.histogram(x, 40.0, 300.0)
    plain = kernels.render(x, 40.0, 300.0, stretch=STRETCH_LOG)
    eq = kernels.render(x, 40.0, 300.0, stretch=STRETCH_LOG, equalize=True, histogram=hist)
    np.testing.assert_array_equal(eq, reference.equalize(plain, hist))


@pytest.mark.parametrize("fn", [kernels.equalize, reference.equalize], ids=["kernel", "twin"])
def test_equalize_hand_values(fn) -> None:
    h = np.zeros(256, np.int64)
    h[10], h[20], h[30] = 2, 1, 1  # cumulative 2, 3, 4 of N = 4
    px = np.array([[0, 10, 15, 20, 30, 255]], np.uint8)
    # round(255 C / N): C(0) = 0 -> 0, C(10) = 2 -> 127.5 -> 128, C(20) = 3 -> 191.25 -> 191
    assert fn(px, h).tolist() == [[0, 128, 128, 191, 255, 255]]
    rgb = np.array([[[10, 20, 30]]], np.uint8)
    assert fn(rgb, h).tolist() == [[[128, 191, 255]]]
    # An empty histogram leaves the bytes alone.
    assert fn(px, np.zeros(256, np.int64)).tolist() == px.tolist()
    np.testing.assert_array_equal(kernels.equalization_table(h)[px], fn(px, h))


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_equalize_of_uniform_levels_is_the_identity_scale(fn) -> None:
    x = np.arange(256, dtype=F32).reshape(16, 16)
    got = fn(x, 0.0, 255.0, equalize=True)
    # every level holds one pixel: q -> round(255 (q + 1) / 256)
    want = ((2 * 255 * (np.arange(256) + 1) + 256) // 512).reshape(16, 16)
    np.testing.assert_array_equal(got, want.astype(np.uint8))


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
@pytest.mark.parametrize("bad", [np.zeros(255, np.int64), np.zeros((2, 256), np.int64),
                                 np.zeros(256, np.float64), np.full(256, -1, np.int64)])
def test_bad_histogram_is_rejected(fn, bad) -> None:
    x = np.zeros((1, 2, 2), F32)
    with pytest.raises(ValueError):
        fn(x, 0.0, 1.0, equalize=True, histogram=bad)
    with pytest.raises(ValueError):
        kernels.equalize(np.zeros((2, 2), np.uint8), bad)


# ---------------------------------------------------------------------------------------------
# Parameter validation: no number raises
# ---------------------------------------------------------------------------------------------

EXTREMES = [4545.0, 1e30, 1e39, 1e300, -1e300, -5.0, -1.0, 0.0, 1e-45, math.inf, -math.inf,
            math.nan]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
@pytest.mark.parametrize("code", [STRETCH_POWER, STRETCH_LOG, STRETCH_ASINH, STRETCH_SQRT])
def test_no_float_parameter_raises(fn, code) -> None:
    x = np.linspace(-0.5, 9.0, 60, dtype=F32).reshape(1, 3, 20)
    x[0, 0, 0] = np.nan
    for value in EXTREMES:
        for kw in ({"gamma": value}, {"contrast": value}, {"gamma": value, "contrast": value,
                                                             "cmap": CMAP_JET, "invert": True}):
            with np.errstate(all="raise"):
                out = fn(x, 0.0, 1.0, stretch=code, **kw)
            assert out.dtype == np.uint8
        for lo, hi in ((value, 1.0), (0.0, value), (value, value)):
            out = fn(x, lo, hi, stretch=code, gamma=0.5, autostretch=True, equalize=True)
            assert out.dtype == np.uint8


@needs_ext
def test_large_gamma_renders_like_the_twin() -> None:
    # GAM=4545 used to overflow while choosing the gamma table (OverflowError -> HTTP 500).
    v = np.concatenate([np.linspace(0, 1.01, 1000), [1.0, 2.0, np.nan]]).astype(F32)
    x = v.reshape(1, 1, -1)
    for g in (4545.0, 1e30, 1e39, math.inf, math.nan, -4545.0, 0.0):
        for cnt in (1.0, 1e300, -1.0, math.nan):
            got = kernels.render(x, 0.0, 1.0, gamma=g, contrast=cnt)
            want = reference.render(x, 0.0, 1.0, gamma=g, contrast=cnt)
            assert _dn_diff(got, want) == 0, (g, cnt)
    out = kernels.render(x, 0.0, 1.0, gamma=4545.0).reshape(-1)
    assert out[v < 0.99].max() == 0 and out[-2] == 255


def test_table_bounds_never_raise() -> None:
    for g in EXTREMES:
        for cnt in EXTREMES:
            for cmap in (CMAP_NONE, CMAP_JET):
                e = kernels.lut_upper_exponent(g, cnt, cmap)
                assert e is None or 0 <= e <= kernels.LUT_EMAX
        assert kernels.lut_relative_error(g) >= 0 or math.isnan(g)
    assert kernels.lut_upper_exponent(4545.0, 1.0, CMAP_NONE) is None
    assert kernels.lut_relative_error(1e300) == math.inf
    assert kernels.lut_relative_error(4545.0) == math.inf or kernels.lut_relative_error(4545) > 1


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_bad_stretch_code_is_rejected(fn) -> None:
    x = np.zeros((1, 2, 2), F32)
    for bad in (-1, 4, "log", None, 1.0, True):
        with pytest.raises(ValueError):
            fn(x, 0.0, 1.0, stretch=bad)


def test_asinh_beta_is_clamped() -> None:
    assert kernels.asinh_beta(0.2) == 0.2
    assert kernels.asinh_beta(0.0) == kernels.ASINH_BETA_MIN
    assert kernels.asinh_beta(-3.0) == kernels.ASINH_BETA_MIN
    assert kernels.asinh_beta(math.inf) == kernels.ASINH_BETA_MAX
    assert kernels.asinh_beta(math.nan) == kernels.ASINH_BETA


# ---------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "want"),
    [
        ("log", (STRETCH_LOG, 0.0)),
        ("LOG", (STRETCH_LOG, 0.0)),
        ("logarithm", (STRETCH_LOG, 0.0)),
        ("Logarithm", (STRETCH_LOG, 0.0)),
        ("sqrt", (STRETCH_SQRT, 0.0)),
        ("SQRT", (STRETCH_SQRT, 0.0)),
        ("asinh", (STRETCH_ASINH, 0.1)),
        ("ASINH", (STRETCH_ASINH, 0.1)),
        ("asinh:", (STRETCH_ASINH, 0.1)),
        ("asinh:0.02", (STRETCH_ASINH, 0.02)),
        ("asinh:2e-3", (STRETCH_ASINH, 0.002)),
        ("asinh:5abc", (STRETCH_ASINH, 5.0)),
        ("asinh:abc", (STRETCH_ASINH, 1e-6)),   # atof -> 0, clamped
        ("asinh:-1", (STRETCH_ASINH, 1e-6)),
        ("asinh:1e9", (STRETCH_ASINH, 1e6)),
        ("asinh:nan", (STRETCH_ASINH, 0.1)),
        ("asinh:inf", (STRETCH_ASINH, 1e6)),
        ("0.4545", (STRETCH_POWER, 0.4545)),
        ("2.2", (STRETCH_POWER, 2.2)),
        ("4545", (STRETCH_POWER, 4545.0)),
        ("-1", (STRETCH_POWER, -1.0)),           # not iipsrv 1.2's reserved code for log
        ("abc", (STRETCH_POWER, 0.0)),           # atof("abc") = 0
        ("", (STRETCH_POWER, 0.0)),
        ("GAM", (STRETCH_POWER, 0.0)),
        (" 0.5x", (STRETCH_POWER, 0.5)),
        ("1e-3", (STRETCH_POWER, 0.001)),
        ("logx", (STRETCH_POWER, 0.0)),
        ("asinh0.2", (STRETCH_POWER, 0.0)),
        ("1", None),
        ("1.0", None),
        ("1.000abc", None),
    ],
)
def test_parse_stretch(arg, want) -> None:
    assert parse_stretch(arg) == want


def test_parse_stretch_non_finite_numbers() -> None:
    code, value = parse_stretch("inf")
    assert code == STRETCH_POWER and value == math.inf
    code, value = parse_stretch("nan")
    assert code == STRETCH_POWER and math.isnan(value)


@pytest.mark.parametrize(
    ("arg", "want"),
    [
        ("eq", "eq"), ("EQ", "eq"), ("equalization", "eq"), ("Equalization", "eq"),
        ("st", "st"), ("ST", "st"), ("stretch", "st"), ("Stretch", "st"),
        ("1.5", 1.5), ("0", 0.0), ("-1", -1.0), ("abc", 0.0), ("", 0.0), ("CNT", 0.0),
        ("2x", 2.0), ("eqx", 0.0), (" eq", 0.0), ("1e3", 1000.0),
    ],
)
def test_parse_contrast(arg, want) -> None:
    assert parse_contrast(arg) == want


# ---------------------------------------------------------------------------------------------
# to_float32: every integer sample type astropy hands out
# ---------------------------------------------------------------------------------------------

ALL_DTYPES = [e + k for k in ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8")
              for e in ("<", ">")]


def _samples(dtype: np.dtype, shape, rng) -> np.ndarray:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, size=shape, dtype=dtype.newbyteorder("="),
                           endpoint=True)
        flat = raw.reshape(-1)
        flat[:5] = [info.min, info.max, 0, 1, info.max - 1]
        return raw.astype(dtype)
    a = rng.normal(0.0, 1000.0, size=shape)
    a.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    return a.astype(dtype)


@needs_ext
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scaling", [(1.0, 0.0, None), (1.0, 32768.0, 0), (0.5, -3.0, 1),
                                     (1.0, -128.0, -1)])
def test_to_float32_every_dtype_matches_twin(dtype, flip, scaling) -> None:
    dt = np.dtype(dtype)
    rng = np.random.default_rng(RNG_SEED)
    raw = _samples(dt, (37, 23), rng)
    bscale, bzero, blank = scaling
    if blank is not None and dt.kind in "ui":
        info = np.iinfo(dt)
        blank = info.max if blank == -1 else info.min if blank == 0 else 1
    for view in (raw, raw[::2, 1::3], np.asfortranarray(raw)):
        got = kernels.to_float32(view, bscale, bzero, blank=blank, flip=flip)
        want = reference.to_float32(view, bscale, bzero, blank=blank, flip=flip)
        np.testing.assert_array_equal(got, want, strict=True)
        if blank is not None and dt.kind in "ui":
            assert np.isnan(got).sum() == np.count_nonzero(view == blank)


@pytest.mark.parametrize("fn", [kernels.to_float32, reference.to_float32])
def test_to_float32_unsigned_and_signed_byte_values(fn) -> None:
    u2 = np.array([[0, 1, 32768, 65535]], dtype=">u2")
    np.testing.assert_array_equal(fn(u2), np.array([[0, 1, 32768, 65535]], F32))
    np.testing.assert_array_equal(fn(u2.astype("<u2"), blank=65535),
                                  np.array([[0, 1, 32768, np.nan]], F32))
    i1 = np.array([[-128, -1, 0, 127]], dtype="i1")
    np.testing.assert_array_equal(fn(i1, 1.0, 128.0), np.array([[0, 127, 128, 255]], F32))
    u4 = np.array([[0, 2**32 - 1]], dtype=">u4")
    np.testing.assert_array_equal(fn(u4), np.array([[0, 2.0**32]], F32))
    # uint64: through float64 like int64, and a BLANK above 2**63
    u8 = np.array([[2**64 - 1, 2**63 + 2**39 + 1, 5]], dtype=">u8")
    np.testing.assert_array_equal(fn(u8), u8.astype(np.float64).astype(F32))
    out = fn(u8, blank=2**63 + 2**39 + 1)
    assert np.isnan(out[0, 1]) and out[0, 2] == 5 and out[0, 0] == F32(2.0**64)


@pytest.mark.parametrize("fn", [kernels.to_float32, reference.to_float32])
def test_to_float32_reads_astropy_tile_compressed_uint16(fn, tmp_path) -> None:
    fits = pytest.importorskip("astropy.io.fits")
    data = (np.arange(40 * 30, dtype=np.uint32) * 53 % 65536).astype(np.uint16).reshape(40, 30)
    path = tmp_path / "comp.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(path)
    with fits.open(path) as hdul:
        assert hdul[1].header["BITPIX"] == 16 and hdul[1].header["BZERO"] == 32768
        raw = hdul[1].data
        assert raw.dtype.kind == "u" and raw.dtype.itemsize == 2
        got = fn(raw, flip=True)
    np.testing.assert_array_equal(got, data[::-1].astype(F32))
