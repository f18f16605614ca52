"""OBJ: the metadata lines (docs/protocol.md §5.2)."""

from __future__ import annotations

from typing import Callable

from iipy.errors import UnsupportedObject
from iipy.imaging.store import OpenImage
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.parser import Command

IIP_SERVER_LINE = "IIP-server:3.65"


OPT_COMM = "IIP-opt-comm:CVT CNT QLT JTL JTLS WID HEI RGN MINMAX SHD CMP INV CTW"


OPT_OBJ = ("IIP-opt-obj:Horizontal-views Vertical-views Tile-size Bits-per-channel "
           "Min-Max-sample-values Resolutions")


#: The metadata objects (each answered by ``<name>/<n>:<value>`` when the image has one).
METADATA_OBJECTS = frozenset({"copyright", "title", "author", "keywords", "comment", "last-author",
                              "rev-number", "edit-time", "last-printed", "create-dtm",
                              "last-save-dtm", "app-name"})


def metadata_line(name: str, value: str) -> str:
    """``<name>/<n>:<value>``; iipsrv formats ``/<n>:`` in 8 bytes, so from n = 100000
    on the colon is lost, and iipy reproduces that."""
    n = len(value.encode("utf-8", "surrogateescape"))
    return name + ("/%d:" % n)[:7] + value


def _min_max_line(image: OpenImage) -> str:
    text = "".join(" %.9g  %.9g " % (r.lo, r.hi) for r in image.ranges)
    return "Min-Max-sample-values:" + text[:-1]


def _colorspace_line(image: OpenImage) -> str:
    """``Colorspace,0-<R-1>,0:`` + uncalibrated, then 1 plane (grey) or 3 (sRGB) and
    their indexes, as iipsrv 1.1 writes it."""
    planes = "3 3 0 1 2" if image.source.colourspace == "srgb" else "1 1 0"
    return "Colorspace,0-%d,0:0 0 %s" % (image.grid.num_resolutions - 1, planes)


def _max_size_line(ctx: Context, image: OpenImage) -> str:
    w, h = image.source.width, image.source.height
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
    if name in ("dpi", "stack"):  # asked by IIPMooViewer; iipy has nothing to say
        return
    if not (name in _OBJ_LINES or name in METADATA_OBJECTS or name in ("subject", "basic-info",
                                                                "summary-info")
            or "colorspace" in name):
        ctx.errors.append(UnsupportedObject(name))
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
            value = image.source.metadata(meta)
            if value:
                ctx.lines.append(metadata_line(meta, value))
    else:
        value = image.source.metadata(name)
        if value:
            ctx.lines.append(metadata_line(name, value))


_OBJ_LINES: dict[str, Callable[[Context, OpenImage], str]] = {
    "max-size": _max_size_line,
    "tile-size": lambda ctx, im: "Tile-size:%d %d" % (im.grid.tile_w, im.grid.tile_h),
    "resolution-number": lambda ctx, im: "Resolution-number:%d" % im.grid.num_resolutions,
    "bits-per-channel": lambda ctx, im: "Bits-per-channel:%d" % im.source.bits_per_channel,
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
