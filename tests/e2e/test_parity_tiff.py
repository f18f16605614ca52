"""Parity with the reference iipsrv 1.1 on the same tiled pyramidal TIFF files.

Both servers serve one directory of TIFFs written at test time by the tools sites use
(docs/protocol.md §4): STIFF (float32, one and three channels, from the example FITS
files, with the options VisiOmatic 2's documentation gives), vips (8-bit RGB JPEG
pyramids, one with RGB JPEG streams and 256-pixel tiles, one with YCbCr streams and
vips's default 128-pixel tiles; 16-bit deflate), and tifffile (odd, non-square tiles;
a SubIFD pyramid).  iipy runs with ``IIPY_SERVER=iipsrv/1.1``; both are queried in raw
FastCGI with byte-identical requests.

* OBJ answers are equal byte for byte (bar iipy's Content-Length line, §8.1), except on
  the SubIFD file, where iipsrv 1.1 sees one level and iipy serves them all (§4.2).
* Tiles and exports are compared at QLT=95: iipy and iipsrv both encode with
  libjpeg-turbo's fast integer DCT there (iipy's encode.py, iipsrv's JDCT_FASTEST), so
  equal pixels give equal JPEG streams (most tiles are equal byte for byte after the
  comment), and the decoded tiles must agree within 1 DN (2 DN where the input itself
  is JPEG, decoded by libtiff on one side and imagecodecs on the other), bar the JPEG
  blocks of the rare pixels float rounding puts 1 DN apart (``alike``).  Headers are
  equal apart from Content-Length's presence and value.
* PFL values are equal byte for byte at every level; SPECTRA too on one-channel files
  (iipsrv's multi-channel and edge-tile SPECTRA read the wrong sample, §5.23).
* A JPEG tile asked for with no processing is the stored tile, byte for byte
  (CODEC_PASSTHROUGH, §5.3), under iipsrv's JTL headers.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from PIL import Image

from tests.e2e.conftest import ServerProcess
from tests.fcgiclient import FCGIClient, split_cgi
from tests.unit._tiff_files import smooth_rgb, stiff_pyramid, vips_pyramid, write_levels

pytestmark = [pytest.mark.e2e, pytest.mark.parity]


def grey16(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.rint(20000 + 15000 * np.sin(x / 60.0) * np.cos(y / 45.0)).astype(np.uint16)


def odd_levels() -> list[np.ndarray]:
    """A 900 x 700 float32 image and its floor levels down to one 192 x 112 tile."""
    y, x = np.mgrid[0:700, 0:900].astype(np.float64)
    full = (50 + 40 * np.sin(x / 33.0) + 30 * np.cos(y / 21.0)).astype(np.float32)
    levels = [full]
    while levels[-1].shape[1] > 192 or levels[-1].shape[0] > 112:
        a = levels[-1]
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        levels.append(a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.float32))
    return levels


@dataclass
class Files:
    directory: Path
    #: name -> True when the tiles are stored as JPEG
    jpeg: dict[str, bool]


@pytest.fixture(scope="module")
def tiffs(tmp_path_factory, example_data) -> Files:
    d = tmp_path_factory.mktemp("tiffs")
    work = tmp_path_factory.mktemp("tiff-sources")
    stiff_pyramid(str(d), "sky", [str(example_data["sky"])])
    with fits.open(example_data["cube"]) as hdul:
        planes = np.asarray(hdul[0].data, np.float32)
    paths = []
    for c in range(planes.shape[0]):
        paths.append(str(work / ("plane%d.fits" % c)))
        fits.writeto(paths[-1], planes[c])
    stiff_pyramid(str(d), "cube", paths)
    rgb = smooth_rgb(1500, 1100)
    for name, options in (("rgb", ("--compression", "jpeg", "--Q", "90", "--tile-width",
                                   "256", "--tile-height", "256")),
                          ("rgb128", ("--compression", "jpeg", "--Q", "75"))):
        made = vips_pyramid(str(work), name, rgb, *options)
        Path(made).rename(d / (name + ".tif"))
    made = vips_pyramid(str(work), "u16", grey16(1300, 900), "--compression", "deflate",
                        "--tile-width", "256", "--tile-height", "256")
    Path(made).rename(d / "u16.tif")
    write_levels(d / "odd.tif", odd_levels(), tile=(192, 112), compression="zlib",
                 extratags=[(340, "d", 1, (20.0,), True), (341, "d", 1, (130.0,), True)],
                 software="tifffile test")
    write_levels(d / "subifd.tif", odd_levels(), tile=(192, 112), subifds=True,
                 extratags=[(340, "d", 1, (20.0,), True), (341, "d", 1, (130.0,), True)])
    return Files(d, {"sky": False, "cube": False, "rgb": True, "rgb128": True, "u16": False,
                     "odd": False, "subifd": False})


@dataclass
class Pair:
    iipy: ServerProcess
    ref: ServerProcess

    def both(self, query: str) -> tuple[bytes, bytes]:
        out = []
        for server in (self.iipy, self.ref):
            out.append(FCGIClient(server.address, timeout=60).request(
                {"QUERY_STRING": query, "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1"}))
        return out[0], out[1]


@pytest.fixture
def pair(iipy_server, iipsrv_ref, tiffs) -> Pair:
    prefix = f"{tiffs.directory}/"
    iipy = iipy_server(FILESYSTEM_PREFIX=prefix, IIPY_SERVER="iipsrv/1.1", MEMCACHED_SERVERS="")
    ref = iipsrv_ref(FILESYSTEM_PREFIX=prefix, OMP_NUM_THREADS=1)
    return Pair(iipy, ref)


def without_length(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length: ")]
    return b"\r\n".join(lines) + sep + body


def status(raw: bytes) -> int:
    headers, _ = split_cgi(raw)
    return next((int(v.split()[0]) for k, v in headers if k == "Status"), 200)


def headers_alike(mine: bytes, ref: bytes) -> bool:
    """The same header lines in the same order, Content-Length's value aside (iipsrv
    sends it on JTL only, iipy on every answer)."""
    a = [(k, v) for k, v in split_cgi(mine)[0] if k != "Content-Length"]
    b = [(k, v) for k, v in split_cgi(ref)[0] if k != "Content-Length"]
    return a == b


def scan(raw: bytes) -> bytes:
    """A JPEG answer from its first quantisation table on: what is left once the
    encoders' comments (``Generated by ...``) are set aside."""
    body = split_cgi(raw)[1]
    return body[body.index(b"\xff\xdb"):]


