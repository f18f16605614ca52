"""The fused read-and-bin kernel (``kernels.bin_raw``): raw FITS samples of every type, byte
order and layout to 2x2 means, against its twin (to_float32 then bin2x2) bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from iipy.imaging import kernels
from iipy.imaging.kernels import reference
from tests.unit.test_kernels import _layouts, _raw

F32 = np.float32
DTYPES = [">f4", "<f4", ">f8", ">i2", "<i2", ">i4", ">u2", "u1", "i1", ">i8"]


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == np.float32 and b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 2), (7, 9), (16, 38), (33, 1025)])
@pytest.mark.parametrize("flip", [False, True])
def test_bin_raw_matches_twin(dtype, shape, flip) -> None:
    rng = np.random.default_rng(hash((dtype, shape, flip)) % 2**32)
    raw = _raw(dtype, shape, rng)
    scalings = [(1.0, 0.0, None)]
    if np.dtype(dtype).kind in "ui":
        scalings += [(1.0, 32768.0, None), (0.5, -3.0, int(raw.reshape(-1)[3])),
                     (2.5e-3, 1.0, None)]
    else:
        scalings += [(0.25, 10.0, None)]
    for bscale, bzero, blank in scalings:
        want = reference.bin_raw(raw, bscale, bzero, blank, flip)
        # the definition: the twin is to_float32 then bin2x2
        _same(want, reference.bin2x2(reference.to_float32(raw, bscale, bzero, blank, flip)))
        for name, view in _layouts(raw).items():
            got = kernels.bin_raw(view, bscale, bzero, blank, flip)
            _same(got, want)
            # and the compiled pair agrees with itself
            _same(got, kernels.bin2x2(kernels.to_float32(view, bscale, bzero, blank, flip)))


def test_bin_raw_special_values_and_out() -> None:
    nan, inf = np.nan, np.inf
    raw = np.array([[1, 2, nan, nan, inf, 5, -0.0, 0.0, 3e38, 3e38],
                    [3, 4, nan, nan, nan, -inf, -0.0, -0.0, 3e38, 3e38],
                    [9, 9, 9, 9, 9, 9, 9, 9, 9, 9]], dtype=">f4")
    for fn in (kernels.bin_raw, reference.bin_raw):
        out = np.full((1, 5), 7, F32)
        res = fn(raw, out=out)
        assert res is out
        assert res[0, 0] == 2.5 and np.isnan(res[0, 1]) and res[0, 2] == 5.0
        assert res[0, 3] == 0.0 and np.isinf(res[0, 4])  # 4 * 3e38 overflows float32
        flipped = fn(raw, flip=True)  # rows 2 and 1
        assert flipped[0, 0] == F32(6.25) and flipped[0, 1] == 9.0 and flipped[0, 2] == 9.0


def test_bin_raw_rejects_bad_input() -> None:
    for fn in (kernels.bin_raw, reference.bin_raw):
        with pytest.raises(ValueError):
            fn(np.zeros((4, 4), np.complex64))
        with pytest.raises(ValueError):
            fn(np.zeros(4, F32))
        with pytest.raises(ValueError):
            fn(np.zeros((4, 4), F32), out=np.zeros((3, 2), F32))


# ---------------------------------------------------------------------------------------------
# render_raw: raw samples to 8 bits in one pass
# ---------------------------------------------------------------------------------------------

from tests.unit.test_kernels import EXACT_RENDER, RENDER_OPTIONS, _dn_diff, _ids  # noqa: E402


def _raw_cube(dtype: str, nchan: int, shape: tuple[int, int], rng) -> np.ndarray:
    planes = [_raw(dtype, shape, rng) for _ in range(nchan)]
    return np.stack(planes)


@pytest.mark.parametrize("nchan", [1, 3, 5])
@pytest.mark.parametrize("opts", RENDER_OPTIONS, ids=lambda o: _ids(o))
def test_render_raw_matches_render_of_the_converted_window(nchan, opts) -> None:
    rng = np.random.default_rng(nchan)
    for dtype, scaling in ((">f4", (1.0, 0.0, None)), ("<f4", (0.5, 3.0, None)),
                           (">i2", (2.0, 100.0, -32768)), (">f8", (1.0, 0.0, None))):
        raw = _raw_cube(dtype, nchan, (37, 29), rng)
        if np.dtype(dtype).kind == "f":
            raw = raw / np.asarray(100.0, raw.dtype)  # around the ranges below
        raw = raw.astype(dtype)
        mins = list(rng.uniform(-15.0, -5.0, nchan))
        maxs = list(rng.uniform(5.0, 15.0, nchan))
        bscale, bzero, blank = scaling
        for flip in (False, True):
            # a strided read-only window of a bigger array, as a memory map gives
            big = np.zeros((nchan, 40, 35), raw.dtype)
            big[:, 2:39, 3:32] = raw
            window = big[:, 2:39, 3:32]
            window.setflags(write=False)
            src = np.stack([kernels.to_float32(window[k], bscale, bzero, blank, flip)
                            for k in range(nchan)])
            want = kernels.render(src, mins, maxs, **opts)
            got = kernels.render_raw(window, bscale, bzero, blank, flip, mins, maxs, **opts)
            assert got.dtype == np.uint8 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            twin = reference.render_raw(window, bscale, bzero, blank, flip, mins, maxs, **opts)
            diff = _dn_diff(got, twin)
            assert diff == 0 if (EXACT_RENDER and opts.get("gamma", 1.0) == 1.0) else diff <= 1


def test_render_raw_one_channel_and_histograms() -> None:
    rng = np.random.default_rng(8)
    raw = (rng.normal(100, 5, (64, 48))).astype(">f4")
    src = kernels.to_float32(raw, flip=True)
    hist = kernels.histogram(src, 90.0, 110.0)
    for kw in ({}, {"autostretch": True, "histogram": hist}, {"equalize": True},
               {"equalize": True, "histogram": hist}, {"gamma": 0.4545, "cmap": 3}):
        want = kernels.render(src, 90.0, 110.0, **kw)
        np.testing.assert_array_equal(kernels.render_raw(raw, flip=True, mins=90.0, maxs=110.0,
                                                         **kw), want)
    with pytest.raises(ValueError):
        kernels.render_raw(np.zeros((2, 2, 2, 2), ">f4"))
    with pytest.raises(ValueError):
        kernels.render_raw(np.zeros((2, 2), np.complex64))
