"""Parity with the reference iipsrv 1.1 for CVT, PFL, ROT, SHD, TIL and SPECTRA.

The test images are written twice: as FITS for iipy and, flipped to IIP orientation
(docs/protocol.md §7.6), as float32 pyramidal TIFFs for iipsrv (``_tiff``: floor levels of
2x2 means, exactly iipy's pyramid, §7.2), under the same file names and modification
times, so both servers receive byte-identical requests.  Both are queried in raw
FastCGI; iipy runs with ``IIPY_SERVER=iipsrv/1.1``.

* ``grey.fits``: 1001 x 701 float32 (the size of the measurements in §5.6), smooth, with
  a few NaN pixels; levels 1001, 500, 250 wide.
* ``normals.fits``: 96 x 96 x 3 float32 surface normals for SHD.  iipsrv 1.1 reads past
  its buffer in SHD, which crashes it on large tiles and with several OpenMP threads;
  a small image and OMP_NUM_THREADS=1 keep it alive.

iipsrv 1.1 resamples CVT output after quantising to 8 bits and with its own sample
positions, so resampled exports are compared in size exactly and in pixels within a
few DN; tiles and unresampled exports within JPEG noise.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from tests.e2e import _model as model
from tests.e2e._tiff import write_pyramid_tiff
from tests.e2e.conftest import ServerProcess
from tests.fcgiclient import FCGIClient, split_cgi

pytestmark = [pytest.mark.e2e, pytest.mark.parity]

GREY_W, GREY_H = 1001, 701
GREY_RANGE = (0.0, 130.0)


def grey_data() -> np.ndarray:
    """FITS-order float32 data: smooth ramps, a bright square near the top-left corner
    (as displayed), a few NaN pixels."""
    y, x = np.mgrid[0:GREY_H, 0:GREY_W].astype(np.float64)
    data = 10.0 + 80.0 * (x / GREY_W) + 30.0 * np.sin(y / 97.0) ** 2
    data[GREY_H - 60 : GREY_H - 20, 20:60] = 125.0  # displayed top-left
    data[300, 400:403] = np.nan
    return data.astype(np.float32)


def normals_data() -> np.ndarray:
    rng = np.random.default_rng(7)
    blocks = rng.uniform(0, 1, (3, 12, 12)).astype(np.float32)
    blocks[:, 0, 0] = 0.0
    return np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)


@dataclass
class Pair:
    iipy: ServerProcess
    ref: ServerProcess

    def both(self, query: str) -> tuple[tuple[list, bytes], tuple[list, bytes]]:
        """(headers, body) of iipy and of iipsrv for the same request."""
        out = []
        for server in (self.iipy, self.ref):
            raw = FCGIClient(server.address, timeout=60).request(
                {"QUERY_STRING": query, "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1"})
            out.append(split_cgi(raw))
        return out[0], out[1]


def status(headers) -> int:
    return next((int(v.split()[0]) for k, v in headers if k == "Status"), 200)


def decode(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory) -> tuple[Path, Path]:
    fits_dir = tmp_path_factory.mktemp("fits")
    tiff_dir = tmp_path_factory.mktemp("tiff")
    for name, data, lo, hi in [("grey.fits", grey_data(), *GREY_RANGE),
                               ("normals.fits", normals_data(), 0.0, 1.0)]:
        fits.PrimaryHDU(data).writeto(fits_dir / name)
        flipped = np.ascontiguousarray(data[..., ::-1, :])
        channels = 1 if data.ndim == 2 else data.shape[0]
        write_pyramid_tiff(tiff_dir / name, flipped, tile=256, smin=[lo] * channels,
                           smax=[hi] * channels)
        st = os.stat(fits_dir / name)
        os.utime(tiff_dir / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    return fits_dir, tiff_dir


@pytest.fixture
def pair(iipy_server, iipsrv_ref, image_dirs) -> Pair:
    fits_dir, tiff_dir = image_dirs
    iipy = iipy_server(FILESYSTEM_PREFIX=f"{fits_dir}/", IIPY_SERVER="iipsrv/1.1",
                       MEMCACHED_SERVERS="")
    ref = iipsrv_ref(FILESYSTEM_PREFIX=f"{tiff_dir}/", OMP_NUM_THREADS=1)
    return Pair(iipy, ref)


# --------------------------------------------------------------------------- CVT

CVT_SIZE_CASES = [
    "WID=100", "HEI=100", "WID=100&HEI=100", "", "WID=2000", "WID=6000",
    "RGN=0.25,0.25,0.5,0.5&WID=200", "RGN=0,0,0.5,0.5", "RGN=-0.1,-0.1,1.2,1.2&WID=500",
    "RGN=0.1,0.2,0.3,0.25&WID=400", "RGN=0.123456789,0.5,1e-1,0.2&WID=100",
    "WID=300", "WID=251", "WID=250", "HEI=176", "HEI=175", "WID=3", "HEI=2",
    "WID=1000&HEI=701", "WID=999&HEI=701", "WID=1001&HEI=699", "WID=64&HEI=5000",
    "RGN=0,0,0.01,1&WID=100", "RGN=0,0,0.01,1&HEI=100", "RGN=0.9,0.9,0.2,0.2&WID=100",
    "RGN=0.5,0.5,0.0001,0.0001&WID=100", "RGN=0.999,0.999,0.5,0.5&WID=100",
    "RGN=0,0,1,0.001&WID=1000", "WID=1&HEI=1", "WID=-5", "HEI=-5", "WID=-5&HEI=-5",
    "RGN=0,0,1,0.5&WID=-5", "WID=100000000000", "ROT=90&WID=100", "ROT=270&HEI=100",
    "ROT=!90&RGN=0.1,0.2,0.3,0.25&WID=400", "ROT=180&WID=100",
]


def test_cvt_sizes_match_iipsrv(pair):
    """§5.6 and §7.5: every output size equal to iipsrv's, the off-by-one aspect
    corrections, MAX_CVT, huge and negative WID/HEI and the ROT swaps included; the
    same headers (Content-Disposition, §8.3)."""
    failures = []
    for case in CVT_SIZE_CASES:
        query = "FIF=grey.fits&MINMAX=1:0,130&" + (case + "&" if case else "") + "CVT=jpeg"
        (mh, mine), (rh, ref) = pair.both(query)
        assert status(mh) == status(rh) == 200, (query, mine[:200], ref[:200])
        strip = [(k, v) for k, v in mh if k != "Content-Length"]
        assert strip == rh, query
        got, want = decode(mine), decode(ref)
        if got.shape != want.shape:
            failures.append(f"{case}: iipy {got.shape[1]}x{got.shape[0]}, "
                            f"iipsrv {want.shape[1]}x{want.shape[0]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case,mean,p99", [
    ("QLT=100", 0.6, 2),                                  # not resampled
    ("QLT=100&RGN=0.25,0.25,0.5,0.5", 1.0, 3),            # not resampled: level 0 cut
    ("QLT=100&WID=500", 1.5, 4),                          # from the 500 level
    ("QLT=100&RGN=0.1,0.2,0.3,0.25&WID=400", 1.5, 4),     # 300 x 175 -> 399 x 233
    ("QLT=100&RGN=-0.1,-0.1,1.2,1.2&WID=300", 1.5, 4),
    ("QLT=100&ROT=90&WID=500", 1.5, 4),
    ("QLT=100&ROT=!180&RGN=0.5,0,0.5,0.5", 1.0, 3),
])
def test_cvt_pixels_close_to_iipsrv(pair, case, mean, p99):
    query = f"FIF=grey.fits&MINMAX=1:0,130&{case}&CVT=jpeg"
    (_, mine), (_, ref) = pair.both(query)
    got, want = decode(mine), decode(ref)
    assert got.shape == want.shape
    # iipsrv's bilinear blurs the 1-pixel image border differently: compare inside
    model.assert_close(got[2:-2, 2:-2], want[2:-2, 2:-2], mean=mean, p99=p99, what=query)


# --------------------------------------------------------------------------- PFL


PFL_CASES = [
    "PFL=2:0,0-1000,0", "PFL=2:100,0-100,700", "PFL=2:500,350", "PFL=2:8,10-12,10",
    "PFL=2:10,8-10,11", "PFL=2:398,400-405,400", "PFL=2:1000,700", "PFL=2:5,5-5,5",
    "PFL=1:0,0-499,0", "PFL=1:10,20-10,300", "PFL=0:0,0-249,0", "PFL=0:249,174",
    "PFL=2:10,10-5,10",  # x2 < x1 and y2 == y1: a single pixel
]


def parse_profile(body: bytes) -> list[float | None]:
    text = body.decode()
    assert text.startswith('{\n\t"profile": [') and text.endswith("]\n}"), text[:80]
    out = []
    for v in text[len('{\n\t"profile": [') : -3].split(","):
        out.append(None if v in ("null", "nan", "-nan") else float(v))
    return out


def test_pfl_lengths_and_values_match_iipsrv(pair):
    """§5.22: the same number of values (end exclusive), the same bytes at full
    resolution (fixed 9 decimals), the same values at reduced levels (within float32
    rounding of the 2x2 means), NaN as ``null`` where iipsrv writes ``nan``."""
    for case in PFL_CASES:
        (mh, mine), (rh, ref) = pair.both("FIF=grey.fits&" + case)
        assert status(mh) == status(rh) == 200, case
        assert [(k, v) for k, v in mh if k != "Content-Length"] == rh, case
        got, want = parse_profile(mine), parse_profile(ref)
        assert len(got) == len(want), (case, len(got), len(want))
        assert [g is None for g in got] == [w is None for w in want], case
        if case.startswith("PFL=2:") and None not in got:
            assert mine == ref, case
        for g, w in zip(got, want):
            if g is not None:
                assert g == pytest.approx(w, rel=1e-6, abs=1e-6), case
    # out of range: both 400 (iipsrv's HTML page, iipy's text saying why)
    for case in ("PFL=2:1001,0-1002,0", "PFL=2:-1,0", "PFL=3:1,1", "PFL=2:0,702"):
        (mh, mine), (rh, _) = pair.both("FIF=grey.fits&" + case)
        assert status(mh) == status(rh) == 400, case
        assert mine.startswith(b"PFL :: Error: "), case
    # y == height: iipsrv reads past the row (garbage, §5.22), iipy refuses it
    (mh, mine), (rh, _) = pair.both("FIF=grey.fits&PFL=2:0,701")
    assert (status(mh), status(rh)) == (400, 200)


# --------------------------------------------------------------------------- ROT


ROTATIONS = ["90", "180", "270", "!0", "!90", "!180", "!270", "450", "45", "1e300"]


def test_rot_tiles_match_iipsrv(pair):
    """§5.9: tile content turned clockwise, mirrored before turning, ``!180`` a vertical
    flip, the tile index mirrored for 180 only; angles that are not multiples of 90
    ignored."""
    failures = []
    for rot in ROTATIONS:
        for res, tile in [(2, 0), (2, 3), (2, 11), (1, 1), (0, 0)]:
            query = f"FIF=grey.fits&MINMAX=1:0,130&ROT={rot}&QLT=100&JTL={res},{tile}"
            (mh, mine), (rh, ref) = pair.both(query)
            assert status(mh) == status(rh) == 200, query
            got, want = decode(mine), decode(ref)
            if got.shape != want.shape:
                failures.append(f"{query}: {got.shape} != {want.shape}")
                continue
            m, p = model.diff_stats(got, want)
            if not (m <= 0.6 and p <= 2):
                failures.append(f"{query}: mean {m:.2f} p99 {p:.1f}")
    assert not failures, "\n".join(failures)


def test_rot_exports_match_iipsrv(pair):
    failures = []
    for rot in ROTATIONS:
        query = f"FIF=grey.fits&MINMAX=1:0,130&ROT={rot}&QLT=100&RGN=0,0,0.5,0.5&WID=501&CVT=jpeg"
        (_, mine), (_, ref) = pair.both(query)
        got, want = decode(mine), decode(ref)
        if got.shape != want.shape:
            failures.append(f"{rot}: {got.shape} != {want.shape}")
            continue
        m, p = model.diff_stats(got[2:-2, 2:-2], want[2:-2, 2:-2])
        if not (m <= 1.0 and p <= 3):
            failures.append(f"{rot}: mean {m:.2f} p99 {p:.1f}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- SHD


@pytest.mark.parametrize("shd", ["0,0", "45,30", "90,0", "200,60", "315,30", "0,90", "-90,0",
                                 "400,10", "30,-20"])
def test_shd_matches_iipsrv(pair, shd):
    """§5.18 on three channels (surface normals): one output channel, pixels within a
    few DN of iipsrv's, with every later step (here GAM, CTW) after the shading."""
    for extra in ("", "&GAM=0.5&CTW=2"):
        query = f"FIF=normals.fits&MINMAX=1:0,1&MINMAX=2:0,1&MINMAX=3:0,1&SHD={shd}{extra}" \
                "&QLT=100&JTL=0,0"
        (mh, mine), (rh, ref) = pair.both(query)
        assert status(mh) == status(rh) == 200, query
        got, components = model.decode_jpeg(mine)
        want, ref_components = model.decode_jpeg(ref)
        assert components == ref_components == 1 and got.shape == want.shape == (96, 96)
        model.assert_close(got, want, mean=0.6, p99=3, what=query)


