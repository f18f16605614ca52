"""The IIIF Image API, versions 3.0 (the default) and 2.1 (docs/protocol.md §10.3):
the ``IIIF=`` argument parsed into frozen values, the region and size semantics of the
specification resolved against an image into a ``Plan``, the test for a request that is
exactly one pyramid tile, and the ``info.json`` documents.  Pure: no I/O, no numpy.

Request forms (the argument already URL-decoded, identifiers split as iipsrv does):

* ``<id>`` (no ``/``): a redirect (303) to ``<id>/info.json``;
* ``<id>/info.json``: the image information; ``<id>`` is everything before the last ``/``;
* ``<id>/<region>/<size>/<rotation>/<quality>.<format>``: an image; ``<id>`` is
  everything before the last four segments, so it may itself contain ``/``.

The grammar is the specification's: integers are decimal digits only, percentages and
angles digits with at most one ``.``, no signs, no spaces, no exponents.  Keywords
(``full``, ``square``, ``pct:``, ``max``, qualities, formats) are case-insensitive, as in
iipsrv, and a ``?...`` after the format is ignored.  Each parameter has its own check and
its own message.  Statuses, from the specifications:

* 400: anything malformed; a zero or entirely outside region; a size under one pixel;
  unsupported rotations (anything but multiples of 90), qualities and formats (both
  versions say 400 for an unsupported format); in 3.0, a size larger than the region
  without ``^``, and an explicit size beyond maxWidth/maxHeight/maxArea (§4.2).
* 404: in 2.1, an explicit size beyond maxWidth/maxHeight/maxArea (its §7.2).
* 501: upscaling (``^`` in 3.0, any size above the region in 2.1) when ALLOW_UPSCALING
  is off; ``^max`` is then ``max``, and 2.1's ``!w,h`` stays at the region's size.
* ``max`` (and 2.1's ``full``, which iipsrv also reduces to MAX_CVT), ``^max`` and
  ``!w,h`` never exceed the limits: they are scaled to fit them.

So every ``Plan`` has an output of at least 1x1 and at most maxWidth x maxHeight
pixels and maxArea in all; the numbers of a request never size anything else.

Arithmetic is exact (fractions): percentages and proportional sides are rounded half
up, a percentage region's start is rounded and its end too (so tiles requested by
percentage meet without gaps), and it always holds at least one pixel.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Collection, Iterable, Mapping

from iipy.errors import (IIPyError, InvalidArgument, NotImplementedFeature,
                         UnsatisfiableRequest)
from iipy.protocols.tiling import TileGrid

#: Output formats and their media types (the ones iipy can encode).
FORMATS: dict[str, str] = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
}

#: Quality names accepted, per version, and the name each one stands for.
QUALITIES: dict[int, dict[str, str]] = {
    3: {"default": "default", "color": "color", "gray": "gray", "bitonal": "bitonal"},
    2: {"default": "default", "color": "color", "gray": "gray", "bitonal": "bitonal",
        "native": "default", "grey": "gray"},
}

PROTOCOL = "http://iiif.io/api/image"
CONTEXT = "http://iiif.io/api/image/%d/context.json"

#: Longest piece of a request echoed in an error message.
_ECHO = 64
#: Numbers with more digits than this (before the point) all mean "beyond any image".
_MAX_DIGITS = 18
_INT_RE = re.compile(r"[0-9]+")
_DEC_RE = re.compile(r"([0-9]*)(?:\.([0-9]*))?")


# --- errors -----------------------------------------------------------------------------


class IIIFError(IIPyError):
    """A IIIF request that cannot be answered; ``status`` is the HTTP status the
    specification gives it (the error table of ``protocols.http`` maps each subclass
    to the same one) and ``str(exc)`` the short text body."""

    status = "400 Bad Request"

    @property
    def status_code(self) -> int:
        return int(self.status.split()[0])


class IIIFBadRequest(IIIFError, InvalidArgument):
    """Malformed or unsupported parameters (400)."""

    status = "400 Bad Request"


class IIIFNotFound(IIIFError, UnsatisfiableRequest):
    """IIIF 2.1: a size beyond the advertised limits (404, the specification's §7.2)."""

    status = "404 Not Found"


class IIIFNotImplemented(IIIFError, NotImplementedFeature):
    """A valid request for a feature that is switched off: upscaling (501)."""

    status = "501 Not Implemented"


def _echo(text: str) -> str:
    """A piece of the request for a message: cut short, printable ASCII (other
    characters as Python escapes)."""
    cut = text if len(text) <= _ECHO else text[:_ECHO] + "..."
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in cut)


