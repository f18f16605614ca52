"""Pixel kernels: FITS samples to float32, 2x2 binning, and the IIP float pipeline to 8 bits.

This module is the only caller of the compiled ``iipy._kernels``. It validates shapes and dtypes,
handles byte order and strides, preallocates outputs, and then hands plain native buffers to the
compiled loops. Each kernel has a NumPy twin under :data:`reference` (``reference.render`` ...):
the twins are the specification the compiled code is tested against, and they are what runs when
the extension has not been built (``ACCELERATED`` is then False).

The render pipeline is the ASTRO order of the IIP protocol, computed in float32:

1. CNT=st only: each channel's range narrowed to the first and last non-empty levels of the
   histogram (see :func:`histogram`);
2. normalise with the per-channel range (non-finite samples give 0);
3. CTW, then band flattening (1 or 2 channels, or any colormap -> channel 0; 3 or more ->
   channels 0-2);
4. GAM, the stretch: f(max(v, 0)) with f one of POWER v**GAM, LOG log(1 + 255 v)/log(256)
   (iipsrv 1.2's ``GAM=log``), ASINH asinh(v/BETA)/asinh(1/BETA), SQRT sqrt(v); values above 1
   are not clipped before it, and every f maps 0 to 0 and 1 to 1;
5. INV (1 - v);
6. CMP (colormap of channel 0);
7. quantise with CNT: truncate(clamp(v * 255 * CNT, 0, 255));
8. CNT=eq only: each output byte q mapped through the cumulative histogram, round(255 C(q)/N).

SHD (before CTW) and COL (between 7 and 8 in iipsrv) belong to the callers.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import threading
from array import array
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from iipy.cache import LRU

log = logging.getLogger(__name__)

__all__ = [
    "ACCELERATED",
    "CMAP_BLUE",
    "CMAP_COLD",
    "CMAP_GREEN",
    "CMAP_HOT",
    "CMAP_JET",
    "CMAP_NONE",
    "CMAP_RED",
    "STRETCH_ASINH",
    "STRETCH_LOG",
    "STRETCH_POWER",
    "STRETCH_SQRT",
    "apply_stretch",
    "asinh_beta",
    "bin2x2",
    "bin_raw",
    "cmap_code",
    "equalization_table",
    "equalize",
    "histogram",
    "narrowed_range",
    "reference",
    "render",
    "render_raw",
    "stiff_chunk",
    "to_float32",
]

CMAP_NONE, CMAP_HOT, CMAP_COLD, CMAP_JET, CMAP_RED, CMAP_GREEN, CMAP_BLUE = range(7)

#: Stretch codes (GAM): POWER uses GAM's number as the exponent, ASINH as its softening BETA.
STRETCH_POWER, STRETCH_LOG, STRETCH_ASINH, STRETCH_SQRT = range(4)

#: Default softening of the asinh stretch, and the range BETA is clamped to.
ASINH_BETA = 0.1
ASINH_BETA_MIN = 1e-6
ASINH_BETA_MAX = 1e6

#: Levels of the histogram used by CNT=st and CNT=eq.
HISTOGRAM_LEVELS = 256

#: STIFF's default MAX_LEVEL (a quantile of the upper half of a chunk), as a float32 value.
STIFF_MAX_LEVEL = float(np.float32(0.999))

_CMAP_NAMES = {
    "hot": CMAP_HOT,
    "cold": CMAP_COLD,
    "jet": CMAP_JET,
    "red": CMAP_RED,
    "green": CMAP_GREEN,
    "blue": CMAP_BLUE,
}

_ck: Any
try:
    _ck = importlib.import_module("iipy._kernels")
except ImportError:  # pragma: no cover - only before the extension is built
    _ck = None
    log.warning("iipy._kernels is not built; using the NumPy reference kernels")

#: True when the compiled kernels are in use.
ACCELERATED: bool = _ck is not None

# Integer and floating sample types accepted by to_float32 (any byte order): the FITS BITPIX
# types and the other integer widths astropy hands out for data it has already shifted by BZERO
# (uint16 for tile-compressed BITPIX=16 with BZERO=32768, int8 for BITPIX=8 with BZERO=-128...).
_INT_KINDS = {(k, n) for k in "ui" for n in (1, 2, 4, 8)}
_FLOAT_KINDS = {("f", 4), ("f", 8)}

_F32 = np.float32
_NAN32 = np.float32("nan")


def asinh_beta(beta: float) -> float:
    """BETA as the asinh stretch uses it: clamped to [ASINH_BETA_MIN, ASINH_BETA_MAX], NaN gives
    the default ASINH_BETA."""
    b = float(beta)
    if math.isnan(b):
        return ASINH_BETA
    return min(max(b, ASINH_BETA_MIN), ASINH_BETA_MAX)


def _f32(x: float) -> float:
    """x rounded to float32 (beyond its range: +-inf, without a warning)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def cmap_code(name: str) -> int:
    """Colormap code for a CMP name (case-insensitive); unknown names give CMAP_NONE."""
    if not isinstance(name, str):
        return CMAP_NONE
    return _CMAP_NAMES.get(name.strip().lower(), CMAP_NONE)


# --------------------------------------------------------------------------------------------
# Validation helpers shared by the compiled path and the twins
# --------------------------------------------------------------------------------------------


def _check_raw(raw: Any) -> np.ndarray:
    a = np.asarray(raw)
    if a.ndim != 2:
        raise ValueError(f"raw window must be 2-D, got shape {a.shape}")
    key = (a.dtype.kind, a.dtype.itemsize)
    if key not in _INT_KINDS and key not in _FLOAT_KINDS:
        raise ValueError(f"unsupported FITS sample dtype {a.dtype.str}")
    return a


