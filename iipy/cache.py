"""Caches of finished responses: per worker in memory, shared through memcached.

Two kinds of key, one digest space.  Most answers are kept under their *request
string* (``KeyHasher.request_digest``: the string the router reads, after URI_MAP,
whether it was mapped, and the Accept header of a IIIF request), as a
``RequestEntry``: the files the answer was made from (path asked for, real path,
mtime_ns, size), its status and metrics labels, and the complete response
(``Response.to_bytes()``).  The router looks that key up before parsing and sends the
stored bytes when every file is unchanged (``iipy.imaging.paths.unchanged``).  The
commands also look up a key tuple of the *normalised* request (the output command and
its arguments, the image identity (path, HDU selector, mtime_ns, size), the view;
``TileCache`` of :mod:`iipy.protocols.iip.context`: ``get(key) -> bytes | None`` and
``set(key, value)``), whose value is the response alone: where TIL keeps its tiles
and where answers are kept that cannot be checked before parsing.  An answer is
stored under one of the two, once per layer.

Keys.  Either is hashed with BLAKE2b together with everything else that changes the
bytes: the settings that appear in the output (Server token, CORS, Cache-Control,
default JPEG quality, tile size, CVT limits, watermark, default display range), the
cache format, iipy's version, and a digest of iipy's code (so hosts share entries
when they run the same build, and a rebuilt iipy never reads what an older one
stored); a request string also with the settings that give it its meaning
(``request_settings``).  Two workers, or two hosts, with the same configuration
compute the same digest for the same request.  A file that changes on disk changes
its identity: a normalised key then changes and its old entries age out; an entry
under a request string is refused and replaced.  In memcached the key is
``iipy:<32 hex digits>``: always 37 bytes, within memcached's 250-byte limit whatever
the request length, and never in iipsrv's ``iipsrv::`` namespace, so both servers can
share one memcached.

``MemoryCache`` is a least-recently-used map bounded in bytes (MAX_IMAGE_CACHE_SIZE MB
per worker process, as iipsrv's tile cache).  ``MemcachedCache`` is the only user of
pymemcache; it fails open: every error is a miss, a server that fails is left alone for
a few seconds (then retried), and failures are logged at most once a minute.
``LayeredCache`` asks memory first, then memcached, and copies memcached hits into
memory.  ``build_cache(settings)`` builds what the settings ask for; call it in the
worker process (after fork): the memcached connections are opened lazily, by the
process that uses them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, TypeVar

from iipy import __version__
from iipy.settings import Settings

log = logging.getLogger(__name__)

#: Changed whenever the cached bytes change meaning (response layout, key scheme).
#: 2: answers kept under their request string (``RequestEntry``).
CACHE_FORMAT = 2
#: Prefix of every memcached key (iipsrv uses ``iipsrv::``).
KEY_PREFIX = "iipy:"
#: Bytes per MB of MAX_IMAGE_CACHE_SIZE.
MEGABYTE = 1024 * 1024
#: Largest value sent to memcached: its default item size limit (1 MiB) less room for
#: the item header and key.  Larger responses are not stored there.
MEMCACHED_MAX_VALUE = MEGABYTE - 4096
#: memcached's default port.
MEMCACHED_PORT = 11211
#: Seconds to wait for a memcached connection or answer before counting a miss.
MEMCACHED_CONNECT_TIMEOUT = 0.1
MEMCACHED_TIMEOUT = 0.1
#: Seconds a memcached server that failed is left alone before it is tried again.
MEMCACHED_BACKOFF = 3.0
#: At most one warning about memcached per this many seconds (per worker).
LOG_INTERVAL = 60.0
#: memcached's largest relative expiry; larger values are read as a Unix time.
_RELATIVE_EXPIRY_MAX = 30 * 24 * 3600

Key = tuple


def _code_digest() -> str:
    """A digest of iipy's own code (its modules and compiled kernels), so that a changed
    iipy never reads entries an older one stored, even under the same version number.
    Computed once, at import (in the master, before the fork)."""
    h = hashlib.blake2b(digest_size=8)
    package = os.path.dirname(os.path.abspath(__file__))
    try:
        names = sorted(os.path.relpath(os.path.join(d, n), package)
                       for d, _, files in os.walk(package) for n in files
                       if n.endswith((".py", ".so", ".pyd")))
        for name in names:
            with open(os.path.join(package, name), "rb") as f:
                h.update(name.encode("utf-8", "surrogateescape") + b"\0" + f.read())
    except OSError:  # pragma: no cover - unreadable install: the version alone keys it
        return ""
    return h.hexdigest()


#: See ``_code_digest``; part of every key.
CODE_DIGEST = _code_digest()


# ---- keys ---------------------------------------------------------------------------


def output_settings(settings: Settings) -> tuple:
    """The settings whose values can appear in a cached response."""
    return (
        ("server", settings.server_token),
        ("cors", settings.cors),
        ("cache_control", settings.cache_control),
        ("jpeg_quality", settings.jpeg_quality),
        ("png_quality", settings.png_quality),
        ("webp_quality", settings.webp_quality),
        ("avif_quality", settings.avif_quality),
        ("tile_size", settings.tile_size),
        ("max_cvt", settings.max_cvt),
        ("allow_upscaling", settings.allow_upscaling),
        ("interpolation", settings.interpolation),
        ("base_url", settings.base_url),
        ("codec_passthrough", settings.codec_passthrough),
        ("watermark", settings.watermark, settings.watermark_probability,
         settings.watermark_opacity),
        # the default display range of every view that sets none (MINMAX)
        ("display_range", settings.display_range),
    )


def request_settings(settings: Settings) -> tuple:
    """The settings that decide what a request string means: which file a FIF names,
    how a IIIF request parses.  The request keys cover them besides
    ``output_settings``; the normalised keys hold their outcome (the real path, the
    view) instead."""
    return (
        ("filesystem_prefix", settings.filesystem_prefix),
        ("filesystem_suffix", settings.filesystem_suffix),
        ("filename_pattern", settings.filename_pattern),
        ("iiif_version", settings.iiif_version),
    )


class KeyHasher:
    """Turns a key tuple, or a request string, into a short hex digest that also
    covers the settings that change the output and the iipy version."""

    __slots__ = ("_base", "_request_base")

    def __init__(self, settings: Settings):
        seed = repr((CACHE_FORMAT, __version__, CODE_DIGEST, output_settings(settings)))
        self._base = hashlib.blake2b(seed.encode("utf-8", "surrogateescape"), digest_size=16)
        # a key tuple's repr starts with "(": this prefix keeps the two kinds apart
        self._request_base = self._base.copy()
        self._request_base.update(b"request\0" + repr(request_settings(settings)).encode(
            "utf-8", "surrogateescape") + b"\0")

    def digest(self, key: Key) -> str:
        """32 hex digits.  ``repr`` of tuples of str, int, float, bool and None is the
        same in every process (no hash randomisation), so it is a canonical form."""
        h = self._base.copy()
        h.update(repr(key).encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def request_digest(self, query: str, mapped: bool, accept: str | None) -> str:
        """32 hex digits for a request string as the router reads it, whether it came
        from URI_MAP, and the Accept header when the answer may depend on it (None
        when it cannot)."""
        q = query.encode("utf-8", "surrogatepass")
        a = b"" if accept is None else accept.encode("utf-8", "surrogatepass")
        h = self._request_base.copy()
        h.update(b"%d %d %d\0" % (mapped, len(q), -1 if accept is None else len(a)))
        h.update(q)
        h.update(a)
        return h.hexdigest()


# ---- answers kept under their request string ---------------------------------------


#: One file an answer was made from: the path asked for (before symbolic links were
#: resolved), its real path, mtime in ns, size in bytes.
FileIdentity = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True)
class RequestEntry:
    """A complete answer kept under its request string, with what it takes to give it
    again without parsing the request: the files it was made from (to check they are
    unchanged) and the labels of its metrics."""

    status: int
    protocol: str
    command: str
    files: tuple[FileIdentity, ...]
    response: bytes  # the CGI bytes, as ``Response.to_bytes()``

    def pack(self) -> bytes:
        """The stored value: the length of the header (4 bytes, big-endian), the header
        (status, protocol, command, then four fields per file, NUL-separated, UTF-8),
        the response.  Paths hold no NUL (``paths.resolve`` refuses them)."""
        fields = [str(self.status), self.protocol, self.command]
        for requested, real, mtime_ns, size in self.files:
            fields += (requested, real, str(mtime_ns), str(size))
        head = "\0".join(fields).encode("utf-8", "surrogateescape")
        return len(head).to_bytes(4, "big") + head + self.response

    @classmethod
    def unpack(cls, raw: bytes) -> "RequestEntry | None":
        """Inverse of ``pack``; None for anything that is not such a value."""
        n = int.from_bytes(raw[:4], "big")
        if len(raw) < 4 + n:
            return None
        fields = raw[4:4 + n].decode("utf-8", "surrogateescape").split("\0")
        if len(fields) < 7 or (len(fields) - 3) % 4:
            return None
        try:
            files = tuple((fields[i], fields[i + 1], int(fields[i + 2]), int(fields[i + 3]))
                          for i in range(3, len(fields), 4))
            return cls(int(fields[0]), fields[1], fields[2], files, raw[4 + n:])
        except ValueError:
            return None


# ---- the one in-process LRU -------------------------------------------------------


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A least-recently-used map bounded by a count or by a total weight.

    Without ``weigh`` each value counts 1 and ``capacity`` is the number of entries;
    with ``weigh`` (e.g. ``len`` for bytes) ``capacity`` bounds the sum of the weights,
    and a value heavier than the whole capacity is not stored.  ``close`` is called on
    every value that leaves the map (evicted, replaced or cleared).  Every in-process
    cache of iipy is one of these.  Not thread-safe: callers that share one between
    threads hold their own lock.
    """

    def __init__(self, capacity: float, weigh: Callable[[V], int] | None = None,
                 close: Callable[[V], None] | None = None) -> None:
        self.capacity = capacity
        self.size = 0
        self._weigh = weigh
        self._close = close
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.pop(key)
        weight = 1 if self._weigh is None else self._weigh(value)
        if weight > self.capacity:
            self._closed(value)
            return
        self._items[key] = value
        self.size += weight
        while self.size > self.capacity:
            _, old = self._items.popitem(last=False)
            self._forget(old)

    def pop(self, key: K) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._forget(old)

    def clear(self) -> None:
        while self._items:
            _, old = self._items.popitem()
            self._forget(old)

    def _forget(self, value: V) -> None:
        self.size -= 1 if self._weigh is None else self._weigh(value)
        self._closed(value)

    def _closed(self, value: V) -> None:
        if self._close is not None:
            self._close(value)


