"""Parity with the reference iipsrv 1.1 on the same pixels.

``sky.fits`` and ``cube.fits`` are read with astropy, flipped to IIP orientation
(``data[..., ::-1, :]``, docs/protocol.md §7.6) and written as float32 pyramidal TIFFs
(``_tiff.write_pyramid_tiff``: floor levels of 2×2 means, exactly iipy's pyramid, §7.2)
with the display range iipy reports (``Min-Max-sample-values``, §4.2) as
SMin/SMaxSampleValue and iipy's ``subject`` header as ImageDescription.  The TIFFs get
the FITS files' names and modification times: iipsrv recognises TIFF by its magic
bytes (§4.1), so both servers receive byte-identical requests, and their
``Last-Modified`` lines agree.

iipy runs with ``IIPY_SERVER=iipsrv/1.1``; both servers are queried in raw FastCGI.
Answers must be equal byte for byte apart from iipy's extra ``Content-Length`` header
line (§8.1) and the float32 rendering of the reported min/max; tiles, which are lossy
JPEGs on both sides, must agree within JPEG noise.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.e2e import _model as model
from tests.e2e._tiff import write_pyramid_tiff
from tests.e2e.conftest import ServerProcess
from tests.fcgiclient import FCGIClient, split_cgi

pytestmark = [pytest.mark.e2e, pytest.mark.parity]

IMAGES = ("sky", "cube")
METADATA_OBJECTS = (
    "IIP,1.0", "max-size", "tile-size", "resolution-number", "bits-per-channel", "resolutions",
    "horizontal-views", "vertical-views", "colorspace", "iip-server", "iip-opt-comm",
    "iip-opt-obj", "min-max-sample-values", "subject",
)


def strip_content_length(raw: bytes) -> bytes:
    """CGI output without iipy's ``Content-Length`` header line (the only one it adds)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length: ")]
    return b"\r\n".join(lines) + sep + body


def status_of(raw: bytes) -> int:
    headers, _ = split_cgi(raw)
    return next((int(v.split()[0]) for k, v in headers if k == "Status"), 200)


@dataclass
class Pair:
    """iipy (serving FITS) and iipsrv 1.1 (serving the TIFF copies), both in raw FastCGI."""

    iipy: ServerProcess
    ref: ServerProcess
    defaults: dict[str, list[tuple[float, float]]]

    def both(self, query: str, **params: str) -> tuple[bytes, bytes]:
        """The FCGI_STDOUT bytes of iipy and of iipsrv for the same request."""
        out = []
        for server in (self.iipy, self.ref):
            client = FCGIClient(server.address, timeout=30)
            out.append(client.request({"QUERY_STRING": query, "REQUEST_METHOD": "GET",
                                       "SERVER_PROTOCOL": "HTTP/1.1", **params}))
        return out[0], out[1]


class ReferenceImages:
    """The TIFF copies, written once per module from what the first iipy reported."""

    def __init__(self, directory: Path, example_data) -> None:
        self.directory = directory
        self.example_data = example_data
        self.written: dict[str, tuple[str, str]] = {}

    def ensure(self, name: str, min_max_line: str, subject: str) -> None:
        if name in self.written:
            assert self.written[name] == (min_max_line, subject), "iipy's metadata changed between runs"
            return
        ranges = model.parse_min_max(min_max_line)
        planes = model.fits_planes(self.example_data[name])
        data = np.ascontiguousarray(planes[:, ::-1, :])
        path = self.directory / f"{name}.fits"  # a TIFF under the FITS name (magic bytes decide)
        write_pyramid_tiff(
            path, data[0] if data.shape[0] == 1 else data, tile=256,
            smin=[lo for lo, _ in ranges], smax=[hi for _, hi in ranges], description=subject,
        )
        st = os.stat(self.example_data[name])
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.written[name] = (min_max_line, subject)


@pytest.fixture(scope="module")
def reference_images(tmp_path_factory, example_data) -> ReferenceImages:
    return ReferenceImages(tmp_path_factory.mktemp("tiff"), example_data)


@pytest.fixture(scope="module")
def pyramid_dir(tmp_path_factory) -> Path:
    """One IIPY_CACHE_DIR for the module (the levels are built once)."""
    return tmp_path_factory.mktemp("pyramids")


