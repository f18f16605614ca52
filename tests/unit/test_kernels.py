"""Pixel kernels: the compiled kernels against their NumPy twins, and the twins against
hand-computed values of the IIP float pipeline (normalise, CTW, flattening, GAM, INV, CMP, CNT)."""

from __future__ import annotations

import platform

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
    reference,
)

F32 = np.float32
RNG_SEED = 20240611
# Without the gamma table the compiled render performs the twin's float32 operations in the same
# order; bit-identical results are expected where the compiler does not contract a*b+c into FMA.
EXACT_RENDER = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

needs_ext = pytest.mark.skipif(not kernels.ACCELERATED, reason="iipy._kernels not built")


def test_extension_is_built() -> None:
    assert kernels.ACCELERATED, "iipy._kernels is not built: run the build step"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _raw(dtype: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Samples of a FITS dtype including the extremes and, for floats, special values."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=shape, dtype=np.int64, endpoint=True)
        flat = a.reshape(-1)
        specials = [info.min, info.max, 0, 1, info.max - 1]
        flat[: min(len(specials), flat.size)] = specials[: flat.size]
        return a.astype(dt)
    a = rng.normal(0.0, 1000.0, size=shape)
    flat = a.reshape(-1)
    specials = [np.nan, np.inf, -np.inf, -0.0, 1e-42, 3.0e38, -1.5]
    flat[rng.permutation(flat.size)[: min(len(specials), flat.size)]] = specials[: flat.size]
    with np.errstate(over="ignore"):
        return a.astype(dt)


def _layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    """The same window reached through several memory layouts, all read-only (like a memmap)."""
    h, w = a.shape
    big = np.zeros((2 * h + 3, 3 * w + 2), dtype=a.dtype)
    big[1 : 1 + 2 * h : 2, 2 : 2 + 3 * w : 3] = a
    strided = big[1 : 1 + 2 * h : 2, 2 : 2 + 3 * w : 3]
    rows = np.zeros((h, w + 5), dtype=a.dtype)
    rows[:, 3 : 3 + w] = a
    row_stride = rows[:, 3 : 3 + w]
    reversed_rows = np.ascontiguousarray(a[::-1])[::-1]
    fortran = np.asfortranarray(a)
    out = {"contiguous": a.copy(), "strided": strided, "row_stride": row_stride,
           "negative_stride": reversed_rows, "fortran": fortran}
    for v in out.values():
        v.setflags(write=False)
    return out


def _assert_same_float(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == np.float32 and b.dtype == np.float32
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b, strict=True)


def _dn_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == np.uint8 and b.dtype == np.uint8
    if a.size == 0:
        return 0
    return int(np.max(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def _ids(opts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in opts.items()) or "default"


def _render_v(values, **kw) -> np.ndarray:
    """Twin render of normalised values v (mins 0, maxs 1 make v equal the input)."""
    x = np.asarray(values, dtype=F32).reshape(1, 1, -1)
    return reference.render(x, [0.0], [1.0], **kw)[0]


# ---------------------------------------------------------------------------------------------
# cmap_code
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [("hot", CMAP_HOT), ("HOT", CMAP_HOT), ("Cold", CMAP_COLD), ("jet", CMAP_JET),
     ("red", CMAP_RED), ("GREEN", CMAP_GREEN), ("blue", CMAP_BLUE), ("grey", CMAP_NONE),
     ("gray", CMAP_NONE), ("", CMAP_NONE), ("none", CMAP_NONE), ("hsv", CMAP_NONE)],
)
def test_cmap_code(name: str, code: int) -> None:
    assert kernels.cmap_code(name) == code


# ---------------------------------------------------------------------------------------------
# to_float32
# ---------------------------------------------------------------------------------------------

DTYPES = ["u1", ">i2", ">i4", ">i8", ">f4", ">f8", "<i2", "<i4", "<i8", "<f4", "<f8", "=i2", "=f4"]
SHAPES = [(233, 189), (1, 7), (7, 1), (2, 2)]


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(
    "scaling",
    [(1.0, 0.0, None), (2.5, -3.25, 7), (1.0, 32768.0, -32768), (0.001, 1e5, 0), (-1.0, 0.0, 255)],
)
def test_to_float32_matches_twin(dtype, shape, flip, scaling) -> None:
    rng = np.random.default_rng(RNG_SEED)
    raw = _raw(dtype, shape, rng)
    bscale, bzero, blank = scaling
    for name, view in _layouts(raw).items():
        got = kernels.to_float32(view, bscale, bzero, blank=blank, flip=flip)
        want = reference.to_float32(view, bscale, bzero, blank=blank, flip=flip)
        assert got.flags.c_contiguous, name
        _assert_same_float(got, want)


@needs_ext
def test_to_float32_memmap_big_endian(tmp_path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    data = _raw(">i2", (300, 257), rng)
    path = tmp_path / "img.raw"
    data.tofile(path)
    mm = np.memmap(path, dtype=">i2", mode="r", shape=data.shape)
    window = mm[40:273:1, 17:250]
    for flip in (False, True):
        got = kernels.to_float32(window, 1.0, 32768.0, blank=-32768, flip=flip)
        want = reference.to_float32(window, 1.0, 32768.0, blank=-32768, flip=flip)
        _assert_same_float(got, want)
    sub = mm[::5, ::3]
    _assert_same_float(kernels.to_float32(sub, 0.5, 1.0), reference.to_float32(sub, 0.5, 1.0))


@pytest.mark.parametrize("fn", [kernels.to_float32, reference.to_float32])
def test_to_float32_int16_bzero_gives_unsigned_range(fn) -> None:
    raw = np.array([[-32768, -1, 0, 32767]], dtype=">i2")
    out = fn(raw, 1.0, 32768.0)
    np.testing.assert_array_equal(out, np.array([[0.0, 32767.0, 32768.0, 65535.0]], dtype=F32))


@pytest.mark.parametrize("fn", [kernels.to_float32, reference.to_float32])
def test_to_float32_hand_values(fn) -> None:
    raw = np.array([[1, 2, 3], [4, 5, 6]], dtype=">i4")
    # value = raw * bscale + bzero, BLANK -> NaN, flip puts the last stored row first.
    out = fn(raw, 2.0, 0.5, blank=5, flip=True)
    want = np.array([[8.5, np.nan, 12.5], [2.5, 4.5, 6.5]], dtype=F32)
    np.testing.assert_array_equal(out, want)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    # BLANK is ignored for float samples; float samples without scaling are copied exactly.
    f = np.array([[np.nan, -0.0, 1e-45, np.inf]], dtype=">f4")
    got = fn(f, blank=0)
    assert np.isnan(got[0, 0]) and np.signbit(got[0, 1]) and got[0, 2] == F32(1e-45)
    assert got[0, 3] == np.inf
    # float64 samples are rounded once to float32.
    d = np.array([[0.1, 1e300]], dtype=">f8")
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(fn(d), np.array([[0.1, np.inf]], dtype=F32))
    # A BLANK outside the type's range matches nothing.
    u = np.array([[0, 255]], dtype="u1")
    np.testing.assert_array_equal(fn(u, blank=300), np.array([[0.0, 255.0]], dtype=F32))
    np.testing.assert_array_equal(fn(u, blank=255), np.array([[0.0, np.nan]], dtype=F32))


@pytest.mark.parametrize("fn", [kernels.to_float32, reference.to_float32])
def test_to_float32_int64_goes_through_float64(fn) -> None:
    x = np.array([[2**62 + 2**38 + 1, -(2**53) - 1]], dtype=">i8")
    want = x.astype(np.float64).astype(np.float32)
    np.testing.assert_array_equal(fn(x), want)


@pytest.mark.parametrize("fn", [kernels.to_float32, reference.to_float32])
def test_to_float32_out_argument(fn) -> None:
    raw = np.arange(12, dtype=">i2").reshape(3, 4)
    out = np.full((3, 4), -1.0, dtype=F32)
    res = fn(raw, out=out)
    assert res is out
    np.testing.assert_array_equal(out, raw.astype(F32))


@pytest.mark.parametrize("fn", [kernels.to_float32, reference.to_float32])
@pytest.mark.parametrize(
    "bad",
    [
        lambda: (np.zeros((2, 3, 4), ">f4"), {}),
        lambda: (np.zeros(5, ">f4"), {}),
        lambda: (np.zeros((2, 2), "f2"), {}),
        lambda: (np.zeros((2, 2), ">c16"), {}),
        lambda: (np.zeros((2, 2), "c8"), {}),
        lambda: (np.zeros((2, 2), bool), {}),
        lambda: (np.zeros((2, 2), ">f4"), {"out": np.zeros((2, 3), F32)}),
        lambda: (np.zeros((2, 2), ">f4"), {"out": np.zeros((2, 2), np.float64)}),
        lambda: (np.zeros((2, 2), ">f4"), {"out": np.zeros((2, 2), ">f4")}),
        lambda: (np.zeros((2, 2), ">f4"), {"out": np.zeros((2, 4), F32)[:, ::2]}),
        lambda: (np.zeros((2, 2), ">i2"), {"blank": 1.5}),
    ],
)
def test_to_float32_rejects_bad_input(fn, bad) -> None:
    raw, kw = bad()
    with pytest.raises(ValueError):
        fn(raw, **kw)


# ---------------------------------------------------------------------------------------------
# bin2x2
# ---------------------------------------------------------------------------------------------


def _float_tile(shape, rng, special_fraction=0.05) -> np.ndarray:
    a = rng.normal(0.0, 100.0, size=shape).astype(F32)
    flat = a.reshape(-1)
    n = int(flat.size * special_fraction)
    idx = rng.permutation(flat.size)[:n]
    flat[idx] = rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0], dtype=F32), size=n)
    return a


