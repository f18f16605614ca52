"""Display settings of one request and their application to float32 data, in the
order of docs/protocol.md §6.2 (ASTRO): normalise (with the range narrowed by CNT=st),
SHD, CTW, band flattening, GAM (the stretch), INV, CMP, quantise with CNT; then COL and
CNT=eq, flip and rotation on the 8-bit result.

Tiles go through ``render`` (the compiled kernels do normalise..quantise in one pass).
Exports (CVT) go through ``export``: the region is read strip by strip, normalised
(and shaded), resampled in float to the output size, then the rest of the pipeline
runs on the resampled values.  Resampling after normalisation instead of after CTW
gives the same values, since CTW and resampling are both linear.

8-bit display samples (TIFF) with no float operation asked (no MINMAX, CNT, GAM, CMP,
INV, CTW, SHD: ``float_processing``) skip normalisation and quantisation: the samples
are the output, as iipsrv 1.1 sends them (band flattening and COL still apply; an
export resamples them and truncates).

CNT=st and CNT=eq need the histogram of the view's display range (``kernels.histogram``);
callers pass the one of the image's smallest level (``OpenImage.histogram``), so that
every tile and export of a view gets the same mapping.

The watermark (WATERMARK*) is added to the 8-bit result before encoding, so cached
responses hold it, as in iipsrv.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from iipy.imaging import kernels
from iipy.imaging.source import DisplayRange, RawWindow

#: Bytes of float32 data an export handles at once (bounds its memory besides the output).
STRIP_BYTES = 32 << 20


@dataclass(slots=True)
class View:
    """Mutable while the request's modifiers are applied left to right."""

    minmax: dict[int, tuple[float, float]] = field(default_factory=dict)  # 0-based channel
    contrast: float = 1.0
    stretch: int = kernels.STRETCH_POWER  # GAM's curve (power, log, asinh, sqrt)
    gamma: float = 1.0  # GAM's number: the exponent of the power, BETA of asinh
    autostretch: bool = False  # CNT=st
    equalize: bool = False  # CNT=eq
    cmap: int = kernels.CMAP_NONE
    invert: bool = False
    ctw: list[list[float]] = field(default_factory=list)
    quality: int | None = None
    shade: tuple[int, int] | None = None  # SHD: (azimuth, elevation) in degrees
    colour: str | None = None  # COL: "grey" or "binary"

    def key(self) -> tuple:
        """Everything that changes rendered pixels, normalised (for cache keys)."""
        return (tuple(sorted(self.minmax.items())), self.contrast, self.stretch, self.gamma,
                self.autostretch, self.equalize, self.cmap, self.invert,
                tuple(tuple(r) for r in self.ctw), self.shade, self.colour)

    @property
    def uses_histogram(self) -> bool:
        """Whether the view needs the histogram of its range (CNT=st or CNT=eq)."""
        return self.autostretch or self.equalize


_PLAIN = View()
#: View fields that act on the 8-bit result, not on normalised values.
_OUTPUT_FIELDS = frozenset({"quality", "colour"})


def float_processing(view: View) -> bool:
    """Whether the view asks for an operation on normalised values: iipsrv 1.1's test
    (CNT, GAM, CMP, SHD, INV, CTW) plus MINMAX, which iipy always honours, and GAM's and
    CNT's words; that is, any field but QLT and COL away from its default."""
    return any(getattr(view, f.name) != getattr(_PLAIN, f.name)
               for f in dataclasses.fields(View) if f.name not in _OUTPUT_FIELDS)


def display_samples(src: np.ndarray) -> np.ndarray:
    """8-bit samples held in float32 (C, h, w) as the output: uint8 (h, w) grey for one
    or two channels (the first), (h, w, 3) for three or more (the first three);
    values outside 0..255 are clipped, fractions truncated."""
    planes = src[:1] if src.shape[0] < 3 else src[:3]
    out = np.clip(planes, 0, 255).astype(np.uint8)
    if out.shape[0] == 1:
        return np.ascontiguousarray(out[0])
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def display_pixels(samples: np.ndarray, colour: str | None = None) -> np.ndarray:
    """8-bit samples, interleaved (h, w, C), as the output when no float operation is
    asked: band flattening as ``display_samples``, then COL."""
    c = samples.shape[2]
    if c < 3:
        pixels = np.ascontiguousarray(samples[..., 0])
    else:
        pixels = np.ascontiguousarray(samples[..., :3] if c > 3 else samples)
    return convert_colour(pixels.astype(np.uint8, copy=False), colour)


