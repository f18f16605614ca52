"""CVT geometry (iipy.imaging.region): output sizes as iipsrv 1.1 computes them, the level read
and its bounds.  Every size in SIZES_1001x701 was measured on iipsrv 1.1 serving a
1001x701 pyramidal TIFF (256x256 tiles, levels 1001x701, 500x350, 250x175)."""

from __future__ import annotations

import random

import pytest

from iipy.protocols.iip import parser
from iipy.imaging import region
from iipy.imaging.geometry import num_resolutions


def export_for(query: str, width: int = 1001, height: int = 701, max_cvt: int = 5000,
               upscaling: bool = True) -> region.Export:
    """The plan for the WID/HEI/RGN of ``query`` (parsed as the commands parse them)."""
    rgn, wid, hei = None, 0, 0
    for token in filter(None, query.split("&")):
        key, _, arg = token.partition("=")
        if key == "WID":
            wid = parser.c_int(arg)
        elif key == "HEI":
            hei = parser.c_int(arg)
        elif key == "RGN":
            rgn = parser.rgn(arg) or rgn
    nres = num_resolutions(width, height, 256, 256)
    return region.plan(width, height, nres, rgn, wid, hei, max_cvt, upscaling)


SIZES_1001x701 = {
    "WID=100": (100, 70),
    "HEI=100": (143, 100),
    "WID=100&HEI=100": (100, 70),
    "": (1001, 701),
    "WID=2000": (2000, 1401),
    "WID=6000": (5000, 3501),
    "RGN=0.25,0.25,0.5,0.5&WID=200": (200, 140),
    "RGN=0,0,0.5,0.5": (1001, 701),
    "RGN=-0.1,-0.1,1.2,1.2&WID=500": (500, 350),
    "RGN=0.1,0.2,0.3,0.25&WID=400": (399, 233),
    "WID=-5": (5000, 3500),
    "HEI=-5": (5000, 3500),
    "WID=1&HEI=1": (1, 1),
    "WID=100000000000": (5000, 3501),
    "RGN=0.5,0.5,0.0001,0.0001&WID=100": (100, 100),
    "RGN=0.999,0.999,0.5,0.5&WID=100": (100, 100),
    "RGN=0.5,0.5,0.0001,0.0001": (701, 701),
    "WID=3": (3, 2),
    "HEI=2": (3, 2),
    "WID=64&HEI=5000": (64, 45),
    "RGN=0,0,0.01,1&WID=100": (71, 5000),
    "RGN=0,0,0.01,1&HEI=100": (2, 100),
    "RGN=0.9,0.9,0.2,0.2&WID=100": (100, 70),
    "RGN=0,0,1,0.001&WID=1000": (1000, 1),
    "WID=300": (300, 210),
    "WID=251": (251, 176),
    "WID=250": (250, 175),
    "HEI=176": (251, 176),
    "HEI=175": (250, 175),
    "WID=1000&HEI=701": (1000, 700),
    "WID=1000&HEI=700": (1000, 700),
    "WID=999&HEI=701": (999, 700),
    "WID=1001&HEI=699": (998, 699),
    "WID=1001&HEI=700": (1000, 700),
    "WID=-5&HEI=100": (143, 100),
    "WID=100&HEI=-5": (100, 70),
    "WID=-5&HEI=-5": (5000, 3500),
    "RGN=0,0,1,0.5&WID=-5": (5000, 1760),
}

NO_UPSCALING = {
    "WID=2000": (1001, 701),
    "WID=400": (400, 280),
    "RGN=0,0,0.5,0.5": (1001, 701),
    "RGN=0,0,0.5,0.5&WID=800": (800, 560),
    "RGN=0.25,0.25,0.5,0.5&WID=300": (300, 210),
    "HEI=2000": (1001, 701),
    "WID=-5": (250, 175),
}

MAX_CVT_300 = {
    "": (300, 210),
    "WID=400": (300, 210),
    "RGN=0,0,0.5,0.5": (300, 210),
    "RGN=0,0,0.5,0.5&WID=200": (200, 140),
    "HEI=2000": (300, 210),
}


