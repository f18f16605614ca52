"""The IIP request syntax: a query string to a frozen ``IIPRequest``, and the
argument grammars of the commands.  Pure: no I/O, no numpy.

The rules are iipsrv's (docs/protocol.md §3): split on ``&`` only, key and argument at
the first ``=``, a token without ``=`` is its own argument (``&INV``), empty keys or
arguments are dropped, names are case-insensitive, only FIF (and the path-like
protocols) are URL-decoded, and numbers are read with C's ``atoi``/``atof``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from iipy.settings import atof, atoi

@dataclass(frozen=True, slots=True)
class Command:
    name: str  # lower case
    raw_name: str  # as sent (error 2 2 echoes it)
    arg: str  # URL-decoded for FIF and the path-like protocols, raw otherwise


@dataclass(frozen=True, slots=True)
class IIPRequest:
    query: str  # the request string as received (error 2 1 echoes it)
    commands: tuple[Command, ...]


_DECODED = frozenset({"fif", "iiif", "zoomify", "deepzoom"})
_HEX = "0123456789abcdefABCDEF"


def url_decode(text: str) -> str:
    """iipsrv's decoder: ``+`` is a space, ``%XY`` a byte, ``%00`` is dropped, a ``%`` not
    followed by two hex digits stays.  The bytes are read as UTF-8 (surrogate escapes
    keep undecodable bytes, so a path round-trips to the file system)."""
    if "%" not in text and "+" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x2B:  # '+'
            out.append(0x20)
            i += 1
        elif c == 0x25 and i + 2 < n and chr(raw[i + 1]) in _HEX and chr(raw[i + 2]) in _HEX:
            byte = int(raw[i + 1 : i + 3], 16)
            if byte != 0:
                out.append(byte)
            i += 3
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "surrogateescape")


def parse(query: str) -> IIPRequest:
    """Split a query string into commands, in order (docs/protocol.md §3.2)."""
    commands = []
    for token in query.split("&"):
        if not token:
            continue
        key, sep, arg = token.partition("=")
        if not sep:
            arg = token
        if not key or not arg:
            continue
        name = key.lower()
        if name in _DECODED:
            arg = url_decode(arg)
        commands.append(Command(name, key, arg))
    return IIPRequest(query, tuple(commands))


#: URI_MAP protocol names (any case) and the command a mapped request gets.
_MAPPED_COMMANDS = {"iip": "fif", "iiif": "iiif", "zoomify": "zoomify", "deepzoom": "deepzoom"}


def uri_mappings(uri_map: str) -> list[tuple[str, str]]:
    """URI_MAP as (prefix without slashes, command) pairs, in order.  iipsrv reads one
    ``prefix=>protocol``; iipy also reads several separated by commas.  Entries without
    ``=>`` or with another protocol are left out."""
    out = []
    for entry in uri_map.split(","):
        prefix, sep, protocol = entry.partition("=>")
        command = _MAPPED_COMMANDS.get(protocol.strip().lower())
        if sep and command is not None:
            out.append((prefix.strip().strip("/"), command))
    return out


def map_uri(request_uri: str, uri_map: str) -> str | None:
    """URI_MAP (``prefix=>protocol``, or several separated by commas): the request
    string for a mapped REQUEST_URI, or None when no mapping applies (docs/protocol.md
    §3.1).  The path must be the prefix or continue it with ``/``; the first mapping
    that matches wins."""
    path = request_uri.split("?", 1)[0]
    for prefix, command in uri_mappings(uri_map):
        lead = "/" + prefix if prefix else ""
        if path == lead or path.startswith(lead + "/"):
            return "%s=%s" % (command, path[len(lead):].lstrip("/"))
    return None


# --- argument grammars ---------------------------------------------------------------


def int_pair(arg: str) -> tuple[int, int]:
    """``a,b`` with atoi; without a comma the whole text gives both (``JTL=1`` is 1,1)."""
    a, sep, b = arg.partition(",")
    if not sep:
        return atoi(arg), atoi(arg)
    return atoi(a), atoi(b)


def jtls(arg: str) -> tuple[int, int, int, int] | None:
    """``h,res,tile,v``: None unless four values are present."""
    parts = arg.split(",")
    if len(parts) < 4:
        return None
    return atoi(parts[0]), atoi(parts[1]), atoi(parts[2]), atoi(parts[3])


def minmax(arg: str) -> tuple[int, float, float] | None:
    """``chan:min,max`` with a 1-based channel: (0-based channel, min, max)."""
    chan, sep, rest = arg.partition(":")
    if not sep:
        return None
    lo, sep, hi = rest.partition(",")
    if not sep:
        return None
    return atoi(chan) - 1, atof(lo), atof(hi)


def ctw(arg: str) -> list[list[float]]:
    """``[r0c0,r0c1;r1c0,...]`` (brackets optional): the rows of the matrix."""
    start, end = arg.find("["), arg.rfind("]")
    if start != -1 and end != -1 and end > start:
        arg = arg[start + 1 : end]
    return [[atof(v) for v in row.split(",")] for row in arg.split(";")]


def rgn(arg: str) -> tuple[float, float, float, float] | None:
    """``x,y,w,h`` fractions, clamped as R11 clamps them; None if ignored."""
    parts = arg.split(",")
    if len(parts) < 4:
        return None
    x, y, w, h = (atof(p) for p in parts[:4])
    if not (w > 0 and h > 0):
        return None
    x = min(x, 1.0) if x > 0.0 else 0.0  # NaN counts as 0
    y = min(y, 1.0) if y > 0.0 else 0.0
    if x + w > 1.0:
        w = 1.0 - x
    w = min(max(w, 0.0), 1.0)
    h = min(max(h, 0.0), 1.0)
    return x, y, w, h


def c_int(arg: str) -> int:
    """``atoi`` as glibc computes it into a C ``int``: the value saturates at the 64-bit
    ``long`` limits, then keeps its low 32 bits (``atoi("4294967301")`` is 5 and
    ``atoi("99999999999999999999")`` is -1).  WID and HEI are read this way."""
    value = max(-(1 << 63), min((1 << 63) - 1, atoi(arg)))
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def rot(arg: str) -> tuple[int, bool]:
    """``[!]angle``: (angle in {0, 90, 180, 270}, mirror).  The integer part of the angle
    is taken modulo 360; angles that are not multiples of 90, infinite, NaN or beyond
    the range of a C ``int`` give 0 (no rotation).  ``!`` mirrors horizontally before
    the rotation (``!180`` is a vertical flip)."""
    mirror = arg.startswith("!")
    angle_f = atof(arg[1:] if mirror else arg)
    if not math.isfinite(angle_f) or abs(angle_f) >= 2.0 ** 31:
        return 0, mirror
    angle = int(angle_f) % 360
    if angle % 90 != 0:
        angle = 0
    return angle, mirror


def shd(arg: str) -> tuple[int, int] | None:
    """``h,v`` (degrees, atoi): azimuth of the light from 12 o'clock and its elevation;
    None unless two values are present."""
    parts = arg.split(",")
    if len(parts) < 2:
        return None
    return atoi(parts[0]), atoi(parts[1])


def sds(arg: str) -> tuple[int, int]:
    """``h[,v]`` view angles (atoi); without a comma the text gives both, as in iipsrv."""
    return int_pair(arg)


def til(arg: str) -> tuple[int, int, int]:
    """``res,start[-end]``: (res, start, end); end defaults to start and is never below
    it.  Without a comma the whole text is both the resolution and the tile."""
    res_text, sep, rest = arg.partition(",")
    if not sep:
        rest = arg
    start_text, dash, end_text = rest.partition("-")
    start = atoi(start_text)
    end = atoi(end_text) if dash else start
    return atoi(res_text), start, max(start, end)


def spectra(arg: str) -> tuple[int, int, int, int]:
    """``res,tile,x,y`` (atoi; a missing value is 0)."""
    parts = (arg.split(",") + ["", "", "", ""])[:4]
    res, tile, x, y = (atoi(p) for p in parts)
    return res, tile, x, y


def col(arg: str) -> str | None:
    """COL: ``grey``/``gray`` (luminance) or ``binary`` (bi-level), case-insensitive;
    anything else gives None (no conversion)."""
    name = arg.strip().lower()
    if name in ("grey", "gray"):
        return "grey"
    if name == "binary":
        return "binary"
    return None


_PFL_RE = re.compile(r"^([^:]*):(.*)$")


def pfl(arg: str) -> tuple[int, int, int, int, int] | None:
    """``res:x1,y1[-x2,y2]``: (res, x1, y1, x2, y2); a single point without ``-``."""
    m = _PFL_RE.match(arg)
    if not m:
        return None
    res = atoi(m.group(1))
    coords = m.group(2)
    dash = coords.find("-", coords.find(",") + 1)  # the separator follows the first pair
    if dash == -1:
        x1, y1 = int_pair(coords)
        x2, y2 = x1, y1
    else:
        x1, y1 = int_pair(coords[:dash])
        x2, y2 = int_pair(coords[dash + 1 :])
    return res, x1, y1, x2, y2
