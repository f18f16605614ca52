"""Zoomify (docs/protocol.md §10.1): the ``Zoomify=`` argument parsed, the Zoomify
level mapped to an IIP resolution, and the ``ImageProperties.xml`` descriptor.  Pure:
no I/O.

Two request forms, the argument already URL-decoded:

* ``<image>/ImageProperties.xml``: the descriptor (image = before the last ``/``);
* ``<image>/TileGroup<g>/<z>-<x>-<y>.jpg``: one tile.  The group number is ignored;
  ``z``, ``x`` and ``y`` are the ``-``-separated fields of the file name read with C's
  ``atoi`` (a missing field is 0; the extension is ignored), as iipsrv does.

Zoomify's level 0 is the largest level that fits in one tile.  iipsrv counts the
resolutions whose width and height are both smaller than the tile width, and skips all
but the largest of them: IIP resolution = z + skipped (0 skipped for iipy's pyramids,
which stop at the first level that fits in a tile).  The tile is then ``y * ntx + x`` at
that resolution and answered as JTL.
"""

from __future__ import annotations

from dataclasses import dataclass

from iipy.errors import InvalidArgument, OutOfRange
from iipy.settings import atoi
from iipy.protocols.tiling import TileGrid, resolution_sizes, tile_index


class ZoomifyError(InvalidArgument):
    """A malformed Zoomify argument (400)."""

    status = "400 Bad Request"


class ZoomifyTileNotFound(OutOfRange, ZoomifyError):
    """A level or tile outside the pyramid (404, as JTL answers it)."""

    status = "404 Not Found"


@dataclass(frozen=True, slots=True)
class ZoomifyDescriptor:
    """``<image>/ImageProperties.xml``."""

    image: str


@dataclass(frozen=True, slots=True)
class ZoomifyTile:
    """``<image>/TileGroup<group>/<level>-<x>-<y>.jpg``."""

    image: str
    level: int
    x: int
    y: int


def parse(argument: str) -> ZoomifyDescriptor | ZoomifyTile:
    """The request named by a (URL-decoded) ``Zoomify=`` argument."""
    head, slash, name = argument.rpartition("/")
    if not slash or not head:
        raise ZoomifyError("Zoomify: expected <image>/ImageProperties.xml or "
                           "<image>/TileGroup<g>/<z>-<x>-<y>.jpg")
    if name == "ImageProperties.xml":
        return ZoomifyDescriptor(head)
    image, slash, group = head.rpartition("/")
    if not slash or not image or not group.startswith("TileGroup"):
        raise ZoomifyError("Zoomify: tiles are <image>/TileGroup<g>/<z>-<x>-<y>.jpg")
    fields = (name.split("-") + ["", "", ""])[:3]
    level, x, y = (atoi(f) for f in fields)
    return ZoomifyTile(image, level, x, y)


def skipped_levels(grid: TileGrid) -> int:
    """The resolutions below Zoomify's level 0: all but the largest of those smaller
    than the tile width both ways."""
    small = sum(1 for w, h in resolution_sizes(grid) if w < grid.tile_w and h < grid.tile_w)
    return max(0, small - 1)


def tile(request: ZoomifyTile, grid: TileGrid) -> tuple[int, int]:
    """(IIP resolution, JTL tile number) of a tile request."""
    r = request.level + skipped_levels(grid)
    n = tile_index(grid, r, request.x, request.y)
    if n is None:
        raise ZoomifyTileNotFound("Zoomify: no tile %d-%d-%d"
                                  % (request.level, request.x, request.y))
    return r, n


def num_tiles(grid: TileGrid) -> int:
    """iipsrv 1.1's NUMTILES: the full-resolution tiles, counted with the tile width
    along both axes."""
    t = grid.tile_w
    return -(-grid.width // t) * -(-grid.height // t)


def descriptor(grid: TileGrid) -> bytes:
    """The ``ImageProperties.xml`` body, byte for byte iipsrv 1.1's (no XML
    declaration, no newline)."""
    return (
        b'<IMAGE_PROPERTIES WIDTH="%d" HEIGHT="%d" NUMTILES="%d" NUMIMAGES="1" '
        b'VERSION="1.8" TILESIZE="%d" />' % (grid.width, grid.height, num_tiles(grid), grid.tile_w)
    )
