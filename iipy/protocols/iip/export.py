"""CVT: a region of the image as one picture (docs/protocol.md §5.6, §7.5)."""

from __future__ import annotations

import time

import numpy as np

from iipy.errors import InvalidArgument
from iipy.imaging import cutout, encode, region, render
from iipy.imaging.paths import split_selector, strip_dotdot
from iipy.imaging.store import OpenImage
from iipy.imaging.watermark import watermark_for
from iipy.protocols.http import Response
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.parser import Command


def export_filename(fif: str, extension: str) -> str:
    """Content-Disposition file name, as iipsrv's: the image file name without its
    directory and its last extension, plus ``.jpg`` (``.png``).  Bytes that cannot be in
    a quoted header value (controls, quote, backslash) become ``_``."""
    name, _ = split_selector(strip_dotdot(fif))
    base = name.rsplit("/", 1)[-1]
    if "." in base:
        base = base[: base.rfind(".")]
    raw = base.encode("utf-8", "surrogateescape").decode("latin-1")
    safe = "".join("_" if c < " " or c in '"\\\x7f' else c for c in raw)
    return safe + extension


_FITS_SUFFIXES = (".fits", ".fit", ".fts")


def fits_filename(fif: str) -> str:
    """The file name of a ``CVT=fits`` answer: ``export_filename``'s, without a FITS
    suffix left by a removed ``.fz`` (``m31.fits.fz`` gives ``m31.fits``)."""
    base = export_filename(fif, "")
    if base.lower().endswith(_FITS_SUFFIXES):
        base = base[: base.rfind(".")]
    return base + ".fits"


def max_fits_values(max_cvt: int) -> int:
    """Most values (pixels x channels) one ``CVT=fits`` answer holds: MAX_CVT squared,
    as many as the pixels of the largest JPEG export."""
    return max_cvt * max_cvt


def cmd_cvt(ctx: Context, cmd: Command) -> None:
    """CVT: a region of the image as one JPEG (or PNG for ``CVT=png``, an extension;
    iipsrv 1.1 sends JPEG for every format), geometry as iipsrv's (``iipy.imaging.region``);
    ``CVT=fits`` (an extension) sends the values themselves (``cvt_fits``)."""
    image = ctx.require_image("")
    if image is None:
        return
    if cmd.arg.lower() == "fits":
        cvt_fits(ctx, image)
        return
    png = cmd.arg.lower() == "png"
    settings = ctx.settings
    grid = image.grid
    sizes = [grid.level_size(k) for k in range(grid.num_resolutions)]
    plan = region.plan(grid.width, grid.height, grid.num_resolutions, ctx.region, ctx.width,
                       ctx.height, settings.max_cvt, settings.allow_upscaling, sizes)
    bilinear = settings.interpolation != 0
    rotation, mirror = ctx.rotation, ctx.mirror

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        t0 = time.perf_counter()
        data = image.pyramid.window(plan.level, x, y, w, h)
        ctx.timings.read += time.perf_counter() - t0
        return data

    def produce() -> Response:
        defaults = image.ranges
        t0 = time.perf_counter()
        read_before = ctx.timings.read
        pixels = render.export(read, plan.source, grid.level_size(plan.level),
                               image.source.channels, (plan.out_w, plan.out_h), ctx.view,
                               defaults, bilinear=bilinear,
                               display_8bit=image.source.display_8bit)
        pixels = render.orient(pixels, rotation, mirror)
        wm = watermark_for(settings)
        if wm is not None:
            wm.apply(pixels, cell=(grid.tile_w, grid.tile_h))
        t1 = time.perf_counter()
        ctx.timings.render += (t1 - t0) - (ctx.timings.read - read_before)
        data = encode.png(pixels) if png else encode.jpeg(pixels, ctx.quality)
        ctx.timings.encode += time.perf_counter() - t1
        return ctx.responder.export(data, image.ref.mtime, name,
                                    "image/png" if png else "image/jpeg")

    name = export_filename(ctx.ref.fif if ctx.ref is not None else image.ref.fif,
                           ".png" if png else ".jpg")
    key = ("CVT", name, image.ref.key, plan.level, plan.source, plan.out_w, plan.out_h,
           ctx.view.key(), None if png else ctx.quality, rotation, mirror, bilinear)
    ctx.output = ctx.cached(key, produce)


def cvt_fits(ctx: Context, image: OpenImage) -> None:
    """``CVT=fits``: the region's values as a float32 FITS file (docs/protocol.md §5.6).

    Level and region as for CVT; the level's pixels averaged in integer blocks, never
    interpolated (``region.cutout``); no display modifier, ROT or watermark applies.
    Refused with a 400 for a source without a FITS header, and when the answer would
    hold more than MAX_CVT squared values (a cube of many planes), before anything is
    read."""
    encode_fits = getattr(image.source, "fits_cutout", None)
    if encode_fits is None:
        raise InvalidArgument("CVT :: Error: CVT=fits needs a FITS image")
    settings = ctx.settings
    grid = image.grid
    cut = region.cutout(grid.width, grid.height, grid.num_resolutions, ctx.region, ctx.width,
                        ctx.height, settings.max_cvt, settings.allow_upscaling)
    channels = image.source.channels
    if cut.out_w < 1 or cut.out_h < 1:
        raise InvalidArgument(
            "CVT :: Error: a %dx%d region cannot be binned to at most %d pixels a side "
            "(MAX_CVT)" % (cut.w, cut.h, settings.max_cvt))
    limit = max_fits_values(settings.max_cvt)
    if cut.out_w * cut.out_h * channels > limit:
        raise InvalidArgument(
            "CVT :: Error: %dx%d pixels x %d channels is more than %d values (MAX_CVT "
            "squared): ask for a smaller region (RGN) or size (WID, HEI)"
            % (cut.out_w, cut.out_h, channels, limit))

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        t0 = time.perf_counter()
        data = image.pyramid.window(cut.level, x, y, w, h)
        ctx.timings.read += time.perf_counter() - t0
        return data

    def produce() -> Response:
        t0 = time.perf_counter()
        read_before = ctx.timings.read
        data = cutout.values(read, cut, channels)
        x0, y0 = cut.origin
        body = encode_fits(data, x0, y0, cut.scale)
        ctx.timings.encode += time.perf_counter() - t0 - (ctx.timings.read - read_before)
        return ctx.responder.export(body, image.ref.mtime, name, "application/fits")

    name = fits_filename(ctx.ref.fif if ctx.ref is not None else image.ref.fif)
    key = ("CVT", name, image.ref.key, cut)
    ctx.output = ctx.cached(key, produce)
