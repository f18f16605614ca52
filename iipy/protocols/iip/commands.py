"""The IIP commands, executed strictly left to right (iip-protocol.md §3.3, §5).

Modifiers change the request's state; OBJ appends text lines; the first output command
produces the response and ends the request (iipsrv would go on and concatenate a second
HTTP response; no client sends two).  IIP errors are collected and, when the request
ends without output, replace the whole answer.  File and argument errors end the request
at once.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from iipy.imaging import encode
from iipy.imaging import kernels
from iipy.protocols.iip import parser
from iipy.imaging import region
from iipy.imaging import render
from iipy.errors import (BadArgument, FileNotFound, ImageUnavailable, InternalRequestError,
                     NotModified, UnsupportedObject)
from iipy.imaging.geometry import TileOutOfRange
from iipy.imaging.paths import ImageRef, resolve, sequence_ref, split_selector, strip_dotdot
from iipy.protocols.iip.parser import Command, IIPRequest
from iipy.protocols.http import Responder, Response
from iipy.settings import Settings, atof, atoi
from iipy.imaging.store import ImageStore, OpenImage

log = logging.getLogger(__name__)

IIP_SERVER_LINE = "IIP-server:3.65"
OPT_COMM = "IIP-opt-comm:CVT CNT QLT JTL JTLS WID HEI RGN MINMAX SHD CMP INV CTW"
OPT_OBJ = ("IIP-opt-obj:Horizontal-views Vertical-views Tile-size Bits-per-channel "
           "Min-Max-sample-values Resolutions")
#: Largest number of values a PFL answer may hold (pixels x channels x view angles);
#: a longer profile is refused with a 400.
PFL_MAX_VALUES = 1 << 20
#: Largest number of tiles one TIL request may ask for.
TIL_MAX_TILES = 256
#: Largest number of views of an image sequence one PFL or SPECTRA request reads.
MAX_VIEWS = 1024


@dataclass(slots=True)
class Timings:
    """Seconds spent per stage of one request (logged at VERBOSITY >= 2)."""

    read: float = 0.0
    render: float = 0.0
    encode: float = 0.0
    cache_hit: bool = False


class TileCache(Protocol):
    """Where finished responses are kept (see ``iipy.cache``)."""

    def get(self, key: tuple) -> bytes | None: ...

    def set(self, key: tuple, value: bytes) -> None: ...


class NoCache:
    def get(self, key: tuple) -> bytes | None:
        return None

    def set(self, key: tuple, value: bytes) -> None:
        pass


@dataclass(slots=True)
class Context:
    """The state of one request while its commands run."""

    settings: Settings
    responder: Responder
    store: ImageStore
    if_modified_since: float | None = None
    cache: TileCache = field(default_factory=NoCache)
    image: OpenImage | None = None
    ref: ImageRef | None = None  # as resolved by FIF (or SDS, for a sequence)
    view: render.View = field(default_factory=render.View)
    width: int = 0
    height: int = 0
    region: tuple[float, float, float, float] | None = None
    rotation: int = 0
    mirror: bool = False
    protocol_line: bool = False
    lines: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    output: Response | None = None
    timings: Timings = field(default_factory=Timings)

    def require_image(self, argument: str = "") -> OpenImage | None:
        if self.image is None:
            self.errors.append((ImageUnavailable.code, argument))
        return self.image

    def cached(self, key: tuple, produce: Callable[[], Response]) -> Response:
        """The response for ``key`` from the cache, or ``produce()`` stored there.

        ``key`` must hold everything that changes the bytes besides the settings: the
        output command and its arguments, the image identity, the view."""
        raw = self.cache.get(key)
        if raw is not None:
            self.timings.cache_hit = True
            return Response.from_bytes(raw)
        response = produce()
        if response.cacheable:
            self.cache.set(key, response.to_bytes())
        return response

    @property
    def quality(self) -> int:
        q = self.view.quality
        return self.settings.jpeg_quality if q is None else q


def run(request: IIPRequest, ctx: Context) -> Response:
    """Execute the commands of ``request`` and return its response.  As in iipsrv, an
    image-not-set error (1 3) ends the request: later commands are not looked at."""
    for cmd in request.commands:
        handler = HANDLERS.get(cmd.name)
        if handler is None:
            ctx.errors.append(("2 2", cmd.raw_name))
            continue
        handler(ctx, cmd)
        if ctx.output is not None:
            return ctx.output
        if ctx.errors and ctx.errors[-1][0] == ImageUnavailable.code:
            break
    if ctx.errors:
        return ctx.responder.iip_error(ctx.errors)
    if ctx.lines or ctx.protocol_line:
        body = ("IIP:1.0" if ctx.protocol_line else "") + "\r\n" + \
            "".join(line + "\r\n" for line in ctx.lines)
        mtime = ctx.image.ref.mtime if ctx.image is not None else None
        return ctx.responder.obj_text(body.encode("utf-8", "surrogateescape"), mtime)
    return ctx.responder.iip_error([("2 1", request.query)])


# --- FIF -------------------------------------------------------------------------------


def parse_http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def cmd_fif(ctx: Context, cmd: Command) -> None:
    ref = resolve(cmd.arg, ctx.settings)
    if ctx.if_modified_since is not None and ref.mtime <= ctx.if_modified_since:
        raise NotModified()
    ctx.image = ctx.store.open(ref)
    ctx.ref = ref


def _open_angles(ctx: Context, horizontal: int, vertical: int) -> None:
    """Make the file of the current sequence at these view angles the image (SDS,
    JTLS); single files have one view and ignore the angles."""
    ref = ctx.ref
    if ref is None or ref.sequence is None or ref.angles == (horizontal, vertical):
        return
    new = sequence_ref(ref.fif, ref.selector, ref.sequence, horizontal, vertical,
                       ctx.settings)
    ctx.image = ctx.store.open(new)
    ctx.ref = new


def cmd_sds(ctx: Context, cmd: Command) -> None:
    _open_angles(ctx, *parser.sds(cmd.arg))


# --- OBJ -------------------------------------------------------------------------------

_METADATA = {
    # IIP object -> FITS keywords that can supply it, first present wins
    "copyright": ("COPYRIGHT",),
    "title": ("OBJECT", "TITLE"),
    "author": ("AUTHOR", "OBSERVER"),
    "keywords": (),
    "comment": (),
    "last-author": (),
    "rev-number": (),
    "edit-time": (),
    "last-printed": (),
    "create-dtm": ("DATE",),
    "last-save-dtm": (),
    "app-name": ("CREATOR", "SOFTWARE", "PROGRAM"),
}


def metadata_value(image: OpenImage, name: str) -> str:
    if name == "subject":
        return image.fits.subject()
    hdr = image.fits.header
    for key in _METADATA.get(name, ()):
        value = hdr.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def metadata_line(name: str, value: str) -> str:
    """``<name>/<n>:<value>``; iipsrv formats ``/<n>:`` in 8 bytes, so from n = 100000
    on the colon is lost, and iipy reproduces that."""
    n = len(value.encode("utf-8", "surrogateescape"))
    return name + ("/%d:" % n)[:7] + value


def _min_max_line(image: OpenImage) -> str:
    text = "".join(" %.9g  %.9g " % (r.lo, r.hi) for r in image.ranges)
    return "Min-Max-sample-values:" + text[:-1]


def _colorspace_line(image: OpenImage) -> str:
    return "Colorspace,0-%d,0:0 0 1 1 0" % (image.grid.num_resolutions - 1)


def _max_size_line(ctx: Context, image: OpenImage) -> str:
    w, h = image.fits.width, image.fits.height
    if ctx.rotation in (90, 270):
        w, h = h, w
    return "Max-size:%d %d" % (w, h)


def cmd_obj(ctx: Context, cmd: Command) -> None:
    name = cmd.arg.lower()
    if name == "iip,1.0":
        ctx.protocol_line = True
        return
    if name == "iip-server":
        ctx.lines.append(IIP_SERVER_LINE)
        return
    if name == "iip-opt-comm":
        ctx.lines.append(OPT_COMM)
        return
    if name == "iip-opt-obj":
        ctx.lines.append(OPT_OBJ)
        return
    if name in ("dpi", "stack"):  # asked by IIPMooViewer; nothing to say for FITS
        return
    if not (name in _OBJ_LINES or name in _METADATA or name in ("subject", "basic-info",
                                                                "summary-info")
            or "colorspace" in name):
        ctx.errors.append((UnsupportedObject.code, name))
        return
    image = ctx.require_image(name)
    if image is None:
        return
    if name in _OBJ_LINES:
        ctx.lines.append(_OBJ_LINES[name](ctx, image))
    elif "colorspace" in name:
        ctx.lines.append(_colorspace_line(image))
    elif name == "basic-info":
        ctx.lines += [IIP_SERVER_LINE, _max_size_line(ctx, image),
                      "Resolution-number:%d" % image.grid.num_resolutions,
                      _colorspace_line(image)]
    elif name == "summary-info":
        for meta in ("copyright", "subject", "author", "create-dtm", "app-name"):
            value = metadata_value(image, meta)
            if value:
                ctx.lines.append(metadata_line(meta, value))
    else:
        value = metadata_value(image, name)
        if value:
            ctx.lines.append(metadata_line(name, value))


_OBJ_LINES: dict[str, Callable[[Context, OpenImage], str]] = {
    "max-size": _max_size_line,
    "tile-size": lambda ctx, im: "Tile-size:%d %d" % (im.grid.tile_w, im.grid.tile_h),
    "resolution-number": lambda ctx, im: "Resolution-number:%d" % im.grid.num_resolutions,
    "bits-per-channel": lambda ctx, im: "Bits-per-channel:%d" % im.fits.bits_per_channel,
    "min-max-sample-values": lambda ctx, im: _min_max_line(im),
    "resolutions": lambda ctx, im: "Resolutions:" + ",".join(
        "%d %d" % wh for wh in im.grid.resolution_sizes()),
    "horizontal-views": lambda ctx, im: "Horizontal-views:" + " ".join(
        str(a) for a in _views(ctx)[0]),
    "vertical-views": lambda ctx, im: "Vertical-views:" + " ".join(
        str(a) for a in _views(ctx)[1]),
}


def _views(ctx: Context) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(horizontal, vertical) view angles: those of the sequence, or (0,), (90,)."""
    if ctx.ref is not None and ctx.ref.sequence is not None:
        return ctx.ref.sequence.horizontal, ctx.ref.sequence.vertical
    return (0,), (90,)


