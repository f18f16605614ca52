"""CVT geometry (docs/protocol.md §7.5): which resolution level a region is read from,
the region in that level's pixels, and the output size.  Pure integer and float
functions, no I/O.

The rules are iipsrv 1.1's, checked against the running binary:

1. *Level.*  With WID set, ``t = floor(WID / w)`` is the width the whole image would
   need; the level read is the most reduced one whose width ``floor(W / 2^k)`` is still
   at least ``t`` (full resolution if none is).  HEI likewise with the heights; with
   both, the finer of the two levels.  With neither, the full image size limited to
   MAX_CVT stands for WID and HEI.  A negative WID or HEI (a huge number once read as
   unsigned, as iipsrv does) selects the smallest level.
2. *Region.*  ``left = round(x W / 2^k)``, ``top = round(y H / 2^k)``; the width is
   ``round(w round(W / 2^k))``, shortened so that it ends inside the image, at least 1;
   the height likewise; both are then cut to the level's real size.
3. *Output.*  WID and HEI are limited to MAX_CVT; one alone gives the other in
   proportion to the region; neither gives the full image size (even with RGN), limited
   to MAX_CVT.  Without ALLOW_UPSCALING the output is at most the level's size.
4. *Aspect.*  ``rho = (out_w / region_w) / (out_h / region_h)``; below 1.001 the height
   is recomputed from the width, above it the width from the height, so the output
   keeps the region's aspect and can differ from WID by one pixel.

Level sizes are the image's: floor halving for computed levels, the file's own for a
pyramidal TIFF.  As in iipsrv, the level choice and the region's position use floor
halving of the full size whatever the file holds; the cut (step 2) and the upscaling
limit (step 3) use the real size of the level.

The output size is always iipsrv's; the level read can be more reduced than iipsrv's:
the most reduced one whose region still holds at least as many pixels as the output in
both directions.  So the pixels read are fewer than about four times the output's (or
the smallest level, which fits in a tile), and memory and time follow the output size,
at most MAX_CVT squared, never the numbers of the request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from iipy.imaging.geometry import level_size

#: Tolerance of the aspect-ratio correction (iipsrv 1.1).
ASPECT_TOLERANCE = 1.001


@dataclass(frozen=True, slots=True)
class Export:
    """Where a CVT reads and what it writes."""

    level: int  # the level read: k, the number of halvings (0 = full resolution)
    x: int  # region in that level's pixels, top-left origin
    y: int
    w: int
    h: int
    out_w: int  # output size before any rotation
    out_h: int

    @property
    def source(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


def c_round(value: float) -> int:
    """C ``round``: halves away from zero."""
    if value >= 0:
        return int(math.floor(value + 0.5))
    return -int(math.floor(-value + 0.5))


def as_unsigned(value: int) -> int:
    """A C ``int`` seen as ``unsigned int`` (negative WID/HEI become huge)."""
    return value + (1 << 32) if value < 0 else value


def _level_for(requested: int, fraction: float, full: int, nres: int) -> int:
    """The most reduced level whose full size along one axis is at least
    ``floor(requested / fraction)``; 0 if even full resolution is smaller."""
    if requested < 0:
        return nres - 1
    # a tiny fraction (RGN=0,0,1,1e-309) makes the quotient infinite: no level is enough
    needed = requested / fraction if fraction > 0 else math.inf
    needed = math.floor(needed) if math.isfinite(needed) else math.inf
    k = 0
    while k + 1 < nres and max(1, full >> (k + 1)) >= needed:
        k += 1
    return k


def choose_level(width: int, height: int, nres: int, region: tuple[float, float, float, float],
                 wid: int, hei: int, max_cvt: int) -> int:
    """Step 1: iipsrv's level for this request (k halvings)."""
    _, _, w, h = region
    if wid == 0 and hei == 0:
        wid, hei = min(width, max_cvt), min(height, max_cvt)
    levels = []
    if wid != 0:
        levels.append(_level_for(min(wid, max_cvt) if wid > 0 else wid, w, width, nres))
    if hei != 0:
        levels.append(_level_for(min(hei, max_cvt) if hei > 0 else hei, h, height, nres))
    return min(levels)


