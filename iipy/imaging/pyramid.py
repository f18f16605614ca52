"""Reduced resolution levels, built once per image and shared by every worker.

Level k >= 1 is a native float32 array (C, floor(H/2^k), floor(W/2^k)) in IIP orientation
(top row first); each pixel is the mean of the finite values of a 2x2 block of level
k - 1 (``kernels.bin2x2``).  Level 1 is binned from the FITS data in bands of rows, each
later level from the one above, so memory stays bounded whatever the image size.  The
default display ranges are computed in the same pass, from evenly spaced full-resolution
rows.

On disk (``IIPY_CACHE_DIR``) a pyramid is a directory named after a hash of the image's
identity (real path, extension, size, mtime) and of this format's version: one
``levelK.f32`` file per level and ``meta.json``, written last.  Files are written under a
temporary name and renamed into place, under an exclusive ``fcntl`` lock, so one worker
builds while the others wait, and nothing half-written is ever read.  If the directory
cannot be written, the levels are built in memory instead (per worker).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Callable

import numpy as np

from iipy.errors import ImagingError, UnreadableImage
from iipy.imaging import kernels
from iipy.imaging.geometry import Grid
from iipy.imaging.source import DisplayRange, ImageSource
from iipy.imaging.sources.fits import robust_range

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Bytes of float32 rows read at once while binning (bounds the build's memory).
BAND_BYTES = 32 << 20
#: Full-resolution rows sampled for the display range.
STAT_ROWS = 512
STAT_COLS = 2048


class Pyramid:
    def __init__(self, image: ImageSource, grid: Grid, cache_dir: str,
                 progress: Callable[[str, float], None] | None = None):
        """``progress(what, fraction)`` is called while a pyramid is being built."""
        self.progress = progress
        self.image = image
        self.grid = grid
        self.levels: list[np.ndarray] = []  # index k - 1 -> level k
        self.ranges: list[DisplayRange] = []
        self.cache_dir = cache_dir
        self._ready = False

    # --- public ----------------------------------------------------------------------

    def ensure(self) -> None:
        if self._ready:
            return
        start = time.monotonic()
        if not self._load_or_build_on_disk():
            self._build(in_memory=True)
        self._ready = True
        log.debug("pyramid of %s ready in %.3f s", self.image.ref.path, time.monotonic() - start)

    def window(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """float32 (C, h, w), C-contiguous, of level k (0 is the FITS data itself).

        A file that cannot be read (truncated, damaged tiles) is a file error, as any
        read failure is in iipsrv."""
        try:
            if k == 0:
                out = np.empty((self.image.channels, h, w), np.float32)
                for c in range(self.image.channels):
                    self.image.read(c, x, y, w, h, out=out[c])
                return out
            self.ensure()
            return np.ascontiguousarray(self.levels[k - 1][:, y : y + h, x : x + w])
        except (OSError, ValueError, TypeError, EOFError) as exc:
            log.warning("cannot read %s: %s", self.image.ref.path, exc)
            raise UnreadableImage("Unable to read data of '%s'" % self.image.ref.fif) from None

    # --- disk ------------------------------------------------------------------------

    def _key(self) -> str:
        ref = self.image.ref
        ident = "%s\0%s\0%d\0%d\0%d\0%d\0%d" % (ref.path, ref.selector, ref.size, ref.mtime_ns,
                                                self.grid.tile_w, self.grid.tile_h, FORMAT_VERSION)
        return hashlib.blake2b(ident.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def _load_or_build_on_disk(self) -> bool:
        directory = os.path.join(self.cache_dir, self._key())
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            if self._load(directory):
                return True
            lock_fd = os.open(directory + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            log.warning("pyramid cache %s not usable (%s): building in memory", self.cache_dir, exc)
            return False
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # another worker may be building it
            if self._load(directory):
                return True
            shutil.rmtree(directory, ignore_errors=True)  # leftovers of a crashed build
            os.makedirs(directory)
            self._build(in_memory=False, directory=directory)
            self._write_meta(directory)
            return True
        except OSError as exc:
            log.warning("cannot write pyramid in %s (%s): building in memory", directory, exc)
            shutil.rmtree(directory, ignore_errors=True)
            return False
        except ImagingError:  # the image itself cannot be read: no half-built pyramid left
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _load(self, directory: str) -> bool:
        meta_path = os.path.join(directory, "meta.json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return False
        if meta.get("version") != FORMAT_VERSION:
            return False
        levels = []
        for k, shape in enumerate(meta["shapes"], start=1):
            levels.append(np.memmap(os.path.join(directory, "level%d.f32" % k), np.float32,
                                    mode="r", shape=tuple(shape)))
        self.levels = levels
        self.ranges = [DisplayRange(lo, hi) for lo, hi in meta["ranges"]]
        return True

    def _write_meta(self, directory: str) -> None:
        meta = {"version": FORMAT_VERSION, "path": self.image.ref.path,
                "shapes": [list(level.shape) for level in self.levels],
                "ranges": [[r.lo, r.hi] for r in self.ranges]}
        tmp = os.path.join(directory, "meta.json.tmp%d" % os.getpid())
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(directory, "meta.json"))

    # --- building ----------------------------------------------------------------------

    def _allocate(self, k: int, in_memory: bool, directory: str | None):
        w, h = self.grid.level_size(k)
        shape = (self.image.channels, h, w)
        if in_memory:
            return np.empty(shape, np.float32), None
        tmp = os.path.join(directory, "level%d.f32.tmp%d" % (k, os.getpid()))
        return np.memmap(tmp, np.float32, mode="w+", shape=shape), tmp

    def _build(self, in_memory: bool, directory: str | None = None) -> None:
        image, grid = self.image, self.grid
        nlevels = grid.num_resolutions - 1
        step_y = max(1, image.height // STAT_ROWS)
        step_x = max(1, image.width // STAT_COLS)
        samples: list[list[np.ndarray]] = [[] for _ in range(image.channels)]
        levels = []
        if nlevels == 0:
            for c in range(image.channels):
                for y in range(0, image.height, step_y):
                    samples[c].append(image.read_rows(c, y, 1)[0, ::step_x])
        for k in range(1, nlevels + 1):
            out, tmp = self._allocate(k, in_memory, directory)
            _, out_h, out_w = out.shape
            src_w = image.width if k == 1 else levels[-1].shape[2]
            band = max(1, BAND_BYTES // (8 * max(src_w, 1)))
            if k == 1:  # buffers reused by every band: no page faults after the first
                band_out = np.empty((2 * min(band, out_h), image.width), np.float32)
                scratch = bytearray(band_out.nbytes * 2)  # raw samples: up to 8 bytes each
            for c in range(image.channels):
                for y0 in range(0, out_h, band):
                    y1 = min(out_h, y0 + band)
                    if k == 1:
                        rows = image.read_rows(c, 2 * y0, 2 * (y1 - y0),
                                               out=band_out[: 2 * (y1 - y0)], scratch=scratch)
                        # display-range samples: the rows of this band on the sampling grid
                        first = (-(2 * y0)) % step_y
                        for r in range(first, rows.shape[0], step_y):
                            samples[c].append(rows[r, ::step_x].copy())
                    else:
                        rows = np.ascontiguousarray(levels[-1][c, 2 * y0 : 2 * y1])
                    kernels.bin2x2(rows, out=out[c, y0:y1, :out_w])
                    if self.progress is not None:
                        done = (c + y1 / out_h) / image.channels
                        self.progress("%s: level %d of %d" % (image.ref.fif, k, nlevels), done)
                if k == 1 and 2 * out_h < image.height:  # rows dropped by floor halving
                    for y in range(2 * out_h, image.height):
                        if y % step_y == 0:
                            samples[c].append(image.read_rows(c, y, 1)[0, ::step_x])
            if tmp is not None:
                # no msync: every worker maps the same page-cache pages, and the rename
                # (then meta.json, written last) is what publishes the level
                shape = out.shape
                del out
                final = os.path.join(directory, "level%d.f32" % k)
                os.replace(tmp, final)
                out = np.memmap(final, np.float32, mode="r", shape=shape)
            levels.append(out)
        self.levels = levels
        self.ranges = [robust_range(np.concatenate(s)) for s in samples]
