"""PFL and SPECTRA: stored pixel values as JSON and XML (docs/protocol.md §5.22, §5.23)."""

from __future__ import annotations

import math

import numpy as np

from iipy.errors import InternalRequestError, InvalidArgument
from iipy.imaging.paths import sequence_ref
from iipy.imaging.store import OpenImage
from iipy.protocols.iip import parser
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.parser import Command

#: Largest number of values a PFL answer may hold (pixels x channels x view angles);
#: a longer profile is refused with a 400.
PFL_MAX_VALUES = 1 << 20


#: Largest number of views of an image sequence one PFL or SPECTRA request reads.
MAX_VIEWS = 1024


def _values(image: OpenImage, k: int, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, bool]:
    """Stored values of a window at level k: (float64 (C, h, w), whether they print as
    floats).  FITS: the calibrated values at full resolution (exact for every BITPIX),
    the pyramid's float32 means below; TIFF: the samples of every level as stored."""
    return image.pyramid.values(k, x, y, w, h)


def _view_count(ctx: Context) -> int:
    """How many images ``_angle_images`` gives (refused above MAX_VIEWS)."""
    ref = ctx.ref
    if ref is None or ref.sequence is None or len(ref.sequence.horizontal) < 2:
        return 1
    if len(ref.sequence.horizontal) > MAX_VIEWS:
        raise InvalidArgument("%d views in the sequence, at most %d are read per request"
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


def _reflectance(value: float, scale: float) -> float:
    """SPECTRA's value: ``value / scale`` kept as a C float, as iipsrv computes it for
    integer TIFF samples; other values unchanged."""
    if scale == 1.0:
        return value
    return float(np.float32(value / scale))


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
        raise InvalidArgument("PFL :: Error: expected PFL=<resolution>:<x1>,<y1>[-<x2>,<y2>]")
    res, x1, y1, x2, y2 = parsed
    nres = image.grid.num_resolutions
    if not 0 <= res < nres:
        raise InvalidArgument("PFL :: Error: resolution %d outside 0-%d" % (res, nres - 1))
    k = nres - 1 - res
    w, h = image.grid.level_size(k)
    if min(x1, y1, x2, y2) < 0 or max(x1, x2) >= w or max(y1, y2) >= h:
        raise InvalidArgument("PFL :: Error: line %d,%d-%d,%d outside the %dx%d image at "
                          "resolution %d" % (x1, y1, x2, y2, w, h, res))
    if x2 > x1:
        x, y, pw, ph = x1, y1, x2 - x1, 1
    elif y2 > y1:
        x, y, pw, ph = x1, y1, 1, y2 - y1
    else:
        x, y, pw, ph = x1, y1, 1, 1
    count = pw * ph * image.source.channels * _view_count(ctx)
    if count > PFL_MAX_VALUES:
        raise InvalidArgument("PFL :: Error: %d values requested, at most %d"
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
    (PFL's), divided as iipsrv divides it for 8- and 16-bit TIFF samples (by 255 and
    65535, rounded to a C float); FITS values are reported as they are."""
    image = ctx.require_image("")
    if image is None:
        return
    res, tile, x, y = parser.spectra(cmd.arg)
    if res < 0 or tile < 0:
        raise InternalRequestError("negative SPECTRA request %r" % cmd.arg)
    grid = image.grid
    if not (0 <= x < grid.tile_w and 0 <= y < grid.tile_h):
        raise InvalidArgument("SPECTRA :: Error: x,y coordinates outside of tile boundaries")
    k, win = grid.tile_window(res, tile)
    points = []
    if x < win.w and y < win.h:  # else (a partial edge tile): no point, as iipsrv
        px, py = win.x + x, win.y + y
        views = _angle_images(ctx)
        if len(views) > 1:
            for angle, im in views:
                value = float(_values(im, k, px, py, 1, 1)[0][0, 0, 0])
                points.append((angle, _reflectance(value, im.source.spectra_scale)))
        else:
            values = _values(image, k, px, py, 1, 1)[0][:, 0, 0]
            scale = image.source.spectra_scale
            points = [(c, _reflectance(float(v), scale)) for c, v in enumerate(values)]
    body = ['<?xml version="1.0" encoding="UTF-8"?>\n<spectra>\n']
    for wavelength, value in points:
        body.append("\t<point>\n\t\t<wavelength>%d</wavelength>\n\t\t<reflectance>%f"
                    "</reflectance>\n\t</point>\n" % (wavelength, value))
    body.append("</spectra>")
    ctx.output = ctx.responder.document("".join(body).encode("ascii"), image.ref.mtime,
                                        "application/xml")
