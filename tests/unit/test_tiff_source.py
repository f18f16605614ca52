"""iipy.imaging.sources.tiff: tiled pyramidal TIFF read by tile offsets.

Every file is written at test time: by tifffile (every layout and codec the module
reads), by vips and STIFF (the files sites really have), and broken on purpose (the
corpus at the end, where nothing but a TiffError may come out).
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
from astropy.io import fits
from PIL import Image

from iipy.errors import UnreadableImage
from iipy.imaging.kernels import reference
from iipy.imaging.paths import ImageRef
from iipy.imaging.source import DisplayRange, ImageSource, LevelledSource
from iipy.imaging.sources import tiff as tiffsrc
from iipy.imaging.sources.fits import FitsImage
from iipy.imaging.sources.tiff import (
    DamagedTiff, NotATiff, NotTiled, TiffError, TiffImage, UnreadableTiff, UnsupportedTiff,
    has_tiff_extension, is_tiff,
)

from ._tiff_files import (
    as_planes, mean_2x2, patch, patch_tag, random_levels, smooth_rgb, stiff_pyramid,
    tag_entry, vips_pyramid, write_levels,
)


def windows(width: int, height: int, tw: int, th: int) -> list[tuple[int, int, int, int]]:
    """Windows at the corners, the edges, across tile boundaries, and the whole level."""
    wins = [(0, 0, width, height), (0, 0, 1, 1), (width - 1, height - 1, 1, 1),
            (width - 7, height - 5, 7, 5), (0, height - 3, width, 3), (width - 2, 0, 2, height),
            (tw - 3, th - 2, 7, 5), (tw - 1, 0, 2, 2 * th + 1), (0, th - 1, 2 * tw + 1, 2),
            (tw, th, tw, th)]
    rng = np.random.default_rng(width * 7 + height)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(1, width - x + 1)), int(rng.integers(1, height - y + 1))
        wins.append((x, y, w, h))
    out = []
    for x, y, w, h in wins:  # clipped to the level
        x, y = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
        out.append((x, y, max(1, min(w, width - x)), max(1, min(h, height - y))))
    return out


def assert_levels_read(im: TiffImage, levels: list[np.ndarray], tol: float = 0.0,
                       planar: bool = False) -> None:
    """Each level of ``im`` equals ``levels`` (as written) in every test window."""
    assert im.levels == [(lv.shape[-1], lv.shape[-2]) if planar else (lv.shape[1], lv.shape[0])
                         for lv in levels]
    for k, lv in enumerate(levels):
        ref = (lv if planar else as_planes(lv)).astype(np.float32)
        w, h = im.levels[k]
        tw, th = im.tile_w, im.tile_h
        for x, y, ww, hh in windows(w, h, tw, th):
            got = im.read_window(k, x, y, ww, hh)
            assert got.dtype == np.float32 and got.shape == (im.channels, hh, ww)
            want = ref[:, y : y + hh, x : x + ww]
            if tol == 0:
                np.testing.assert_array_equal(got, want, err_msg="level %d window %r"
                                              % (k, (x, y, ww, hh)))
                samples = im.read_samples(k, x, y, ww, hh)  # the same, interleaved, typed
                assert samples.dtype == im.dtype and samples.shape == (hh, ww, im.channels)
                np.testing.assert_array_equal(samples.astype(np.float32),
                                              np.moveaxis(want, 0, -1))
            else:
                assert np.abs(got - want).max() <= tol, (k, (x, y, ww, hh))


# --- files tifffile writes -------------------------------------------------------------

LAYOUTS = [
    # name, shape (h, w[, c]), dtype, writer options
    ("f32-1-none-pages", (701, 983), "f4", dict()),
    ("f32-1-deflate-floatpred", (701, 983), "f4", dict(compression="zlib", predictor=3)),
    ("f32-1-lzw-subifd", (515, 600), "f4", dict(compression="lzw", subifds=True)),
    ("f32-3-deflate-subifd-128", (333, 517, 3), "f4",
     dict(compression="zlib", subifds=True, tile=(128, 128), photometric="rgb")),
    ("f32-5-lzw-pages-512x256", (700, 1100), "f4",
     dict(compression="lzw", tile=(512, 256), planarconfig="contig")),
    ("f32-5-none-bigendian", (300, 400), "f4", dict(byteorder=">", planarconfig="contig")),
    ("f64-1-deflate", (300, 301), "f8", dict(compression="zlib")),
    ("u8-grey-deflate-pred", (701, 1001), "u1", dict(compression="zlib", predictor=2)),
    ("u8-grey-lzw-128", (300, 400), "u1", dict(compression="lzw", tile=(128, 128))),
    ("u8-rgb-deflate-pred", (500, 700), "u1", dict(compression="zlib", predictor=2)),
    ("u8-rgb-lzw-subifd", (300, 513), "u1", dict(compression="lzw", subifds=True)),
    ("u8-rgb-none-bigtiff", (300, 400), "u1", dict(bigtiff=True)),
    ("u8-rgb-packbits", (300, 400), "u1", dict(compression="packbits")),
    ("u8-rgb-zstd", (300, 400), "u1", dict(compression="zstd")),
    ("u16-deflate-pred", (701, 983), "u2", dict(compression="zlib", predictor=2)),
    ("u16-lzw-pred-bigendian", (400, 333), "u2",
     dict(compression="lzw", predictor=2, byteorder=">")),
    ("u16-none", (300, 257), "u2", dict()),
    ("u32-deflate", (300, 400), "u4", dict(compression="zlib")),
    ("i16-deflate-pred", (300, 400), "i2", dict(compression="zlib", predictor=2)),
]


@pytest.mark.parametrize("name,shape,dtype,opts", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_tifffile_layouts_read_exactly(tmp_path, name, shape, dtype, opts):
    nlevels = 3
    levels = random_levels(shape, dtype, nlevels, seed=len(name))
    path = str(tmp_path / (name + ".tif"))
    write_levels(path, levels, **opts)
    with TiffImage(path) as im:
        h, w = shape[:2]
        assert (im.width, im.height) == (w, h)
        assert (im.tile_w, im.tile_h) == opts.get("tile", (256, 256))
        assert im.channels == (shape[2] if len(shape) == 3 else 1)
        assert im.dtype == np.dtype(dtype)
        assert im.bits_per_channel == np.dtype(dtype).itemsize * 8
        assert im.is_float == (np.dtype(dtype).kind == "f")
        rgb = len(shape) == 3 and opts.get("photometric", "rgb" if shape[2] == 3 else "") == "rgb"
        assert im.colourspace == ("srgb" if rgb else "grey")
        assert_levels_read(im, levels)


def test_planar_separate_samples(tmp_path):
    rng = np.random.default_rng(3)
    levels = [rng.integers(0, 65536, (3, 300 >> k, 517 >> k), dtype=np.uint16) for k in range(3)]
    path = str(tmp_path / "planar.tif")
    write_levels(path, levels, planarconfig="separate", photometric="rgb", compression="zlib",
                 tile=(128, 128))
    with TiffImage(path) as im:
        assert im.channels == 3 and im.colourspace == "srgb"
        assert_levels_read(im, levels, planar=True)


def test_palette_is_expanded_to_rgb(tmp_path):
    rng = np.random.default_rng(5)
    idx = [rng.integers(0, 256, (300, 400), dtype=np.uint8),
           rng.integers(0, 256, (150, 200), dtype=np.uint8)]
    cmap = rng.integers(0, 65536, (3, 256), dtype=np.uint16)
    path = str(tmp_path / "palette.tif")
    write_levels(path, idx, photometric="palette", colormap=cmap, compression="zlib")
    with TiffImage(path) as im:
        assert im.channels == 3 and im.colourspace == "srgb" and im.dtype == np.uint8
        lut = (cmap >> 8).astype(np.uint8).T
        assert_levels_read(im, [lut[i] for i in idx])
        assert im.min_max() == [(0.0, 255.0)] * 3


def test_jpeg_levels_match_the_decoder_and_the_source(tmp_path):
    """tifffile writes YCbCr JPEG tiles with JPEGTables: same pixels as tifffile's own
    decoding, within JPEG's error of the source."""
    src = smooth_rgb(1001, 701)
    levels = [src, np.rint(mean_2x2(src)).astype(np.uint8)]
    path = str(tmp_path / "jpeg.tif")
    write_levels(path, levels, compression="jpeg", compressionargs={"level": 95})
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == 6
        decoded = [p.asarray() for p in tif.pages]
    with TiffImage(path) as im:
        assert im.colourspace == "srgb" and im.channels == 3
        assert_levels_read(im, decoded)
        # tifffile pads edge tiles with zeros before encoding: the last 8x8 blocks of
        # the image ring, elsewhere JPEG stays within a few DN
        for k, lv in enumerate(levels):
            w, h = im.levels[k]
            diff = np.abs(im.read_window(k, 0, 0, w, h) - as_planes(lv))
            assert diff[:, : h - 8, : w - 8].max() <= 12 and diff.mean() < 1.5, k