@pytest.fixture
def pair(iipy_server, iipsrv_ref, reference_images, pyramid_dir) -> Pair:
    """iipy and iipsrv 1.1 running, the TIFF copies in place."""
    # Both servers render with the range iipy reports; the wide `mad` range keeps the sky off
    # the bottom of GAM's curve, where iipsrv's powf and iipy's gamma table (within 1 DN
    # before JPEG) drift apart by a few DN at QLT=100.
    iipy = iipy_server(IIPY_SERVER="iipsrv/1.1", MEMCACHED_SERVERS="", IIPY_CACHE_DIR=pyramid_dir,
                       IIPY_DISPLAY_RANGE="mad")
    defaults = {}
    for name in IMAGES:
        raw = FCGIClient(iipy.address).request(
            {"QUERY_STRING": f"FIF={name}.fits&obj=min-max-sample-values&obj=subject"})
        _, body = split_cgi(raw)
        lines = body.decode("ascii").split("\r\n")
        assert lines[0] == "" and lines[1].startswith("Min-Max-sample-values:") and lines[3] == "", lines
        subject = lines[2].split(":", 1)[1]
        reference_images.ensure(name, lines[1], subject)
        defaults[name] = model.parse_min_max(lines[1])
    ref = iipsrv_ref(FILESYSTEM_PREFIX=f"{reference_images.directory}/")
    return Pair(iipy, ref, defaults)


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", IMAGES)
def test_metadata_lines_equal(pair, name):
    """§5.2 object lines and §8.2 OBJ headers: identical bytes (bar Content-Length) for
    every object iipy shares with iipsrv; Min-Max-sample-values equal as float32 (iipsrv
    keeps the TIFF's SMin/SMaxSampleValue as C floats); subject byte for byte (§12.3)."""
    query = f"FIF={name}.fits&" + "&".join(f"obj={o}" for o in METADATA_OBJECTS)
    mine, ref = pair.both(query)
    assert status_of(mine) == status_of(ref) == 200
    mine_lines = strip_content_length(mine).split(b"\r\n")
    ref_lines = ref.split(b"\r\n")
    assert len(mine_lines) == len(ref_lines), (mine_lines[:20], ref_lines[:20])
    for a, b in zip(mine_lines, ref_lines):
        if a.startswith(b"Min-Max-sample-values:") and b.startswith(b"Min-Max-sample-values:"):
            got = np.float32([v for pair_ in model.parse_min_max(a.decode()) for v in pair_])
            want = np.float32([v for pair_ in model.parse_min_max(b.decode()) for v in pair_])
            assert got.tolist() == want.tolist(), (a, b)
            assert re.fullmatch(rb"Min-Max-sample-values:( \S+  \S+)( {2}\S+  \S+)*", a), a
        else:
            assert a == b, (a[:200], b[:200])
    # without obj=IIP,1.0 the body starts with an empty line (§8.2); order and repeats kept;
    # names are case-insensitive and empty tokens are skipped (§3.2)
    for query in (f"FIF={name}.fits&obj=max-size&obj=resolution-number&obj=max-size",
                  f"&&fif={name}.fits&&OBJ=Max-Size&obj=IIP,1.0&",
                  f"FIF={name}.fits&obj=basic-info&obj=iip-opt-comm"):
        mine, ref = pair.both(query)
        assert strip_content_length(mine) == ref, query


# --------------------------------------------------------------------------- tiles

SKY_TILES = [(3, 0), (3, 7), (3, 21), (3, 40), (3, 47), (2, 0), (2, 11), (1, 0), (1, 3), (0, 0)]
CUBE_TILES = [(3, 0), (3, 4), (3, 15), (3, 19), (2, 2), (2, 5), (1, 0), (1, 1), (0, 0)]