def alike(a: np.ndarray, b: np.ndarray, limit: int) -> bool:
    """Decoded tiles within ``limit`` DN, but for rare pixels: where the two servers'
    float arithmetic rounds one pixel 1 DN apart (iipy's gamma table, docs/protocol.md
    §6.2), the same encoder turns that into a few DN over the pixel's 8x8 JPEG block;
    those stay under 0.2 % of the pixels and 4 DN."""
    diff = np.abs(a - b)
    return bool(diff.max() <= limit or (np.mean(diff > limit) <= 0.002 and diff.max() <= 4))


def pixels(raw: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(split_cgi(raw)[1])) as im:
        assert im.format == "JPEG"
        return np.asarray(im).astype(np.int16)


# --------------------------------------------------------------------------- OBJ

OBJECTS = ("IIP,1.0", "max-size", "tile-size", "resolution-number", "bits-per-channel",
           "min-max-sample-values", "resolutions", "colorspace", "horizontal-views",
           "vertical-views", "subject", "summary-info", "iip-server", "iip-opt-comm",
           "iip-opt-obj")


def test_obj_answers_are_iipsrvs(pair, tiffs):
    """§5.2 on TIFF: every object, byte for byte, on every file iipsrv reads fully."""
    failures = []
    for name in tiffs.jpeg:
        if name == "subifd":
            continue
        queries = ["FIF=%s.tif&" % name + "&".join("obj=" + o for o in OBJECTS),
                   "FIF=%s.tif&obj=basic-info&obj=Max-Size" % name]
        queries += ["FIF=%s.tif&obj=%s" % (name, o) for o in (
            "copyright", "title", "subject", "author", "keywords", "comment", "last-author",
            "rev-number", "edit-time", "last-printed", "create-dtm", "last-save-dtm",
            "app-name", "colorspace,0-0,0")]
        for query in queries:
            mine, ref = pair.both(query)
            assert status(ref) in (200, 400), (query, ref[:200])
            if without_length(mine) != ref:
                failures.append("%s\n  iipy:   %r\n  iipsrv: %r" % (query, mine[:400], ref[:400]))
    assert not failures, "\n".join(failures)
    # the files hold what the comparison is about: STIFF's FITS header, colour, levels
    mine, _ = pair.both("FIF=sky.tif&obj=subject&obj=colorspace&obj=resolution-number")
    assert b"subject/" in mine and b"CTYPE1  = 'RA---TAN'" in mine and b"0 0 1 1 0" in mine
    mine, _ = pair.both("FIF=rgb128.tif&obj=colorspace&obj=tile-size&obj=resolution-number")
    assert b"Colorspace,0-4,0:0 0 3 3 0 1 2\r\nTile-size:128 128\r\nResolution-number:5" in mine