# ---- in-process response cache ------------------------------------------------------


class _DigestCache:
    """``get``/``set`` by key tuple, on top of a subclass's ``get_digest``/``set_digest``
    (the hashed key); ``last_hit`` names the layer that answered the last ``get``."""

    name = ""
    hasher: "KeyHasher"
    last_hit: str | None = None

    def get_digest(self, digest: str) -> bytes | None:
        raise NotImplementedError

    def set_digest(self, digest: str, value: bytes) -> None:
        raise NotImplementedError

    def get(self, key: Key) -> bytes | None:
        value = self.get_digest(self.hasher.digest(key))
        self.last_hit = self.name if value is not None else None
        return value

    def set(self, key: Key, value: bytes) -> None:
        self.set_digest(self.hasher.digest(key), value)


class MemoryCache(_DigestCache):
    """Least-recently-used responses of one process, bounded in bytes.

    ``capacity`` counts the values' bytes; a value larger than the whole capacity is
    not stored.  Not thread-safe (a worker serves one request at a time).
    """

    name = "memory"

    def __init__(self, capacity: int, hasher: KeyHasher):
        self.hasher = hasher
        self._lru: LRU[str, bytes] = LRU(int(capacity), weigh=len)
        self.last_hit: str | None = None

    @property
    def capacity(self) -> int:
        return int(self._lru.capacity)

    @property
    def size(self) -> int:
        return self._lru.size

    def __len__(self) -> int:
        return len(self._lru)

    def get_digest(self, digest: str) -> bytes | None:
        return self._lru.get(digest)

    def set_digest(self, digest: str, value: bytes) -> None:
        self._lru.put(digest, value)

    def clear(self) -> None:
        self._lru.clear()