@pytest.mark.parametrize("query,size", SIZES_1001x701.items(), ids=list(SIZES_1001x701))
def test_output_size_as_iipsrv(query, size):
    e = export_for(query)
    assert (e.out_w, e.out_h) == size


@pytest.mark.parametrize("query,size", NO_UPSCALING.items(), ids=list(NO_UPSCALING))
def test_output_size_without_upscaling(query, size):
    e = export_for(query, upscaling=False)
    assert (e.out_w, e.out_h) == size


@pytest.mark.parametrize("query,size", MAX_CVT_300.items(), ids=list(MAX_CVT_300))
def test_output_size_with_max_cvt_300(query, size):
    e = export_for(query, max_cvt=300)
    assert (e.out_w, e.out_h) == size


def test_region_pixels_as_iipsrv():
    # both measured on iipsrv 1.1 (its log prints the region it reads)
    assert region.region_pixels(1001, 701, 1, (0.25, 0.25, 0.5, 0.5)) == (125, 88, 251, 176)
    assert region.region_pixels(1001, 701, 0, (0.123456789, 0.5, 0.1, 0.2)) == (124, 351, 100, 140)
    # the bottom overflow of h is cut in pixels; a region past the edge keeps 1 pixel
    assert region.region_pixels(1001, 701, 0, (0.9, 0.9, 0.1, 0.2)) == (901, 631, 100, 70)
    assert region.region_pixels(1001, 701, 0, (1.0, 1.0, 0.0, 1.0)) == (1000, 700, 1, 1)


def test_iipsrv_level_choice():
    assert region.choose_level(1001, 701, 3, (0, 0, 1, 1), 300, 0, 5000) == 1
    assert region.choose_level(1001, 701, 3, (0.25, 0.25, 0.5, 0.5), 200, 0, 5000) == 1
    assert region.choose_level(1001, 701, 3, (0, 0, 1, 1), 6000, 0, 5000) == 0
    assert region.choose_level(1001, 701, 3, (0, 0, 1, 1), 100, 0, 5000) == 2
    assert region.choose_level(1001, 701, 3, (0, 0, 1, 1), -5, 0, 5000) == 2  # huge: smallest
    # both given: the finer of the two levels
    assert region.choose_level(1001, 701, 3, (0, 0, 1, 1), 64, 5000, 5000) == 0


def test_view_of_a_large_image_reads_a_reduced_level():
    # 16k x 16k: levels 16384 ... 256 (k = 0 .. 6)
    assert num_resolutions(16384, 16384, 256, 256) == 7
    e = export_for("RGN=0,0,1,1&WID=3000", 16384, 16384)
    assert (e.out_w, e.out_h) == (3000, 3000)
    assert e.level == 2 and (e.w, e.h) == (4096, 4096)  # not the 16k data
    # a VisiOmatic snapshot of part of the image, 1200 screen pixels wide
    e = export_for("RGN=0.3,0.4,0.2,0.1&WID=1200", 16384, 16384)
    assert e.level == 1 and (e.out_w, e.out_h) == (1200, 600)
    assert 1200 <= e.w < 2 * 1200 + 2 and 600 <= e.h < 2 * 600 + 2


def test_thumbnail_comes_from_the_pyramid():
    e = export_for("WID=200", 16384, 16384)
    assert e.level == 6 and (e.w, e.h) == (256, 256) and (e.out_w, e.out_h) == (200, 200)
    e = export_for("", 16384, 16384)  # no size: the full size limited to MAX_CVT
    assert (e.out_w, e.out_h) == (5000, 5000) and e.level == 1


def test_read_level_follows_the_output_not_the_request():
    # iipsrv reads full resolution for HEI=5000 although the output is 10 x 10
    e = export_for("WID=10&HEI=5000", 16384, 16384)
    assert (e.out_w, e.out_h) == (10, 10)
    assert e.level == 6 and e.w <= 256
    # a tall thin region limited by MAX_CVT
    e = export_for("RGN=0,0,0.001,1&WID=100", 100000, 100000)
    assert e.out_h == 5000 and e.h < 2 * 5000 + 2