# --- modifiers -------------------------------------------------------------------------


def cmd_qlt(ctx: Context, cmd: Command) -> None:
    q = atoi(cmd.arg)
    if not 0 <= q <= 100:
        log.info("QLT %d out of range, clamped", q)
    ctx.view.quality = min(100, max(0, q))


def cmd_minmax(ctx: Context, cmd: Command) -> None:
    image = ctx.require_image("")
    if image is None:
        return
    parsed = parser.minmax(cmd.arg)
    if parsed is None:
        return
    channel, lo, hi = parsed
    if 0 <= channel < image.fits.channels:
        ctx.view.minmax[channel] = (lo, hi)


def cmd_cnt(ctx: Context, cmd: Command) -> None:
    ctx.view.contrast = atof(cmd.arg)


def cmd_gam(ctx: Context, cmd: Command) -> None:
    ctx.view.gamma = atof(cmd.arg)


def cmd_cmp(ctx: Context, cmd: Command) -> None:
    ctx.view.cmap = kernels.cmap_code(cmd.arg)


def cmd_inv(ctx: Context, cmd: Command) -> None:
    ctx.view.invert = True


def cmd_ctw(ctx: Context, cmd: Command) -> None:
    ctx.view.ctw.extend(parser.ctw(cmd.arg))


