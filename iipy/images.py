"""From a FIF argument to an open image: path resolution confined to
FILESYSTEM_PREFIX, and a per-worker cache of open images that notices file changes.

Resolution follows iipsrv (iip-protocol.md §4.1): every ``../`` is removed until none is
left, then the prefix and suffix are concatenated.  iipy adds one rule iipsrv lacks: the
real path (symbolic links resolved) must stay inside the prefix, otherwise the request
gets the same 404 as a missing file.

A FIF may end with an extension selector, as in CFITSIO: ``mosaic.fits[2]`` (HDU number)
or ``mosaic.fits[SCI]`` / ``mosaic.fits[SCI,2]`` (EXTNAME, EXTVER).  The selector never
takes part in path resolution.
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from .errors import FileNotFound
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A resolved image: what identifies its bytes, from one ``stat``."""

    fif: str  # the FIF argument as decoded (used in messages and file names)
    path: str  # the real path on disk
    selector: str  # extension selector without brackets, "" for the default
    mtime_ns: int
    size: int

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
        return os.path.realpath(prefix)
    return os.path.realpath(os.path.dirname(prefix) or ".")


def resolve(fif: str, settings: Settings) -> ImageRef:
    """Resolve a decoded FIF argument, or raise FileNotFound."""
    requested = strip_dotdot(fif)
    name, selector = split_selector(requested)
    full = settings.filesystem_prefix + name + settings.filesystem_suffix
    missing = FileNotFound(
        "%s is neither a file nor part of an image sequence" % (name + settings.filesystem_suffix)
    )
    if "\x00" in full:
        raise missing
    real = os.path.realpath(full)
    if settings.filesystem_prefix:
        root = _root(settings.filesystem_prefix)
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            log.warning("refused FIF %r: resolves outside FILESYSTEM_PREFIX", fif)
            raise missing
    try:
        st = os.stat(real)
    except (OSError, ValueError):
        raise missing from None
    if not stat_module.S_ISREG(st.st_mode):
        raise missing
    return ImageRef(fif, real, selector, st.st_mtime_ns, st.st_size)


T = TypeVar("T")


class LRU(Generic[T]):
    """A small least-recently-used map with a close hook for evicted values."""

    def __init__(self, capacity: int, close: Callable[[T], None] | None = None):
        self.capacity = capacity
        self._close = close
        self._items: OrderedDict[object, T] = OrderedDict()

    def get(self, key: object) -> T | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: object, value: T) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            _, old = self._items.popitem(last=False)
            if self._close is not None:
                self._close(old)

    def clear(self) -> None:
        while self._items:
            _, old = self._items.popitem()
            if self._close is not None:
                self._close(old)

    def __len__(self) -> int:
        return len(self._items)