def test_c_round_and_c_int():
    assert [region.c_round(v) for v in (0.5, 1.5, 2.5, -0.5, 175.5, 0.49999)] == [1, 2, 3, -1, 176, 0]
    assert parser.c_int("100000000000") == 1215752192  # glibc: low 32 bits
    assert parser.c_int("99999999999999999999") == -1  # saturates at LONG_MAX first
    assert parser.c_int("-5") == -5 and parser.c_int("abc") == 0


def test_random_requests_stay_bounded():
    """Whatever the numbers: 1 <= output <= MAX_CVT, the region inside its level, and
    at most about four times the output's pixels read (or the smallest level)."""
    rnd = random.Random(20240601)
    sizes = [1, 2, 3, 255, 256, 257, 1001, 4097, 16384, 100000]
    numbers = [0, 0, 1, 2, 100, 3000, 5000, 6000, -5, -1, 2**31 - 1, -2**31]
    fractions = [0.0, 1.0, 0.5, 1e-9, 1e300, -1e300, float("nan"), float("inf")]
    for _ in range(20000):
        w = rnd.choice(sizes + [rnd.randint(1, 50000)])
        h = rnd.choice(sizes + [rnd.randint(1, 50000)])
        nres = num_resolutions(w, h, 256, 256)
        parts = [rnd.choice(fractions + [rnd.random(), rnd.uniform(-2, 3)]) for _ in range(4)]
        rgn = parser.rgn(",".join(repr(p) for p in parts)) if rnd.random() < 0.8 else None
        wid = rnd.choice(numbers + [rnd.randint(1, 20000)])
        hei = rnd.choice(numbers + [rnd.randint(1, 20000)])
        max_cvt = rnd.choice([64, 300, 5000])
        e = region.plan(w, h, nres, rgn, wid, hei, max_cvt, rnd.random() < 0.7)
        lw, lh = region.level_size(w, h, e.level)
        assert 1 <= e.out_w <= max_cvt and 1 <= e.out_h <= max_cvt
        assert 0 <= e.x and e.w >= 1 and e.x + e.w <= lw
        assert 0 <= e.y and e.h >= 1 and e.y + e.h <= lh
        assert e.level == nres - 1 or e.w * e.h <= 4 * (e.out_w + 2) * (e.out_h + 2)