def ranges_for(view: View, defaults: list[DisplayRange]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mins, maxs): the image defaults overridden by MINMAX."""
    mins = np.array([r.lo for r in defaults], np.float64)
    maxs = np.array([r.hi for r in defaults], np.float64)
    for c, (lo, hi) in view.minmax.items():
        if 0 <= c < len(defaults):
            mins[c], maxs[c] = lo, hi
    return mins, maxs


def shade_margin(view: View, channels: int) -> int:
    """Pixels needed around a window: 1 for the gradient shading of 1- and 2-channel
    data (so that tiles and strips join without seams), else 0."""
    return 1 if view.shade is not None and channels < 3 else 0


def render(src: np.ndarray, view: View, defaults: list[DisplayRange],
           margin: tuple[int, int, int, int] = (0, 0, 0, 0),
           display_8bit: bool = False, histogram: np.ndarray | None = None) -> np.ndarray:
    """float32 (C, h, w) to uint8 (h, w) grey or (h, w, 3) colour.

    ``margin`` (left, top, right, bottom) counts extra pixels around the wanted window
    that ``src`` holds for SHD; they are used for gradients and left out of the result.
    ``display_8bit``: ``src`` holds 8-bit display samples, output unchanged when the
    view asks for no float operation.  ``histogram`` is the histogram of the view's
    range that CNT=st and CNT=eq use (None: that of ``src`` itself).  COL and CNT=eq are
    applied; flips and rotations are not (see ``orient``)."""
    if display_8bit and not float_processing(view):
        left, top, right, bottom = margin
        src = src[:, top : src.shape[1] - bottom, left : src.shape[2] - right]
        return convert_colour(display_samples(src), view.colour)
    mins, maxs = ranges_for(view, defaults)
    if view.uses_histogram and histogram is None:
        histogram = kernels.histogram(src, mins, maxs)
    if view.shade is None:
        pixels = kernels.render(src, mins, maxs, ctw=_ctw(view, src.shape[0]), gamma=view.gamma,
                                invert=view.invert, cmap=view.cmap, contrast=view.contrast,
                                stretch=view.stretch, autostretch=view.autostretch,
                                histogram=histogram if view.autostretch else None)
    else:
        if view.autostretch:
            assert histogram is not None
            mins, maxs = kernels.narrowed_range(mins, maxs, histogram)
        norm = shade(normalise(src, mins, maxs), *view.shade)
        left, top, right, bottom = margin
        norm = norm[:, top : norm.shape[1] - bottom, left : norm.shape[2] - right]
        pixels = finish(norm, view)
    return equalise(convert_colour(pixels, view.colour), view, histogram)


def render_raw(raw: RawWindow, view: View, defaults: list[DisplayRange],
               histogram: np.ndarray | None = None) -> np.ndarray:
    """``render`` of the window whose raw samples ``raw`` holds, in one kernel pass from the
    samples to 8 bits (``kernels.render_raw``: no float32 window); not for SHD.
    ``histogram`` as for ``render`` (None with CNT=st or CNT=eq: that of the window, which
    is then converted to float32 for it)."""
    if view.shade is not None:
        raise ValueError("SHD needs the float32 window: use render")
    mins, maxs = ranges_for(view, defaults)
    if view.uses_histogram and histogram is None:
        samples = np.asarray(raw.samples)
        planes = samples if samples.ndim == 3 else samples[np.newaxis]
        histogram = kernels.histogram(np.stack([
            kernels.to_float32(p, raw.bscale, raw.bzero, raw.blank, raw.flip) for p in planes]),
            mins, maxs)
    pixels = kernels.render_raw(raw.samples, raw.bscale, raw.bzero, raw.blank, raw.flip, mins,
                                maxs, ctw=_ctw(view, _raw_channels(raw)), gamma=view.gamma,
                                invert=view.invert,
                                cmap=view.cmap, contrast=view.contrast, stretch=view.stretch,
                                autostretch=view.autostretch,
                                histogram=histogram if view.autostretch else None)
    return equalise(convert_colour(pixels, view.colour), view, histogram)


def finish(norm: np.ndarray, view: View) -> np.ndarray:
    """Already normalised float32 (C, h, w) through CTW, flattening, GAM, INV, CMP and
    quantisation (the kernels' normalisation with range 0..1 is the identity); CNT=st is
    the caller's (a narrowed range before normalising)."""
    return kernels.render(np.ascontiguousarray(norm, np.float32), 0.0, 1.0,
                          ctw=_ctw(view, norm.shape[0]),
                          gamma=view.gamma, invert=view.invert, cmap=view.cmap,
                          contrast=view.contrast, stretch=view.stretch)


def equalise(pixels: np.ndarray, view: View, histogram: np.ndarray | None) -> np.ndarray:
    """CNT=eq on the 8-bit output (after COL, as in iipsrv 1.2); anything else unchanged."""
    if not view.equalize:
        return pixels
    assert histogram is not None
    return kernels.equalize(pixels, histogram)


def renders_16bit(view: View, channels: int) -> bool:
    """Whether a request's output is one channel that can keep 16 bits: data of one or
    two channels (a second one is left out, as the kernels flatten it), no colormap, no
    bi-level conversion and no CNT=eq (a mapping of 256 levels)."""
    return (channels <= 2 and view.cmap == kernels.CMAP_NONE and view.colour != "binary"
            and not view.equalize)


def finish16(norm: np.ndarray, view: View) -> np.ndarray:
    """``finish`` to 16 bits, for the views of ``renders_16bit``: normalised float32
    (C, h, w) through the first CTW row, GAM (the stretch, ``kernels.apply_stretch``), INV and
    ``v * 65535 * CNT`` clamped to 0..65535 and truncated: uint16 (h, w).  The same
    arithmetic as the 8-bit kernels with 65535 for 255, so the top byte is within one of
    the 8-bit output; CNT=st is the caller's (a narrowed range)."""
    norm = np.asarray(norm, np.float32)
    with np.errstate(all="ignore"):
        if view.ctw:
            row = view.ctw[0][: norm.shape[0]]  # a missing coefficient contributes nothing
            v = np.zeros(norm.shape[1:], np.float32)
            for j in range(min(len(row), norm.shape[0])):
                if row[j] != 0:
                    v = v + np.float32(row[j]) * norm[j]
        else:
            v = norm[0]
        v = kernels.apply_stretch(v, view.stretch, view.gamma)
        if view.invert:
            v = np.float32(1) - v
        t = v * np.float32(65535) * np.float32(view.contrast)
        t = np.where(t < 0, np.float32(0), np.where(t < 65535, t, np.float32(65535)))
        t[np.isnan(t)] = 0
    return t.astype(np.uint16)


def _raw_channels(raw: RawWindow) -> int:
    """Channels of a raw window: (C, h, w), or (h, w) for one."""
    return raw.samples.shape[0] if np.ndim(raw.samples) == 3 else 1


def _ctw(view: View, channels: int) -> np.ndarray | None:
    """The CTW matrix for ``channels`` input channels: only rows and columns below the
    channel count take part (docs/pipeline.md §4), so the rest is left out before the
    rows are padded, and the matrix is at most C x C whatever the request holds (a
    long row and many short ones would otherwise pad to rows x length)."""
    if not view.ctw:
        return None
    return np.array(_rectangular([r[:channels] for r in view.ctw[:channels]]), np.float32)


def _rectangular(rows: list[list[float]]) -> list[list[float]]:
    """Pad ragged CTW rows with zeros (a missing coefficient contributes nothing)."""
    width = max(1, max(len(r) for r in rows))
    return [list(r) + [0.0] * (width - len(r)) for r in rows]


def normalise(src: np.ndarray, mins: np.ndarray, maxs: np.ndarray) -> np.ndarray:
    """§6.1 in float32: (x - min) / (max - min) per channel; non-finite samples give 0."""
    src = np.asarray(src, np.float32)
    if src.ndim == 2:
        src = src[np.newaxis]
    c = src.shape[0]
    lo = np.asarray(mins, np.float64)[:c].astype(np.float32)
    hi = np.asarray(maxs, np.float64)[:c].astype(np.float32)
    d = (hi - lo).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        factor = np.where(np.abs(d) > 1e-30, np.float32(1) / d, np.float32(1e30)).astype(np.float32)
        v = (src - lo[:, None, None]) * factor[:, None, None]
        v[~np.isfinite(v)] = 0
    return v


# --- SHD -----------------------------------------------------------------------------


def shade(norm: np.ndarray, azimuth: int, elevation: int) -> np.ndarray:
    """SHD on normalised (C, h, w) data; one channel out, values 0..1.

    Three or more channels are surface normals, as iipsrv reads them: each channel v
    becomes 1 - 2v (all three exactly 0: no normal), the light comes from
    (sin h, cos h, -sin v) normalised, with the x part negative for h > 180, and the
    result is half the dot product, clipped.

    One or two channels (iipsrv reads past its buffer there) are shaded as a relief:
    the height is channel 0 in display units (0..255 over the MINMAX range), the
    surface normal comes from its central differences (one-sided at the image's edge),
    the light from azimuth h clockwise from north (up) at elevation v, and the result
    is the cosine of the angle between them, clipped to 0..1 (a flat area gives sin v).
    """
    if norm.shape[0] >= 3:
        h = math.radians(azimuth)
        lx = abs(math.sin(h)) * (-1.0 if azimuth > 180 else 1.0)
        light = np.array([lx, math.cos(h), -math.sin(math.radians(elevation))], np.float64)
        light /= np.linalg.norm(light)
        light32 = light.astype(np.float32)
        n = np.float32(1) - np.float32(2) * norm[:3]
        dot = light32[0] * n[0] + light32[1] * n[1] + light32[2] * n[2]
        out = np.clip(np.float32(0.5) * dot, 0, 1)
        out[(norm[0] == 0) & (norm[1] == 0) & (norm[2] == 0)] = 0
        return out[np.newaxis].astype(np.float32)
    z = np.clip(norm[0], 0, 1).astype(np.float32) * np.float32(255)
    if z.shape[1] > 1:
        gx = np.gradient(z, axis=1)
    else:
        gx = np.zeros_like(z)
    if z.shape[0] > 1:
        gy = np.gradient(z, axis=0)  # rows go down: north is -gy
    else:
        gy = np.zeros_like(z)
    a, e = math.radians(azimuth), math.radians(elevation)
    lx, ly, lz = math.cos(e) * math.sin(a), math.cos(e) * math.cos(a), math.sin(e)
    # normal (-dz/dx, -dz/dnorth, 1) = (-gx, gy, 1), normalised
    dot = (np.float32(-lx) * gx + np.float32(ly) * gy + np.float32(lz)) / \
        np.sqrt(gx * gx + gy * gy + np.float32(1))
    return np.clip(dot, 0, 1).astype(np.float32)[np.newaxis]


# --- COL, flips and rotations -------------------------------------------------------------


def convert_colour(pixels: np.ndarray, colour: str | None) -> np.ndarray:
    """COL on 8-bit output: ``grey`` turns RGB into luminance (0.299, 0.587, 0.114,
    truncated); ``binary`` into 0 or 255 around Otsu's threshold."""
    if colour is None:
        return pixels
    if pixels.ndim == 3:
        p = pixels.astype(np.uint32)
        pixels = ((p[..., 0] * 19595 + p[..., 1] * 38470 + p[..., 2] * 7471) >> 16).astype(np.uint8)
    if colour == "binary":
        pixels = np.where(pixels > otsu_threshold(pixels), 255, 0).astype(np.uint8)
    return pixels


def otsu_threshold(grey: np.ndarray) -> int:
    """The threshold t maximising the between-class variance of (<= t, > t)."""
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 127
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 / total - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between))


