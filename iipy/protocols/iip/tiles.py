"""JTL, JTLS and TIL: tiles of the pyramid, rendered, oriented, watermarked and encoded
(docs/protocol.md §5.3 to §5.5, §7.3)."""

from __future__ import annotations

import time

import numpy as np

from iipy.errors import InternalRequestError, InvalidArgument, OutOfRange
from iipy.imaging import encode, render
from iipy.imaging.store import OpenImage
from iipy.imaging.watermark import watermark_for
from iipy.protocols.http import Response
from iipy.protocols.iip import parser
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.fif import open_view
from iipy.protocols.iip.parser import Command

#: Largest number of tiles one TIL request may ask for.
TIL_MAX_TILES = 256


def tile_pixels(ctx: Context, image: OpenImage, resolution: int, tile: int) -> np.ndarray:
    """The rendered tile (before rotation), uint8 (h, w) or (h, w, 3)."""
    if resolution < 0 or tile < 0:
        raise InternalRequestError("negative tile request %d,%d" % (resolution, tile))
    k, win = image.grid.tile_window(resolution, tile)
    t0 = time.perf_counter()
    if image.source.display_8bit and not render.float_processing(ctx.view):
        # 8-bit display samples, nothing asked: the samples are the tile (§6.2)
        samples = image.pyramid.samples(k, win.x, win.y, win.w, win.h)
        t1 = time.perf_counter()
        pixels = render.display_pixels(samples, ctx.view.colour)
        ctx.timings.read += t1 - t0
        ctx.timings.render += time.perf_counter() - t1
        return pixels
    defaults = image.ranges
    m = render.shade_margin(ctx.view, image.source.channels)
    if m:  # SHD gradients: read a border so that tiles join without seams
        lw, lh = image.grid.level_size(k)
        x0, y0 = max(0, win.x - m), max(0, win.y - m)
        x1, y1 = min(lw, win.x + win.w + m), min(lh, win.y + win.h + m)
        src = image.pyramid.window(k, x0, y0, x1 - x0, y1 - y0)
        margin = (win.x - x0, win.y - y0, x1 - win.x - win.w, y1 - win.y - win.h)
    else:
        raw = (image.pyramid.raw_window(k, win.x, win.y, win.w, win.h)
               if ctx.view.shade is None else None)
        if raw is not None:  # full resolution: one kernel pass from the raw samples
            t1 = time.perf_counter()
            pixels = render.render_raw(raw, ctx.view, defaults, image.histogram(ctx.view))
            ctx.timings.read += t1 - t0
            ctx.timings.render += time.perf_counter() - t1
            return pixels
        src = image.pyramid.window(k, win.x, win.y, win.w, win.h)
        margin = (0, 0, 0, 0)
    t1 = time.perf_counter()
    pixels = render.render(src, ctx.view, defaults, margin, image.source.display_8bit,
                           image.histogram(ctx.view))
    ctx.timings.read += t1 - t0
    ctx.timings.render += time.perf_counter() - t1
    return pixels


def stored_jpeg(ctx: Context, image: OpenImage, resolution: int, tile: int,
                rotation: int, mirror: bool) -> bytes | None:
    """The tile as the file stores it, when it may be sent without decoding
    (CODEC_PASSTHROUGH, docs/protocol.md §5.3): an 8-bit JPEG tile of a pyramidal TIFF,
    of the full tile size, and a request that asks for no processing at all (no pixel
    modifier, COL, ROT or watermark) at the default quality."""
    settings = ctx.settings
    if not settings.codec_passthrough or rotation or mirror or ctx.view.colour is not None \
            or render.float_processing(ctx.view) or ctx.quality != settings.jpeg_quality \
            or watermark_for(settings) is not None:
        return None
    if resolution < 0 or tile < 0:
        return None
    k, _ = image.grid.tile_window(resolution, tile)
    t0 = time.perf_counter()
    data = image.pyramid.stored_jpeg(k, tile)
    ctx.timings.read += time.perf_counter() - t0
    return data