# --- request values ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Region:
    """``kind`` is ``full``, ``square``, ``pixels`` (x, y, w, h in pixels) or ``percent``
    (x, y, w, h in percent of the full image)."""

    kind: str
    x: Fraction = Fraction(0)
    y: Fraction = Fraction(0)
    w: Fraction = Fraction(0)
    h: Fraction = Fraction(0)


@dataclass(frozen=True, slots=True)
class Size:
    """``kind`` is ``max``, ``full`` (2.1), ``w`` (``w,``), ``h`` (``,h``), ``pct``,
    ``wh`` (``w,h``) or ``confined`` (``!w,h``); ``upscale`` is the 3.0 ``^`` prefix."""

    kind: str
    upscale: bool = False
    w: int = 0
    h: int = 0
    pct: Fraction = Fraction(0)


@dataclass(frozen=True, slots=True)
class Rotation:
    degrees: int  # 0, 90, 180 or 270, clockwise
    mirror: bool  # mirrored (left-right) before the rotation


@dataclass(frozen=True, slots=True)
class IIIFRedirect:
    """``IIIF=<id>`` without a slash: answered with a 303 to ``<id>/info.json``."""

    identifier: str


@dataclass(frozen=True, slots=True)
class IIIFInfoRequest:
    identifier: str
    version: int = 3


@dataclass(frozen=True, slots=True)
class IIIFImageRequest:
    identifier: str
    version: int
    region: Region
    size: Size
    rotation: Rotation
    quality: str  # default, color, gray or bitonal
    format: str  # a key of FORMATS


# --- parsing ------------------------------------------------------------------------------


def _integer(text: str, what: str) -> int:
    """Decimal digits only; numbers too long to matter saturate at 10^18."""
    if not _INT_RE.fullmatch(text):
        raise IIIFBadRequest("IIIF: invalid %s: %s" % (what, _echo(text)))
    digits = text.lstrip("0")
    return 10 ** _MAX_DIGITS if len(digits) > _MAX_DIGITS else int(digits or "0")


def _decimal(text: str, what: str) -> Fraction:
    """Digits with at most one ``.`` (``1``, ``0.5``, ``1.``, ``.5``), exactly; beyond 18
    integer digits the value saturates at 10^18 and beyond 18 decimals it is cut."""
    m = _DEC_RE.fullmatch(text)
    if m is None or not (m.group(1) or m.group(2)):
        raise IIIFBadRequest("IIIF: invalid %s: %s" % (what, _echo(text)))
    whole = m.group(1).lstrip("0")
    if len(whole) > _MAX_DIGITS:
        return Fraction(10 ** _MAX_DIGITS)
    frac = (m.group(2) or "")[:_MAX_DIGITS]
    return Fraction(int(whole or "0") * 10 ** len(frac) + int(frac or "0"), 10 ** len(frac))


def parse_region(text: str) -> Region:
    """``full``, ``square``, ``x,y,w,h`` or ``pct:x,y,w,h``."""
    lower = text.lower()
    if lower in ("full", "square"):
        return Region(lower)
    percent = lower.startswith("pct:")
    parts = (text[4:] if percent else text).split(",")
    if len(parts) != 4:
        raise IIIFBadRequest("IIIF: incorrect region format: %s" % _echo(text))
    if percent:
        x, y, w, h = (_decimal(p, "region") for p in parts)
        return Region("percent", x, y, w, h)
    x, y, w, h = (Fraction(_integer(p, "region")) for p in parts)
    return Region("pixels", x, y, w, h)