# ---- memcached ----------------------------------------------------------------------


def parse_servers(text: str) -> list[tuple[str, int] | str]:
    """MEMCACHED_SERVERS: comma-separated ``host[:port]`` (port 11211 by default),
    ``[v6addr]:port``, or a unix socket path.  Empty entries are skipped.

    ``localhost`` becomes ``127.0.0.1``: the memcached client connects to the first
    address a name resolves to, which is often ``::1``, while memcached (Debian's
    default configuration) listens on 127.0.0.1 only.
    """
    servers: list[tuple[str, int] | str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("/") or item.startswith("unix:"):
            servers.append(item[5:] if item.startswith("unix:") else item)
            continue
        host, port = item, MEMCACHED_PORT
        if item.startswith("["):
            end = item.find("]")
            host = item[1:end] if end > 0 else item[1:]
            rest = item[end + 1:] if end > 0 else ""
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif item.count(":") == 1:
            name, _, digits = item.partition(":")
            host = name
            if digits.isdigit():
                port = int(digits)
        if host.lower() == "localhost":
            host = "127.0.0.1"
        if host:
            servers.append((host, port))
    return servers


def _describe(servers: list[tuple[str, int] | str]) -> str:
    return ",".join(s if isinstance(s, str) else "%s:%d" % s for s in servers)


#: Bytes asked of each recv() from memcached: a typical tile and its header in one
#: call (below glibc's mmap threshold, so the buffer is a cheap allocation).
MEMCACHED_RECV_SIZE = 65536


class MemcachedCache(_DigestCache):
    """Responses shared through one or more memcached servers; fails open.

    Keys are spread over the servers by pymemcache's ``HashClient`` (rendezvous
    hashing, a consistent hash: adding or losing a server moves only that server's
    share of the keys), so a fleet of iipy hosts with the same MEMCACHED_SERVERS
    shares one cache.  The client is created on first use, in the process that uses
    it, with short timeouts.  Any error is a miss (or a skipped store): a server
    that fails (refused, reset, timed out) is taken out of the rotation for
    ``backoff`` seconds, then tried again.  ``client_factory`` and ``socket_module``
    exist for fault-injection tests.
    """

    name = "memcached"

    def __init__(self, servers: list[tuple[str, int] | str], hasher: KeyHasher, *,
                 expire: int = 86400, backoff: float = MEMCACHED_BACKOFF,
                 connect_timeout: float = MEMCACHED_CONNECT_TIMEOUT,
                 timeout: float = MEMCACHED_TIMEOUT, max_value: int = MEMCACHED_MAX_VALUE,
                 socket_module: Any = socket,
                 client_factory: Callable[[], Any] | None = None):
        if not servers:
            raise ValueError("no memcached server")
        self.servers = servers
        self.hasher = hasher
        self.expire = max(0, int(expire))
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_value = max_value
        self._socket_module = socket_module
        self._client_factory = client_factory or self._new_client
        self._client: Any = None
        self._pid = 0
        self._reported = False
        self._last_log = -LOG_INTERVAL
        self._suppressed = 0
        self.errors = 0
        self.last_hit: str | None = None

    def _new_client(self) -> Any:
        from pymemcache.client import base
        from pymemcache.client.hash import HashClient
        from pymemcache.client.rendezvous import RendezvousHash

        # pymemcache reads answers 4 KiB per recv() (a module constant): a 20 KB tile
        # took 6 system calls and as many passes of its Python loop
        base.RECV_SIZE = max(base.RECV_SIZE, MEMCACHED_RECV_SIZE)

        return HashClient(
            self.servers,
            # pymemcache's rendezvous hashing, with a hash computed in C (its default,
            # murmur3 in pure Python, costs more than the rest of a cache lookup)
            hasher=functools.partial(RendezvousHash, hash_function=_node_score),
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
            no_delay=True,
            socket_module=self._socket_module,
            # A failing server is removed at once and re-added after ``backoff``.
            retry_attempts=0,
            retry_timeout=self.backoff,
            dead_timeout=self.backoff,
            ignore_exc=False,  # errors come here, to be counted and logged
            default_noreply=True,  # stores do not wait for memcached's answer
        )

    @property
    def client(self) -> Any:
        """The client of this process (a forked copy is never reused)."""
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            self._client = self._client_factory()
            self._pid = pid
        return self._client

    def get_digest(self, digest: str) -> bytes | None:
        try:
            value = self.client.get(KEY_PREFIX + digest)
        except Exception as exc:  # noqa: BLE001 - every failure is a miss
            self._failed("get", exc)
            return None
        self._succeeded()
        return value if isinstance(value, bytes) else None

    def set_digest(self, digest: str, value: bytes) -> None:
        if len(value) > self.max_value:
            log.debug("response of %d bytes not stored in memcached", len(value))
            return
        try:
            self.client.set(KEY_PREFIX + digest, value, expire=_expiry(self.expire))
        except Exception as exc:  # noqa: BLE001 - a failed store is only a lost entry
            self._failed("set", exc)
            return
        self._succeeded()

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL:
            self._suppressed += 1
            return
        more = (" (%d more failures since the last report)" % self._suppressed
                if self._suppressed else "")
        log.warning("memcached %s: %s failed: %s; caching there resumes when a server "
                    "answers again (retried every %g s)%s", _describe(self.servers), what,
                    _reason(exc), self.backoff, more)
        self._last_log = now
        self._suppressed = 0
        self._reported = True

    def _succeeded(self) -> None:
        if self._reported:
            self._reported = False
            log.warning("memcached %s: answering again", _describe(self.servers))

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
        self._client = None


def _node_score(text: str, seed: int) -> int:
    """Rendezvous score of ``<server>-<key>``: the same on every host."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=4,
                             salt=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "big")


def _expiry(seconds: int) -> int:
    """MEMCACHED_TIMEOUT as memcached reads it: 0 never expires; above 30 days memcached
    takes the number as a Unix time, so convert (at each store)."""
    if seconds > _RELATIVE_EXPIRY_MAX:
        return int(time.time()) + seconds
    return seconds


def _reason(exc: Exception) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


# ---- both ---------------------------------------------------------------------------


class LayeredCache:
    """Memory first, then memcached; a memcached hit is copied into memory.  Either
    layer may be missing.  Per request (since ``begin_request``): ``last_hit`` names
    the layer of the last hit (for the request log), ``elapsed`` adds up the seconds
    spent in the cache, ``lookups`` counts hits and misses per layer and
    ``memcached_errors()`` the memcached failures (for the metrics)."""

    def __init__(self, hasher: KeyHasher, memory: MemoryCache | None = None,
                 shared: MemcachedCache | None = None):
        self.hasher = hasher
        self.memory = memory
        self.shared = shared
        self.last_hit: str | None = None
        self.looked_up = False
        self.elapsed = 0.0
        #: layer name -> [hits, misses] of the request in progress
        self.lookups: dict[str, list[int]] = {MemoryCache.name: [0, 0],
                                              MemcachedCache.name: [0, 0]}
        self._errors_before = 0

    @property
    def enabled(self) -> bool:
        return self.memory is not None or self.shared is not None

    def begin_request(self) -> None:
        self.last_hit = None
        self.looked_up = False
        self.elapsed = 0.0
        for counts in self.lookups.values():
            counts[0] = counts[1] = 0
        self._errors_before = self._errors()

    def _errors(self) -> int:
        return getattr(self.shared, "errors", 0) if self.shared is not None else 0

    def memcached_errors(self) -> int:
        """memcached failures since ``begin_request``."""
        return self._errors() - self._errors_before

    def outcome(self) -> str:
        """For the request log: the layer that answered, ``miss``, or ``-`` (no lookup,
        or no cache)."""
        if self.last_hit is not None:
            return self.last_hit
        return "miss" if self.looked_up and self.enabled else "-"

    def get(self, key: Key) -> bytes | None:
        self.looked_up = True
        t0 = time.perf_counter()
        digest = self.hasher.digest(key)
        value = None
        if self.memory is not None:
            value = self.memory.get_digest(digest)
            if value is not None:
                self.last_hit = self.memory.name
            self.lookups.setdefault(self.memory.name, [0, 0])[value is None] += 1
        if value is None and self.shared is not None:
            value = self.shared.get_digest(digest)
            if value is not None:
                self.last_hit = self.shared.name
                if self.memory is not None:
                    self.memory.set_digest(digest, value)
            self.lookups.setdefault(self.shared.name, [0, 0])[value is None] += 1
        self.elapsed += time.perf_counter() - t0
        return value

    def set(self, key: Key, value: bytes) -> None:
        self.set_digest(self.hasher.digest(key), value)

    def get_request(self, digest: str) -> tuple[bytes, str] | None:
        """The value under a request digest (``KeyHasher.request_digest``) and the name
        of the layer that had it; a memcached value is copied into memory.  Counts
        nothing: the caller counts a hit it can use (``record_hit``), and a miss is
        counted by the lookup of the normal path that follows, if it makes one."""
        t0 = time.perf_counter()
        found = None
        if self.memory is not None:
            value = self.memory.get_digest(digest)
            if value is not None:
                found = value, self.memory.name
        if found is None and self.shared is not None:
            value = self.shared.get_digest(digest)
            if value is not None:
                found = value, self.shared.name
                if self.memory is not None:
                    self.memory.set_digest(digest, value)
        self.elapsed += time.perf_counter() - t0
        return found

    def record_hit(self, layer: str) -> None:
        """Count a hit of ``get_request`` in ``layer`` as ``get`` counts its hits (a
        memcached hit is a memory miss first)."""
        self.looked_up = True
        self.last_hit = layer
        if self.memory is not None:
            self.lookups.setdefault(self.memory.name, [0, 0])[layer != self.memory.name] += 1
        if self.shared is not None and layer == self.shared.name:
            self.lookups.setdefault(self.shared.name, [0, 0])[0] += 1

    def set_digest(self, digest: str, value: bytes) -> None:
        """Store ``value`` once in each layer."""
        t0 = time.perf_counter()
        if self.memory is not None:
            self.memory.set_digest(digest, value)
        if self.shared is not None:
            self.shared.set_digest(digest, value)
        self.elapsed += time.perf_counter() - t0

    def clear(self) -> None:
        if self.memory is not None:
            self.memory.clear()

    def describe(self) -> str:
        parts = []
        if self.memory is not None:
            parts.append("memory %.1f MB" % (self.memory.capacity / MEGABYTE))
        if self.shared is not None:
            parts.append("memcached %s (expiry %d s)" % (_describe(self.shared.servers),
                                                          self.shared.expire))
        return ", ".join(parts) or "none"


def build_cache(settings: Settings) -> LayeredCache:
    """The cache the settings ask for: MAX_IMAGE_CACHE_SIZE MB in memory (0 disables
    it) and MEMCACHED_SERVERS (empty disables it).  Call it in the worker process."""
    hasher = KeyHasher(settings)
    capacity = int(settings.max_image_cache_size * MEGABYTE)
    memory = MemoryCache(capacity, hasher) if capacity > 0 else None
    servers = parse_servers(settings.memcached_servers)
    shared = (MemcachedCache(servers, hasher, expire=settings.memcached_timeout)
              if servers else None)
    return LayeredCache(hasher, memory, shared)
