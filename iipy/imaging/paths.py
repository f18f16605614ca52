"""From a FIF argument to a file: path resolution confined to FILESYSTEM_PREFIX (with
per-worker caches of real paths and image sequences), HDU selectors and image sequences.
The open images themselves are cached by ``store.py``.

Resolution follows iipsrv (docs/protocol.md §4.1): every ``../`` is removed until none is
left, then the prefix and suffix are concatenated.  iipy adds one rule iipsrv lacks: the
real path (symbolic links resolved) must stay inside the prefix, otherwise the request
gets the same 404 as a missing file.

A FIF may end with an extension selector, as in CFITSIO: ``mosaic.fits[2]`` (HDU number)
or ``mosaic.fits[SCI]`` / ``mosaic.fits[SCI,2]`` (EXTNAME, EXTVER).  The selector never
takes part in path resolution.

A FIF that names no file may name an image sequence (docs/protocol.md §4.1 step 6): the
files ``<path><FILENAME_PATTERN><h>_<v>.<ext>``, where h is a horizontal and v a
vertical view angle written with at least three digits.  ``<path><pattern>000_090.*``
must exist, with a single extension; the horizontal angles are those of the files
``..._<h>_090.<ext>``, the vertical ones those of ``..._000_<v>.<ext>``.  The sequence
opens at angles 0, 90; SDS chooses another file of it.
"""

from __future__ import annotations

import logging
import os
import re
import stat as stat_module
import time
from dataclasses import dataclass

from iipy.cache import LRU
from iipy.errors import ImageNotFound
from iipy.settings import Settings

log = logging.getLogger(__name__)


#: Largest number of directory entries looked at for one image sequence.
SEQUENCE_SCAN_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Sequence:
    """The files of an image sequence: ``<stem><h>_<v><ext>`` (angles with %03d)."""

    stem: str  # real directory + "/" + file-name prefix (path and FILENAME_PATTERN)
    ext: str  # the extension with its dot, e.g. ".fits"
    horizontal: tuple[int, ...]  # ascending
    vertical: tuple[int, ...]

    def path(self, horizontal: int, vertical: int) -> str:
        return "%s%03d_%03d%s" % (self.stem, horizontal, vertical, self.ext)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A resolved image: what identifies its bytes, from one ``stat``."""

    fif: str  # the FIF argument as decoded (used in messages and file names)
    path: str  # the real path on disk
    selector: str  # extension selector without brackets, "" for the default
    mtime_ns: int
    size: int
    sequence: Sequence | None = None  # set when the FIF names an image sequence
    angles: tuple[int, int] = (0, 90)  # the view angles of this file of the sequence
    #: The path asked for (FILESYSTEM_PREFIX + FIF + FILESYSTEM_SUFFIX), before its
    #: symbolic links were resolved into ``path``; "" for a file of a sequence.
    requested: str = ""

    @property
    def mtime(self) -> float:
        """Timestamp with iipsrv's one-second resolution (Last-Modified, 304)."""
        return float(self.mtime_ns // 1_000_000_000)

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.path, self.selector, self.mtime_ns, self.size)


def strip_dotdot(path: str) -> str:
    """Remove every ``../`` until none is left (``..././x`` becomes ``x``)."""
    while "../" in path:
        path = path.replace("../", "")
    return path


def split_selector(path: str) -> tuple[str, str]:
    """``file.fits[2]`` -> (``file.fits``, ``2``); no selector -> (path, "")."""
    if path.endswith("]"):
        start = path.rfind("[")
        if start > 0:
            return path[:start], path[start + 1 : -1].strip()
    return path, ""


def _root(prefix: str) -> str:
    """The directory every served file must stay in."""
    if prefix.endswith("/"):
        return _realpath(prefix)
    return _realpath(os.path.dirname(prefix) or ".")


def _inside(real: str, settings: Settings) -> bool:
    if not settings.filesystem_prefix:
        return True
    root = _root(settings.filesystem_prefix)
    return real == root or real.startswith(root.rstrip("/") + "/")


#: Seconds a resolved real path is reused (it costs an lstat per path component; the
#: file itself is still stat()ed on every request, so changes to it are seen at once).
REALPATH_TTL = 2.0
_realpaths: LRU[str, tuple[float, str]] = LRU(4096)


def _realpath(path: str) -> str:
    now = time.monotonic()
    hit = _realpaths.get(path)
    if hit is not None and now - hit[0] < REALPATH_TTL:
        return hit[1]
    real = os.path.realpath(path)
    _realpaths.put(path, (now, real))
    return real


