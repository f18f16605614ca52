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

from . import encode, kernels, protocol, render
from .errors import (FileNotFound, ImageUnavailable, InternalRequestError, NotModified,
                     UnsupportedObject)
from .geometry import TileOutOfRange
from .images import resolve
from .protocol import Command, IIPRequest
from .response import Responder, Response
from .settings import Settings, atof, atoi
from .store import ImageStore, OpenImage

log = logging.getLogger(__name__)

IIP_SERVER_LINE = "IIP-server:3.65"
OPT_COMM = "IIP-opt-comm:CVT CNT QLT JTL JTLS WID HEI RGN MINMAX SHD CMP INV CTW"
OPT_OBJ = ("IIP-opt-obj:Horizontal-views Vertical-views Tile-size Bits-per-channel "
           "Min-Max-sample-values Resolutions")
#: Largest number of values a PFL answer may hold.
PFL_MAX_VALUES = 1 << 20


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
    """Execute the commands of ``request`` and return its response."""
    for cmd in request.commands:
        handler = HANDLERS.get(cmd.name)
        if handler is None:
            ctx.errors.append(("2 2", cmd.raw_name))
            continue
        handler(ctx, cmd)
        if ctx.output is not None:
            return ctx.output
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
    "horizontal-views": lambda ctx, im: "Horizontal-views:0",
    "vertical-views": lambda ctx, im: "Vertical-views:90",
}


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
    parsed = protocol.minmax(cmd.arg)
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
    ctx.view.ctw.extend(protocol.ctw(cmd.arg))


def cmd_wid(ctx: Context, cmd: Command) -> None:
    ctx.width = atoi(cmd.arg)


def cmd_hei(ctx: Context, cmd: Command) -> None:
    ctx.height = atoi(cmd.arg)


def cmd_rgn(ctx: Context, cmd: Command) -> None:
    region = protocol.rgn(cmd.arg)
    if region is not None:
        ctx.region = region


def cmd_rot(ctx: Context, cmd: Command) -> None:
    ctx.rotation, ctx.mirror = protocol.rot(cmd.arg)


def cmd_ignore(ctx: Context, cmd: Command) -> None:
    """SDS (single files have one view), LYR (JPEG2000 only), ICC (a no-op in iipsrv),
    SHD and COL (accepted; no effect on FITS data yet)."""


# --- JTL -------------------------------------------------------------------------------


def tile_pixels(ctx: Context, image: OpenImage, resolution: int, tile: int) -> np.ndarray:
    if resolution < 0 or tile < 0:
        raise InternalRequestError("negative tile request %d,%d" % (resolution, tile))
    try:
        k, win = image.grid.tile_window(resolution, tile)
    except TileOutOfRange as exc:
        raise FileNotFound(str(exc)) from None
    t0 = time.perf_counter()
    defaults = image.ranges
    src = image.pyramid.window(k, win.x, win.y, win.w, win.h)
    t1 = time.perf_counter()
    pixels = render.render(src, ctx.view, defaults)
    ctx.timings.read += t1 - t0
    ctx.timings.render += time.perf_counter() - t1
    return pixels


def send_tile(ctx: Context, resolution: int, tile: int) -> None:
    image = ctx.require_image("")
    if image is None:
        return

    def produce() -> Response:
        pixels = tile_pixels(ctx, image, resolution, tile)
        t0 = time.perf_counter()
        data = encode.jpeg(pixels, ctx.quality)
        ctx.timings.encode += time.perf_counter() - t0
        return ctx.responder.tile(data, image.ref.mtime)

    key = ("JTL", image.ref.key, resolution, tile, ctx.view.key(), ctx.quality,
           ctx.rotation, ctx.mirror)
    ctx.output = ctx.cached(key, produce)


def cmd_jtl(ctx: Context, cmd: Command) -> None:
    resolution, tile = protocol.int_pair(cmd.arg)
    send_tile(ctx, resolution, tile)


def cmd_jtls(ctx: Context, cmd: Command) -> None:
    parsed = protocol.jtls(cmd.arg)
    if parsed is not None:
        send_tile(ctx, parsed[1], parsed[2])


# --- PFL -------------------------------------------------------------------------------


def cmd_pfl(ctx: Context, cmd: Command) -> None:
    image = ctx.require_image("")
    if image is None:
        return
    parsed = protocol.pfl(cmd.arg)
    if parsed is None:
        raise InternalRequestError("PFL: malformed argument %r" % cmd.arg)
    res, x1, y1, x2, y2 = parsed
    nres = image.grid.num_resolutions
    if not 0 <= res < nres:
        raise InternalRequestError("PFL: resolution %d out of range" % res)
    k = nres - 1 - res
    w, h = image.grid.level_size(k)
    if min(x1, y1, x2, y2) < 0 or max(x1, x2) >= w or max(y1, y2) >= h:
        raise InternalRequestError("PFL: coordinates outside the image")
    if x2 > x1:
        x, y, pw, ph = x1, y1, x2 - x1, 1
    elif y2 > y1:
        x, y, pw, ph = x1, y1, 1, y2 - y1
    else:
        x, y, pw, ph = x1, y1, 1, 1
    channels = image.fits.channels
    if pw * ph * channels > PFL_MAX_VALUES:
        raise InternalRequestError("PFL: too many values")
    if k == 0:
        values = image.fits.values(x, y, pw, ph)  # (C, ph, pw) float64
        as_float = image.fits.is_float
    else:
        values = image.pyramid.window(k, x, y, pw, ph).astype(np.float64)
        as_float = True
    flat = values.reshape(channels, -1).T.ravel()  # pixel-interleaved
    fmt = "%.9f" if as_float else "%g"
    text = ",".join(fmt % v if math.isfinite(v) else "null" for v in flat.tolist())
    body = b'{\n\t"profile": [' + text.encode("ascii") + b"]\n}"
    ctx.output = ctx.responder.document(body, image.ref.mtime, "application/json")


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
    "sds": cmd_ignore,
    "lyr": cmd_ignore,
    "icc": cmd_ignore,
    "shd": cmd_ignore,
    "col": cmd_ignore,
    "jtl": cmd_jtl,
    "jtls": cmd_jtls,
    "pfl": cmd_pfl,
}
