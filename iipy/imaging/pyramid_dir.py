"""The pyramid directory (``IIPY_CACHE_DIR``): locks, last use, its bound, eviction and
cleaning.  ``Pyramid`` (``pyramid.py``) writes and reads the pyramids; this module decides
which may go.

Layout: for each pyramid, a directory ``<key>/`` (``level1.f32`` ... ``levelN.f32`` and
``meta.json``, written last; ``level1.f32`` may follow ``meta.json``, written from
``level1.f32.part`` under ``level1.lock``, see ``pyramid._Level1Writer``) and a lock file
``<key>.lock`` beside it; ``<key>`` is 32 hexadecimal digits.  Nothing else in the directory is touched.

Locks (``flock`` on ``<key>.lock``):

* a builder takes the lock exclusively, without waiting, while it writes, then
  downgrades it to shared; a process that finds the lock held exclusively waits for a
  shared lock, then reads what the builder wrote;
* every process that has a pyramid open (mapped) holds it shared, for as long as it keeps
  the image open;
* cleaning and eviction take it with ``LOCK_EX | LOCK_NB`` and leave the pyramid alone when
  that fails, so a pyramid being built, or open in any worker, is never removed.  They
  remove the directory, then the lock file, while they hold the lock; a process that
  opened the lock file before it was removed sees that the file it locked is no longer
  the one at that path, and starts again (``lock``).

Last use: the modification time of the lock file, set when a pyramid is opened and, while
it serves, at most once every ``TOUCH_SECONDS``.

Bound: ``IIPY_CACHE_DIR_MAX_MB``, or by default ``AUTO_SHARE`` of the file system that holds
the directory, at most ``AUTO_CAP_MB``.  A builder makes room before it writes and checks
the bound again after (``clean``: one scan of the directory per build, never one per
request); ``iipy cache --prune`` does the same on demand.  Cleaning also removes what
nobody can use any more: pyramids of images that changed or were removed (the key of the
new file is another), pyramids of an older format, directories of builds that died before
``meta.json`` and lock files without a pyramid, the last two once they are older than
``GRACE_SECONDS``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

#: Version of the files of a pyramid (``meta.json`` and the levels); part of the key.
FORMAT_VERSION = 4
#: Default bound: this share of the size of the file system holding the directory ...
AUTO_SHARE = 0.10
#: ... but at most this many MB.
AUTO_CAP_MB = 10240
#: Leftovers of a build that died (a directory without ``meta.json``, a lock file without
#: a directory) are removed once they are this old.
GRACE_SECONDS = 600.0
#: A pyramid in use has its last use recorded at most this often.
TOUCH_SECONDS = 60.0
#: Free space asked for beyond a pyramid's own size before it is written (``meta.json``,
#: directory blocks).
MARGIN_BYTES = 64 << 10

_KEY_RE = re.compile(r"[0-9a-f]{32}\Z")
_LOCK_SUFFIX = ".lock"


def lock_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, key + _LOCK_SUFFIX)


# --- locks -----------------------------------------------------------------------------


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def lock(cache_dir: str, key: str, exclusive: bool, blocking: bool = True) -> int | None:
    """Open ``<key>.lock`` (created if needed) and lock it; the file descriptor, or None
    when ``blocking`` is false and another process holds a conflicting lock."""
    path = lock_path(cache_dir, key)
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            try:  # a directory we cannot write: its pyramids can still be read
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise exc from None
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the file was removed (eviction) while we waited for it: again


def upgrade(fd: int, cache_dir: str, key: str) -> bool:
    """Turn the shared lock on ``fd`` into an exclusive one without waiting.  False when
    another process holds the lock; ``fd`` then holds no lock at all (a conversion drops
    the old lock first), and the caller closes it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return _same_file(fd, lock_path(cache_dir, key))


def downgrade(fd: int) -> None:
    """Turn the exclusive lock on ``fd`` into a shared one.  Linux converts it in one step
    (no other process can take the lock in between)."""
    fcntl.flock(fd, fcntl.LOCK_SH)


def unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def touch(fd: int) -> None:
    """Record a use of the pyramid whose lock ``fd`` holds."""
    try:
        os.utime(fd)
    except OSError:  # a read-only file system: recency is only a hint
        pass


