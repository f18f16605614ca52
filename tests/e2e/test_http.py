"""HTTP behaviour through a real nginx (conf/nginx.conf.in) in front of a real iipy:
Last-Modified, If-Modified-Since and 304, Cache-Control, Content-Length, CORS and the
OPTIONS preflight, HEAD, and 405 for other methods (docs/protocol.md §8)."""

from __future__ import annotations

import email.utils
import http.client
import os

import pytest

from tests.e2e.conftest import http_get

pytestmark = pytest.mark.e2e

ORIGIN = "https://viewer.example.org"
TILE = "FIF=int16.fits&GAM=0.4545&CTW=1;1;1&JTL=3,2"
OBJ = "FIF=int16.fits&obj=IIP,1.0&obj=max-size&obj=resolution-number"
PFL = "FIF=int16.fits&PFL=3:10,20,60,20"
SUCCESSES = [TILE, OBJ, PFL]
ERRORS = {
    "FIF=int16.fits&obj=nonsense": 400,  # IIP error
    "FIF=nothere.fits&JTL=0,0": 404,  # file error
    "FIF=int16.fits&JTL=3,999": 404,  # tile out of range
    "": 400,  # advert page
}
CORS_LINES = {"Access-Control-Allow-Origin": ORIGIN,
              "Access-Control-Allow-Headers": "X-Requested-With"}


@pytest.fixture
def front(iipy_server, nginx):
    """``start(keepalive=True, **env) -> iip url`` of iipy (no memcached) behind nginx."""

    def start(keepalive: bool = True, **env):
        server = iipy_server(MEMCACHED_SERVERS="", **env)
        return nginx(server, keepalive=keepalive).iip

    return start


def url_of(base: str, query: str) -> str:
    return f"{base}?{query}" if query else base


def request(base: str, query: str, method: str = "GET", headers=None, body: bytes | None = None):
    import re

    netloc, target = re.fullmatch(r"http://([^/]+)(.*)", url_of(base, query)).groups()
    conn = http.client.HTTPConnection(netloc, timeout=30)
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.msg, resp.read()
    finally:
        conn.close()


def mtime_http(example_data) -> str:
    return email.utils.formatdate(int(os.stat(example_data["int16"]).st_mtime), usegmt=True)


# --------------------------------------------------------------------------- headers


def test_success_headers_through_nginx(front, example_data):
    url = front(CACHE_CONTROL="max-age=600, public")
    for q in SUCCESSES:
        status, hdrs, body = http_get(url_of(url, q))
        assert status == 200, q
        assert hdrs["Last-Modified"] == mtime_http(example_data), q
        assert hdrs.get_all("Cache-Control") == ["max-age=600, public"], q
        assert hdrs["Content-Length"] == str(len(body)), q
        assert hdrs.get("Transfer-Encoding") is None, q
        assert hdrs.get("Access-Control-Allow-Origin") is None, q  # CORS unset


def test_errors_carry_content_length_and_no_cache_control_of_success(front):
    url = front(CACHE_CONTROL="max-age=600")
    for q, expected in ERRORS.items():
        status, hdrs, body = http_get(url_of(url, q))
        assert status == expected, q
        assert hdrs["Content-Length"] == str(len(body)), q
        assert hdrs.get("Cache-Control") in (None, "no-cache"), q