def cmd_wid(ctx: Context, cmd: Command) -> None:
    ctx.width = parser.c_int(cmd.arg)  # a C int: huge values wrap, as in iipsrv


def cmd_hei(ctx: Context, cmd: Command) -> None:
    ctx.height = parser.c_int(cmd.arg)


def cmd_rgn(ctx: Context, cmd: Command) -> None:
    region = parser.rgn(cmd.arg)
    if region is not None:
        ctx.region = region


def cmd_rot(ctx: Context, cmd: Command) -> None:
    ctx.rotation, ctx.mirror = parser.rot(cmd.arg)


def cmd_shd(ctx: Context, cmd: Command) -> None:
    parsed = parser.shd(cmd.arg)
    if parsed is not None:
        ctx.view.shade = parsed


def cmd_col(ctx: Context, cmd: Command) -> None:
    ctx.view.colour = parser.col(cmd.arg)


def cmd_ignore(ctx: Context, cmd: Command) -> None:
    """LYR (JPEG2000 quality layers) and ICC (a no-op in iipsrv): accepted, no effect."""


# --- watermark -------------------------------------------------------------------------

_watermarks: dict[tuple[str, float, float], render.Watermark | None] = {}


def watermark_for(settings: Settings) -> render.Watermark | None:
    """The WATERMARK image of this worker, read on first use (None if unset, unreadable
    or without effect)."""
    if not settings.watermark or settings.watermark_opacity <= 0 or \
            settings.watermark_probability <= 0:
        return None
    key = (settings.watermark, settings.watermark_opacity, settings.watermark_probability)
    if key not in _watermarks:
        try:
            rgba = encode.load_rgba(settings.watermark)
            _watermarks[key] = render.Watermark(rgba, settings.watermark_opacity,
                                                settings.watermark_probability,
                                                encode.resize_rgba)
            log.info("watermark %s loaded (%dx%d)", settings.watermark, rgba.shape[1],
                     rgba.shape[0])
        except Exception as exc:  # any file Pillow cannot read: no watermark, said once
            log.warning("watermark %s not usable: %s", settings.watermark, exc)
            _watermarks[key] = None
    return _watermarks[key]