def resolve(fif: str, settings: Settings) -> ImageRef:
    """Resolve a decoded FIF argument, or raise ImageNotFound."""
    requested = strip_dotdot(fif)
    name, selector = split_selector(requested)
    full = settings.filesystem_prefix + name + settings.filesystem_suffix
    missing = ImageNotFound(
        "%s is neither a file nor part of an image sequence" % (name + settings.filesystem_suffix)
    )
    if "\x00" in full:
        raise missing
    real = _realpath(full)
    if not _inside(real, settings):
        log.warning("refused FIF %r: resolves outside FILESYSTEM_PREFIX", fif)
        raise missing
    try:
        st = os.stat(real)
    except (OSError, ValueError):
        st = None
    if st is None or not stat_module.S_ISREG(st.st_mode):
        sequence = find_sequence(full + settings.filename_pattern, settings)
        if sequence is None:
            raise missing
        return sequence_ref(fif, selector, sequence, 0, 90, settings)
    return ImageRef(fif, real, selector, st.st_mtime_ns, st.st_size, requested=full)


def unchanged(requested: str, real: str, mtime_ns: int, size: int, settings: Settings) -> bool:
    """Whether ``resolve`` would still find the same regular file for ``requested`` (a
    path it resolved before, into ``real``): the same real path, still inside
    FILESYSTEM_PREFIX, with the same mtime and size.  The same steps as ``resolve``
    (the real path from the same per-worker cache), so an answer kept from that file
    is given exactly when the file would be opened again."""
    if "\x00" in requested or _realpath(requested) != real or not _inside(real, settings):
        return False
    try:
        st = os.stat(real)
    except (OSError, ValueError):
        return False
    return (stat_module.S_ISREG(st.st_mode) and st.st_mtime_ns == mtime_ns
            and st.st_size == size)


def sequence_ref(fif: str, selector: str, sequence: Sequence, horizontal: int,
                 vertical: int, settings: Settings) -> ImageRef:
    """The file of ``sequence`` at the given angles, or ImageNotFound."""
    real = os.path.realpath(sequence.path(horizontal, vertical))
    st = None
    if _inside(real, settings):
        try:
            st = os.stat(real)
        except (OSError, ValueError):
            pass
    if st is None or not stat_module.S_ISREG(st.st_mode):
        raise ImageNotFound("%s: no image for the view angles %d, %d" % (fif, horizontal, vertical))
    return ImageRef(fif, real, selector, st.st_mtime_ns, st.st_size, sequence,
                    (horizontal, vertical))


#: Sequences found (None: none) by (directory, prefix, directory mtime).
_sequences: LRU[tuple[str, str, int], tuple[Sequence | None]] = LRU(256)


def find_sequence(stem: str, settings: Settings) -> Sequence | None:
    """The image sequence whose files start with ``stem`` (path + FILENAME_PATTERN), or
    None.  One listing of the directory, remembered until the directory changes."""
    directory, prefix = os.path.split(stem)
    if not prefix or "\x00" in stem:
        return None
    real_dir = os.path.realpath(directory or ".")
    if not _inside(real_dir, settings):
        return None
    try:
        dir_mtime = os.stat(real_dir).st_mtime_ns
    except (OSError, ValueError):
        return None
    key = (real_dir, prefix, dir_mtime)
    known = _sequences.get(key)
    if known is not None:
        return known[0]
    sequence = _scan_sequence(real_dir, prefix)
    _sequences.put(key, (sequence,))
    return sequence


def _scan_sequence(real_dir: str, prefix: str) -> Sequence | None:
    pattern = re.compile(re.escape(prefix) + r"(\d+)_(\d+)(\..*)\Z", re.DOTALL)
    found: list[tuple[int, int, str]] = []
    try:
        with os.scandir(real_dir) as entries:
            for n, entry in enumerate(entries):
                if n >= SEQUENCE_SCAN_LIMIT:
                    log.warning("image sequence %s%s: more than %d files, not scanned further",
                                real_dir, prefix, SEQUENCE_SCAN_LIMIT)
                    break
                m = pattern.match(entry.name)
                if m:
                    found.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    except OSError:
        return None
    exts = {ext for h, v, ext in found if h == 0 and v == 90}
    if not exts:
        return None
    if len(exts) > 1:
        raise ImageNotFound("There are multiple file extensions matching %s%s000_090"
                           % (os.path.basename(real_dir) + "/", prefix))
    ext = exts.pop()
    horizontal = sorted({h for h, v, e in found if v == 90 and e == ext})
    vertical = sorted({v for h, v, e in found if h == 0 and e == ext})
    return Sequence(os.path.join(real_dir, prefix), ext, tuple(horizontal), tuple(vertical))
