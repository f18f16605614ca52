"""Tiled pyramidal TIFF images: the only module that imports tifffile and imagecodecs.

The files iipsrv serves: a tiled TIFF whose reduced resolutions are either further
top-level pages (what ``vips tiffsave --tile --pyramid`` and STIFF write) or SubIFDs of
the first page (``vips tiffsave --subifd``, OME-TIFF).  tifffile parses the structure
only (tags, tile offsets and byte counts); no pixel is decoded on opening.  A window is
read tile by tile: each overlapping tile's bytes come from the file with ``os.pread``
and imagecodecs decodes them, so a window never costs more than the tiles it touches.
Decoded tiles are kept in a small least-recently-used cache per image.

Levels are numbered as the file stores them, 0 being the full resolution; they are
never re-binned.  Rows are in file order, which for TIFF is top to bottom (STIFF writes
the FITS rows flipped, so its files are already in display orientation).

Every problem with a file raises a ``TiffError`` subclass and nothing else: a TIFF that
is not tiled (``NotTiled``), damaged (``DamagedTiff``: truncated, offsets beyond the
end, undecodable tiles), or outside what is supported (``UnsupportedTiff``: unknown
compression, sample layout, sizes above the bounds below).  Structure problems are
found on opening; a tile that does not decode, or a level whose compression is not
decoded here, when a window needs it (so the file's description is still given, as
iipsrv gives it).

``TiffImage`` is also the image source the server uses (``iipy.imaging.source``'s
``ImageSource`` and ``LevelledSource``), opened by ``TiffImage.open(ref)``.  The
methods of that interface (``read_level``, ``stored_jpeg``, ``values``, ``read``...)
turn every ``TiffError`` into ``iipy.errors.UnreadableImage``, whose text names the
image as requested: iipsrv answers any TIFF it cannot open or read with a file error
(docs/protocol.md §4.1, §8.5.2).  The TIFF-level methods (``read_window``,
``stored_tile``, ``min_max``) raise ``TiffError``.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import contextlib
from typing import Iterator

import imagecodecs
import numpy as np
import tifffile

from iipy.errors import UnreadableImage
from iipy.imaging import kernels
from iipy.imaging.paths import ImageRef
from iipy.imaging.source import DisplayRange

log = logging.getLogger(__name__)

#: Largest accepted level, in pixels (a 65536 x 65536 image).
MAX_LEVEL_PIXELS = 2**32
#: Largest accepted tile, decoded (all samples of one tile).
MAX_TILE_BYTES = 16 * 2**20
#: Most levels accepted (more than a 2**32-pixel image can have).
MAX_LEVELS = 40
#: Longest text tag read (ImageDescription holds a FITS header: some tens of KiB).
MAX_TEXT_BYTES = 16 * 2**20
#: Default bound of the decoded-tile cache of one image.
DEFAULT_TILE_CACHE_BYTES = 16 * 2**20

TIFF_EXTENSIONS = (".tif", ".tiff", ".ptif", ".ptiff")

_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")

# Compression tag values this module decodes.
_NONE, _LZW, _JPEG, _DEFLATE, _PACKBITS, _OLD_DEFLATE, _ZSTD = 1, 5, 7, 8, 32773, 32946, 50000
_DECOMPRESSORS: dict[int, Callable[..., Any]] = {
    _LZW: imagecodecs.lzw_decode,
    _DEFLATE: imagecodecs.deflate_decode,
    _OLD_DEFLATE: imagecodecs.deflate_decode,
    _PACKBITS: imagecodecs.packbits_decode,
    _ZSTD: imagecodecs.zstd_decode,
}

# Photometric interpretations: MinIsBlack, RGB, palette, YCbCr (JPEG only).
_GREY, _RGB, _PALETTE, _YCBCR = 1, 2, 3, 6

# (SampleFormat, BitsPerSample) -> sample type.
_DTYPES = {
    (1, 8): "u1", (1, 16): "u2", (1, 32): "u4",
    (2, 8): "i1", (2, 16): "i2", (2, 32): "i4",
    (3, 16): "f2", (3, 32): "f4", (3, 64): "f8",
}

# Text tags reported by OBJ (docs/protocol.md §4.2), as iipsrv 1.1 names them.
_METADATA_TAGS = {315: "author", 33432: "copyright", 306: "create-dtm", 305: "app-name"}
_DESCRIPTION = 270

# Tags whose loss would change what is read: sizes, samples, compression, tiles,
# colour map, SubIFDs, sample range and text.
_USED_TAGS = frozenset({256, 257, 258, 259, 262, 266, 270, 277, 284, 305, 306, 315, 317,
                        320, 322, 323, 324, 325, 330, 339, 340, 341, 347, 33432})


class TiffError(Exception):
    """Base class of every error this module raises."""


class NotATiff(TiffError):
    """The file does not start with a TIFF or BigTIFF signature."""


class UnreadableTiff(TiffError):
    """The operating system refused to open or read the file."""


class NotTiled(TiffError):
    """The image, or one of its levels, is stored in strips rather than tiles."""


class DamagedTiff(TiffError):
    """Broken structure, data outside the file, or a tile that does not decode."""


class UnsupportedTiff(TiffError):
    """A valid TIFF this module does not read (compression, samples, sizes)."""


def is_tiff(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) is a TIFF or BigTIFF signature.

    This is how iipsrv 1.1 recognises a single file (docs/protocol.md §4.1): by its
    first bytes, whatever its name.  Callers should decide by content too, so that a
    FITS file named ``.tif`` is still served as FITS and a TIFF without an extension
    still opens; ``has_tiff_extension`` is for what has no content to look at yet
    (image sequences, directory listings).
    """
    return head[:4] in _MAGICS