def parse_size(text: str, version: int) -> Size:
    """3.0: ``[^]max``, ``[^]w,``, ``[^],h``, ``[^]pct:n``, ``[^]w,h``, ``[^]!w,h``;
    2.1: the same without ``^``, plus ``full``."""
    body = text.lower()
    upscale = version >= 3 and body.startswith("^")
    if upscale:
        body = body[1:]
    if body == "max":
        return Size("max", upscale)
    if body == "full" and version < 3:
        return Size("full")
    if body.startswith("pct:"):
        pct = _decimal(body[4:], "size")
        if pct == 0:
            raise IIIFBadRequest("IIIF: invalid size: %s" % _echo(text))
        return Size("pct", upscale, pct=pct)
    confined = body.startswith("!")
    if confined:
        body = body[1:]
    w_text, comma, h_text = body.partition(",")
    if not comma or (confined and not (w_text and h_text)) or not (w_text or h_text):
        raise IIIFBadRequest("IIIF: invalid size: %s" % _echo(text))
    w = _integer(w_text, "size") if w_text else 0
    h = _integer(h_text, "size") if h_text else 0
    if (w_text and w == 0) or (h_text and h == 0):
        raise IIIFBadRequest("IIIF: invalid size: %s" % _echo(text))
    kind = "confined" if confined else "wh" if w_text and h_text else "w" if w_text else "h"
    return Size(kind, upscale, w, h)


def parse_rotation(text: str) -> Rotation:
    """``[!]n`` with n in 0..360; only multiples of 90 are supported (360 is 0)."""
    mirror = text.startswith("!")
    angle = _decimal(text[1:] if mirror else text, "rotation")
    if angle > 360:
        raise IIIFBadRequest("IIIF: rotation out of range: %s" % _echo(text))
    if angle.denominator != 1 or angle.numerator % 90:
        raise IIIFBadRequest("IIIF: currently implemented rotation angles are 0, 90, 180 "
                             "and 270 degrees")
    return Rotation(int(angle) % 360, mirror)


def parse_quality_format(text: str, version: int,
                         formats: Collection[str] = FORMATS) -> tuple[str, str]:
    """``quality.format``: (quality, format).  2.1 allows a missing format (JPEG), as
    iipsrv does; 3.0 requires it."""
    text = text.partition("?")[0].lower()
    quality, dot, fmt = text.rpartition(".")
    if not dot:
        if version >= 3:
            raise IIIFBadRequest("IIIF: the format is missing: %s" % _echo(text))
        quality, fmt = text, "jpg"
    names = QUALITIES[3 if version >= 3 else 2]
    if quality not in names:
        raise IIIFBadRequest("IIIF: unsupported quality: %s" % _echo(quality))
    if fmt not in formats:
        raise IIIFBadRequest("IIIF: unsupported format: %s" % _echo(fmt))
    return names[quality], fmt


def parse(argument: str, version: int = 3, formats: Collection[str] = FORMATS
          ) -> IIIFInfoRequest | IIIFImageRequest | IIIFRedirect:
    """The request named by a (URL-decoded) ``IIIF=`` argument, in IIIF ``version`` 3
    or 2 (2.1).  ``formats`` are the format names the server can encode."""
    if version not in (2, 3):
        raise ValueError("IIIF version must be 2 or 3, not %r" % (version,))
    if "/" not in argument:
        if not argument:
            raise IIIFBadRequest("IIIF: no identifier")
        return IIIFRedirect(argument)
    head, _, last = argument.rpartition("/")
    if last.partition("?")[0] == "info.json":
        if not head:
            raise IIIFBadRequest("IIIF: no identifier")
        return IIIFInfoRequest(head, version)
    parts = argument.rsplit("/", 4)
    if len(parts) < 5:
        raise IIIFBadRequest("IIIF: Not enough parameters: {identifier}/{region}/{size}/"
                             "{rotation}/{quality}.{format}")
    identifier, region, size, rotation, last = parts
    if not identifier:
        raise IIIFBadRequest("IIIF: no identifier")
    quality, fmt = parse_quality_format(last, version, formats)
    return IIIFImageRequest(identifier, version, parse_region(region), parse_size(size, version),
                            parse_rotation(rotation), quality, fmt)