# --- JTL, JTLS, TIL --------------------------------------------------------------------


def tile_pixels(ctx: Context, image: OpenImage, resolution: int, tile: int) -> np.ndarray:
    """The rendered tile (before rotation), uint8 (h, w) or (h, w, 3)."""
    if resolution < 0 or tile < 0:
        raise InternalRequestError("negative tile request %d,%d" % (resolution, tile))
    try:
        k, win = image.grid.tile_window(resolution, tile)
    except TileOutOfRange as exc:
        raise FileNotFound(str(exc)) from None
    t0 = time.perf_counter()
    defaults = image.ranges
    m = render.shade_margin(ctx.view, image.fits.channels)
    if m:  # SHD gradients: read a border so that tiles join without seams
        lw, lh = image.grid.level_size(k)
        x0, y0 = max(0, win.x - m), max(0, win.y - m)
        x1, y1 = min(lw, win.x + win.w + m), min(lh, win.y + win.h + m)
        src = image.pyramid.window(k, x0, y0, x1 - x0, y1 - y0)
        margin = (win.x - x0, win.y - y0, x1 - win.x - win.w, y1 - win.y - win.h)
    else:
        src = image.pyramid.window(k, win.x, win.y, win.w, win.h)
        margin = (0, 0, 0, 0)
    t1 = time.perf_counter()
    pixels = render.render(src, ctx.view, defaults, margin)
    ctx.timings.read += t1 - t0
    ctx.timings.render += time.perf_counter() - t1
    return pixels