def test_subifd_levels_are_served(pair):
    """§4.2: iipsrv 1.1 counts only the top-level pages and sees one resolution in a
    SubIFD pyramid; iipy serves every SubIFD level.  Its full resolution is iipsrv's
    only one, tile for tile."""
    mine, ref = pair.both("FIF=subifd.tif&obj=resolution-number&obj=resolutions")
    assert split_cgi(ref)[1] == b"\r\nResolution-number:1\r\nResolutions:900 700\r\n"
    assert split_cgi(mine)[1] == (b"\r\nResolution-number:4\r\n"
                                  b"Resolutions:112 87,225 175,450 350,900 700\r\n")
    for tile in (0, 4, 6, 34):
        mine, _ = pair.both("FIF=subifd.tif&QLT=95&JTL=3,%d" % tile)
        _, ref = pair.both("FIF=subifd.tif&QLT=95&JTL=0,%d" % tile)
        assert scan(mine) == scan(ref), tile
    mine, _ = pair.both("FIF=subifd.tif&QLT=95&JTL=0,0")
    assert pixels(mine).shape == (87, 112)


# --------------------------------------------------------------------------- tiles

#: (file, tiles (res, n), modifiers): every level with full and edge tiles, the §6 steps
TILE_CASES = [
    ("sky", [(3, 0), (3, 7), (3, 47), (2, 5), (1, 1), (0, 0)],
     ["", "GAM=0.4545&CTW=1;1;1", "MINMAX=1:100,150&GAM=0.4545&CTW=1;1;1", "CMP=jet&CTW=1;1;1",
      "INV&CNT=1.5"]),
    ("cube", [(2, 0), (2, 19), (1, 5), (0, 0)],
     ["", "GAM=0.4545&CTW=1,0,0;0,1,0;0,0,1", "MINMAX=2:90,700&CTW=0,1;0,1;0,1",
      "CMP=hot&CTW=0,0,1;0,0,1;0,0,1", "COL=grey"]),
    ("rgb", [(3, 0), (3, 5), (3, 23), (2, 2), (1, 1), (0, 0)],
     ["", "GAM=0.5", "MINMAX=1:100,150&CTW=1;1;1", "CMP=jet", "INV", "CNT=1.5", "COL=grey",
      "ROT=90", "ROT=180"]),
    ("rgb128", [(4, 0), (4, 107), (3, 10), (0, 0)], ["", "GAM=0.5", "INV"]),
    ("u16", [(3, 0), (3, 19), (2, 3), (0, 0)], ["", "GAM=0.5", "MINMAX=1:10000,40000",
                                                 "CMP=cold", "CNT=1.5"]),
    ("odd", [(3, 0), (3, 4), (3, 34), (2, 3), (1, 1), (0, 0)], ["", "GAM=0.5&CTW=1", "INV"]),
]