def test_jpeg_grey(tmp_path):
    y, x = np.mgrid[0:300, 0:517]
    src = (128 + 100 * np.sin(x / 40.0) * np.cos(y / 30.0)).astype(np.uint8)
    path = str(tmp_path / "grey-jpeg.tif")
    write_levels(path, [src, src[::2, ::2].copy()], compression="jpeg",
                 compressionargs={"level": 95}, tile=(128, 128))
    with tifffile.TiffFile(path) as tif:
        decoded = [p.asarray() for p in tif.pages]
    with TiffImage(path) as im:
        assert im.colourspace == "grey" and im.channels == 1
        assert_levels_read(im, decoded)
        assert_levels_read(im, [src, src[::2, ::2]], tol=10)


# --- what read_window decodes ----------------------------------------------------------


def counting(im: TiffImage) -> list[int]:
    calls: list[int] = []
    decode = im._decode

    def wrapped(lv, index):
        calls.append(index)
        return decode(lv, index)

    im._decode = wrapped  # type: ignore[method-assign]
    return calls


def test_only_overlapping_tiles_are_decoded(tmp_path):
    levels = random_levels((1000, 1000), "f4", 1, seed=9)
    path = str(tmp_path / "f.tif")
    write_levels(path, levels, compression="zlib")
    with TiffImage(path) as im:
        calls = counting(im)
        im.read_window(0, 256, 512, 256, 256)
        assert calls == [2 * 4 + 1]
        im.read_window(0, 256, 512, 256, 256)  # cached
        assert calls == [9]
        calls.clear()
        im.read_window(0, 200, 200, 100, 100)  # 2 x 2 tiles
        assert sorted(calls) == [0, 1, 4, 5]
        calls.clear()
        im.read_window(0, 999, 999, 1, 1)
        assert calls == [15]


def test_tile_cache_is_bounded(tmp_path):
    levels = random_levels((1000, 1000), "u1", 1, seed=10)
    path = str(tmp_path / "u.tif")
    write_levels(path, levels, compression="zlib")
    with TiffImage(path, tile_cache_bytes=3 * 65536) as im:
        calls = counting(im)
        for index in range(16):
            tx, ty = index % 4, index // 4
            np.testing.assert_array_equal(
                im.read_window(0, tx * 256, ty * 256, 10, 10)[0],
                levels[0][ty * 256 : ty * 256 + 10, tx * 256 : tx * 256 + 10])
        assert im._cache_bytes <= 3 * 65536 and len(im._cache) == 3
        assert calls == list(range(16))
        im.read_window(0, 0, 0, 10, 10)  # evicted long ago
        assert calls[-1] == 0
    with TiffImage(path, tile_cache_bytes=0) as im:
        calls = counting(im)
        im.read_window(0, 0, 0, 10, 10)
        im.read_window(0, 0, 0, 10, 10)
        assert calls == [0, 0] and not im._cache