def tile_response(ctx: Context, image: OpenImage, resolution: int, tile: int,
                  rotation: int = 0, mirror: bool = False) -> Response:
    """The JTL answer for one tile (from the cache when it is there): rendered, flipped
    and rotated, watermarked, JPEG-encoded."""
    def produce() -> Response:
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
        _open_angles(ctx, parsed[0], parsed[3])
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
        raise FileNotFound("Asked for non-existent resolution: %d" % resolution)
    ntx, nty = grid.tiles_across(grid.num_resolutions - 1 - resolution)
    for n in (start, end):
        if n >= ntx * nty:
            raise FileNotFound("Asked for non-existent tile: %d" % n)
    (r0, c0), (r1, c1) = divmod(start, ntx), divmod(end, ntx)
    columns = range(min(c0, c1), max(c0, c1) + 1)
    rows = range(r0, r1 + 1)
    if len(columns) * len(rows) > TIL_MAX_TILES:
        raise BadArgument("TIL :: Error: %d tiles requested, at most %d per request"
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


# --- CVT -------------------------------------------------------------------------------


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
                               image.fits.channels, (plan.out_w, plan.out_h), ctx.view,
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


# --- PFL, SPECTRA ----------------------------------------------------------------------


def _values(image: OpenImage, k: int, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, bool]:
    """Stored values of a window at level k: (float64 (C, h, w), whether they print as
    floats).  Full resolution gives the calibrated FITS values (exact for every BITPIX),
    reduced levels the pyramid's float32 means."""
    if k == 0:
        return image.fits.values(x, y, w, h), image.fits.is_float
    return image.pyramid.window(k, x, y, w, h).astype(np.float64), True


def _view_count(ctx: Context) -> int:
    """How many images ``_angle_images`` gives (refused above MAX_VIEWS)."""
    ref = ctx.ref
    if ref is None or ref.sequence is None or len(ref.sequence.horizontal) < 2:
        return 1
    if len(ref.sequence.horizontal) > MAX_VIEWS:
        raise BadArgument("%d views in the sequence, at most %d are read per request"
                          % (len(ref.sequence.horizontal), MAX_VIEWS))
    return len(ref.sequence.horizontal)


def _angle_images(ctx: Context) -> list[tuple[int, OpenImage]]:
    """(horizontal angle, image) of every horizontal view at the current vertical angle
    of a sequence; [(angle, image)] for a single file."""
    ref, image = ctx.ref, ctx.image
    assert image is not None
    if _view_count(ctx) == 1 or ref is None or ref.sequence is None:
        return [(ref.angles[0] if ref is not None else 0, image)]
    out = []
    for h in ref.sequence.horizontal:
        other = sequence_ref(ref.fif, ref.selector, ref.sequence, h, ref.angles[1], ctx.settings)
        out.append((h, ctx.store.open(other)))
    return out


def _format_values(values: np.ndarray, as_float: bool) -> bytes:
    flat = values.reshape(values.shape[0], -1).T.ravel()  # pixel-interleaved
    fmt = "%.9f" if as_float else "%g"
    return ",".join(fmt % v if math.isfinite(v) else "null" for v in flat.tolist()).encode("ascii")


def cmd_pfl(ctx: Context, cmd: Command) -> None:
    """PFL: raw values along a horizontal or vertical line (end exclusive) or at one
    pixel, as iipsrv 1.1 formats them; ``null`` for non-finite values.  A line outside
    the image, or longer than PFL_MAX_VALUES values, is refused with a 400 and a text
    saying why."""
    image = ctx.require_image("")
    if image is None:
        return
    parsed = parser.pfl(cmd.arg)
    if parsed is None:
        raise BadArgument("PFL :: Error: expected PFL=<resolution>:<x1>,<y1>[-<x2>,<y2>]")
    res, x1, y1, x2, y2 = parsed
    nres = image.grid.num_resolutions
    if not 0 <= res < nres:
        raise BadArgument("PFL :: Error: resolution %d outside 0-%d" % (res, nres - 1))
    k = nres - 1 - res
    w, h = image.grid.level_size(k)
    if min(x1, y1, x2, y2) < 0 or max(x1, x2) >= w or max(y1, y2) >= h:
        raise BadArgument("PFL :: Error: line %d,%d-%d,%d outside the %dx%d image at "
                          "resolution %d" % (x1, y1, x2, y2, w, h, res))
    if x2 > x1:
        x, y, pw, ph = x1, y1, x2 - x1, 1
    elif y2 > y1:
        x, y, pw, ph = x1, y1, 1, y2 - y1
    else:
        x, y, pw, ph = x1, y1, 1, 1
    count = pw * ph * image.fits.channels * _view_count(ctx)
    if count > PFL_MAX_VALUES:
        raise BadArgument("PFL :: Error: %d values requested, at most %d"
                          % (count, PFL_MAX_VALUES))
    views = _angle_images(ctx)
    if len(views) == 1:
        body = b'{\n\t"profile": [' + _format_values(*_values(image, k, x, y, pw, ph)) + b"]\n}"
    else:  # sequence: one list per horizontal angle (keys quoted: valid JSON)
        items = [b'\t\t"%d": [' % angle + _format_values(*_values(im, k, x, y, pw, ph)) + b"]"
                 for angle, im in views]
        body = b'{\n\t"profile": {\n' + b",\n".join(items) + b"\n\t}\n}"
    ctx.output = ctx.responder.document(body, image.ref.mtime, "application/json")


def cmd_spectra(ctx: Context, cmd: Command) -> None:
    """SPECTRA: the values of one pixel, given by its position inside a tile, as XML
    ``<point>``s.  A cube gives one point per plane (wavelength = plane index from 0, so
    a one-plane image gives iipsrv's single point at 0); a sequence with several
    horizontal views one point per view (wavelength = angle, value of the first
    channel), as iipsrv does for multispectral sequences.  The value is the stored one
    (calibrated at full resolution, the pyramid's mean below), not divided by 255 or
    65535 as iipsrv does for 8- and 16-bit TIFF samples."""
    image = ctx.require_image("")
    if image is None:
        return
    res, tile, x, y = parser.spectra(cmd.arg)
    if res < 0 or tile < 0:
        raise InternalRequestError("negative SPECTRA request %r" % cmd.arg)
    grid = image.grid
    if not (0 <= x < grid.tile_w and 0 <= y < grid.tile_h):
        raise BadArgument("SPECTRA :: Error: x,y coordinates outside of tile boundaries")
    try:
        k, win = grid.tile_window(res, tile)
    except TileOutOfRange as exc:
        raise FileNotFound(str(exc)) from None
    points = []
    if x < win.w and y < win.h:  # else (a partial edge tile): no point, as iipsrv
        px, py = win.x + x, win.y + y
        views = _angle_images(ctx)
        if len(views) > 1:
            for angle, im in views:
                points.append((angle, float(_values(im, k, px, py, 1, 1)[0][0, 0, 0])))
        else:
            values = _values(image, k, px, py, 1, 1)[0][:, 0, 0]
            points = [(c, float(v)) for c, v in enumerate(values)]
    body = ['<?xml version="1.0" encoding="UTF-8"?>\n<spectra>\n']
    for wavelength, value in points:
        body.append("\t<point>\n\t\t<wavelength>%d</wavelength>\n\t\t<reflectance>%f"
                    "</reflectance>\n\t</point>\n" % (wavelength, value))
    body.append("</spectra>")
    ctx.output = ctx.responder.document("".join(body).encode("ascii"), image.ref.mtime,
                                        "application/xml")


# --- table -----------------------------------------------------------------------------

HANDLERS: dict[str, Callable[[Context, Command], None]] = {
    "fif": cmd_fif,
    "obj": cmd_obj,
    "qlt": cmd_qlt,
    "minmax": cmd_minmax,
    "cnt": cmd_cnt,
    "gam": cmd_gam,
    "cmp": cmd_cmp,
    "inv": cmd_inv,
    "ctw": cmd_ctw,
    "wid": cmd_wid,
    "hei": cmd_hei,
    "rgn": cmd_rgn,
    "rot": cmd_rot,
    "sds": cmd_sds,
    "lyr": cmd_ignore,
    "icc": cmd_ignore,
    "shd": cmd_shd,
    "col": cmd_col,
    "jtl": cmd_jtl,
    "jtls": cmd_jtls,
    "til": cmd_til,
    "cvt": cmd_cvt,
    "pfl": cmd_pfl,
    "spectra": cmd_spectra,
}