# --------------------------------------------------------------------------- TIL, SPECTRA


def til_index(body: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(``Tile,<res>,<n>,0``, compression type and subtype, payload) of each tile."""
    out, i = [], 0
    while i < len(body):
        colon = body.index(b":", i)
        head = body[i:colon]
        length = int(head.split(b"/")[1])
        out.append((head.split(b"/")[0], body[colon + 1 : colon + 9],
                    body[colon + 9 : colon + 1 + length]))
        assert body[colon + 1 + length : colon + 3 + length] == b"\r\n"
        i = colon + 3 + length
    return out


def test_til_and_spectra_match_iipsrv(pair):
    """§5.5 framing and order (columns outer, rows inner), §5.23 XML and its 400."""
    for case in ("TIL=2,0-5", "TIL=2,3-4", "TIL=2,5-0", "TIL=2", "TIL=1,0-3", "TIL=0,0"):
        query = "FIF=grey.fits&MINMAX=1:0,130&QLT=100&" + case
        (mh, mine), (rh, ref) = pair.both(query)
        assert [(k, v) for k, v in mh if k != "Content-Length"] == rh, case
        got, want = til_index(mine), til_index(ref)
        assert [h for h, _, _ in got] == [h for h, _, _ in want], case
        # iipsrv sends a float TIFF's raw samples (compression type 0), iipy the JPEG
        # tile JTL sends (type 2): the same pixels once rendered
        for (_, kind, jpeg), (_, ref_kind, raw) in zip(got, want):
            assert kind == b"\x02\x00\x00\x00\x00\x11\x00\x00", case
            assert ref_kind == b"\x00\x00\x00\x00\x00\x11\x00\x00", case
            tile = decode(jpeg)
            samples = np.frombuffer(raw, np.float32).reshape(tile.shape)
            rendered = model.render(samples[np.newaxis], model.View(), [GREY_RANGE])
            assert model.diff_stats(tile, rendered)[0] <= 0.6, case
    for case in ("SPECTRA=2,0,10,20", "SPECTRA=2,5,100,30", "SPECTRA=1,1,0,0",
                 "SPECTRA=2,8,200,100", "SPECTRA=2,11,240,10", "SPECTRA=2,0,256,0",
                 "SPECTRA=2,0,-1,0"):
        (mh, mine), (rh, ref) = pair.both("FIF=grey.fits&" + case)
        assert status(mh) == status(rh), case
        assert [(k, v) for k, v in mh if k != "Content-Length"] == rh, case
        if status(rh) == 200 and b"nan" not in ref:
            if case.startswith("SPECTRA=1"):  # reduced level: the same mean within rounding
                g = float(mine.split(b"<reflectance>")[1].split(b"<")[0])
                w = float(ref.split(b"<reflectance>")[1].split(b"<")[0])
                assert g == pytest.approx(w, abs=2e-6), case
            else:
                assert mine == ref, case
        else:
            assert mine == ref, case
    # a partial-width edge tile: iipsrv indexes its buffer with the nominal tile width
    # (a wrong pixel); iipy gives the pixel asked for
    (_, mine), _ = pair.both("FIF=grey.fits&SPECTRA=2,11,200,100")
    value = float(grey_data()[::-1][512 + 100, 768 + 200])
    assert b"<reflectance>%f</reflectance>" % value in mine
