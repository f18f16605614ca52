"""The per-worker cache of open images: FITS memory map, tile grid and pyramid,
keyed by the image's identity so that a changed file is reopened."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from iipy.imaging.source import DisplayRange, ImageSource
from iipy.imaging.sources.fits import FitsImage
from iipy.imaging.geometry import Grid
from iipy.cache import LRU
from iipy.imaging.paths import ImageRef
from iipy.imaging.pyramid import Pyramid
from iipy.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OpenImage:
    ref: ImageRef
    source: ImageSource
    grid: Grid
    pyramid: Pyramid

    @property
    def ranges(self) -> list[DisplayRange]:
        self.pyramid.ensure()
        return self.pyramid.ranges

    def close(self) -> None:
        """Close the file and let go of the pyramid (its shared lock, its memory)."""
        self.pyramid.close()
        self.source.close()


class ImageStore:
    def __init__(self, settings: Settings, capacity: int = 64,
                 progress: Callable[[str, float], None] | None = None,
                 on_build: Callable[[float], None] | None = None):
        """``progress`` and ``on_build`` are passed to every pyramid (see ``Pyramid``)."""
        self.settings = settings
        self.progress = progress
        self.on_build = on_build
        self._open: LRU[tuple, OpenImage] = LRU(capacity, close=lambda im: im.close())

    def open(self, ref: ImageRef) -> OpenImage:
        image = self._open.get(ref.key)
        if image is None:
            fits_image = FitsImage(ref)
            grid = Grid(fits_image.width, fits_image.height,
                        self.settings.tile_size, self.settings.tile_size)
            pyramid = Pyramid(fits_image, grid, self.settings.cache_dir, self.progress,
                              cache_max_mb=self.settings.cache_dir_max_mb,
                              memory_mb=self.settings.pyramid_memory_mb,
                              on_build=self.on_build)
            image = OpenImage(ref, fits_image, grid, pyramid)
            self._open.put(ref.key, image)
            log.debug("opened %s (%dx%dx%d, BITPIX %d)", ref.path, fits_image.width,
                      fits_image.height, fits_image.channels, fits_image.bitpix)
        return image