def tile_response(ctx: Context, image: OpenImage, resolution: int, tile: int,
                  rotation: int = 0, mirror: bool = False) -> Response:
    """The JTL answer for one tile (from the cache when it is there): the stored JPEG
    when it can be passed through, else rendered, flipped and rotated, watermarked,
    JPEG-encoded."""
    def produce() -> Response:
        stored = stored_jpeg(ctx, image, resolution, tile, rotation, mirror)
        if stored is not None:
            return ctx.responder.tile(stored, image.ref.mtime)
        pixels = render.orient(tile_pixels(ctx, image, resolution, tile), rotation, mirror)
        wm = watermark_for(ctx.settings)
        if wm is not None:
            wm.apply(pixels)
        t0 = time.perf_counter()
        data = encode.jpeg(pixels, ctx.quality)
        ctx.timings.encode += time.perf_counter() - t0
        return ctx.responder.tile(data, image.ref.mtime)

    key = ("JTL", image.ref.key, resolution, tile, ctx.view.key(), ctx.quality,
           rotation, mirror)
    return ctx.cached(key, produce)


def send_tile(ctx: Context, resolution: int, tile: int) -> None:
    image = ctx.require_image("")
    if image is None:
        return
    if ctx.rotation == 180 and not ctx.mirror and 0 <= resolution < image.grid.num_resolutions:
        # iipsrv mirrors the tile index for 180 degrees (not for 90 and 270, not for the
        # vertical flip !180), so that the rotated tiles form the rotated image
        ntx, nty = image.grid.tiles_across(image.grid.num_resolutions - 1 - resolution)
        if 0 <= tile < ntx * nty:
            tile = ntx * nty - 1 - tile
    ctx.output = tile_response(ctx, image, resolution, tile, ctx.rotation, ctx.mirror)


def cmd_jtl(ctx: Context, cmd: Command) -> None:
    resolution, tile = parser.int_pair(cmd.arg)
    send_tile(ctx, resolution, tile)


def cmd_jtls(ctx: Context, cmd: Command) -> None:
    parsed = parser.jtls(cmd.arg)
    if parsed is not None:
        open_view(ctx, parsed[0], parsed[3])
        send_tile(ctx, parsed[1], parsed[2])


def cmd_til(ctx: Context, cmd: Command) -> None:
    """TIL: the JPEG tiles of a rectangle of the tile grid in iipsrv's FlashPix framing,
    column by column: ``Tile,<res>,<n>,0/<len + 8>:`` + compression type 2 (JPEG) +
    subtype ``00 11 00 00`` + the JPEG + CRLF.  The tiles are those JTL sends, with the
    same modifiers except ROT."""
    image = ctx.require_image("")
    if image is None:
        return
    resolution, start, end = parser.til(cmd.arg)
    if resolution < 0 or start < 0:
        raise InternalRequestError("negative TIL request %r" % cmd.arg)
    grid = image.grid
    if resolution >= grid.num_resolutions:
        raise OutOfRange("Asked for non-existent resolution: %d" % resolution)
    ntx, nty = grid.tiles_across(grid.num_resolutions - 1 - resolution)
    for n in (start, end):
        if n >= ntx * nty:
            raise OutOfRange("Asked for non-existent tile: %d" % n)
    (r0, c0), (r1, c1) = divmod(start, ntx), divmod(end, ntx)
    columns = range(min(c0, c1), max(c0, c1) + 1)
    rows = range(r0, r1 + 1)
    if len(columns) * len(rows) > TIL_MAX_TILES:
        raise InvalidArgument("TIL :: Error: %d tiles requested, at most %d per request"
                          % (len(columns) * len(rows), TIL_MAX_TILES))
    parts = []
    for col in columns:
        for row in rows:
            n = row * ntx + col
            data = tile_response(ctx, image, resolution, n).body
            parts.append(b"Tile,%d,%d,0/%d:" % (resolution, n, len(data) + 8))
            parts.append(b"\x02\x00\x00\x00\x00\x11\x00\x00")
            parts.append(data)
            parts.append(b"\r\n")
    ctx.output = ctx.responder.document(b"".join(parts), image.ref.mtime,
                                        "application/vnd.netfpx")
