"""iipy standalone (``--bind`` on TCP or a unix socket) behind a real nginx, with
``fastcgi_keep_conn`` on and off: what a VisiOmatic 2 page receives over HTTP.

Pins, through the web server:

* the V2 metadata answer (docs/protocol.md §5.2, §8.2, §12.2, §12.3) and its headers (§8.1);
* JTL tiles at every resolution, partial edge tiles included (§5.3, §7.2, §7.3, §7.6),
  rendered as §6 says for the exact V2 URL forms of §12.1, compared with the NumPy
  model of ``_model.py`` computed from the FITS file read with astropy;
* error statuses and bodies (§3.4, §8.5, §8.7), path confinement (§4.1) and
  If-Modified-Since (§8.6);
* FastCGI keep-alive without per-request stalls (§2.2);
* a worker that keeps serving after hostile input (§8.5.4: never a 500).
"""

from __future__ import annotations

import email.utils
import http.client
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tests.e2e import _model as model
from tests.e2e.conftest import NginxURL, ServerProcess, http_get
from tests.fcgiclient import FCGIClient, split_cgi

pytestmark = pytest.mark.e2e

V2_METADATA = (
    "obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number"
    "&obj=bits-per-channel&obj=min-max-sample-values&obj=subject"
)
#: The display range passed with every sky tile (the background is ~100 ADU).
SKY_MINMAX = (80.0, 600.0)
CUBE_MINMAX = ((40.0, 500.0), (80.0, 700.0), (120.0, 900.0))


@dataclass
class Front:
    """iipy behind nginx: the server process and nginx's base URL."""

    server: ServerProcess
    url: NginxURL

    def get(self, query: str | None, headers: dict[str, str] | None = None):
        """``(status, headers, body)`` of ``GET /fcgi-bin/iipsrv.fcgi?<query>``."""
        target = self.url.iip if query is None else f"{self.url.iip}?{query}"
        return http_get(target, headers)


@pytest.fixture(scope="module")
def pyramid_dir(tmp_path_factory) -> Path:
    """One IIPY_CACHE_DIR for the module: the reduced levels of each example file are
    built by the first server that needs them and reused by the next ones."""
    return tmp_path_factory.mktemp("pyramids")


@pytest.fixture
def start_iipy(iipy_server, pyramid_dir):
    """``iipy_server`` with the module's pyramid directory and memcached disabled (an
    unrelated memcached on localhost must not answer for these tests)."""

    def start(**kwargs) -> ServerProcess:
        kwargs.setdefault("IIPY_CACHE_DIR", pyramid_dir)
        kwargs.setdefault("MEMCACHED_SERVERS", "")
        return iipy_server(**kwargs)

    return start


@pytest.fixture(
    params=[("tcp", True), ("tcp", False), ("unix", True), ("unix", False)],
    ids=["tcp-keepconn", "tcp-close", "unix-keepconn", "unix-close"],
)
def front(request, start_iipy, nginx, unix_socket_path) -> Front:
    """iipy standalone (TCP or unix socket) behind nginx with fastcgi_keep_conn on or off."""
    transport, keepalive = request.param
    server = start_iipy(bind=unix_socket_path()) if transport == "unix" else start_iipy()
    return Front(server, nginx(server, keepalive=keepalive))


@pytest.fixture(scope="module")
def pixels(example_data):
    """``{name: (levels in IIP orientation, (width, height))}`` of the example FITS files."""
    out = {}
    for name in ("sky", "cube", "int16"):
        planes = model.fits_planes(example_data[name])
        out[name] = (model.iip_levels(planes), (planes.shape[2], planes.shape[1]))
    return out


def http_date_of(path: Path) -> str:
    """The Last-Modified value of a file (one-second resolution, GMT, §8.1)."""
    return email.utils.formatdate(int(os.stat(path).st_mtime), usegmt=True)


def model_tile(pixels, name: str, query: str, defaults) -> np.ndarray:
    """The model's pixels for ``JTL=<res>,<tile>`` at the end of ``query``."""
    levels, (width, height) = pixels[name]
    res, tile = (int(v) for v in re.search(r"JTL=(\d+),(\d+)$", query).groups())
    k, x, y, w, h = model.tile_window(width, height, res, tile)
    view = model.parse_view(query, levels[0].shape[0])
    return model.render(levels[k][:, y : y + h, x : x + w], view, defaults)


# --------------------------------------------------------------------------- metadata