@needs_ext
@pytest.mark.parametrize("shape", [(233, 189), (512, 512), (1, 7), (7, 1), (2, 2), (3, 3), (2, 9)])
def test_bin2x2_matches_twin(shape) -> None:
    rng = np.random.default_rng(RNG_SEED)
    a = _float_tile(shape, rng, 0.3)
    for name, view in _layouts(a).items():
        got = kernels.bin2x2(view)
        want = reference.bin2x2(view)
        assert got.shape == (shape[0] // 2, shape[1] // 2), name
        _assert_same_float(got, want)


@needs_ext
def test_bin2x2_stack_and_out() -> None:
    rng = np.random.default_rng(RNG_SEED)
    a = _float_tile((3, 65, 40), rng, 0.2)
    out = np.empty((3, 32, 20), dtype=F32)
    assert kernels.bin2x2(a, out=out) is out
    _assert_same_float(out, reference.bin2x2(a))
    _assert_same_float(kernels.bin2x2(a.astype(">f4")), reference.bin2x2(a))


@pytest.mark.parametrize("fn", [kernels.bin2x2, reference.bin2x2])
def test_bin2x2_hand_values(fn) -> None:
    nan, inf = np.nan, np.inf
    a = np.array(
        [
            [1.0, 2.0, nan, nan, 1.0, nan, 9.0],
            [3.0, 4.0, nan, nan, inf, -inf, 9.0],
            [5.0, nan, 0.0, -2.0, 7.0, 7.0, 9.0],
        ],
        dtype=F32,
    )
    out = fn(a)
    # Odd last row and column dropped; mean of the finite values; NaN if none is finite.
    want = np.array([[2.5, nan, 1.0]], dtype=F32)
    np.testing.assert_array_equal(out, want)
    assert fn(np.zeros((1, 5), F32)).shape == (0, 2)


@pytest.mark.parametrize("fn", [kernels.bin2x2, reference.bin2x2])
def test_bin2x2_rejects_bad_input(fn) -> None:
    with pytest.raises(ValueError):
        fn(np.zeros((4, 4), np.float64))
    with pytest.raises(ValueError):
        fn(np.zeros(4, F32))
    with pytest.raises(ValueError):
        fn(np.zeros((4, 4), F32), out=np.zeros((2, 3), F32))


# ---------------------------------------------------------------------------------------------
# render: compiled kernel against the twin
# ---------------------------------------------------------------------------------------------

RENDER_OPTIONS = [
    {},
    {"invert": True},
    {"contrast": 1.5},
    {"contrast": -2.0},
    {"gamma": 0.4545},
    {"gamma": 2.2, "invert": True, "contrast": 0.7},
    {"gamma": 0.4545, "invert": True, "cmap": CMAP_JET, "contrast": 1.5, "ctw": [[1.0]]},
    {"cmap": CMAP_HOT},
    {"cmap": CMAP_COLD, "gamma": 0.5, "contrast": 2.0},
    {"cmap": CMAP_JET, "invert": True},
    {"cmap": CMAP_RED, "contrast": 3.0},
    {"cmap": CMAP_GREEN},
    {"cmap": CMAP_BLUE, "invert": True},
    {"ctw": [[0.5, 7.0], [1.0], [1.0]]},
    {"ctw": [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]], "gamma": 2.0},
    {"ctw": [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]},
    {"ctw": [[0.0, 0.0, 0.0, 0.0, 1.0]]},
    {"ctw": [[0.3333333333333333, 0.3333333333333333, 0.3333333333333333, -0.1, 1e-7]] * 3,
     "cmap": CMAP_HOT},
    {"ctw": [[0.0]]},
    {"gamma": 7.0, "contrast": 40.0},  # the table is refused: exact powf
]


