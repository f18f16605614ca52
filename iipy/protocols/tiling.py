"""The tile pyramid as the path-like protocols (IIIF, DeepZoom, Zoomify) see it.

``TileGrid`` is the interface of the server's tile grid (``geometry.Grid``): floor
level sizes ``W_k = floor(W / 2^k)`` (at least 1), IIP resolution ``r = R - 1 - k``,
tiles numbered row by row from the top left (docs/protocol.md §7).  The protocol
modules only read it, so they do not depend on where the grid is implemented.
"""

from __future__ import annotations

from typing import Protocol


class TileGrid(Protocol):
    """Sizes of an image's pyramid and its tile grid."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def tile_w(self) -> int: ...

    @property
    def tile_h(self) -> int: ...

    @property
    def num_resolutions(self) -> int: ...

    def level_size(self, k: int) -> tuple[int, int]: ...

    def tiles_across(self, k: int) -> tuple[int, int]: ...


def resolution_sizes(grid: TileGrid) -> list[tuple[int, int]]:
    """(w, h) of IIP resolutions 0 (smallest) .. R - 1 (full size)."""
    n = grid.num_resolutions
    return [grid.level_size(n - 1 - r) for r in range(n)]


def tile_index(grid: TileGrid, resolution: int, x: int, y: int) -> int | None:
    """The JTL tile number of column ``x``, row ``y`` at IIP resolution ``resolution``,
    or None when the resolution or the tile is outside the pyramid.  (iipsrv computes
    ``y * ntx + x`` without checking ``x``, so a column past the edge names a tile of
    the next row; iipy answers such requests with a 404 instead.)"""
    n = grid.num_resolutions
    if not 0 <= resolution < n:
        return None
    ntx, nty = grid.tiles_across(n - 1 - resolution)
    if not (0 <= x < ntx and 0 <= y < nty):
        return None
    return y * ntx + x
