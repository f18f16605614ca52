"""Resolution levels and the tile grid (docs/protocol.md §7).  Integer math only.

IIP resolution 0 is the smallest image and ``R - 1`` the full one; level ``k`` (number
of halvings) is ``R - 1 - r``.  Computed levels (FITS) use floor halving, as VisiOmatic 2
and Leaflet.TileLayer.IIP compute them from Max-size, and the pyramid stops at the first
level that fits in one tile.  A file that holds its own levels (pyramidal TIFF) gives
their sizes instead: the number of resolutions and every level size are then the file's,
as iipsrv reports them (docs/protocol.md §4.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from iipy.errors import OutOfRange


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of one resolution level, top-left origin."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True, slots=True)
class Grid:
    """The levels of one image and their tile grid.

    ``sizes`` holds the (width, height) of every level, full resolution first, when the
    file stores them; empty, the levels are computed by floor halving."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    sizes: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.sizes and self.sizes[0] != (self.width, self.height):
            raise ValueError("level 0 is %r, not the image size %r"
                             % (self.sizes[0], (self.width, self.height)))

    @property
    def num_resolutions(self) -> int:
        if self.sizes:
            return len(self.sizes)
        return num_resolutions(self.width, self.height, self.tile_w, self.tile_h)

    def level_size(self, k: int) -> tuple[int, int]:
        if self.sizes:
            return self.sizes[k]
        return level_size(self.width, self.height, k)

    def resolution_sizes(self) -> list[tuple[int, int]]:
        """(w, h) for resolutions 0 (smallest) .. R - 1 (full)."""
        n = self.num_resolutions
        return [self.level_size(n - 1 - r) for r in range(n)]

    def tiles_across(self, k: int) -> tuple[int, int]:
        w, h = self.level_size(k)
        return -(-w // self.tile_w), -(-h // self.tile_h)

    def tile_window(self, resolution: int, tile: int) -> tuple[int, Window]:
        """(level k, window) of tile ``tile`` at IIP resolution ``resolution``."""
        n = self.num_resolutions
        if resolution < 0 or resolution >= n:
            raise OutOfRange("Asked for non-existent resolution: %d" % resolution)
        k = n - 1 - resolution
        ntx, nty = self.tiles_across(k)
        if tile < 0 or tile >= ntx * nty:
            raise OutOfRange("Asked for non-existent tile: %d" % tile)
        w, h = self.level_size(k)
        row, col = divmod(tile, ntx)
        x, y = col * self.tile_w, row * self.tile_h
        return k, Window(x, y, min(self.tile_w, w - x), min(self.tile_h, h - y))


def level_size(width: int, height: int, k: int) -> tuple[int, int]:
    """Size of level k (k halvings), floor; at least one pixel each way."""
    return max(1, width >> k), max(1, height >> k)


def num_resolutions(width: int, height: int, tile_w: int, tile_h: int) -> int:
    """1 + the smallest k with floor(W/2^k) <= Tw and floor(H/2^k) <= Th."""
    k = 0
    while (width >> k) > tile_w or (height >> k) > tile_h:
        k += 1
    return k + 1