@needs_ext
@pytest.mark.parametrize("nchan", [1, 2, 3, 5])
@pytest.mark.parametrize("opts", RENDER_OPTIONS, ids=lambda o: _ids(o))
def test_render_matches_twin(nchan, opts) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = _float_tile((nchan, 61, 47), rng, 0.05)
    mins = list(rng.uniform(-150.0, -50.0, nchan))
    maxs = list(rng.uniform(50.0, 150.0, nchan))
    got = kernels.render(x, mins, maxs, **opts)
    want = reference.render(x, mins, maxs, **opts)
    assert got.shape == want.shape and got.dtype == np.uint8 and got.flags.c_contiguous
    diff = _dn_diff(got, want)
    if EXACT_RENDER and opts.get("gamma", 1.0) == 1.0:
        assert diff == 0
    else:
        assert diff <= 1


def _around_thresholds() -> np.ndarray:
    """float32 values within 64 ulps of every colormap boundary, plus special values."""
    cuts = np.array([0.125, 1 / 3, 0.375, 0.5, 0.625, 2 / 3, 0.875, 1.0], dtype=F32)
    steps = np.arange(-64, 65, dtype=np.int32)
    vals = [(c.view(np.int32) + steps).view(F32) for c in cuts]
    vals.append(np.arange(0, 65, dtype=np.int32).view(F32))            # +0 and tiny positives
    # -0 and tiny negatives
    vals.append((np.arange(0, 65, dtype=np.int32) | np.int32(-(2**31))).view(F32))
    vals.append(np.array([np.nan, -np.nan, np.inf, -np.inf, 3e38, -3e38, 1.5, -1.5, 2.0, 0.1, 0.9,
                          -0.125, -0.3], dtype=F32))
    return np.concatenate(vals)


