"""DeepZoom and Zoomify: argument parsing, level mapping and descriptor bytes
(docs/protocol.md §10.1, §10.2; the bytes are iipsrv 1.1's for a 1001x701 image with
256x256 tiles)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iipy.imaging.geometry import Grid
from iipy.protocols import deepzoom, zoomify
from iipy.protocols.deepzoom import DeepZoomDescriptor, DeepZoomError, DeepZoomTile
from iipy.protocols.zoomify import ZoomifyDescriptor, ZoomifyError, ZoomifyTile

GRID = Grid(1001, 701, 256, 256)  # R = 3: 250x175, 500x350, 1001x701


@dataclass(frozen=True)
class ListedGrid:
    """A pyramid with explicit level sizes (full size first), as a TIFF may hold
    them, to check the rules that depend on levels smaller than a tile."""

    sizes: tuple[tuple[int, int], ...]
    tile_w: int = 256
    tile_h: int = 256

    @property
    def width(self) -> int:
        return self.sizes[0][0]

    @property
    def height(self) -> int:
        return self.sizes[0][1]

    @property
    def num_resolutions(self) -> int:
        return len(self.sizes)

    def level_size(self, k: int) -> tuple[int, int]:
        return self.sizes[k]

    def tiles_across(self, k: int) -> tuple[int, int]:
        w, h = self.sizes[k]
        return -(-w // self.tile_w), -(-h // self.tile_h)


DEEP = ListedGrid(((1001, 701), (500, 350), (250, 175), (125, 87), (62, 43)))


def status(exc: pytest.ExceptionInfo | Exception) -> int:
    error = exc.value if isinstance(exc, pytest.ExceptionInfo) else exc
    return int(error.status.split()[0])


# --- DeepZoom --------------------------------------------------------------------------------


def test_dzi_bytes_are_iipsrv_11():
    assert deepzoom.descriptor(GRID) == (
        b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
        b'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008"\r\n'
        b'TileSize="256" Overlap="0" Format="jpg"><Size Width="1001" Height="701"/></Image>')


@pytest.mark.parametrize("argument,expected", [
    ("grey.fits.dzi", DeepZoomDescriptor("grey.fits")),
    ("dir/sub/grey.fits.dzi", DeepZoomDescriptor("dir/sub/grey.fits")),
    ("grey.fits_files/10/0_0.jpg", DeepZoomTile("grey.fits", 10, 0, 0)),
    ("grey.fits_files/9/1_0.jpeg", DeepZoomTile("grey.fits", 9, 1, 0)),
    ("dir/grey.fits_files/10/3_2.png", DeepZoomTile("dir/grey.fits", 10, 3, 2)),
    # the last _files/ ends the image path
    ("a_files/b.fits_files/8/0_0.jpg", DeepZoomTile("a_files/b.fits", 8, 0, 0)),
    # numbers with atoi: a trailing junk is ignored, no digits is 0
    ("grey.fits_files/10x/2y_1z.jpg", DeepZoomTile("grey.fits", 10, 2, 1)),
    ("grey.fits_files/abc/_.jpg", DeepZoomTile("grey.fits", 0, 0, 0)),
    ("grey.fits_files/ 7/ 1_ 2.jpg", DeepZoomTile("grey.fits", 7, 1, 2)),
    # a name without '_' gives its number to both x and y; no extension is fine
    ("grey.fits_files/10/3.jpg", DeepZoomTile("grey.fits", 10, 3, 3)),
    ("grey.fits_files/10/1_2", DeepZoomTile("grey.fits", 10, 1, 2)),
    # the level is the segment just before the file name
    ("grey.fits_files/x/10/1_2.jpg", DeepZoomTile("grey.fits", 10, 1, 2)),
    ("grey.fits_files/-3/-1_-2.jpg", DeepZoomTile("grey.fits", -3, -1, -2)),
])
def test_deepzoom_parse(argument, expected):
    assert deepzoom.parse(argument) == expected


@pytest.mark.parametrize("argument", [
    "grey.fits", ".dzi", "grey.fits_files/1_2.jpg", "_files/10/0_0.jpg", "", "/",
    "grey.fits_files", "grey.fits_files/"])
def test_deepzoom_malformed_is_400(argument):
    with pytest.raises(DeepZoomError) as exc:
        deepzoom.parse(argument)
    assert status(exc) == 400


def test_deepzoom_full_level():
    assert deepzoom.full_level(1001, 701) == 10
    assert deepzoom.full_level(1024, 1024) == 10
    assert deepzoom.full_level(1025, 3) == 11
    assert deepzoom.full_level(1, 1) == 0
    assert deepzoom.full_level(2, 1) == 1
    assert deepzoom.full_level(3, 701) == 10


@pytest.mark.parametrize("level,resolution", [
    (10, 2), (9, 1), (8, 0), (7, 0), (0, 0), (-5, 0), (11, 2), (40, 2), (10 ** 30, 2)])
def test_deepzoom_level_mapping_1001x701(level, resolution):
    assert deepzoom.resolution(level, GRID) == resolution


def test_deepzoom_level_mapping_deeper_pyramid():
    # D = 10, R = 5: level 10 is resolution 4, level 6 resolution 0
    assert [deepzoom.resolution(L, DEEP) for L in (10, 9, 8, 7, 6, 5)] == [4, 3, 2, 1, 0, 0]


@pytest.mark.parametrize("argument,answer", [
    ("g_files/10/0_0.jpg", (2, 0)),
    ("g_files/10/3_2.jpg", (2, 11)),
    ("g_files/10/1_1.jpg", (2, 5)),
    ("g_files/9/1_1.jpg", (1, 3)),
    ("g_files/8/0_0.jpg", (0, 0)),
    ("g_files/0/0_0.jpg", (0, 0)),
])
def test_deepzoom_tile(argument, answer):
    assert deepzoom.tile(deepzoom.parse(argument), GRID) == answer


@pytest.mark.parametrize("argument", [
    "g_files/10/4_0.jpg",  # iipsrv would wrap to the next row; iipy answers 404
    "g_files/10/0_3.jpg", "g_files/8/1_0.jpg", "g_files/10/-1_0.jpg", "g_files/10/0_-1.jpg",
    "g_files/10/99999999999999999999_0.jpg"])
def test_deepzoom_tile_out_of_range_is_404(argument):
    with pytest.raises(DeepZoomError) as exc:
        deepzoom.tile(deepzoom.parse(argument), GRID)
    assert status(exc) == 404


# --- Zoomify ---------------------------------------------------------------------------------


def test_image_properties_bytes_are_iipsrv_11():
    assert zoomify.descriptor(GRID) == (
        b'<IMAGE_PROPERTIES WIDTH="1001" HEIGHT="701" NUMTILES="12" NUMIMAGES="1" '
        b'VERSION="1.8" TILESIZE="256" />')


def test_numtiles_uses_the_tile_width_both_ways():
    # R11 counts full-resolution tiles only, with the tile width for the height too
    assert zoomify.num_tiles(Grid(1001, 701, 256, 128)) == 4 * 3
    assert zoomify.num_tiles(Grid(256, 256, 256, 256)) == 1
    assert zoomify.num_tiles(Grid(257, 1, 256, 256)) == 2


@pytest.mark.parametrize("argument,expected", [
    ("grey.fits/ImageProperties.xml", ZoomifyDescriptor("grey.fits")),
    ("dir/sub/grey.fits/ImageProperties.xml", ZoomifyDescriptor("dir/sub/grey.fits")),
    ("grey.fits/TileGroup0/2-3-2.jpg", ZoomifyTile("grey.fits", 2, 3, 2)),
    ("dir/grey.fits/TileGroup12/0-0-0.jpg", ZoomifyTile("dir/grey.fits", 0, 0, 0)),
    # the group number is ignored, even when it is not a number
    ("grey.fits/TileGroupX/1-1-0.jpg", ZoomifyTile("grey.fits", 1, 1, 0)),
    # atoi fields; a missing field is 0; the extension is ignored
    ("grey.fits/TileGroup0/2-3.jpg", ZoomifyTile("grey.fits", 2, 3, 0)),
    ("grey.fits/TileGroup0/2.jpg", ZoomifyTile("grey.fits", 2, 0, 0)),
    ("grey.fits/TileGroup0/2a-1b-1c.png", ZoomifyTile("grey.fits", 2, 1, 1)),
    ("grey.fits/TileGroup0/x-y-z", ZoomifyTile("grey.fits", 0, 0, 0)),
])
def test_zoomify_parse(argument, expected):
    assert zoomify.parse(argument) == expected


@pytest.mark.parametrize("argument", [
    "ImageProperties.xml", "/ImageProperties.xml", "grey.fits", "grey.fits/0-0-0.jpg",
    "TileGroup0/0-0-0.jpg", "grey.fits/Tiles0/0-0-0.jpg", "", "/"])
def test_zoomify_malformed_is_400(argument):
    with pytest.raises(ZoomifyError) as exc:
        zoomify.parse(argument)
    assert status(exc) == 400


@pytest.mark.parametrize("argument,answer", [
    ("g/TileGroup5/2-3-2.jpg", (2, 11)),  # the group does not matter (iipsrv 1.1)
    ("g/TileGroup0/2-3-2.jpg", (2, 11)),
    ("g/TileGroup0/0-0-0.jpg", (0, 0)),
    ("g/TileGroup0/1-1-1.jpg", (1, 3)),
])
def test_zoomify_tile(argument, answer):
    assert zoomify.skipped_levels(GRID) == 0
    assert zoomify.tile(zoomify.parse(argument), GRID) == answer


def test_zoomify_skips_all_but_the_largest_level_inside_one_tile():
    # 250x175, 125x87 and 62x43 are smaller than a tile: two are skipped
    assert zoomify.skipped_levels(DEEP) == 2
    assert zoomify.tile(ZoomifyTile("g", 0, 0, 0), DEEP) == (2, 0)
    assert zoomify.tile(ZoomifyTile("g", 2, 3, 2), DEEP) == (4, 11)
    with pytest.raises(ZoomifyError):
        zoomify.tile(ZoomifyTile("g", 3, 0, 0), DEEP)


@pytest.mark.parametrize("tile", [
    ZoomifyTile("g", 3, 0, 0), ZoomifyTile("g", -1, 0, 0), ZoomifyTile("g", 2, 4, 0),
    ZoomifyTile("g", 2, 0, 3), ZoomifyTile("g", 0, 1, 0), ZoomifyTile("g", 2, -1, 0)])
def test_zoomify_tile_out_of_range_is_404(tile):
    with pytest.raises(ZoomifyError) as exc:
        zoomify.tile(tile, GRID)
    assert status(exc) == 404


# --- properties --------------------------------------------------------------------------------

PATHLIKE = st.text(alphabet=st.sampled_from(list("ab_/.-0123456789xTileGroupdzi%\x00 é")),
                   max_size=40)
GRIDS = st.builds(Grid, st.integers(1, 5000), st.integers(1, 5000),
                  st.sampled_from([1, 16, 256, 512]), st.sampled_from([1, 16, 256, 512]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), PATHLIKE))
def test_deepzoom_parse_raises_only_its_error(argument):
    try:
        request = deepzoom.parse(argument)
    except DeepZoomError as exc:
        assert status(exc) == 400
        return
    assert request.image


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), PATHLIKE))
def test_zoomify_parse_raises_only_its_error(argument):
    try:
        request = zoomify.parse(argument)
    except ZoomifyError as exc:
        assert status(exc) == 400
        return
    assert request.image


@settings(max_examples=300, deadline=None)
@given(GRIDS, st.integers(-3, 20), st.integers(-2, 30), st.integers(-2, 30))
def test_deepzoom_tiles_are_in_the_grid(grid, level, x, y):
    try:
        r, n = deepzoom.tile(DeepZoomTile("g", level, x, y), grid)
    except DeepZoomError as exc:
        assert status(exc) == 404
        return
    k, window = grid.tile_window(r, n)  # never raises for what tile() returns
    assert (window.x, window.y) == (x * grid.tile_w, y * grid.tile_h)


@settings(max_examples=300, deadline=None)
@given(GRIDS, st.integers(-3, 20), st.integers(-2, 30), st.integers(-2, 30))
def test_zoomify_tiles_are_in_the_grid(grid, level, x, y):
    try:
        r, n = zoomify.tile(ZoomifyTile("g", level, x, y), grid)
    except ZoomifyError as exc:
        assert status(exc) == 404
        return
    k, window = grid.tile_window(r, n)
    assert (window.x, window.y) == (x * grid.tile_w, y * grid.tile_h)
    assert r == level + zoomify.skipped_levels(grid)
    if grid.tile_w == grid.tile_h:  # the pyramid stops at the first level inside a tile
        assert r == level
