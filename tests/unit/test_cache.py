"""The response caches: the in-process LRU bounded in bytes, the keys (normalised
request, image identity, output settings, version), what is never cached, and the
memcached layer failing open.  No network: memcached failures are injected through a
socket module whose connections fail; the real memcached is in tests/e2e."""

from __future__ import annotations

import logging
import os
import socket
import time

import numpy as np
import pytest
from astropy.io import fits

from iipy import cache as cache_mod
from iipy.protocols.router import Application
from iipy.cache import (KEY_PREFIX, KeyHasher, LayeredCache, MemcachedCache, MemoryCache,
                        build_cache, parse_servers)
from iipy.settings import Settings

from .conftest import gradient_uint8

TILE = "JTL=1,0"


def make_settings(prefix, tmp_path, **env) -> Settings:
    base = {
        "FILESYSTEM_PREFIX": str(prefix) + "/",
        "IIPY_CACHE_DIR": str(tmp_path / "pyramids"),
        "MEMCACHED_SERVERS": "",
        "VERBOSITY": "0",
    }
    base.update({k: str(v) for k, v in env.items()})
    return Settings.from_environ(base)


@pytest.fixture
def app(image_root, tmp_path) -> Application:
    return Application(make_settings(image_root, tmp_path))


def get(app: Application, query: str, **params: str):
    return app.handle({"QUERY_STRING": query, **params})


# ---- MemoryCache --------------------------------------------------------------------


def hasher() -> KeyHasher:
    return KeyHasher(Settings.from_environ({}))


def test_lru_is_bounded_in_bytes_and_evicts_least_recently_used():
    mem = MemoryCache(100, hasher())
    mem.set(("a",), b"a" * 40)
    mem.set(("b",), b"b" * 40)
    assert mem.size == 80
    assert mem.get(("a",)) == b"a" * 40  # a is now the most recently used
    mem.set(("c",), b"c" * 40)  # 120 > 100: the least recently used (b) goes
    assert mem.get(("b",)) is None
    assert mem.get(("a",)) == b"a" * 40 and mem.get(("c",)) == b"c" * 40
    assert mem.size == 80 and len(mem) == 2
    mem.set(("d",), b"d" * 90)  # evicts both a and c
    assert [mem.get((k,)) is not None for k in "acd"] == [False, False, True]
    assert mem.size == 90


def test_lru_replacing_an_entry_counts_its_new_size_only():
    mem = MemoryCache(100, hasher())
    mem.set(("a",), b"x" * 60)
    mem.set(("a",), b"y" * 30)
    assert mem.size == 30 and len(mem) == 1 and mem.get(("a",)) == b"y" * 30


def test_lru_never_holds_a_value_larger_than_its_capacity():
    mem = MemoryCache(100, hasher())
    mem.set(("small",), b"s" * 10)
    mem.set(("big",), b"b" * 101)
    assert mem.get(("big",)) is None
    assert mem.get(("small",)) == b"s" * 10 and mem.size == 10


def test_max_image_cache_size_is_megabytes_and_zero_disables(tmp_path):
    on = build_cache(Settings.from_environ({"MAX_IMAGE_CACHE_SIZE": "2.5",
                                            "MEMCACHED_SERVERS": ""}))
    assert on.memory is not None and on.memory.capacity == int(2.5 * 1024 * 1024)
    assert on.shared is None
    off = build_cache(Settings.from_environ({"MAX_IMAGE_CACHE_SIZE": "0",
                                             "MEMCACHED_SERVERS": ""}))
    assert off.memory is None and not off.enabled
    off.set(("k",), b"v")
    assert off.get(("k",)) is None


# ---- keys ---------------------------------------------------------------------------