@needs_ext
@pytest.mark.parametrize("cmap", [CMAP_NONE, CMAP_HOT, CMAP_COLD, CMAP_JET, CMAP_RED, CMAP_GREEN,
                                  CMAP_BLUE])
@pytest.mark.parametrize("contrast", [1.0, 1.5, 0.3, -1.0, 1000.0])
def test_colormap_and_quantise_boundaries_exact(cmap, contrast) -> None:
    v = _around_thresholds()
    want = reference.render(v.reshape(1, 1, -1), [0.0], [1.0], cmap=cmap, contrast=contrast)
    # One wide row (vector loops) and a column of 1-pixel rows (scalar loops).
    wide = kernels.render(v.reshape(1, 1, -1), [0.0], [1.0], cmap=cmap, contrast=contrast)
    narrow = kernels.render(v.reshape(1, -1, 1), [0.0], [1.0], cmap=cmap, contrast=contrast)
    np.testing.assert_array_equal(wide, want)
    np.testing.assert_array_equal(narrow.reshape(want.shape), want)
    # The same values after INV and through the GAM table path.
    for kw in ({"invert": True}, {"gamma": 0.4545}):
        x = v.reshape(1, 1, -1)
        want = reference.render(x, [0.0], [1.0], cmap=cmap, contrast=contrast, **kw)
        got = kernels.render(x, [0.0], [1.0], cmap=cmap, contrast=contrast, **kw)
        assert _dn_diff(got, want) <= (0 if "invert" in kw else 1)


@needs_ext
@pytest.mark.parametrize("cmap", [CMAP_NONE, CMAP_HOT, CMAP_COLD, CMAP_JET, CMAP_RED, CMAP_GREEN,
                                  CMAP_BLUE])
@pytest.mark.parametrize("contrast", [1.0, 1.5, 0.3, -1.0, 0.0, 1000.0, np.inf])
def test_colormap_and_quantise_special_values_exact(cmap, contrast) -> None:
    # NaN and infinities never survive normalisation, but GAM (powf of inf), CTW (inf - inf)
    # and INV can produce them; the last steps must treat them as the twin does.
    v = _around_thresholds()
    with np.errstate(all="ignore"):
        if cmap == CMAP_NONE:
            want = reference.quantise(v, contrast)
        else:
            want = np.moveaxis(reference.quantise(reference.colormap(v, cmap), contrast), 0, -1)
    np.testing.assert_array_equal(kernel_hooks.finish(v, cmap, contrast), want)
    np.testing.assert_array_equal(kernel_hooks.finish(v, cmap, contrast, scalar=True), want)


@needs_ext
@pytest.mark.parametrize("shape", [(233, 189), (1, 7), (7, 1), (1, 1)])
@pytest.mark.parametrize("nchan", [1, 3])
def test_render_odd_sizes_and_layouts(shape, nchan) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = _float_tile((nchan,) + shape, rng, 0.05)
    views = {
        "contiguous": x,
        "big_endian": x.astype(">f4"),
        "strided": np.repeat(x, 2, axis=2)[:, :, ::2],
        "2d": x[0] if nchan == 1 else x,
    }
    for opts in ({}, {"gamma": 0.4545, "cmap": CMAP_JET, "contrast": 1.5}, {"invert": True}):
        for name, view in views.items():
            got = kernels.render(view, [-100.0] * nchan, [100.0] * nchan, **opts)
            want = reference.render(x, [-100.0] * nchan, [100.0] * nchan, **opts)
            assert got.shape == want.shape, name
            assert _dn_diff(got, want) <= 1, name


