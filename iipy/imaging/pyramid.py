"""Reduced resolution levels, built once per image and shared by every worker.

Level k >= 1 is a native float32 array (C, floor(H/2^k), floor(W/2^k)) in IIP orientation
(top row first); each pixel is the mean of the finite values of a 2x2 block of level
k - 1 (``kernels.bin2x2``).  All levels are built in one pass per channel: the FITS data
is read once, in bands of rows in the order of the file, each band binned to level 1
straight from its raw samples (``kernels.bin_raw``), and each level's band, once complete,
binned into the next level and written out, so memory stays bounded whatever the image
size.  The default display ranges are computed in the same pass, by the policy of
``IIPY_DISPLAY_RANGE`` (``iipy.imaging.display``): ``stiff`` from every full-resolution
sample, in STIFF's chunks of the file's order, the other policies from evenly spaced
full-resolution rows; an image that fits in one tile (no reduced level) from every sample.
STIFF's statistic costs more than the binning: when the image is read in place and the
process may run on more than one processor, a thread of its own reads it from the same
memory map, in the file's order, while the pass bins and writes (``_RangeThread``).

On disk (``IIPY_CACHE_DIR``) a pyramid is a directory named after a hash of the image's
identity (real path, extension, size, mtime), the tile size, the display-range policy and
this format's version: one
``levelK.f32`` file per level and ``meta.json``, written last.  Level 1 is three quarters of
the pyramid's bytes: for an image read in place (uncompressed data) the build writes
levels 2 and up and publishes them, so that a fresh image's first answers wait for a
quarter of the writes, and level 1 follows in the background (``_Level1Writer``: a thread
of a process that has the pyramid open, chosen by a lock on ``level1.lock``, writes
``level1.f32`` in a second pass over the file; a process whose writer died mid-way, or
was stopped with its image, leaves it to the next one).  Until it is there, windows of
level 1 are binned per request from the raw samples of the memory map (``read_binned``),
the same values bit for bit; every process maps the file once it appears.  Under an exclusive
``fcntl`` lock one worker builds while the others wait: every level file is first
preallocated in full (``posix_fallocate``), so that a full file system fails the build
before it starts, then written (``pwrite``) under a temporary name and renamed into
place; a directory without ``meta.json``, or whose level files do not have their full
size, is never read.  Every worker that has
the pyramid open holds a shared lock on it, so that it is never evicted while in use;
``pyramid_dir`` keeps the directory within its bound.

When the pyramid cannot be on disk (the directory is not writable, the file system is
full, or the pyramid alone exceeds the directory's bound), it is kept in memory by each
worker instead, within ``IIPY_PYRAMID_MEMORY_MB`` per worker: the smallest levels that
fit are built in one pass, and windows of the larger ones are computed per request from
the full-resolution data, in bands of bounded size (the same values, bit for bit).  This
is logged once per image and worker, not per request.

A pyramidal TIFF holds its levels: ``StoredLevels`` plays the same role for it, reading
level k from the file as it is stored.  Both satisfy ``Levels``, which is all the
protocols use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
from typing import Callable, Protocol

import numpy as np

from iipy.cache import LRU
from iipy.errors import UnreadableImage
from iipy.imaging import display, kernels, pyramid_dir
from iipy.imaging.display import Policy
from iipy.imaging.geometry import Grid
from iipy.imaging.source import DisplayRange, ImageSource, LevelledSource, RawWindow

log = logging.getLogger(__name__)

FORMAT_VERSION = pyramid_dir.FORMAT_VERSION
#: Bytes of float32 rows read at once while binning (bounds the build's memory, and that
#: of a window computed from full resolution).
BAND_BYTES = 8 << 20
#: Full-resolution rows sampled for the display range (policies other than ``stiff``).
STAT_ROWS = 512
STAT_COLS = 2048
#: Times a process finds the lock of an unreadable pyramid held by others (not by a
#: builder, which it waits for) before it gives up and keeps the levels in memory.
LOCK_RETRIES = 100
#: Level 1 being written (its blocks reserved by the build).
_PART = "level1.f32.part"
#: Seconds between two looks for level 1 on disk while it is being written, and before a
#: process tries again to write it when no process did.
LEVEL1_POLL = 0.5
LEVEL1_RETRY = 60.0
#: Nice value of the thread that writes level 1: it takes the processor only when the
#: requests leave it idle.
WRITER_NICE = 19
#: Default of IIPY_PYRAMID_MEMORY_MB.
MEMORY_MB = 256
#: A pyramid that is not on disk keeps its smallest levels up to this size in memory even
#: when IIPY_PYRAMID_MEMORY_MB is used up, so that a window computed per request never
#: reads more than about (image size / this) times its own size at full resolution.
MIN_KEPT_BYTES = 1 << 20


class MemoryBudget:
    """Bytes of reduced levels this process keeps in memory for pyramids that are not on
    disk; bounded by IIPY_PYRAMID_MEMORY_MB (see ``Pyramid``)."""

    def __init__(self) -> None:
        self.used = 0


#: The budget of this process (each worker has its own).
memory = MemoryBudget()
#: Keys of pyramids whose move to memory this process has logged: once per image.
_reported: LRU[str, bool] = LRU(4096)


def _levels(first: int, last: int) -> str:
    """``level 2``, ``levels 2-4``, or ``no level`` when first > last."""
    if first > last:
        return "no level"
    return "level %d" % first if first == last else "levels %d-%d" % (first, last)


class _NoRoom(Exception):
    """A level file cannot be preallocated: the pyramid cannot be on disk."""


class RangePass:
    """The default display range of one channel, from its full-resolution rows as the
    pyramid pass reads them: in the order of the file (a FITS image's bottom row first).

    ``stiff`` takes every sample, in that order, so that ``display.StiffChunks`` cuts
    STIFF's own chunks. The other policies take the IIP rows y with y % ``step_y`` == 0,
    every ``step_x``-th column of them (1 and 1: every sample)."""

    def __init__(self, policy: Policy, step_y: int = 1, step_x: int = 1) -> None:
        self.policy = policy
        self.step_y, self.step_x = max(1, step_y), max(1, step_x)
        self._stiff = (display.StiffChunks(display.STIFF_CHUNK) if policy.name == "stiff"
                       else None)
        self._samples: list[np.ndarray] = []

    @property
    def every_row(self) -> bool:
        """Whether every row is wanted (else only the rows of the grid)."""
        return self._stiff is not None or self.step_y == 1

    def add(self, values: np.ndarray, y0: int, n: int) -> None:
        """The samples of IIP rows [y0, y0 + n) in the order of the file (row y0 + n - 1
        first), float32 in either byte order, any shape of n rows; the call may keep no
        reference to them. For ``stiff`` every row of the image comes, in file order."""
        if self._stiff is not None:
            self._stiff.add(values)
            return
        rows = np.asarray(values).reshape(n, -1)
        for y in range(y0 + (-y0) % self.step_y, y0 + n, self.step_y):
            self._samples.append(rows[y0 + n - 1 - y, :: self.step_x].astype(np.float32))

    def result(self) -> DisplayRange:
        if self._stiff is not None:
            lo, hi = self._stiff.result()
        else:
            sample = (np.concatenate(self._samples) if self._samples
                      else np.empty(0, np.float32))
            lo, hi = display.display_range(sample, self.policy)
        return DisplayRange(float(lo), float(hi))


class Levels(Protocol):
    """Every resolution level of one image, as the protocols read them: a ``Pyramid``
    (computed from a FITS image) or ``StoredLevels`` (held by a pyramidal TIFF)."""

    #: The default display range of each channel (valid after ``ensure``).
    ranges: list[DisplayRange]

    def ensure(self) -> None:
        """Make the levels and ``ranges`` ready (may build them)."""
        ...

    def window(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """float32 (C, h, w), C-contiguous, of level k (0 is full resolution)."""
        ...

    def samples(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The window's samples in their own type, interleaved (h, w, C): what 8-bit
        display samples are sent as (docs/protocol.md §6.2)."""
        ...

    def values(self, k: int, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, bool]:
        """The values PFL and SPECTRA report for a window of level k: float64 (C, h, w),
        and whether they print as floats (docs/protocol.md §5.22)."""
        ...

    def stored_jpeg(self, k: int, tile: int) -> bytes | None:
        """Tile ``tile`` of level k as a JPEG the file stores, sendable as it is."""
        ...

    def raw_window(self, k: int, x: int, y: int, w: int, h: int) -> RawWindow | None:
        """The raw samples of a window of level k, for ``kernels.render_raw``, when the
        level has them (full resolution of an uncompressed FITS image), else None."""
        ...

    def close(self) -> None:
        """Let go of what the levels hold (the image's file is closed by its owner)."""
        ...


class StoredLevels:
    """The levels a pyramidal TIFF holds, read as they are stored: nothing is binned,
    built or written, and the display ranges are the file's (docs/protocol.md §4.2)."""

    def __init__(self, image: LevelledSource):
        self.image = image
        self.ranges = image.default_ranges()

    def ensure(self) -> None:
        pass

    def window(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.image.read_level(k, x, y, w, h)

    def samples(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.image.level_samples(k, x, y, w, h)

    def values(self, k: int, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, bool]:
        """The stored samples of every level, printed as the file's type says."""
        return self.image.read_level(k, x, y, w, h).astype(np.float64), self.image.is_float

    def stored_jpeg(self, k: int, tile: int) -> bytes | None:
        return self.image.stored_jpeg(k, tile)

    def raw_window(self, k: int, x: int, y: int, w: int, h: int) -> RawWindow | None:
        return None

    def close(self) -> None:
        pass


def _bin2x2(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``kernels.bin2x2`` of ``rows`` (h, w), where a side of one pixel is binned with
    itself: levels are at least one pixel each way (``geometry.level_size``), so a level
    one pixel wide (or high) is the mean of the 2x1 (or 1x2) blocks above it."""
    if rows.shape[0] == 1:
        rows = np.repeat(rows, 2, axis=0)
    if rows.shape[1] == 1:
        rows = np.repeat(rows, 2, axis=1)
    return kernels.bin2x2(rows, out=out)


class Pyramid:
    """The reduced levels of a FITS image (see the module docstring)."""

    def __init__(self, image: ImageSource, grid: Grid, cache_dir: str,
                 progress: Callable[[str, float], None] | None = None, *,
                 cache_max_mb: int = 0, memory_mb: int = MEMORY_MB,
                 on_build: Callable[[float], None] | None = None,
                 policy: Policy | None = None):
        """``progress(what, fraction)`` is called while a pyramid is being built, and
        ``on_build(seconds)`` once this process has built one (not when it maps one
        another process built); ``cache_max_mb`` is IIPY_CACHE_DIR_MAX_MB (0: automatic),
        ``memory_mb`` IIPY_PYRAMID_MEMORY_MB, and ``policy`` chooses the default display
        ranges (``stiff`` if None)."""
        self.progress = progress
        self.on_build = on_build
        self.image = image
        self.grid = grid
        self.policy = policy if policy is not None else Policy("stiff")
        #: Index k - 1 -> level k; None for a level computed per request (not on disk).
        self.levels: list[np.ndarray | None] = []
        self.ranges: list[DisplayRange] = []
        self.cache_dir = cache_dir
        self.cache_max_mb = cache_max_mb
        self.memory_mb = memory_mb
        #: True when the levels are the shared files of ``cache_dir``.
        self.on_disk = False
        self._ready = False
        self._lock_fd: int | None = None  # shared lock held while the files are open
        self._touched = 0.0
        self._reserved = 0  # bytes of ``memory`` held by this pyramid
        #: Why the levels are not on disk (after ``ensure``), "" when they are.
        self.not_on_disk = ""
        self._built = False  # levels computed by this process (not mapped)
        self._directory = ""  # of the pyramid on disk
        self._writer: _Level1Writer | None = None  # writing level 1 in this process
        self._level1_polled = 0.0

    # --- public ----------------------------------------------------------------------

    def ensure(self) -> None:
        if self._ready:
            return
        start = time.monotonic()
        self._built = False
        if not self._open_on_disk():
            self._build_in_memory()
        self._ready = True
        seconds = time.monotonic() - start
        log.debug("pyramid of %s ready in %.3f s", self.image.ref.path, seconds)
        if self._built and self.on_build is not None:
            self.on_build(seconds)

    def close(self) -> None:
        """Let go of the levels: the shared lock (the pyramid may then be evicted) and
        the memory they held."""
        if self._writer is not None:  # before the image and the lock go
            self._writer.cancel()
            self._writer = None
        if self._lock_fd is not None:
            pyramid_dir.unlock(self._lock_fd)
            self._lock_fd = None
        memory.used -= self._reserved
        self._reserved = 0
        self.levels = []
        self.on_disk = False
        self._ready = False

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
            self._used()
            if k == 1 and self._level1_missing():
                self._look_for_level1()
            level = self.levels[k - 1]
            if level is not None:
                return np.ascontiguousarray(level[:, y : y + h, x : x + w])
            out = np.empty((self.image.channels, h, w), np.float32)
            for c in range(self.image.channels):
                self._from_full(k, c, x, y, w, h, out[c])
            return out
        except (OSError, ValueError, TypeError, EOFError) as exc:
            log.warning("cannot read %s: %s", self.image.ref.path, exc)
            raise UnreadableImage("Unable to read data of '%s'" % self.image.ref.fif) from None

    def samples(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The float32 window, interleaved (h, w, C)."""
        return np.ascontiguousarray(np.moveaxis(self.window(k, x, y, w, h), 0, -1))

    def values(self, k: int, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, bool]:
        """Full resolution: the calibrated FITS values (exact for every BITPIX), printed as
        the data type says; reduced levels: the float32 means, printed as floats."""
        if k == 0:
            return self.image.values(x, y, w, h), self.image.is_float
        return self.window(k, x, y, w, h).astype(np.float64), True

    def stored_jpeg(self, k: int, tile: int) -> bytes | None:
        """A FITS image stores no JPEG."""
        return None

    def raw_window(self, k: int, x: int, y: int, w: int, h: int) -> RawWindow | None:
        """Full resolution of an uncompressed image: a view of the raw samples of every
        channel (``ImageSource.raw_window``), read by the render kernel itself."""
        if k != 0:
            return None
        raw_window = getattr(self.image, "raw_window", None)
        if raw_window is None:
            return None
        try:
            return raw_window(x, y, w, h)
        except (OSError, ValueError, TypeError, EOFError) as exc:
            log.warning("cannot read %s: %s", self.image.ref.path, exc)
            raise UnreadableImage("Unable to read data of '%s'" % self.image.ref.fif) from None

    # --- disk ------------------------------------------------------------------------

    def _used(self) -> None:
        """Record a use of the shared pyramid (for eviction), at most once a minute."""
        now = time.monotonic()
        if self._lock_fd is not None and now - self._touched > pyramid_dir.TOUCH_SECONDS:
            pyramid_dir.touch(self._lock_fd)
            self._touched = now

    def _key(self) -> str:
        ref = self.image.ref
        ident = "%s\0%s\0%d\0%d\0%d\0%d\0%s\0%d" % (
            ref.path, ref.selector, ref.size, ref.mtime_ns, self.grid.tile_w, self.grid.tile_h,
            self.policy, FORMAT_VERSION)
        return hashlib.blake2b(ident.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def _shapes(self) -> list[tuple[int, int, int]]:
        out = []
        for k in range(1, self.grid.num_resolutions):
            w, h = self.grid.level_size(k)
            out.append((self.image.channels, h, w))
        return out

    def _first_stored(self) -> int:
        """The first level the build writes: 2 for an image whose samples are read in
        place from a memory map and that has a level 2 (level 1 is then written in the
        background, ``_Level1Writer``, and binned per request until it is there), else 1
        (tile-compressed data, whose full resolution costs decompression to read)."""
        if self.image.mapped and len(self._shapes()) >= 2 and min(
                self.image.width, self.image.height) >= 2:
            return 2
        return 1

    def _nbytes(self) -> int:
        """Bytes of all the levels on disk (level 1 included, written later or not)."""
        return sum(4 * c * h * w for c, h, w in self._shapes())

    def _open_on_disk(self) -> bool:
        """Map the shared pyramid, building it first if no process has; False (and the
        reason in ``not_on_disk``) when it cannot be on disk."""
        key = self._key()
        directory = self._directory = os.path.join(self.cache_dir, key)
        fd: int | None = None
        built = False
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            fd = pyramid_dir.lock(self.cache_dir, key, exclusive=False)
            waits = 0
            while not self._load(directory):
                # not there: build it, unless another process holds the lock
                if pyramid_dir.upgrade(fd, self.cache_dir, key):
                    if not self._load(directory):  # built while we were getting here
                        reason = self._write(key, directory)
                        if reason is not None:
                            self.not_on_disk = reason
                            return False
                        built = True
                    pyramid_dir.downgrade(fd)
                    break
                pyramid_dir.unlock(fd)
                fd = None
                waits += 1
                if waits > LOCK_RETRIES:
                    self.not_on_disk = "%s stays unreadable while others hold it" % directory
                    return False
                if waits > 1:  # no builder, but other processes hold it shared for a moment
                    time.sleep(random.uniform(0.005, 0.05))
                fd = pyramid_dir.lock(self.cache_dir, key, exclusive=False)  # waits for a builder
            self._lock_fd, fd = fd, None
        except OSError as exc:
            self.not_on_disk = "the directory %s is not usable (%s)" % (self.cache_dir, exc)
            return False
        finally:
            if fd is not None:  # not kept: failed, or raised
                pyramid_dir.unlock(fd)
        pyramid_dir.touch(self._lock_fd)
        self._touched = time.monotonic()
        self.on_disk = True
        if self._level1_missing():
            self._look_for_level1(force=True)
        if built:  # the directory grew: bring it back within its bound
            try:
                pyramid_dir.clean(self.cache_dir, self._bound(), keep=(key,))
            except OSError as exc:
                log.warning("cannot clean pyramid cache %s: %s", self.cache_dir, exc)
        return True

    def _bound(self) -> int:
        return pyramid_dir.bound_bytes(self.cache_dir, self.cache_max_mb)

    def _load(self, directory: str) -> bool:
        """Map a complete pyramid: ``meta.json`` of this format and every level file at
        its full size; False otherwise (nothing is mapped)."""
        try:
            with open(os.path.join(directory, "meta.json")) as f:
                meta = json.load(f)
            if meta.get("version") != FORMAT_VERSION or meta.get("policy") != str(self.policy):
                return False
            shapes = [tuple(int(n) for n in shape) for shape in meta["shapes"]]
            ranges = [DisplayRange(float(lo), float(hi)) for lo, hi in meta["ranges"]]
            first = meta["first"]
            if (shapes != self._shapes() or len(ranges) != self.image.channels
                    or first != self._first_stored()):
                return False
            levels: list[np.ndarray | None] = []
            for k, shape in enumerate(shapes, start=1):
                path = os.path.join(directory, "level%d.f32" % k)
                if k < first and not os.path.exists(path):
                    levels.append(None)  # written in the background: binned until then
                    continue
                if os.stat(path).st_size != 4 * shape[0] * shape[1] * shape[2]:
                    log.warning("pyramid %s: %s has the wrong size, rebuilding it", directory, path)
                    return False
                levels.append(np.memmap(path, np.float32, mode="r", shape=shape))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return False
        self.levels = levels
        self.ranges = ranges
        return True

    # --- level 1, written in the background -------------------------------------------

    def _level1_missing(self) -> bool:
        return self.on_disk and bool(self.levels) and self.levels[0] is None

    def _look_for_level1(self, force: bool = False) -> None:
        """Map level 1 once it is on disk (looked for at most every ``LEVEL1_POLL``
        seconds unless ``force``); while it is not, start writing it here, at most every
        ``LEVEL1_RETRY`` seconds (the lock decides whether this process writes)."""
        now = time.monotonic()
        if not force and now - self._level1_polled < LEVEL1_POLL:
            return
        self._level1_polled = now
        level = _map_level(self._directory, 1, self._shapes()[0])
        if level is not None:
            self.levels[0] = level
            self._writer = None
        elif self._writer is None or (not self._writer.running
                                      and now - self._writer.started > LEVEL1_RETRY):
            if os.access(self._directory, os.W_OK):  # a read-only cache is only read
                self._writer = _Level1Writer.start(self, self._directory)

    def complete(self) -> None:
        """Wait until every level is on disk (``iipy pyramid``): write level 1 in this
        thread if no process is writing it, else wait for the process that is."""
        self.ensure()
        if not self._level1_missing():
            return
        if self._writer is not None:
            self._writer.wait()
        _Level1Writer(self, self._directory).run(blocking=True)
        self._look_for_level1(force=True)

    def _write(self, key: str, directory: str) -> str | None:
        """Build the pyramid into ``directory`` (its lock held exclusively).  None when it
        is there, else why it cannot be on disk; nothing half-written is left behind."""
        needed = self._nbytes()
        bound = self._bound()
        if needed > bound:
            return "its %.1f MB exceed the bound of %s (%.1f MB)" % (
                needed / 1048576, self.cache_dir, bound / 1048576)
        try:
            pyramid_dir.make_room(self.cache_dir, needed, bound, keep=(key,))
        except OSError as exc:
            log.warning("cannot clean pyramid cache %s: %s", self.cache_dir, exc)
        shutil.rmtree(directory, ignore_errors=True)  # leftovers of a build that died
        try:
            os.makedirs(directory)
            files = self._preallocate(directory)
            self._build(files)
            self._write_meta(directory, needed)
        except _NoRoom as exc:
            shutil.rmtree(directory, ignore_errors=True)
            return str(exc)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            return "cannot write it in %s (%s)" % (directory, exc)
        except BaseException:  # the image itself cannot be read: no half-built pyramid left
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return None

    def _preallocate(self, directory: str) -> list[str | None]:
        """A temporary file per level the build writes (None for level 1 when it is
        written later: its ``level1.f32.part`` is reserved here all the same, for its
        writer), its blocks reserved in full before anything is written."""
        files: list[str | None] = []
        first = self._first_stored()
        for k, (c, h, w) in enumerate(self._shapes(), start=1):
            if k < first:
                path = os.path.join(directory, _PART)
                files.append(None)
            else:
                path = os.path.join(directory, "level%d.f32.tmp%d" % (k, os.getpid()))
                files.append(path)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
            try:
                os.posix_fallocate(fd, 0, 4 * c * h * w)
            except OSError as exc:
                raise _NoRoom("cannot reserve its %.1f MB in %s (%s)" % (
                    self._nbytes() / 1048576, self.cache_dir, exc.strerror or exc)) from None
            finally:
                os.close(fd)
        return files

    def _write_meta(self, directory: str, nbytes: int) -> None:
        ref = self.image.ref
        meta = {"version": FORMAT_VERSION, "path": ref.path,
                "image": {"selector": ref.selector, "size": ref.size, "mtime_ns": ref.mtime_ns},
                "bytes": nbytes, "policy": str(self.policy),
                "shapes": [list(shape) for shape in self._shapes()],
                "first": self._first_stored(),
                "ranges": [[r.lo, r.hi] for r in self.ranges]}
        tmp = os.path.join(directory, "meta.json.tmp%d" % os.getpid())
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(directory, "meta.json"))

    # --- memory ----------------------------------------------------------------------

    def _build_in_memory(self) -> None:
        """The levels in this process: the smallest that fit the memory budget (at least
        ``MIN_KEPT_BYTES``), the others computed per request."""
        shapes = self._shapes()
        sizes = [4 * c * h * w for c, h, w in shapes]
        room = max(self.memory_mb * 1048576 - memory.used, MIN_KEPT_BYTES)
        first, kept = len(shapes) + 1, 0  # levels first..n are kept
        while first > 1 and kept + sizes[first - 2] <= room:
            first -= 1
            kept += sizes[first - 1]
        self._built = True
        if first == 1:
            self._build(None)
        else:
            levels: list[np.ndarray | None] = [None] * (first - 1)
            self.ranges = self._read_ranges()
            for k in range(first, len(shapes) + 1):
                out = np.empty(shapes[k - 1], np.float32)
                for c in range(self.image.channels):
                    if k == first:
                        self._from_full(k, c, 0, 0, out.shape[2], out.shape[1], out[c], True)
                    else:
                        _bin2x2(np.ascontiguousarray(levels[-1][c]), out[c])
                levels.append(out)
            self.levels = levels
        self._reserved = kept
        memory.used += kept
        key = self._key()
        if key not in _reported:
            _reported.put(key, True)
            n = len(shapes)
            if first == 1:
                computed = "all levels in memory (%.1f MB)" % (kept / 1048576)
            else:
                computed = "%s in memory (%.1f MB), %s computed per request" % (
                    _levels(first, n), kept / 1048576, _levels(1, first - 1))
            log.warning("pyramid of %s not on disk: %s; %s", self.image.ref.path,
                        self.not_on_disk or "not possible", computed)

    def _from_full(self, k: int, c: int, x: int, y: int, w: int, h: int, out: np.ndarray,
                   report: bool = False) -> None:
        """Window (x, y, w, h) of level k, channel c, into ``out`` (h, w), binned k times
        from the full-resolution data in bands of at most about ``BAND_BYTES``: the same
        values as the level built whole."""
        f = 1 << k
        band = max(1, BAND_BYTES // (4 * f * f * max(w, 1)))  # output rows per band
        width, height = self.image.width, self.image.height
        for y0 in range(0, h, band):
            y1 = min(h, y0 + band)
            top = (y + y0) * f
            # a level one pixel wide (high) comes from fewer than f columns (rows)
            cols, n = min(w * f, width - x * f), min((y1 - y0) * f, height - top)
            if cols >= 2 and n >= 2:  # the first halving straight from the raw samples
                rows = self.image.read_binned(c, x * f, top, cols, n,
                                              out=out[y0:y1] if k == 1 else None)
                halvings = k - 1
            else:
                rows, halvings = self.image.read(c, x * f, top, cols, n), k
            for _ in range(halvings - 1):
                rows = _bin2x2(rows)
            if halvings:
                _bin2x2(rows, out[y0:y1])
            if report and self.progress is not None:
                self.progress("%s: level %d of %d" % (self.image.ref.fif, k,
                                                      self.grid.num_resolutions - 1),
                              (c + y1 / h) / self.image.channels)

    def _range_pass(self, every_sample: bool = False) -> RangePass:
        """A RangePass for one channel: on the sampling grid, or on every sample."""
        image = self.image
        if every_sample:
            return RangePass(self.policy)
        return RangePass(self.policy, max(1, image.height // STAT_ROWS),
                         max(1, image.width // STAT_COLS))

    def _read_ranges(self, every_sample: bool = False,
                     stopped: Callable[[], bool] | None = None) -> list[DisplayRange]:
        """The default display ranges read from the full-resolution data on their own (no
        level built as they go), in the order of the file as the build reads it: every row
        for ``stiff`` or ``every_sample`` (in bands of about ``BAND_BYTES``), else the rows
        of the sampling grid.  ``stopped()`` true: give up (an empty list)."""
        image = self.image
        out = []
        band = max(1, BAND_BYTES // (4 * max(image.width, 1)))
        for c in range(image.channels):
            rp = self._range_pass(every_sample)
            if rp.every_row:
                starts = range(0, image.height, band)
                spans = [(y, min(band, image.height - y)) for y in starts]
            else:
                spans = [(y, 1) for y in range(0, image.height, rp.step_y)]
            for y, n in reversed(spans):  # the file's order: the bottom of the image first
                if stopped is not None and stopped():
                    return []
                image.scan_rows(c, y, n, lambda v, y=y, n=n: rp.add(v, y, n))
            out.append(rp.result())
        return out

    # --- building ----------------------------------------------------------------------

    def _build(self, files: list[str | None] | None) -> None:
        """Every level and the display ranges, in one pass over the data: into the
        preallocated temporary ``files`` (renamed into place once all are written), or in
        memory when there are none.

        Each channel is read once, in bands of rows in the order of the file (the bottom
        of the IIP image first), each band binned to level 1 straight from its raw samples
        (``read_rows(binned=True)``); every band of a level, once complete, is written out
        and binned into the next level, so all levels fill in the same pass with a few
        bands of memory. Rows reach the files with ``pwrite`` from reused buffers."""
        image, grid = self.image, self.grid
        nlevels = grid.num_resolutions - 1
        if nlevels == 0:  # one tile: the range from every sample
            self.levels = []
            self.ranges = self._read_ranges(every_sample=True)
            self._built = True
            return
        shapes = self._shapes()
        h1 = shapes[0][1]
        band = max(2, BAND_BYTES // (8 * max(image.width, 1)) // 2 * 2)  # level-1 rows
        progress, fif = self.progress, image.ref.fif
        writer = _LevelWriter(shapes, files, band)
        thin = image.width == 1 or image.height == 1
        if progress is not None:  # every band of every level reports (and beats the heart)
            writer.report = lambda: progress(fif, writer.fraction)
        ranges: list[DisplayRange] = []
        # STIFF's statistic reads every sample and costs more than the binning: a thread
        # of its own reads it from the same memory map while this one bins and writes
        job = _RangeThread(self._read_ranges) if self._ranges_apart() else None
        try:
            for c in range(image.channels):
                # else the display range sees the rows as they go, in the order of the file
                rp = self._range_pass()
                take = rp.add if job is None else None
                if take is not None:
                    for y in range(2 * h1, image.height):  # the row dropped by floor halving
                        image.read_rows(c, y, 1, samples=lambda v, y=y: take(v, y, 1))
                for j in range((h1 - 1) // band, -1, -1):
                    top, end = j * band, min(h1, (j + 1) * band)
                    out = writer.slot(1, c, top, end - top)
                    n = min(2 * (end - top), image.height - 2 * top)  # 1: one row high
                    keep = (None if take is None else
                            lambda v, y0=2 * top, n=n: take(v, y0, n))  # noqa: E731
                    if thin:  # a side of one pixel: binned with itself
                        _bin2x2(image.read_rows(c, 2 * top, n, samples=keep), out)
                    else:
                        image.read_rows(c, 2 * top, n, out=out, binned=True, samples=keep)
                    writer.fraction = (c + (h1 - top) / h1) / image.channels
                    writer.done(1, c, top, end - top)
                if take is not None:
                    ranges.append(rp.result())
            levels = writer.finish()
            if job is not None:
                ranges = job.result()
        finally:
            if job is not None:
                job.cancel()
            writer.close()
        self.levels = list(levels)
        self.ranges = ranges
        self._built = True

    def _ranges_apart(self) -> bool:
        """Whether the build reads the display ranges in a thread of their own: STIFF's
        statistic (every sample) of an image read in place, on more than one processor."""
        if self.policy.name != "stiff" or not self.image.mapped:
            return False
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        return cpus > 1


class _RangeThread:
    """``read(stopped)`` (``Pyramid._read_ranges``) run in a thread: its kernels release
    the interpreter lock, so it runs beside the pass that bins and writes the levels."""

    def __init__(self, read: Callable[..., list[DisplayRange]]) -> None:
        self._stop = threading.Event()
        self._ranges: list[DisplayRange] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(read,),
                                        name="iipy-display-range", daemon=True)
        self._thread.start()

    def _run(self, read: Callable[..., list[DisplayRange]]) -> None:
        try:
            self._ranges = read(stopped=self._stop.is_set)
        except BaseException as exc:  # raised again by result(), in the building thread
            self._error = exc

    def result(self) -> list[DisplayRange]:
        """The ranges, once read; what the thread raised is raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._ranges

    def cancel(self) -> None:
        """Stop early (the build failed) and wait for the thread."""
        self._stop.set()
        self._thread.join()


class _LevelWriter:
    """The rows of every level of one pass, received bottom up (IIP order reversed), kept
    in a buffer of ``band`` rows per level (rows [j band, (j + 1) band)) and, when a band is
    complete, written to its level (``pwrite`` into the preallocated temporary file, or a
    copy into an array) and binned into the next level's buffer."""

    def __init__(self, shapes: list[tuple[int, int, int]], files: list[str | None] | None,
                 band: int) -> None:
        self.shapes = shapes
        self.files = files
        self.band = band
        self.fds: list[int | None] = []
        self.arrays: list[np.ndarray] = []
        if files is None:
            self.arrays = [np.empty(shape, np.float32) for shape in shapes]
        else:  # None: a level that is not written
            for path in files:
                self.fds.append(None if path is None
                                else os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        self.bufs = [np.empty((min(band, h), w), np.float32) for _, h, w in shapes]
        #: Called after each band written, with ``fraction`` the share of the pass done.
        self.report: Callable[[], None] | None = None
        self.fraction = 0.0

    def slot(self, k: int, c: int, top: int, n: int) -> np.ndarray:
        """Where rows [top, top + n) of level k go (within one band)."""
        start = top - top // self.band * self.band
        return self.bufs[k - 1][start : start + n]

    def done(self, k: int, c: int, top: int, n: int) -> None:
        """Rows [top, top + n) of level k, channel c, are in their slot; the band is
        complete when its first row has come (rows come bottom up)."""
        first = top // self.band * self.band
        if top != first:
            return
        _, h, w = self.shapes[k - 1]
        end = min(h, first + self.band)
        rows = self.bufs[k - 1][: end - first]
        fd = self.fds[k - 1] if self.files is not None else None
        if self.files is None:
            self.arrays[k - 1][c, first:end] = rows
        elif fd is not None:
            _pwrite_all(fd, rows, 4 * (c * h * w + first * w))
        if self.report is not None:
            self.report()
        if k < len(self.shapes):
            pairs = min(end, 2 * self.shapes[k][1]) - first
            # a level one row high makes a next level one row high (levels are at least
            # one pixel each way): its row is binned with itself
            n_next = 1 if h == 1 else pairs // 2
            if n_next:
                out = self.slot(k + 1, c, first // 2, n_next)
                _bin2x2(rows[: 2 * n_next if h > 1 else 1], out)
                self.done(k + 1, c, first // 2, n_next)

    def finish(self) -> list[np.ndarray | None]:
        """The levels: the arrays, or the files closed, renamed into place and mapped."""
        if self.files is None:
            return self.arrays
        # no fsync: every worker maps the same page-cache pages (whose blocks were
        # reserved), and the renames (then meta.json, written last) publish the levels
        self.close()
        levels: list[np.ndarray | None] = []
        for k, (path, shape) in enumerate(zip(self.files, self.shapes), start=1):
            if path is None:
                levels.append(None)
                continue
            final = os.path.join(os.path.dirname(path), "level%d.f32" % k)
            os.replace(path, final)
            levels.append(np.memmap(final, np.float32, mode="r", shape=shape))
        return levels

    def close(self) -> None:
        for fd in self.fds:
            if fd is not None:
                os.close(fd)
        self.fds = []


def _pwrite_all(fd: int, rows: np.ndarray, offset: int) -> None:
    view = memoryview(rows).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _map_level(directory: str, k: int, shape: tuple[int, int, int]) -> np.ndarray | None:
    """Level k of the pyramid in ``directory`` mapped read-only, or None when its file is
    not there at its full size."""
    path = os.path.join(directory, "level%d.f32" % k)
    try:
        if os.stat(path).st_size != 4 * shape[0] * shape[1] * shape[2]:
            return None
        return np.memmap(path, np.float32, mode="r", shape=shape)
    except (OSError, ValueError):
        return None


class _Level1Writer:
    """Writes level 1 of a published pyramid (whose levels 2 and up are on disk): under an
    exclusive ``flock`` on ``level1.lock`` in the pyramid's directory, taken without
    waiting (one process writes, the others go on binning per request), a second pass over
    the file bins every band of rows straight from the raw samples (``read_rows(binned=
    True)``) into ``level1.f32.part``, whose blocks the build reserved, renamed to
    ``level1.f32`` when complete.  A writer that stopped (its image closed) or died leaves
    the file to the next one, which writes it whole again.  The pyramid's shared lock,
    held by the process, keeps the directory from eviction meanwhile.  The thread runs at
    the lowest priority (``WRITER_NICE``): requests come first."""

    def __init__(self, pyramid: Pyramid, directory: str) -> None:
        self.pyramid = pyramid
        self.directory = directory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    @classmethod
    def start(cls, pyramid: Pyramid, directory: str) -> "_Level1Writer":
        writer = cls(pyramid, directory)
        writer._thread = threading.Thread(target=writer._run_logged, name="iipy-level1",
                                          daemon=True)
        writer._thread.start()
        return writer

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def cancel(self) -> None:
        """Stop after the band being written (its temporary file is removed)."""
        self._stop.set()
        self.wait()

    def _run_logged(self) -> None:
        try:  # background work: the requests of this worker come first (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            pass
        try:
            self.run(blocking=False)
        except Exception as exc:  # the image became unreadable: binned per request
            log.warning("level 1 of %s not written: %s", self.pyramid.image.ref.path, exc)

    def run(self, blocking: bool) -> bool:
        """Write level 1 unless another process is (``blocking``: wait for it, then look);
        True when it is on disk."""
        final = os.path.join(self.directory, "level1.f32")
        if os.path.exists(final):
            return True
        fd = pyramid_dir.lock(self.directory, "level1", exclusive=True, blocking=blocking)
        if fd is None:
            return False
        try:
            if not os.path.exists(final) and not self._write():
                return False
            # whoever locks it later finds level1.f32 first: the lock file can go
            try:
                os.unlink(pyramid_dir.lock_path(self.directory, "level1"))
            except FileNotFoundError:
                pass
            return True
        finally:
            pyramid_dir.unlock(fd)

    def _write(self) -> bool:
        p = self.pyramid
        image, shape = p.image, p._shapes()[0]
        c_n, h1, w1 = shape
        part = os.path.join(self.directory, _PART)
        start = time.monotonic()
        # the build reserved it; a writer that stopped or died left it, rewritten whole
        fd = os.open(part, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, 4 * c_n * h1 * w1)
            except OSError as exc:
                log.warning("level 1 of %s stays binned per request: cannot reserve %.1f MB "
                            "in %s (%s)", image.ref.path, 4 * c_n * h1 * w1 / 1048576,
                            self.directory, exc.strerror or exc)
                return False
            band = max(1, BAND_BYTES // (8 * max(image.width, 1)))
            buf = np.empty((min(band, h1), w1), np.float32)
            for c in range(c_n):
                for j in range((h1 - 1) // band, -1, -1):  # bottom up: the file's order
                    if self._stop.is_set():
                        return False
                    top, end = j * band, min(h1, (j + 1) * band)
                    rows = buf[: end - top]
                    image.read_rows(c, 2 * top, 2 * (end - top), out=rows, binned=True)
                    _pwrite_all(fd, rows, 4 * (c * h1 * w1 + top * w1))
        finally:
            os.close(fd)
        os.replace(part, os.path.join(self.directory, "level1.f32"))
        log.debug("level 1 of %s written in %.3f s", image.ref.path, time.monotonic() - start)
        return True