@pytest.mark.parametrize("keepalive", [True, False])
def test_if_modified_since_gives_304_through_nginx(front, keepalive):
    url = front(keepalive=keepalive)
    for q in (TILE, OBJ, TILE):  # the second tile request is an in-process cache hit
        status, hdrs, body = http_get(url_of(url, q))
        assert status == 200
        last_modified = hdrs["Last-Modified"]
        status, hdrs, body = http_get(url_of(url, q), {"If-Modified-Since": last_modified})
        assert status == 304 and body == b"", q
        assert hdrs.get("Cache-Control") is None and hdrs["Server"].startswith("iipy/")
        later = email.utils.formatdate(
            email.utils.parsedate_to_datetime(last_modified).timestamp() + 3600, usegmt=True)
        assert http_get(url_of(url, q), {"If-Modified-Since": later})[0] == 304
        earlier = email.utils.formatdate(
            email.utils.parsedate_to_datetime(last_modified).timestamp() - 1, usegmt=True)
        status, hdrs, body = http_get(url_of(url, q), {"If-Modified-Since": earlier})
        assert status == 200 and hdrs["Content-Length"] == str(len(body)) and body
        status, _, body = http_get(url_of(url, q), {"If-Modified-Since": "not a date"})
        assert status == 200 and body
    # no FIF, no 304
    status, _, _ = http_get(url_of(url, "obj=IIP,1.0"),
                            {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert status == 200


# --------------------------------------------------------------------------- CORS


def test_cors_lines_on_every_response_through_nginx(front):
    url = front(CORS=ORIGIN)
    for q in SUCCESSES + list(ERRORS):
        status, hdrs, _ = http_get(url_of(url, q), {"Origin": "https://elsewhere.example"})
        for name, value in CORS_LINES.items():
            assert hdrs.get_all(name) == [value], (q, status, name)
    status, hdrs, _ = request(url, TILE, "DELETE")
    assert status == 405 and hdrs["Access-Control-Allow-Origin"] == ORIGIN
    # a browser revalidating a cross-origin tile gets the CORS lines on the 304 too
    last_modified = http_get(url_of(url, TILE))[1]["Last-Modified"]
    status, hdrs, _ = http_get(url_of(url, TILE), {"If-Modified-Since": last_modified})
    assert status == 304
    for name, value in CORS_LINES.items():
        assert hdrs.get_all(name) == [value], name


@pytest.mark.parametrize("keepalive", [True, False])
def test_options_preflight_through_nginx(front, keepalive):
    url = front(CORS=ORIGIN, keepalive=keepalive)
    status, hdrs, body = request(url, TILE, "OPTIONS", {
        "Origin": "https://elsewhere.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-requested-with, if-modified-since",
    })
    assert status == 204 and body == b""
    assert hdrs["Access-Control-Allow-Origin"] == ORIGIN
    assert hdrs["Access-Control-Allow-Methods"] == "GET, HEAD, POST, OPTIONS"
    assert hdrs["Access-Control-Allow-Headers"] == "X-Requested-With, If-Modified-Since"
    assert hdrs["Access-Control-Max-Age"] == "86400"
    assert hdrs["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert http_get(url_of(url, TILE))[0] == 200  # the connection pool is still fine


def test_options_without_cors_allows_no_origin(front):
    url = front()
    status, hdrs, body = request(url, TILE, "OPTIONS", {"Origin": "https://elsewhere.example",
                                                         "Access-Control-Request-Method": "GET"})
    assert status == 204 and body == b""
    assert hdrs["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert not [k for k in hdrs if k.lower().startswith("access-control-")]


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("keepalive", [True, False])
def test_head_has_the_headers_of_get_and_no_body(front, keepalive):
    url = front(keepalive=keepalive, CORS=ORIGIN)
    for q in SUCCESSES + ["FIF=nothere.fits&JTL=0,0"]:
        g_status, g_hdrs, g_body = http_get(url_of(url, q))
        h_status, h_hdrs, h_body = request(url, q, "HEAD")
        assert h_status == g_status and h_body == b"", q
        assert h_hdrs["Content-Length"] == str(len(g_body)), q
        for name in ("Content-Type", "Last-Modified", "Cache-Control",
                     "Access-Control-Allow-Origin"):
            assert h_hdrs.get(name) == g_hdrs.get(name), (q, name)
    assert http_get(url_of(url, TILE))[0] == 200  # kept-alive connections still work


def test_post_is_answered_like_get(front):
    url = front()
    _, _, expected = http_get(url_of(url, TILE))
    status, _, body = request(url, TILE, "POST", {"Content-Type": "text/plain"}, b"ignored")
    assert status == 200 and body == expected


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "PROPFIND"])
def test_other_methods_get_405(front, method):
    url = front()
    status, hdrs, body = request(url, TILE, method, body=b"x" if method == "PUT" else None)
    assert status == 405
    assert hdrs["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert hdrs["Content-Length"] == str(len(body)) and body
    assert http_get(url_of(url, TILE))[0] == 200