@needs_ext
def test_render_degenerate_range_and_overflow() -> None:
    # max == min gives factor 1e30; huge finite values overflow to inf in float32.
    x = np.array([[[0.0, 1.0, 1e10, -1e10, np.nan]], [[1e10, 2.0, 3.0, 4.0, 5.0]]], dtype=F32)
    for opts in ({}, {"ctw": [[1.0, 0.0]]}, {"ctw": [[1.0, 1.0]]}, {"gamma": 0.5, "invert": True},
                 {"cmap": CMAP_HOT}, {"cmap": CMAP_JET, "ctw": [[1.0, -1.0]]}):
        got = kernels.render(x, [1.0, 0.0], [1.0, 0.0], **opts)
        want = reference.render(x, [1.0, 0.0], [1.0, 0.0], **opts)
        assert _dn_diff(got, want) == 0, opts


# ---------------------------------------------------------------------------------------------
# Gamma table: within 1 DN of the exact formula everywhere it is used
# ---------------------------------------------------------------------------------------------

GAMMAS = [0.2, 0.4545, 1 / 1.8, 2.0, 5.0]


def _dense_v() -> np.ndarray:
    rng = np.random.default_rng(RNG_SEED)
    parts = [
        np.linspace(0.0, 1.0, 400_001),
        np.geomspace(1e-30, 1.0, 50_000),
        np.linspace(1.0, 8.5, 30_001),
        # random float32 bit patterns between 2**-26 and 16
        rng.integers(0x32800000, 0x41800000, 100_000, dtype=np.uint32).view(F32),
        np.array([-1.0, -0.0, 0.0, np.nan, np.inf, -np.inf, 2.0**-24, 2.0**-25, 7.999999, 8.0]),
    ]
    return np.concatenate([np.asarray(p, dtype=F32) for p in parts])


@needs_ext
@pytest.mark.parametrize("gamma", GAMMAS)
def test_gamma_table_relative_error_bound(gamma) -> None:
    v = _dense_v()
    v = v[np.isfinite(v) & (v >= 2.0**-24) & (v < 8.0)]
    got = kernel_hooks.gamma_with_table(v, gamma, 3).astype(np.float64)
    exact = v.astype(np.float64) ** float(F32(gamma))
    rel = np.abs(got - exact) / exact
    assert rel.max() <= kernels.lut_relative_error(float(F32(gamma)))


@needs_ext
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize(
    "opts",
    [{}, {"invert": True}, {"contrast": 1.5}, {"contrast": 10.0},
     {"cmap": CMAP_JET, "contrast": 1.5}, {"cmap": CMAP_HOT, "invert": True},
     {"cmap": CMAP_COLD, "contrast": 3.0}, {"contrast": 0.3}],
    ids=_ids,
)
def test_gamma_table_within_one_dn(gamma, opts) -> None:
    v = _dense_v().reshape(1, 1, -1)
    got = kernels.render(v, [0.0], [1.0], gamma=gamma, **opts)
    want = reference.render(v, [0.0], [1.0], gamma=gamma, **opts)
    assert _dn_diff(got, want) <= 1


@needs_ext
@pytest.mark.parametrize("gamma", GAMMAS)
def test_gamma_table_vector_and_scalar_paths_agree(gamma) -> None:
    # Four pixels at a time normally; a block holding a value that needs powf (NaN here) is done
    # one pixel at a time. Both must give the same bits for the same value.
    rng = np.random.default_rng(RNG_SEED)
    v = rng.uniform(-0.2, 1.2, 4000).astype(F32)
    fast = kernel_hooks.gamma_with_table(v, gamma, 3)
    mixed = np.empty(8000, dtype=F32)
    mixed[0::2] = v
    mixed[1::2] = np.nan
    slow = kernel_hooks.gamma_with_table(mixed, gamma, 3)
    np.testing.assert_array_equal(slow[0::2].view(np.uint32), fast.view(np.uint32))
    assert np.isnan(slow[1::2]).all()


def test_gamma_table_is_used_for_common_requests() -> None:
    for g in (0.2, 0.4545, 1 / 1.8, 2.0):
        assert kernels.lut_upper_exponent(g, 1.5, CMAP_JET) == kernels.LUT_EMAX
        assert kernels.lut_upper_exponent(g, 1.0, CMAP_NONE) == kernels.LUT_EMAX
    assert kernels.lut_upper_exponent(5.0, 1.0, CMAP_NONE) is not None
    # The guarantee cannot hold for any table at extreme contrast: exact powf instead.
    assert kernels.lut_upper_exponent(5.0, 1e6, CMAP_JET) is None
    assert kernels.lut_upper_exponent(-0.5, 1.0, CMAP_NONE) is None
    assert kernels.lut_upper_exponent(0.0, 1.0, CMAP_NONE) is None


# ---------------------------------------------------------------------------------------------
# The twin against hand-computed values (protocol section 6)
# ---------------------------------------------------------------------------------------------


