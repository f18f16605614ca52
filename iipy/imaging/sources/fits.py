"""FITS images: the only module that imports astropy.

An image is opened once per worker through a memory map with
``do_not_scale_image_data=True``: windows are views of the raw (big-endian) samples and
``kernels.to_float32`` applies BLANK, BSCALE and BZERO and the vertical flip while it
converts, so reading a tile never scales (or even touches) the rest of the image.

Orientation (docs/protocol.md §7.6): IIP row 0 is the top of the displayed image, which
is the *last* FITS row (y = NAXIS2).  Every window this module returns is in IIP order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from astropy.io import fits

from iipy.imaging import kernels
from iipy.errors import (CompressedFile, ImagingError, NoSuchHDU, NotAnImage,
                         UnreadableImage)
from iipy.imaging.paths import ImageRef
from iipy.imaging.source import DisplayRange, RawWindow

log = logging.getLogger(__name__)


def is_fits(head: bytes) -> bool:
    """FITS standard: the first card is ``SIMPLE  =`` with ``T`` in column 30."""
    return head.startswith(b"SIMPLE  =") and head[29:30] == b"T"


@dataclass(frozen=True, slots=True)
class Plane:
    """One channel: its raw 2-D samples (FITS order) and how to scale them."""

    raw: Any  # 2-D: a memory-map view, or a section of a tile-compressed HDU
    bscale: float = 1.0
    bzero: float = 0.0
    blank: int | None = None
    offset: int | None = None  # file offset of the plane's first sample (uncompressed)

    def window(self, top: int, h: int, x: int, w: int) -> np.ndarray:
        return self.raw[top : top + h, x : x + w]

    def mapped(self, data: np.ndarray, top: int, h: int) -> tuple[np.ndarray, int, int]:
        """Whole rows [top, top + h) as a view of ``data``, the bytes of the whole file
        (uncompressed data only), with the byte range they cover."""
        assert self.offset is not None
        dtype, width = self.raw.dtype, self.raw.shape[1]
        start = self.offset + top * width * dtype.itemsize
        nbytes = h * width * dtype.itemsize
        return data[start : start + nbytes].view(dtype).reshape(h, width), start, nbytes


class _SectionPlane:
    """A 2-D view of one plane of a tile-compressed HDU: only the touched tiles are
    decompressed, and astropy returns them scaled."""

    def __init__(self, section, lead: tuple[int, ...]):
        self._section, self._lead = section, lead

    def __getitem__(self, rows_cols) -> np.ndarray:
        return np.asarray(self._section[self._lead + tuple(rows_cols)])


def _scaling(hdu) -> tuple[float, float, int | None]:
    if isinstance(hdu, fits.CompImageHDU):
        return 1.0, 0.0, None
    hdr = hdu.header
    blank = hdr.get("BLANK")
    if not (isinstance(blank, (int, np.integer)) and hdr["BITPIX"] > 0):
        blank = None
    return float(hdr.get("BSCALE", 1.0)), float(hdr.get("BZERO", 0.0)), blank


def _planes_of(hdu, fif: str) -> list[Plane]:
    """Every channel of one image HDU (a cube's planes; higher axes at index 0)."""
    naxis = hdu.header["NAXIS"]
    channels = int(hdu.header["NAXIS3"]) if naxis >= 3 else 1
    bscale, bzero, blank = _scaling(hdu)
    if isinstance(hdu, fits.CompImageHDU):
        lead = (0,) * (naxis - 3)
        return [Plane(_SectionPlane(hdu.section, lead + (c,) if naxis >= 3 else ()),
                      bscale, bzero, blank) for c in range(channels)]
    data = hdu.data
    if data is None:
        raise NoSuchHDU("No image data in '%s'" % fif)
    start = hdu.fileinfo()["datLoc"] if hdu.fileinfo() else None
    plane_bytes = data.shape[-1] * data.shape[-2] * data.dtype.itemsize
    if naxis == 2:
        return [Plane(data, bscale, bzero, blank, start)]
    cube = data[(0,) * (naxis - 3)]
    return [Plane(cube[c], bscale, bzero, blank,
                  None if start is None else start + c * plane_bytes) for c in range(channels)]


class FitsImage:
    """One image of a FITS file: an image HDU (2-D, or a cube whose planes are
    channels), or, with the selector ``*``, every 2-D image extension of the size of
    the first one as the channels of one image."""

    #: FITS planes are grey; colour comes from CTW or a colormap.
    colourspace = "grey"
    #: Every FITS sample type goes through the float pipeline (docs/protocol.md §6.2).
    display_8bit = False
    #: SPECTRA reports the physical values as they are.
    spectra_scale = 1.0

    def __init__(self, ref: ImageRef):
        self.ref = ref
        try:
            with open(ref.path, "rb") as f:
                head = f.read(80)
        except OSError:
            raise UnreadableImage("Unable to open file '%s'" % ref.fif) from None
        if len(head) < 10:
            raise UnreadableImage("Unable to read initial byte sequence from file '%s'" % ref.fif)
        if head[:2] == b"\x1f\x8b":
            raise CompressedFile(
                "%s is gzip-compressed: decompress it (gunzip) or tile-compress it "
                "(fpack) to serve it" % ref.fif
            )
        if not is_fits(head):
            raise NotAnImage("%s: unsupported file type" % ref.fif)
        self._hdul = None
        try:
            self._hdul = fits.open(ref.path, memmap=True, do_not_scale_image_data=True,
                                   mode="readonly")
            hdus = _select_hdus(self._hdul, ref.selector)
            if any(isinstance(h, fits.CompImageHDU) for h in hdus):
                # tile-compressed data: astropy decompresses the tiles a section touches;
                # the scaled (dequantised) values need a file opened with scaling on
                indexes = [self._hdul.index_of(h) for h in hdus]
                self._hdul.close()
                self._hdul = fits.open(ref.path, mode="readonly")
                hdus = [self._hdul[i] for i in indexes]
            self._planes = [p for h in hdus for p in _planes_of(h, ref.fif)]
        except ImagingError:
            self.close()
            raise
        except Exception as exc:  # astropy raises many types for damaged files
            self.close()
            log.warning("cannot read %s: %s", ref.path, exc)
            raise UnreadableImage("Unable to read FITS file '%s'" % ref.fif) from None
        self._hdu = hdus[0]
        #: The channels as one raw array (C, NAXIS2, NAXIS1) with one scaling, when they
        #: are an uncompressed HDU's planes (``raw_window``); None otherwise.
        self._stack: np.ndarray | None = None
        if len(hdus) == 1 and all(p.offset is not None for p in self._planes):
            data = hdus[0].data
            self._stack = data[np.newaxis] if data.ndim == 2 else data[(0,) * (data.ndim - 3)]
        #: Uncompressed planes: windows are views of the file's memory map.
        self.mapped = all(p.offset is not None for p in self._planes)
        hdr = self._hdu.header
        self.width = int(hdr["NAXIS1"])
        self.height = int(hdr["NAXIS2"])
        self.channels = len(self._planes)
        bitpixes = [int(h.header["BITPIX"]) for h in hdus]
        self.bitpix = min(bitpixes) if min(bitpixes) < 0 else max(bitpixes)
        self.is_float = self.bitpix < 0 or any(
            p.bscale != int(p.bscale) or p.bzero != int(p.bzero) for p in self._planes)
        self.bits_per_channel = 32 if self.bitpix < 0 else min(abs(self.bitpix), 32)
        if len(hdus) > 1:
            self.labels = [_hdu_label(h) for h in hdus]
        else:
            self.labels = channel_labels(hdr, self.channels)
        self._subject: str | None = None
        self._map: mmap.mmap | None = None
        self._map_data: np.ndarray | None = None
        self._map_lock = threading.Lock()
        #: a cube or a set of extensions: cut-outs keep the third axis
        self._cube = len(hdus) > 1 or int(hdr["NAXIS"]) >= 3
        self._celestial: Celestial | None | bool = False  # False: not looked at yet

    # --- data ---------------------------------------------------------------------------

    def read(self, channel: int, x: int, y: int, w: int, h: int,
             out: np.ndarray | None = None) -> np.ndarray:
        """Full-resolution window (IIP coordinates) of one channel as float32 (h, w)."""
        plane = self._planes[channel]
        with self._reading():
            raw = plane.window(self.height - y - h, h, x, w)
            return kernels.to_float32(raw, plane.bscale, plane.bzero, plane.blank, flip=True,
                                      out=out)

    def read_binned(self, channel: int, x: int, y: int, w: int, h: int,
                    out: np.ndarray | None = None) -> np.ndarray:
        """The 2x2 means of a full-resolution window (w, h >= 2) of one channel, float32
        (h // 2, w // 2), binned straight from the raw samples (``kernels.bin_raw``): the
        values of ``bin2x2(read(...))`` without the float32 window."""
        plane = self._planes[channel]
        with self._reading():
            raw = plane.window(self.height - y - h, h, x, w)
            return kernels.bin_raw(raw, plane.bscale, plane.bzero, plane.blank, flip=True,
                                   out=out)

    def read_rows(self, channel: int, y: int, h: int, out: np.ndarray | None = None,
                  binned: bool = False, samples: Callable[[np.ndarray], None] | None = None,
                  convert: bool = True) -> np.ndarray:
        """Whole full-resolution rows [y, y + h) (IIP coordinates) of one channel as
        float32 (h, W), for long sequential reads (the pyramid build): read through a
        memory map of this image's own whose pages are let go of once read, so the process
        never holds more of the file than the rows it works on; ``out`` lets a sequence of
        reads reuse its buffer.

        ``binned``: the 2x2 means of those rows instead, float32 (h // 2, W // 2), computed
        from the raw samples in one pass (``kernels.bin_raw``). ``samples(values)`` is
        called first with the values of the rows in the order of the file (the last IIP row
        first), float32 in either byte order: the raw samples themselves when they are
        unscaled float32 (a view valid during the call only); ``convert`` False: nothing
        but that call (``scan_rows``), an empty array returned."""
        plane = self._planes[channel]
        with self._reading():
            if plane.offset is None:  # tile-compressed: the tiles the rows cross
                raw = np.asarray(plane.window(self.height - y - h, h, 0, self.width))
                return self._convert_rows(plane, raw, out, binned, samples, convert)
            data = self._file_map()
            raw, start, nbytes = plane.mapped(data, self.height - y - h, h)
            try:
                return self._convert_rows(plane, raw, out, binned, samples, convert)
            finally:
                del raw
                self._unmap_pages(start, nbytes)

    def _file_map(self) -> np.ndarray:
        """The bytes of the whole file through a read-only memory map, advised sequential
        (made once, under a lock: the pyramid build reads it from two threads)."""
        with self._map_lock:
            return self._file_map_locked()

    def _file_map_locked(self) -> np.ndarray:
        if self._map_data is None:
            fd = os.open(self.ref.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                self._map = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._map_data = np.frombuffer(self._map, np.uint8)
        return self._map_data

    def _unmap_pages(self, start: int, nbytes: int) -> None:
        """Drop this process's mapping of the pages of bytes [start, start + nbytes) (the
        page cache keeps them)."""
        assert self._map is not None
        page = mmap.PAGESIZE
        lo = start // page * page
        hi = min(len(self._map), -(-(start + nbytes) // page) * page)
        if hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def scan_rows(self, channel: int, y: int, h: int,
                  samples: Callable[[np.ndarray], None]) -> None:
        """``samples(values)`` with the values of whole rows [y, y + h) of one channel, as
        ``read_rows`` gives them, without converting the rows for anything else."""
        self.read_rows(channel, y, h, samples=samples, convert=False)

    @staticmethod
    def _convert_rows(plane: Plane, raw: np.ndarray, out: np.ndarray | None, binned: bool,
                      samples: Callable[[np.ndarray], None] | None,
                      convert: bool = True) -> np.ndarray:
        if samples is not None:
            if raw.dtype.kind == "f" and raw.dtype.itemsize == 4 and (
                    plane.bscale == 1.0 and plane.bzero == 0.0):
                samples(raw)
            else:
                samples(kernels.to_float32(raw, plane.bscale, plane.bzero, plane.blank))
        if not convert:
            return raw[:0]
        if binned:
            return kernels.bin_raw(raw, plane.bscale, plane.bzero, plane.blank, flip=True,
                                   out=out)
        return kernels.to_float32(raw, plane.bscale, plane.bzero, plane.blank, flip=True,
                                  out=out)

    def raw_window(self, x: int, y: int, w: int, h: int) -> RawWindow | None:
        """The raw samples of a full-resolution window of every channel (a view of the
        memory map, FITS order of rows), for the render kernel to read and convert itself
        (``kernels.render_raw``); None for tile-compressed data or extensions as channels."""
        if self._stack is None:
            return None
        plane = self._planes[0]
        top = self.height - y - h
        return RawWindow(self._stack[:, top : top + h, x : x + w], plane.bscale, plane.bzero,
                         plane.blank, flip=True)

    def values(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Calibrated values (raw * BSCALE + BZERO, BLANK as NaN) of a full-resolution
        window of every channel, float64 (C, h, w) in IIP orientation: exact for every
        integer BITPIX, unlike the float32 used for display."""
        top = self.height - y - h
        out = np.empty((self.channels, h, w), np.float64)
        for c, plane in enumerate(self._planes):
            with self._reading():
                raw = np.asarray(plane.window(top, h, x, w))[::-1]
            vals = raw.astype(np.float64)
            if plane.blank is not None:
                vals[raw == plane.blank] = np.nan
            out[c] = vals * plane.bscale + plane.bzero
        return out

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Any failure to read samples (a truncated file, a damaged compressed tile:
        astropy and the system raise many types) is an unreadable image."""
        try:
            yield
        except ImagingError:
            raise
        except Exception as exc:
            log.warning("cannot read %s: %s: %s", self.ref.path, type(exc).__name__, exc)
            raise UnreadableImage("Unable to read data of '%s'" % self.ref.fif) from None

    @property
    def scaling(self) -> tuple[float, float, int | None]:
        """(BSCALE, BZERO, BLANK) of the first channel."""
        plane = self._planes[0]
        return plane.bscale, plane.bzero, plane.blank

    @property
    def header(self):
        """The astropy header of the served HDU (read-only use)."""
        return self._hdu.header

    # --- metadata -------------------------------------------------------------------------

    def subject(self) -> str:
        """The FITS header as VisiOmatic 2 needs it (docs/protocol.md §12.3)."""
        if self._subject is None:
            self._subject = subject_header(self._hdu.header, self.width, self.height,
                                           self.channels, self.labels)
        return self._subject

    def metadata(self, name: str) -> str:
        """An OBJ metadata object: ``subject`` is the header, the others come from the
        first of their FITS keywords that holds a non-empty string."""
        if name == "subject":
            return self.subject()
        for key in METADATA_KEYWORDS.get(name, ()):
            value = card_value(self._hdu.header, key)
            if isinstance(value, str) and value.strip():
                return value.strip()
        return ""

    # --- cut-outs and world coordinates ------------------------------------------------------

    def fits_cutout(self, data: np.ndarray, x0: int, y0: int, scale: int) -> bytes:
        """A FITS file of ``data``, float32 (C, h, w) in IIP orientation: the values of
        the region whose top-left full-resolution pixel is (x0, y0) (IIP coordinates),
        each pixel the mean of ``scale`` x ``scale`` original pixels.  Written in the
        usual FITS orientation, with this image's header cards and its WCS adjusted
        (``cutout_header``); a cube (or a set of extensions) keeps its third axis."""
        channels, out_h, out_w = data.shape
        first, last = x0 + 1, x0 + out_w * scale
        bottom = self.height - y0 - out_h * scale + 1
        top = self.height - y0
        what = "block means of %dx%d pixels" % (scale, scale) if scale > 1 else "pixel values"
        history = "iipy CVT=fits: [%d:%d,%d:%d] of %s, %s" % (
            first, last, bottom, top, os.path.basename(self.ref.path), what)
        header = cutout_header(self._hdu.header, self.height, x0, y0, scale, out_h, history)
        flipped = data[:, ::-1, :]
        return encode_fits(flipped if self._cube else flipped[0], header)

    def celestial(self) -> "Celestial | None":
        """The celestial WCS of the image's first two axes, or None."""
        if self._celestial is False:
            self._celestial = celestial_of(self._hdu.header)
        return self._celestial

    def close(self) -> None:
        mapped = getattr(self, "_map", None)
        if mapped is not None:
            self._map_data = None
            try:
                mapped.close()
            except BufferError:  # pragma: no cover - a view still held: closed when freed
                pass
            self._map = None
        hdul = getattr(self, "_hdul", None)
        if hdul is not None:
            try:
                hdul.close()
            except Exception:  # pragma: no cover - closing a damaged file
                pass
            self._hdul = None


#: IIP metadata object -> the FITS keywords that can supply it, first present wins.
METADATA_KEYWORDS = {
    "copyright": ("COPYRIGHT",),
    "title": ("OBJECT", "TITLE"),
    "author": ("AUTHOR", "OBSERVER"),
    "create-dtm": ("DATE",),
    "app-name": ("CREATOR", "SOFTWARE", "PROGRAM"),
}


def _is_image(hdu) -> bool:
    """An image HDU with two axes or more, each at least one pixel long (a cube with
    ``NAXIS3 = 0`` holds no data)."""
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return False
    naxis = card_value(hdu.header, "NAXIS", 0)
    if not isinstance(naxis, int) or not 2 <= naxis <= 999:
        return False
    lengths = [card_value(hdu.header, "NAXIS%d" % i, 0) for i in range(1, naxis + 1)]
    return all(isinstance(n, int) and n > 0 for n in lengths)


def card_value(hdr, key: str, default: Any = None) -> Any:
    """The value of card ``key``, or ``default`` when the header has none or astropy
    cannot parse it (``CDELT1 = NAN`` raises a VerifyError on every read)."""
    try:
        return hdr.get(key, default)
    except Exception:
        return default


def _walk(hdul) -> Iterator:
    """The HDUs of an open file in order, read as they are asked for.

    astropy finds each HDU after the data of the previous one; a header whose data size
    is negative (a negative ``NAXISn``) sends it back to an earlier header, and it would
    then read the same HDUs again and again, without end and with ever more memory.  An
    HDU that does not start after the previous one makes the file unreadable."""
    last = -1
    for hdu in hdul:
        info = hdu.fileinfo()
        if info is not None:
            if info["hdrLoc"] <= last or info["datSpan"] < 0:
                raise UnreadableImage("Invalid HDU sizes in file")
            last = info["hdrLoc"]
        yield hdu


def _select_hdus(hdul, selector: str) -> list:
    """Default: the first image HDU with two or more axes; ``N``: HDU number N (0 is
    the primary); ``NAME`` or ``NAME,VER``: by EXTNAME (and EXTVER); ``*``: every 2-D
    image HDU of the size of the first one, each a channel.  Every HDU is reached
    through ``_walk``, so astropy's own lookups only see HDUs already checked."""
    if not selector:
        for hdu in _walk(hdul):
            if _is_image(hdu):
                return [hdu]
        raise NoSuchHDU("No image HDU in file")
    if selector == "*":
        images = [h for h in _walk(hdul) if _is_image(h) and h.header["NAXIS"] == 2]
        if not images:
            raise NoSuchHDU("No 2-D image HDU in file")
        size = (images[0].header["NAXIS1"], images[0].header["NAXIS2"])
        return [h for h in images if (h.header["NAXIS1"], h.header["NAXIS2"]) == size]
    try:
        if selector.isdigit():
            index = int(selector)
            for n, hdu in enumerate(_walk(hdul)):
                if n == index:
                    break
            else:
                raise IndexError(index)
        else:
            for _ in _walk(hdul):  # the whole file, checked, before a lookup by name
                pass
            name, _, ver = selector.partition(",")
            hdu = hdul[(name.strip(), int(ver))] if ver.strip() else hdul[name.strip()]
    except (KeyError, IndexError, ValueError):
        raise NoSuchHDU("No extension [%s] in file" % selector) from None
    if not _is_image(hdu):
        raise NoSuchHDU("Extension [%s] is not an image" % selector)
    return [hdu]


def _hdu_label(hdu) -> str:
    """A channel label for one extension: its filter, band or name."""
    for key in ("FILTER", "BAND", "EXTNAME"):
        value = card_value(hdu.header, key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def robust_range(values: np.ndarray) -> DisplayRange:
    """Background and noise by iterated 3-sigma clipping of the median and the median
    absolute deviation; the range is background - 2 MAD to background + 400 MAD, kept
    within the data and never empty."""
    v = values[np.isfinite(values)].astype(np.float64, copy=False)
    if v.size == 0:
        return DisplayRange(0.0, 1.0)
    data_lo, data_hi = float(v.min()), float(v.max())
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    for _ in range(5):
        if mad <= 0:
            break
        keep = np.abs(v - med) < 3 * 1.4826 * mad
        if keep.all():
            break
        v = v[keep]
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med)))
    if mad > 0:
        lo, hi = max(med - 2 * mad, data_lo), min(med + 400 * mad, data_hi)
    else:
        lo, hi = data_lo, data_hi
    if not lo < hi:
        lo, hi = data_lo, data_hi
    if not lo < hi:
        hi = lo + 1.0
    return DisplayRange(lo, hi)


_CHAN_RE = re.compile(r"^CHAN(\d{4})$")


def channel_labels(hdr, channels: int) -> list[str]:
    """Per-plane labels: CHANnnnn cards, else FILTERn or BANDn, else none."""
    labels = [""] * channels
    for i in range(channels):
        for key in ("CHAN%04d" % (i + 1), "FILTER%d" % (i + 1), "BAND%d" % (i + 1)):
            value = card_value(hdr, key)
            if isinstance(value, str) and value.strip():
                labels[i] = value.strip()
                break
    if channels == 1 and not labels[0]:
        value = card_value(hdr, "FILTER") or card_value(hdr, "BAND")
        if isinstance(value, str) and value.strip():
            labels[0] = value.strip()
    return labels


_DROP_ALWAYS = {"LATPOLE", "END", "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND",
                "PCOUNT", "GCOUNT", "ZIMAGE", "CHECKSUM", "DATASUM"}
_NAXIS_RE = re.compile(r"^NAXIS\d+$")
_WCS2_RE = re.compile(r"^(CDELT[12]|CROTA[12]|PC0*[12]_0*[12]|CD0*[12]_0*[12]|CHAN\d{4})$")


def cd_matrix(hdr) -> list[list[float]] | None:
    """The 2x2 CD matrix of the celestial axes, from CDi_j, or CDELTi with PCi_j, or
    CDELTi with CROTA2; None without any of them."""
    def get(key, default):
        value = card_value(hdr, key, default)
        return float(value) if isinstance(value, (int, float)) else default

    if any(k in hdr for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")):
        return [[get("CD1_1", 0.0), get("CD1_2", 0.0)], [get("CD2_1", 0.0), get("CD2_2", 0.0)]]
    if not any(k in hdr for k in ("CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2")):
        return None
    d1, d2 = get("CDELT1", 1.0), get("CDELT2", 1.0)
    if any(k in hdr for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2")):
        pc = [[get("PC1_1", 1.0), get("PC1_2", 0.0)], [get("PC2_1", 0.0), get("PC2_2", 1.0)]]
        return [[d1 * pc[0][0], d1 * pc[0][1]], [d2 * pc[1][0], d2 * pc[1][1]]]
    rho = math.radians(get("CROTA2", 0.0))
    c, s = math.cos(rho), math.sin(rho)
    return [[d1 * c, -d2 * s], [d1 * s, d2 * c]]


def subject_header(hdr, width: int, height: int, channels: int, labels: list[str]) -> str:
    """80-character cards without separators, ending with END: NAXISi equal to what is
    served, a CD matrix instead of CDELT/PC/CROTA, CHANnnnn labels, no LATPOLE, and every
    value re-serialised (so numbers carry ``E`` exponents, never Fortran ``D``)."""
    cards = [fits.Card("SIMPLE", True, "conforms to FITS standard"),
             fits.Card("BITPIX", int(hdr.get("BITPIX", -32)), "array data type"),
             fits.Card("NAXIS", 3 if channels > 1 else 2, "number of array dimensions"),
             fits.Card("NAXIS1", width), fits.Card("NAXIS2", height)]
    if channels > 1:
        cards.append(fits.Card("NAXIS3", channels))
    cd = cd_matrix(hdr)
    cd_cards = []
    if cd is not None:
        for i in range(2):
            for j in range(2):
                cd_cards.append(fits.Card("CD%d_%d" % (i + 1, j + 1), cd[i][j]))
    inserted = False
    for card in hdr.cards:
        try:
            key = card.keyword
            if key in _DROP_ALWAYS or _NAXIS_RE.match(key) or _WCS2_RE.match(key):
                continue
            value = card.value
            if isinstance(value, float) and not math.isfinite(value):
                continue
            if key in ("COMMENT", "HISTORY", ""):
                cards.append(fits.Card(key, str(value)))
            else:
                cards.append(fits.Card(key, value, card.comment))
        except Exception:  # a card astropy cannot parse: leave it out
            continue
        if key == "CRVAL2" and not inserted:
            cards.extend(cd_cards)
            inserted = True
    if not inserted:
        cards.extend(cd_cards)
    for i, label in enumerate(labels):
        if label and channels > 1:
            cards.append(fits.Card("CHAN%04d" % (i + 1), label))
    header = fits.Header(cards)
    return header.tostring(sep="", endcard=True, padding=False)


# --- science cut-outs (CVT=fits) and world coordinates -----------------------------------

#: Cards a cut-out never copies: the structure (written anew), the scaling (the values are
#: calibrated floats), checksums and data ranges (no longer true), tile compression.
_CUTOUT_DROP = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT",
                "GROUPS", "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "DATAMIN",
                "DATAMAX", "ZIMAGE", "END"}
_CUTOUT_DROP_RE = re.compile(r"^(NAXIS\d+|Z[A-Z]+\d*|ZQUANT\w*|ZDITHER\w*)$")
_ALTERNATES = " ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SIP_RE = re.compile(r"^(A|B|AP|BP)_(\d+)_(\d+)$")


def _number(hdr, key: str) -> float | None:
    value = card_value(hdr, key)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return None


def _scale_wcs(hdr, offsets: tuple[float, float], scale: int) -> None:
    """Adjust, in place, every WCS (primary and alternates A-Z) of pixel axes 1 and 2 for
    a cut-out whose pixel (i, j) is the original's (scale i + offsets[0],
    scale j + offsets[1]) (FITS pixels, 1-based): CRPIX' = (CRPIX - offset) / scale, and
    the matrix columns of axes 1 and 2 times ``scale``: the CDi_1, CDi_2 cards, else
    CDELT1 and CDELT2 (PC unchanged), or, when PC couples axes 1-2 with other axes, the
    PCi_1 and PCi_2 cards.  SIP coefficients (A, B, AP, BP) and IRAF's LTV/LTM follow."""
    keys = [k for k in hdr.keys() if k not in ("COMMENT", "HISTORY", "")]
    for alt in _ALTERNATES:
        a = alt.strip()
        mine = re.compile(r"^(CRPIX|CRVAL|CTYPE|CDELT|CD|PC)(\d+)(?:_(\d+))?%s$" % a)
        found = [(k, m.group(1), int(m.group(2)), int(m.group(3) or 0))
                 for k in keys if (m := mine.match(k))]
        if not any((j or i) in (1, 2) for _, _, i, j in found):
            continue
        for i, off in ((1, offsets[0]), (2, offsets[1])):
            key = "CRPIX%d%s" % (i, a)
            hdr[key] = ((_number(hdr, key) or 0.0) - off) / scale
        if scale == 1:
            continue
        cd = [k for k, kind, _, j in found if kind == "CD" and j in (1, 2)]
        for k in cd:
            value = _number(hdr, k)
            if value is not None:
                hdr[k] = value * scale
        coupled = any(kind == "PC" and (i <= 2) != (j <= 2) and _number(hdr, k)
                      for k, kind, i, j in found)
        if coupled and not cd:
            naxes = max([i for _, _, i, _ in found] + [j for _, _, _, j in found] + [2])
            for i in range(1, naxes + 1):
                for j in (1, 2):
                    key = "PC%d_%d%s" % (i, j, a)
                    value = _number(hdr, key)
                    value = (1.0 if i == j else 0.0) if value is None else value
                    if value:
                        hdr[key] = value * scale
        elif not coupled:
            for i in (1, 2):
                key = "CDELT%d%s" % (i, a)
                value = _number(hdr, key)
                if value is not None:
                    hdr[key] = value * scale
                elif not cd:
                    hdr[key] = float(scale)
    if scale != 1:
        for key in keys:
            match = _SIP_RE.match(key)
            value = _number(hdr, key)
            if match and value is not None:
                p, q = int(match.group(2)), int(match.group(3))
                hdr[key] = value * float(scale) ** (p + q - 1)
    for i, off in ((1, offsets[0]), (2, offsets[1])):
        ltv = _number(hdr, "LTV%d" % i)
        if ltv is not None:
            hdr["LTV%d" % i] = (ltv - off) / scale
        for j in (1, 2):
            ltm = _number(hdr, "LTM%d_%d" % (i, j))
            if ltm is not None and scale != 1:
                hdr["LTM%d_%d" % (i, j)] = ltm / scale


def cutout_header(hdr, naxis2: int, x0: int, y0: int, scale: int, out_h: int,
                  history: str = "") -> "fits.Header":
    """The header of a cut-out of an image of ``naxis2`` rows: every card of ``hdr`` but
    the structure, scaling, checksums and data ranges, with the WCS adjusted.

    The cut-out starts at full-resolution pixel (x0, y0) in IIP coordinates (top-left
    origin, docs/protocol.md §7.6), has ``out_h`` rows, and each of its pixels covers
    ``scale`` x ``scale`` original pixels; it is written in the usual FITS orientation
    (first row at the bottom).  Its FITS pixel (i, j) is then the original's
    (scale i + ox, scale j + oy) with ox = x0 + (1 - scale) / 2 and
    oy = naxis2 - y0 - out_h scale + (1 - scale) / 2."""
    out = fits.Header()
    for card in hdr.cards:
        try:
            key = card.keyword
            if key in _CUTOUT_DROP or _CUTOUT_DROP_RE.match(key):
                continue
            if key in ("COMMENT", "HISTORY", ""):
                out.append(fits.Card(key, str(card.value)), end=True)
            else:
                value = card.value
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                out.append(fits.Card(key, value, card.comment), end=True)
        except Exception:  # a card astropy cannot parse: leave it out
            continue
    half = (1 - scale) / 2
    offsets = (x0 + half, naxis2 - y0 - out_h * scale + half)
    _scale_wcs(out, offsets, scale)
    if history:
        out.add_history(history)
    return out


def encode_fits(data: np.ndarray, header) -> bytes:
    """A single-HDU FITS file of float32 ``data`` (FITS order) with ``header``'s cards."""
    data = np.ascontiguousarray(data, dtype=">f4")
    hdu = fits.PrimaryHDU(data=data, header=header)
    body = data.tobytes()
    return hdu.header.tostring().encode("ascii") + body + b"\0" * (-len(body) % 2880)


class Celestial:
    """The celestial world coordinates of pixel axes 1 and 2 of an image (astropy.wcs):
    FITS pixels, 1-based, in the usual orientation; degrees."""

    def __init__(self, wcs):
        self._wcs = wcs
        lng, lat = wcs.wcs.lngtyp.strip(), wcs.wcs.lattyp.strip()
        self.swapped = wcs.wcs.lng == 1
        names = {"RA": ("RA", "Dec"), "GLON": ("l", "b"), "ELON": ("λ", "β"),
                 "SLON": ("SGL", "SGB")}
        self.lon_name, self.lat_name = names.get(lng, (lng, lat))
        if lng == "RA":
            self.system = wcs.wcs.radesys.strip() or "ICRS"
            if self.system in ("FK4", "FK5") and math.isfinite(wcs.wcs.equinox):
                self.system += " J%g" % wcs.wcs.equinox if self.system == "FK5" \
                    else " B%g" % wcs.wcs.equinox
        else:
            self.system = {"GLON": "Galactic", "ELON": "Ecliptic",
                           "SLON": "Supergalactic"}.get(lng, lng)

    def pixel_to_world(self, x: float, y: float) -> tuple[float, float] | None:
        """(longitude, latitude) of FITS pixel (x, y), or None outside the projection."""
        try:
            with _quiet_wcs():
                world = self._wcs.all_pix2world([[x, y]], 1)[0]
        except Exception:
            return None
        lon, lat = (world[1], world[0]) if self.swapped else (world[0], world[1])
        if not (math.isfinite(lon) and math.isfinite(lat)):
            return None
        return float(lon) % 360.0, float(lat)

    def world_to_pixel(self, lon: float, lat: float) -> tuple[float, float] | None:
        """FITS pixel (x, y) of (longitude, latitude), or None where it has none."""
        point = [lat, lon] if self.swapped else [lon, lat]
        try:
            with _quiet_wcs():
                pixel = self._wcs.all_world2pix([point], 1, quiet=True)[0]
        except Exception:
            return None
        if not (math.isfinite(pixel[0]) and math.isfinite(pixel[1])):
            return None
        return float(pixel[0]), float(pixel[1])


@contextlib.contextmanager
def _quiet_wcs() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            yield


def celestial_of(hdr) -> Celestial | None:
    """The celestial WCS of pixel axes 1 and 2 of ``hdr``, or None (no celestial axes
    there, or a WCS that astropy cannot read)."""
    try:
        from astropy.wcs import WCS

        with _quiet_wcs():
            wcs = WCS(hdr, naxis=2, relax=True)
    except Exception:
        return None
    if not wcs.has_celestial or {wcs.wcs.lng, wcs.wcs.lat} != {0, 1}:
        return None
    return Celestial(wcs)