#: (image, modifiers before JTL, tiles): V2's URL forms of §12.1 and the §6 operations.
TILE_CASES = [
    ("sky", "QLT=100", SKY_TILES),
    ("sky", "GAM=0.4545&CTW=1;1;1&QLT=100", SKY_TILES),
    ("sky", "GAM=0.4545&MINMAX=1:90.5,1500&CTW=1;1;1&QLT=100", [(3, 20), (1, 1)]),
    ("sky", "GAM=0.4545&MINMAX=1:-1e-7,1.2e+3&CTW=1;1;1&QLT=100", [(2, 6)]),
    ("sky", "CMP=jet&GAM=0.4545&CTW=1;1;1&QLT=100", [(3, 20), (2, 6), (0, 0)]),
    ("sky", "CMP=hot&GAM=0.4545&CTW=1;1;1&QLT=100", [(3, 28), (1, 2)]),
    ("sky", "CMP=cold&CTW=1;1;1&QLT=100", [(3, 29)]),
    ("sky", "INV&GAM=0.4545&CTW=1;1;1&QLT=100", [(3, 20), (1, 3)]),
    ("sky", "CNT=1.5&GAM=0.4545&CTW=1;1;1&QLT=100", [(3, 20)]),
    ("sky", "CMP=jet&INV&CNT=1.5&GAM=0.4545&MINMAX=1:95,600&CTW=1;1;1&QLT=100", [(2, 5), (0, 0)]),
    ("cube", "QLT=100", CUBE_TILES),
    ("cube", "GAM=0.4545&CTW=1,0,0;0,1,0;0,0,1&QLT=100", CUBE_TILES),
    ("cube", "GAM=0.4545&MINMAX=2:90,700&CTW=0.5,0.5,0;0,1,0;0,0.3333333333333333,1&QLT=100",
     [(3, 7), (2, 4)]),
    ("cube", "GAM=0.4545&CTW=1;1;1&QLT=100", [(3, 7), (0, 0)]),  # mono, channel 1
    ("cube", "GAM=0.4545&CTW=0,1;0,1;0,1&QLT=100", [(3, 19), (2, 5)]),  # mono, channel 2
    ("cube", "GAM=0.4545&MINMAX=3:150,900&CTW=0,0,1;0,0,1;0,0,1&QLT=100", [(3, 8), (2, 2)]),  # channel 3
    ("cube", "CMP=hot&GAM=0.4545&CTW=0,0,1;0,0,1;0,0,1&QLT=100", [(3, 8)]),
]


