"""What every image source gives the rest of iipy (docs/protocol.md §4.2).

A source is one image of one file: FITS (``sources/fits.py``) or tiled pyramidal TIFF
(``sources/tiff.py``).  The protocols only ever see this interface, through
``store.OpenImage``; which file format sits behind it is the store's business.

A source that holds its own reduced levels (TIFF) is also a ``LevelledSource``: the
store then serves its levels as they are stored instead of building a pyramid.  Every
method of both interfaces raises only the domain errors of ``iipy.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from iipy.imaging.paths import ImageRef


@dataclass(frozen=True, slots=True)
class RawWindow:
    """A full-resolution window as stored: samples (C, h, w) in the file's order of rows
    (bottom up for FITS, hence ``flip``) and type, and the scaling every channel shares
    (``kernels.to_float32`` of each channel gives the window's values)."""

    samples: np.ndarray
    bscale: float = 1.0
    bzero: float = 0.0
    blank: int | None = None
    flip: bool = True


@dataclass(frozen=True, slots=True)
class DisplayRange:
    """The default normalisation range of one channel (Min-Max-sample-values)."""

    lo: float
    hi: float


class ImageSource(Protocol):
    """One image: its size, channels, sample type, full-resolution windows and header facts.

    Coordinates are IIP's: full resolution, top-left origin, row 0 at the top of the
    displayed image.
    """

    ref: ImageRef
    width: int
    height: int
    channels: int
    #: Bits-per-channel as OBJ reports it (32 for float samples).
    bits_per_channel: int
    #: Whether PFL prints values as floats.
    is_float: bool
    #: "grey" or "srgb": the OBJ colour-space line (docs/protocol.md §5.2).
    colourspace: str
    #: True for 8-bit samples that are display values: sent unchanged, as iipsrv 1.1 sends
    #: them, when the request asks for no float operation (docs/protocol.md §6.2).
    display_8bit: bool
    #: What SPECTRA divides a stored value by (iipsrv: 255 for 8-bit and 65535 for 16-bit
    #: TIFF samples; 1 otherwise).
    spectra_scale: float
    #: True when full-resolution samples are read in place from a memory map, so that
    #: ``read_binned`` costs little more than reading a stored level of the same size.
    mapped: bool

    def read(self, channel: int, x: int, y: int, w: int, h: int,
             out: np.ndarray | None = None) -> np.ndarray:
        """A full-resolution window of one channel as float32 (h, w)."""
        ...

    def read_rows(self, channel: int, y: int, h: int, out: np.ndarray | None = None,
                  binned: bool = False, samples: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """Whole full-resolution rows [y, y + h) of one channel as float32 (h, width), or
        with ``binned`` their 2x2 means (h // 2, width // 2); ``samples(values)`` is called
        first with the values of the rows in the order of the file."""
        ...

    def read_binned(self, channel: int, x: int, y: int, w: int, h: int,
                    out: np.ndarray | None = None) -> np.ndarray:
        """The 2x2 means of a full-resolution window (w, h >= 2) of one channel, float32
        (h // 2, w // 2): the values of ``kernels.bin2x2(read(...))``, bit for bit."""
        ...

    def scan_rows(self, channel: int, y: int, h: int,
                  samples: Callable[[np.ndarray], None]) -> None:
        """``samples(values)`` with the values of whole rows [y, y + h) of one channel, as
        ``read_rows`` gives them, converting nothing else."""
        ...

    def values(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The stored values of a full-resolution window, every channel, float64 (C, h, w)."""
        ...

    def metadata(self, name: str) -> str:
        """The text of an OBJ metadata object (``subject``, ``copyright``, ``title``,
        ``author``, ``create-dtm``, ``app-name``...), or "" when the image has none."""
        ...

    def close(self) -> None: ...


class Celestial(Protocol):
    """Celestial world coordinates of an image's pixel axes 1 and 2: FITS pixels (1-based,
    first row at the bottom, docs/protocol.md §7.6), degrees."""

    lon_name: str  # "RA", "l" ...
    lat_name: str  # "Dec", "b" ...
    system: str  # "ICRS", "FK5 J2000", "Galactic" ...

    def pixel_to_world(self, x: float, y: float) -> tuple[float, float] | None: ...

    def world_to_pixel(self, lon: float, lat: float) -> tuple[float, float] | None: ...


class ScienceSource(ImageSource, Protocol):
    """What a source with a FITS header offers besides :class:`ImageSource`.  These are
    optional: callers look them up with ``getattr`` and answer without them (a
    ``CVT=fits`` of another source is refused, the viewer shows no world coordinates)."""

    def fits_cutout(self, data: np.ndarray, x0: int, y0: int, scale: int) -> bytes:
        """A FITS file of ``data``, float32 (C, h, w) in IIP orientation: the values of
        the region whose top-left full-resolution pixel is (x0, y0), each the mean of
        ``scale`` x ``scale`` original pixels, with the header's WCS adjusted."""
        ...

    def celestial(self) -> Celestial | None:
        """The image's celestial WCS, or None."""
        ...


class LevelledSource(ImageSource, Protocol):
    """A source whose file holds every resolution level (a pyramidal TIFF)."""

    tile_w: int
    tile_h: int
    #: (width, height) of each level, full resolution first.
    levels: list[tuple[int, int]]

    def default_ranges(self) -> list[DisplayRange]:
        """Min-Max-sample-values as the file gives them (docs/protocol.md §4.2)."""
        ...

    def read_level(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The stored samples of a window of level k, every channel, float32 (C, h, w)."""
        ...

    def level_samples(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The same window in the samples' own type, interleaved: (h, w, C)."""
        ...

    def stored_jpeg(self, k: int, tile: int) -> bytes | None:
        """Tile ``tile`` of level k as the JPEG the file stores, when it can be sent as it
        is (docs/protocol.md §5.3); None otherwise."""
        ...