def test_read_window_into_out_and_bad_windows(tmp_path):
    levels = random_levels((300, 400, 3), "u1", 2, seed=11)
    path = str(tmp_path / "rgb.tif")
    write_levels(path, levels)
    with TiffImage(path) as im:
        out = np.full((3, 20, 30), -1, np.float32)
        assert im.read_window(1, 170, 130, 30, 20, out=out) is out
        np.testing.assert_array_equal(out, as_planes(levels[1])[:, 130:150, 170:200])
        for bad in [(0, -1, 0, 5, 5), (0, 0, 0, 401, 1), (0, 0, 0, 0, 1), (1, 190, 0, 11, 1),
                    (2, 0, 0, 1, 1), (-1, 0, 0, 1, 1)]:
            with pytest.raises(ValueError):
                im.read_window(*bad)
        with pytest.raises(ValueError):
            im.read_window(0, 0, 0, 5, 5, out=np.empty((3, 5, 5), np.float64))
    with pytest.raises(TiffError):
        im.read_window(0, 0, 0, 1, 1)
    im.close()  # idempotent


# --- stored JPEG tiles -----------------------------------------------------------------


def raw_tile(path: str, page: int, index: int) -> tuple[bytes, bytes]:
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        with open(path, "rb") as f:
            f.seek(p.dataoffsets[index])
            return p.jpegtables, f.read(p.databytecounts[index])


def test_stored_tile_of_self_contained_tiles(tmp_path):
    src = smooth_rgb(600, 300)
    path = str(tmp_path / "jpeg.tif")
    write_levels(path, [src, src[::2, ::2].copy()], compression="jpeg",
                 compressionargs={"level": 90})
    with TiffImage(path) as im:
        # a 600x300 level with 256 tiles: tiles 0 and 1 are full, the rest partial
        for index in (0, 1):
            tables, data = raw_tile(path, 0, index)
            jpeg = im.stored_tile(0, index)
            assert tables is None  # tifffile writes a complete JPEG per tile
            assert jpeg == data
            assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
            tx, ty = index % 3, index // 3
            want = im.read_window(0, tx * 256, ty * 256, 256, 256)
            # a standalone stream: any decoder reads it, without the TIFF's tables
            np.testing.assert_array_equal(np.moveaxis(imagecodecs.jpeg8_decode(jpeg), -1, 0), want)
            pil = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            assert np.abs(np.moveaxis(pil, -1, 0).astype(np.float32) - want).max() <= 2
        for index in (2, 3, 4, 5, 6, -1):
            assert im.stored_tile(0, index) is None
        assert im.stored_tile(1, 0) is None  # 300x150: partial


def test_stored_tile_grey_and_none_for_other_codecs(tmp_path):
    y, x = np.mgrid[0:512, 0:512]
    grey = ((x + 2 * y) % 256).astype(np.uint8)
    path = str(tmp_path / "g.tif")
    write_levels(path, [grey], compression="jpeg")
    with TiffImage(path) as im:
        jpeg = im.stored_tile(0, 3)
        assert jpeg is not None
        np.testing.assert_array_equal(imagecodecs.jpeg8_decode(jpeg),
                                      im.read_window(0, 256, 256, 256, 256)[0])
    path = str(tmp_path / "d.tif")
    write_levels(path, [grey], compression="zlib")
    with TiffImage(path) as im:
        assert im.stored_tile(0, 0) is None
    # RGB JPEG data: passed through when the stream says RGB (Adobe marker, transform
    # 0), not when a browser would take it for YCbCr (transform 1, same bytes otherwise)
    src = smooth_rgb(512, 512)
    path = str(tmp_path / "rgbjpeg.tif")
    write_levels(path, [src], compression="jpeg", compressionargs={"outcolorspace": "rgb"})
    with TiffImage(path) as im:
        assert im._photometric == 2
        jpeg = im.stored_tile(0, 0)
        assert jpeg is not None and b"Adobe" in jpeg[:40]
        want = im.read_window(0, 0, 0, 256, 256)
        np.testing.assert_array_equal(np.moveaxis(imagecodecs.jpeg8_decode(jpeg), -1, 0), want)
        assert np.abs(want - as_planes(src)[:, :256, :256]).mean() < 2
    data = bytearray(open(path, "rb").read())
    with tifffile.TiffFile(path) as tif:
        offsets = tif.pages[0].dataoffsets
    for offset in offsets:
        at = data.index(b"Adobe", offset, offset + 40)
        assert data[at + 11] == 0
        data[at + 11] = 1
    with open(path, "wb") as f:
        f.write(data)
    with TiffImage(path) as im:
        assert im.stored_tile(0, 0) is None
        np.testing.assert_array_equal(im.read_window(0, 0, 0, 256, 256), want)


# --- min/max and metadata ---------------------------------------------------------------