def test_v2_metadata_through_nginx(front, example_data):
    """§12.1 request 1, §5.2 line formats, §8.1/§8.2 headers and CRLF, §12.3 header rules."""
    status, headers, body = front.get(f"FIF=sky.fits&{V2_METADATA}")
    assert status == 200, body[:200]
    assert headers["Content-Type"] == "application/vnd.netfpx"
    assert headers["Last-Modified"] == http_date_of(example_data["sky"])
    assert headers["Cache-Control"] == "max-age=86400"
    assert re.fullmatch(r"iipy/\S+", headers["Server"]), headers["Server"]
    assert headers["Content-Length"] == str(len(body))
    # CRLF line ends only, one line per object, no trailing blank line
    assert body.endswith(b"\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"") and b"\r" not in body.replace(b"\r\n", b"")
    lines = body.split(b"\r\n")
    assert lines[-1] == b"" and len(lines) == 8, lines[:7]
    assert lines[:5] == [
        b"IIP:1.0", b"Max-size:2048 1536", b"Tile-size:256 256",
        b"Resolution-number:4", b"Bits-per-channel:32",
    ]
    # R11 spacing: a leading space, two spaces between values, none at the end (§5.2, §12.2)
    m = re.fullmatch(rb"Min-Max-sample-values: (\S+)  (\S+)", lines[5])
    assert m, lines[5]
    lo, hi = float(m.group(1)), float(m.group(2))
    assert m.group(1) == b"%.9g" % lo and m.group(2) == b"%.9g" % hi
    data = model.fits_planes(example_data["sky"])
    assert np.nanmin(data) <= lo < hi <= np.nanmax(data)
    # subject/<n>: with n the byte length, 80-character cards, END last (§5.2, §12.3)
    m = re.fullmatch(rb"subject/(\d+):(.*)", lines[6], flags=re.DOTALL)
    assert m, lines[6][:40]
    n, text = int(m.group(1)), m.group(2)
    assert n == len(text) and n % 80 == 0
    cards = [text[i : i + 80] for i in range(0, n, 80)]
    assert cards[-1] == b"END".ljust(80)
    keywords = {card[:8].rstrip() for card in cards}
    assert b"CD1_1" in keywords and b"LATPOLE" not in keywords
    header = fits.Header.fromstring(text.decode("ascii"))
    assert (header["NAXIS1"], header["NAXIS2"]) == (2048, 1536)
    fortran = [card for card in cards if re.match(rb".{8}= +[-+]?\d*\.?\d+D[-+]?\d", card)]
    assert not fortran, fortran  # numbers with E exponents only


# --------------------------------------------------------------------------- tiles

SKY_MM = "MINMAX=1:%r,%r" % SKY_MINMAX
CUBE_MM = "&".join("MINMAX=%d:%r,%r" % (c + 1, lo, hi) for c, (lo, hi) in enumerate(CUBE_MINMAX))

#: (image, query without FIF and JTL, [(res, tile) ...]): the §12.1 URL forms, each
#: optional part in V2's order; every resolution, corner and partial edge tiles.
TILE_CASES = [
    ("sky", f"{SKY_MM}&CTW=1;1;1&QLT=100", [(3, 0), (3, 7), (3, 21), (3, 47), (2, 0), (2, 11),
                                              (1, 0), (1, 1), (1, 2), (1, 3), (0, 0)]),
    ("sky", f"GAM=0.4545&{SKY_MM}&CTW=1;1;1&QLT=100", [(3, 19), (1, 3), (0, 0)]),
    ("sky", "GAM=0.4545&MINMAX=1:90.25,1234.5678&CTW=1;1;1&QLT=100", [(3, 27), (2, 6)]),
    ("sky", "GAM=0.4545&MINMAX=1:-1e-7,1.5e+3&CTW=1;1;1&QLT=100", [(2, 5)]),
    ("sky", f"CMP=jet&GAM=0.4545&{SKY_MM}&CTW=1;1;1&QLT=100", [(3, 20), (0, 0)]),
    ("sky", f"CMP=hot&INV&{SKY_MM}&CTW=1;1;1&QLT=100", [(2, 6)]),
    ("sky", f"CMP=cold&CNT=1.5&{SKY_MM}&CTW=1;1;1&QLT=100", [(1, 2)]),
    ("sky", f"INV&CNT=1.5&GAM=0.4545&{SKY_MM}&CTW=1;1;1&QLT=100", [(3, 28), (1, 1)]),
    ("cube", f"{CUBE_MM}&CTW=0,1;0,1;0,1&QLT=100", [(3, 0), (3, 4), (3, 15), (3, 19), (2, 2), (2, 5),
                                                     (1, 1), (0, 0)]),
    ("cube", f"GAM=0.4545&{CUBE_MM}&CTW=1,0,0;0,1,0;0,0,1&QLT=100", [(3, 19), (2, 4), (0, 0)]),
    ("cube", f"{CUBE_MM}&CTW=1,0.5,0;0,1,0.5;0.3333333333333333,0,1&QLT=100", [(3, 7)]),
    ("int16", "MINMAX=1:900,9000&CTW=1;1;1&QLT=100", [(3, 3), (3, 19), (2, 5), (0, 0)]),
]


def test_tiles_through_nginx_match_the_model(front, pixels):
    """§5.3 JTL, §7.2–7.3 floor levels and partial edge tiles, §7.6 flip, §6 pipeline
    (MINMAX, GAM, CNT, INV, CMP, CTW grey, mono and colour), §6.5/§8.4 component count,
    §8.1 Content-Length; the default range is Min-Max-sample-values (§4.2)."""
    failures = []
    for name, modifiers, tiles in TILE_CASES:
        for res, tile in tiles:
            query = f"FIF={name}.fits&{modifiers}&JTL={res},{tile}"
            status, headers, body = front.get(query)
            assert status == 200, (query, body[:200])
            assert headers["Content-Type"] == "image/jpeg"
            assert headers["Content-Length"] == str(len(body)), query
            got, components = model.decode_jpeg(body)
            want = model_tile(pixels, name, query, [(0.0, 1.0)] * 3)
            if want.ndim == 3:
                want = model.jpeg_roundtrip(want)  # 4:2:0 chroma on both sides
            assert components == (3 if want.ndim == 3 else 1), query
            if got.shape != want.shape:
                failures.append(f"{query}: shape {got.shape} != {want.shape}")
                continue
            mean, p99 = model.diff_stats(got, want)
            if not (mean <= 1.0 and p99 <= 2.0):
                failures.append(f"{query}: mean |diff| {mean:.2f}, p99 {p99:.1f}")
    assert not failures, "\n".join(failures)
    # without MINMAX a tile is normalised with Min-Max-sample-values (§4.2, §6.1)
    _, _, body = front.get("FIF=cube.fits&obj=min-max-sample-values")
    defaults = model.parse_min_max(body.decode().strip())
    assert len(defaults) == 3
    query = "FIF=cube.fits&GAM=0.4545&CTW=0,0,1;0,0,1;0,0,1&QLT=100&JTL=3,6"
    status, _, jpeg = front.get(query)
    assert status == 200
    got, components = model.decode_jpeg(jpeg)
    assert components == 3
    want = model.jpeg_roundtrip(model_tile(pixels, "cube", query, defaults))
    model.assert_close(got, want, 1.0, 2.0, query)


# --------------------------------------------------------------------------- errors


def test_errors_and_304_through_nginx(front, example_data):
    """§3.4, §8.5.1 (400 + Error/ lines), §8.5.2 (404), §5.3 (JTL out of range), §8.7
    (advert), §8.6 (If-Modified-Since: the Last-Modified value gives a 304 without body,
    one second earlier a 200)."""
    status, headers, body = front.get("FIF=sky.fits&obj=nope")
    assert (status, body) == (400, b"Error/8:3 2 nope\r\n")
    assert headers["Content-Type"] == "application/vnd.netfpx"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["Content-Disposition"] == 'inline;filename="IIPisAMadGameClosedToOurUnderstanding.netfpx"'
    assert front.get("FOO=1&BAR=2")[::2] == (400, b"Error/7:2 2 FOO\r\nError/7:2 2 BAR\r\n")
    assert front.get("obj=max-size")[::2] == (400, b"Error/12:1 3 max-size\r\n")
    assert front.get("FIF=sky.fits")[::2] == (400, b"Error/16:2 1 FIF=sky.fits\r\n")
    assert front.get("FIF=sky.fits&obj=averyveryverylongunknownobjectname")[::2] == (
        400, b"Error/38:3 2 averyveryverylongu\r\n")
    # a missing file: 404, the requested name but not the file system prefix
    status, headers, body = front.get("FIF=missing.fits&obj=IIP,1.0")
    assert (status, body) == (404, b"missing.fits is neither a file nor part of an image sequence")
    assert headers["Server"].startswith("iipy/")
    # out-of-range tiles and resolutions: 404 (sky: R = 4, 8x6 tiles at full resolution)
    for jtl in ("3,48", "3,100000", "4,0", "9,0", "0,1", "1,4"):
        status, headers, body = front.get(f"FIF=sky.fits&JTL={jtl}")
        assert status == 404, (jtl, body[:200])
        assert not body.startswith(b"\xff\xd8")
    # negative numbers: an internal error answered with the advert page, 400 (§5.3, §8.5.4)
    for jtl in ("-1,0", "0,-1"):
        status, headers, body = front.get(f"FIF=sky.fits&JTL={jtl}")
        assert (status, headers["Content-Type"]) == (400, "text/html"), jtl
    # an empty query: the HTML advert page with status 400 (§8.7)
    for query in (None, ""):
        status, headers, body = front.get(query)
        assert (status, headers["Content-Type"]) == (400, "text/html")
        assert body.lstrip().lower().startswith(b"<!doctype html")
    # If-Modified-Since with the Last-Modified value: 304, no body; earlier dates: 200
    lm = http_date_of(example_data["sky"])
    for query in ("FIF=sky.fits&obj=IIP,1.0&obj=max-size", "FIF=sky.fits&QLT=100&JTL=0,0"):
        status, headers, body = front.get(query)
        assert status == 200 and headers["Last-Modified"] == lm
        status, headers, body = front.get(query, {"If-Modified-Since": lm})
        assert (status, body) == (304, b""), query
        earlier = email.utils.formatdate(int(os.stat(example_data["sky"]).st_mtime) - 1, usegmt=True)
        status, _, body = front.get(query, {"If-Modified-Since": earlier})
        assert status == 200 and body, query
        status, _, body = front.get(query, {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
        assert status == 200 and body, query
    # no FIF: never a 304
    status, _, body = front.get("obj=IIP,1.0", {"If-Modified-Since": lm})
    assert (status, body) == (200, b"IIP:1.0\r\n")


# --------------------------------------------------------------------------- path confinement


@pytest.fixture
def confined(tmp_path, example_data, start_iipy, nginx):
    """iipy whose FILESYSTEM_PREFIX is ``tmp_path/root/`` with a copy of sky.fits, a FITS
    file and a text file just outside it, and symbolic links pointing outside."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(example_data["sky"], root / "sky.fits")
    shutil.copyfile(example_data["int16"], tmp_path / "secret.fits")
    (tmp_path / "secret.txt").write_text("TOP SECRET\n" * 20)
    os.symlink(tmp_path / "secret.fits", root / "link-out.fits")
    os.symlink(tmp_path, root / "linkdir")
    os.symlink("/etc/passwd", root / "passwd.fits")
    server = start_iipy(FILESYSTEM_PREFIX=f"{root}/")
    return Front(server, nginx(server, keepalive=True)), tmp_path


TRAVERSAL = [
    "../secret.fits",
    "..././secret.fits",
    "....//secret.fits",
    "%2e%2e%2fsecret.fits",
    "%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "..%252fsecret.fits",
    "../../../../../../../../etc/passwd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "..",
    "../..",
    "%2e%2e",
    "link-out.fits",
    "linkdir/secret.fits",
    "linkdir/secret.txt",
    "passwd.fits",
    "sky.fits%00/../../secret.fits",
]


def test_paths_stay_inside_the_prefix(confined):
    """§4.1: ``../`` removal, then no resolved path (``..``, percent-encoding, absolute
    paths, symbolic links) may leave FILESYSTEM_PREFIX: the 404 of a missing file."""
    front, outside = confined
    secret_bytes = (outside / "secret.fits").read_bytes()[:80]
    for fif in TRAVERSAL:
        for tail in ("obj=IIP,1.0&obj=max-size&obj=subject", "QLT=100&JTL=0,0", "PFL=3:0,0-5,0"):
            status, headers, body = front.get(f"FIF={fif}&{tail}")
            assert status == 404, (fif, tail, status, body[:200])
            for leak in (b"root:", b"TOP SECRET", secret_bytes, b"SIMPLE", b"Max-size", b"\xff\xd8"):
                assert leak not in body, (fif, leak)
            assert str(outside).encode() not in body, (fif, body)
    # the absolute path of a file outside, appended to the prefix, is not that file
    status, _, body = front.get(f"FIF={outside}/secret.fits&obj=max-size")
    assert status == 404 and b"Max-size" not in body
    # control: the image inside the prefix is served, and "../" is removed, not rejected
    assert front.get("FIF=sky.fits&obj=max-size")[::2] == (200, b"\r\nMax-size:2048 1536\r\n")
    assert front.get("FIF=../sky.fits&obj=max-size")[::2] == (200, b"\r\nMax-size:2048 1536\r\n")
    assert front.get("FIF=..././sky.fits&obj=max-size")[::2] == (200, b"\r\nMax-size:2048 1536\r\n")


# --------------------------------------------------------------------------- keep-alive


def established_to(port: int) -> int:
    """Established IPv4 TCP connections whose remote end is 127.0.0.1:``port``."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == f"0100007F:{port:04X}" and fields[3] == "01":
            count += 1
    return count


def test_kept_alive_connections_do_not_stall(start_iipy, nginx):
    """§2.2: with ``fastcgi_keep_conn on``, 300 sequential requests over one HTTP
    keep-alive connection and nginx's kept FastCGI connections take well under 5 s
    (a 40 ms delayed-ACK stall per request would take 12 s); the same on one raw
    FastCGI connection with FCGI_KEEP_CONN."""
    server = start_iipy()
    url = nginx(server, keepalive=True)
    conn = http.client.HTTPConnection("127.0.0.1", url.port, timeout=10)
    queries = ["FIF=sky.fits&obj=IIP,1.0&obj=max-size", "FIF=sky.fits&QLT=90&JTL=0,0"]
    try:
        conn.request("GET", f"/fcgi-bin/iipsrv.fcgi?{queries[1]}")  # warm-up: builds the pyramid
        assert conn.getresponse().read()
        start = time.monotonic()
        for i in range(300):
            conn.request("GET", f"/fcgi-bin/iipsrv.fcgi?{queries[i % 2]}")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200 and body, i
        elapsed = time.monotonic() - start
    finally:
        conn.close()
    assert elapsed < 3.0, f"300 requests through nginx took {elapsed:.2f} s"
    # nginx keeps its FastCGI connection(s) to iipy open between requests
    kept = established_to(server.port)
    assert 1 <= kept <= 8, f"{kept} established connections from nginx to iipy"
    # nginx's view: every request answered by the upstream, practically none slow
    times = []
    for line in url.access_log.read_text().splitlines()[-300:]:
        m = re.search(r"upstream_status=(\d+) connect=(\S+) response=(\S+)", line)
        assert m and m.group(1) == "200", line
        times.append(float(m.group(3)))
    assert len(times) == 300
    assert sum(t >= 0.035 for t in times) <= 10, sorted(times)[-12:]
    # raw FastCGI, one connection, FCGI_KEEP_CONN set on every request
    client = FCGIClient(server.address)
    try:
        start = time.monotonic()
        for i in range(300):
            out = client.request({"QUERY_STRING": queries[i % 2], "REQUEST_METHOD": "GET"}, keep_conn=True)
            assert split_cgi(out)[1], i
        elapsed = time.monotonic() - start
    finally:
        client.close()
    assert client.connections == 1
    assert elapsed < 3.0, f"300 kept-alive FastCGI requests took {elapsed:.2f} s"


# --------------------------------------------------------------------------- hostile input

BIG = "9" * 400


def hostile_queries() -> list[str]:
    """Requests no client sends: overflowing and non-finite numbers, huge matrices,
    binary junk in FIF, very long queries."""
    return [
        f"FIF=sky.fits&JTL={BIG},{BIG}",
        f"FIF=sky.fits&JTL=-{BIG},0",
        "FIF=sky.fits&JTL=-1,-1",
        "FIF=sky.fits&JTL=2147483648,4294967296",
        f"FIF=sky.fits&QLT={BIG}&JTL=0,0",
        f"FIF=sky.fits&QLT=-{BIG}&JTL=0,0",
        "FIF=sky.fits&CNT=1e400&JTL=0,0",
        "FIF=sky.fits&CNT=nan&GAM=-1e400&JTL=0,0",
        "FIF=sky.fits&GAM=1e400&CMP=jet&JTL=0,0",
        "FIF=sky.fits&MINMAX=1:nan,inf&JTL=0,0",
        "FIF=sky.fits&MINMAX=1:inf,-inf&CMP=hot&JTL=0,0",
        "FIF=sky.fits&MINMAX=1:5,5&JTL=0,0",
        f"FIF=sky.fits&MINMAX={BIG}:0,1&MINMAX=-{BIG}:0,1&JTL=0,0",
        f"FIF=sky.fits&ROT={BIG}&JTL=0,0",
        "FIF=sky.fits&ROT=1e400&obj=max-size",
        "FIF=sky.fits&ROT=!nan&JTL=0,0",
        f"FIF=sky.fits&WID={BIG}&HEI=-{BIG}&RGN=nan,inf,-inf,1e400&obj=max-size",
        f"FIF=sky.fits&PFL={BIG}:0,0",
        f"FIF=sky.fits&PFL=3:0,0-{BIG},0",
        "FIF=sky.fits&PFL=3:0,0-2047,1535",
        "FIF=sky.fits&PFL=:",
        f"FIF=sky.fits&JTLS={BIG},{BIG},{BIG},{BIG}",
        "FIF=sky.fits&CTW=" + ",".join(["1"] * 10000) + "&JTL=0,0",
        "FIF=cube.fits&CTW=" + ";".join([",".join(["0.5"] * 100)] * 100) + "&JTL=0,0",
        "FIF=cube.fits&CTW=" + ";" * 10000 + "&JTL=0,0",
        "FIF=cube.fits&CTW=nan,inf,-inf;1e400;-1e400&JTL=0,0",
        "FIF=cube.fits&CTW=][&JTL=0,0",
        "FIF=%ff%fe%00%01%02%80%c0%af%2e%2e%2f%0a%0d&obj=max-size",
        "FIF=" + "%ff%00%fe%01" * 500 + "&JTL=0,0",
        "FIF=%c3%28%e2%82&obj=IIP,1.0",
        "FIF=" + "a" * 8000 + "&obj=max-size",
        "FIF=sky.fits[" + BIG + "]&obj=max-size",
        "FIF=sky.fits[%00,-1]&obj=max-size",
        "A" * 8000,
        "obj=" + "x" * 8000,
        "FIF=sky.fits&" + "obj=subject&" * 300,
        "&" * 8000,
        "=" * 8000,
        "FIF=sky.fits&" + "INV&" * 2000 + "JTL=0,0",
    ]


def worker_pids(server: ServerProcess) -> set[int]:
    """Live children of the iipy master process."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server.proc.pid and fields[0] != "Z":
                pids.add(int(entry))
    return pids


def test_worker_keeps_serving_after_hostile_input(start_iipy, nginx):
    """§8.5.4: no request makes iipy answer 500, log a traceback or lose a worker; a
    normal tile follows; a client that disconnects mid-request hurts nobody (§2.2)."""
    server = start_iipy()
    front = Front(server, nginx(server, keepalive=True))
    assert front.get("FIF=sky.fits&QLT=90&JTL=3,0")[0] == 200
    workers = worker_pids(server)
    assert len(workers) == 2
    bad = []
    client = FCGIClient(server.address, timeout=30)

    def tracebacks() -> int:
        return server.log_text().count("Traceback") + server.output_text().count("Traceback")

    for query in hostile_queries():
        seen = tracebacks()
        # raw FastCGI for everything, nginx too when the request line fits its 8 KB buffer
        out = client.request({"QUERY_STRING": query, "REQUEST_METHOD": "GET"})
        headers, _ = split_cgi(out)
        status = next((int(v.split()[0]) for k, v in headers if k == "Status"), 200)
        if status not in (200, 400, 404):
            bad.append(f"FastCGI {status}: {query[:80]}")
        if len(query) < 8000:
            status = front.get(query)[0]
            if status not in (200, 400, 404):
                bad.append(f"nginx {status}: {query[:80]}")
        if tracebacks() != seen:
            bad.append(f"Traceback logged for {query[:80]}")
    # the same worker processes still serve
    for _ in range(4):
        status, headers, body = front.get("FIF=sky.fits&QLT=90&JTL=3,0")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert model.decode_jpeg(body)[0].shape == (256, 256)
    assert worker_pids(server) == workers
    assert not bad, "\n".join(bad) + "\n--- server stderr ---\n" + server.output_text()[-3000:]
    # a connection closed in the middle of a request does not hurt either
    with socket.create_connection(server.address) as s:
        s.sendall(b"\x01\x01\x00\x01\x00\x08\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01\x04\x00\x01\xff")
    assert front.get("FIF=sky.fits&obj=max-size")[::2] == (200, b"\r\nMax-size:2048 1536\r\n")
    assert worker_pids(server) == workers