def orient(pixels: np.ndarray, angle: int, mirror: bool) -> np.ndarray:
    """ROT on 8-bit output: a horizontal mirror first (``!``), then a clockwise
    rotation by ``angle`` (0, 90, 180, 270); ``!180`` is thus a vertical flip."""
    if mirror:
        pixels = pixels[:, ::-1]
    if angle:
        pixels = np.rot90(pixels, k=-(angle // 90), axes=(0, 1))
    return np.ascontiguousarray(pixels)


# --- resampling and export ------------------------------------------------------------------


def axis_map(n_src: int, n_dst: int, bilinear: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``n_dst`` output pixels: the two source pixels and the weight of the
    second (pixel centres aligned: output pixel i samples source position
    (i + 0.5) n_src / n_dst - 0.5).  Nearest neighbour gives the same index twice and
    weight 0."""
    i = np.arange(n_dst, dtype=np.float64)
    if not bilinear:
        i0 = np.minimum(np.floor((i + 0.5) * n_src / n_dst), n_src - 1).astype(np.intp)
        return i0, i0, np.zeros(n_dst, np.float32)
    s = np.clip((i + 0.5) * n_src / n_dst - 0.5, 0, n_src - 1)
    i0 = np.floor(s).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_src - 1)
    return i0, i1, (s - i0).astype(np.float32)


def _resample_cols(a: np.ndarray, i0: np.ndarray, i1: np.ndarray, f: np.ndarray) -> np.ndarray:
    if a.shape[-1] == len(i0) and not f.any() and (i0 == np.arange(len(i0))).all():
        return a
    left = a[..., i0]
    if not f.any():
        return left
    return left + (a[..., i1] - left) * f


def _resample_rows(a: np.ndarray, i0: np.ndarray, i1: np.ndarray, f: np.ndarray) -> np.ndarray:
    if a.shape[-2] == len(i0) and not f.any() and (i0 == np.arange(len(i0))).all():
        return a
    top = a[:, i0]
    if not f.any():
        return top
    return top + (a[:, i1] - top) * f[:, None]


def export(read: Callable[[int, int, int, int], np.ndarray], source: tuple[int, int, int, int],
           level_size: tuple[int, int], channels: int, out_size: tuple[int, int], view: View,
           defaults: list[DisplayRange], bilinear: bool = True,
           display_8bit: bool = False, depth: int = 8,
           histogram: np.ndarray | None = None, budget: int = STRIP_BYTES) -> np.ndarray:
    """A region resampled to ``out_size`` and rendered: uint8 (h, w) or (h, w, 3).

    ``read(x, y, w, h)`` returns float32 (C, h, w) of the level the region
    ``source`` = (x, y, w, h) belongs to (a level of size ``level_size``).  The output
    is built in strips of rows; each strip reads only the source rows it needs, so the
    float memory stays under ``budget`` bytes whatever the region's size.
    ``display_8bit`` as for ``render``: without a float operation the 8-bit samples
    are resampled and truncated, not normalised.  ``depth`` 16 gives uint16 (h, w)
    through ``finish16``; the caller checks ``renders_16bit`` (and that the output is
    not 8-bit samples as they are).  ``histogram`` (of the view's range) is required by
    CNT=st and CNT=eq: ValueError without it."""
    samples = display_8bit and not float_processing(view)
    if depth == 16 and (samples or not renders_16bit(view, channels)):
        raise ValueError("this view has no 16-bit output")
    rx, ry, rw, rh = source
    lw, lh = level_size
    out_w, out_h = out_size
    mins, maxs = ranges_for(view, defaults)
    if view.uses_histogram and histogram is None:
        raise ValueError("CNT=st and CNT=eq need the histogram of the view's range")
    if view.autostretch:
        assert histogram is not None
        mins, maxs = kernels.narrowed_range(mins, maxs, histogram)
    xi0, xi1, xf = axis_map(rw, out_w, bilinear)
    yi0, yi1, yf = axis_map(rh, out_h, bilinear)
    m = shade_margin(view, channels)
    cx0, cx1 = max(0, rx - m), min(lw, rx + rw + m)
    # float32 bytes per output row: source rows, columns resampled, rows resampled, and
    # about as much again in temporaries
    per_row = 8 * channels * ((rh / out_h + 2) * (cx1 - cx0 + out_w) + 2 * out_w)
    rows = max(1, min(out_h, int(budget // per_row)))
    out: np.ndarray | None = None
    for oy0 in range(0, out_h, rows):
        oy1 = min(out_h, oy0 + rows)
        sy0, sy1 = int(yi0[oy0]), int(yi1[oy1 - 1]) + 1  # region rows this strip needs
        ty0, ty1 = max(0, ry + sy0 - m), min(lh, ry + sy1 + m)
        src = read(cx0, ty0, cx1 - cx0, ty1 - ty0)
        norm = src if samples else normalise(src, mins, maxs)
        del src
        if view.shade is not None:
            norm = shade(norm, *view.shade)
        top, left = ry + sy0 - ty0, rx - cx0
        norm = norm[:, top : top + (sy1 - sy0), left : left + rw]
        norm = _resample_cols(norm, xi0, xi1, xf)
        norm = _resample_rows(norm, yi0[oy0:oy1] - sy0, yi1[oy0:oy1] - sy0, yf[oy0:oy1])
        if samples:
            pixels = display_samples(norm)
        else:
            pixels = finish16(norm, view) if depth == 16 else finish(norm, view)
        del norm
        if out is None:
            out = np.empty((out_h,) + pixels.shape[1:], pixels.dtype)
        out[oy0:oy1] = pixels
    assert out is not None
    if depth == 16:
        return out  # one channel: COL grey changes nothing; no CNT=eq (renders_16bit)
    return equalise(convert_colour(out, view.colour), view, histogram)
