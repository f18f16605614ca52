"""Default display ranges: the (min, max) an image is shown with before any MINMAX.

The pyramid pass (``iipy.imaging.pyramid.RangePass``) computes each channel's range by the
policy that ``IIPY_DISPLAY_RANGE`` names (:func:`parse_policy` reads it): ``stiff`` streams
every full-resolution sample, in the order of the file, through :class:`StiffChunks`; the
other policies hand a sample of evenly spaced rows (every sample for an image of one tile)
to :func:`display_range`:

``stiff`` (the default)
    STIFF 2.4's defaults, so that a site moving from STIFF's TIFFs to the FITS files sees the
    same images: the maximum is the MAX_TYPE QUANTILE 0.999 level, the minimum the MIN_TYPE
    GREYLEVEL 0.001 level of the sky (SKY_TYPE AUTO). STIFF reads the image in chunks of 8 MiB
    of float32 samples (2**21 pixels, in file order); in each chunk it takes the median and,
    among the samples above the median, the value at index int(0.999 (n/2 - 0.5001)) (so its
    "0.999" is the 0.9995 quantile of the chunk). The sky is the median of the chunk medians,
    the maximum the median of the chunk maxima (a median of two values being their mean), and
    the minimum puts the sky at grey level 0.001: min = (max g - sky) / (g - 1), g = 0.001.
    This policy does the same on the sample, cutting it where the image's chunks end (the
    sample must be in file order and spread evenly over the image, as the pyramid's sampling
    grid is; ``image_pixels`` gives the image's size). Non-finite samples are left out; STIFF
    has no rule for NaN (its selection compares them as numbers) and counts BLANK pixels as
    -1e30, which moves its medians by half their number of ranks.

    Given the whole image, the result equals STIFF's (to 1e-5 of the range on the test
    images). A 0.9995 quantile of star-dominated pixels is a poor target for subsampling, even
    cut at the right places: on the test images (10**6 to 6 10**6 pixels) every 2nd row moved
    the maximum by up to 6 % of the range, the pyramid's grid of 512 rows (every 2nd to 4th
    row) by up to 4 %, every 8th row by up to 20 %; the minimum (the sky) stayed within 0.1 %.
    Staying within 1 % takes every pixel: :class:`StiffChunks` takes them while a pass
    streams the image by, with one chunk of memory and about 1.5 ms of work per 2**21 pixels.
``mad``
    VisiOmatic 3's rule: background and noise by iterated 3-sigma clipping of the median and
    the median absolute deviation (MAD); background - 2 MAD to background + 400 MAD, kept
    within the data.
``zscale``
    IRAF's zscale (``display``'s defaults: 1000 samples, taken at a regular stride of the
    sample, contrast 0.25): a line fitted to the sorted samples with iterative 2.5-sigma
    rejection (each rejection grown by 1 % of the samples on both sides), its slope divided by
    the contrast and extended from the median to the first and last samples. astropy's
    ZScaleInterval simplifies the loop (it keeps the line fitted before the last rejection);
    its upper limit comes out higher on images with stars, by 1.5 to 3 % of the range.
``percentile:LO,HI``
    the LO and HI percentiles (0 <= LO < HI <= 100; linear interpolation between samples).
``minmax``
    the smallest and largest values.

Every policy returns lo < hi: an empty sample gives (0, 1), a constant one (v, v + 1), and a
policy whose range comes out empty falls back on the data's range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from iipy.imaging import kernels
from iipy.settings import DISPLAY_RANGE_POLICIES, format_display_range, split_display_range

__all__ = ["POLICIES", "Policy", "StiffChunks", "display_range", "parse_policy"]

#: Names of the policies.
POLICIES = DISPLAY_RANGE_POLICIES

#: STIFF's chunk of samples (IMAGE_BUFSIZE, 8 MiB, of float32).
STIFF_CHUNK = (8 << 20) // 4
#: STIFF's default MAX_LEVEL (a quantile) and MIN_LEVEL (a grey level), as float32 values.
STIFF_MAX_LEVEL = float(np.float32(0.999))
STIFF_MIN_GREY = float(np.float32(0.001))

#: IRAF zscale's parameters (``display`` task defaults).
ZSCALE_SAMPLES = 1000
ZSCALE_CONTRAST = 0.25
_ZSC_KREJ = 2.5
_ZSC_MAX_ITERATIONS = 5
_ZSC_MIN_NPIXELS = 5
_ZSC_MAX_REJECT = 0.5


@dataclass(frozen=True, slots=True)
class Policy:
    """A display-range policy: its name and, for ``percentile``, (LO, HI)."""

    name: str
    params: tuple[float, ...] = ()

    def __str__(self) -> str:
        """The canonical text (``percentile:0.5,99.5``), which parses back to this policy."""
        return format_display_range(self.name, self.params)


def parse_policy(text: str) -> Policy:
    """The policy ``text`` names (case and blanks around it ignored); ValueError if none.
    The grammar is ``IIPY_DISPLAY_RANGE``'s (``iipy.settings.split_display_range``).

    >>> parse_policy("STIFF"), str(parse_policy("percentile: 0.5, 99.5"))
    (Policy(name='stiff', params=()), 'percentile:0.5,99.5')
    """
    name, params = split_display_range(text)
    return Policy(name, params)


def display_range(sample: np.ndarray, policy: str | Policy,
                  image_pixels: int | None = None) -> tuple[float, float]:
    """(lo, hi) of ``sample`` by ``policy``, lo < hi.

    ``sample`` holds values of one channel (non-finite ones are ignored). Only ``stiff`` cares
    about its order and about ``image_pixels``, the number of pixels of the whole image the
    sample was taken from in file order (None: the sample is the whole image).
    """
    p = policy if isinstance(policy, Policy) else parse_policy(policy)
    a = np.asarray(sample).reshape(-1)
    if a.dtype.kind not in "fiu":
        raise ValueError("the sample must be numeric, got %s" % a.dtype.str)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    if p.name == "stiff":
        if a.dtype != np.float32:
            with np.errstate(over="ignore"):
                a = a.astype(np.float32)  # STIFF's samples are float32
        lo, hi = _stiff(a, image_pixels)
        a = _finite(a)
    else:
        a = _finite(a)
        if a.size == 0:
            return 0.0, 1.0
        if p.name == "mad":
            lo, hi = _mad(a)
        elif p.name == "zscale":
            lo, hi = _zscale(a)
        elif p.name == "percentile":
            lo, hi = (float(x) for x in np.percentile(a, p.params))
        else:
            lo, hi = float(a.min()), float(a.max())
    return _non_empty(lo, hi, a)


def _finite(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    return a if ok.all() else a[ok]


def _non_empty(lo: float, hi: float, a: np.ndarray) -> tuple[float, float]:
    if lo < hi and math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    if a.size == 0:
        return 0.0, 1.0
    lo, hi = float(a.min()), float(a.max())
    if not lo < hi:
        hi = lo + 1.0
    return lo, hi


# --------------------------------------------------------------------------------------------
# stiff
# --------------------------------------------------------------------------------------------


class StiffChunks:
    """The ``stiff`` range of a whole image whose samples are given in file order, a row or a
    band of rows at a time, with one chunk of memory (STIFF's 2**21 float32 samples)."""

    def __init__(self, chunk: int = STIFF_CHUNK) -> None:
        self._buf = np.empty(max(1, int(chunk)), np.float32)
        self._n = 0
        self._skies: list[float] = []
        self._tops: list[float] = []

    def add(self, values: np.ndarray) -> None:
        """The next samples of the image (any shape, read in C order; float32 samples may be
        in either byte order, and whole chunks of them are not copied)."""
        v = np.asarray(values).reshape(-1)
        size = self._buf.size
        direct = v.dtype.kind == "f" and v.dtype.itemsize == 4 and v.flags.c_contiguous
        while v.size:
            if direct and self._n == 0 and v.size >= size:
                self._chunk(v[:size])
                v = v[size:]
                continue
            take = min(size - self._n, v.size)
            with np.errstate(over="ignore", invalid="ignore"):
                self._buf[self._n : self._n + take] = v[:take]
            self._n += take
            v = v[take:]
            if self._n == size:
                self._flush()

    def _flush(self) -> None:
        n, self._n = self._n, 0
        self._chunk(self._buf[:n])

    def _chunk(self, c: np.ndarray) -> None:
        levels = _stiff_chunk(c)
        if levels is not None:
            self._skies.append(levels[0])
            self._tops.append(levels[1])

    def result(self) -> tuple[float, float]:
        """(lo, hi) of every sample added so far, lo < hi."""
        if self._n:
            self._flush()
        lo, hi = _stiff_levels(self._skies, self._tops)
        if lo < hi:
            return lo, hi
        return _non_empty(lo, hi, np.asarray(self._tops + self._skies, np.float64))


def _stiff(a: np.ndarray, image_pixels: int | None) -> tuple[float, float]:
    n = a.size
    total = max(n if image_pixels is None else int(image_pixels), 1)
    nchunks = max(1, -(-total // STIFF_CHUNK))
    # sample index where each image chunk starts (the sample spreads evenly over the image)
    bounds = [min(n, round(j * STIFF_CHUNK * n / total)) for j in range(nchunks)] + [n]
    skies, tops = [], []
    for j in range(nchunks):
        levels = _stiff_chunk(a[bounds[j] : bounds[j + 1]])
        if levels is not None:
            skies.append(levels[0])
            tops.append(levels[1])
    return _stiff_levels(skies, tops)


def _stiff_levels(skies: list[float], tops: list[float]) -> tuple[float, float]:
    """(min, max) from the chunks' skies and maxima: medians of each, then the grey level."""
    if not skies:
        return math.nan, math.nan
    sky = float(np.median(skies))
    top = float(np.median(tops))
    g = STIFF_MIN_GREY
    return (top * g - sky) / (g - 1.0), top


def _stiff_chunk(c: np.ndarray) -> tuple[float, float] | None:
    """Median of the finite values of a chunk (mean of the two central values for an even
    count) and the MAX_LEVEL quantile of the upper half: index n//2 + n%2 +
    int(0.999 (n//2 - 0.5001)) of the sorted values; None when none is finite.

    STIFF's upper half is the n//2 values from the median on, as its selection left them: for
    an odd n that is all the values above the median but the one left last, which is below
    the quantile but for a chance of 1 in 1000 or so; the index then moves up by one. The
    selection is exact, in O(n) (``kernels.stiff_chunk``)."""
    n, sky, top = kernels.stiff_chunk(c, STIFF_MAX_LEVEL)
    return (sky, top) if n else None


# --------------------------------------------------------------------------------------------
# mad
# --------------------------------------------------------------------------------------------


def _mad(a: np.ndarray) -> tuple[float, float]:
    v = a.astype(np.float64, copy=False)
    data_lo, data_hi = float(v.min()), float(v.max())
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    for _ in range(5):
        if mad <= 0:
            break
        keep = np.abs(v - med) < 3 * 1.4826 * mad
        if keep.all():
            break
        v = v[keep]
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med)))
    if mad > 0:
        return max(med - 2 * mad, data_lo), min(med + 400 * mad, data_hi)
    return data_lo, data_hi


