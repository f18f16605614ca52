"""Answers kept under their request string and given back before parsing (the router's
early lookup, docs/pipeline.md "Response caches"), through the real Application: the
bytes are those of the normal path, a changed, replaced or re-linked file is never
answered from an entry made from its old self, HEAD, If-Modified-Since, errors, the
Accept header, both cache layers, and the accounting of such hits."""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from iipy.cache import KeyHasher, LayeredCache, MemoryCache, RequestEntry
from iipy.imaging import paths
from iipy.protocols.iip import parser
from iipy.protocols.router import Application
from iipy.settings import Settings

from .test_request_accounting import ListRecorder

Q = "FIF=img.fits&JTL=0,0"


def write_image(path, seed: int, width: int = 64, height: int = 48) -> None:
    """8-bit noise, another for each seed."""
    data = np.random.default_rng(seed).integers(0, 256, (height, width)).astype(np.uint8)
    fits.PrimaryHDU(data).writeto(path, overwrite=True)


def bump_mtime(path, seconds: int = 5) -> None:
    """A new mtime whatever the file system's clock granularity."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def pixels(raw: bytes) -> np.ndarray:
    body = raw.partition(b"\r\n\r\n")[2]
    return np.asarray(Image.open(io.BytesIO(body)))


def status(raw: bytes) -> int:
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n"):
        if line.startswith("Status: "):
            return int(line.split()[1])
    return 200


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write_image(root / "img.fits", 1)
    write_image(root / "other.fits", 2)
    write_image(tmp_path / "secret.fits", 3)  # outside FILESYSTEM_PREFIX
    return root


def make_settings(root, tmp_path, **env) -> Settings:
    base = {"FILESYSTEM_PREFIX": str(root) + "/", "IIPY_CACHE_DIR": str(tmp_path / "pyr"),
            "MEMCACHED_SERVERS": "", "VERBOSITY": "0"}
    base.update({k: str(v) for k, v in env.items()})
    return Settings.from_environ(base)


@pytest.fixture
def app(root, tmp_path) -> Application:
    return Application(make_settings(root, tmp_path))


@pytest.fixture
def fresh(root, tmp_path, parses):
    """The normal path alone: an Application without any cache (its parsing is not
    counted in ``parses``)."""
    uncached = Application(make_settings(root, tmp_path, MAX_IMAGE_CACHE_SIZE=0))

    def answer(query: str, **params: str) -> bytes:
        n = len(parses)
        raw = uncached({"QUERY_STRING": query, **params})
        del parses[n:]
        return raw

    return answer


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The request strings the router parses."""
    seen: list[str] = []
    real = parser.parse

    def counting(query):
        seen.append(query)
        return real(query)

    monkeypatch.setattr(parser, "parse", counting)
    return seen


@pytest.fixture
def no_realpath_memory(monkeypatch):
    """As if REALPATH_TTL had passed since each resolution."""
    monkeypatch.setattr(paths, "REALPATH_TTL", 0.0)


def call(app: Application, query: str, **params: str) -> bytes:
    return app({"QUERY_STRING": query, **params})


# ---- the same bytes, without parsing ---------------------------------------------------


@pytest.mark.parametrize("query", [
    Q,
    "FIF=img.fits&CMP=jet&INV&JTL=0,0",
    "FIF=img.fits&WID=20&CVT=png",
    "IIIF=img.fits/full/max/0/default.jpg",
    "DeepZoom=img.fits_files/6/0_0.jpg",
])
def test_a_hit_is_the_normal_answer_byte_for_byte_and_is_not_parsed(app, fresh, parses,
                                                                     query):
    first = call(app, query)
    assert status(first) == 200 and parses == [query]
    again = call(app, query)
    assert parses == [query]  # answered before parsing
    assert again == first == fresh(query)
    assert app.cache.outcome() == "memory"


def test_head_and_get_share_the_entry_and_head_has_no_body(app, fresh, parses):
    head = call(app, Q, REQUEST_METHOD="HEAD")  # a miss: the whole answer is kept
    full = fresh(Q)
    header = full[:full.index(b"\r\n\r\n") + 4]
    assert head == header and b"Content-Length: %d" % (len(full) - len(header)) in head
    assert call(app, Q) == full and app.cache.outcome() == "memory" and len(parses) == 1
    assert call(app, Q, REQUEST_METHOD="HEAD") == header and len(parses) == 1
    assert call(app, Q, REQUEST_METHOD="POST") == full and len(parses) == 1
    assert app.handle({"QUERY_STRING": Q, "REQUEST_METHOD": "HEAD"}).body == b""