def test_tiles_are_iipsrvs(pair, tiffs):
    """§5.3 and §6 on TIFF at QLT=95: the same headers and the same decoded pixels
    within 1 DN (2 DN for JPEG input), on float, 8-bit RGB and 16-bit files, at every
    level, edge tiles and odd tile sizes included."""
    failures = []
    same = total = 0
    for name, tiles, modifier_list in TILE_CASES:
        limit = 2 if tiffs.jpeg[name] else 1
        for modifiers in modifier_list:
            for res, n in tiles:
                query = "FIF=%s.tif&%sQLT=95&JTL=%d,%d" % (
                    name, modifiers + "&" if modifiers else "", res, n)
                mine, ref = pair.both(query)
                assert status(mine) == status(ref) == 200, (query, mine[:300], ref[:300])
                if not headers_alike(mine, ref):
                    failures.append("%s: headers %r != %r" % (
                        query, split_cgi(mine)[0], split_cgi(ref)[0]))
                a, b = pixels(mine), pixels(ref)
                if a.shape != b.shape:
                    failures.append("%s: %r != %r" % (query, a.shape, b.shape))
                    continue
                if not alike(a, b, limit):
                    failures.append("%s: %d DN apart, %.3f %% of the pixels more than %d"
                                    % (query, np.abs(a - b).max(),
                                       100 * np.mean(np.abs(a - b) > limit), limit))
                total += 1
                same += scan(mine) == scan(ref)
    assert not failures, "\n".join(failures)
    assert same > total // 2  # equal pixels: equal JPEG streams (the same encoder set-up)


# --------------------------------------------------------------------------- CVT

EXPORTS_1TO1 = [
    ("sky", ["", "WID=1024", "RGN=0.25,0.25,0.5,0.5&WID=1024", "RGN=0.25,0.25,0.5,0.5&WID=512",
             "WID=256&GAM=0.4545&CTW=1;1;1", "ROT=90&WID=512"]),
    ("cube", ["WID=600&CTW=1,0,0;0,1,0;0,0,1"]),
    ("rgb", ["", "WID=750", "RGN=0.25,0.25,0.5,0.5&WID=375", "GAM=0.5&WID=187"]),
    ("u16", ["WID=650", "RGN=0.25,0.25,0.5,0.5&WID=650"]),
    ("odd", ["", "WID=450", "WID=225"]),
]
EXPORTS_RESAMPLED = [("rgb", ["WID=300", "RGN=0.1,0.2,0.3,0.25&WID=400"]),
                     ("u16", ["WID=300", "RGN=0.1,0.2,0.3,0.25&WID=400"]),
                     ("odd", ["WID=300"])]


def test_exports_are_iipsrvs(pair, tiffs):
    """§5.6 and §7.5 on TIFF: the level iipsrv reads is the one the file holds, and an
    export that needs no resampling has iipsrv's pixels within 1 DN (2 DN for JPEG
    input) and its headers; resampled exports differ only by iipsrv's resampling of
    8-bit output (§6.2): same size, pixels within a few DN on smooth images."""
    failures = []
    for name, cases in EXPORTS_1TO1:
        limit = 2 if tiffs.jpeg[name] else 1
        for case in cases:
            query = "FIF=%s.tif&%sQLT=95&CVT=jpeg" % (name, case + "&" if case else "")
            mine, ref = pair.both(query)
            assert status(mine) == status(ref) == 200, (query, mine[:300], ref[:300])
            if not headers_alike(mine, ref):
                failures.append("%s: headers differ" % query)
            a, b = pixels(mine), pixels(ref)
            if a.shape != b.shape or not alike(a, b, limit):
                failures.append("%s: %r %r %s" % (query, a.shape, b.shape, a.shape == b.shape
                                                  and int(np.abs(a - b).max())))
    for name, cases in EXPORTS_RESAMPLED:
        for case in cases:
            query = "FIF=%s.tif&%s&QLT=95&CVT=jpeg" % (name, case)
            mine, ref = pair.both(query)
            a, b = pixels(mine), pixels(ref)
            if a.shape != b.shape:
                failures.append("%s: %r != %r" % (query, a.shape, b.shape))
                continue
            diff = np.abs(a - b)[2:-2, 2:-2]
            if not (diff.mean() <= 1.5 and np.percentile(diff, 99) <= 4):
                failures.append("%s: mean %.2f p99 %.1f" % (query, diff.mean(),
                                                            np.percentile(diff, 99)))
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- PFL, SPECTRA