def _check_out(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise ValueError("out must be a numpy array")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    if out.dtype != np.float32 or not out.dtype.isnative:
        raise ValueError(f"out must be native float32, got {out.dtype.str}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out


def _blank_for(a: np.ndarray, blank: int | None) -> int | None:
    """BLANK applies to integer samples only, and only when representable in the dtype."""
    if blank is None or a.dtype.kind == "f":
        return None
    if isinstance(blank, (bool, np.bool_)) or not isinstance(blank, (int, np.integer)):
        if isinstance(blank, (float, np.floating)) and float(blank).is_integer():
            blank = int(blank)
        else:
            raise ValueError(f"BLANK must be an integer, got {blank!r}")
    info = np.iinfo(a.dtype)
    b = int(blank)
    if b < info.min or b > info.max:
        return None
    return b


def _is_unscaled(bscale: float, bzero: float) -> bool:
    return bscale == 1.0 and bzero == 0.0


def _check_src2(src: Any, name: str = "src") -> np.ndarray:
    a = np.asarray(src)
    if a.dtype.kind != "f" or a.dtype.itemsize != 4:
        raise ValueError(f"{name} must be float32, got {a.dtype.str}")
    if not a.dtype.isnative:
        a = a.astype(np.float32)
    return a


def _check_src3(src: Any) -> np.ndarray:
    """float32 (C, h, w) C-contiguous native (a 2-D src is one channel)."""
    a = src if type(src) is np.ndarray else np.asarray(src)
    if a.dtype.kind != "f" or a.dtype.itemsize != 4:
        raise ValueError(f"src must be float32, got {a.dtype.str}")
    if a.ndim == 2:
        a = a[np.newaxis]
    if a.ndim != 3:
        raise ValueError(f"src must be (C, h, w) or (h, w), got shape {a.shape}")
    if a.shape[0] < 1:
        raise ValueError("src has no channel")
    if not a.flags.c_contiguous or not a.dtype.isnative:
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


def _stretch_params(stretch: Any, gamma: float) -> tuple[int, float, float, float]:
    """(code, float32 exponent, p0, p1) of a stretch; see iipy_stretch1 in ext/_kernels.pyx.

    LOG: p1 = 1/log(256). ASINH: BETA = asinh_beta(gamma), p0 = 1/BETA, p1 = 1/asinh(1/BETA), so
    that f(1) = 1. POWER: the exponent is gamma rounded to float32. SQRT: no parameter."""
    if isinstance(stretch, bool) or not isinstance(stretch, (int, np.integer)):
        raise ValueError(f"unknown stretch code {stretch!r}")
    code = int(stretch)
    if not STRETCH_POWER <= code <= STRETCH_SQRT:
        raise ValueError(f"unknown stretch code {stretch!r}")
    if code == STRETCH_POWER:
        return code, _f32(gamma), 0.0, 0.0
    if code == STRETCH_LOG:
        return code, 0.0, 0.0, 1.0 / math.log(256.0)
    if code == STRETCH_ASINH:
        inv_beta = 1.0 / asinh_beta(gamma)
        return code, 0.0, inv_beta, 1.0 / math.asinh(inv_beta)
    return code, 0.0, 0.0, 0.0


class _RenderPlan:
    """Validated render parameters, shared by the compiled kernel and its twin.

    Every float parameter is accepted (huge, negative, infinite, NaN): validation never raises
    for a number, only for a wrong type or shape."""

    __slots__ = ("src", "nchan", "mins", "factors", "ctw", "gamma", "invert", "cmap", "contrast",
                 "nout", "ncomp", "stretch", "g32", "p0", "p1", "use_gamma", "c32", "_d")

    def __init__(self, src: Any, mins: Any, maxs: Any, ctw: Any, gamma: float, invert: bool,
                 cmap: int, contrast: float, stretch: int = STRETCH_POWER) -> None:
        a = _check_src3(src)
        c = a.shape[0]
        self.src = a
        self.nchan = c
        self.mins, self.factors, self._d = _range_factors(mins, maxs, c)
        self.ctw = _ctw_matrix(ctw)
        try:
            self.gamma = float(gamma)
            self.contrast = float(contrast)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad gamma or contrast: {exc}") from None
        self.stretch, self.g32, self.p0, self.p1 = _stretch_params(stretch, self.gamma)
        # POWER with exponent 1 is the identity (and skips the max(v, 0) of the other values).
        self.use_gamma = self.stretch != STRETCH_POWER or self.gamma != 1.0
        self.c32 = _f32(self.contrast)
        self.invert = bool(invert)
        try:
            cm = int(cmap)
        except (TypeError, ValueError):
            raise ValueError(f"unknown colormap code {cmap!r}") from None
        if not CMAP_NONE <= cm <= CMAP_BLUE:
            raise ValueError(f"unknown colormap code {cmap!r}")
        self.cmap = cm
        # Channels computed after CTW + flattening, and channels written to the output.
        self.ncomp = 1 if (c <= 2 or cm != CMAP_NONE) else 3
        self.nout = 3 if (cm != CMAP_NONE or c >= 3) else 1

    def narrow(self, hist: np.ndarray) -> None:
        """CNT=st: map the first and last non-empty levels n0, n1 of ``hist`` to 0 and 1, i.e.
        v' = (255 v - n0) / (n1 - n0) for the normalised v of each channel, done by changing
        each channel's min to min + d n0/255 and its factor to f 255/(n1 - n0) (d = max - min,
        f = 1/d; float64 then float32). n1 == n0 gives factor 1e30, an empty histogram nothing."""
        nz = np.flatnonzero(hist)
        if nz.size == 0:
            return
        n0, n1 = int(nz[0]), int(nz[-1])
        self.mins = array("f", [m + d * (n0 / 255.0) for m, d in zip(self.mins, self._d,
                                                                      strict=True)])
        if n1 > n0:
            self.factors = array("f", [f * (255.0 / (n1 - n0)) for f in self.factors])
        else:
            self.factors = array("f", [1e30] * self.nchan)


def _per_channel(values: Any, c: int, what: str) -> list[float]:
    if isinstance(values, (int, float, np.integer, np.floating)):
        return [float(values)] * c
    try:
        if isinstance(values, (list, tuple)):
            vals = [float(v) for v in values]
        else:
            vals = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad {what} values: {exc}") from None
    if len(vals) == 1 and c > 1:
        vals = vals * c
    if len(vals) < c:
        raise ValueError(f"need {c} {what} values, got {len(vals)}")
    return vals[:c]


def _range_factors(mins: Any, maxs: Any,
                   c: int) -> tuple[array[float], array[float], array[float]]:
    """float32 mins, factors and ranges: d = max - min, f = 1/d if |d| > 1e-30 else 1e30
    (NaN d -> 1e30).

    Computed with Python floats rounded to float32 after each operation (array 'f'): rounding a
    float64 result of +, -, * or / of float32 operands to float32 gives the float32 result.
    """
    mn = array("f", _per_channel(mins, c, "min"))
    mx = array("f", _per_channel(maxs, c, "max"))
    d = array("f", [b - a for a, b in zip(mn, mx, strict=True)])
    fac = array("f", [1.0 / x if abs(x) > 1e-30 else 1e30 for x in d])
    return mn, fac, d


def _ctw_matrix(ctw: Any) -> np.ndarray | None:
    """CTW as a float32 (K, L) array; ragged rows are padded with 0 (a 0 contributes nothing)."""
    if ctw is None:
        return None
    m: np.ndarray
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(ctw, np.ndarray):
            if ctw.dtype.kind not in "fiu":
                raise ValueError(f"CTW must be numeric, got {ctw.dtype.str}")
            m = np.ascontiguousarray(ctw, dtype=np.float32)
        else:
            try:
                m = np.array(ctw, dtype=np.float32)
            except (TypeError, ValueError):
                # Rows of different lengths (or not numbers: reported by _ragged_ctw).
                m = _ragged_ctw(ctw)
    if m.ndim != 2:
        raise ValueError(f"CTW must be 2-D (rows of coefficients), got shape {m.shape}")
    return m


def _ragged_ctw(ctw: Any) -> np.ndarray:
    """Rows of different lengths, padded with 0 (a 0 coefficient contributes nothing)."""
    try:
        rows = [np.asarray(r, dtype=np.float64) for r in ctw]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad CTW matrix: {exc}") from None
    if any(r.ndim > 1 for r in rows):
        raise ValueError("CTW rows must be 1-D")
    width = max((r.size for r in rows), default=0)
    m = np.zeros((len(rows), width), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for k, r in enumerate(rows):
            m[k, : r.size] = r.reshape(-1)
    return m


# --------------------------------------------------------------------------------------------
# NumPy twins (the specification)
# --------------------------------------------------------------------------------------------


def _ref_to_float32(raw: np.ndarray, bscale: float = 1.0, bzero: float = 0.0,
                    blank: int | None = None, flip: bool = False,
                    out: np.ndarray | None = None) -> np.ndarray:
    a = _check_raw(raw)
    res = _check_out(out, a.shape)
    bscale = float(bscale)
    bzero = float(bzero)
    b = _blank_for(a, blank)
    if flip:
        a = a[::-1]
    with np.errstate(over="ignore", invalid="ignore"):
        if a.dtype.kind == "f" and _is_unscaled(bscale, bzero):
            res[...] = a
        else:
            res[...] = a.astype(np.float64) * bscale + bzero
    if b is not None:
        res[a == b] = _NAN32
    return res


def _ref_bin2x2(src: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    a = _check_src2(src)
    if a.ndim not in (2, 3):
        raise ValueError(f"src must be (h, w) or (C, h, w), got shape {a.shape}")
    oh, ow = a.shape[-2] // 2, a.shape[-1] // 2
    res = _check_out(out, a.shape[:-2] + (oh, ow))
    p = [a[..., dy : 2 * oh : 2, dx : 2 * ow : 2] for dy in (0, 1) for dx in (0, 1)]
    ok = [np.isfinite(q) for q in p]
    zero = _F32(0)
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.where(ok[0], p[0], zero) + np.where(ok[1], p[1], zero)
        s = s + np.where(ok[2], p[2], zero)
        s = s + np.where(ok[3], p[3], zero)
        n = ok[0].astype(np.float32) + ok[1] + ok[2] + ok[3]
        res[...] = s / n
    return res


def _ref_bin_raw(raw: np.ndarray, bscale: float = 1.0, bzero: float = 0.0,
                 blank: int | None = None, flip: bool = False,
                 out: np.ndarray | None = None) -> np.ndarray:
    a = _check_raw(raw)
    res = _check_out(out, (a.shape[0] // 2, a.shape[1] // 2))
    return _ref_bin2x2(_ref_to_float32(a, bscale, bzero, blank, flip), out=res)


def _ref_colormap(v: np.ndarray, cmap: int) -> np.ndarray:
    """Channel values (3, h, w) of colormap ``cmap`` applied to v (float32 (h, w))."""
    z = np.zeros_like(v)
    one = np.ones_like(v)
    t1, t2 = _F32(1.0 / 3.0), _F32(2.0 / 3.0)
    if cmap == CMAP_RED:
        return np.stack([v, z, z])
    if cmap == CMAP_GREEN:
        return np.stack([z, v, z])
    if cmap == CMAP_BLUE:
        return np.stack([z, z, v])
    v3 = _F32(3) * v
    if cmap in (CMAP_HOT, CMAP_COLD):
        conds = [v > 1, v <= 0, v < t1, v < t2, v < 1]
        if cmap == CMAP_HOT:
            r = np.select(conds, [one, z, v3, one, one], one)
            g = np.select(conds, [one, z, z, v3 - _F32(1), one], one)
            b = np.select(conds, [one, z, z, z, v3 - _F32(2)], one)
        else:
            r = np.select(conds, [one, z, z, z, v3 - _F32(2)], one)
            g = np.select(conds, [one, z, z, v3 - _F32(1), one], one)
            b = np.select(conds, [one, z, v3, one, one], one)
        return np.stack([r, g, b])
    if cmap == CMAP_JET:
        v4 = _F32(4) * v
        half = np.full_like(v, 0.5)
        conds = [v < 0, v < _F32(0.125), v < _F32(0.375), v < _F32(0.625), v < _F32(0.875), v < 1]
        r = np.select(conds, [z, z, z, v4 - _F32(1.5), one, _F32(4.5) - v4], half)
        g = np.select(conds, [z, z, v4 - _F32(0.5), one, _F32(3.5) - v4, z], z)
        b = np.select(conds, [z, v4 + _F32(0.5), one, _F32(2.5) - v4, z, z], z)
        return np.stack([r, g, b])
    raise ValueError(f"unknown colormap code {cmap!r}")


def _ref_quantise(v: np.ndarray, contrast: float) -> np.ndarray:
    t = v * _F32(255) * _F32(contrast)
    t = np.where(t < 0, _F32(0), np.where(t < 255, t, _F32(255)))
    return t.astype(np.uint8)


def _ref_render_plan(p: _RenderPlan) -> np.ndarray:
    c = p.nchan
    x = p.src
    with np.errstate(all="ignore"):
        mins = np.asarray(p.mins, dtype=np.float32)[:, None, None]
        factors = np.asarray(p.factors, dtype=np.float32)[:, None, None]
        v = (x - mins) * factors
        v[~np.isfinite(x)] = 0
        if p.ctw is not None:
            m = p.ctw
            k_rows, l_cols = m.shape
            mixed = np.zeros_like(v)
            for k in range(min(k_rows, c)):
                acc = np.zeros(v.shape[1:], dtype=np.float32)
                for j in range(min(l_cols, c)):
                    if m[k, j] != 0:
                        acc = acc + m[k, j] * v[j]
                mixed[k] = acc
            v = mixed
        v = v[: p.ncomp]
        if p.use_gamma:
            v = _ref_stretch(v, p)
        if p.invert:
            v = _F32(1) - v
        if p.cmap != CMAP_NONE:
            v = _ref_colormap(v[0], p.cmap)
        q = _ref_quantise(v, p.c32)
    if q.shape[0] == 1:
        return np.ascontiguousarray(q[0])
    return np.ascontiguousarray(np.moveaxis(q, 0, -1))


def _ref_stretch(v: np.ndarray, p: Any) -> np.ndarray:
    """GAM: f(max(v, 0)); LOG and ASINH evaluated in float64 and rounded once to float32.
    ``p``: a _RenderPlan, or anything with its stretch, g32, p0 and p1."""
    v = np.maximum(v, _F32(0))
    if p.stretch == STRETCH_POWER:
        return v ** _F32(p.g32)
    if p.stretch == STRETCH_SQRT:
        return np.sqrt(v)
    x = v.astype(np.float64)
    if p.stretch == STRETCH_LOG:
        return (np.log1p(255.0 * x) * p.p1).astype(np.float32)
    return (np.arcsinh(x * p.p0) * p.p1).astype(np.float32)


def _ref_histogram(src: Any, mins: Any, maxs: Any) -> np.ndarray:
    a = _check_src3(src)
    c = a.shape[0]
    mn, fac, _ = _range_factors(mins, maxs, c)
    return _ref_levels_histogram(a, mn, fac)


def _ref_levels_histogram(a: np.ndarray, mn: array[float], fac: array[float]) -> np.ndarray:
    c = a.shape[0]
    with np.errstate(all="ignore"):
        v = (a - np.asarray(mn, np.float32)[:, None, None]) * \
            np.asarray(fac, np.float32)[:, None, None]
        v[~np.isfinite(a)] = 0
        levels = _ref_quantise(v, 1.0).astype(np.int64).sum(axis=0)
    # round half up of the channel mean, in integers
    levels = (2 * levels + c) // (2 * c)
    return np.bincount(levels.reshape(-1), minlength=HISTOGRAM_LEVELS).astype(np.int64)


def _ref_equalize(pixels: np.ndarray, histogram: Any) -> np.ndarray:
    h = _check_histogram(histogram)
    q = _check_pixels(pixels)
    n = int(h.sum())
    if n == 0:
        return q.copy()
    cum = np.cumsum(h)
    return ((2 * 255 * cum[q.astype(np.intp)] + n) // (2 * n)).astype(np.uint8)


def _ref_render_all(p: _RenderPlan, autostretch: bool, equalize: bool,
                    histogram: Any) -> np.ndarray:
    hist = None
    if autostretch or equalize:
        hist = (_check_histogram(histogram) if histogram is not None
                else _ref_levels_histogram(p.src, p.mins, p.factors))
        if autostretch:
            p.narrow(hist)
    out = _ref_render_plan(p)
    if equalize:
        out = _ref_equalize(out, hist)
    return out


def _ref_render(src: np.ndarray, mins: Sequence[float] | np.ndarray | float,
                maxs: Sequence[float] | np.ndarray | float, ctw: Any = None, gamma: float = 1.0,
                invert: bool = False, cmap: int = CMAP_NONE, contrast: float = 1.0,
                stretch: int = STRETCH_POWER, autostretch: bool = False, equalize: bool = False,
                histogram: np.ndarray | None = None) -> np.ndarray:
    p = _RenderPlan(src, mins, maxs, ctw, gamma, invert, cmap, contrast, stretch)
    return _ref_render_all(p, autostretch, equalize, histogram)


def _check_chunk(values: Any) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind != "f" or a.dtype.itemsize != 4:
        raise ValueError(f"values must be float32, got {a.dtype.str}")
    return a.reshape(-1)


def _check_level(level: float) -> float:
    lv = float(level)
    if not 0.0 <= lv <= 1.0:
        raise ValueError(f"level must be in [0, 1], got {level!r}")
    return lv


def _ref_stiff_chunk(values: np.ndarray, level: float = STIFF_MAX_LEVEL,
                     guess: bool = True) -> tuple[int, float, float]:
    a = _check_chunk(values)
    lv = _check_level(level)
    c = a[np.isfinite(a)].astype(np.float32)
    n = c.size
    if n == 0:
        return 0, math.nan, math.nan
    half = n // 2
    top_k = min(n - 1, half + (n % 2) + int(lv * (half - 0.5001)))
    c.partition(half)
    mid = float(c[half])
    sky = mid if n % 2 else (float(c[:half].max()) + mid) / 2.0
    upper = c[half:]
    upper.partition(top_k - half)
    return n, sky, float(upper[top_k - half])


def _ref_render_raw(raw: np.ndarray, bscale: float = 1.0, bzero: float = 0.0,
                    blank: int | None = None, flip: bool = False, *args: Any,
                    **kwargs: Any) -> np.ndarray:
    a = np.asarray(raw)
    if a.ndim == 2:
        a = a[np.newaxis]
    if a.ndim != 3 or a.shape[0] < 1:
        raise ValueError(f"raw must be (C, h, w) or (h, w), got shape {a.shape}")
    src = np.stack([_ref_to_float32(a[k], bscale, bzero, blank, flip) for k in range(a.shape[0])])
    return _ref_render(src, *args, **kwargs)


#: NumPy twins of the kernels, with the same signatures: ``reference.render(...)`` etc.
reference = SimpleNamespace(
    to_float32=_ref_to_float32,
    bin2x2=_ref_bin2x2,
    bin_raw=_ref_bin_raw,
    render=_ref_render,
    render_raw=_ref_render_raw,
    colormap=_ref_colormap,
    quantise=_ref_quantise,
    stretch=_ref_stretch,
    histogram=_ref_histogram,
    equalize=_ref_equalize,
    stiff_chunk=_ref_stiff_chunk,
)


def _check_histogram(histogram: Any) -> np.ndarray:
    h = np.asarray(histogram)
    if h.shape != (HISTOGRAM_LEVELS,) or h.dtype.kind not in "ui":
        raise ValueError(f"histogram must hold {HISTOGRAM_LEVELS} integer counts")
    h = h.astype(np.int64)
    if (h < 0).any():
        raise ValueError("histogram counts must not be negative")
    return h


def _check_pixels(pixels: Any) -> np.ndarray:
    q = np.asarray(pixels)
    if q.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {q.dtype.str}")
    return q


# --------------------------------------------------------------------------------------------
# Stretch lookup tables
# --------------------------------------------------------------------------------------------
#
# powf (or log1p, asinh) per pixel would dominate the render time, so for v in
# [2**LUT_EMIN, 2**e_hi) the compiled kernel interpolates f(v) linearly in a table indexed by the
# top bits of the float32 representation of v (exponent + LUT_MBITS mantissa bits): each octave
# holds 2**LUT_MBITS equal steps, so the interval [a, a(1+d)] holding v, d = 2**-LUT_MBITS, is
# short where f bends most (near v = 0). Elsewhere (v <= 0 -> 0; tiny v, v >= 2**e_hi, +inf,
# NaN -> the exact formula) nothing is approximated. SQRT has no table: sqrtf is exact and fast.
#
# Error bound: linear interpolation of f on [a, a(1+d)] is off by at most max|f''| (a d)**2 / 8.
# - POWER f(v) = v**g: max|f''| (a d)**2 / 8 <= g |g-1| d**2 (1+d)**|g-2| f(a) / 8, a relative
#   error r(g) = g |g-1| d**2 (1+d)**|g-2| / 8; lut_relative_error adds 8 float32 epsilons for
#   the roundings of the table entries and of the interpolation. Below 2**e_hi, v**g < 2**(e_hi g),
#   so the absolute error is below r 2**(e_hi g).
# - LOG f(v) = log(1 + k v)/L, k = 255, L = log(256): |f''(v)| = k**2 / ((1 + k v)**2 L) is
#   largest at a, so the error is below (k a)**2 d**2 / (8 (1 + k a)**2 L) < d**2 / (8 L).
# - ASINH f(v) = asinh(v/b)/A, A = asinh(1/b): with u = v/b, |f''(v)| = u / ((1 + u**2)**1.5
#   b**2 A), so (a d)**2 |f''| <= d**2 u**3 / ((1 + u**2)**1.5 A) = d**2 G(u) / A with
#   G(u) = (u**2 / (1 + u**2))**1.5 increasing (and < 1): the error is below
#   d**2 G(2**e_hi / b) / (8 A).
# For LOG and ASINH, 8 float32 epsilons of f(2**e_hi) are added for the roundings. INV keeps
# absolute errors, a colormap multiplies them by at most S = 4 (JET) or 3 (HOT, COLD), and
# quantisation by 255 |CNT|: the error before truncation is at most E = err S 255 |CNT| DN. The
# table is used only when E <= 0.5 (the largest e_hi <= LUT_EMAX that allows it), which keeps
# every output within 1 DN of the exact formula (truncating two numbers less than 1 apart gives
# results at most 1 apart; clamping only brings them closer). tests/unit/test_kernels.py and
# tests/unit/test_stretches.py check the bounds and the 1 DN promise on dense sweeps of v.

LUT_MBITS = 8
LUT_EMIN = -24
LUT_EMAX = 3
_LUT_SIZE = (LUT_EMAX - LUT_EMIN) * (1 << LUT_MBITS) + 1
_LUT_MAX_ERR_DN = 0.5
_EPS32 = float(np.finfo(np.float32).eps)

if _ck is not None and (_ck.LUT_MBITS != LUT_MBITS or _ck.LUT_EMIN != LUT_EMIN):
    raise ImportError("iipy._kernels was built with another gamma table layout; rebuild it")

_lut_lock = threading.Lock()
_lut_cache: LRU[tuple[int, float], np.ndarray] = LRU(16)


def _stretch_lut(stretch: int, g32: float, p0: float, p1: float) -> np.ndarray:
    """float32 table of f(v) at v = 2**e (1 + m / 2**LUT_MBITS), e in [LUT_EMIN, LUT_EMAX)."""
    key = (stretch, g32 if stretch == STRETCH_POWER else p0)
    with _lut_lock:
        lut = _lut_cache.get(key)
        if lut is not None:
            return lut
    i = np.arange(_LUT_SIZE, dtype=np.float64)
    e = np.floor(i / (1 << LUT_MBITS)) + LUT_EMIN
    m = (i % (1 << LUT_MBITS)) / (1 << LUT_MBITS)
    v = np.ldexp(1.0 + m, e.astype(np.int64))
    with np.errstate(over="ignore"):
        if stretch == STRETCH_POWER:
            lut = np.power(v, g32).astype(np.float32)
        elif stretch == STRETCH_LOG:
            lut = (np.log1p(255.0 * v) * p1).astype(np.float32)
        elif stretch == STRETCH_ASINH:
            lut = (np.arcsinh(v * p0) * p1).astype(np.float32)
        else:
            raise ValueError(f"stretch {stretch} has no table")
    lut.setflags(write=False)
    with _lut_lock:
        _lut_cache.put(key, lut)
    return lut


def _gamma_lut(gamma: float) -> np.ndarray:
    """float32 table of v**gamma (see _stretch_lut)."""
    return _stretch_lut(STRETCH_POWER, float(gamma), 0.0, 0.0)


def lut_relative_error(gamma: float) -> float:
    """Bound on the relative error of the gamma table (interpolation plus float32 rounding);
    inf when it does not fit a float (huge or non-finite gamma)."""
    d = 2.0 ** -LUT_MBITS
    g = float(gamma)
    if not math.isfinite(g):
        return math.inf
    try:
        r = abs(g) * abs(g - 1.0) * d * d * (1.0 + d) ** abs(g - 2.0) / 8.0 + 8.0 * _EPS32
    except OverflowError:
        return math.inf
    return float(r) if math.isfinite(r) else math.inf


def _table_error(stretch: int, g32: float, p0: float, p1: float, e_hi: int) -> float:
    """Bound on the absolute error of the table of a stretch over [2**LUT_EMIN, 2**e_hi)."""
    d = 2.0 ** -LUT_MBITS
    hi = 2.0**e_hi
    if stretch == STRETCH_POWER:
        r = lut_relative_error(g32)
        if not math.isfinite(r) or e_hi * g32 > 1000.0:
            return math.inf
        return r * 2.0 ** (e_hi * g32)
    if stretch == STRETCH_LOG:
        return d * d * p1 / 8.0 + 8.0 * _EPS32 * math.log1p(255.0 * hi) * p1
    if stretch == STRETCH_ASINH:
        u = hi * p0
        g = (1.0 / (1.0 + 1.0 / (u * u))) ** 1.5
        return d * d * g * p1 / 8.0 + 8.0 * _EPS32 * math.asinh(u) * p1
    return math.inf


@functools.lru_cache(maxsize=256)
def _table_upper_exponent(stretch: int, g32: float, p0: float, p1: float, contrast: float,
                          cmap: int) -> int | None:
    if stretch == STRETCH_POWER and (not (g32 > 0.0) or not math.isfinite(g32) or g32 == 1.0):
        return None
    if stretch not in (STRETCH_POWER, STRETCH_LOG, STRETCH_ASINH):
        return None
    slope = {CMAP_JET: 4.0, CMAP_HOT: 3.0, CMAP_COLD: 3.0}.get(cmap, 1.0)
    cnt = abs(float(contrast))
    if not math.isfinite(cnt):
        return None
    for e_hi in range(LUT_EMAX, -1, -1):
        if _table_error(stretch, g32, p0, p1, e_hi) * slope * 255.0 * cnt <= _LUT_MAX_ERR_DN:
            return e_hi
    return None


def lut_upper_exponent(gamma: float, contrast: float, cmap: int) -> int | None:
    """Largest e_hi (<= LUT_EMAX) for which the gamma table keeps every output within 1 DN, or
    None (exact powf). Never raises for a float argument."""
    try:
        g, c = float(gamma), float(contrast)
    except (TypeError, ValueError):
        return None
    if math.isnan(g) or math.isnan(c):
        return None
    return _table_upper_exponent(STRETCH_POWER, g, 0.0, 0.0, c, int(cmap))


# --------------------------------------------------------------------------------------------
# Public kernels
# --------------------------------------------------------------------------------------------


def to_float32(raw: np.ndarray, bscale: float = 1.0, bzero: float = 0.0, blank: int | None = None,
               flip: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Convert a 2-D window of FITS samples to physical float32 values.

    raw: (h, w) of u1, i1, u2, i2, u4, i4, u8, i8, f4 or f8 in either byte order, possibly a
    strided read-only view of a memmap. Returns float32 (h, w) C-contiguous (``out`` if given):
    raw*bscale + bzero computed in float64 then rounded (float samples without scaling are
    copied), integer samples equal to ``blank`` become NaN, and with ``flip`` output row i is
    raw row h-1-i.
    """
    if _ck is None:
        return _ref_to_float32(raw, bscale, bzero, blank, flip, out)
    a = _check_raw(raw)
    res = _check_out(out, a.shape)
    bscale = float(bscale)
    bzero = float(bzero)
    b = _blank_for(a, blank)
    if a.size == 0:
        return res
    if not a.flags.aligned:
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")
    swap = not a.dtype.isnative
    if swap:
        # Same bytes seen as the native type; the kernel reverses the bytes of each sample.
        a = a.view(a.dtype.newbyteorder("="))
    if b is None:
        b64 = 0
    else:
        b64 = b - (1 << 64) if b >= (1 << 63) else b  # a uint64 BLANK as the same 64 bits
    _ck.to_float32(a, swap, bscale, bzero, not _is_unscaled(bscale, bzero), b is not None,
                   b64, bool(flip), res)
    return res


def bin2x2(src: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Mean of the finite values of each 2x2 block: float32 (h, w) -> (h//2, w//2).

    A block with no finite value gives NaN; an odd last row or column is dropped. A (C, h, w)
    stack is binned channel by channel.
    """
    if _ck is None:
        return _ref_bin2x2(src, out)
    a = _check_src2(src)
    if a.ndim not in (2, 3):
        raise ValueError(f"src must be (h, w) or (C, h, w), got shape {a.shape}")
    oh, ow = a.shape[-2] // 2, a.shape[-1] // 2
    res = _check_out(out, a.shape[:-2] + (oh, ow))
    if res.size == 0:
        return res
    if a.ndim == 2:
        _ck.bin2x2(a, res)
    else:
        for k in range(a.shape[0]):
            _ck.bin2x2(a[k], res[k])
    return res


def bin_raw(raw: np.ndarray, bscale: float = 1.0, bzero: float = 0.0, blank: int | None = None,
            flip: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """``bin2x2(to_float32(raw, bscale, bzero, blank, flip))`` in one pass over the samples:
    float32 (h//2, w//2), the same values bit for bit, without the float32 window.

    raw: (h, w) FITS samples as for :func:`to_float32` (either byte order, any strides).
    Unscaled float32 samples are binned straight from their bytes; the others are converted
    two rows at a time into a scratch that stays in the processor's cache.
    """
    if _ck is None:
        return _ref_bin_raw(raw, bscale, bzero, blank, flip, out)
    a = _check_raw(raw)
    res = _check_out(out, (a.shape[0] // 2, a.shape[1] // 2))
    bscale = float(bscale)
    bzero = float(bzero)
    b = _blank_for(a, blank)
    if res.size == 0:
        return res
    if not a.flags.aligned:
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")
    swap = not a.dtype.isnative
    if swap:
        a = a.view(a.dtype.newbyteorder("="))
    if b is None:
        b64 = 0
    else:
        b64 = b - (1 << 64) if b >= (1 << 63) else b
    _ck.bin_raw(a, swap, bscale, bzero, not _is_unscaled(bscale, bzero), b is not None, b64,
                bool(flip), res)
    return res


def render(src: np.ndarray, mins: Sequence[float] | np.ndarray | float,
           maxs: Sequence[float] | np.ndarray | float, ctw: Any = None, gamma: float = 1.0,
           invert: bool = False, cmap: int = CMAP_NONE, contrast: float = 1.0,
           stretch: int = STRETCH_POWER, autostretch: bool = False, equalize: bool = False,
           histogram: np.ndarray | None = None) -> np.ndarray:
    """Physical float32 (C, h, w) -> uint8 (h, w) grey or (h, w, 3) colour, C-contiguous.

    ASTRO pipeline in float32 (the module's docstring lists the steps): normalise with mins/maxs
    (non-finite -> 0), CTW (rows k < min(K, C), missing rows 0), band flattening (1 or 2
    channels, or a colormap -> channel 0; 3 or more -> channels 0-2), GAM (the stretch
    ``stretch``; ``gamma`` is its number: the exponent of STRETCH_POWER, BETA of STRETCH_ASINH,
    unused by LOG and SQRT), INV, CMP (colormap of channel 0), then
    truncate(clamp(v * 255 * contrast, 0, 255)).
    A 2-D src is a single channel; a scalar min/max applies to every channel.

    ``autostretch`` (CNT=st) narrows each range to the first and last non-empty levels of the
    histogram; ``equalize`` (CNT=eq) maps the output bytes through it (iipsrv does that after
    COL: callers applying COL use :func:`equalize` after it instead). ``histogram`` is the
    256 counts of :func:`histogram`; None computes them from ``src`` itself with mins/maxs (a
    whole image; for tiles, pass the histogram of the smallest level so that tiles agree).
    Every float parameter is accepted: none raises, whatever its value.
    """
    p = _RenderPlan(src, mins, maxs, ctw, gamma, invert, cmap, contrast, stretch)
    if _ck is None:
        return _ref_render_all(p, autostretch, equalize, histogram)
    hist = None
    if autostretch or equalize:
        hist = (_check_histogram(histogram) if histogram is not None
                else _levels_histogram(p.src, p.mins, p.factors))
        if autostretch:
            p.narrow(hist)
    _, h, w = p.src.shape
    return _run_render(p, h, w, hist if equalize else None, _ck.render, p.src)


def _run_render(p: _RenderPlan, h: int, w: int, equalize_hist: np.ndarray | None,
                kernel: Any, *lead: Any) -> np.ndarray:
    """The compiled render of plan p into a new (h, w[, 3]) uint8 array: ``kernel(*lead,
    <the plan's arguments>, out)``, then CNT=eq through ``equalize_hist`` if given."""
    out = np.empty((h, w, p.nout), dtype=np.uint8)
    if h == 0 or w == 0:
        return out.reshape(h, w) if p.nout == 1 else out
    lut, lut_hi = _EMPTY_LUT, 0.0
    if p.use_gamma and not math.isnan(p.contrast):
        e_hi = _table_upper_exponent(p.stretch, p.g32, p.p0, p.p1, p.contrast, p.cmap)
        if e_hi is not None:
            lut, lut_hi = _stretch_lut(p.stretch, p.g32, p.p0, p.p1), float(2.0**e_hi)
    has_ctw = p.ctw is not None
    kernel(*lead, p.mins, p.factors, p.ctw if has_ctw else _EMPTY_CTW, has_ctw, p.stretch,
           p.g32, p.p0, p.p1, p.use_gamma, lut, _LUT_LO, lut_hi, p.invert, p.cmap, p.c32,
           out.reshape(h, w * p.nout))
    res = out.reshape(h, w) if p.nout == 1 else out
    if equalize_hist is not None:
        res = np.take(equalization_table(equalize_hist), res)
    return res


def render_raw(raw: np.ndarray, bscale: float = 1.0, bzero: float = 0.0,
               blank: int | None = None, flip: bool = False,
               mins: Sequence[float] | np.ndarray | float = 0.0,
               maxs: Sequence[float] | np.ndarray | float = 1.0, ctw: Any = None,
               gamma: float = 1.0, invert: bool = False, cmap: int = CMAP_NONE,
               contrast: float = 1.0, stretch: int = STRETCH_POWER, autostretch: bool = False,
               equalize: bool = False, histogram: np.ndarray | None = None) -> np.ndarray:
    """``render(to_float32 of each channel of raw, ...)`` in one pass over the samples, the
    same bytes, without the float32 window.

    raw: FITS samples (C, h, w) (or (h, w): one channel), any type :func:`to_float32` takes,
    either byte order, any strides (a window of the file's memory map); every channel is
    scaled by the same ``bscale``, ``bzero`` and ``blank``, and ``flip`` reverses the rows as
    to_float32 does. The other arguments are :func:`render`'s. Each row of each channel the
    pipeline reads is converted into a one-row buffer just before use. CNT=st and CNT=eq
    without a ``histogram`` need the whole window: they go through :func:`render`."""
    a = np.asarray(raw)
    if a.ndim == 2:
        a = a[np.newaxis]
    if a.ndim != 3:
        raise ValueError(f"raw must be (C, h, w) or (h, w), got shape {a.shape}")
    key = (a.dtype.kind, a.dtype.itemsize)
    if key not in _INT_KINDS and key not in _FLOAT_KINDS:
        raise ValueError(f"unsupported FITS sample dtype {a.dtype.str}")
    if a.shape[0] < 1:
        raise ValueError("raw has no channel")
    if _ck is None or ((autostretch or equalize) and histogram is None):
        src = np.stack([to_float32(a[k], bscale, bzero, blank, flip) for k in range(a.shape[0])])
        return render(src, mins, maxs, ctw, gamma, invert, cmap, contrast, stretch, autostretch,
                      equalize, histogram)
    # the plan validates everything but the samples, which it does not read here
    p = _RenderPlan(np.empty((a.shape[0], 0, 0), np.float32), mins, maxs, ctw, gamma, invert,
                    cmap, contrast, stretch)
    hist = None
    if autostretch or equalize:
        hist = _check_histogram(histogram)
        if autostretch:
            p.narrow(hist)
    bscale, bzero = float(bscale), float(bzero)
    b = _blank_for(a, blank)
    if not a.flags.aligned:
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")
    swap = not a.dtype.isnative
    if swap:
        a = a.view(a.dtype.newbyteorder("="))
    b64 = 0 if b is None else (b - (1 << 64) if b >= (1 << 63) else b)
    _, h, w = a.shape
    return _run_render(p, h, w, hist if equalize else None, _ck.render_raw, a, swap, bscale,
                       bzero, not _is_unscaled(bscale, bzero), b is not None, b64, bool(flip))


def histogram(src: np.ndarray, mins: Sequence[float] | np.ndarray | float,
              maxs: Sequence[float] | np.ndarray | float) -> np.ndarray:
    """The 256 counts of levels used by CNT=st and CNT=eq (int64), as iipsrv 1.2 computes them.

    A pixel's level is the mean over its channels of its 8-bit value at contrast 1
    (truncate(clamp(255 v, 0, 255)), v normalised with mins/maxs as in render; non-finite samples
    give 0), rounded half up.

    iipsrv 1.2 computes it from the smallest resolution level of the image (tile 0 of level 0)
    and keeps the first one per image, whatever range later requests give. Callers should use
    the smallest level too, so that every tile of a view gets the same mapping (a histogram of
    each tile would show seams), but with each request's range.
    """
    if _ck is None:
        return _ref_histogram(src, mins, maxs)
    a = _check_src3(src)
    mn, fac, _ = _range_factors(mins, maxs, a.shape[0])
    return _levels_histogram(a, mn, fac)


def _levels_histogram(a: np.ndarray, mn: array[float], fac: array[float]) -> np.ndarray:
    out = np.zeros(HISTOGRAM_LEVELS, dtype=np.int64)
    if _ck is None:
        return _ref_levels_histogram(a, mn, fac)
    _ck.histogram(a, mn, fac, out)
    return out


def apply_stretch(values: np.ndarray, stretch: int = STRETCH_POWER,
                  gamma: float = 1.0) -> np.ndarray:
    """GAM's curve on float32 values, computed as the NumPy twin does (no table): f(max(v,
    0)) for the stretch code and its number (see :func:`render`); a power of 1 returns the
    values unchanged. For output the 8-bit kernel does not make (16-bit exports)."""
    p = SimpleNamespace()
    p.stretch, p.g32, p.p0, p.p1 = _stretch_params(stretch, float(gamma))
    v = np.asarray(values, np.float32)
    if p.stretch == STRETCH_POWER and float(gamma) == 1.0:
        return v
    with np.errstate(all="ignore"):
        return _ref_stretch(v, p)


def narrowed_range(mins: Sequence[float] | np.ndarray | float,
                   maxs: Sequence[float] | np.ndarray | float,
                   histogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CNT=st for callers that normalise the data themselves (SHD, exports): each channel's
    (min, max) moved to the values of the first and last non-empty levels n0, n1 of
    ``histogram``, (min + d n0/255, min + d n1/255) with d = max - min, as float64 arrays; an
    empty histogram leaves them as they are. :func:`render` with ``autostretch`` narrows its
    float32 range the same way (the two agree to float32 rounding)."""
    h = _check_histogram(histogram)
    lo = np.array(mins, dtype=np.float64).reshape(-1)
    hi = np.array(maxs, dtype=np.float64).reshape(-1)
    nz = np.flatnonzero(h)
    if nz.size == 0:
        return lo, hi
    n0, n1 = int(nz[0]), int(nz[-1])
    with np.errstate(over="ignore", invalid="ignore"):
        d = hi - lo
        return lo + d * (n0 / 255.0), lo + d * (n1 / 255.0)


def equalization_table(histogram: np.ndarray) -> np.ndarray:
    """CNT=eq: byte q -> round(255 C(q) / N), C the cumulative counts, N the total (uint8, 256
    entries; the identity for an empty histogram).

    iipsrv 1.2 also subtracts C(first non-empty level) / (pixels of the tile), which mixes the
    counts of two images and moves a value by less than 255 / (pixels of the tile) levels; iipy
    leaves it out."""
    h = _check_histogram(histogram)
    n = int(h.sum())
    if n == 0:
        return np.arange(HISTOGRAM_LEVELS, dtype=np.uint8)
    cum = np.cumsum(h)
    return ((2 * 255 * cum + n) // (2 * n)).astype(np.uint8)


def equalize(pixels: np.ndarray, histogram: np.ndarray) -> np.ndarray:
    """CNT=eq on 8-bit output (grey or colour, every channel alike): a new uint8 array."""
    q = _check_pixels(pixels)
    return np.take(equalization_table(histogram), q)


_scratch = threading.local()


def _chunk_scratch(n: int) -> np.ndarray:
    """This thread's scratch words for stiff_chunk of n samples (kept, grown as needed)."""
    need = 65536 + n + n // 8 + 16
    buf = getattr(_scratch, "words", None)
    if buf is None or buf.size < need:
        buf = np.empty(need, np.uint32)
        _scratch.words = buf
    return buf


def stiff_chunk(values: np.ndarray, level: float = STIFF_MAX_LEVEL,
                guess: bool = True) -> tuple[int, float, float]:
    """(n, sky, top) of the finite values of one STIFF chunk, exactly.

    ``values``: float32 samples in either byte order (any shape, read in C order; not
    modified). n is the number of finite values (NaN and infinities are left out); sky their
    median, the mean (in double) of the two central values for an even n; top the value of
    index n//2 + n%2 + int(level (n//2 - 0.5001)) (at most n - 1) of the sorted values, which
    is STIFF's MAX_LEVEL quantile of the upper half. n = 0 gives NaN for both.

    The compiled kernel selects the ranks among the keys that a sorted sample of the chunk
    says are near them, and verifies it (``guess=False``: without the sample); either way
    the result is exact, the twin's (sorting by ``numpy.partition``). A -0.0 and a +0.0 are
    equal values: which one a median is may differ (never the value).
    """
    if _ck is None:
        return _ref_stiff_chunk(values, level, guess)
    a = _check_chunk(values)
    lv = _check_level(level)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    swap = not a.dtype.isnative
    n, sky, top, _ = _ck.stiff_chunk(a.view(np.uint8), swap, lv, bool(guess),
                                     _chunk_scratch(a.size))
    return int(n), float(sky), float(top)


def set_simd(on: bool) -> bool:
    """Use the compiled kernels' AVX2 passes where the processor has them (the default), or
    their plain C passes only (both are tested); returns whether AVX2 is in use."""
    if _ck is None:
        return False
    return bool(_ck.set_simd(bool(on)))


_EMPTY_LUT = np.zeros(2, dtype=np.float32)
_LUT_LO = float(2.0**LUT_EMIN)
_EMPTY_CTW = np.zeros((1, 1), dtype=np.float32)
