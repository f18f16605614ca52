"""The per-worker cache of open images, keyed by the image's identity so that a changed
file is reopened.

An image is opened by its content, as iipsrv decides (docs/protocol.md §4.1): a file
that starts with a TIFF signature is a tiled pyramidal TIFF (``sources/tiff.py``),
anything else goes to the FITS reader (``sources/fits.py``), which serves FITS and
refuses the rest.  The store then gives each image its levels: the levels a TIFF holds,
read as stored (``pyramid.StoredLevels``), or the pyramid built from a FITS image
(``pyramid.Pyramid``); and the tile grid that goes with them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from iipy.cache import LRU
from iipy.imaging import kernels, render
from iipy.imaging.display import parse_policy
from iipy.imaging.geometry import Grid
from iipy.imaging.paths import ImageRef
from iipy.imaging.pyramid import Levels, Pyramid, StoredLevels
from iipy.imaging.source import DisplayRange, ImageSource
from iipy.imaging.sources.fits import FitsImage
from iipy.imaging.sources.tiff import TiffImage, claims_tiff
from iipy.settings import Settings

log = logging.getLogger(__name__)

#: Decoded TIFF tiles kept per open image (reads of neighbouring windows share tiles).
TIFF_TILE_CACHE_BYTES = 4 << 20
#: Display ranges whose CNT=st/eq histogram an open image keeps.
HISTOGRAMS = 32


@dataclass(slots=True)
class OpenImage:
    ref: ImageRef
    source: ImageSource
    grid: Grid
    pyramid: Levels
    #: CNT=st/eq histograms by display range (see ``histogram``).
    histograms: LRU[tuple[bytes, bytes], np.ndarray] = field(
        default_factory=lambda: LRU(HISTOGRAMS))

    @property
    def ranges(self) -> list[DisplayRange]:
        self.pyramid.ensure()
        return self.pyramid.ranges

    def histogram(self, view: render.View) -> np.ndarray | None:
        """The 256 level counts CNT=st and CNT=eq use for ``view`` (``kernels.histogram``
        with the view's range, MINMAX included), or None when the view needs none.  As in
        iipsrv 1.2 they come from the smallest level, so that every tile and export of a
        view shares one mapping; computed once per range (the most recent HISTOGRAMS are
        kept, read-only)."""
        if not view.uses_histogram:
            return None
        mins, maxs = render.ranges_for(view, self.ranges)
        key = (mins.tobytes(), maxs.tobytes())
        hist = self.histograms.get(key)
        if hist is None:
            k = self.grid.num_resolutions - 1
            w, h = self.grid.level_size(k)
            hist = kernels.histogram(self.pyramid.window(k, 0, 0, w, h), mins, maxs)
            hist.setflags(write=False)
            self.histograms.put(key, hist)
        return hist

    def close(self) -> None:
        """Close the file and let go of the levels (a pyramid's shared lock, its memory)."""
        self.pyramid.close()
        self.source.close()


def _starts_as_tiff(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:  # the FITS reader reports it
        return False
    return claims_tiff(head)


class ImageStore:
    def __init__(self, settings: Settings, capacity: int = 64,
                 progress: Callable[[str, float], None] | None = None,
                 on_build: Callable[[float], None] | None = None):
        """``progress`` and ``on_build`` are passed to every pyramid (see ``Pyramid``)."""
        self.settings = settings
        self.progress = progress
        self.on_build = on_build
        self.policy = parse_policy(settings.display_range)
        self._open: LRU[tuple, OpenImage] = LRU(capacity, close=lambda im: im.close())

    def open(self, ref: ImageRef) -> OpenImage:
        image = self._open.get(ref.key)
        if image is None:
            image = self._open_tiff(ref) if _starts_as_tiff(ref.path) else self._open_fits(ref)
            self._open.put(ref.key, image)
        return image

    def _open_tiff(self, ref: ImageRef) -> OpenImage:
        tiff = TiffImage.open(ref, tile_cache_bytes=TIFF_TILE_CACHE_BYTES)
        grid = Grid(tiff.width, tiff.height, tiff.tile_w, tiff.tile_h, tuple(tiff.levels))
        log.debug("opened TIFF %s (%dx%dx%d, %s, %d levels)", ref.path, tiff.width,
                  tiff.height, tiff.channels, tiff.dtype, len(tiff.levels))
        return OpenImage(ref, tiff, grid, StoredLevels(tiff))

    def _open_fits(self, ref: ImageRef) -> OpenImage:
        fits_image = FitsImage(ref)
        grid = Grid(fits_image.width, fits_image.height,
                    self.settings.tile_size, self.settings.tile_size)
        log.debug("opened %s (%dx%dx%d, BITPIX %d)", ref.path, fits_image.width,
                  fits_image.height, fits_image.channels, fits_image.bitpix)
        pyramid = Pyramid(fits_image, grid, self.settings.cache_dir, self.progress,
                          cache_max_mb=self.settings.cache_dir_max_mb,
                          memory_mb=self.settings.pyramid_memory_mb,
                          on_build=self.on_build, policy=self.policy)
        return OpenImage(ref, fits_image, grid, pyramid)
