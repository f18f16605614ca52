"""Floor level sizes, number of resolutions, row-major tile windows with partial edges."""

from __future__ import annotations

import pytest

from iipy.errors import OutOfRange
from iipy.imaging.geometry import Grid, Window, num_resolutions


@pytest.mark.parametrize("w,h,r", [
    (8192, 8192, 6), (1001, 701, 3), (1025, 513, 3), (513, 200, 2), (256, 256, 1),
    (100, 50, 1), (983, 1061, 4), (257, 1, 2), (16384, 16384, 7)])
def test_num_resolutions(w, h, r):
    assert num_resolutions(w, h, 256, 256) == r


def test_resolution_sizes_floor():
    assert Grid(1001, 701, 256, 256).resolution_sizes() == [(250, 175), (500, 350), (1001, 701)]
    assert Grid(1025, 513, 256, 256).resolution_sizes() == [(256, 128), (512, 256), (1025, 513)]
    assert Grid(983, 1061, 256, 256).resolution_sizes() == [
        (122, 132), (245, 265), (491, 530), (983, 1061)]


def test_tile_windows_1001x701():
    g = Grid(1001, 701, 256, 256)
    assert g.tiles_across(0) == (4, 3)
    assert g.tile_window(2, 0) == (0, Window(0, 0, 256, 256))
    assert g.tile_window(2, 3) == (0, Window(768, 0, 233, 256))
    assert g.tile_window(2, 11) == (0, Window(768, 512, 233, 189))
    assert g.tile_window(1, 1) == (1, Window(256, 0, 244, 256))
    assert g.tile_window(0, 0) == (2, Window(0, 0, 250, 175))


def test_tile_grid_1025_matches_client_floor_grid():
    g = Grid(1025, 513, 256, 256)
    # level 1 is 512x256: exactly 2x1 tiles (a ceil pyramid would have 3 columns)
    assert g.tiles_across(1) == (2, 1)
    assert g.tile_window(1, 1) == (1, Window(256, 0, 256, 256))
    with pytest.raises(OutOfRange):
        g.tile_window(1, 2)


@pytest.mark.parametrize("res,tile", [(3, 0), (-1, 0), (2, 12), (0, 1), (2, -1)])
def test_out_of_range(res, tile):
    with pytest.raises(OutOfRange):
        Grid(1001, 701, 256, 256).tile_window(res, tile)


def test_extreme_aspect_keeps_one_pixel():
    g = Grid(5000, 3, 256, 256)
    assert g.num_resolutions == 6
    assert g.resolution_sizes()[0] == (156, 1)


def test_levels_given_by_the_file():
    """A pyramidal TIFF brings its own levels: their number and sizes are the file's
    (here ceil halving and a pyramid that stops early), never recomputed."""
    sizes = ((1001, 701), (501, 351), (251, 176))
    g = Grid(1001, 701, 256, 256, sizes)
    assert g.num_resolutions == 3
    assert g.resolution_sizes() == [(251, 176), (501, 351), (1001, 701)]
    assert g.tiles_across(1) == (2, 2)
    assert g.tile_window(1, 3) == (1, Window(256, 256, 245, 95))
    assert g.tile_window(0, 0) == (2, Window(0, 0, 251, 176))
    with pytest.raises(OutOfRange):
        g.tile_window(3, 0)
    # one level only: a single resolution however large the image
    single = Grid(2000, 1000, 512, 512, ((2000, 1000),))
    assert single.num_resolutions == 1 and single.tiles_across(0) == (4, 2)
    # tiles of another size than 256, not square
    odd = Grid(700, 500, 128, 64, ((700, 500), (350, 250)))
    assert odd.tiles_across(0) == (6, 8) and odd.tile_window(1, 47) == (0, Window(640, 448, 60, 52))
    assert odd.tile_window(0, 11) == (1, Window(256, 192, 94, 58))
    with pytest.raises(ValueError):
        Grid(1001, 701, 256, 256, ((1000, 701),))
