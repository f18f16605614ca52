"""DeepZoom (docs/protocol.md §10.2): the ``DeepZoom=`` argument parsed, the DeepZoom
level mapped to an IIP resolution, and the ``.dzi`` descriptor.  Pure: no I/O.

Two request forms, the argument already URL-decoded:

* ``<image>.dzi``: the descriptor (image = the argument minus ``.dzi``);
* ``<image>_files/<L>/<x>_<y>.<ext>``: one tile (image = everything before the last
  ``_files/``).  ``L`` is the path segment before the file name, ``x`` and ``y`` the
  file name split at its first ``_``; numbers are read with C's ``atoi`` and the
  extension is ignored, as iipsrv does (a name without ``_`` gives its number to both).

DeepZoom counts levels from a 1x1 image: its full-resolution level is
``D = ceil(log2(max(W, H)))``.  The IIP resolution is ``r = L - (D - R) - 1``, clamped
to ``[0, R - 1]``, so every level below the pyramid gets the resolution-0 tile and every
level above it the full-resolution tiles.  The tile is then ``y * ntx + x`` at ``r`` and
answered as JTL.
"""

from __future__ import annotations

from dataclasses import dataclass

from iipy.errors import InvalidArgument, OutOfRange
from iipy.settings import atoi
from iipy.protocols.tiling import TileGrid, tile_index


class DeepZoomError(InvalidArgument):
    """A malformed DeepZoom argument (400)."""

    status = "400 Bad Request"


class DeepZoomTileNotFound(OutOfRange, DeepZoomError):
    """A tile outside the grid of its resolution (404, as JTL answers it)."""

    status = "404 Not Found"


@dataclass(frozen=True, slots=True)
class DeepZoomDescriptor:
    """``<image>.dzi``."""

    image: str


@dataclass(frozen=True, slots=True)
class DeepZoomTile:
    """``<image>_files/<level>/<x>_<y>.<ext>``."""

    image: str
    level: int
    x: int
    y: int


def parse(argument: str) -> DeepZoomDescriptor | DeepZoomTile:
    """The request named by a (URL-decoded) ``DeepZoom=`` argument."""
    if argument.endswith(".dzi"):
        image = argument[:-4]
        if not image:
            raise DeepZoomError("DeepZoom: no image before .dzi")
        return DeepZoomDescriptor(image)
    cut = argument.rfind("_files/")
    if cut <= 0:
        raise DeepZoomError("DeepZoom: expected <image>.dzi or <image>_files/<level>/<x>_<y>.jpg")
    image, rest = argument[:cut], argument[cut + len("_files/"):]
    folder, slash, name = rest.rpartition("/")
    if not slash:
        raise DeepZoomError("DeepZoom: no level in the tile path")
    level = atoi(folder.rpartition("/")[2])
    stem = name.rpartition(".")[0] if "." in name else name
    x_text, sep, y_text = stem.partition("_")
    if not sep:
        y_text = x_text
    return DeepZoomTile(image, level, atoi(x_text), atoi(y_text))


def full_level(width: int, height: int) -> int:
    """DeepZoom's level of the full image: ``ceil(log2(max(W, H)))`` (0 for 1x1)."""
    return (max(width, height, 1) - 1).bit_length()


def resolution(level: int, grid: TileGrid) -> int:
    """The IIP resolution that answers DeepZoom level ``level``."""
    n = grid.num_resolutions
    r = level - (full_level(grid.width, grid.height) - n) - 1
    return min(max(r, 0), n - 1)


def tile(request: DeepZoomTile, grid: TileGrid) -> tuple[int, int]:
    """(IIP resolution, JTL tile number) of a tile request."""
    r = resolution(request.level, grid)
    n = tile_index(grid, r, request.x, request.y)
    if n is None:
        raise DeepZoomTileNotFound("DeepZoom: no tile %d_%d at level %d"
                                   % (request.x, request.y, request.level))
    return r, n


def descriptor(grid: TileGrid) -> bytes:
    """The ``.dzi`` body, byte for byte iipsrv 1.1's (square tiles of the grid's width,
    no overlap, JPEG)."""
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
        b'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008"\r\n'
        b'TileSize="%d" Overlap="0" Format="jpg"><Size Width="%d" Height="%d"/></Image>'
        % (grid.tile_w, grid.width, grid.height)
    )