# --------------------------------------------------------------------------------------------
# zscale
# --------------------------------------------------------------------------------------------


def _zscale(a: np.ndarray) -> tuple[float, float]:
    """IRAF's zsc_zlimits on at most ZSCALE_SAMPLES values taken at a regular stride."""
    stride = max(1, int(a.size / ZSCALE_SAMPLES))
    s = np.sort(a[::stride][:ZSCALE_SAMPLES].astype(np.float64))
    npix = s.size
    zmin, zmax = float(s[0]), float(s[-1])
    if npix < _ZSC_MIN_NPIXELS:
        return zmin, zmax
    center = (npix + 1) // 2  # 1-based
    if npix % 2:
        median = float(s[center - 1])
    else:
        median = (float(s[center - 1]) + float(s[center])) / 2.0
    minpix = max(_ZSC_MIN_NPIXELS, int(npix * _ZSC_MAX_REJECT))
    ngrow = max(1, int(math.floor(npix * 0.01 + 0.5)))
    ngood, slope = _zscale_fit(s, ngrow, minpix)
    if ngood < minpix:
        return zmin, zmax
    slope /= ZSCALE_CONTRAST
    return max(zmin, median - (center - 1) * slope), min(zmax, median + (npix - center) * slope)


def _zscale_fit(z: np.ndarray, ngrow: int, minpix: int) -> tuple[int, float]:
    """Line through the sorted samples with iterative k-sigma rejection: (samples kept, slope
    per sample).

    x runs from -1 to 1. Each pass fits the kept samples, takes sigma of the residuals of the
    samples never flagged, and flags every unrejected sample whose residual exceeds KREJ
    sigma: it and its neighbours up to ``ngrow`` samples before it leave the fit, those up to
    ``ngrow`` after it stay in the fit but out of sigma (as IRAF does to keep the growing
    symmetric). It stops when a pass removes nothing or too few samples are left."""
    npix = z.size
    xscale = 2.0 / (npix - 1)
    x = np.arange(npix) * xscale - 1.0
    bad = np.zeros(npix, bool)       # out of the fit
    pending = np.zeros(npix, bool)   # in the fit, out of sigma
    z0 = float(z.mean())
    dz = float((x * z).sum() / (x * x).sum())
    ngood = npix
    for _ in range(_ZSC_MAX_ITERATIONS):
        last = ngood
        flat = z - (x * dz + z0)
        good = ~bad & ~pending
        ng = int(good.sum())
        if ng > 1:
            f = flat[good]
            var = (f * f).sum() / (ng - 1) - f.sum() ** 2 / (ng * (ng - 1))
            sigma = math.sqrt(var) if var > 0 else 0.0
        else:
            sigma = math.nan  # IRAF's INDEF: no sample is rejected
        threshold = sigma * _ZSC_KREJ
        hit = ~bad & ((flat < -threshold) | (flat > threshold))
        # samples within ngrow at or before a hit leave the fit, those after it are flagged
        c = np.concatenate(([0], np.cumsum(hit)))
        idx = np.arange(npix)
        ahead = c[np.minimum(idx + ngrow, npix - 1) + 1] - c[idx]  # hits in [i, i + ngrow]
        behind = c[idx] - c[np.maximum(idx - ngrow, 0)]           # hits in [i - ngrow, i)
        bad |= ahead > 0
        pending = (pending | (behind > 0)) & ~bad
        keep = ~bad
        ngood = int(keep.sum())
        if ngood > 0:
            xk, zk = x[keep], z[keep]
            sxx, sxz, sx, sz = (xk * xk).sum(), (xk * zk).sum(), xk.sum(), zk.sum()
            rowrat = sx / sxx
            z0 = float((sz - rowrat * sxz) / (ngood - rowrat * sx))
            dz = float((sxz - z0 * sx) / sxx)
        if ngood >= last or ngood < minpix:
            break
    return ngood, dz * xscale