def test_tiles_match_iipsrv(pair):
    """§5.3 JTL at every resolution with partial edge tiles (§7.3), the §6 pipeline in the
    V2 URL forms (GAM, MINMAX, CMP, INV, CNT, colour and mono CTW on the cube): same
    size and component count, pixels within JPEG noise of iipsrv's (both at QLT=100:
    mean |diff| <= 1.5 DN, 99th percentile <= 4 DN, for colour tiles on 2x2 block means,
    the chroma resolution of 4:2:0); identical headers apart from Content-Length's
    value (§8.3)."""
    failures = []
    for name, modifiers, tiles in TILE_CASES:
        for res, tile in tiles:
            query = f"FIF={name}.fits&{modifiers}&JTL={res},{tile}"
            mine, ref = pair.both(query)
            assert status_of(mine) == 200 and status_of(ref) == 200, (query, mine[:300], ref[:300])
            mine_headers, mine_jpeg = split_cgi(mine)
            ref_headers, ref_jpeg = split_cgi(ref)
            strip = lambda hs: [(k, v if k != "Content-Length" else "n") for k, v in hs]  # noqa: E731
            assert strip(mine_headers) == strip(ref_headers), query
            assert dict(mine_headers)["Content-Length"] == str(len(mine_jpeg))
            got, got_components = model.decode_jpeg(mine_jpeg)
            want, want_components = model.decode_jpeg(ref_jpeg)
            if (got.shape, got_components) != (want.shape, want_components):
                failures.append(f"{query}: {got.shape}/{got_components} components, "
                                f"iipsrv {want.shape}/{want_components}")
                continue
            mean, p99 = model.encoder_diff_stats(got, want)
            if not (mean <= 1.5 and p99 <= 4.0):
                failures.append(f"{query}: mean |diff| {mean:.2f}, p99 {p99:.1f}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- errors


def test_errors_match_iipsrv(pair):
    """§3.4 and §8.5.1: IIP error answers byte for byte (bar Content-Length), including
    the 31-character truncation and which commands still run after an error; §8.5.2 404
    for missing files and out-of-range tiles (status line and Server only: the bodies
    name different paths); §5.3/§8.5.4 the 400 advert for negative tile numbers
    (headers only: the page wording is free)."""
    failures = []
    for query in (
        "FOO=1&BAR=2",
        "FIF=sky.fits",
        "FIF=sky.fits&obj=",
        "FIF=sky.fits&CNT=2&GAM=0.5",
        "obj=max-size",
        "JTL=0,0",
        "FIF=sky.fits&obj=averyveryverylongunknownobjectname",
        "obj=IIP,1.0&obj=nope",
        "obj=nope&obj=max-size",
        "FIF=sky.fits&obj=IIP,1.0&obj=max-size&obj=nope&obj=tile-size",
        "FIF=sky.fits&obj=max-size=foo",
        "FIF=sky.fits&obj=iip,2.0",
        "FIF=cube.fits&Foo=bar&obj=max-size",
        # an image-not-set error (1 3) ends the request in iipsrv: later commands give no line
        "obj=max-size&obj=tile-size",
        "obj=IIP,1.0&obj=max-size&obj=nope&obj=tile-size",
        "FOO=1&obj=max-size&BAR=2",
        "JTL=0,0&obj=max-size",
    ):
        mine, ref = pair.both(query)
        assert status_of(ref) == 400, (query, ref)
        if strip_content_length(mine) != ref:
            failures.append(f"{query}\n  iipy:   {split_cgi(mine)[1]!r}\n  iipsrv: {split_cgi(ref)[1]!r}")
    for query in ("FIF=missing.fits&obj=IIP,1.0", "FIF=missing.fits&JTL=0,0",
                  "FIF=sky.fits&JTL=3,48", "FIF=sky.fits&JTL=3,100000", "FIF=sky.fits&JTL=4,0",
                  "FIF=sky.fits&JTL=7,0", "FIF=cube.fits&JTL=2,6", "FIF=cube.fits&JTL=0,1"):
        mine, ref = pair.both(query)
        heads = [mine.split(b"\r\n")[:2], ref.split(b"\r\n")[:2]]
        if heads != [[b"Status: 404 Not Found", b"Server: iipsrv/1.1"]] * 2:
            failures.append(f"{query}\n  iipy:   {mine[:200]!r}\n  iipsrv: {ref[:200]!r}")
    for query in ("FIF=sky.fits&JTL=-1,0", "FIF=sky.fits&JTL=0,-1"):
        mine, ref = pair.both(query)
        if not (status_of(ref) == 400 and split_cgi(strip_content_length(mine))[0] == split_cgi(ref)[0]):
            failures.append(f"{query}\n  iipy:   {mine[:300]!r}\n  iipsrv: {ref[:300]!r}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- PFL

_PROFILE = re.compile(rb'\{\n\t"profile": \[(.*)\]\n\}', re.DOTALL)


def profile_values(body: bytes) -> list[bytes]:
    m = _PROFILE.fullmatch(body)
    assert m, body[:200]
    return m.group(1).split(b",") if m.group(1) else []


def test_profiles_match_iipsrv(pair):
    """§5.22 and §12.1 item 3: PFL horizontal (end exclusive), vertical and single-point
    profiles, pixel-interleaved on the cube, with the same values (raw samples, %.9f);
    iipy writes null where iipsrv writes nan (docs/protocol.md §5.22)."""
    queries = [
        "FIF=sky.fits&PFL=3:100,200-300,200",
        "FIF=sky.fits&PFL=3:1500,10-1500,700",
        "FIF=sky.fits&PFL=3:0,1535-2047,1535",
        "FIF=sky.fits&PFL=3:700,700-700,700",
        "FIF=sky.fits&PFL=3:12,34",
        "FIF=sky.fits&PFL=2:10,10-500,10",
        "FIF=cube.fits&PFL=3:10,20-60,20",
        "FIF=cube.fits&PFL=3:1199,0-1199,899",
        "FIF=cube.fits&PFL=1:3,4-3,100",
    ]
    for query in queries:
        mine, ref = pair.both(query)
        assert status_of(mine) == status_of(ref) == 200, (query, mine[:300], ref[:300])
        mine_headers, mine_body = split_cgi(mine)
        ref_headers, ref_body = split_cgi(ref)
        assert [h for h in mine_headers if h[0] != "Content-Length"] == ref_headers, query
        got, want = profile_values(mine_body), profile_values(ref_body)
        assert len(got) == len(want) > 0, (query, len(got), len(want))
        for a, b in zip(got, want):
            if b.lstrip(b"-") in (b"nan", b"inf"):
                assert a == b"null", (query, a, b)
            elif int(query.split("PFL=")[1].split(":")[0]) == 3:
                assert a == b, (query, a, b)  # the same float32 sample printed with %.9f
            else:  # a reduced level: the same 2x2 mean up to float32 rounding
                x, y = float(a), float(b)
                assert abs(x - y) <= 2 * np.finfo(np.float32).eps * max(abs(y), 1e-30) + 1e-9, (query, a, b)