def test_key_digest_is_short_stable_and_covers_output_settings(monkeypatch):
    base = Settings.from_environ({})
    key = ("JTL", ("/data/sky.fits", "", 1, 2), 3, 4, (), 75, 0, False)
    digest = KeyHasher(base).digest(key)
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert KeyHasher(base).digest(key) == digest  # another worker, same answer
    assert KeyHasher(base).digest(key[:-1] + (True,)) != digest
    for change in ({"cors": "*"}, {"cache_control": "no-store"}, {"jpeg_quality": 90},
                   {"server_token": "iipsrv/1.1"}, {"tile_size": 512},
                   {"codec_passthrough": False}, {"png_quality": 9}, {"base_url": "http://x/"},
                   {"display_range": "minmax"}):
        assert KeyHasher(base.replace(**change)).digest(key) != digest, change
    # settings that do not reach the bytes do not split the cache
    assert KeyHasher(base.replace(workers=7, verbosity=3)).digest(key) == digest
    monkeypatch.setattr(cache_mod, "__version__", "999.0")
    assert KeyHasher(base).digest(key) != digest
    monkeypatch.undo()
    monkeypatch.setattr(cache_mod, "CODE_DIGEST", "rebuilt")  # same version, other code
    assert KeyHasher(base).digest(key) != digest


def test_memcached_keys_fit_its_limits_and_stay_out_of_iipsrv_namespace(app):
    long_query = "FIF=grey.fits&" + "&".join("CNT=1.%d" % i for i in range(200)) + "&" + TILE
    assert len(long_query) > 250
    seen: list[str] = []

    class Recorder(MemoryCache):
        def set_digest(self, digest, value):
            seen.append(KEY_PREFIX + digest)
            super().set_digest(digest, value)

    app.cache.memory = Recorder(1 << 20, app.cache.hasher)
    assert get(app, long_query).status == 200
    assert len(seen) == 1
    key = seen[0]
    assert key.startswith("iipy:") and not key.startswith("iipsrv::")
    assert len(key) == 37 and key.isascii() and " " not in key


@pytest.mark.parametrize("first, second", [
    ("FIF=grey.fits&CMP=jet&INV&" + TILE, "FIF=grey.fits&INV&CMP=jet&" + TILE),
    ("FIF=grey.fits&CMP=jet&" + TILE, "fif=grey.fits&cmp=JET&jtl=1,0"),
    ("FIF=grey.fits&" + TILE, "FIF=grey.fits&GAM=1&CNT=1.0&" + TILE),
    ("FIF=grey.fits&MINMAX=1:0,100&GAM=2&" + TILE, "FIF=grey.fits&GAM=2.0&MINMAX=1:0,100&" + TILE),
    ("FIF=grey.fits&" + TILE, "FIF=./grey.fits&" + TILE),
])
def test_requests_that_mean_the_same_get_the_same_bytes_each_under_its_string(app, first,
                                                                            second):
    """An answer is kept once, under the request string that asked for it: another
    spelling of the same request is rendered once more, to the same bytes, then kept
    under its own string."""
    a = get(app, first)
    assert a.status == 200 and app.cache.outcome() == "miss"
    b = get(app, second)
    assert app.cache.outcome() == "miss"
    assert b.to_bytes() == a.to_bytes()
    assert len(app.cache.memory) == 2
    assert get(app, second).to_bytes() == a.to_bytes() and app.cache.outcome() == "memory"
    assert len(app.cache.memory) == 2


def test_til_tiles_are_kept_under_their_normalised_key_and_serve_jtl(app):
    """TIL's tiles have no request string of their own: they are kept under JTL's
    normalised key, where a JTL of the same tile finds them."""
    til = get(app, "FIF=grey.fits&CMP=jet&TIL=1,0,0")
    assert til.status == 200 and app.cache.outcome() == "miss"
    assert len(app.cache.memory) == 1
    jtl = get(app, "FIF=grey.fits&CMP=jet&" + TILE)
    assert app.cache.outcome() == "memory"
    assert jtl.body in til.body
    fresh = Application(app.settings.replace(max_image_cache_size=0))
    assert get(fresh, "FIF=grey.fits&CMP=jet&" + TILE).to_bytes() == jtl.to_bytes()


@pytest.mark.parametrize("other", [
    "FIF=grey.fits&CMP=jet&" + TILE,
    "FIF=grey.fits&CMP=jet&INV&QLT=50&" + TILE,
    "FIF=grey.fits&CMP=jet&INV&JTL=1,1",
    "FIF=small.fits&CMP=jet&INV&" + TILE,
])
def test_requests_that_differ_do_not_share(app, other):
    get(app, "FIF=grey.fits&CMP=jet&INV&" + TILE)
    get(app, other)
    assert app.cache.outcome() == "miss"