def test_random_cutouts_stay_bounded():
    """CVT=fits (region.cutout): the region and level of CVT, an integer block factor,
    each side 1..MAX_CVT, never more pixels than the region at its level, never fewer
    than CVT's output unless MAX_CVT forced a larger block."""
    rnd = random.Random(20240602)
    sizes = [1, 2, 3, 255, 256, 257, 1001, 4097, 16384, 100000]
    numbers = [0, 0, 1, 2, 100, 3000, 5000, 6000, -5, -1, 2**31 - 1, -2**31]
    for _ in range(5000):
        w = rnd.choice(sizes + [rnd.randint(1, 50000)])
        h = rnd.choice(sizes + [rnd.randint(1, 50000)])
        nres = num_resolutions(w, h, 256, 256)
        parts = [rnd.choice([0.0, 1.0, 0.5, 1e-9, rnd.random(), rnd.uniform(-2, 3)])
                 for _ in range(4)]
        rgn = parser.rgn(",".join(repr(p) for p in parts)) if rnd.random() < 0.8 else None
        wid = rnd.choice(numbers + [rnd.randint(1, 20000)])
        hei = rnd.choice(numbers + [rnd.randint(1, 20000)])
        max_cvt = rnd.choice([64, 300, 5000])
        e = region.plan(w, h, nres, rgn, wid, hei, max_cvt)
        c = region.cutout(w, h, nres, rgn, wid, hei, max_cvt)
        assert (c.level, c.x, c.y, c.w, c.h) == (e.level, e.x, e.y, e.w, e.h)
        assert c.factor >= 1 and c.scale == c.factor << c.level
        assert (c.out_w, c.out_h) == (c.w // c.factor, c.h // c.factor)
        assert c.out_w <= max_cvt and c.out_h <= max_cvt
        if min(c.w, c.h) * max_cvt < max(c.w, c.h):
            continue  # narrower than one block: refused by CVT (a side is 0)
        assert c.out_w >= 1 and c.out_h >= 1
        if c.factor > 1 and c.w // (max_cvt + 1) + 1 < c.factor and \
                c.h // (max_cvt + 1) + 1 < c.factor:
            assert c.out_w >= e.out_w and c.out_h >= e.out_h
    # the examples of docs/protocol.md §5.6 on a 1001 x 701 image
    nres = num_resolutions(1001, 701, 256, 256)
    assert region.cutout(1001, 701, nres, None, 0, 0, 5000) == \
        region.Cutout(0, 0, 0, 1001, 701, 1, 1001, 701)
    assert region.cutout(1001, 701, nres, (0.25, 0.25, 0.5, 0.5), 0, 0, 5000) == \
        region.Cutout(0, 250, 175, 501, 351, 1, 501, 351)
    assert region.cutout(1001, 701, nres, None, 250, 0, 5000) == \
        region.Cutout(2, 0, 0, 250, 175, 1, 250, 175)
    assert region.cutout(1001, 701, nres, None, 100, 0, 5000) == \
        region.Cutout(2, 0, 0, 250, 175, 2, 125, 87)


def test_levels_of_the_file_bound_the_region():
    """With the file's level sizes (here ceil halving, as some writers store them) the
    level choice and the region's position follow iipsrv's floor arithmetic, and the
    region is cut to the real level, which is what is read."""
    sizes = [(1001, 701), (501, 351), (251, 176)]
    # the whole image is the whole level (iipsrv: no viewport)
    assert region.plan(1001, 701, 3, None, 251, 0, 5000, sizes=sizes) == \
        region.Export(2, 0, 0, 251, 176, 251, 176)
    assert region.plan(1001, 701, 3, (0.0, 0.0, 1.0, 1.0), 250, 0, 5000, sizes=sizes) == \
        region.Export(2, 0, 0, 251, 176, 250, 175)
    # a region: positions and sizes by iipsrv's arithmetic on the full size
    assert region.plan(1001, 701, 3, (0.5, 0.5, 0.5, 0.5), 100, 0, 5000, sizes=sizes) == \
        region.Export(2, 125, 88, 125, 87, 100, 70)
    assert region.region_pixels(1001, 701, 1, (0.5, 0.5, 0.5, 0.5), (501, 351)) == \
        (250, 175, 250, 175)
    # cut to the real level: a level smaller than floor halving says
    assert region.region_pixels(1001, 701, 1, (0.9, 0.9, 0.1, 0.1), (480, 340)) == \
        (450, 315, 30, 25)
    # without upscaling the output is limited by the real level
    e = region.plan(1001, 701, 1, None, 5000, 5000, 5000, False, sizes=[(1001, 701)])
    assert (e.out_w, e.out_h) == (1001, 701)
    # floor sizes given explicitly: the same plan as computed ones
    floor = [(1001, 701), (500, 350), (250, 175)]
    for query in SIZES_1001x701:
        computed = export_for(query)
        rgn, wid, hei = None, 0, 0
        for token in filter(None, query.split("&")):
            key, _, arg = token.partition("=")
            if key == "WID":
                wid = parser.c_int(arg)
            elif key == "HEI":
                hei = parser.c_int(arg)
            elif key == "RGN":
                rgn = parser.rgn(arg) or rgn
        assert region.plan(1001, 701, 3, rgn, wid, hei, 5000, sizes=floor) == computed, query


@pytest.mark.parametrize("query", ["RGN=0,0,1,1e-309", "RGN=0,0,1e-309,1", "RGN=0,0,5e-324,5e-324",
                                   "RGN=0,0,1e-309,1&WID=100", "RGN=0.5,0.5,1e-300,1e-309&HEI=9"])
def test_subnormal_region_fractions(query):
    """A fraction so small that WID / fraction overflows to infinity (it raised
    OverflowError in math.floor: a 500): no level is wide enough, the full resolution
    is read, one pixel of it."""
    p = export_for(query)
    assert p.level == 0 and p.w >= 1 and p.h >= 1
    assert 1 <= p.out_w <= 5000 and 1 <= p.out_h <= 5000
    c = region.cutout(1001, 701, 3, parser.rgn(query.split("&")[0][4:]), 0, 0, 5000)
    assert c.level == 0 and c.factor >= 1