@pytest.mark.parametrize("dtype,channels,smin,smax,expected", [
    ("f4", 1, [-1.5], [1000.1], [(-1.5, np.float32(1000.1))]),
    ("f4", 3, [0.1, 0.2, 0.3], [10, 20, 30],
     [(np.float32(0.1), 10.0), (np.float32(0.2), 20.0), (np.float32(0.3), 30.0)]),
    ("f4", 3, [-2.0], [5.0], [(-2.0, 5.0)] * 3),
    ("f4", 1, None, None, [(0.0, 0.0)]),
    ("f4", 1, [3.0], None, [(3.0, 0.0)]),
    ("u1", 1, None, None, [(0.0, 255.0)]),
    ("u1", 3, [10], [0], [(10.0, 255.0)] * 3),
    ("u2", 1, None, None, [(0.0, 65535.0)]),
    ("u2", 1, [100], [4000], [(100.0, 4000.0)]),
    # iipsrv keeps them as C floats: 4294967295 becomes 4294967296
    ("u4", 1, None, None, [(0.0, np.float32(4294967295.0))]),
    # the tags may have the samples' own type: BYTE (which tifffile gives as bytes), SHORT
    ("u1", 1, b"\n", b"\xc8", [(10.0, 200.0)]),
    ("u1", 3, b"\x01\x02\x03", b"\xfa\xfb\xfc", [(1.0, 250.0), (2.0, 251.0), (3.0, 252.0)]),
    ("u2", 1, (7,), (60000,), [(7.0, 60000.0)]),
])
def test_min_max_as_iipsrv(tmp_path, dtype, channels, smin, smax, expected):
    shape = (40, 50) if channels == 1 else (40, 50, channels)
    tags = []
    kind = "d"
    if isinstance(smin, bytes):
        kind, smin, smax = "B", tuple(smin), tuple(smax)
    elif isinstance(smin, tuple):
        kind = "H"
    if smin is not None:
        tags.append((340, kind, len(smin), smin, True))
    if smax is not None:
        tags.append((341, kind, len(smax), smax, True))
    path = str(tmp_path / "mm.tif")
    write_levels(path, random_levels(shape, dtype, 1, seed=1), tile=(16, 16), extratags=tags)
    with TiffImage(path) as im:
        assert im.min_max() == [(float(lo), float(hi)) for lo, hi in expected]


def test_description_and_metadata(tmp_path):
    path = str(tmp_path / "meta.tif")
    write_levels(path, random_levels((40, 50), "u1", 2, seed=1), tile=(16, 16),
                 description="SIMPLE  =                    T", software="maker 1.0",
                 datetime="2024:01:02 03:04:05",
                 extratags=[(315, "s", 0, "A. Astronomer", True), (33432, "s", 0, "CC-BY", True)])
    with TiffImage(path) as im:
        assert im.description == "SIMPLE  =                    T"
        assert im.text_tags == {"author": "A. Astronomer", "copyright": "CC-BY",
                               "create-dtm": "2024:01:02 03:04:05", "app-name": "maker 1.0"}
    path = str(tmp_path / "bare.tif")
    write_levels(path, random_levels((40, 50), "u1", 1, seed=1), tile=(16, 16))
    with TiffImage(path) as im:
        assert im.description == "" and im.text_tags == {}


def test_description_bytes_are_kept(tmp_path):
    """Bytes beyond ASCII survive (Latin-1 round trip); text ends at the first NUL, as
    libtiff returns it; a short tag whose value sits inside its entry is read too."""
    path = str(tmp_path / "bytes.tif")
    raw = b"caf\xe9 \x81\x8d header\0after"
    write_levels(path, random_levels((40, 50), "u1", 1, seed=1), tile=(16, 16),
                 extratags=[(270, 1, len(raw), raw, True), (305, 2, 3, b"ab\0", True)])
    with TiffImage(path) as im:
        assert im.description.encode("latin-1") == b"caf\xe9 \x81\x8d header"
        assert im.text_tags == {"app-name": "ab"}


# --- the server's image source -----------------------------------------------------------