def test_profiles_and_spectra_are_iipsrvs(pair, tiffs):
    """§5.22: PFL values byte for byte at every level, floats with nine decimals, 8- and
    16-bit integers as integers, RGB interleaved; §5.23: SPECTRA byte for byte on
    one-channel files (8-bit / 255, 16-bit / 65535, float as stored) on full tiles;
    on RGB, iipsrv's single point is iipy's first one at a tile's first pixel (iipsrv
    reads the interleaved buffer at the pixel's index elsewhere)."""
    failures = []
    for name in ("sky", "cube", "rgb", "rgb128", "u16", "odd"):
        for case in ("PFL=%d:100,20-110,20", "PFL=%d:5,6-5,12", "PFL=%d:7,9",
                     "PFL=%d:0,0-40,0"):
            nres = {"sky": 4, "cube": 3, "rgb": 4, "rgb128": 5, "u16": 4, "odd": 4}[name]
            for res in range(nres):
                query = "FIF=%s.tif&%s" % (name, case % res)
                mine, ref = pair.both(query)
                if status(ref) != 200:  # outside a small level
                    continue
                if without_length(mine) != ref:
                    failures.append("%s\n  iipy:   %r\n  iipsrv: %r" % (query, mine[-200:],
                                                                      ref[-200:]))
    for name, cases in (("sky", ["3,0,0,0", "3,5,10,20", "2,1,3,3", "0,0,100,100"]),
                        ("u16", ["3,0,0,0", "3,4,200,3", "2,1,3,3"]),
                        ("odd", ["3,0,7,9", "2,3,100,50"])):
        for case in cases:
            mine, ref = pair.both("FIF=%s.tif&SPECTRA=%s" % (name, case))
            if without_length(mine) != ref:
                failures.append("SPECTRA %s %s\n  iipy:   %r\n  iipsrv: %r"
                                % (name, case, mine[-200:], ref[-200:]))
    assert not failures, "\n".join(failures)
    point = re.compile(rb"<reflectance>([0-9.]+)</reflectance>")
    for case in ("3,0,0,0", "3,5,0,0", "2,1,0,0"):
        mine, ref = pair.both("FIF=rgb.tif&SPECTRA=" + case)
        assert headers_alike(mine, ref)
        got, want = point.findall(mine), point.findall(ref)
        assert len(got) == 3 and len(want) == 1 and abs(float(got[0]) - float(want[0])) <= 2 / 255


# --------------------------------------------------------------------------- passthrough


def stored_jpeg(path: Path, page: int, index: int) -> bytes:
    """Tile ``index`` of ``page`` as a standalone JPEG: JPEGTables without its end
    marker, then the tile's stream without its start marker (TIFF technical note 2)."""
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        tables, offset, count = p.jpegtables, p.dataoffsets[index], p.databytecounts[index]
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(count)
    return tables[:-2] + data[2:] if tables else data


def test_passthrough_sends_the_stored_tile(pair, tiffs):
    """§5.3 CODEC_PASSTHROUGH: with no processing asked, a full JPEG tile is the stored
    stream itself with iipsrv's JTL headers (iipsrv 1.1 decodes and re-encodes it:
    its pixels stay within JPEG noise); an edge tile is decoded and encoded as iipsrv
    does, to the same bytes."""
    for name, res, n, page, index in (("rgb", 3, 0, 0, 0), ("rgb", 3, 7, 0, 7),
                                      ("rgb", 2, 0, 1, 0), ("rgb128", 4, 13, 0, 13)):
        mine, ref = pair.both("FIF=%s.tif&JTL=%d,%d" % (name, res, n))
        assert headers_alike(mine, ref), (name, res, n)
        body = split_cgi(mine)[1]
        assert body == stored_jpeg(tiffs.directory / (name + ".tif"), page, index)
        assert dict(split_cgi(mine)[0])["Content-Length"] == str(len(body))
        diff = np.abs(pixels(mine) - pixels(ref))
        assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8, (name, res, n)
    mine, ref = pair.both("FIF=rgb.tif&JTL=3,5")  # 1500 = 5 x 256 + 220: an edge tile
    assert pixels(mine).shape == (256, 220, 3)
    assert scan(mine) == scan(ref)
