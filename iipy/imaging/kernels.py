"""Pixel kernels: FITS samples to float32, 2x2 binning, and the IIP float pipeline to 8 bits.

This module is the only caller of the compiled ``iipy._kernels``. It validates shapes and dtypes,
handles byte order and strides, preallocates outputs, and then hands plain native buffers to the
compiled loops. Each kernel has a NumPy twin under :data:`reference` (``reference.render`` ...):
the twins are the specification the compiled code is tested against, and they are what runs when
the extension has not been built (``ACCELERATED`` is then False).

The render pipeline is the ASTRO order of the IIP protocol (normalise, CTW, band flattening, GAM,
INV, CMP, quantise with CNT), computed in float32.
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
    "bin2x2",
    "cmap_code",
    "reference",
    "render",
    "to_float32",
]

CMAP_NONE, CMAP_HOT, CMAP_COLD, CMAP_JET, CMAP_RED, CMAP_GREEN, CMAP_BLUE = range(7)

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

# Integer FITS sample types and floating types accepted by to_float32 (any byte order).
_INT_KINDS = {("u", 1), ("i", 2), ("i", 4), ("i", 8)}
_FLOAT_KINDS = {("f", 4), ("f", 8)}

_F32 = np.float32
_NAN32 = np.float32("nan")


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


class _RenderPlan:
    """Validated render parameters, shared by the compiled kernel and its twin."""

    __slots__ = ("src", "nchan", "mins", "factors", "ctw", "gamma", "invert", "cmap", "contrast",
                 "nout", "ncomp")

    def __init__(self, src: Any, mins: Any, maxs: Any, ctw: Any, gamma: float, invert: bool,
                 cmap: int, contrast: float) -> None:
        a = src if type(src) is np.ndarray else np.asarray(src)
        if a.dtype.kind != "f" or a.dtype.itemsize != 4:
            raise ValueError(f"src must be float32, got {a.dtype.str}")
        if a.ndim == 2:
            a = a[np.newaxis]
        if a.ndim != 3:
            raise ValueError(f"src must be (C, h, w) or (h, w), got shape {a.shape}")
        c = a.shape[0]
        if c < 1:
            raise ValueError("src has no channel")
        if not a.flags.c_contiguous or not a.dtype.isnative:
            a = np.ascontiguousarray(a, dtype=np.float32)
        self.src = a
        self.nchan = c
        self.mins, self.factors = _range_factors(mins, maxs, c)
        self.ctw = _ctw_matrix(ctw)
        try:
            self.gamma = float(gamma)
            self.contrast = float(contrast)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad gamma or contrast: {exc}") from None
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


def _range_factors(mins: Any, maxs: Any, c: int) -> tuple[array[float], array[float]]:
    """float32 mins and factors: d = max - min, f = 1/d if |d| > 1e-30 else 1e30 (NaN d -> 1e30).

    Computed with Python floats rounded to float32 after each operation (array 'f'): rounding a
    float64 result of +, -, * or / of float32 operands to float32 gives the float32 result.
    """
    mn = array("f", _per_channel(mins, c, "min"))
    mx = array("f", _per_channel(maxs, c, "max"))
    d = array("f", [b - a for a, b in zip(mn, mx, strict=True)])
    fac = array("f", [1.0 / x if abs(x) > 1e-30 else 1e30 for x in d])
    return mn, fac


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
    s = np.where(ok[0], p[0], zero) + np.where(ok[1], p[1], zero)
    s = s + np.where(ok[2], p[2], zero)
    s = s + np.where(ok[3], p[3], zero)
    n = ok[0].astype(np.float32) + ok[1] + ok[2] + ok[3]
    with np.errstate(invalid="ignore"):
        res[...] = s / n
    return res


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
        if p.gamma != 1.0:
            v = np.maximum(v, _F32(0)) ** _F32(p.gamma)
        if p.invert:
            v = _F32(1) - v
        if p.cmap != CMAP_NONE:
            v = _ref_colormap(v[0], p.cmap)
        q = _ref_quantise(v, p.contrast)
    if q.shape[0] == 1:
        return np.ascontiguousarray(q[0])
    return np.ascontiguousarray(np.moveaxis(q, 0, -1))


def _ref_render(src: np.ndarray, mins: Sequence[float] | np.ndarray | float,
                maxs: Sequence[float] | np.ndarray | float, ctw: Any = None, gamma: float = 1.0,
                invert: bool = False, cmap: int = CMAP_NONE, contrast: float = 1.0) -> np.ndarray:
    return _ref_render_plan(_RenderPlan(src, mins, maxs, ctw, gamma, invert, cmap, contrast))


#: NumPy twins of the kernels, with the same signatures: ``reference.render(...)`` etc.
reference = SimpleNamespace(
    to_float32=_ref_to_float32,
    bin2x2=_ref_bin2x2,
    render=_ref_render,
    colormap=_ref_colormap,
    quantise=_ref_quantise,
)


# --------------------------------------------------------------------------------------------
# Gamma lookup table
# --------------------------------------------------------------------------------------------
#
# powf per pixel would dominate the render time, so for v in [2**LUT_EMIN, 2**e_hi) the compiled
# kernel interpolates v**gamma linearly in a table indexed by the top bits of the float32
# representation of v (exponent + LUT_MBITS mantissa bits): each octave holds 2**LUT_MBITS equal
# steps, so the *relative* interpolation error is the same everywhere, including near v = 0 where
# the slope of v**gamma (gamma < 1) is unbounded. Elsewhere (v <= 0 -> 0; tiny v, v >= 2**e_hi,
# +inf, NaN -> powf) the formula is computed exactly.
#
# Error bound: on [a, a(1+d)], d = 2**-LUT_MBITS, linear interpolation of f(v) = v**g is off by at
# most max|f''| (a d)**2 / 8 <= g |g-1| d**2 (1+d)**|g-2| f(a) / 8, a relative error
# r(g) = g |g-1| d**2 (1+d)**|g-2| / 8; lut_relative_error adds 8 float32 epsilons for the
# roundings of the table entries and of the interpolation. Below 2**e_hi, v**g < 2**(e_hi g), so
# the absolute error is below r 2**(e_hi g). INV keeps absolute errors, a colormap multiplies them
# by at most S = 4 (JET) or 3 (HOT, COLD), and quantisation by 255 |CNT|: the error before
# truncation is at most E = r 2**(e_hi g) S 255 |CNT| DN. The table is used only when E <= 0.5
# (lut_upper_exponent picks the largest e_hi <= LUT_EMAX that allows it), which keeps every output
# within 1 DN of the exact formula (truncating two numbers less than 1 apart gives results at most
# 1 apart; clamping only brings them closer). tests/unit/test_kernels.py checks both the bound and
# the 1 DN promise on dense sweeps of v.

LUT_MBITS = 8
LUT_EMIN = -24
LUT_EMAX = 3
_LUT_SIZE = (LUT_EMAX - LUT_EMIN) * (1 << LUT_MBITS) + 1
_LUT_MAX_ERR_DN = 0.5
_EPS32 = float(np.finfo(np.float32).eps)

if _ck is not None and (_ck.LUT_MBITS != LUT_MBITS or _ck.LUT_EMIN != LUT_EMIN):
    raise ImportError("iipy._kernels was built with another gamma table layout; rebuild it")

_lut_lock = threading.Lock()
_lut_cache: LRU[float, np.ndarray] = LRU(16)


def _gamma_lut(gamma: float) -> np.ndarray:
    """float32 table of v**gamma at v = 2**e (1 + m / 2**LUT_MBITS), e in [LUT_EMIN, LUT_EMAX)."""
    with _lut_lock:
        lut = _lut_cache.get(gamma)
        if lut is not None:
            return lut
    i = np.arange(_LUT_SIZE, dtype=np.float64)
    e = np.floor(i / (1 << LUT_MBITS)) + LUT_EMIN
    m = (i % (1 << LUT_MBITS)) / (1 << LUT_MBITS)
    v = np.ldexp(1.0 + m, e.astype(np.int64))
    with np.errstate(over="ignore"):
        lut = np.power(v, gamma).astype(np.float32)
    lut.setflags(write=False)
    with _lut_lock:
        _lut_cache.put(gamma, lut)
    return lut


def lut_relative_error(gamma: float) -> float:
    """Bound on the relative error of the gamma table (interpolation plus float32 rounding)."""
    d = 2.0 ** -LUT_MBITS
    g = float(gamma)
    return float(g * abs(g - 1.0) * d * d * (1.0 + d) ** abs(g - 2.0) / 8.0 + 8.0 * _EPS32)


@functools.lru_cache(maxsize=256)
def lut_upper_exponent(gamma: float, contrast: float, cmap: int) -> int | None:
    """Largest e_hi (<= LUT_EMAX) for which the table keeps every output within 1 DN, or None."""
    g = float(gamma)
    if not (g > 0.0) or not math.isfinite(g) or g == 1.0:
        return None
    slope = {CMAP_JET: 4.0, CMAP_HOT: 3.0, CMAP_COLD: 3.0}.get(cmap, 1.0)
    cnt = abs(float(contrast))
    if not math.isfinite(cnt):
        return None
    r = lut_relative_error(g)
    for e_hi in range(LUT_EMAX, -1, -1):
        if r * 2.0 ** (e_hi * g) * slope * 255.0 * cnt <= _LUT_MAX_ERR_DN:
            return e_hi
    return None


# --------------------------------------------------------------------------------------------
# Public kernels
# --------------------------------------------------------------------------------------------


def to_float32(raw: np.ndarray, bscale: float = 1.0, bzero: float = 0.0, blank: int | None = None,
               flip: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Convert a 2-D window of FITS samples to physical float32 values.

    raw: (h, w) of u1, i2, i4, i8, f4 or f8 in either byte order, possibly a strided read-only view
    of a memmap. Returns float32 (h, w) C-contiguous (``out`` if given): raw*bscale + bzero computed
    in float64 then rounded (float samples without scaling are copied), integer samples equal to
    ``blank`` become NaN, and with ``flip`` output row i is raw row h-1-i.
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
    _ck.to_float32(a, swap, bscale, bzero, not _is_unscaled(bscale, bzero), b is not None,
                   0 if b is None else b, bool(flip), res)
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


def render(src: np.ndarray, mins: Sequence[float] | np.ndarray | float,
           maxs: Sequence[float] | np.ndarray | float, ctw: Any = None, gamma: float = 1.0,
           invert: bool = False, cmap: int = CMAP_NONE, contrast: float = 1.0) -> np.ndarray:
    """Physical float32 (C, h, w) -> uint8 (h, w) grey or (h, w, 3) colour, C-contiguous.

    ASTRO pipeline in float32: normalise with mins/maxs (non-finite -> 0), CTW (rows k < min(K, C),
    missing rows 0), band flattening (2 channels -> channel 0, more than 3 -> channels 0-2), GAM,
    INV, CMP (colormap of channel 0), then truncate(clamp(v * 255 * contrast, 0, 255)).
    A 2-D src is a single channel; a scalar min/max applies to every channel.
    """
    p = _RenderPlan(src, mins, maxs, ctw, gamma, invert, cmap, contrast)
    if _ck is None:
        return _ref_render_plan(p)
    _, h, w = p.src.shape
    out = np.empty((h, w, p.nout), dtype=np.uint8)
    if h == 0 or w == 0:
        return out.reshape(h, w) if p.nout == 1 else out
    use_gamma = p.gamma != 1.0
    g32 = float(np.float32(p.gamma))
    lut, lut_hi = _EMPTY_LUT, 0.0
    if use_gamma:
        e_hi = lut_upper_exponent(g32, p.contrast, p.cmap)
        if e_hi is not None:
            lut, lut_hi = _gamma_lut(g32), float(2.0**e_hi)
    has_ctw = p.ctw is not None
    _ck.render(p.src, p.mins, p.factors, p.ctw if has_ctw else _EMPTY_CTW, has_ctw, g32,
               use_gamma, lut, _LUT_LO, lut_hi, p.invert, p.cmap,
               float(np.float32(p.contrast)), out.reshape(h, w * p.nout))
    return out.reshape(h, w) if p.nout == 1 else out


_EMPTY_LUT = np.zeros(2, dtype=np.float32)
_LUT_LO = float(2.0**LUT_EMIN)
_EMPTY_CTW = np.zeros((1, 1), dtype=np.float32)