def protocol_members(protocol: type) -> set[str]:
    """Attribute and method names a Protocol class declares (its own and inherited)."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (object,) or cls.__name__ in ("Protocol", "Generic"):
            continue
        names |= set(getattr(cls, "__annotations__", {}))
        names |= {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}
    return names


def ref_of(path: str, fif: str) -> ImageRef:
    st = os.stat(path)
    return ImageRef(fif, path, "", st.st_mtime_ns, st.st_size)


def test_image_source_interface(tmp_path):
    """TiffImage is the server's image source: every member of ImageSource and
    LevelledSource (FITS has every ImageSource member too), OBJ metadata with the tag
    bytes kept, display ranges from the tags, the 8-bit and SPECTRA facts, windows of
    every level and of one channel."""
    path = str(tmp_path / "src.tif")
    levels = random_levels((300, 200, 3), "u1", 2, seed=4)
    raw = b"caf\xe9 \x81 header"
    write_levels(path, levels, tile=(64, 64), extratags=[(270, 1, len(raw), raw, True)],
                 software="maker", photometric="rgb")
    with TiffImage.open(ref_of(path, "dir/src.tif")) as im:
        for name in protocol_members(LevelledSource):
            assert hasattr(im, name), name
        assert im.ref.fif == "dir/src.tif"
        assert im.metadata("subject").encode("utf-8", "surrogateescape") == raw
        assert im.metadata("app-name") == "maker" and im.metadata("title") == ""
        assert im.default_ranges() == [DisplayRange(0.0, 255.0)] * 3
        assert (im.display_8bit, im.spectra_scale, im.colourspace) == (True, 255.0, "srgb")
        np.testing.assert_array_equal(im.read_level(1, 10, 20, 30, 40),
                                      as_planes(levels[1])[:, 20:60, 10:40])
        np.testing.assert_array_equal(im.values(5, 6, 7, 8),
                                      as_planes(levels[0])[:, 6:14, 5:12].astype(np.float64))
        out = np.empty((8, 7), np.float32)
        assert im.read(2, 5, 6, 7, 8, out=out) is out
        np.testing.assert_array_equal(out, levels[0][6:14, 5:12, 2])
        np.testing.assert_array_equal(im.read_rows(1, 100, 3), levels[0][100:103, :, 1])
        seen = []
        binned = im.read_rows(1, 100, 4, binned=True, samples=seen.append)
        np.testing.assert_array_equal(seen[0], levels[0][100:104, :, 1])
        np.testing.assert_array_equal(
            binned, reference.bin2x2(levels[0][100:104, :, 1].astype(np.float32)))
        assert im.stored_jpeg(0, 0) is None  # not JPEG-compressed
    fits_path = str(tmp_path / "img.fits")
    fits.writeto(fits_path, np.zeros((10, 12), np.float32))
    with contextlib.closing(FitsImage(ref_of(fits_path, "img.fits"))) as fim:
        for name in protocol_members(ImageSource):
            assert hasattr(fim, name), name
    for dtype, scale, display in (("u2", 65535.0, False), ("f4", 1.0, False),
                                  ("u4", 1.0, False)):
        other = str(tmp_path / ("%s.tif" % dtype))
        write_levels(other, random_levels((40, 40), dtype, 1, seed=1), tile=(16, 16))
        with TiffImage(other) as im:
            assert (im.spectra_scale, im.display_8bit, im.colourspace) == (scale, display, "grey")


def test_image_source_errors_name_the_request(tmp_path):
    """Opening and reading failures are file errors (UnreadableImage) whose text names
    the image as requested, never the path on disk."""
    path = str(tmp_path / "strips.tif")
    tifffile.imwrite(path, np.zeros((100, 100), np.uint8), metadata=None)
    with pytest.raises(UnreadableImage) as info:
        TiffImage.open(ref_of(path, "a/strips.tif"))
    assert str(info.value) == "TIFF image 'a/strips.tif' is not tiled"
    path = str(tmp_path / "cut.tif")
    write_levels(path, random_levels((64, 64), "u2", 1, seed=2), tile=(32, 32))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:200])
    with pytest.raises(UnreadableImage) as info:
        TiffImage.open(ref_of(path, "cut.tif"))
    assert str(info.value) == "Unable to open TIFF file 'cut.tif'"
    path = str(tmp_path / "garbage.tif")
    write_levels(path, random_levels((64, 64), "u2", 1, seed=2), tile=(32, 32),
                 compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[1], tif.pages[0].databytecounts[1]
    data = bytearray(open(path, "rb").read())
    data[offset : offset + count] = b"\x55" * count
    open(path, "wb").write(bytes(data))
    with TiffImage.open(ref_of(path, "garbage.tif")) as im:
        im.read_level(0, 0, 0, 32, 32)  # tile 0 is intact
        for call in (lambda: im.read_level(0, 0, 0, 64, 64), lambda: im.values(40, 0, 1, 1),
                     lambda: im.read(0, 33, 0, 2, 2)):
            with pytest.raises(UnreadableImage) as info:
                call()
            assert str(info.value) == "Unable to read data of 'garbage.tif'"


# --- magic and extensions ---------------------------------------------------------------


def test_is_tiff_and_extensions():
    for head in (b"II*\0\x08\0\0\0", b"MM\0*\0\0\0\x08", b"II+\0\x08\0\0\0", b"MM\0+\0\x08\0\0"):
        assert is_tiff(head)
    for head in (b"SIMPLE  =", b"II*", b"", b"\xff\xd8\xff\xe0", b"II\0*"):
        assert not is_tiff(head)
    for name in ("a.tif", "A.TIF", "x.Tiff", "p.ptif", "deep/dir/x.PTIFF"):
        assert has_tiff_extension(name)
    for name in ("a.fits", "a.tif.fits", "tif", "a.tiff2", "a.jp2"):
        assert not has_tiff_extension(name)


# --- vips ------------------------------------------------------------------------------


def test_vips_rgb_jpeg_pyramid(tmp_path):
    src = smooth_rgb(1001, 701)
    path = vips_pyramid(str(tmp_path), "vjpeg", src, "--compression", "jpeg", "--Q", "90",
                        "--tile-width", "256", "--tile-height", "256")
    with TiffImage(path) as im:
        assert im.levels == [(1001, 701), (500, 350), (250, 175)]
        assert (im.channels, im.colourspace, im.dtype, im.tile_w) == (3, "srgb", np.uint8, 256)
        assert im.min_max() == [(0.0, 255.0)] * 3
        ref = as_planes(src).astype(np.float64)
        for k in range(3):
            w, h = im.levels[k]
            got = im.read_window(k, 0, 0, w, h)
            diff = np.abs(got - ref[:, : h, : w])
            assert diff.mean() < 1.5 and diff.max() <= 16, (k, diff.mean(), diff.max())
            ref = np.moveaxis(mean_2x2(np.moveaxis(ref, 0, -1)), -1, 0)
        with tifffile.TiffFile(path) as tif:
            np.testing.assert_array_equal(im.read_window(1, 0, 0, 500, 350),
                                          as_planes(tif.pages[1].asarray()))
        # passthrough: the tile as stored, decodable on its own
        tables, data = raw_tile(path, 0, 1)
        jpeg = im.stored_tile(0, 1)
        assert jpeg == tables[:-2] + data[2:]
        np.testing.assert_array_equal(np.moveaxis(imagecodecs.jpeg8_decode(jpeg), -1, 0),
                                      im.read_window(0, 256, 0, 256, 256))
        assert im.stored_tile(0, 3) is None  # 1001 = 3 * 256 + 233: partial column


def test_vips_high_quality_jpeg_is_rgb(tmp_path):
    """From Q 90, vips stores RGB JPEG streams (component identifiers 'R', 'G', 'B')
    under the RGB photometric tag: no colour conversion, and still passed through."""
    src = smooth_rgb(600, 300)
    path = vips_pyramid(str(tmp_path), "vq95", src, "--compression", "jpeg", "--Q", "95",
                        "--tile-width", "256", "--tile-height", "256")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == 2
        decoded = [as_planes(p.asarray()) for p in tif.pages]
    with TiffImage(path) as im:
        assert im.levels == [(600, 300), (300, 150), (150, 75)]
        assert_levels_read(im, decoded, planar=True)
        assert np.abs(im.read_window(0, 0, 0, 600, 300) - as_planes(src)).max() <= 6
        tables, data = raw_tile(path, 0, 1)
        jpeg = im.stored_tile(0, 1)
        assert jpeg == tables[:-2] + data[2:]
        np.testing.assert_array_equal(np.moveaxis(imagecodecs.jpeg8_decode(jpeg), -1, 0),
                                      im.read_window(0, 256, 0, 256, 256))


def test_vips_16bit_deflate_pyramid(tmp_path):
    y, x = np.mgrid[0:701, 0:1001]
    src = ((x * 61 + y * 37) % 65536).astype(np.uint16)
    path = vips_pyramid(str(tmp_path), "v16", src, "--compression", "deflate",
                        "--tile-width", "256", "--tile-height", "256")
    with TiffImage(path) as im:
        assert im.levels == [(1001, 701), (500, 350), (250, 175)]
        assert (im.channels, im.colourspace, im.dtype) == (1, "grey", np.uint16)
        assert im.bits_per_channel == 16
        assert im.min_max() == [(0.0, 65535.0)]
        np.testing.assert_array_equal(im.read_window(0, 0, 0, 1001, 701)[0], src)
        for x0, y0, w, h in windows(1001, 701, 256, 256):
            np.testing.assert_array_equal(im.read_window(0, x0, y0, w, h)[0],
                                          src[y0 : y0 + h, x0 : x0 + w])
        # vips shrinks by 2x2 means: within rounding of ours
        ref = src.astype(np.float64)
        for k in (1, 2):
            ref = mean_2x2(ref)
            w, h = im.levels[k]
            assert np.abs(im.read_window(k, 0, 0, w, h)[0] - ref).max() <= 1


def test_vips_subifd_pyramid(tmp_path):
    src = smooth_rgb(700, 500)
    path = vips_pyramid(str(tmp_path), "vsub", src, "--subifd", "--compression", "lzw")
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and tif.pages[0].subifds
        decoded = [tif.pages[0].asarray()] + [p.asarray() for p in tif.pages[0].pages]
    with TiffImage(path) as im:
        assert im.levels == [(700, 500), (350, 250), (175, 125), (87, 62)]
        assert (im.tile_w, im.tile_h) == (128, 128)
        np.testing.assert_array_equal(im.read_window(0, 0, 0, 700, 500), as_planes(src))
        assert_levels_read(im, decoded)


# --- STIFF -----------------------------------------------------------------------------


def test_stiff_float_pyramid(tmp_path):
    rng = np.random.default_rng(12)
    data = rng.normal(100.0, 20.0, (700, 983)).astype(np.float32)
    data[10:20, 30:40] = -5e3
    header = fits.Header()
    header["OBJECT"] = "M 31"
    header["CRPIX1"] = 491.5
    header["CTYPE1"] = "RA---TAN"
    src = str(tmp_path / "sky.fits")
    fits.writeto(src, data, header)
    path = stiff_pyramid(str(tmp_path), "sky", [src])
    with TiffImage(path) as im:
        assert im.levels == [(983, 700), (491, 350)]
        assert (im.channels, im.dtype, im.is_float) == (1, np.float32, True)
        assert im.bits_per_channel == 32
        assert im.colourspace == "grey" and (im.tile_w, im.tile_h) == (256, 256)
        # the FITS header, card by card
        cards = fits.Header.fromstring(im.description)
        assert cards["OBJECT"] == "M 31" and cards["CRPIX1"] == 491.5
        assert cards["CTYPE1"] == "RA---TAN" and cards["NAXIS1"] == 983
        assert im.description.startswith("SIMPLE  =                    T")
        with tifffile.TiffFile(path) as tif:
            lo = tif.pages[0].tags[340].value
            hi = tif.pages[0].tags[341].value
        assert im.min_max() == [(float(np.float32(lo)), float(np.float32(hi)))]
        assert im.text_tags["app-name"].startswith("STIFF")
        # STIFF stores the FITS data as they are, rows flipped (first row = top)
        flipped = data[::-1]
        np.testing.assert_array_equal(im.read_window(0, 0, 0, 983, 700)[0], flipped)
        for x, y, w, h in windows(983, 700, 256, 256):
            np.testing.assert_array_equal(im.read_window(0, x, y, w, h)[0],
                                          flipped[y : y + h, x : x + w])
        # its reduced level is the 2x2 mean of the flipped data
        np.testing.assert_allclose(im.read_window(1, 0, 0, 491, 350)[0], mean_2x2(flipped),
                                   rtol=1e-6, atol=1e-3)


def test_stiff_three_channel_pyramid(tmp_path):
    rng = np.random.default_rng(13)
    paths, planes = [], []
    for c in range(3):
        plane = rng.normal(10.0 * c, 5.0, (600, 700)).astype(np.float32)
        paths.append(str(tmp_path / ("c%d.fits" % c)))
        fits.writeto(paths[-1], plane)
        planes.append(plane)
    path = stiff_pyramid(str(tmp_path), "rgb", paths)
    with TiffImage(path) as im:
        assert im.levels == [(700, 600), (350, 300)]
        assert im.channels == 3 and im.colourspace == "srgb"
        with tifffile.TiffFile(path) as tif:
            lo = tif.pages[0].tags[340].value
            hi = tif.pages[0].tags[341].value
        assert len(lo) == 3
        assert im.min_max() == [(float(np.float32(a)), float(np.float32(b)))
                                for a, b in zip(lo, hi)]
        cube = np.stack(planes)[:, ::-1]
        np.testing.assert_array_equal(im.read_window(0, 0, 0, 700, 600), cube)
        np.testing.assert_array_equal(im.read_window(0, 250, 250, 20, 20),
                                      cube[:, 250:270, 250:270])
        reduced = np.stack([mean_2x2(p) for p in cube])
        np.testing.assert_allclose(im.read_window(1, 0, 0, 350, 300), reduced, rtol=1e-6, atol=1e-4)


# --- broken files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> str:
    """A small valid pyramid (deflate, 3 levels as pages, 2x2 tiles on level 0)."""
    path = str(tmp_path_factory.mktemp("good") / "good.tif")
    write_levels(path, random_levels((40, 60), "u2", 3, seed=2), tile=(32, 32),
                 compression="zlib", predictor=2, description="hello")
    return path


@pytest.fixture(scope="module")
def good_subifd(tmp_path_factory) -> str:
    """The same with its reduced levels as SubIFDs."""
    path = str(tmp_path_factory.mktemp("good") / "good-subifd.tif")
    write_levels(path, random_levels((40, 60), "u2", 3, seed=2), tile=(32, 32),
                 compression="zlib", subifds=True)
    return path


def read_everything(path: str) -> None:
    with TiffImage(path) as im:
        for k, (w, h) in enumerate(im.levels):
            im.read_window(k, 0, 0, w, h)
            im.stored_tile(k, 0)
        im.min_max()


def test_good_files_read(good, good_subifd):
    read_everything(good)
    read_everything(good_subifd)


def pointer(path: str, entry: int) -> int:
    """The value offset held by IFD entry ``entry`` of a little-endian classic TIFF."""
    with open(path, "rb") as f:
        f.seek(entry + 8)
        return int.from_bytes(f.read(4), "little")


def edits(good: str, good_subifd: str) -> dict[str, tuple[str, type, Any]]:
    """name -> (file to break, error expected, edit of its bytes: returns new bytes or
    changes them in place)."""
    size = os.path.getsize(good)
    offsets_entry, order, big = tag_entry(good, 324)  # TileOffsets
    counts_entry = tag_entry(good, 325)[0]
    width_entry = tag_entry(good, 256)[0]
    tile_w_entry = tag_entry(good, 322)[0]
    compression_entry = tag_entry(good, 259)[0]
    compression1_entry = tag_entry(good, 259, page=1)[0]
    subifds_entry = tag_entry(good_subifd, 330)[0]
    with tifffile.TiffFile(good) as tif:
        p0, p2 = tif.pages[0], tif.pages[2]
        tile0, count0 = p0.dataoffsets[0], p0.databytecounts[0]
        ifd0, ifd1 = p0.offset, tif.pages[1].offset
        next0 = ifd0 + 2 + 12 * len(p0.tags)  # where page 0 points to page 1
        next2 = p2.offset + 2 + 12 * len(p2.tags)
    offsets = pointer(good, offsets_entry)
    counts = pointer(good, counts_entry)
    subifds = pointer(good_subifd, subifds_entry)

    def tag(entry, **change):
        return lambda d: patch_tag(d, entry, order, big, **change)

    def at(offset, fmt, value):
        return lambda d: patch(d, offset, fmt, value)

    return {
        "empty": (good, NotATiff, lambda d: b""),
        "fits-file": (good, NotATiff, lambda d: b"SIMPLE  =                    T" + bytes(2850)),
        "header-only": (good, DamagedTiff, lambda d: d[:8]),
        "truncated-in-first-ifd": (good, DamagedTiff, lambda d: d[: ifd0 + 20]),
        "truncated-half": (good, DamagedTiff, lambda d: d[: size // 2]),
        "truncated-last-byte": (good, DamagedTiff, lambda d: d[:-1]),
        "first-ifd-beyond-eof": (good, DamagedTiff, at(4, "<I", size + 100)),
        "first-ifd-zero": (good, DamagedTiff, at(4, "<I", 0)),
        "next-ifd-beyond-eof": (good, DamagedTiff, at(next0, "<I", size + 10)),
        "next-ifd-into-garbage": (good, DamagedTiff, at(next0, "<I", size - 3)),
        "ifd-loop": (good, DamagedTiff, at(next2, "<I", ifd1)),
        "ifd-self-loop": (good, DamagedTiff, at(next0, "<I", ifd0)),
        "tile-offset-beyond-eof": (good, DamagedTiff, at(offsets, "<I", size + 1000)),
        "tile-offset-zero": (good, DamagedTiff, at(offsets, "<I", 0)),
        "tile-bytecount-huge": (good, DamagedTiff, at(counts, "<I", 2**31)),
        "tile-offsets-count-huge": (good, DamagedTiff, tag(offsets_entry, count=2**30)),
        "tile-offsets-count-short": (good, DamagedTiff, tag(offsets_entry, count=1)),
        "tile-offsets-bad-type": (good, DamagedTiff, tag(offsets_entry, dtype=99)),
        "width-huge": (good, UnsupportedTiff, tag(width_entry, value=2**31, dtype=4)),
        "width-zero": (good, DamagedTiff, tag(width_entry, value=0)),
        "tile-huge": (good, UnsupportedTiff, tag(tile_w_entry, value=2**20, dtype=4)),
        "tile-zero": (good, NotTiled, tag(tile_w_entry, value=0)),
        "compression-unknown": (good, UnsupportedTiff, tag(compression_entry, value=12345)),
        "compression-jpeg2000": (good, UnsupportedTiff, tag(compression_entry, value=34712)),
        "compression-bad-type": (good, DamagedTiff, tag(compression_entry, dtype=99)),
        "level-1-compression-ccitt": (good, UnsupportedTiff, tag(compression1_entry, value=4)),
        "tile-garbage": (good, DamagedTiff,
                         lambda d: d.__setitem__(slice(tile0, tile0 + count0), b"\x55" * count0)),
        "tile-short-data": (good, DamagedTiff, at(counts, "<I", 5)),
        "subifd-beyond-eof": (good_subifd, DamagedTiff, at(subifds, "<I", size + 64)),
        # bytes taken for an IFD: whatever they say, a TiffError says it
        "subifd-into-garbage": (good_subifd, TiffError, at(subifds, "<I", 9)),
    }


CORPUS = ["empty", "fits-file", "header-only", "truncated-in-first-ifd", "truncated-half",
          "truncated-last-byte", "first-ifd-beyond-eof", "first-ifd-zero", "next-ifd-beyond-eof",
          "next-ifd-into-garbage", "ifd-loop", "ifd-self-loop", "tile-offset-beyond-eof",
          "tile-offset-zero", "tile-bytecount-huge", "tile-offsets-count-huge",
          "tile-offsets-count-short", "tile-offsets-bad-type", "width-huge", "width-zero",
          "tile-huge", "tile-zero", "compression-unknown", "compression-jpeg2000",
          "compression-bad-type", "level-1-compression-ccitt", "tile-garbage",
          "tile-short-data", "subifd-beyond-eof", "subifd-into-garbage"]


@pytest.mark.parametrize("name", CORPUS)
def test_broken_file(tmp_path, good, good_subifd, name):
    cases = edits(good, good_subifd)
    assert sorted(cases) == sorted(CORPUS)
    source, error, edit = cases[name]
    data = bytearray(open(source, "rb").read())
    result = edit(data)
    path = str(tmp_path / (name + ".tif"))
    with open(path, "wb") as f:
        f.write(data if result is None else result)
    with pytest.raises(TiffError) as info:
        read_everything(path)
    assert type(info.value) is error or error is TiffError, info.value


def test_every_truncation_is_an_error(tmp_path, good, good_subifd):
    path = str(tmp_path / "cut.tif")
    for source in (good, good_subifd):
        data = open(source, "rb").read()
        for n in range(0, len(data), 7):
            with open(path, "wb") as f:
                f.write(data[:n])
            with pytest.raises(TiffError):
                read_everything(path)


def test_random_damage_raises_only_tiff_errors(tmp_path, good, good_subifd):
    """Bytes changed anywhere in a valid file: it reads, or a TiffError says why."""
    rng = np.random.default_rng(2024)
    path = str(tmp_path / "fuzz.tif")
    outcomes = {"ok": 0, "error": 0}
    for source in (good, good_subifd):
        data = open(source, "rb").read()
        for _ in range(250):
            damaged = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                # mostly in the header and the IFDs, where the structure is
                where = int(rng.integers(0, len(damaged)))
                if rng.random() < 0.6:
                    where = int(rng.integers(0, 400))
                damaged[where] = int(rng.integers(0, 256))
            with open(path, "wb") as f:
                f.write(damaged)
            try:
                read_everything(path)
                outcomes["ok"] += 1
            except TiffError:
                outcomes["error"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 0, outcomes


def test_not_tiled(tmp_path):
    path = str(tmp_path / "strips.tif")
    tifffile.imwrite(path, np.zeros((100, 100), np.uint8), metadata=None)
    with pytest.raises(NotTiled):
        TiffImage(path)
    path = str(tmp_path / "second-level-in-strips.tif")
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((100, 100), np.uint8), tile=(32, 32), metadata=None)
        tif.write(np.zeros((50, 50), np.uint8), metadata=None)
    with pytest.raises(NotTiled):
        TiffImage(path)


def test_levels_must_shrink_and_match(tmp_path):
    path = str(tmp_path / "grow.tif")
    write_levels(path, [np.zeros((50, 50), np.uint8), np.zeros((100, 100), np.uint8)],
                 tile=(32, 32))
    with pytest.raises(UnsupportedTiff):
        TiffImage(path)
    path = str(tmp_path / "mixed-types.tif")
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((100, 100), np.uint8), tile=(32, 32), metadata=None)
        tif.write(np.zeros((50, 50), np.uint16), tile=(32, 32), metadata=None)
    with pytest.raises(UnsupportedTiff):
        TiffImage(path)


def test_unsupported_samples(tmp_path):
    path = str(tmp_path / "bilevel.tif")
    tifffile.imwrite(path, np.zeros((64, 64), bool), tile=(32, 32), metadata=None)
    with pytest.raises(UnsupportedTiff):
        TiffImage(path)
    path = str(tmp_path / "cmyk.tif")
    tifffile.imwrite(path, np.zeros((64, 64, 4), np.uint8), tile=(32, 32),
                     photometric="separated", metadata=None)
    with pytest.raises(UnsupportedTiff):
        TiffImage(path)
    path = str(tmp_path / "many.tif")
    with tifffile.TiffWriter(path) as tif:
        for _ in range(tiffsrc.MAX_LEVELS + 1):
            tif.write(np.zeros((16, 16), np.uint8), tile=(16, 16), metadata=None)
    with pytest.raises(UnsupportedTiff):
        TiffImage(path)


def test_unknown_compression_fails_on_reading(tmp_path, good):
    """A level whose compression is not decoded here: the file opens and describes
    itself (as iipsrv's does); reading a tile of that level is UnsupportedTiff, and
    the other levels read."""
    data = bytearray(open(good, "rb").read())
    entry, order, big = tag_entry(good, 259, page=1)
    patch_tag(data, entry, order, big, value=34712)  # JPEG 2000
    path = str(tmp_path / "j2k-level.tif")
    open(path, "wb").write(bytes(data))
    with TiffImage(path) as im:
        assert im.levels == [(60, 40), (30, 20), (15, 10)] and im.description == "hello"
        im.read_window(0, 0, 0, 60, 40)
        im.read_samples(2, 0, 0, 15, 10)
        for read in (im.read_window, im.read_samples):
            with pytest.raises(UnsupportedTiff):
                read(1, 0, 0, 1, 1)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(UnreadableTiff):
        TiffImage(str(tmp_path / "nope.tif"))
    with pytest.raises(UnreadableTiff):
        TiffImage(str(tmp_path))  # a directory
    fifo = str(tmp_path / "fifo.tif")
    os.mkfifo(fifo)
    with pytest.raises(UnreadableTiff):  # and no wait for a writer
        TiffImage(fifo)
