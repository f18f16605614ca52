"""CVT: a region of the image as one picture (docs/protocol.md §5.6, §7.5), and the
export path it shares with IIIF: render a region at a size, orient, watermark, encode.

iipsrv 1.1 sends JPEG for every CVT argument.  iipy does too, except for its own
extensions (case-insensitive): ``png`` (8 bits), ``png16`` (16 bits per sample when
the output is one channel, see ``render.renders_16bit``; else 8 bits), ``webp`` and
``avif`` (when Pillow can write them); ``fits`` sends the values themselves
(``cvt_fits``).  ``jpeg`` and anything else give JPEG.
"""

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

#: CVT arguments (lower case) that are not JPEG: (format, bits per sample).
CVT_FORMATS: dict[str, tuple[str, int]] = {
    "png": ("png", 8),
    "png16": ("png", 16),
    "webp": ("webp", 8),
    "avif": ("avif", 8),
}


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


def cvt_format(argument: str) -> tuple[str, int]:
    """(format, bits per sample) of a CVT argument: JPEG unless it names an extension
    this installation can write."""
    fmt, depth = CVT_FORMATS.get(argument.strip().lower(), ("jpg", 8))
    if fmt not in encode.FORMATS:
        return "jpg", 8
    return fmt, depth


def encoder_quality(ctx: Context, fmt: str) -> int:
    """The quality setting of an output format: QLT or JPEG_QUALITY for JPEG,
    PNG_QUALITY, WEBP_QUALITY, AVIF_QUALITY."""
    settings = ctx.settings
    if fmt == "png":
        return settings.png_quality
    if fmt == "webp":
        return settings.webp_quality
    if fmt == "avif":
        return settings.avif_quality
    return ctx.quality


def encode_as(ctx: Context, pixels: np.ndarray, fmt: str) -> bytes:
    """Encode rendered pixels in ``fmt`` (a name of ``encode.FORMATS``), timed."""
    t0 = time.perf_counter()
    quality = encoder_quality(ctx, fmt)
    if fmt == "png":
        data = encode.png(pixels, quality)
    elif fmt == "webp":
        data = encode.webp(pixels, quality)
    elif fmt == "avif":
        data = encode.avif(pixels, quality)
    else:
        data = encode.jpeg(pixels, quality)
    ctx.timings.encode += time.perf_counter() - t0
    return data


def export_response(ctx: Context, image: OpenImage, kind: str, level: int,
                    source: tuple[int, int, int, int], out_size: tuple[int, int],
                    view: render.View, rotation: int, mirror: bool, fmt: str, depth: int,
                    filename: str) -> Response:
    """The export answer (from the cache when it is there): the ``source`` window of
    level ``level`` resampled to ``out_size``, rendered with ``view`` (16 bits when
    ``depth`` is 16 and the view allows it), mirrored and rotated, watermarked (one
    draw per tile-sized block) and encoded as ``fmt``, with CVT's headers.  ``kind``
    names the command in the cache key."""
    settings = ctx.settings
    grid = image.grid
    bilinear = settings.interpolation != 0
    display_8bit = image.source.display_8bit
    if depth == 16 and (not render.renders_16bit(view, image.source.channels)
                        or (display_8bit and not render.float_processing(view))):
        depth = 8  # one channel of float processing only; 8-bit samples stay 8 bits

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        t0 = time.perf_counter()
        data = image.pyramid.window(level, x, y, w, h)
        ctx.timings.read += time.perf_counter() - t0
        return data

    def produce() -> Response:
        defaults = image.ranges
        t0 = time.perf_counter()
        read_before = ctx.timings.read
        pixels = render.export(read, source, grid.level_size(level), image.source.channels,
                               out_size, view, defaults, bilinear=bilinear,
                               display_8bit=display_8bit, depth=depth,
                               histogram=image.histogram(view))
        pixels = render.orient(pixels, rotation, mirror)
        wm = watermark_for(settings)
        if wm is not None:
            wm.apply(pixels, cell=(grid.tile_w, grid.tile_h))
        ctx.timings.render += (time.perf_counter() - t0) - (ctx.timings.read - read_before)
        data = encode_as(ctx, pixels, fmt)
        return ctx.responder.export(data, image.ref.mtime, filename, encode.MEDIA_TYPES[fmt])

    key = (kind, filename, image.ref.key, level, source, out_size[0], out_size[1], view.key(),
           fmt, depth, encoder_quality(ctx, fmt), rotation, mirror, bilinear)
    return ctx.cached(key, produce)


def cmd_cvt(ctx: Context, cmd: Command) -> None:
    """CVT: a region of the image as one JPEG (or one of iipy's other formats, see the
    module's docstring), geometry as iipsrv's (``iipy.imaging.region``); ``CVT=fits``
    (an extension) sends the values themselves (``cvt_fits``)."""
    image = ctx.require_image("")
    if image is None:
        return
    if cmd.arg.lower() == "fits":
        cvt_fits(ctx, image)
        return
    fmt, depth = cvt_format(cmd.arg)
    settings = ctx.settings
    grid = image.grid
    sizes = [grid.level_size(k) for k in range(grid.num_resolutions)]
    plan = region.plan(grid.width, grid.height, grid.num_resolutions, ctx.region, ctx.width,
                       ctx.height, settings.max_cvt, settings.allow_upscaling, sizes)
    name = export_filename(ctx.ref.fif if ctx.ref is not None else image.ref.fif, "." + fmt)
    ctx.output = export_response(ctx, image, "CVT", plan.level, plan.source,
                                 (plan.out_w, plan.out_h), ctx.view, ctx.rotation, ctx.mirror,
                                 fmt, depth, name)


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
