"""The STIFF chunk statistic (``kernels.stiff_chunk``): the compiled selection against its
NumPy twin, exactly, through the sample-guided path and the full one, the AVX2 and the plain C
passes, both byte orders, and data chosen to defeat the sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iipy.imaging import kernels
from iipy.imaging.kernels import STIFF_MAX_LEVEL, reference

F32 = np.float32

needs_ext = pytest.mark.skipif(not kernels.ACCELERATED, reason="iipy._kernels not built")


@pytest.fixture(params=[True, False], ids=["avx2", "plain"])
def simd(request):
    used = kernels.set_simd(request.param)
    yield used
    kernels.set_simd(True)


def _same(got: tuple[int, float, float], ref: tuple[int, float, float]) -> None:
    assert got[0] == ref[0]
    if ref[0] == 0:
        assert math.isnan(got[1]) and math.isnan(got[2])
    else:
        # exact: -0.0 and +0.0 are the same value (the ranks hold one or the other)
        assert got[1:] == ref[1:], (got, ref)


def _sky(n: int, rng: np.random.Generator, sky: float = 1000.0, noise: float = 10.0
         ) -> np.ndarray:
    v = rng.normal(sky, noise, n)
    stars = rng.random(n) < 0.03
    v[stars] += rng.pareto(1.5, int(stars.sum())) * 50 * noise
    return v.astype(F32)


def _cases(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {"sky": _sky(n, rng),
           "uniform": rng.random(n).astype(F32),
           "negative": -_sky(n, rng, 5.0, 3.0),
           "constant": np.full(n, 3.25, F32),
           "sorted": np.sort(_sky(n, rng)),
           "reversed": np.sort(_sky(n, rng))[::-1].copy(),
           "integers": rng.integers(-3, 4, n).astype(F32)}
    a = _sky(n, rng)
    a[rng.random(n) < 0.2] = np.nan
    a[: n // 7] = np.nan  # a blank band
    a[rng.random(n) < 0.01] = np.inf
    a[rng.random(n) < 0.01] = -np.inf
    out["non_finite"] = a
    z = np.zeros(n, F32)
    z[rng.random(n) < 0.5] = -0.0
    z[rng.random(n) < 0.1] = _sky(1, rng)[0]
    out["signed_zeros"] = z
    mostly_flat = np.zeros(n, F32)  # a zero-filled border with a little sky: the top's
    mostly_flat[: n // 10] = _sky(n // 10, rng)  # interval cannot hold it
    out["mostly_flat"] = mostly_flat
    tiny = rng.normal(0, 1, n).astype(F32) * F32(1e-41)  # subnormal values
    out["subnormal"] = tiny
    extremes = _sky(n, rng)
    extremes[rng.random(n) < 0.3] = np.finfo(F32).max
    extremes[rng.random(n) < 0.3] = -np.finfo(F32).max
    out["extremes"] = extremes
    out["all_nan"] = np.full(n, np.nan, F32)
    return out


@needs_ext
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 17, 1000, 16383, 16384, 16385, 100_003])
def test_stiff_chunk_matches_twin(simd, n) -> None:
    rng = np.random.default_rng(n)
    for name, a in _cases(n, rng).items():
        ref = reference.stiff_chunk(a)
        for order in ("=", ">"):
            v = a.astype(a.dtype.newbyteorder(order))
            for guess in (True, False):
                got = kernels.stiff_chunk(v, guess=guess)
                _same(got, ref)


@needs_ext
def test_stiff_chunk_whole_chunk(simd) -> None:
    rng = np.random.default_rng(5)
    for a in (_sky(1 << 21, rng), _sky(1 << 21, rng, 100.0, 5.0)):
        a[rng.random(a.size) < 0.01] = np.nan
        before = a.copy()
        _same(kernels.stiff_chunk(a), reference.stiff_chunk(a))
        _same(kernels.stiff_chunk(a.byteswap().view(">f4")), reference.stiff_chunk(a))
        np.testing.assert_array_equal(a, before)


@needs_ext
def test_sample_path_and_full_path_are_both_taken(simd) -> None:
    from iipy import _kernels

    n = 1 << 17
    rng = np.random.default_rng(9)
    scratch = np.empty(65536 + n + n // 8 + 16, np.uint32)
    sky = _sky(n, rng)
    *got, sampled = _kernels.stiff_chunk(sky.view(np.uint8), False, STIFF_MAX_LEVEL, True,
                                         scratch)
    assert sampled
    _same(tuple(got), reference.stiff_chunk(sky))
    # the values the sample sees (every n/1024-th, from the middle of each stretch) are far
    # below the others: its intervals miss every rank, and the full selection gives the answer
    trap = _sky(n, rng)
    stride = n // 1024
    trap[stride // 2 :: stride] = -1e6
    *got, sampled = _kernels.stiff_chunk(trap.view(np.uint8), False, STIFF_MAX_LEVEL, True,
                                         scratch)
    assert not sampled
    _same(tuple(got), reference.stiff_chunk(trap))


def test_stiff_chunk_hand_values() -> None:
    for fn in (kernels.stiff_chunk, reference.stiff_chunk):
        # 1..4: median 2.5; top index 2 + 0 + int(0.999 * 1.4999) = 3
        assert fn(np.array([4, 1, 3, 2], F32)) == (4, 2.5, 4.0)
        # odd count: 1..5, median 3, top index 2 + 1 + int(0.999 * 1.4999) = 4
        assert fn(np.array([5, 3, 1, 4, 2, np.nan], F32)) == (5, 3.0, 5.0)
        assert fn(np.array([7.5], F32)) == (1, 7.5, 7.5)
        # 0..99999: top = sorted[50000 + int(0.999 * 49999.4999)] = 99949
        v = np.random.default_rng(0).permutation(100_000).astype(F32)
        assert fn(v) == (100_000, 49999.5, 99949.0)
        assert fn(v, level=0.0) == (100_000, 49999.5, 50000.0)
        assert fn(v.reshape(250, 400)[:, ::-1]) == (100_000, 49999.5, 99949.0)
        n, sky, top = fn(np.array([np.nan, np.inf, -np.inf], F32))
        assert n == 0 and math.isnan(sky) and math.isnan(top)
        n, sky, top = fn(np.empty(0, F32))
        assert n == 0 and math.isnan(sky) and math.isnan(top)


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros(4, np.int32), np.array(["a"])])
def test_stiff_chunk_rejects_other_types(bad) -> None:
    for fn in (kernels.stiff_chunk, reference.stiff_chunk):
        with pytest.raises(ValueError):
            fn(bad)


@pytest.mark.parametrize("level", [-0.1, 1.5, float("nan")])
def test_stiff_chunk_rejects_bad_level(level) -> None:
    for fn in (kernels.stiff_chunk, reference.stiff_chunk):
        with pytest.raises(ValueError):
            fn(np.zeros(4, F32), level)