def region_pixels(width: int, height: int, k: int,
                  region: tuple[float, float, float, float],
                  size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """Step 2: (left, top, width, height) of the region at level k, whose real size is
    ``size`` (default: floor halving).  The whole image (no region, as iipsrv sees it)
    is the whole level."""
    x, y, w, h = region
    lw, lh = size if size is not None else level_size(width, height, k)
    if region == (0.0, 0.0, 1.0, 1.0):
        return 0, 0, lw, lh
    scale = float(1 << k)

    def axis(pos: float, size: float, full: int, level: int) -> tuple[int, int]:
        exact = full / scale
        start = c_round(pos * exact)
        total = c_round(exact)
        length = c_round(size * total)
        if c_round(pos * total) + length > total:
            length = total - c_round(pos * total)
        length = max(1, length)
        start = min(start, level - 1)
        length = max(1, min(length, level - start))
        return start, length

    left, rw = axis(x, w, width, lw)
    top, rh = axis(y, h, height, lh)
    return left, top, rw, rh


def output_size(region_w: int, region_h: int, level_w: int, level_h: int, width: int,
                height: int, wid: int, hei: int, max_cvt: int,
                allow_upscaling: bool) -> tuple[int, int]:
    """Steps 3 and 4: the output size (before rotation), each side 1..MAX_CVT."""
    if wid == 0 and hei == 0:
        out_w, out_h = min(width, max_cvt), min(height, max_cvt)
    elif hei == 0:
        out_w = min(as_unsigned(wid), max_cvt)
        out_h = min(max(1, c_round(region_h * out_w / region_w)), max_cvt)
    elif wid == 0:
        out_h = min(as_unsigned(hei), max_cvt)
        out_w = min(max(1, c_round(region_w * out_h / region_h)), max_cvt)
    else:
        out_w, out_h = min(as_unsigned(wid), max_cvt), min(as_unsigned(hei), max_cvt)
    if not allow_upscaling:
        out_w, out_h = min(out_w, level_w), min(out_h, level_h)
    rho = (out_w / region_w) / (out_h / region_h)
    if rho < ASPECT_TOLERANCE:
        out_h = c_round(out_w / region_w * region_h)
    elif rho > ASPECT_TOLERANCE:
        out_w = c_round(out_h / region_h * region_w)
    return max(1, min(out_w, max_cvt)), max(1, min(out_h, max_cvt))


def _at_level(width: int, height: int, k: int, region: tuple[float, float, float, float],
              wid: int, hei: int, max_cvt: int, allow_upscaling: bool,
              size: tuple[int, int]) -> Export:
    x, y, w, h = region_pixels(width, height, k, region, size)
    lw, lh = size
    out_w, out_h = output_size(w, h, lw, lh, width, height, wid, hei, max_cvt, allow_upscaling)
    return Export(k, x, y, w, h, out_w, out_h)


def plan(width: int, height: int, nres: int, region: tuple[float, float, float, float] | None,
         wid: int, hei: int, max_cvt: int, allow_upscaling: bool = True,
         sizes: Sequence[tuple[int, int]] | None = None) -> Export:
    """The whole CVT geometry for a ``width`` x ``height`` image with ``nres`` levels
    (of sizes ``sizes``, full resolution first; default: floor halving).

    ``region`` holds RGN's fractions after iipsrv's clamping (None: the whole image);
    ``wid``/``hei`` are WID and HEI as C ints (0: unset).  The output size is iipsrv's,
    computed at iipsrv's level; the level read is the most reduced one whose region
    still has at least as many pixels as the output each way (iipsrv's level or a
    more reduced one)."""
    if region is None:
        region = (0.0, 0.0, 1.0, 1.0)
    if sizes is None:
        sizes = [level_size(width, height, k) for k in range(nres)]
    k = choose_level(width, height, nres, region, wid, hei, max_cvt)
    geometry = _at_level(width, height, k, region, wid, hei, max_cvt, allow_upscaling,
                         sizes[k])
    read, source = k, geometry.source
    for coarser in range(k + 1, nres):
        candidate = region_pixels(width, height, coarser, region, sizes[coarser])
        if candidate[2] < geometry.out_w or candidate[3] < geometry.out_h:
            break
        read, source = coarser, candidate
    return Export(read, *source, geometry.out_w, geometry.out_h)


@dataclass(frozen=True, slots=True)
class Cutout:
    """Where a ``CVT=fits`` reads and what it writes (docs/protocol.md §5.6)."""

    level: int  # the level read (k halvings)
    x: int  # region in that level's pixels, top-left origin
    y: int
    w: int
    h: int
    factor: int  # b: each output pixel is the mean of a b x b block of the level
    out_w: int  # floor(w / b)
    out_h: int  # floor(h / b)

    @property
    def scale(self) -> int:
        """Full-resolution pixels per output pixel, along each axis: 2^k b."""
        return (1 << self.level) * self.factor

    @property
    def origin(self) -> tuple[int, int]:
        """The output's top-left corner in full-resolution pixels (top-left origin)."""
        return self.x << self.level, self.y << self.level


def cutout(width: int, height: int, nres: int, region: tuple[float, float, float, float] | None,
           wid: int, hei: int, max_cvt: int, allow_upscaling: bool = True) -> Cutout:
    """The geometry of a science cut-out: level and region exactly as :func:`plan`, then
    no interpolation and no upsampling.  The output is the region's pixels at that level,
    averaged in b x b blocks, b the largest integer that still leaves at least the
    output size of :func:`plan` each way (1 when the region is smaller), raised until
    both sides are at most ``max_cvt``; a last partial column or row of blocks is left
    out, so every output pixel covers exactly 2^k b full-resolution pixels a side.  A
    region narrower than one block (an aspect beyond MAX_CVT to 1) gives a side of 0,
    which the caller refuses."""
    p = plan(width, height, nres, region, wid, hei, max_cvt, allow_upscaling)
    b = max(1, min(p.w // p.out_w, p.h // p.out_h))
    b = max(b, p.w // (max_cvt + 1) + 1, p.h // (max_cvt + 1) + 1)
    return Cutout(p.level, p.x, p.y, p.w, p.h, b, p.w // b, p.h // b)