def test_normalise_min_max_and_truncation() -> None:
    x = np.array([[[-2.0, 12.0, 5.0, 100.0, -50.0]]], dtype=F32)
    out = reference.render(x, [-2.0], [12.0])
    # min -> 0, max -> 255, (5+2)/14 = 0.5 -> 127.5 -> 127, above max -> 255, below min -> 0.
    np.testing.assert_array_equal(out, np.array([[0, 255, 127, 255, 0]], dtype=np.uint8))
    # truncation, not rounding: 254.99 -> 254.
    v = F32(254.99) / F32(255)
    assert _render_v([v]).tolist() == [254]
    assert _render_v([0.5], contrast=2.0).tolist() == [255]
    assert _render_v([0.5], contrast=1.99).tolist() == [253]


def test_non_finite_input_is_bottom_of_range() -> None:
    x = np.array([[[np.nan, np.inf, -np.inf, 0.5]]], dtype=F32)
    assert reference.render(x, [0.0], [1.0]).tolist() == [[0, 0, 0, 127]]
    assert reference.render(x, [0.0], [1.0], invert=True).tolist() == [[255, 255, 255, 127]]


def test_quantise_special_values() -> None:
    v = np.array([np.inf, -np.inf, np.nan, 0.99999, -0.0001, 1.0], dtype=F32)
    assert reference.quantise(v, 1.0).tolist() == [255, 0, 255, 254, 0, 255]


def test_degenerate_range_factor() -> None:
    # |max - min| <= 1e-30: factor 1e30, so anything above min saturates.
    x = np.array([[[3.0, 3.0000002, 2.9999998]]], dtype=F32)
    assert reference.render(x, [3.0], [3.0]).tolist() == [[0, 255, 0]]


COLORMAP_V = [0.0, 0.1, 1 / 3, 0.5, 2 / 3, 0.9, 1.0, 1.5]
# Expected RGB at v = COLORMAP_V (float32), from the formulas of protocol section 6.3, then
# truncate(255 * value). E.g. HOT at 0.1: 3v = 0.3 -> 76.5 -> 76; HOT at 1/3: not < 1/3 so
# (1, 3v-1, 0) = (1, 0, 0); JET at 0: (0, 0, 0.5) -> 127; JET at 1/3: 4v - 0.5 = 0.8333 -> 212;
# JET at 2/3: 3.5 - 4v = 0.8333 -> 212; JET at 0.9: 4.5 - 4v = 0.9 -> 229; JET at v >= 1: 0.5.
COLORMAP_EXPECTED = {
    CMAP_HOT: [(0, 0, 0), (76, 0, 0), (255, 0, 0), (255, 127, 0), (255, 255, 0), (255, 255, 178),
               (255, 255, 255), (255, 255, 255)],
    CMAP_COLD: [(0, 0, 0), (0, 0, 76), (0, 0, 255), (0, 127, 255), (0, 255, 255), (178, 255, 255),
                (255, 255, 255), (255, 255, 255)],
    CMAP_JET: [(0, 0, 127), (0, 0, 229), (0, 212, 255), (127, 255, 127), (255, 212, 0), (229, 0, 0),
               (127, 0, 0), (127, 0, 0)],
    CMAP_RED: [(0, 0, 0), (25, 0, 0), (85, 0, 0), (127, 0, 0), (170, 0, 0), (229, 0, 0),
               (255, 0, 0), (255, 0, 0)],
    CMAP_GREEN: [(0, 0, 0), (0, 25, 0), (0, 85, 0), (0, 127, 0), (0, 170, 0), (0, 229, 0),
                 (0, 255, 0), (0, 255, 0)],
    CMAP_BLUE: [(0, 0, 0), (0, 0, 25), (0, 0, 85), (0, 0, 127), (0, 0, 170), (0, 0, 229),
                (0, 0, 255), (0, 0, 255)],
}


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
@pytest.mark.parametrize("cmap", sorted(COLORMAP_EXPECTED))
def test_colormaps_hand_values(fn, cmap) -> None:
    x = np.array(COLORMAP_V, dtype=F32).reshape(1, 1, -1)
    out = fn(x, [0.0], [1.0], cmap=cmap)
    assert out.shape == (1, len(COLORMAP_V), 3)
    assert [tuple(p) for p in out[0].tolist()] == COLORMAP_EXPECTED[cmap]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_colormap_boundaries_and_negative(fn) -> None:
    x = np.array([-0.1, 0.125, 0.375, 0.625, 0.875], dtype=F32).reshape(1, 1, -1)
    jet = fn(x, [0.0], [1.0], cmap=CMAP_JET)[0].tolist()
    # v < 0 -> black; at 1/8: (0, 4v-.5, 1) = (0, 0, 1); 3/8: (4v-1.5, 1, 2.5-4v) = (0, 1, 1);
    # 5/8: (1, 3.5-4v, 0) = (1, 1, 0); 7/8: (4.5-4v, 0, 0) = (1, 0, 0).
    assert jet == [[0, 0, 0], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]]
    hot = fn(x[:, :, :1], [0.0], [1.0], cmap=CMAP_HOT)[0].tolist()
    assert hot == [[0, 0, 0]]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_colormap_contrast_multiplies_formula(fn) -> None:
    # CNT multiplies the colormap output (not a LUT of the quantised value): HOT at 0.1 with
    # CNT=2 is 3*0.1*255*2 = 153, and JET at 0 with CNT=1.5 is 0.5*255*1.5 = 191.
    x = np.array([[[0.1, 0.0]]], dtype=F32)
    assert fn(x[:, :, :1], [0.0], [1.0], cmap=CMAP_HOT, contrast=2.0)[0, 0].tolist() == [153, 0, 0]
    assert fn(x[:, :, 1:], [0.0], [1.0], cmap=CMAP_JET, contrast=1.5)[0, 0].tolist() == [0, 0, 191]