# --- resolving against an image -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What to render: a region of the full-resolution image, scaled to
    ``out_w`` x ``out_h``, then mirrored and rotated, in a quality and a format."""

    region: tuple[int, int, int, int]  # x, y, w, h in full-resolution pixels
    out_w: int  # size after scaling, before rotation
    out_h: int
    rotation: int  # 0, 90, 180 or 270, clockwise
    mirror: bool  # left-right, before the rotation
    quality: str  # default, color, gray or bitonal
    format: str  # a key of FORMATS

    @property
    def size(self) -> tuple[int, int]:
        """The size of the image sent (after the rotation)."""
        if self.rotation in (90, 270):
            return self.out_h, self.out_w
        return self.out_w, self.out_h

    @property
    def colour(self) -> str | None:
        """The colour conversion, in the IIP COL vocabulary: None, ``grey`` or ``binary``."""
        return {"gray": "grey", "bitonal": "binary"}.get(self.quality)

    @property
    def media_type(self) -> str:
        return FORMATS[self.format]


def _half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def region_pixels(region: Region, width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a region in the full image, cropped at its edges."""
    if region.kind == "full":
        return 0, 0, width, height
    if region.kind == "square":
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side, side
    if region.w == 0 or region.h == 0:
        raise IIIFBadRequest("IIIF: the region's width or height is zero")
    if region.kind == "pixels":
        x, y = int(region.x), int(region.y)
        if x >= width or y >= height:
            raise IIIFBadRequest("IIIF: the region is outside the image")
        return x, y, min(int(region.w), width - x), min(int(region.h), height - y)
    if region.x >= 100 or region.y >= 100:
        raise IIIFBadRequest("IIIF: the region is outside the image")

    def axis(start: Fraction, length: Fraction, full: int) -> tuple[int, int]:
        first = min(_half_up(start * full / 100), full - 1)
        end = min(_half_up((start + length) * full / 100), full)
        return first, max(1, end - first)

    x, w = axis(region.x, region.w, width)
    y, h = axis(region.y, region.h, height)
    return x, y, w, h