# --- the bound ---------------------------------------------------------------------------


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def bound_bytes(cache_dir: str, max_mb: int) -> int:
    """The largest size of the directory: ``max_mb`` MB, or when it is 0, ``AUTO_SHARE`` of
    the size of its file system, at most ``AUTO_CAP_MB``."""
    if max_mb > 0:
        return max_mb << 20
    try:
        st = os.statvfs(_existing_ancestor(cache_dir))
        share = int(st.f_blocks * st.f_frsize * AUTO_SHARE)
    except OSError:
        share = AUTO_CAP_MB << 20
    return min(share, AUTO_CAP_MB << 20)


def describe_bound(max_mb: int) -> str:
    if max_mb > 0:
        return "IIPY_CACHE_DIR_MAX_MB=%d" % max_mb
    return "%d %% of the file system, at most %d MB" % (round(AUTO_SHARE * 100), AUTO_CAP_MB)


def free_bytes(cache_dir: str) -> int:
    """Bytes an unprivileged process may still write on the directory's file system."""
    st = os.statvfs(_existing_ancestor(cache_dir))
    return st.f_bavail * st.f_frsize


# --- what is in the directory ------------------------------------------------------------


@dataclass
class Entry:
    """One pyramid of the directory as found on disk (no lock taken to look)."""

    key: str
    cache_dir: str
    has_dir: bool = False
    has_lock: bool = False
    bytes: int = 0  # disk use of its files (blocks, as du counts them)
    last_use: float = 0.0  # seconds since the epoch
    newest: float = 0.0  # newest modification time of its directory and files
    meta: dict[str, Any] | None = None  # meta.json, when the pyramid is complete
    files: list[str] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return os.path.join(self.cache_dir, self.key)

    @property
    def image(self) -> str:
        return str(self.meta.get("path", "")) if self.meta else ""

    def stale(self, now: float, grace: float = GRACE_SECONDS) -> str | None:
        """Why nobody can use this pyramid any more, or None.  Leftovers of builds (no
        ``meta.json``, or a lock file alone) only count once older than ``grace``."""
        if not self.has_dir:
            return "lock file without a pyramid" if now - self.newest > grace else None
        if self.meta is None:
            return "incomplete build" if now - self.newest > grace else None
        if self.meta.get("version") != FORMAT_VERSION:
            return "older format"
        image = self.meta.get("image")
        if not isinstance(image, dict):
            return "older format"
        try:
            st = os.stat(self.image)
        except FileNotFoundError:
            return "image removed"
        except OSError:  # unreadable now (permissions, a mount away): keep it
            return None
        if (st.st_size, st.st_mtime_ns) != (image.get("size"), image.get("mtime_ns")):
            return "image changed"
        return None