def test_cached_tile_is_identical_to_a_fresh_one(image_root, tmp_path):
    q = "FIF=grey.fits&CMP=hot&GAM=0.5&JTL=2,1"
    cached = Application(make_settings(image_root, tmp_path))
    first, again = get(cached, q), get(cached, q)
    fresh = get(Application(make_settings(image_root, tmp_path, MAX_IMAGE_CACHE_SIZE=0)), q)
    assert cached.cache.outcome() == "memory"
    assert first.to_bytes() == again.to_bytes() == fresh.to_bytes()
    assert again.header("Content-Length") == str(len(again.body))


# ---- freshness and what is never cached ---------------------------------------------


def write_fits(path, offset: int) -> None:
    fits.PrimaryHDU(((gradient_uint8(300, 200).astype(np.int16) + offset) % 256)
                    .astype(np.uint8)).writeto(path, overwrite=True)


def test_changed_file_is_never_answered_from_a_stale_entry(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    path = root / "img.fits"
    write_fits(path, 0)
    app = Application(make_settings(root, tmp_path))
    q = "FIF=img.fits&JTL=0,0"
    old = get(app, q)
    assert get(app, q).to_bytes() == old.to_bytes() and app.cache.outcome() == "memory"

    write_fits(path, 100)  # same size, new pixels
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    new = get(app, q)
    assert app.cache.outcome() == "miss"
    assert new.body != old.body
    assert new.header("Last-Modified") != old.header("Last-Modified")

    # touched only: same bytes on disk, but a new identity, so a new entry
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = get(app, q)
    assert app.cache.outcome() == "miss"
    assert touched.header("Last-Modified") != new.header("Last-Modified")


def test_same_mtime_but_new_size_is_a_new_entry(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    path = root / "img.fits"
    write_fits(path, 0)
    app = Application(make_settings(root, tmp_path))
    q = "FIF=img.fits&JTL=0,0"
    get(app, q)
    mtime = os.stat(path).st_mtime_ns
    fits.append(path, np.zeros((2, 2), np.uint8))  # an extension: the image is unchanged
    os.utime(path, ns=(mtime, mtime))
    get(app, q)
    assert app.cache.outcome() == "miss"


@pytest.mark.parametrize("query, status", [
    ("FIF=grey.fits&JTL=1,999", 404),  # tile out of range
    ("FIF=missing.fits&JTL=0,0", 404),
    ("FIF=grey.fits&obj=nonsense", 400),  # IIP error
    ("FIF=grey.fits&JTL=-1,0", 400),  # iipsrv's exception page
    ("JTL=0,0", 400),  # no image
])
def test_errors_are_never_cached(app, query, status):
    for _ in range(2):
        assert get(app, query).status == status
        assert app.cache.outcome() != "memory"
    assert len(app.cache.memory) == 0


def test_not_modified_is_decided_before_the_cache_and_never_stored(app, image_root):
    q = "FIF=grey.fits&" + TILE
    ok = get(app, q)
    ims = ok.header("Last-Modified")
    r = get(app, q, HTTP_IF_MODIFIED_SINCE=ims)
    assert r.status == 304 and r.body == b""
    assert app.cache.outcome() == "-"  # no lookup at all
    assert len(app.cache.memory) == 1
    assert get(app, q).to_bytes() == ok.to_bytes()  # the 200 is still what is cached


def test_error_then_file_appears_is_served(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    app = Application(make_settings(root, tmp_path))
    q = "FIF=late.fits&JTL=0,0"
    assert get(app, q).status == 404
    write_fits(root / "late.fits", 0)
    assert get(app, q).status == 200


# ---- layering -----------------------------------------------------------------------


def test_layered_cache_copies_hits_of_the_second_layer_into_memory():
    h = hasher()
    shared = MemoryCache(1 << 20, h)  # stands in for memcached: same get/set_digest
    shared.name = "memcached"
    first = LayeredCache(h, MemoryCache(1 << 20, h), shared)  # type: ignore[arg-type]
    other = LayeredCache(h, MemoryCache(1 << 20, h), shared)  # type: ignore[arg-type]
    first.set(("k",), b"value")
    assert other.get(("k",)) == b"value" and other.last_hit == "memcached"
    other.begin_request()
    assert other.get(("k",)) == b"value" and other.last_hit == "memory"
    assert other.memory is not None and len(other.memory) == 1


def test_memcached_hit_without_memory_layer_is_not_kept_in_process():
    h = hasher()
    shared = MemoryCache(1 << 20, h)
    shared.name = "memcached"
    cache = LayeredCache(h, None, shared)  # type: ignore[arg-type]
    cache.set(("k",), b"value")
    assert cache.get(("k",)) == b"value" and cache.outcome() == "memcached"


# ---- memcached: configuration and failing open --------------------------------------


def test_parse_memcached_servers():
    assert parse_servers("localhost") == [("127.0.0.1", 11211)]
    assert parse_servers(" mc1:11212 , mc2,,") == [("mc1", 11212), ("mc2", 11211)]
    assert parse_servers("[::1]:11213,10.0.0.5:1") == [("::1", 11213), ("10.0.0.5", 1)]
    assert parse_servers("/run/mc.sock,unix:/tmp/m.sock") == ["/run/mc.sock", "/tmp/m.sock"]
    assert parse_servers("") == [] and parse_servers(" , ") == []


def test_memcached_client_is_created_lazily_and_again_after_fork():
    made = []
    mc = MemcachedCache([("127.0.0.1", 1)], hasher(), client_factory=lambda: made.append(1) or
                        FailingClient(RuntimeError("x")))
    cache = build_cache(Settings.from_environ({"MEMCACHED_SERVERS": "mc1:1,mc2:2"}))
    assert cache.shared is not None and cache.shared._client is None  # nothing opened yet
    assert made == []
    mc.get(("k",))
    mc.get(("k",))
    assert made == [1]
    mc._pid = -1  # as seen from a forked child
    mc.get(("k",))
    assert made == [1, 1]


class FailingClient:
    """Fault injection: every operation raises ``exc``."""

    def __init__(self, exc: Exception):
        self.exc = exc
        self.calls = 0

    def get(self, *args, **kwargs):
        self.calls += 1
        raise self.exc

    set = get


class RefusingSockets:
    """Fault injection for pymemcache: a socket module whose connections are refused
    (or time out).  Counts connection attempts."""

    AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX,
                                             socket.AF_UNSPEC)
    SOCK_STREAM, IPPROTO_TCP, TCP_NODELAY = socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.TCP_NODELAY
    SOL_SOCKET, SO_KEEPALIVE = socket.SOL_SOCKET, socket.SO_KEEPALIVE
    timeout = socket.timeout

    def __init__(self, error: type[OSError] = ConnectionRefusedError):
        self.error = error
        self.attempts = 0

    def getaddrinfo(self, host, port, *args):
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]

    def socket(self, *args):
        outer = self

        class _Sock:
            def setsockopt(self, *a): pass
            def settimeout(self, t): pass
            def close(self): pass

            def connect(self, addr):
                outer.attempts += 1
                raise outer.error("injected failure")

        return _Sock()


@pytest.mark.parametrize("error", [ConnectionRefusedError, socket.timeout])
def test_memcached_down_is_a_miss_then_backs_off_and_logs_once(caplog, error):
    sockets = RefusingSockets(error)
    mc = MemcachedCache([("10.255.255.1", 11211)], hasher(), backoff=0.5,
                        socket_module=sockets)
    caplog.set_level(logging.WARNING, logger="iipy.cache")
    assert mc.get(("a",)) is None
    assert sockets.attempts == 1
    for i in range(20):  # backing off: no attempt at all, nothing raised, nothing logged
        assert mc.get(("k", i)) is None
        mc.set(("k", i), b"value")
    assert sockets.attempts == 1
    warnings = [r for r in caplog.records if r.name == "iipy.cache"]
    assert len(warnings) == 1 and "memcached 10.255.255.1:11211" in warnings[0].getMessage()
    time.sleep(1.1)  # HashClient re-adds a dead server after twice its dead_timeout at most
    assert mc.get(("b",)) is None
    assert sockets.attempts == 2  # retried once the back-off expired
    assert len([r for r in caplog.records if r.name == "iipy.cache"]) == 1  # still one line
    assert mc.errors >= 22


def test_any_client_error_is_a_miss_and_a_skipped_store(caplog):
    client = FailingClient(RuntimeError("boom"))
    mc = MemcachedCache([("h", 1)], hasher(), client_factory=lambda: client)
    caplog.set_level(logging.WARNING, logger="iipy.cache")
    assert mc.get(("k",)) is None
    mc.set(("k",), b"v")
    assert client.calls == 2
    assert len([r for r in caplog.records if r.name == "iipy.cache"]) == 1


def test_values_over_the_item_limit_are_not_sent_to_memcached():
    sockets = RefusingSockets()
    mc = MemcachedCache([("h", 1)], hasher(), max_value=1000, socket_module=sockets)
    mc.set(("big",), b"x" * 1001)
    assert sockets.attempts == 0 and mc.errors == 0
    mc.set(("small",), b"x" * 1000)
    assert sockets.attempts == 1


def test_application_answers_normally_while_memcached_fails(image_root, tmp_path, caplog):
    app = Application(make_settings(image_root, tmp_path, MAX_IMAGE_CACHE_SIZE=0,
                                    MEMCACHED_SERVERS="mc.invalid:11211"))
    assert app.cache.shared is not None and app.cache.memory is None
    sockets = RefusingSockets()
    app.cache.shared = MemcachedCache(app.cache.shared.servers, app.cache.hasher,
                                      socket_module=sockets)
    caplog.set_level(logging.WARNING, logger="iipy.cache")
    reference = Application(make_settings(image_root, tmp_path, MAX_IMAGE_CACHE_SIZE=0))
    for q in ("FIF=grey.fits&JTL=1,0", "FIF=grey.fits&JTL=1,0", "FIF=grey.fits&JTL=1,1",
              "FIF=grey.fits&obj=IIP,1.0&obj=max-size"):
        r = get(app, q)
        assert r.status == 200
        assert r.to_bytes() == get(reference, q).to_bytes()
    assert sockets.attempts == 1
    assert len([r for r in caplog.records if r.name == "iipy.cache"]) == 1


def test_keys_spread_over_servers_by_a_consistent_hash():
    """Rendezvous hashing: each server gets a fair share, and adding a server moves only
    the keys it takes (no connection is opened: placement is computed locally)."""
    h = hasher()
    keys = [KEY_PREFIX + h.digest(("tile", i)) for i in range(3000)]
    two = MemcachedCache(parse_servers("mc1:11211,mc2:11211"), h).client.hasher
    three = MemcachedCache(parse_servers("mc1:11211,mc2:11211,mc3:11211"), h).client.hasher
    before = [two.get_node(k) for k in keys]
    after = [three.get_node(k) for k in keys]
    assert 1300 < before.count("mc1:11211") < 1700
    assert 800 < after.count("mc3:11211") < 1200
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(a == "mc3:11211" for _, a in moved)
    # every worker and every host places a key on the same server
    again = MemcachedCache(parse_servers("mc2:11211,mc1:11211"), h).client.hasher
    assert [again.get_node(k) for k in keys] == before


def test_memcached_answers_are_read_in_large_recvs():
    """pymemcache reads 4 KiB per recv() unless told otherwise: a 40 KB tile must come
    back in a few system calls, whole and exact."""
    import pymemcache.client.base as pymemcache_base

    server, peer = socket.socketpair()
    value = bytes(range(256)) * 160  # 40 KB
    reads = []

    class Counting:
        def recv(self, size):
            data = server.recv(size)
            reads.append(len(data))
            return data

    MemcachedCache([("127.0.0.1", 1)], KeyHasher(Settings.from_environ({})))._new_client()
    assert pymemcache_base.RECV_SIZE >= cache_mod.MEMCACHED_RECV_SIZE
    peer.sendall(b"VALUE k 0 %d\r\n" % len(value) + value + b"\r\nEND\r\n")
    buf, line = pymemcache_base._readline(Counting(), b"")
    assert line == b"VALUE k 0 %d" % len(value)
    rest, got = pymemcache_base._readvalue(Counting(), buf, len(value))
    assert got == value and rest == b"END\r\n" and len(reads) <= 3
    server.close()
    peer.close()
