"""iipy started by spawn-fcgi (the listening socket on file descriptor 0, as mod_fcgid
and lighttpd start it), behind nginx and spoken to in raw FastCGI.

Pins docs/protocol.md §2.1 (start-up on fd 0), §2.2 (FCGI_END_REQUEST bytes, nothing on
FCGI_STDERR), §5.2/§8.2 (OBJ answer bytes), §5.3/§8.3 (JTL through nginx), §8.5.1 (the
exact IIP error bytes with ``IIPY_SERVER=iipsrv/1.1``, plus iipy's ``Content-Length``
as the last header line) and §8.6 (the exact 304 bytes).
"""

from __future__ import annotations

import email.utils
import os
import re

import numpy as np
import pytest

from tests.e2e import _model as model
from tests.e2e.conftest import http_get
from tests.fcgiclient import END_REQUEST, STDOUT, FCGIClient, split_cgi

pytestmark = pytest.mark.e2e

END_REQUEST_COMPLETE = b"\x01\x03\x00\x01\x00\x08\x00\x00" + b"\x00" * 8
V2_METADATA = (
    "obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number"
    "&obj=bits-per-channel&obj=min-max-sample-values&obj=subject"
)
#: Objects whose lines are fully determined by the geometry of sky.fits (§5.2).
FIXED_OBJECTS = (
    "obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number&obj=bits-per-channel"
    "&obj=resolutions&obj=horizontal-views&obj=vertical-views&obj=colorspace&obj=iip-server"
)
FIXED_BODY = (
    b"IIP:1.0\r\nMax-size:2048 1536\r\nTile-size:256 256\r\nResolution-number:4\r\n"
    b"Bits-per-channel:32\r\nResolutions:256 192,512 384,1024 768,2048 1536\r\n"
    b"Horizontal-views:0\r\nVertical-views:90\r\nColorspace,0-3,0:0 0 1 1 0\r\nIIP-server:3.65\r\n"
)


def last_modified(path) -> str:
    return email.utils.formatdate(int(os.stat(path).st_mtime), usegmt=True)


