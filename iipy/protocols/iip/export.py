"""CVT: a region of the image as one picture (docs/protocol.md §5.6, §7.5)."""

from __future__ import annotations

import time

import numpy as np

from iipy.imaging import encode, region, render
from iipy.imaging.paths import split_selector, strip_dotdot
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


def cmd_cvt(ctx: Context, cmd: Command) -> None:
    """CVT: a region of the image as one JPEG (or PNG for ``CVT=png``, an extension;
    iipsrv 1.1 sends JPEG for every format), geometry as iipsrv's (``iipy.imaging.region``)."""
    image = ctx.require_image("")
    if image is None:
        return
    png = cmd.arg.lower() == "png"
    settings = ctx.settings
    grid = image.grid
    plan = region.plan(grid.width, grid.height, grid.num_resolutions, ctx.region, ctx.width,
                       ctx.height, settings.max_cvt, settings.allow_upscaling)
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
                               defaults, bilinear=bilinear)
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