def _read_meta(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def read_entry(cache_dir: str, key: str) -> Entry | None:
    """The entry ``key`` as it is now, or None if neither its directory nor its lock exist."""
    entry = Entry(key, cache_dir)
    lock_time = 0.0
    try:
        lock_time = os.stat(lock_path(cache_dir, key)).st_mtime
        entry.has_lock = True
    except FileNotFoundError:
        pass
    try:
        names = os.listdir(entry.directory)
        entry.has_dir = True
        entry.newest = os.stat(entry.directory).st_mtime
    except FileNotFoundError:
        names = []
        entry.newest = lock_time
    except NotADirectoryError:
        return None  # not ours
    meta_time = 0.0
    for name in names:
        try:
            st = os.lstat(os.path.join(entry.directory, name))
        except FileNotFoundError:
            continue
        entry.files.append(name)
        entry.bytes += st.st_blocks * 512
        entry.newest = max(entry.newest, st.st_mtime)
        if name == "meta.json":
            meta_time = st.st_mtime
    if "meta.json" in entry.files:
        entry.meta = _read_meta(os.path.join(entry.directory, "meta.json"))
    entry.last_use = lock_time if entry.has_lock else (meta_time or entry.newest)
    if not (entry.has_dir or entry.has_lock):
        return None
    return entry


def scan(cache_dir: str) -> list[Entry]:
    """Every pyramid and lock file of the directory, in no particular order (empty if the
    directory does not exist)."""
    try:
        names = os.listdir(cache_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = set()
    for name in names:
        key = name[: -len(_LOCK_SUFFIX)] if name.endswith(_LOCK_SUFFIX) else name
        if _KEY_RE.match(key):
            keys.add(key)
    entries = []
    for key in sorted(keys):
        entry = read_entry(cache_dir, key)
        if entry is not None:
            entries.append(entry)
    return entries


def in_use(entry: Entry) -> bool:
    """True if a process holds the pyramid's lock (it is open, or being built)."""
    if not entry.has_lock:
        return False
    try:
        fd = os.open(lock_path(entry.cache_dir, entry.key), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # removed meanwhile, or not ours to read
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


# --- removing ----------------------------------------------------------------------------


@dataclass
class Removed:
    key: str
    image: str
    bytes: int
    reason: str


def _remove(entry: Entry) -> None:
    """Remove a pyramid whose lock is held exclusively: its directory, then its lock file."""
    shutil.rmtree(entry.directory, ignore_errors=True)
    try:
        os.unlink(lock_path(entry.cache_dir, entry.key))
    except FileNotFoundError:
        pass


def _try_remove(cache_dir: str, key: str,
                check: Callable[[Entry], str | None]) -> Removed | None:
    """Take the lock of ``key`` without waiting; if no one holds it, look at the entry
    again and remove it when ``check(entry)`` gives a reason.  None when it stays."""
    try:
        fd = lock(cache_dir, key, exclusive=True, blocking=False)
    except OSError as exc:
        log.warning("cannot lock pyramid %s in %s: %s", key, cache_dir, exc)
        return None
    if fd is None:
        return None  # being built, or open in some process
    try:
        entry = read_entry(cache_dir, key)
        if entry is None:
            return None
        reason = check(entry)
        if reason is None:
            return None
        _remove(entry)
        return Removed(key, entry.image, entry.bytes, reason)
    finally:
        unlock(fd)


def clean(cache_dir: str, target_bytes: int, keep: Iterable[str] = (),
          grace: float = GRACE_SECONDS) -> list[Removed]:
    """Remove stale pyramids and leftovers, then evict the least recently used pyramids
    until the directory holds at most ``target_bytes``.  Pyramids in ``keep``, being built
    or open in any process are left alone, so the directory may stay above the target."""
    keep = set(keep)
    now = time.time()
    removed: list[Removed] = []
    entries = [e for e in scan(cache_dir) if e.key not in keep]
    left: list[Entry] = []
    for entry in entries:
        if entry.stale(now, grace) is not None:
            gone = _try_remove(cache_dir, entry.key, lambda e: e.stale(now, grace))
            if gone is not None:
                removed.append(gone)
                continue
        left.append(entry)
    total = sum(e.bytes for e in left) + sum(
        e.bytes for e in (read_entry(cache_dir, k) for k in keep) if e is not None)
    for entry in sorted((e for e in left if e.meta is not None), key=lambda e: e.last_use):
        if total <= target_bytes:
            break
        # used again since the scan: not the least recently used (a lock file that did not
        # exist was just made by the eviction itself)
        seen = entry.last_use if entry.has_lock else float("inf")
        gone = _try_remove(cache_dir, entry.key, lambda e: "least recently used" if (
            e.meta is not None and e.last_use <= seen) else None)
        if gone is not None:
            removed.append(gone)
            total -= gone.bytes
    for gone in removed:
        log.info("pyramid cache %s: removed %s (%s, %.1f MB): %s", cache_dir, gone.key,
                 gone.reason, gone.bytes / 1048576, gone.image or "-")
    return removed


def make_room(cache_dir: str, needed: int, bound: int, keep: Iterable[str] = ()) -> bool:
    """Before ``needed`` bytes are written: clean and evict so that the directory stays
    within ``bound`` and the file system has room.  True if the room is there."""
    if needed > bound:
        return False
    clean(cache_dir, bound - needed, keep)
    try:
        short = needed + MARGIN_BYTES - free_bytes(cache_dir)
    except OSError:
        return True  # cannot tell: preallocation will
    if short > 0:
        total = sum(e.bytes for e in scan(cache_dir))
        clean(cache_dir, total - short, keep)
        try:
            return free_bytes(cache_dir) >= needed
        except OSError:
            return True
    return True