def obj_response(body: bytes, lm: str) -> bytes:
    """The OBJ answer of §8.2 with IIPY_SERVER=iipsrv/1.1, plus Content-Length last."""
    return (
        b"Server: iipsrv/1.1\r\nX-Powered-By: IIPImage\r\nCache-Control: max-age=86400\r\n"
        b"Last-Modified: " + lm.encode() + b"\r\nContent-Type: application/vnd.netfpx\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


def fcgi(client: FCGIClient, query: str, **params: str) -> bytes:
    """One request on a new connection; checks the record sequence and END_REQUEST (§2.2)."""
    out = client.request({"QUERY_STRING": query, "REQUEST_METHOD": "GET", **params})
    records = client.last.records
    assert records[-1].type == END_REQUEST and all(r.type == STDOUT for r in records[:-1])
    assert client.last.raw.endswith(END_REQUEST_COMPLETE)
    assert (client.app_status, client.protocol_status) == (0, 0)
    return out


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_spawned_iipy_behind_nginx(spawn_fcgi, nginx, unix_socket_path, example_data, transport):
    """§2.1: the socket inherited on fd 0 serves; §8.2 OBJ bytes; §12.2 V2 metadata;
    §5.3 a tile decoded and compared with the model (§6, §7)."""
    socket_path = unix_socket_path("spawned.sock") if transport == "unix" else None
    server = spawn_fcgi(socket_path=socket_path, IIPY_SERVER="iipsrv/1.1", MEMCACHED_SERVERS="")
    url = nginx(server, keepalive=True)
    lm = last_modified(example_data["sky"])
    # raw FastCGI on the spawn-fcgi socket: the exact bytes
    client = FCGIClient(server.address)
    assert fcgi(client, f"FIF=sky.fits&{FIXED_OBJECTS}") == obj_response(FIXED_BODY, lm)
    # the same bytes through nginx, headers included
    status, headers, body = http_get(f"{url.iip}?FIF=sky.fits&{FIXED_OBJECTS}")
    assert (status, body) == (200, FIXED_BODY)
    assert [headers[k] for k in ("Server", "X-Powered-By", "Cache-Control", "Last-Modified",
                                 "Content-Type", "Content-Length")] == [
        "iipsrv/1.1", "IIPImage", "max-age=86400", lm, "application/vnd.netfpx", str(len(FIXED_BODY))]
    # the V2 metadata request: nginx passes iipy's body byte for byte
    raw = fcgi(client, f"FIF=sky.fits&{V2_METADATA}")
    cgi_headers, raw_body = split_cgi(raw)
    assert raw == obj_response(raw_body, lm)
    status, _, body = http_get(f"{url.iip}?FIF=sky.fits&{V2_METADATA}")
    assert (status, body) == (200, raw_body)
    lines = body.split(b"\r\n")
    assert lines[:5] == [b"IIP:1.0", b"Max-size:2048 1536", b"Tile-size:256 256",
                         b"Resolution-number:4", b"Bits-per-channel:32"]
    assert re.fullmatch(rb"Min-Max-sample-values: \S+  \S+", lines[5]), lines[5]
    m = re.fullmatch(rb"subject/(\d+):(.*)", lines[6], flags=re.DOTALL)
    assert m and int(m.group(1)) == len(m.group(2)) and len(m.group(2)) % 80 == 0
    assert lines[7:] == [b""]
    # a partial edge tile through nginx, decoded and compared with the model
    query = "FIF=sky.fits&GAM=0.4545&MINMAX=1:80,600&CTW=1;1;1&QLT=100&JTL=1,3"
    status, headers, jpeg = http_get(f"{url.iip}?{query}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Length"] == str(len(jpeg)) and headers["Server"] == "iipsrv/1.1"
    got, components = model.decode_jpeg(jpeg)
    levels = model.iip_levels(model.fits_planes(example_data["sky"]))
    k, x, y, w, h = model.tile_window(2048, 1536, 1, 3)
    assert (k, w, h) == (2, 256, 128)
    want = model.render(levels[k][:, y : y + h, x : x + w], model.parse_view(query, 1), [(0.0, 1.0)])
    assert components == 1
    model.assert_close(got, want, 1.0, 2.0, query)
    assert np.ptp(got) > 50  # not a blank tile


def test_spawned_iipy_exact_error_and_304_bytes(spawn_fcgi, example_data):
    """§8.5.1: the IIP error bytes of iipsrv 1.1 plus ``Content-Length`` as the last header
    line; §3.4 error lines; §8.6: the 304 bytes (no body, no Content-Length)."""
    server = spawn_fcgi(IIPY_SERVER="iipsrv/1.1", MEMCACHED_SERVERS="")
    client = FCGIClient(server.address)
    error_head = (
        b"Server: iipsrv/1.1\r\nCache-Control: no-cache\r\nContent-Type: application/vnd.netfpx\r\n"
        b"Status: 400 Bad Request\r\n"
        b'Content-Disposition: inline;filename="IIPisAMadGameClosedToOurUnderstanding.netfpx"\r\n'
    )
    for query, body in [
        ("FIF=sky.fits&obj=foo", b"Error/7:3 2 foo\r\n"),  # §8.5.1, verbatim
        ("obj=foo", b"Error/7:3 2 foo\r\n"),
        ("FOO=1&BAR=2", b"Error/7:2 2 FOO\r\nError/7:2 2 BAR\r\n"),
        ("obj=max-size", b"Error/12:1 3 max-size\r\n"),
        ("JTL=0,0", b"Error/4:1 3 \r\n"),
        ("FIF=sky.fits", b"Error/16:2 1 FIF=sky.fits\r\n"),
        ("FIF=sky.fits&obj=averyveryverylongunknownobjectname", b"Error/38:3 2 averyveryverylongu\r\n"),
        ("FIF=sky.fits&obj=IIP,1.0&obj=max-size&obj=nope&obj=tile-size", b"Error/8:3 2 nope\r\n"),
    ]:
        expected = error_head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        assert fcgi(client, query) == expected, query
    # 404: Status first, Server, no Content-Type (§8.5.2), the requested name only
    body = b"missing.fits is neither a file nor part of an image sequence"
    assert fcgi(client, "FIF=missing.fits&obj=IIP,1.0") == (
        b"Status: 404 Not Found\r\nServer: iipsrv/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    # 304 for OBJ and JTL requests; one second earlier: the full answer (§8.6)
    lm = last_modified(example_data["sky"])
    for query in ("FIF=sky.fits&obj=IIP,1.0&obj=max-size", "FIF=sky.fits&JTL=0,0"):
        assert fcgi(client, query, HTTP_IF_MODIFIED_SINCE=lm) == (
            b"Status: 304 Not Modified\r\nServer: iipsrv/1.1\r\n\r\n"), query
        earlier = email.utils.formatdate(int(os.stat(example_data["sky"]).st_mtime) - 1, usegmt=True)
        headers, body = split_cgi(fcgi(client, query, HTTP_IF_MODIFIED_SINCE=earlier))
        assert ("Last-Modified", lm) in headers and body, query