# CTW, protocol section 6.4


def _chan(*values) -> np.ndarray:
    """(C, 1, 1) image whose channel c has value values[c] (min 0, max 1: v = value)."""
    return np.array(values, dtype=F32).reshape(-1, 1, 1)


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_ctw_one_channel(fn) -> None:
    x = _chan(0.8)
    # CTW=0.5;1;1 on one channel -> grey 0.5 v; extra columns and rows ignored.
    assert fn(x, [0], [1], ctw=[[0.5], [1], [1]]).tolist() == [[102]]
    assert fn(x, [0], [1], ctw=[[0.5, 7], [1], [1]]).tolist() == [[102]]
    assert fn(x, [0], [1], ctw=[[0.5, 7], [1], [1]]).shape == (1, 1)


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_ctw_two_channels_gives_grey_from_row_0(fn) -> None:
    x = _chan(0.4, 0.8)
    out = fn(x, [0, 0], [1, 1], ctw=[[0.5, 0.25], [1.0, 1.0]])
    assert out.shape == (1, 1)
    # 0.5*0.4 + 0.25*0.8 = 0.4 -> 102
    assert out.tolist() == [[102]]
    # No CTW: channel 0 grey.
    assert fn(x, [0, 0], [1, 1]).tolist() == [[102]]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_ctw_three_channels(fn) -> None:
    x = _chan(0.2, 0.4, 0.8)
    swap = fn(x, [0] * 3, [1] * 3, ctw=[[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert swap.shape == (1, 1, 3) and swap[0, 0].tolist() == [204, 102, 51]
    # Rows longer than C: extra coefficients ignored. Missing rows: 0.
    long_rows = fn(x, [0] * 3, [1] * 3, ctw=[[1, 0, 0, 5, 5], [0, 0, 1, 9]])
    assert long_rows[0, 0].tolist() == [51, 204, 0]
    # No CTW: channels as RGB.
    assert fn(x, [0] * 3, [1] * 3)[0, 0].tolist() == [51, 102, 204]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_ctw_five_channels(fn) -> None:
    x = _chan(0.2, 0.4, 0.6, 0.8, 1.0)
    lo, hi = [0] * 5, [1] * 5
    # No CTW: channels 0-2 as RGB.
    assert fn(x, lo, hi)[0, 0].tolist() == [51, 102, 153]
    # Mono CTW on channel 5 (index 4).
    mono = [[0, 0, 0, 0, 1]] * 3
    assert fn(x, lo, hi, ctw=mono)[0, 0].tolist() == [255, 255, 255]
    # Rows shorter than C: channel 2 everywhere.
    assert fn(x, lo, hi, ctw=[[0, 0, 1]] * 3)[0, 0].tolist() == [153, 153, 153]
    # A single row on 5 channels: R from the row, G and B 0 (missing rows filled with 0).
    assert fn(x, lo, hi, ctw=[[0, 0, 0, 0, 1]])[0, 0].tolist() == [255, 0, 0]
    # Colormap of output channel 0.
    assert fn(x, lo, hi, ctw=mono, cmap=CMAP_HOT)[0, 0].tolist() == [255, 255, 255]
    assert fn(x, lo, hi, ctw=[[0.5, 0, 0, 0, 0]] * 3, cmap=CMAP_RED)[0, 0].tolist() == [25, 0, 0]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_ctw_zero_coefficient_contributes_nothing(fn) -> None:
    # Channel 1 normalises to +inf (factor 1e30); 0 * inf would be NaN, but a 0 is skipped.
    x = _chan(0.5, 1e10)
    assert fn(x, [0, 0], [1, 0], ctw=[[1.0, 0.0]]).tolist() == [[127]]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_ctw_negative_and_small_coefficients(fn) -> None:
    x = _chan(0.6, 0.2, 0.4)
    out = fn(x, [0] * 3, [1] * 3, ctw=[[1, -1, 1e-7], [-1, 0, 0], [0.3333333333333333] * 3])
    # 0.6-0.2 = 0.4 -> 102; -0.6 -> 0; 0.4 -> 102 (101.99.. in float32 -> 101 or 102)
    r, g, b = out[0, 0].tolist()
    assert (r, g) == (102, 0) and b in (101, 102)


# GAM, INV, CNT order


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_inv_before_contrast(fn) -> None:
    x = _chan(0.75)
    # INV then CNT: (1 - 0.75) * 255 * 2 = 127.5 -> 127. (CNT before INV would give 1 - 1.5 -> 0.)
    assert fn(x, [0], [1], invert=True, contrast=2.0).tolist() == [[127]]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_gamma_before_inv(fn) -> None:
    x = _chan(0.25)
    # GAM then INV: 1 - 0.25**0.5 = 0.5 -> 127. (INV first: 0.75**0.5 = 0.866 -> 220.)
    assert fn(x, [0], [1], gamma=0.5, invert=True).tolist() == [[127]]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_ctw_before_gamma(fn) -> None:
    x = _chan(0.25)
    # CTW then GAM: (0.25*0.25)**0.5 = 0.25 -> 63. (GAM first: 0.5*0.25 = 0.125 -> 31.)
    assert fn(x, [0], [1], ctw=[[0.25]], gamma=0.5).tolist() == [[63]]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_gamma_clips_negative_and_not_above_one(fn) -> None:
    x = np.array([[[-0.5, 2.0]]], dtype=F32)
    # max(v, 0)**2: -0.5 -> 0; 2 -> 4 (not clipped before GAM), then INV: 1 -> 255, -3 -> 0.
    assert fn(x, [0], [1], gamma=2.0).tolist() == [[0, 255]]
    assert fn(x, [0], [1], gamma=2.0, invert=True).tolist() == [[255, 0]]
    # Contrast 0.1 keeps 4 unsaturated: 4 * 255 * 0.1 = 102.
    assert fn(x, [0], [1], gamma=2.0, contrast=0.1).tolist() == [[0, 102]]


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_inv_before_colormap(fn) -> None:
    x = _chan(0.9)
    # INV gives 0.1 (0.100000024 in float32), and HOT of that is (3v, 0, 0) -> 76.
    assert fn(x, [0], [1], invert=True, cmap=CMAP_HOT)[0, 0].tolist() == [76, 0, 0]


# Output shapes and validation


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
@pytest.mark.parametrize(
    ("nchan", "opts", "shape"),
    [(1, {}, (4, 5)), (2, {}, (4, 5)), (3, {}, (4, 5, 3)), (5, {}, (4, 5, 3)),
     (1, {"cmap": CMAP_JET}, (4, 5, 3)), (2, {"cmap": CMAP_RED}, (4, 5, 3)),
     (1, {"ctw": [[1], [1], [1]]}, (4, 5)), (3, {"ctw": [[1, 1, 1]]}, (4, 5, 3))],
)
def test_render_output_shapes(fn, nchan, opts, shape) -> None:
    x = np.zeros((nchan, 4, 5), dtype=F32)
    out = fn(x, [0.0] * nchan, [1.0] * nchan, **opts)
    assert out.shape == shape and out.dtype == np.uint8 and out.flags.c_contiguous


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
def test_render_accepts_2d_and_scalar_range(fn) -> None:
    x = np.array([[0.0, 0.5], [1.0, 2.0]], dtype=F32)
    assert fn(x, 0.0, 1.0).tolist() == [[0, 127], [255, 255]]
    assert fn(np.zeros((0, 3), F32), 0.0, 1.0).shape == (0, 3)


@pytest.mark.parametrize("fn", [kernels.render, reference.render], ids=["kernel", "twin"])
@pytest.mark.parametrize(
    "bad",
    [
        lambda: ((np.zeros((1, 2, 2), np.float64), [0], [1]), {}),
        lambda: ((np.zeros((2, 2, 2, 2), F32), [0], [1]), {}),
        lambda: ((np.zeros((0, 2, 2), F32), [], []), {}),
        lambda: ((np.zeros((3, 2, 2), F32), [0, 0], [1, 1, 1]), {}),
        lambda: ((np.zeros((1, 2, 2), F32), [0], [1]), {"cmap": 7}),
        lambda: ((np.zeros((1, 2, 2), F32), [0], [1]), {"cmap": -1}),
        lambda: ((np.zeros((1, 2, 2), F32), [0], [1]), {"ctw": np.zeros((1, 1, 1))}),
        lambda: ((np.zeros((1, 2, 2), F32), [0], [1]), {"ctw": [1.0, 2.0]}),
        lambda: ((np.zeros((1, 2, 2), F32), [0], [1]), {"ctw": [["a"]]}),
        lambda: ((np.zeros((1, 2, 2), F32), [0], [1]), {"gamma": "x"}),
    ],
)
def test_render_rejects_bad_input(fn, bad) -> None:
    args, kw = bad()
    with pytest.raises(ValueError):
        fn(*args, **kw)