def claims_tiff(head: bytes) -> bool:
    """Whether iipsrv 1.1 takes a file starting with ``head`` for a TIFF: the TIFF and
    BigTIFF signatures, and also ``I I`` (an old signature that libtiff then refuses,
    so such a file gets a file error rather than the unsupported-type page)."""
    return is_tiff(head) or head[:3] == b"I I"


def has_tiff_extension(name: str) -> bool:
    """Whether ``name`` ends in .tif, .tiff, .ptif or .ptiff (any case)."""
    return name.lower().endswith(TIFF_EXTENSIONS)


@dataclass(frozen=True, slots=True)
class _Level:
    """Where the tiles of one level are and how to decode them."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int  # tiles per row
    down: int  # tiles per column
    compression: int
    predictor: int
    bit_reversed: bool  # FillOrder 2
    jpegtables: bytes | None
    offsets: np.ndarray  # int64, one per tile (per sample plane when planar)
    counts: np.ndarray  # int64


class TiffImage:
    """A tiled pyramidal TIFF opened for reading; see the module docstring.

    Attributes describe the full resolution (the first page): ``width``, ``height``,
    ``channels`` (samples per pixel; 3 for a palette image, which is expanded to RGB),
    ``bits_per_channel``, ``is_float``, ``dtype`` (of the stored samples), ``tile_w``,
    ``tile_h``, ``colourspace`` ("grey" or "srgb"), ``levels`` ((width, height) per
    level, full resolution first), ``description`` (ImageDescription) and ``text_tags``
    (the other text tags OBJ reports, by OBJ name).  ``ref`` is the image as the server
    resolved it (None when opened by path).
    """

    def __init__(self, path: str, *, tile_cache_bytes: int = DEFAULT_TILE_CACHE_BYTES,
                 ref: ImageRef | None = None):
        self.path = path
        self.ref = ref  # type: ignore[assignment]
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = max(0, int(tile_cache_bytes))
        try:
            # non-blocking: a FIFO in the image tree must not hang the worker
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise UnreadableTiff("cannot open %s: %s" % (path, exc.strerror)) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableTiff("%s is not a regular file" % path)
            self._file: Any = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        self._file.raw.name = path  # tifffile names the file by it
        self._fd = fd
        self._size = st.st_size
        try:
            if not is_tiff(self._pread(8, 0)):
                raise NotATiff("%s is not a TIFF file" % path)
            self._open()
        except BaseException:
            self.close()
            raise

    # --- opening ---------------------------------------------------------------------

    def _open(self) -> None:
        quiet = _Quiet(self.path)
        tifffile_log = logging.getLogger("tifffile")
        tifffile_log.addFilter(quiet)
        try:
            try:
                tif = tifffile.TiffFile(self._file)
            except TiffError:
                raise
            except Exception as exc:  # tifffile raises many types for damaged files
                raise self._damaged(exc) from None
            try:
                pages = self._level_pages(tif)
                self._describe(pages)
            except TiffError:
                raise
            except Exception as exc:
                raise self._damaged(exc) from None
            finally:
                tif.close()
        finally:
            tifffile_log.removeFilter(quiet)

    def _damaged(self, exc: Exception) -> DamagedTiff:
        return DamagedTiff("%s: unreadable structure (%s: %s)"
                           % (self.path, type(exc).__name__, exc))

    def _level_pages(self, tif: Any) -> list[Any]:
        """The pages holding the levels: SubIFDs of page 0 if it has any, otherwise
        every top-level page (iipsrv 1.1 requires all of them to be tiled)."""
        first = tif.pages.first
        if first.subifds:
            subs = first.pages
            pages = [first] + [subs[i] for i in range(len(subs))]
            if len(pages) != len(first.subifds) + 1 or any(p is None for p in pages):
                raise DamagedTiff("%s: unreadable SubIFD" % self.path)
            if len(pages) > MAX_LEVELS:
                raise UnsupportedTiff("%s: more than %d levels" % (self.path, MAX_LEVELS))
            for page in pages:
                self._check_ifd(tif, page)
            return pages
        pages, seen, next_ifd = [], set(), 0
        for page in tif.pages:
            if page is None or page.offset in seen:
                raise DamagedTiff("%s: broken chain of pages" % self.path)
            seen.add(page.offset)
            pages.append(page)
            if len(pages) > MAX_LEVELS:
                raise UnsupportedTiff("%s: more than %d levels" % (self.path, MAX_LEVELS))
            next_ifd = self._check_ifd(tif, page)
        # tifffile stops quietly at an IFD it cannot read: the chain must end after the
        # last page it gave, or the file is damaged.
        if not pages or next_ifd != 0:
            raise DamagedTiff("%s: broken chain of pages" % self.path)
        return pages

    def _check_ifd(self, tif: Any, page: Any) -> int:
        """Check that tifffile kept every tag of ``page`` this module relies on (it
        drops the ones it cannot read, and would then assume defaults); return the
        offset of the next IFD."""
        order = tif.byteorder
        count_fmt, entry, next_fmt = ("Q", 20, "Q") if tif.is_bigtiff else ("H", 12, "I")
        count_size = struct.calcsize(count_fmt)
        raw = self._pread(count_size, page.offset)
        if len(raw) != count_size:
            raise DamagedTiff("%s: truncated page" % self.path)
        (n,) = struct.unpack(order + count_fmt, raw)
        if n > 65535:
            raise DamagedTiff("%s: page of %d tags" % (self.path, n))
        size = n * entry + struct.calcsize(next_fmt)
        raw = self._pread(size, page.offset + count_size)
        if len(raw) != size:
            raise DamagedTiff("%s: truncated page" % self.path)
        codes = {struct.unpack_from(order + "H", raw, i * entry)[0] for i in range(n)}
        lost = sorted(c for c in codes & _USED_TAGS if c not in page.tags)
        if lost:
            raise DamagedTiff("%s: unreadable tag %d" % (self.path, lost[0]))
        return struct.unpack_from(order + next_fmt, raw, n * entry)[0]

    def _describe(self, pages: list[Any]) -> None:
        first = pages[0]
        spp = int(first.samplesperpixel)
        bits = int(first.bitspersample)
        fmt = int(first.sampleformat)
        photometric = int(first.photometric)
        planar = int(first.planarconfig)
        code = _DTYPES.get((fmt, bits))
        if code is None:
            raise UnsupportedTiff("%s: %d-bit samples of format %d" % (self.path, bits, fmt))
        if photometric not in (_GREY, _RGB, _PALETTE, _YCBCR):
            raise UnsupportedTiff("%s: photometric interpretation %d" % (self.path, photometric))
        if planar not in (1, 2):
            raise DamagedTiff("%s: planar configuration %d" % (self.path, planar))
        self._stored = np.dtype(_byteorder(first) + code)
        self.dtype = self._stored.newbyteorder("=")
        self.bits_per_channel = bits
        self.is_float = fmt == 3
        self._samples = spp
        self._planar = planar == 2 and spp > 1
        self._photometric = photometric
        self._palette: np.ndarray | None = None
        if photometric == _PALETTE:
            if spp != 1 or bits != 8 or fmt != 1:
                raise UnsupportedTiff("%s: palette of %d x %d-bit samples"
                                      % (self.path, spp, bits))
            self._palette = _palette_lut(first.colormap, self.path)
            self.dtype = np.dtype(np.uint8)
            self.channels = 3
        else:
            self.channels = spp
        self.colourspace = "grey" if photometric == _GREY else "srgb"

        self._levels: list[_Level] = []
        for k, page in enumerate(pages):
            layout = (int(page.samplesperpixel), int(page.bitspersample),
                      int(page.sampleformat), int(page.photometric), int(page.planarconfig))
            if layout != (spp, bits, fmt, photometric, planar):
                raise UnsupportedTiff("%s: level %d stores its samples differently"
                                      % (self.path, k))
            self._levels.append(self._level(page, k))
        for k in range(1, len(self._levels)):
            a, b = self._levels[k - 1], self._levels[k]
            if b.width > a.width or b.height > a.height:
                raise UnsupportedTiff("%s: level %d is larger than level %d"
                                      % (self.path, k, k - 1))
        base = self._levels[0]
        self.width, self.height = base.width, base.height
        self.tile_w, self.tile_h = base.tile_w, base.tile_h
        self.levels = [(lv.width, lv.height) for lv in self._levels]

        self._min_max = self._sample_range(first)
        self.description = self._text(first, _DESCRIPTION) or ""
        self.text_tags: dict[str, str] = {}
        for tag, key in _METADATA_TAGS.items():
            value = self._text(first, tag)
            if value is not None:
                self.text_tags[key] = value
        # what the pipeline and SPECTRA need to know of the samples (docs/protocol.md
        # §6.2, §5.23): 8-bit ones are display values, and iipsrv divides 8- and 16-bit
        # ones by the type's maximum in SPECTRA
        self.display_8bit = self.dtype == np.uint8
        #: Tiles are decoded, not mapped (levels are stored in the file anyway).
        self.mapped = False
        self.spectra_scale = 1.0
        if not self.is_float and self.bits_per_channel in (8, 16):
            self.spectra_scale = 255.0 if self.bits_per_channel == 8 else 65535.0

    def _level(self, page: Any, k: int) -> _Level:
        if not page.is_tiled or not page.tilewidth or not page.tilelength:
            raise NotTiled("%s: level %d is not tiled" % (self.path, k))
        if page.imagedepth != 1 or page.tiledepth != 1:
            raise UnsupportedTiff("%s: level %d is a volume" % (self.path, k))
        w, h = int(page.imagewidth), int(page.imagelength)
        tw, th = int(page.tilewidth), int(page.tilelength)
        if w <= 0 or h <= 0:
            raise DamagedTiff("%s: level %d is empty" % (self.path, k))
        if w * h > MAX_LEVEL_PIXELS:
            raise UnsupportedTiff("%s: level %d has %d x %d pixels" % (self.path, k, w, h))
        per_tile = 1 if self._planar else self._samples
        if tw * th * per_tile * self._stored.itemsize > MAX_TILE_BYTES:
            raise UnsupportedTiff("%s: level %d has %d x %d tiles" % (self.path, k, tw, th))
        compression = int(page.compression)
        # a compression nobody here decodes is refused when a tile of the level is read,
        # not now: iipsrv too describes such a file and fails on its tiles
        decodable = compression in (_NONE, _JPEG) or compression in _DECOMPRESSORS
        predictor = int(page.predictor) if compression not in (_NONE, _JPEG) and decodable \
            else 1
        if predictor not in (1, 2, 3) or (predictor == 3 and not self.is_float) \
                or (predictor == 2 and self.is_float):
            raise UnsupportedTiff("%s: predictor %d" % (self.path, predictor))
        jpegtables = None
        if compression == _JPEG:
            if self.bits_per_channel != 8 or self._planar or self._photometric == _PALETTE:
                raise UnsupportedTiff("%s: JPEG of this sample layout" % self.path)
            jpegtables = page.jpegtables or None
        elif self._photometric == _YCBCR:
            raise UnsupportedTiff("%s: YCbCr samples without JPEG" % self.path)
        across, down = -(-w // tw), -(-h // th)
        expected = across * down * (self._samples if self._planar else 1)
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if offsets.shape != (expected,) or counts.shape != (expected,):
            raise DamagedTiff("%s: level %d lists %d tiles, not %d"
                              % (self.path, k, offsets.size, expected))
        used = counts > 0
        if np.any(counts < 0) or np.any(offsets[used] < 8) \
                or np.any(offsets[used] + counts[used] > self._size):
            raise DamagedTiff("%s: level %d has tiles beyond the end of the file"
                              % (self.path, k))
        decoded = tw * th * per_tile * self._stored.itemsize
        if np.any(counts > 2 * decoded + 2**20):
            raise DamagedTiff("%s: level %d has oversized tiles" % (self.path, k))
        return _Level(w, h, tw, th, across, down, compression, predictor,
                      int(page.fillorder) == 2 and compression != _JPEG,
                      jpegtables, offsets, counts)

    def _sample_range(self, page: Any) -> list[tuple[float, float]]:
        """Min-Max-sample-values as iipsrv 1.1 derives them (docs/protocol.md §4.2)."""
        def values(code: int) -> list[float]:
            tag = page.tags.get(code)
            if tag is None or tag.value is None:
                return [0.0] * self.channels
            value = tag.value
            if isinstance(value, bytes):  # BYTE values (the type of 8-bit samples)
                value = list(value)
            vals = [float(v) for v in np.asarray(value, np.float64).ravel()]
            if len(vals) == 1:
                return vals * self.channels
            return (vals + [0.0] * self.channels)[: self.channels]

        lows, highs = values(340), values(341)
        default = {8: 255.0, 12: 4095.0, 16: 65535.0}.get(self.bits_per_channel, 0.0)
        if self.bits_per_channel < 8:
            default = 255.0
        elif self.bits_per_channel == 32 and not self.is_float:
            default = 4294967295.0
        out = []
        for lo, hi in zip(lows, highs):
            if hi == 0:
                hi = default
            # iipsrv keeps them as C floats
            out.append((float(np.float32(lo)), float(np.float32(hi))))
        return out

    def _text(self, page: Any, code: int) -> str | None:
        """An ASCII tag's raw bytes up to the first NUL (as libtiff returns them), as
        Latin-1 text so that ``.encode("latin-1")`` gives the bytes back; None when
        the tag is absent or points outside the file."""
        tag = page.tags.get(code)
        if tag is None or tag.dtype not in (1, 2, 7):
            return None
        count, offset = int(tag.count), int(tag.valueoffset)
        if count > MAX_TEXT_BYTES:
            raise UnsupportedTiff("%s: text tag %d of %d bytes" % (self.path, code, count))
        if count == 0:
            return ""
        if offset < 8 or offset + count > self._size:
            return None
        raw = self._pread(count, offset)
        return raw.split(b"\0", 1)[0].decode("latin-1")

    # --- reading ---------------------------------------------------------------------

    def min_max(self) -> list[tuple[float, float]]:
        """(min, max) per channel, as iipsrv 1.1 reports Min-Max-sample-values: the
        SMinSampleValue and SMaxSampleValue tags (one value for all channels, or one
        per channel), a missing or zero max replaced by the type's maximum (255, 4095,
        65535 or 4294967295; float data keeps 0), both rounded to float32."""
        return list(self._min_max)

    def read_window(self, k: int, x: int, y: int, w: int, h: int,
                    out: np.ndarray | None = None) -> np.ndarray:
        """The stored sample values of window (x, y, w, h) of level k as float32
        (channels, h, w), decoding only the tiles it overlaps.

        ``out``, if given, must be a float32 array of that shape; it is filled and
        returned.  A window outside the level is the caller's error (ValueError).
        """
        lv = self._window_level(k, x, y, w, h)
        shape = (self.channels, h, w)
        if out is None:
            out = np.empty(shape, np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise ValueError("out must be float32 %r" % (shape,))
        for (ys, xs), tile in self._pieces(k, lv, x, y, w, h):
            dst = out[:, ys, xs]
            if self._samples == 1 and self._palette is None:
                dst[0] = tile[..., 0]
            else:
                dst[...] = np.moveaxis(tile, -1, 0)
        return out

    def read_samples(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The samples of window (x, y, w, h) of level k in their stored type (native
        byte order; a palette image's RGB), interleaved: (h, w, channels).  A new
        array, however the window lies on the tiles."""
        lv = self._window_level(k, x, y, w, h)
        out = np.empty((h, w, self.channels), self.dtype)
        for (ys, xs), tile in self._pieces(k, lv, x, y, w, h):
            out[ys, xs] = tile
        return out

    def _window_level(self, k: int, x: int, y: int, w: int, h: int) -> _Level:
        lv = self._level_at(k)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > lv.width or y + h > lv.height:
            raise ValueError("window %d,%d %dx%d outside level %d (%dx%d)"
                             % (x, y, w, h, k, lv.width, lv.height))
        return lv

    def _pieces(self, k: int, lv: _Level, x: int, y: int, w: int, h: int
                ) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
        """For each tile the window overlaps: (rows, columns) of the window it covers,
        and its samples there, (rows, columns, channels) (palette expanded, separate
        planes gathered)."""
        tw, th = lv.tile_w, lv.tile_h
        plane_tiles = lv.across * lv.down
        for ty in range(y // th, (y + h - 1) // th + 1):
            sy0 = max(y, ty * th)
            sy1 = min(y + h, (ty + 1) * th)
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                sx0 = max(x, tx * tw)
                sx1 = min(x + w, (tx + 1) * tw)
                rows = slice(sy0 - ty * th, sy1 - ty * th)
                cols = slice(sx0 - tx * tw, sx1 - tx * tw)
                index = ty * lv.across + tx
                if self._planar:
                    tile = np.stack([self._tile(k, lv, s * plane_tiles + index)[rows, cols, 0]
                                     for s in range(self._samples)], axis=-1)
                else:
                    tile = self._tile(k, lv, index)[rows, cols]
                    if self._palette is not None:
                        tile = self._palette[tile[..., 0]]
                yield (slice(sy0 - y, sy1 - y), slice(sx0 - x, sx1 - x)), tile

    def stored_tile(self, k: int, tile_index: int) -> bytes | None:
        """Tile ``tile_index`` (row-major in level k's grid) as a standalone JPEG, when
        level k is 8-bit JPEG-compressed grey or colour with the image's tile size and
        the tile is a full one of the grid; None otherwise.

        The bytes are those iipsrv 1.3 sends without re-encoding (CODEC_PASSTHROUGH):
        the JPEGTables without their end marker followed by the tile's stream without
        its start marker (the tile alone when it carries its own tables).  None also
        when a browser would decode the stream differently from ``read_window`` (an RGB
        page whose stream would be taken for YCbCr), or when its frame is not that of a
        full tile: decode those with ``read_window``.
        """
        lv = self._level_at(k)
        if lv.compression != _JPEG or (lv.tile_w, lv.tile_h) != (self.tile_w, self.tile_h):
            return None
        if self._samples != (1 if self._photometric == _GREY else 3):
            return None
        if not 0 <= tile_index < lv.across * lv.down:
            return None
        tx, ty = tile_index % lv.across, tile_index // lv.across
        if (tx + 1) * lv.tile_w > lv.width or (ty + 1) * lv.tile_h > lv.height:
            return None
        count = int(lv.counts[tile_index])
        if count == 0:
            return None
        data = self._pread_exact(count, int(lv.offsets[tile_index]))
        tables = lv.jpegtables
        if tables is not None and len(tables) > 4 and tables[:2] == b"\xff\xd8" \
                and tables[-2:] == b"\xff\xd9" and data[:2] == b"\xff\xd8":
            jpeg = tables[:-2] + data[2:]
        else:
            jpeg = data
        head = _jpeg_header(jpeg)
        if head is None or not head.tables or head.precision != 8 \
                or (head.height, head.width) != (lv.tile_h, lv.tile_w) \
                or head.components != self._samples:
            return None
        if self._photometric == _RGB and not head.rgb:
            return None
        return jpeg

    # --- the image source (iipy.imaging.source): domain errors only --------------------

    @classmethod
    def open(cls, ref: ImageRef, *, tile_cache_bytes: int = DEFAULT_TILE_CACHE_BYTES
             ) -> TiffImage:
        """The TIFF file of ``ref`` opened as an image source; a file that cannot be
        served (not tiled, damaged, unsupported) raises UnreadableImage."""
        try:
            return cls(ref.path, tile_cache_bytes=tile_cache_bytes, ref=ref)
        except NotTiled as exc:
            log.warning("%s", exc)
            raise UnreadableImage("TIFF image '%s' is not tiled" % ref.fif) from None
        except TiffError as exc:
            log.warning("cannot open %s", exc)
            raise UnreadableImage("Unable to open TIFF file '%s'" % ref.fif) from None

    @contextlib.contextmanager
    def _serving(self) -> Iterator[None]:
        """A TiffError while serving is a file error naming the image as requested."""
        try:
            yield
        except TiffError as exc:
            log.warning("cannot read %s", exc)
            name = self.ref.fif if self.ref is not None else self.path
            raise UnreadableImage("Unable to read data of '%s'" % name) from None

    def read_level(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The stored samples of window (x, y, w, h) of level k, float32 (C, h, w)."""
        with self._serving():
            return self.read_window(k, x, y, w, h)

    def level_samples(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``read_samples`` for the server: (h, w, C) in the stored type."""
        with self._serving():
            return self.read_samples(k, x, y, w, h)

    def stored_jpeg(self, k: int, tile: int) -> bytes | None:
        """``stored_tile(k, tile)`` for the server (docs/protocol.md §5.3)."""
        with self._serving():
            return self.stored_tile(k, tile)

    def default_ranges(self) -> list[DisplayRange]:
        """``min_max()`` as display ranges (docs/protocol.md §4.2)."""
        return [DisplayRange(lo, hi) for lo, hi in self._min_max]

    def read(self, channel: int, x: int, y: int, w: int, h: int,
             out: np.ndarray | None = None) -> np.ndarray:
        """A full-resolution window of one channel as float32 (h, w)."""
        with self._serving():
            window = self.read_window(0, x, y, w, h)[channel]
        if out is None:
            return window
        out[...] = window
        return out

    def read_binned(self, channel: int, x: int, y: int, w: int, h: int,
                    out: np.ndarray | None = None) -> np.ndarray:
        """The 2x2 means of a full-resolution window of one channel (h // 2, w // 2)."""
        return kernels.bin2x2(self.read(channel, x, y, w, h), out=out)

    def scan_rows(self, channel: int, y: int, h: int,
                  samples: Callable[[np.ndarray], None]) -> None:
        """``samples(values)`` with the values of whole rows [y, y + h) of one channel."""
        samples(self.read(channel, 0, y, self.width, h))

    def read_rows(self, channel: int, y: int, h: int, out: np.ndarray | None = None,
                  binned: bool = False,
                  samples: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """Whole full-resolution rows [y, y + h) of one channel as float32 (h, width), or
        with ``binned`` their 2x2 means (h // 2, width // 2); ``samples(values)`` is called
        first with the values of the rows (top row first, the order of the file)."""
        rows = self.read(channel, 0, y, self.width, h, None if binned else out)
        if samples is not None:
            samples(rows)
        return kernels.bin2x2(rows, out=out) if binned else rows

    def values(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The stored values of a full-resolution window, every channel, float64."""
        return self.read_level(0, x, y, w, h).astype(np.float64)

    def metadata(self, name: str) -> str:
        """An OBJ metadata object: ``subject`` is ImageDescription, ``author``,
        ``copyright``, ``create-dtm`` and ``app-name`` the Artist, Copyright, DateTime
        and Software tags, as iipsrv 1.1 reports them; "" for the others.  The text
        gives the tag's bytes back with ``.encode("utf-8", "surrogateescape")``, which
        is how OBJ answers are encoded, so they are sent exactly as stored."""
        value = self.description if name == "subject" else self.text_tags.get(name, "")
        return value.encode("latin-1").decode("utf-8", "surrogateescape")

    def close(self) -> None:
        """Release the file; idempotent."""
        f = getattr(self, "_file", None)
        if f is not None:
            self._file = None
            f.close()
        self._cache.clear()
        self._cache_bytes = 0

    def __enter__(self) -> TiffImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "TiffImage(%r, %dx%d, %d x %s, %d levels)" % (
            self.path, self.width, self.height, self.channels, self.dtype, len(self.levels))

    # --- tiles -----------------------------------------------------------------------

    def _level_at(self, k: int) -> _Level:
        if self._file is None:
            raise TiffError("%s is closed" % self.path)
        if not 0 <= k < len(self._levels):
            raise ValueError("no level %d in %s" % (k, self.path))
        return self._levels[k]

    def _tile(self, k: int, lv: _Level, index: int) -> np.ndarray:
        """Tile ``index`` of level k decoded, native byte order, shaped
        (tile_h, tile_w, samples per tile); from the cache when it is there."""
        key = (k, index)
        tile = self._cache.get(key)
        if tile is not None:
            self._cache.move_to_end(key)
            return tile
        tile = self._decode(lv, index)
        size = tile.nbytes
        if size <= self._cache_limit:
            self._cache[key] = tile
            self._cache_bytes += size
            while self._cache_bytes > self._cache_limit:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return tile

    def _decode(self, lv: _Level, index: int) -> np.ndarray:
        spt = 1 if self._planar else self._samples
        shape = (lv.tile_h, lv.tile_w, spt)
        if lv.compression not in (_NONE, _JPEG) and lv.compression not in _DECOMPRESSORS:
            raise UnsupportedTiff("%s: compression %d" % (self.path, lv.compression))
        count = int(lv.counts[index])
        if count == 0:  # a tile never written: zeros, as libtiff gives
            return np.zeros(shape, self._stored.newbyteorder("="))
        data = self._pread_exact(count, int(lv.offsets[index]))
        try:
            if lv.compression == _JPEG:
                return self._decode_jpeg(lv, data, shape)
            nbytes = lv.tile_w * lv.tile_h * spt * self._stored.itemsize
            if lv.bit_reversed:
                data = imagecodecs.bitorder_decode(data)
            if lv.compression == _NONE:
                if len(data) < nbytes:
                    raise DamagedTiff("%s: short tile %d" % (self.path, index))
                raw = np.frombuffer(data, self._stored, count=math.prod(shape))
            else:
                buf = np.empty(nbytes, np.uint8)
                got = _DECOMPRESSORS[lv.compression](data, out=buf)
                if got.size != nbytes:
                    raise DamagedTiff("%s: tile %d decodes to %d bytes, not %d"
                                      % (self.path, index, got.size, nbytes))
                raw = buf.view(self._stored)
            raw = raw.reshape(shape)
            if lv.predictor == 2:
                raw = imagecodecs.delta_decode(raw, axis=-2, out=raw)
            elif lv.predictor == 3:
                raw = imagecodecs.floatpred_decode(raw, axis=-2, out=raw)
            if not raw.dtype.isnative:
                raw = raw.astype(raw.dtype.newbyteorder("="))
            return raw
        except TiffError:
            raise
        except Exception as exc:  # imagecodecs raises its own error type per codec
            raise DamagedTiff("%s: tile %d does not decode: %s"
                              % (self.path, index, exc)) from None

    def _decode_jpeg(self, lv: _Level, data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        head = _jpeg_header(data)
        if head is None or head.precision != 8 or head.components != shape[2] \
                or head.height > shape[0] or head.width > shape[1]:
            raise DamagedTiff("%s: JPEG tile does not match the tile size" % self.path)
        colorspace, outcolorspace = _JPEG_COLOURS[self._photometric]
        if (head.height, head.width) == shape[:2]:  # as always: decode in place
            out = np.empty(shape, np.uint8)
            imagecodecs.jpeg8_decode(data, tables=lv.jpegtables, colorspace=colorspace,
                                     outcolorspace=outcolorspace,
                                     out=out[..., 0] if shape[2] == 1 else out)
            return out
        # a frame smaller than the tile: the rest is zeros
        pixels = imagecodecs.jpeg8_decode(data, tables=lv.jpegtables, colorspace=colorspace,
                                          outcolorspace=outcolorspace)
        out = np.zeros(shape, np.uint8)
        out[: head.height, : head.width] = pixels.reshape(head.height, head.width, shape[2])
        return out

    def _pread(self, n: int, offset: int) -> bytes:
        try:
            return os.pread(self._fd, n, offset)
        except OSError as exc:
            raise UnreadableTiff("cannot read %s: %s" % (self.path, exc.strerror)) from None

    def _pread_exact(self, n: int, offset: int) -> bytes:
        data = self._pread(n, offset)
        if len(data) != n:
            raise DamagedTiff("%s: truncated at offset %d" % (self.path, offset))
        return data


class _Quiet(logging.Filter):
    """Keeps tifffile's complaints about a file out of the server's log while it is
    parsed (a damaged file is reported once, by the exception), at debug level only."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("%s: tifffile: %s", self.path, record.getMessage())
        return False


def _byteorder(page: Any) -> str:
    """'<' or '>': the byte order of the file holding ``page``."""
    return "<" if page.parent.byteorder == "<" else ">"


def _palette_lut(colormap: Any, path: str) -> np.ndarray:
    """A palette as a (256, 3) uint8 table: 16-bit entries scaled down as libtiff does
    (entries that all fit in 8 bits are taken as 8-bit, as some writers store them)."""
    if colormap is None:
        raise DamagedTiff("%s: palette image without a colour map" % path)
    cmap = np.asarray(colormap, dtype=np.uint16)
    if cmap.shape != (3, 256):
        raise DamagedTiff("%s: colour map of shape %r" % (path, cmap.shape))
    if cmap.max() > 255:
        cmap = cmap >> 8
    return np.ascontiguousarray(cmap.T.astype(np.uint8))


_CS = imagecodecs.JPEG8.CS
# photometric -> colour spaces of the JPEG stream and of the decoded tile.  The stream
# of a YCbCr page is left to the decoder (markers and component identifiers say what it
# holds, and vips writes RGB streams under that tag); an RGB page's is RGB (TIFF 6.0).
_JPEG_COLOURS = {
    _YCBCR: (None, _CS.RGB),
    _RGB: (_CS.RGB, _CS.RGB),
    _GREY: (_CS.GRAYSCALE, _CS.GRAYSCALE),
}

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True, slots=True)
class _JpegHeader:
    """What a JPEG stream's markers before the scan say."""

    precision: int
    height: int
    width: int
    ids: bytes  # component identifiers, one per component
    tables: bool  # quantization and Huffman tables both present
    rgb: bool  # what a decoder assumes without being told: RGB (True) or YCbCr

    @property
    def components(self) -> int:
        return len(self.ids)


def _jpeg_header(data: bytes) -> _JpegHeader | None:
    """The header of a JPEG stream, or None if it has no readable frame header.

    ``rgb`` follows libjpeg's guess for three components: YCbCr after a JFIF marker,
    what an Adobe marker's transform says, otherwise RGB only for component
    identifiers 'R', 'G', 'B'.
    """
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    dqt = dht = jfif = False
    adobe: int | None = None
    frame: tuple[int, int, int, bytes] | None = None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        if marker == 0xD9:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            return None
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker == 0xDB:
            dqt = True
        elif marker == 0xC4:
            dht = True
        elif marker == 0xE0 and body[:5] == b"JFIF\0":
            jfif = True
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
        elif marker in _SOF_MARKERS and frame is None:
            if len(body) < 6 or len(body) < 6 + 3 * body[5]:
                return None
            n = body[5]
            frame = (body[0], (body[1] << 8) | body[2], (body[3] << 8) | body[4],
                     bytes(body[6 + 3 * i] for i in range(n)))
        pos += 2 + length
    if frame is None:
        return None
    precision, height, width, ids = frame
    if len(ids) != 3 or jfif:
        rgb = False
    elif adobe is not None:
        rgb = adobe == 0
    else:
        rgb = ids == b"RGB"
    return _JpegHeader(precision, height, width, ids, dqt and dht, rgb)