def test_if_modified_since_is_never_answered_early(app, parses):
    ok = app.handle({"QUERY_STRING": Q})
    r = app.handle({"QUERY_STRING": Q, "HTTP_IF_MODIFIED_SINCE": ok.header("Last-Modified")})
    assert r.status == 304 and r.body == b"" and len(parses) == 2
    assert app.cache.outcome() == "-"
    r = app.handle({"QUERY_STRING": Q,
                    "HTTP_IF_MODIFIED_SINCE": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert r.status == 200 and r.to_bytes() == ok.to_bytes() and len(parses) == 3


@pytest.mark.parametrize("query", [
    "FIF=img.fits&JTL=0,999", "FIF=nothere.fits&JTL=0,0", "FIF=img.fits&obj=nonsense",
    "FIF=img.fits&obj=IIP,1.0", "IIIF=img.fits/info.json", "JTL=0,0",
    "FIF=img.fits&CMP=jet&TIL=0,0,0",
])
def test_errors_and_answers_the_normal_path_does_not_keep_are_parsed_every_time(
        app, parses, query):
    answers = {call(app, query) for _ in range(3)}
    assert len(answers) == 1 and parses == [query] * 3


def test_a_kept_error_or_a_foreign_value_is_never_sent(app, fresh, parses):
    """Whatever sits under a request digest, only a fresh 200 entry is sent."""
    digest = app.cache.hasher.request_digest(Q, False, None)
    for value in (b"", b"\x00\x00\x00\x05abcde", b"garbage" * 10,
                  RequestEntry(404, "iip", "jtl", (("/x", "/x", 1, 1),), b"Status: 404\r\n\r\nno")
                  .pack()):
        app.cache.set_digest(digest, value)
        assert call(app, Q) == fresh(Q)
    assert len(parses) == 4
    assert call(app, Q) == fresh(Q) and len(parses) == 4  # the last miss kept the answer


# ---- files that change -------------------------------------------------------------------


def test_touched_file_is_a_miss(app, root, parses):
    old = call(app, Q)
    bump_mtime(root / "img.fits")
    new = call(app, Q)
    assert len(parses) == 2 and app.cache.outcome() == "miss"
    assert new != old and pixels(new).tolist() == pixels(old).tolist()  # same pixels,
    assert call(app, Q) == new and len(parses) == 2  # new Last-Modified, then kept


def test_replaced_file_gives_its_new_pixels(app, root, fresh):
    old = call(app, Q)
    assert call(app, Q) == old
    tmp = root / "img.fits.new"
    write_image(tmp, 4)
    os.replace(tmp, root / "img.fits")
    bump_mtime(root / "img.fits")
    new = call(app, Q)
    assert new == fresh(Q) and not np.array_equal(pixels(new), pixels(old))
    # a file of another size at the same mtime is another file too
    mtime = os.stat(root / "img.fits").st_mtime_ns
    write_image(root / "img.fits", 5, width=200)  # FITS blocks: 2 more
    os.utime(root / "img.fits", ns=(mtime, mtime))
    wider = call(app, Q)
    assert app.cache.outcome() == "miss" and pixels(wider).shape == (48, 200)
    assert wider == fresh(Q)


def test_removed_file_is_the_normal_404(app, root, fresh):
    call(app, Q)
    os.remove(root / "img.fits")
    answer = call(app, Q)
    assert status(answer) == 404 and answer == fresh(Q)


def test_symlink_swapped_out_of_the_prefix_is_refused_as_by_the_normal_path(
        app, root, tmp_path, fresh, no_realpath_memory):
    link = root / "link.fits"
    link.symlink_to(root / "img.fits")
    q = "FIF=link.fits&JTL=0,0"
    first = call(app, q)
    assert call(app, q) == first and app.cache.outcome() == "memory"
    img = pixels(call(app, Q))
    assert np.array_equal(pixels(first), img)

    def relink(target) -> None:
        tmp = root / "link.tmp"
        tmp.symlink_to(target)
        os.replace(tmp, link)

    relink(tmp_path / "secret.fits")  # outside FILESYSTEM_PREFIX: the normal path says 404
    normal = fresh(q)
    assert status(normal) == 404
    assert call(app, q) == normal
    assert np.array_equal(pixels(call(app, Q)), img)  # the file itself is still served

    relink(root / "other.fits")  # inside: the new target's pixels
    moved = call(app, q)
    assert moved == fresh(q)
    assert np.array_equal(pixels(moved), pixels(fresh("FIF=other.fits&JTL=0,0")))
    assert not np.array_equal(pixels(moved), img)

    relink(root / "img.fits")  # back: the entry now holds other.fits' answer, a miss
    assert call(app, q) == first and app.cache.outcome() == "miss"


def test_symlinked_prefix_directory_swapped_is_a_miss(root, tmp_path, no_realpath_memory):
    """The real path of the prefix itself can change: the entry names the old file."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_image(elsewhere / "img.fits", 6)
    served = tmp_path / "served"
    served.symlink_to(root)
    app = Application(make_settings(served, tmp_path))
    first = call(app, Q)
    assert call(app, Q) == first and app.cache.outcome() == "memory"
    tmp = tmp_path / "served.tmp"
    tmp.symlink_to(elsewhere)
    os.replace(tmp, served)
    moved = call(app, Q)
    assert app.cache.outcome() == "miss" and moved != first
    direct = Application(make_settings(elsewhere, tmp_path, MAX_IMAGE_CACHE_SIZE=0))
    assert moved == call(direct, Q)


def test_every_image_of_the_request_is_checked(app, root, parses):
    q = "FIF=other.fits&FIF=img.fits&JTL=0,0"  # the last FIF is the image
    first = call(app, q)
    assert call(app, q) == first and len(parses) == 1
    bump_mtime(root / "other.fits")
    assert call(app, q) == first and len(parses) == 2  # parsed again, same tile


# ---- keys ----------------------------------------------------------------------------------


def test_accept_is_part_of_the_key_of_iiif_requests_only(app, fresh, parses):
    iiif = "IIIF=img.fits/full/max/0/default.jpg"
    v2 = "application/ld+json;profile=\"http://iiif.io/api/image/2/context.json\""
    call(app, iiif, HTTP_ACCEPT=v2)
    call(app, iiif, HTTP_ACCEPT=v2)
    assert len(parses) == 1
    assert call(app, iiif, HTTP_ACCEPT="image/jpeg") == fresh(iiif, HTTP_ACCEPT="image/jpeg")
    assert len(parses) == 2
    call(app, Q, HTTP_ACCEPT="image/webp")
    assert call(app, Q, HTTP_ACCEPT="image/avif") == fresh(Q) and len(parses) == 3


def test_request_keys_cover_the_settings_that_give_a_request_string_its_meaning():
    base = Settings.from_environ({"MEMCACHED_SERVERS": ""})
    digest = KeyHasher(base).request_digest(Q, False, None)
    assert len(digest) == 32 and KeyHasher(base).request_digest(Q, False, None) == digest
    for change in ({"filesystem_prefix": "/other/"}, {"filesystem_suffix": ".fz"},
                   {"filename_pattern": "_x_"}, {"iiif_version": 2}, {"jpeg_quality": 50},
                   {"display_range": "minmax"}):
        assert KeyHasher(base.replace(**change)).request_digest(Q, False, None) != digest
    h = KeyHasher(base)
    others = {h.request_digest(Q, True, None), h.request_digest(Q, False, ""),
              h.request_digest(Q + "\x00", False, None), h.request_digest(Q, False, "\x00"),
              h.request_digest(Q[:-1], False, Q[-1:]), h.digest((Q,))}
    assert digest not in others and len(others) == 6
    # a normalised key does not depend on how the FIF was spelled
    assert (KeyHasher(base.replace(filesystem_prefix="/other/")).digest(("k",))
            == h.digest(("k",)))


# ---- layers and accounting -----------------------------------------------------------------


def shared_layer(settings: Settings) -> MemoryCache:
    shared = MemoryCache(1 << 24, KeyHasher(settings))  # stands in for memcached
    shared.name = "memcached"
    return shared


def worker(settings: Settings, shared: MemoryCache, memory: bool = True) -> Application:
    app = Application(settings)
    h = KeyHasher(settings)
    app.cache = LayeredCache(h, MemoryCache(1 << 24, h) if memory else None, shared)
    app._early_lookup = True
    app.metrics = ListRecorder()
    return app


def test_an_answer_kept_by_one_worker_is_sent_by_another_without_parsing(
        root, tmp_path, parses):
    settings = make_settings(root, tmp_path)
    shared = shared_layer(settings)
    one, two = worker(settings, shared), worker(settings, shared)
    q = "IIIF=img.fits/full/max/0/default.jpg"
    first = call(one, q)
    assert len(shared) == 1 and len(one.cache.memory) == 1  # once in each layer
    assert call(two, q) == first and two.cache.outcome() == "memcached"
    assert len(two.cache.memory) == 1  # copied into memory
    assert call(two, q) == first and two.cache.outcome() == "memory"
    assert len(parses) == 1
    got = [(r["protocol"], r["command"], r["status"], r["nbytes"], sorted(r["stages"]),
            r["lookups"]) for r in two.metrics.requests]
    nbytes = len(first) - first.index(b"\r\n\r\n") - 4
    assert got == [
        ("iiif", "iiif", 200, nbytes, ["cache", "total"],
         {"memory": (0, 1), "memcached": (1, 0)}),
        ("iiif", "iiif", 200, nbytes, ["cache", "total"],
         {"memory": (1, 0), "memcached": (0, 0)}),
    ]
    assert one.metrics.requests[0]["lookups"] == {"memory": (0, 1), "memcached": (0, 1)}


def test_without_memory_layer_every_repeat_comes_from_the_shared_layer(root, tmp_path, parses):
    settings = make_settings(root, tmp_path)
    app = worker(settings, shared_layer(settings), memory=False)
    first = call(app, Q)
    for _ in range(3):
        assert call(app, Q) == first and app.cache.outcome() == "memcached"
    assert len(parses) == 1
    assert [r["lookups"]["memcached"] for r in app.metrics.requests] == [(0, 1)] + [(1, 0)] * 3


def test_a_stale_entry_is_a_miss_counted_once(app, root, parses):
    app.metrics = ListRecorder()
    call(app, Q)
    bump_mtime(root / "img.fits")
    call(app, Q)
    assert [r["lookups"]["memory"] for r in app.metrics.requests] == [(0, 1), (0, 1)]
    assert len(parses) == 2


@pytest.fixture
def log_stream():
    logger = logging.getLogger("iipy.protocols.router")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(saved)


def test_an_early_hit_has_its_text_log_line(app, log_stream):
    first = call(app, Q)
    call(app, Q, REQUEST_METHOD="HEAD")
    lines = log_stream.getvalue().splitlines()
    nbytes = len(first) - first.index(b"\r\n\r\n") - 4
    assert lines[0].startswith("200 %s " % Q) and lines[0].endswith(
        "%d bytes, cache hit: miss" % nbytes)
    assert lines[1].startswith("200 %s " % Q) and lines[1].endswith(
        "(read 0.00, render 0.00, encode 0.00, cache %s) %d bytes, cache hit: memory"
        % (lines[1].split("cache ")[1].split(")")[0], nbytes))


def test_an_early_hit_has_its_json_log_line(root, tmp_path, log_stream):
    app = Application(make_settings(root, tmp_path, IIPY_LOG_FORMAT="json"))
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep()
    logging.getLogger("iipy.protocols.router").addHandler(keep)
    try:
        call(app, "DeepZoom=img.fits_files/6/0_0.jpg")
        call(app, "DeepZoom=img.fits_files/6/0_0.jpg", REQUEST_METHOD="HEAD")
    finally:
        logging.getLogger("iipy.protocols.router").removeHandler(keep)
    fields = [r.iipy_fields for r in records]  # type: ignore[attr-defined]
    assert [(f["method"], f["protocol"], f["command"], f["status"], f["cache"], sorted(f["ms"]))
            for f in fields] == [
        ("GET", "deepzoom", "deepzoom", 200, "miss",
         ["cache", "encode", "parse", "read", "render", "total"]),
        ("HEAD", "deepzoom", "deepzoom", 200, "memory", ["cache", "total"]),
    ]
    assert fields[0]["bytes"] > 0 and fields[1]["bytes"] == 0
    json.dumps(fields)