def _fit_area(w: int, h: int, max_area: int | None) -> tuple[int, int]:
    """Shrink (w, h) until w * h <= max_area, each side at least 1."""
    if max_area is None or w * h <= max_area:
        return w, h
    s = math.sqrt(max_area / (w * h))
    w, h = max(1, math.floor(w * s)), max(1, math.floor(h * s))
    if w * h > max_area:
        if w >= h:
            w = max(1, max_area // h)
        else:
            h = max(1, max_area // w)
    return w, h


def _fit(rw: int, rh: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The region's size scaled to fit in box_w x box_h, aspect kept, sides >= 1."""
    if box_w * rh <= box_h * rw:  # the width binds
        return box_w, max(1, _half_up(Fraction(box_w * rh, rw)))
    return max(1, _half_up(Fraction(box_h * rw, rh))), box_h


def output_size(size: Size, rw: int, rh: int, version: int, max_width: int,
                max_height: int, max_area: int | None, allow_upscaling: bool) -> tuple[int, int]:
    """The size the region (rw x rh pixels) is scaled to, with the specification's
    errors; always 1..max_width x 1..max_height and at most max_area pixels."""
    kind = size.kind
    if kind in ("max", "full"):
        if size.upscale and allow_upscaling:
            box_w, box_h = max_width, max_height
        else:
            box_w, box_h = min(rw, max_width), min(rh, max_height)
        return _fit_area(*_fit(rw, rh, box_w, box_h), max_area)
    if kind == "confined":
        out_w, out_h = _fit(rw, rh, min(size.w, max_width), min(size.h, max_height))
        if out_w > rw or out_h > rh:  # the box is larger than the region both ways
            if size.upscale and not allow_upscaling:
                raise IIIFNotImplemented("IIIF: upscaling is not supported by this server")
            if not allow_upscaling or (version >= 3 and not size.upscale):
                out_w, out_h = rw, rh  # as large as the region, no larger
        return _fit_area(out_w, out_h, max_area)
    if kind == "w":
        out_w, out_h = size.w, _half_up(Fraction(size.w * rh, rw))
    elif kind == "h":
        out_w, out_h = _half_up(Fraction(size.h * rw, rh)), size.h
    elif kind == "pct":
        if size.pct > 100 and version >= 3 and not size.upscale:
            raise IIIFBadRequest("IIIF: a percentage above 100 needs the ^ prefix")
        out_w, out_h = _half_up(rw * size.pct / 100), _half_up(rh * size.pct / 100)
    else:  # wh
        out_w, out_h = size.w, size.h
    if out_w < 1 or out_h < 1:
        raise IIIFBadRequest("IIIF: the requested size is less than one pixel")
    if out_w > rw or out_h > rh:
        if version >= 3 and not size.upscale:
            raise IIIFBadRequest("IIIF: a size larger than the region needs the ^ prefix")
        if not allow_upscaling:
            raise IIIFNotImplemented("IIIF: upscaling is not supported by this server")
    if out_w > max_width or out_h > max_height or (max_area is not None
                                                   and out_w * out_h > max_area):
        error = IIIFBadRequest if version >= 3 else IIIFNotFound
        raise error("IIIF: the requested size %dx%d is above the limits %dx%d"
                    % (out_w, out_h, max_width, max_height)
                    + ("" if max_area is None else " and %d pixels" % max_area))
    return out_w, out_h


def resolve(request: IIIFImageRequest, width: int, height: int, max_width: int,
            max_height: int | None = None, max_area: int | None = None,
            allow_upscaling: bool = True) -> Plan:
    """The plan of an image request on a ``width`` x ``height`` image, within the
    server's limits (maxWidth, maxHeight, maxArea; MAX_CVT for all three in iipy)."""
    if width < 1 or height < 1:
        raise ValueError("image size must be positive")
    if max_height is None:
        max_height = max_width
    if max_width < 1 or max_height < 1 or (max_area is not None and max_area < 1):
        raise ValueError("size limits must be positive")
    region = region_pixels(request.region, width, height)
    out_w, out_h = output_size(request.size, region[2], region[3], request.version, max_width,
                               max_height, max_area, allow_upscaling)
    return Plan(region, out_w, out_h, request.rotation.degrees, request.rotation.mirror,
                request.quality, request.format)


# --- the pyramid ----------------------------------------------------------------------------


def tile_of(plan: Plan, grid: TileGrid) -> tuple[int, int] | None:
    """(IIP resolution, JTL tile number) when the request is exactly one tile of the
    pyramid, else None.

    Exactly one tile: a plain JPEG (no rotation, no mirror, quality default or color)
    whose region starts on the tile grid of a level k and covers that tile (at the
    right and bottom edges the region may run to the image's edge, the fewer than 2^k
    pixels that floor halving drops; a level that floor halving would make 0 pixels
    wide is 1 pixel wide), and whose output size is the tile's real size."""
    if plan.rotation or plan.mirror or plan.quality not in ("default", "color") \
            or plan.format != "jpg":
        return None
    x, y, w, h = plan.region
    n = grid.num_resolutions
    for k in range(n):
        s = 1 << k
        span_w, span_h = grid.tile_w * s, grid.tile_h * s
        if x % span_w or y % span_h:
            continue
        col, row = x // span_w, y // span_h
        ntx, nty = grid.tiles_across(k)
        if col >= ntx or row >= nty:
            continue
        lw, lh = grid.level_size(k)
        tw = min(grid.tile_w, lw - col * grid.tile_w)
        th = min(grid.tile_h, lh - row * grid.tile_h)
        if (plan.out_w, plan.out_h) != (tw, th):
            continue
        if not (w == tw * s or (x + w == grid.width and max(1, w // s) == tw)):
            continue
        if not (h == th * s or (y + h == grid.height and max(1, h // s) == th)):
            continue
        return n - 1 - k, row * ntx + col
    return None


def source_window(plan: Plan, grid: TileGrid) -> tuple[int, tuple[int, int, int, int]]:
    """The level to read a plan's region from and the region in that level's pixels:
    the most reduced level k whose copy of the region still has at least as many
    pixels as the output each way (full resolution if none).  (k, (x, y, w, h))."""
    x, y, w, h = plan.region
    best = 0, plan.region
    for k in range(1, grid.num_resolutions):
        s = 1 << k
        lw, lh = grid.level_size(k)
        x0, y0 = x // s, y // s
        if x0 >= lw or y0 >= lh:  # the region lies in the pixels floor halving drops
            break
        kw = min(lw, -(-(x + w) // s)) - x0
        kh = min(lh, -(-(y + h) // s)) - y0
        if kw < plan.out_w or kh < plan.out_h:
            break
        best = k, (x0, y0, kw, kh)
    return best


# --- version, media type, identifiers ----------------------------------------------------


_ACCEPT_CONTEXT = re.compile(r"http://iiif\.io/api/image/([0-9]+)/context\.json")


def negotiate_version(default: int, accept: str) -> int:
    """The IIIF version asked for in an Accept header (a ``profile`` naming the 2 or 3
    context), else ``default``."""
    m = _ACCEPT_CONTEXT.search(accept or "")
    if m is not None and m.group(1) in ("2", "3"):
        return int(m.group(1))
    return default


def info_content_type(version: int, accept: str = "") -> str:
    """Content-Type of info.json.  3.0: JSON-LD with the context as profile unless only
    plain JSON is accepted; 2.1: plain JSON unless JSON-LD is asked for (its §5.1)."""
    accept = (accept or "").lower()
    if version >= 3:
        if "application/json" in accept and "application/ld+json" not in accept:
            return "application/json"
        return 'application/ld+json;profile="%s"' % (CONTEXT % 3)
    if "application/ld+json" in accept:
        return 'application/ld+json;profile="%s"' % (CONTEXT % 2)
    return "application/json"


def raw_argument(request_string: str) -> str | None:
    """The IIIF command's argument as received (not URL-decoded) in a request string:
    the first ``&``-separated token named ``IIIF`` (any case)."""
    for token in request_string.split("&"):
        key, sep, arg = token.partition("=")
        if sep and key.lower() == "iiif" and arg:
            return arg
    return None


def _uri_safe(text: str) -> str:
    """Spaces, controls and non-ASCII characters percent-encoded (UTF-8), so the
    identifier can go into a header and into JSON as it is."""
    if all("!" <= c <= "~" for c in text):
        return text
    out = []
    for c in text:
        if "!" <= c <= "~":
            out.append(c)
        else:
            try:  # a byte kept by URL decoding, else the character's UTF-8
                raw = c.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate that is not such a byte
                raw = c.encode("utf-8", "surrogatepass")
            out.extend("%%%02X" % b for b in raw)
    return "".join(out)


def _first(value: str) -> str:
    return value.split(",", 1)[0].strip()


def service_id(params: Mapping[str, str], argument: str, base_url: str = "",
               mapped: bool = False) -> str:
    """The image service's identifier (``id`` in 3.0, ``@id`` in 2.1), which the 303
    redirect also points at (plus ``/info.json``).

    ``argument`` is the IIIF argument as received (``raw_argument``); ``mapped`` tells
    that the request came through URI_MAP (REQUEST_URI is then a path and its query is
    not part of the identifier).  In order of precedence: the ``X-IIIF-ID`` request
    header; BASE_URL followed by the argument without ``/info.json``; else the scheme
    (``X-Forwarded-Proto``, else https when HTTPS is set, else http), the host
    (``X-Forwarded-Host``, else the Host header, else SERVER_NAME and SERVER_PORT)
    and REQUEST_URI up to ``/info.json``."""
    override = params.get("HTTP_X_IIIF_ID", "").strip()
    if override:
        return _uri_safe(override.rstrip("/"))
    if base_url:
        ident = argument[: -len("/info.json")] if argument.endswith("/info.json") else argument
        return _uri_safe(base_url + ident)
    proto = _first(params.get("HTTP_X_FORWARDED_PROTO", "")).lower()
    if proto not in ("http", "https"):
        https = params.get("HTTPS", "")
        proto = "https" if https and https.lower() != "off" else "http"
    host = _first(params.get("HTTP_X_FORWARDED_HOST", "")) or params.get("HTTP_HOST", "")
    if not host:
        host = params.get("SERVER_NAME", "localhost")
        port = params.get("SERVER_PORT", "")
        if port and port != ("443" if proto == "https" else "80"):
            host += ":" + port
    uri = params.get("REQUEST_URI", "")
    if not uri:
        script = params.get("SCRIPT_NAME", "")
        query = params.get("QUERY_STRING", "")
        uri = script + ("?" + query if query and not mapped else "")
    if mapped:
        uri = uri.split("?", 1)[0]
    cut = uri.rfind("/info.json")
    if cut != -1:
        uri = uri[:cut]
    return _uri_safe("%s://%s%s" % (proto, host, uri))


#: Longest Location a redirect carries.  The service identifier holds the whole
#: REQUEST_URI, and a header block larger than the web server's buffer for it (nginx's
#: fastcgi_buffer_size: 4 kB by default) makes it answer 502 Bad Gateway instead.
MAX_LOCATION = 2048


def redirect_location(identifier: str) -> str:
    """Location of the 303 answer to ``IIIF=<id>``; a 400 when it would be longer than
    ``MAX_LOCATION`` bytes (no image path is that long)."""
    location = identifier + "/info.json"
    if len(location.encode("utf-8", "surrogateescape")) > MAX_LOCATION:
        raise IIIFBadRequest("IIIF: the identifier is too long (%d bytes) for a redirect"
                             % len(identifier.encode("utf-8", "surrogateescape")))
    return location


# --- info.json ---------------------------------------------------------------------------------


def is_uri(text: str) -> bool:
    """An http(s) URI (what IIIF 3.0's ``rights`` must be)."""
    return re.match(r"https?://[^\s\"<>]+$", text) is not None


def extra_info(text: str) -> dict[str, Any] | None:
    """IIIF_EXTRA_INFO: fields added to every info.json.  Either iipsrv's form, one or
    more ``"key": value`` pairs without braces (``"preferredFormats": ["webp"]``), or a
    JSON object.  None when it is neither (or empty)."""
    text = text.strip()
    if not text:
        return None
    for candidate in (text, "{" + text + "}"):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True)


def level_sizes(grid: TileGrid, max_width: int, max_height: int,
                max_area: int | None) -> list[tuple[int, int]]:
    """The reduced levels (not the full size), smallest first, within the limits."""
    n = grid.num_resolutions
    sizes = [grid.level_size(k) for k in range(n - 1, 0, -1)]
    return [(w, h) for w, h in sizes
            if w <= max_width and h <= max_height and (max_area is None or w * h <= max_area)]


def scale_factors(grid: TileGrid) -> list[int]:
    return [1 << k for k in range(grid.num_resolutions)]


#: The profile of iipsrv 1.1 (level 1), for byte parity with its info.json.
V2_LEVEL1_PROFILE: dict[str, Any] = {
    "level": "level1",
    "formats": ("jpg",),
    "qualities": ("native", "color", "gray", "bitonal"),
    "supports": ("regionByPct", "regionSquare", "sizeByForcedWh", "sizeByWh", "sizeAboveFull",
                 "rotationBy90s", "mirroring"),
}


def info_json_v2(identifier: str, grid: TileGrid, max_width: int, max_height: int | None = None,
                 max_area: int | None = None, *, level: str = "level2",
                 formats: Iterable[str] = ("jpg", "png", "webp", "avif"),
                 qualities: Iterable[str] = ("default", "color", "gray", "bitonal"),
                 supports: Iterable[str] | None = None, upscaling: bool = True,
                 copyright: str = "", extra: Mapping[str, Any] | None = None) -> bytes:
    """IIIF 2.1 info.json in iipsrv 1.1's layout (its exact bytes with
    ``**V2_LEVEL1_PROFILE``), at level 2 by default.

    ``formats``/``qualities``/``supports`` fill the profile object (the supports default
    to the features beyond level 2: square regions, mirroring, and sizes above the full
    size when upscaling is allowed).  COPYRIGHT becomes ``license`` if it is a URI,
    else ``attribution``; ``extra`` (IIIF_EXTRA_INFO) adds fields that are not already
    there.  maxArea is written only when given."""
    if max_height is None:
        max_height = max_width
    if supports is None:
        supports = ["regionSquare", "mirroring"] + (["sizeAboveFull"] if upscaling else [])
    sizes = level_sizes(grid, max_width, max_height, max_area)
    lines = [
        "{",
        '  "@context" : "%s",' % (CONTEXT % 2),
        '  "@id" : %s,' % _json(identifier),
        '  "protocol" : "%s",' % PROTOCOL,
        '  "width" : %d,' % grid.width,
        '  "height" : %d,' % grid.height,
        '  "sizes" : [',
    ]
    if sizes:
        lines.append(",\n".join('     { "width" : %d, "height" : %d }' % wh for wh in sizes))
    lines += [
        "  ],",
        '  "tiles" : [',
        '     { "width" : %d, "height" : %d, "scaleFactors" : [ %s ] }'
        % (grid.tile_w, grid.tile_h, ", ".join(str(f) for f in scale_factors(grid))),
        "  ],",
        '  "profile" : [',
        '     "%s/2/%s.json",' % (PROTOCOL, level),
        '     { "formats" : [ %s ],' % ",".join(_json(f) for f in formats),
        '       "qualities" : [ %s ],' % ",".join(_json(q) for q in qualities),
        '       "supports" : [%s],' % ",".join(_json(s) for s in supports),
        '       "maxWidth" : %d,' % max_width,
        '       "maxHeight" : %d' % max_height + ("," if max_area is not None else ""),
    ]
    if max_area is not None:
        lines.append('       "maxArea" : %d' % max_area)
    lines += ["     }", "  ]"]
    body = "\n".join(lines)
    fields = {"@context", "@id", "protocol", "width", "height", "sizes", "tiles", "profile"}
    tail = []
    if copyright:
        key = "license" if is_uri(copyright) else "attribution"
        tail.append((key, copyright))
        fields.add(key)
    for key, value in (extra or {}).items():
        if key not in fields:
            tail.append((key, value))
            fields.add(key)
    body += "".join(",\n  %s : %s" % (_json(k), _json(v)) for k, v in tail)
    return (body + "\n}").encode("ascii")


def info_json_v3(identifier: str, grid: TileGrid, max_width: int, max_height: int | None = None,
                 max_area: int | None = None, *,
                 formats: Iterable[str] = ("jpg", "png", "webp", "avif"),
                 qualities: Iterable[str] = ("color", "gray", "bitonal"),
                 upscaling: bool = True, copyright: str = "",
                 extra: Mapping[str, Any] | None = None) -> bytes:
    """IIIF 3.0 info.json at level 2: one top-level field per line.

    ``extraFormats`` are the ``formats`` beyond level 2's jpg and png, ``extraQualities``
    the ``qualities`` beyond ``default``; ``extraFeatures`` name what level 2 does not
    include (mirroring, and upscaling when allowed).  COPYRIGHT becomes ``rights`` only
    if it is a URI, as the specification requires; ``extra`` (IIIF_EXTRA_INFO) adds
    fields that are not already there."""
    if max_height is None:
        max_height = max_width
    doc: dict[str, Any] = {
        "@context": CONTEXT % 3,
        "id": identifier,
        "type": "ImageService3",
        "protocol": PROTOCOL,
        "profile": "level2",
        "width": grid.width,
        "height": grid.height,
        "maxWidth": max_width,
        "maxHeight": max_height,
    }
    if max_area is not None:
        doc["maxArea"] = max_area
    doc["sizes"] = [{"width": w, "height": h}
                    for w, h in level_sizes(grid, max_width, max_height, max_area)]
    doc["tiles"] = [{"width": grid.tile_w, "height": grid.tile_h,
                     "scaleFactors": scale_factors(grid)}]
    extra_formats = [f for f in formats if f not in ("jpg", "png")]
    if extra_formats:
        doc["extraFormats"] = extra_formats
    extra_qualities = [q for q in qualities if q != "default"]
    if extra_qualities:
        doc["extraQualities"] = extra_qualities
    doc["extraFeatures"] = ["mirroring"] + (["sizeUpscaling"] if upscaling else [])
    if copyright and is_uri(copyright):
        doc["rights"] = copyright
    for key, value in (extra or {}).items():
        doc.setdefault(key, value)
    lines = ["  %s: %s" % (_json(k), json.dumps(v, ensure_ascii=True, separators=(", ", ": ")))
             for k, v in doc.items()]
    return ("{\n" + ",\n".join(lines) + "\n}").encode("ascii")
